"""MoDification core: exactness at initialisation, per-layer KV, cached decoding, gradients, save/load, load loss."""

from __future__ import annotations

import re

import pytest
import torch

from modetune.errors import CheckpointError, ConfigError
from modetune.mod import MoDCache, MoDConfig, MoDModel, get_mod_model
from tests.conftest import VOCAB, build_tiny_model

# Llama-style families (decoder layers called with keyword arguments, RoPE position embeddings, full attention).
FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "olmo2", "phi3", "granite", "cohere"]


def _randomize_routers(mod: MoDModel, seed: int = 0, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in mod.routers:
            router.score.weight.copy_(torch.randn(router.score.weight.shape, generator=gen) * scale)
            router.score.bias.zero_()


def _ids(batch: int = 1, length: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_initial_model_equals_base_exactly(family, threshold):
    base = build_tiny_model(family, num_hidden_layers=5)
    ids = _ids(1, 14)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids[:, :10]], 1)  # a left-padded second row
    batch, mask = torch.cat([ids, padded]), torch.ones(2, 14, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        ref, ref_batch = base(ids).logits, base(batch, attention_mask=mask).logits
        mod = get_mod_model(base, MoDConfig(threshold=threshold, skip_first=1, skip_last=1))
        out, out_batch = mod(ids), mod(batch, attention_mask=mask)
    assert torch.equal(out.logits, ref)  # bit for bit
    assert torch.equal(out.processed_fraction, torch.ones(3))
    # padded batches: padding slots are masked rather than absent, so equal up to summation order
    torch.testing.assert_close(out_batch.logits[mask.bool()], ref_batch[mask.bool()], rtol=1e-5, atol=1e-5)


def test_threshold_near_zero_processes_everything_after_training_like_routers():
    base = build_tiny_model("llama", num_hidden_layers=5)
    ids = _ids()
    with torch.no_grad():
        ref = base(ids).logits
        mod = get_mod_model(base, MoDConfig(threshold=0.0, router_weight="straight_through", skip_first=0))
        _randomize_routers(mod)
        out = mod(ids)
    assert torch.equal(out.processed_fraction, torch.ones(len(mod.layer_indices)))
    assert torch.equal(out.logits, ref)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma"])
def test_skipped_token_passes_unchanged_and_has_no_kv_entry(family):
    base = build_tiny_model(family, num_hidden_layers=4)
    mod = get_mod_model(base, MoDConfig(threshold=0.5, routed_layers=[2]))
    _randomize_routers(mod, seed=1)
    ids = _ids(1, 16)
    seen = {}
    layer = mod._located.layers[2]
    handle = layer.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0], out=out))
    cache = MoDCache()
    with torch.no_grad():
        result = mod(ids, cache=cache, use_cache=True)
    handle.remove()
    processed = result.processed_fraction[0].item()
    assert 0 < processed < 1, "the random router should split the tokens"
    g = torch.sigmoid(mod.routers[0](seen["inp"]))[0]
    kept = g > 0.5
    kept[0] = True  # the sink token (position 0) is always processed
    assert torch.equal(seen["out"][0, ~kept], seen["inp"][0, ~kept])  # skipped: bit-identical pass-through
    assert not torch.equal(seen["out"][0, kept], seen["inp"][0, kept])
    assert cache.layer_length(2) == int(kept.sum())
    assert cache.layer_length(1) == cache.layer_length(3) == 16
    assert torch.equal(cache.key_positions(2)[0], torch.nonzero(kept).flatten())
    assert cache.get_seq_length() == 16


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "olmo2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_and_uncached_agree(family, attn):
    base = build_tiny_model(family, num_hidden_layers=5, attn_implementation=attn)
    mod = get_mod_model(base, MoDConfig(threshold=0.5, skip_first=1, skip_last=1))
    _randomize_routers(mod, seed=2)
    ids = _ids(1, 12)
    cached = mod.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    uncached = mod.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    # logits of a cached step equal those of the full recomputation
    cache = MoDCache()
    with torch.no_grad():
        mod(cached[:, :-1], cache=cache, use_cache=True)
        step = mod(cached[:, -1:], cache=cache, use_cache=True).logits[:, -1]
        full = mod(cached, use_cache=False).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    assert any(cache.layer_length(i) < cached.shape[1] for i in mod.layer_indices)


