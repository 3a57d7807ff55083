"""MoM's `kv_layout='picked'` (issue 32, memory): the same model as 'slots', cached = uncached generation, and a
cache holding exactly the bytes its formula says."""

from __future__ import annotations

import pytest
import torch

from modetune.errors import ConfigError
from modetune.mom import MoMCache, MoMConfig, MoMForCausalLM, from_pretrained_layers
from tests.conftest import VOCAB, build_tiny_model

POOL = dict(num_attention_modules=4, num_ffn_modules=4, num_rounds=5, k_per_round=2, num_skip_modules=1)


def routed(model_type: str = "llama", source: dict | None = None, **overrides) -> MoMForCausalLM:
    """A MoM from a tiny model's layers with live random routers (K=2 of 4 modules + 1 SKIP, 5 rounds)."""
    torch.manual_seed(0)
    mom = from_pretrained_layers(build_tiny_model(model_type, **(source or {})), MoMConfig(**{**POOL, **overrides}))
    with torch.no_grad():  # random routers pick differently per token, module and round
        for p in (*mom.attention_router.parameters(), *mom.ffn_router.parameters()):
            p.normal_(0, 0.5)
    return mom.eval()


def kv_entry_bytes(mom: MoMForCausalLM) -> int:
    """Bytes of one token's keys and values in one slot (float32)."""
    return 2 * mom._kv_heads * mom._head_dim * 4


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_picked_layout_gives_the_slots_logits(model_type, batch):
    slots, picked = routed(model_type, kv_layout="slots"), routed(model_type, kv_layout="picked")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        a = slots(ids, attention_mask=mask, output_routes=True)
        b = picked(ids, attention_mask=mask, output_routes=True)
    real = mask.bool()
    torch.testing.assert_close(b.logits[real], a.logits[real], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(x[0][real], y[0][real]) for x, y in zip(a.routes, b.routes, strict=True))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_picked_cache_equals_uncached_and_generation_is_the_same(impl, batch):
    mom = routed("qwen2", kv_layout="picked")
    mom.set_attn_implementation(impl)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = mom(ids, attention_mask=mask, use_cache=False).logits
        out = mom(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)  # prefill 7, then one at a time
        cache, steps = out.cache, [out.logits]
        assert isinstance(cache, MoMCache)
        for t in range(7, ids.shape[1]):
            out = mom(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
        # a second chunk of several tokens on a filled cache (the masked path)
        two = mom(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        rest = mom(ids[:, 5:], attention_mask=mask, cache=two.cache, use_cache=True).logits
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([two.logits, rest], 1)[real], full[real], rtol=1e-4, atol=1e-5)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(mom.generate(ids, **kw), mom.generate(ids, use_cache=False, **kw))
    beams = dict(kw, num_beams=3, num_return_sequences=2)
    assert torch.equal(mom.generate(ids, **beams), mom.generate(ids, use_cache=False, **beams))


def test_picked_generation_of_one_sequence_matches_slots_token_for_token():
    ids = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    picked = routed(kv_layout="picked")
    assert torch.equal(picked.generate(ids, **kw), picked.generate(ids, use_cache=False, **kw))
    assert torch.equal(picked.generate(ids, **kw), routed(kv_layout="slots").generate(ids, **kw))


@pytest.mark.parametrize("layout", ["slots", "picked"])
def test_sliding_window_is_kept_with_fixed_routes_and_with_routers(layout):
    """mistral's window (4 < 10 tokens): fixed routes give the source model's logits, routed 'picked' = 'slots'."""
    source = build_tiny_model("mistral", sliding_window=4)
    ids = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(2))
    mom = from_pretrained_layers(source, MoMConfig(num_rounds=4, kv_layout=layout)).fix_routes_to_layers()
    with torch.no_grad():
        torch.testing.assert_close(mom(ids).logits, source(ids).logits, rtol=1e-5, atol=1e-5)
        windowed = {"sliding_window": 4}
        a = routed("mistral", windowed, kv_layout="slots")(ids).logits
        b = routed("mistral", windowed, kv_layout=layout)(ids).logits
        cached = routed("mistral", windowed, kv_layout=layout)
        out = cached(ids[:, :3], use_cache=True)
        steps = [out.logits] + [cached(ids[:, t : t + 1], cache=out.cache).logits for t in range(3, 10)]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), b, rtol=1e-4, atol=1e-5)


