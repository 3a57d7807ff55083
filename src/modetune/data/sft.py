"""Tokenization and collation for supervised fine-tuning (SFT) with `transformers.Trainer`.

One training sequence is ``prompt tokens + target tokens + EOS``; the loss is taken on the target and
EOS only (labels are -100 on the prompt) unless ``train_on_inputs``. The prompt tokens are exactly
`encode_prompt` of the record, i.e. what evaluation feeds the model, so a tuned model sees the same
token boundary at train and test time.

A plain-text record (``{"text": ...}``) has no prompt: its tokens (with the tokenizer's own special tokens, as
in pre-training, and EOS) are all targets, cut into consecutive windows of ``cutoff_len`` tokens so that a long
document is learnt whole rather than truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modetune.data.loaders import Example
from modetune.data.templates import build_prompt, build_prompt_and_target
from modetune.errors import ConfigError, DataError

__all__ = [
    "IGNORE_INDEX",
    "SFTDataset",
    "SFTStats",
    "build_sft_dataset",
    "encode_prompt",
    "ensure_pad_token",
    "make_collator",
    "tokenize_example",
]

logger = logging.getLogger(__name__)

#: label value ignored by the cross-entropy loss in Hugging Face models
IGNORE_INDEX = -100
_BATCH = 1024  # records per tokenizer call in build_sft_dataset


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token its EOS token as pad (common for causal LMs); returns it.

    Safe for SFT because labels are built explicitly here (the EOS that ends a target keeps its label;
    only the collator's padding positions get -100). Training code should also set
    ``model.config.pad_token_id = tokenizer.pad_token_id``.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token before training"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token; SFT needs one to teach the model where to stop")
    return int(eos)


def _add_special_tokens(template: str) -> bool:
    # A chat template already writes its special tokens (BOS, turn markers) into the text; the Alpaca
    # text gets whatever the tokenizer adds by default (e.g. BOS for Llama-style tokenizers).
    return template != "chat"


def encode_prompt(
    example: Example,
    tokenizer: Any,
    template: str = "alpaca",
    *,
    system_prompt: str | None = None,
) -> list[int]:
    """Token ids of the prompt exactly as training sees them; evaluation should generate from these."""
    prompt = build_prompt(example, template, tokenizer, system_prompt=system_prompt)
    return list(tokenizer(prompt, add_special_tokens=_add_special_tokens(template))["input_ids"])


@dataclass(frozen=True)
class _Tokenized:
    features: dict[str, list[int]]
    prompt_len: int  # prompt tokens kept
    target_len: int  # target (+EOS) tokens before truncation
    target_kept: int  # target (+EOS) tokens after truncation


def _tokenize_batch(
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    cutoff_len: int,
    train_on_inputs: bool,
    system_prompt: str | None,
) -> list[_Tokenized]:
    """Tokenize records in one tokenizer call per text kind (fast tokenizers batch in Rust)."""
    if isinstance(cutoff_len, bool) or not isinstance(cutoff_len, int) or cutoff_len < 2:
        raise ConfigError(f"cutoff_len must be an integer of at least 2 tokens, got {cutoff_len!r}")
    if not examples:
        return []  # a fast tokenizer fails on an empty batch
    eos = _eos_id(tokenizer)
    special = _add_special_tokens(template)
    pairs = [build_prompt_and_target(ex, template, tokenizer, system_prompt=system_prompt) for ex in examples]
    prompts_ids = tokenizer([p for p, _ in pairs], add_special_tokens=special)["input_ids"]
    fulls_ids = tokenizer([p + t for p, t in pairs], add_special_tokens=special)["input_ids"]
    out = []
    for (_, target), prompt_ids, full_ids in zip(pairs, prompts_ids, fulls_ids, strict=True):
        prompt_ids, full_ids = list(prompt_ids), list(full_ids)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            target_ids = full_ids[len(prompt_ids) :]
        else:  # a token merged across the prompt/target boundary: keep the prompt tokens as evaluation has them
            target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        if not target_ids or target_ids[-1] != eos:
            target_ids.append(eos)  # chat templates whose end-of-turn is EOS already end with it

        input_ids = (prompt_ids + target_ids)[:cutoff_len]
        masked_prompt = list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
        labels = (masked_prompt + target_ids)[:cutoff_len]
        kept = max(0, len(input_ids) - len(prompt_ids))
        features = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
        out.append(_Tokenized(features, min(len(prompt_ids), cutoff_len), len(target_ids), kept))
    return out


def _text_windows(examples: Sequence[Example], tokenizer: Any, cutoff_len: int) -> list[list[dict[str, list[int]]]]:
    """Each plain-text record as consecutive windows of `cutoff_len` tokens, every token a target; a last
    window of one token is dropped (it has no next token to predict)."""
    if not examples:
        return []  # a fast tokenizer fails on an empty batch
    eos = _eos_id(tokenizer)
    out = []
    # verbose=False: a document longer than the model's context is expected here, it is cut into windows below
    for ids in tokenizer([ex.response for ex in examples], add_special_tokens=True, verbose=False)["input_ids"]:
        ids = [*ids, eos]
        windows = [ids[i : i + cutoff_len] for i in range(0, len(ids), cutoff_len)]
        out.append([{"input_ids": w, "attention_mask": [1] * len(w), "labels": list(w)} for w in windows if len(w) > 1])
    return out


def _tokenize_chunk(
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    cutoff_len: int,
    train_on_inputs: bool,
    system_prompt: str | None,
) -> list[list[_Tokenized]]:
    """Per record, in order: its tokenized sequence, or a plain-text record's windows."""
    records = iter(_tokenize_batch([ex for ex in examples if not ex.plain_text], tokenizer, template, cutoff_len,
                                   train_on_inputs, system_prompt))  # fmt: skip
    texts = iter(_text_windows([ex for ex in examples if ex.plain_text], tokenizer, cutoff_len))
    return [
        [_Tokenized(w, 0, len(w["input_ids"]), len(w["input_ids"])) for w in next(texts)]
        if ex.plain_text
        else [next(records)]
        for ex in examples
    ]