def test_padded_batch_decodes_like_single_sequences():
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(threshold=0.5, skip_first=1, skip_last=1))
    _randomize_routers(mod, seed=4)
    a, b = _ids(1, 10, seed=5), _ids(1, 6, seed=6)
    batch = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 4:], mask[1, 4:] = b[0], 1  # left padding
    out = mod.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    alone_a = mod.generate(a, max_new_tokens=6, do_sample=False, pad_token_id=0)
    alone_b = mod.generate(b, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 10:], alone_a[0, 10:])
    assert torch.equal(out[1, 10:], alone_b[0, 6:])


def test_topk_processes_capacity_per_sequence_and_decodes():
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(operator="topk", capacity=0.25, skip_first=1, skip_last=1, sink_tokens=0))
    _randomize_routers(mod, seed=7)
    ids = _ids(1, 16)
    cache = MoDCache()
    with torch.no_grad():
        out = mod(ids, cache=cache, use_cache=True)
    assert torch.allclose(out.processed_fraction, torch.full((3,), 0.25))
    assert all(cache.layer_length(i) == 4 for i in mod.layer_indices)
    generated = mod.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 21)


def test_gradients_reach_routers_and_lora_only():
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model("llama", num_hidden_layers=5)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    mod = get_mod_model(peft, MoDConfig(threshold=0.5, skip_first=1, skip_last=1, load_weight=1.0, load_target=0.2))
    _randomize_routers(mod, seed=8, scale=0.3)
    with torch.no_grad():  # LoRA B starts at 0: give it a value so A receives gradient too
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    mod.train()
    ids = _ids(2, 12)
    out = mod(ids, labels=ids)
    out.loss.backward()
    trainable = {n for n, p in mod.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("routers.") for n in trainable)
    for name, p in mod.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert out.lm_loss is not None and out.load_loss is not None
    assert torch.allclose(out.loss, out.lm_loss + out.load_loss)