def test_fixed_routes_picked_reproduce_the_source_model_exactly():
    base = build_tiny_model("llama")
    mom = from_pretrained_layers(base, MoMConfig(num_rounds=4, kv_layout="picked")).fix_routes_to_layers()
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(mom(ids).logits, base(ids).logits)
        assert mom(ids, use_cache=True).cache.nbytes() == 4 * 8 * 2 * (kv_entry_bytes(mom) + 4)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(mom.generate(ids, **kw), base.generate(ids, **kw))


def _attention_picks(mom: MoMForCausalLM, routes) -> torch.Tensor:
    """[rounds, modules]: how many (token, pick) pairs went to each attention module (SKIPs left out)."""
    counts = torch.zeros(len(routes), mom.config.num_attention_modules, dtype=torch.long)
    for h, (picks, _) in enumerate(routes):
        for j in range(mom.config.num_attention_modules):
            counts[h, j] = int((picks == j).sum())
    return counts


def test_picked_cache_holds_exactly_its_formula_in_bytes():
    """Batch 1: the cache holds (attention picks) x (2 x kv_heads x head_dim x 4 + 4 position bytes), slot by slot,
    after a prefill and after each decoded token; 'slots' and 'qkv' hold their own formulas."""
    mom = routed(kv_layout="picked")
    entry, T = kv_entry_bytes(mom), 11
    ids = torch.randint(3, VOCAB, (1, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = mom(ids, use_cache=True, output_routes=True)
        cache, counts = out.cache, _attention_picks(mom, out.routes)
        for _ in range(3):
            token = out.logits[:, -1:].argmax(-1)
            out = mom(token, cache=cache, use_cache=True, output_routes=True)
            counts += _attention_picks(mom, out.routes)
    assert 0 < counts.sum() < POOL["k_per_round"] * POOL["num_rounds"] * (T + 3)  # some picks were SKIPs
    for h in range(POOL["num_rounds"]):
        for j in range(POOL["num_attention_modules"]):
            assert cache.filled(h, j) == counts[h, j]
    assert cache.nbytes() == int(counts.sum()) * (entry + 4)

    with torch.no_grad():
        slots = routed(kv_layout="slots")(ids, use_cache=True).cache
        qkv = routed(attention_assembly="qkv")(ids, use_cache=True).cache
    used = sum(slots.filled(h, j) > 0 for h in range(POOL["num_rounds"]) for j in range(POOL["num_attention_modules"]))
    assert slots.nbytes() == used * T * (entry + 8)
    assert qkv.nbytes() == POOL["num_rounds"] * T * entry


def test_default_layout_is_picked_and_qkv_takes_slots():
    """The measured better layout is the default; a saved config keeps the layout it was trained with."""
    assert MoMConfig().kv_layout == "picked"
    assert MoMConfig(attention_assembly="qkv").kv_layout == "slots"
    assert MoMConfig.from_dict(MoMConfig(kv_layout="slots").to_dict()).kv_layout == "slots"


def test_picked_layout_is_refused_with_qkv_assembly():
    with pytest.raises(ConfigError, match="kv_layout"):
        MoMConfig(attention_assembly="qkv", kv_layout="picked")
    with pytest.raises(ConfigError, match="kv_layout"):
        MoMConfig(kv_layout="sparse")


def test_picked_layout_trains_like_slots(batch):
    """Training (no cache, a padded batch): the same loss as 'slots' and gradients reach the routers and modules."""
    slots, picked = routed(kv_layout="slots").train(), routed(kv_layout="picked").train()
    a, b = slots(**batch), picked(**batch)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    b.loss.backward()
    assert picked.attention_router.proj.weight.grad.abs().sum() > 0
    assert all(m.self_attn.q_proj.weight.grad is not None for m in picked.attention_modules)
