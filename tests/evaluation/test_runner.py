"""Batched generation and log-likelihood scoring on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from modetune.errors import ConfigError
from modetune.evaluation.runner import (
    GenerationSettings,
    _truncate_at_stops,
    generate_texts,
    loglikelihoods,
)

PROMPTS = [
    "### Instruction:\nMia has 5 apples. She buys 3 more.\n\n### Response:\n",
    "Hi",
    "There are 12 marbles in a box. Leo takes out 4. How many marbles are left in the box?",
]


def test_batched_generation_matches_one_by_one(tiny_lm, tiny_tokenizer):
    settings = GenerationSettings(stop_strings=())
    batched = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, max_new_tokens=6, settings=settings, batch_size=3)
    single = [
        generate_texts(tiny_lm, tiny_tokenizer, [p], max_new_tokens=6, settings=settings, batch_size=1)[0]
        for p in PROMPTS
    ]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)
    assert tiny_tokenizer.padding_side == "right"  # restored after left-padded generation


def test_generation_options(tiny_lm, tiny_tokenizer):
    beams = GenerationSettings(num_beams=2, temperature=0.1, top_p=0.75, top_k=40)
    assert "temperature" not in beams.generate_kwargs(8)  # inert without sampling, as upstream
    out = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS[:2], max_new_tokens=4, settings=beams, batch_size=2)
    assert len(out) == 2
    sample = GenerationSettings(do_sample=True, temperature=0.7, top_k=5)
    assert sample.generate_kwargs(8)["temperature"] == 0.7
    a = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS[:1], max_new_tokens=5, settings=sample, seed=4)
    b = generate_texts(tiny_lm, tiny_tokenizer, PROMPTS[:1], max_new_tokens=5, settings=sample, seed=4)
    assert a == b  # seeded
    ticks = []
    generate_texts(tiny_lm, tiny_tokenizer, PROMPTS, max_new_tokens=2, batch_size=2, progress=ticks.append)
    assert ticks == [2, 1]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"num_beams": 0}, {"temperature": 0.0}, {"top_p": 1.5}, {"top_k": 0}],
)
def test_bad_generation_settings(kwargs):
    with pytest.raises(ConfigError):
        GenerationSettings(**kwargs)


def test_truncate_at_stops():
    text = "the correct answer is true\n\n### Instruction:\nmore"
    assert _truncate_at_stops(text, ["### Instruction:", "### Response:"]) == "the correct answer is true\n\n"
    assert _truncate_at_stops("plain", ["### Response:"]) == "plain"


def _reference_loglikelihood(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_loglikelihoods_match_a_direct_computation(tiny_lm, tiny_tokenizer):
    requests = [
        ("Mia has 5 apples. The answer is", " 8"),
        ("Below is an instruction that describes a task.", " the correct answer is true"),
        ("Q: is it?", " false"),
        ("### Response:\n", "a marsh"),
        ("the correct answer is", " answer1"),  # these two share one forward pass
        ("the correct answer is", " answer2"),
    ]
    rows = []
    original = tiny_lm.forward

    def counting_forward(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    tiny_lm.forward = counting_forward
    try:
        batched = loglikelihoods(tiny_lm, tiny_tokenizer, requests, batch_size=8)
    finally:
        del tiny_lm.forward
    assert rows == [len(requests) - 1]
    single = [loglikelihoods(tiny_lm, tiny_tokenizer, [r], batch_size=1)[0] for r in requests]
    for (lp_b, n_b, _), (lp_s, n_s, _), (ctx, cont) in zip(batched, single, requests, strict=True):
        assert n_b == n_s > 0
        assert lp_b == pytest.approx(lp_s, abs=1e-4)
        assert lp_b == pytest.approx(_reference_loglikelihood(tiny_lm, tiny_tokenizer, ctx, cont), abs=1e-4)
        assert lp_b < 0


def test_loglikelihood_truncates_long_contexts(tiny_tokenizer):
    from tests.conftest import build_tiny_model

    short = build_tiny_model("llama", vocab_size=len(tiny_tokenizer), max_position_embeddings=16)
    ((lp, n, _),) = loglikelihoods(short, tiny_tokenizer, [("word " * 40, " end")])
    assert n > 0 and lp < 0


def _peft_has_dora_cache() -> bool:
    try:
        from peft.helpers import DoraCaching  # noqa: F401
    except ImportError:
        return False
    return True


needs_dora_cache = pytest.mark.skipif(not _peft_has_dora_cache(), reason="PEFT < 0.19 has no DoRA cache")


def _dora_model(tiny_lm):
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(tiny_lm), LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter an effect to cache
            p.data.normal_(0, 0.5)
    return model.eval()


@needs_dora_cache
def test_dora_caching_computes_once_and_changes_nothing(tiny_lm, tiny_tokenizer, monkeypatch):
    from modetune.evaluation.runner import dora_caching

    model = _dora_model(tiny_lm)
    layers = [m for m in model.modules() if isinstance(getattr(m, "_dora_cache", None), dict)]
    assert len(layers) == 2 * tiny_lm.config.num_hidden_layers
    norms = []
    real_norm = torch.linalg.norm
    monkeypatch.setattr(torch.linalg, "norm", lambda *a, **k: norms.append(1) or real_norm(*a, **k))
    settings = GenerationSettings(stop_strings=())
    ids = tiny_tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]

    plain_texts = generate_texts(model, tiny_tokenizer, PROMPTS, max_new_tokens=5, settings=settings, batch_size=2)
    plain_logits = model(input_ids=ids).logits
    uncached = len(norms)
    norms.clear()
    with dora_caching(model):
        cached_texts = generate_texts(model, tiny_tokenizer, PROMPTS, max_new_tokens=5, settings=settings, batch_size=2)
        cached_logits = model(input_ids=ids).logits
        assert all(layer._dora_cache for layer in layers)
    assert cached_texts == plain_texts
    assert torch.equal(cached_logits, plain_logits)  # the same numbers, not merely close
    assert len(norms) == len(layers) < uncached  # each weight norm computed once for the whole evaluation
    assert not any(layer._dora_cache for layer in layers)  # freed on exit

    norms.clear()
    with dora_caching(model, enabled=False):
        model(input_ids=ids)
    assert len(norms) == len(layers)  # off: recomputed on the forward pass
    with dora_caching(tiny_lm):  # no DoRA layers: nothing to do
        tiny_lm(input_ids=ids)


@needs_dora_cache
def test_dora_caching_through_a_mode_ensemble(tiny_lm, tiny_tokenizer):
    from modetune.evaluation.runner import _dora_layers, dora_caching
    from modetune.mode import get_mode_model

    mode = get_mode_model(_dora_model(tiny_lm), num_layers=2).eval()
    dora = _dora_layers(mode)
    attn = tiny_lm.model.layers[0].self_attn
    per_layer = attn.q_proj.weight.numel() + attn.v_proj.weight.numel()
    assert dora and sum(n for n, _, _ in dora) == per_layer * tiny_lm.config.num_hidden_layers
    assert {dtype for _, dtype, _ in dora} == {torch.float32}
    requests = [(p, " 8") for p in PROMPTS]
    plain = loglikelihoods(mode, tiny_tokenizer, requests, batch_size=2)
    with dora_caching(mode):
        cached = loglikelihoods(mode, tiny_tokenizer, requests, batch_size=2)
        assert any(m._dora_cache for m in mode.modules() if hasattr(m, "_dora_cache"))
    assert cached == plain


@needs_dora_cache
def test_dora_cache_skipped_when_it_would_not_fit(tiny_lm, monkeypatch, caplog):
    import modetune.evaluation.runner as runner

    model = _dora_model(tiny_lm)
    monkeypatch.setattr(runner, "_free_accelerator_memory", lambda model: 1024)  # a nearly full GPU
    ids = torch.tensor([[1, 2, 3]])
    with caplog.at_level("WARNING"), runner.dora_caching(model):
        model(input_ids=ids)
        assert not any(m._dora_cache for m in model.modules() if hasattr(m, "_dora_cache"))
    assert "DoRA cache skipped" in caplog.text and "--no-dora-cache" in caplog.text