def test_save_and_load_give_identical_outputs(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(build_tiny_model("llama", num_hidden_layers=5), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    mod = get_mod_model(peft, MoDConfig(threshold=0.45, skip_first=1, skip_last=1))
    _randomize_routers(mod, seed=9)
    mod.save_pretrained(tmp_path)
    assert (tmp_path / "mod_config.json").is_file() and (tmp_path / "mod_model.safetensors").is_file()
    loaded = MoDModel.from_pretrained(build_tiny_model("llama", num_hidden_layers=5), tmp_path)
    ids = _ids(1, 16)
    with torch.no_grad():
        assert torch.equal(mod.eval()(ids).logits, loaded(ids).logits)
    assert loaded.mod_config == mod.mod_config
    with pytest.raises(CheckpointError, match="different base model"):
        MoDModel.from_pretrained(build_tiny_model("llama", num_hidden_layers=6), tmp_path)


def test_load_objective_moves_the_processed_fraction():
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(
        base,
        MoDConfig(threshold=0.5, skip_first=1, skip_last=1, load_weight=5.0, load_target=0.0, router_init_bias=1.0),
    )
    mod.train()
    optimizer = torch.optim.Adam(mod.routers.parameters(), lr=0.1)
    ids = _ids(4, 16)
    first = None
    for _ in range(25):
        out = mod(ids, labels=ids)
        first = out.processed_fraction if first is None else first
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert torch.equal(first, torch.ones(3))
    assert out.processed_fraction.mean() < 0.5
    with torch.no_grad():
        assert mod.eval()(ids).processed_fraction.mean() < 0.5


def test_config_validation_and_json_round_trip():
    cfg = MoDConfig(operator="topk", capacity=0.3, routed_layers=[1, 3], load_weight=0.5)
    assert MoDConfig.from_json_string(cfg.to_json_string()) == cfg
    assert cfg.layer_indices(6) == [1, 3]
    assert MoDConfig(skip_first=1, skip_last=1, layer_stride=2).layer_indices(8) == [1, 3, 5]
    for bad in (dict(operator="x"), dict(threshold=1.0), dict(capacity=0), dict(load_weight=-1), dict(layer_stride=0)):
        with pytest.raises(ConfigError):
            MoDConfig(**bad)
    with pytest.raises(ConfigError, match="no layer gets a router"):
        get_mod_model(build_tiny_model("llama"), MoDConfig(skip_first=2, skip_last=2))
    with pytest.raises(ConfigError, match="unknown MoD config field"):
        MoDConfig.from_dict({"thresh": 0.2})


def test_sink_tokens_are_always_processed():
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(threshold=0.99, skip_first=1, skip_last=1, sink_tokens=2))
    cache = MoDCache()
    with torch.no_grad():
        mod(_ids(1, 12), cache=cache, use_cache=True)  # sigmoid(3) < 0.99: only the sinks pass
    for idx in mod.layer_indices:
        assert torch.equal(cache.key_positions(idx)[0], torch.tensor([0, 1]))


def test_random_operator_processes_its_capacity_whatever_the_scores():
    """operator='random' (the chance baseline): each token is processed with probability `capacity`, the same under
    a fixed torch seed, and the routers' scores play no part."""
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(operator="random", capacity=0.3, skip_first=1, skip_last=1, sink_tokens=0))
    ids = _ids(2, 200)
    fractions = []
    for routers_scale in (0.0, 5.0):
        _randomize_routers(mod, seed=1, scale=routers_scale)
        torch.manual_seed(0)
        with torch.no_grad():
            fractions.append(mod(ids, use_cache=False).processed_fraction)
    assert torch.equal(fractions[0], fractions[1])
    assert ((fractions[0] - 0.3).abs() < 0.08).all()
    generated = mod.generate(ids[:1, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 12)


def test_calibration_reaches_the_target_share_with_one_threshold_per_layer():
    base = build_tiny_model("llama", num_hidden_layers=6)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, target_skip=0.25))
    _randomize_routers(mod, seed=2)
    batches = [{"input_ids": _ids(4, 32, seed=s)} for s in range(6)]
    report = mod.finish_training(batches[:4])
    assert abs(report["achieved_skip"] - 0.25) <= 0.02
    assert abs(mod.skipped_share(batches[4:])[0] - 0.25) <= 0.04  # held-out batches: close as well
    thresholds = mod.mod_config.layer_thresholds
    assert len(thresholds) == 4 and len(set(thresholds)) == 4  # each layer its own threshold
    before = mod(batches[4]["input_ids"], use_cache=False).processed_fraction
    mod.mod_config.layer_thresholds = [thresholds[0], 0.0, *thresholds[2:]]  # the second layer processes everything
    after = mod(batches[4]["input_ids"], use_cache=False).processed_fraction
    assert before[1] < 1.0 and after[1] == 1.0 and after[0] == before[0]  # the layer above it is untouched


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_skip": 1.5}, "target_skip=1.5 is out of range"),
        ({"target_skip": 0.2, "operator": "topk"}, "it needs operator='threshold'"),
        ({"layer_thresholds": [0.5, 1.2]}, "must be a list of numbers in [0, 1)"),
    ],
)
def test_calibration_settings_are_checked(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MoDConfig(**fields)


def test_calibration_settings_are_checked_against_the_model_depth():
    with pytest.raises(ConfigError, match="layer_thresholds has 1 values for 2 routed layers"):
        MoDConfig(skip_first=1, skip_last=1, layer_thresholds=[0.5]).validate(4)
    with pytest.raises(ConfigError, match=r"target_skip=0\.6 cannot be reached"):
        MoDConfig(skip_first=1, skip_last=1, target_skip=0.6).validate(4)