def tokenize_example(
    example: Example,
    tokenizer: Any,
    template: str = "alpaca",
    cutoff_len: int = 256,
    train_on_inputs: bool = False,
    *,
    system_prompt: str | None = None,
) -> dict[str, list[int]]:
    """Tokenize one record for causal-LM SFT: ``{"input_ids", "attention_mask", "labels"}``.

    The sequence is prompt + target + EOS (EOS is not added twice when a chat template already ends the
    turn with it). Labels are -100 on the prompt tokens unless ``train_on_inputs`` (then labels equal
    input_ids). Sequences longer than ``cutoff_len`` are cut from the right, so the EOS survives only if
    the whole sequence fits. If the prompt alone fills ``cutoff_len`` no target token is left:
    `build_sft_dataset` counts and drops such records; this function just returns them. A plain-text record
    gives its first window (`build_sft_dataset` keeps them all).
    """
    return _tokenize_chunk([example], tokenizer, template, cutoff_len, train_on_inputs, system_prompt)[0][0].features


@dataclass(frozen=True)
class SFTStats:
    """What tokenization did to a dataset; log it so silent truncation is visible."""

    num_records: int  # records given
    num_examples: int  # sequences kept (a plain-text record gives one per window of cutoff_len tokens)
    num_truncated: int  # kept, but cut at cutoff_len (EOS and maybe part of the target lost)
    num_dropped: int  # dropped: the target was cut off entirely (prompt >= cutoff_len)
    max_length: int
    mean_length: float
    mean_prompt_length: float
    cutoff_len: int

    def summary(self) -> str:
        return (
            f"{self.num_examples}/{self.num_records} examples, mean length {self.mean_length:.1f} tokens "
            f"(prompt {self.mean_prompt_length:.1f}), max {self.max_length}, cutoff_len {self.cutoff_len}: "
            f"{self.num_truncated} truncated, {self.num_dropped} dropped (response entirely cut off)"
        )


class SFTDataset(torch.utils.data.Dataset):
    """A plain list of tokenized examples for `transformers.Trainer` (no `datasets` dependency)."""

    def __init__(self, features: Sequence[dict[str, list[int]]], stats: SFTStats, examples: Sequence[Example]):
        self.features = list(features)
        self.stats = stats
        #: the records kept, aligned with `features` (a plain-text record once per window)
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.features[i]
        return {k: list(v) for k, v in item.items()}


def build_sft_dataset(
    examples: Iterable[Example],
    tokenizer: Any,
    template: str = "alpaca",
    cutoff_len: int = 256,
    train_on_inputs: bool = False,
    *,
    system_prompt: str | None = None,
) -> SFTDataset:
    """Tokenize records into an `SFTDataset`, dropping (and counting) those whose target is cut off.

    Raises `DataError` if there are no records, if a record has an empty response (nothing to learn;
    e.g. an evaluation file was passed as training data), or if every record's target is cut off.
    """
    examples = list(examples)
    if not examples:
        raise DataError("the training dataset is empty; give at least one record")
    kept_features: list[dict[str, list[int]]] = []
    kept_examples: list[Example] = []
    truncated = dropped = 0
    prompt_lens: list[int] = []
    for ex in examples:
        if not ex.response.strip():
            raise DataError(
                f"{ex.source or '<records>'}, record index {ex.index}: empty response, nothing to train on "
                "(is this an evaluation file? training records need an output/completion/assistant message)"
            )
    for start in range(0, len(examples), _BATCH):
        chunk = examples[start : start + _BATCH]
        tokenized = _tokenize_chunk(chunk, tokenizer, template, cutoff_len, train_on_inputs, system_prompt)
        for ex, sequences in zip(chunk, tokenized, strict=True):
            for tok in sequences:
                if tok.target_kept == 0:
                    dropped += 1
                    continue
                if tok.target_kept < tok.target_len:
                    truncated += 1
                kept_features.append(tok.features)
                kept_examples.append(ex)
                prompt_lens.append(tok.prompt_len)
    if not kept_features:
        raise DataError(
            f"every one of the {len(examples)} records has a prompt of at least cutoff_len={cutoff_len} tokens, "
            "so no response token is left to train on; raise cutoff_len"
        )
    lengths = [len(f["input_ids"]) for f in kept_features]
    stats = SFTStats(
        num_records=len(examples),
        num_examples=len(kept_features),
        num_truncated=truncated,
        num_dropped=dropped,
        max_length=max(lengths),
        mean_length=sum(lengths) / len(lengths),
        mean_prompt_length=sum(prompt_lens) / len(prompt_lens),
        cutoff_len=cutoff_len,
    )
    if dropped or truncated:
        logger.warning("SFT tokenization: %s", stats.summary())
    else:
        logger.info("SFT tokenization: %s", stats.summary())
    return SFTDataset(kept_features, stats, kept_examples)


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
    """Batch padding for SFT: `transformers.DataCollatorForSeq2Seq` padding labels with -100.

    Calls `ensure_pad_token` first. Padding follows ``tokenizer.padding_side`` (right by default,
    which is what training wants).
    """
    from transformers import DataCollatorForSeq2Seq

    ensure_pad_token(tokenizer)
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding=True,
        label_pad_token_id=IGNORE_INDEX,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
