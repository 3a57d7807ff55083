"""SFT tokenization: label masking, cutoff and EOS, dropped records, pad token, collation."""

from __future__ import annotations

import copy

import pytest
import torch

from modetune.data import (
    IGNORE_INDEX,
    Example,
    SFTDataset,
    build_prompt,
    build_sft_dataset,
    encode_prompt,
    ensure_pad_token,
    make_collator,
    tokenize_example,
)
from modetune.errors import ConfigError, DataError

EX = Example("Mia has 5 apples. She buys 3 more. How many apples does Mia have now?", response="The answer is 8.")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_mask_the_prompt(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    feats = tokenize_example(EX, tok, "alpaca", cutoff_len=512)
    prompt_ids = encode_prompt(EX, tok, "alpaca")
    n = len(prompt_ids)
    assert feats["input_ids"][:n] == prompt_ids
    assert feats["input_ids"] == prompt_ids + _ids(tok, EX.response) + [tok.eos_token_id]
    assert feats["labels"][:n] == [IGNORE_INDEX] * n
    assert feats["labels"][n:] == feats["input_ids"][n:]
    assert feats["attention_mask"] == [1] * len(feats["input_ids"])
    assert tok.decode(feats["input_ids"]) == build_prompt(EX) + EX.response + tok.eos_token


def test_train_on_inputs_labels_everything(tiny_tokenizer) -> None:
    feats = tokenize_example(EX, tiny_tokenizer, "alpaca", cutoff_len=512, train_on_inputs=True)
    assert feats["labels"] == feats["input_ids"]


def test_cutoff_truncates_from_the_right_and_drops_eos(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    full = tokenize_example(EX, tok, "alpaca", cutoff_len=512)
    length = len(full["input_ids"])
    fits = tokenize_example(EX, tok, "alpaca", cutoff_len=length)
    assert fits == full and fits["input_ids"][-1] == tok.eos_token_id
    cut = tokenize_example(EX, tok, "alpaca", cutoff_len=length - 3)
    assert cut["input_ids"] == full["input_ids"][: length - 3]
    assert cut["labels"] == full["labels"][: length - 3]
    assert tok.eos_token_id not in cut["input_ids"]
    assert len(cut["attention_mask"]) == length - 3


def test_prompt_longer_than_cutoff_has_no_labels(tiny_tokenizer) -> None:
    feats = tokenize_example(EX, tiny_tokenizer, "alpaca", cutoff_len=10)
    assert len(feats["input_ids"]) == 10
    assert set(feats["labels"]) == {IGNORE_INDEX}


def test_build_dataset_counts_truncated_and_dropped(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    short = Example("Add 1 and 1.", response="The answer is 2.", index=0)
    long = Example("Mia has 5 apples. " * 40 + "How many?", response="The answer is 5.", index=1)
    prompt_len = len(encode_prompt(short, tok))
    cutoff = prompt_len + 2  # short keeps 2 response tokens, long keeps none
    ds = build_sft_dataset([short, long, short], tok, "alpaca", cutoff_len=cutoff)
    assert isinstance(ds, SFTDataset) and len(ds) == 2
    assert ds.stats.num_records == 3 and ds.stats.num_dropped == 1 and ds.stats.num_truncated == 2
    assert ds.stats.max_length == cutoff
    assert ds.examples == [short, short]
    assert "1 dropped" in ds.stats.summary()
    item = ds[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    item["input_ids"].append(0)  # callers get copies
    assert len(ds[0]["input_ids"]) == cutoff
    with pytest.raises(DataError, match="raise cutoff_len"):
        build_sft_dataset([long], tok, cutoff_len=cutoff)


def test_build_dataset_refuses_empty_inputs(tiny_tokenizer) -> None:
    with pytest.raises(DataError, match="training dataset is empty"):
        build_sft_dataset([], tiny_tokenizer)
    no_target = Example("q", response="", source="mawps/test.json", index=7)
    with pytest.raises(DataError, match=r"mawps/test\.json, record index 7: empty response"):
        build_sft_dataset([EX, no_target], tiny_tokenizer)
    with pytest.raises(ConfigError, match="cutoff_len"):
        tokenize_example(EX, tiny_tokenizer, cutoff_len=1)


def test_chat_template_with_eos_as_end_of_turn(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    feats = tokenize_example(EX, tok, "chat", cutoff_len=512)
    prompt_ids = encode_prompt(EX, tok, "chat")
    n = len(prompt_ids)
    assert feats["input_ids"][:n] == prompt_ids
    target = tok.decode(feats["input_ids"][n:])
    assert target == "The answer is 8.<|im_end|>"  # EOS (= end of turn) exactly once
    assert feats["labels"][:n] == [IGNORE_INDEX] * n and feats["labels"][n:] == feats["input_ids"][n:]


def test_chat_template_with_separate_eos(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    feats = tokenize_example(EX, tok, "chat", cutoff_len=512)
    n = len(encode_prompt(EX, tok, "chat"))
    assert tok.decode(feats["input_ids"][n:]) == "The answer is 8.<|im_end|><|endoftext|>"


def test_bos_added_for_alpaca_but_not_doubled_for_chat(_tokenizer_object, chatml_tokenizer) -> None:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tk = copy.deepcopy(_tokenizer_object)
    bos_id = tk.token_to_id("<|endoftext|>")
    tk.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = "<|endoftext|>" + chatml_tokenizer.chat_template  # a template that writes its own BOS
    alpaca = tokenize_example(EX, tok, "alpaca", cutoff_len=512)
    assert alpaca["input_ids"][0] == bos_id and alpaca["input_ids"][1] != bos_id
    chat = tokenize_example(EX, tok, "chat", cutoff_len=512)
    assert chat["input_ids"][0] == bos_id and chat["input_ids"][1] != bos_id


def test_plain_text_is_learnt_whole_in_windows(tiny_tokenizer) -> None:
    """A document has no prompt or template; every token is a target, cut into consecutive cutoff_len windows."""
    tok = tiny_tokenizer
    doc = Example("", response=" ".join(f"word{i}" for i in range(300)), plain_text=True)
    ids = [*tok(doc.response)["input_ids"], tok.eos_token_id]
    for template in ("alpaca", "chat"):
        cutoff = len(tokenize_example(EX, tok, template, cutoff_len=4096)["input_ids"])  # EX fits exactly
        assert len(ids) > 3 * cutoff and len(ids) % cutoff > 1
        ds = build_sft_dataset([EX, doc], tok, template, cutoff_len=cutoff)
        windows = [f for f, ex in zip(ds.features, ds.examples, strict=True) if ex is doc]
        assert [t for w in windows for t in w["input_ids"]] == ids
        assert all(w["labels"] == w["input_ids"] for w in windows)
        assert [len(w["input_ids"]) for w in windows[:-1]] == [cutoff] * (len(windows) - 1)
        assert ds.stats.num_records == 2 and ds.stats.num_examples == 1 + len(windows) and not ds.stats.num_dropped
        assert ds.examples[0] is EX  # the records keep their order
        assert tokenize_example(doc, tok, template, cutoff_len=cutoff)["input_ids"] == ids[:cutoff]


def test_ensure_pad_token(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    assert tok.pad_token is None
    assert ensure_pad_token(tok) is tok
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    tok.pad_token = "<|im_start|>"
    ensure_pad_token(tok)
    assert tok.pad_token == "<|im_start|>"  # an existing pad token is kept


def test_ensure_pad_token_without_eos(_tokenizer_object) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer_object)
    with pytest.raises(ConfigError, match="neither a pad token nor an EOS token"):
        ensure_pad_token(tok)


def test_collator_pads_with_minus_100(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    examples = [EX, Example("Add 1 and 1.", response="2"), Example("q", response="a longer answer " * 5)]
    ds = build_sft_dataset(examples, tok, "alpaca", cutoff_len=512)
    collator = make_collator(tok)
    assert tok.pad_token_id == tok.eos_token_id
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collator)
    batch = next(iter(loader))
    lengths = [len(f["input_ids"]) for f in ds.features]
    longest = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (longest - n)
        assert batch["input_ids"][row, n:].tolist() == [tok.pad_token_id] * (longest - n)
        assert batch["labels"][row, n - 1].item() == tok.eos_token_id  # EOS keeps its label though pad == eos
    multiple = make_collator(tok, pad_to_multiple_of=8)([ds[0], ds[1]])
    assert multiple["input_ids"].shape[1] % 8 == 0


def test_batch_trains_a_tiny_model(tiny_tokenizer) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer
    ds = build_sft_dataset([EX, Example("Add 1 and 1.", response="2")], tok, cutoff_len=128)
    batch = make_collator(tok)([ds[0], ds[1]])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2))
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_lazy_exports_are_the_sft_module_s() -> None:
    """`modetune.data` re-exports `sft` lazily by a name list; it must stay the module's `__all__`."""
    import modetune.data as data
    from modetune.data import sft

    assert set(data._SFT_NAMES) == set(sft.__all__)
    for name in sft.__all__:
        assert getattr(data, name) is getattr(sft, name)
