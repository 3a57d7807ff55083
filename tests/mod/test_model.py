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
    assert abs(report["achieved_skip"] - 0.25) <= 0.005  # each layer set on the scores it sees: exact up to ties
    assert abs(mod.skipped_share(batches[4:])[0] - 0.25) <= 0.04  # held-out batches: close as well
    thresholds = mod.mod_config.layer_thresholds
    assert len(thresholds) == 4 and len(set(thresholds)) == 4  # each layer its own threshold
    before = mod(batches[4]["input_ids"], use_cache=False).processed_fraction
    mod.mod_config.layer_thresholds = [thresholds[0], 0.0, *thresholds[2:]]  # the second layer processes everything
    after = mod(batches[4]["input_ids"], use_cache=False).processed_fraction
    assert before[1] < 1.0 and after[1] == 1.0 and after[0] == before[0]  # the layer above it is untouched


@pytest.mark.parametrize("target", [0.1, 0.4])
def test_calibration_is_exact_on_padded_batches_of_different_lengths(target):
    base = build_tiny_model("llama", num_hidden_layers=6)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, target_skip=target, sink_tokens=2))
    _randomize_routers(mod, seed=5)
    batches = []
    for seed, length in enumerate((20, 32, 27)):
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, length - 6 :] = 0  # a padded row
        batches.append({"input_ids": _ids(3, length, seed=seed), "attention_mask": mask})
    report = mod.finish_training(batches)
    assert abs(report["achieved_skip"] - target) <= 0.005
    assert report["calibration_tokens"] == 3 * (20 + 32 + 27) - 3 * 6


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


# -- the conversion recipe: influence start, global shares, distillation -------------------------------------
def _influence(base, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """1 - cos(x_in, x_out) of decoder layer `layer` for each token, on the base model."""
    captured = {}
    target = base.model.layers[layer]
    pre = target.register_forward_pre_hook(lambda m, a, k: captured.update(x=k.get("hidden_states", a[0] if a else None)),
                                           with_kwargs=True)  # fmt: skip
    post = target.register_forward_hook(lambda m, a, o: captured.update(y=o if torch.is_tensor(o) else o[0]))
    try:
        with torch.no_grad():
            base(ids, use_cache=False)
    finally:
        pre.remove()
        post.remove()
    return 1 - torch.cosine_similarity(captured["x"], captured["y"], dim=-1)


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [v.flatten().argsort().argsort().float() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def test_influence_start_ranks_tokens_by_layer_influence_and_skips_from_the_first_step():
    base = build_tiny_model("llama", num_hidden_layers=6)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, target_skip=0.25, router_start="influence"))
    batches = [{"input_ids": _ids(8, 32, seed=s)} for s in range(8)]
    report = mod.begin_training(batches)
    assert report["router_start"]["tokens"] == 8 * 8 * 31  # every real token but the sink
    assert all(r2 > 0 for r2 in report["router_start"]["r2"])
    assert abs(report["calibration"]["achieved_skip"] - 0.25) <= 0.005
    held_out = _ids(8, 32, seed=99)
    with torch.no_grad(), mod.routing():  # routing on, nothing skipped: each router scores its layer's real input
        mod.mod_config.layer_thresholds = [0.0] * 4
        captured = {}
        hook = mod.routers[1].register_forward_hook(lambda m, a, o: captured.update(score=o))
        mod.model(held_out, use_cache=False)
        hook.remove()
    # held-out tokens: the fitted score ranks them by influence (0.29 on this random model; 0.5-0.87 on SmolLM2)
    assert _rank_correlation(captured["score"][:, 1:], _influence(base, held_out, 2)[:, 1:]) > 0.15
    mod.mod_config.layer_thresholds = report["calibration"]["layer_thresholds"]
    mod.train()
    out = mod(held_out, labels=held_out)
    assert (out.processed_fraction < 1).all()  # the first training step already skips
    with torch.no_grad():  # however the routers move, each training batch skips the calibrated shares
        for router in mod.routers:
            router.score.bias.sub_(5.0)
    shares = torch.tensor(report["calibration"]["layer_shares"])
    skipped = 1 - mod(held_out, labels=held_out).processed_fraction
    torch.testing.assert_close(skipped, shares, atol=1.5 / (8 * 32), rtol=0)
    mod.eval()  # at use, the thresholds stay as they are
    thresholds = list(mod.mod_config.layer_thresholds)
    mod(_ids(2, 32, seed=7), use_cache=False)
    assert mod.mod_config.layer_thresholds == thresholds


def test_constant_start_leaves_the_routers_as_they_are():
    mod = get_mod_model(build_tiny_model("llama", num_hidden_layers=4), MoDConfig(target_skip=0.25, skip_first=1,
                                                                                  skip_last=1))  # fmt: skip
    before = {k: v.clone() for k, v in mod.routers.state_dict().items()}
    assert mod.begin_training([{"input_ids": _ids(2, 16)}]) == {}
    assert all(torch.equal(before[k], v) for k, v in mod.routers.state_dict().items())


def test_global_allocation_skips_more_where_scores_are_lower():
    base = build_tiny_model("llama", num_hidden_layers=6)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, target_skip=0.3, share_allocation="global"))
    with torch.no_grad():
        for slot, router in enumerate(mod.routers):  # layer 1 scores lowest, layer 4 highest
            router.score.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(slot))
            router.score.bias.fill_(slot - 1.5)
    batches = [{"input_ids": _ids(4, 32, seed=s)} for s in range(4)]
    report = mod.finish_training(batches)
    assert abs(report["achieved_skip"] - 0.3) <= 0.005
    fractions = mod(batches[0]["input_ids"], use_cache=False).processed_fraction
    assert fractions[0] < fractions[1] < fractions[2] <= fractions[3]


def test_teacher_is_the_base_model_with_adapters_and_routing_off():
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model("llama", num_hidden_layers=4)
    ids = _ids(2, 24)
    with torch.no_grad():
        expected = base(ids).logits
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    mod = get_mod_model(peft, MoDConfig(skip_first=1, skip_last=1, objective="distill"))
    _randomize_routers(mod, seed=1)
    mod.mod_config.threshold = 0.5
    assert torch.equal(mod.teacher_logits(ids), expected)
    assert not torch.allclose(mod(ids, use_cache=False).logits, expected)  # the student differs: LoRA and skipping
    assert mod.is_peft and all(m.active_adapters == ["default"] for m in [peft])  # adapters back on afterwards


def test_distill_objective_is_the_kl_to_the_teacher_and_trains_lora_and_routers():
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model("llama", num_hidden_layers=4)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    mod = get_mod_model(peft, MoDConfig(skip_first=1, skip_last=1, objective="distill", load_weight=0.0))
    mod.train()
    ids = _ids(3, 20)
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    out = mod(ids, attention_mask=mask, labels=ids)
    assert float(out.loss) == pytest.approx(0.0, abs=1e-6)  # at the start the converted model is the base model
    _randomize_routers(mod, seed=4)
    out = mod(ids, attention_mask=mask, labels=ids)
    teacher = mod.teacher_logits(ids, mask).log_softmax(-1)
    kl = (teacher.exp() * (teacher - out.logits.log_softmax(-1))).sum(-1)
    assert float(out.loss) == pytest.approx(float(kl[mask.bool()].mean()), rel=1e-5)
    assert float(out.loss) > 1e-4 and out.distill_loss is not None and out.lm_loss is not None
    out.loss.backward()
    trained = {n.split(".")[0] if n.startswith("routers") else "lora" for n, p in mod.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}  # fmt: skip
    assert trained == {"routers", "lora"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"router_start": "learned"}, "router_start='learned' is not supported"),
        ({"share_allocation": "per_layer"}, "share_allocation='per_layer' is not supported"),
        ({"objective": "kl"}, "objective='kl' is not supported"),
    ],
)
def test_recipe_choices_are_checked(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MoDConfig(**fields)


# -- routing only the attention or only the MLP ------------------------------------------------------------------
@pytest.mark.parametrize("part", ["attention", "mlp"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "olmo2"])
def test_routed_part_skips_only_that_part(family, part):
    """A skipped token gets no update from the routed part (the rest of the layer runs on it as usual); with
    routed_module='mlp' every layer keeps every key/value, with 'attention' the routed layer only the kept ones."""
    base = build_tiny_model(family, num_hidden_layers=4)
    mod = get_mod_model(base, MoDConfig(operator="topk", capacity=0.5, routed_layers=[2], routed_module=part))
    _randomize_routers(mod, seed=1)
    ids = _ids(1, 16)
    target = getattr(mod._located.layers[2], "self_attn" if part == "attention" else "mlp")
    seen = {}
    handle = target.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0] if args else None, out=out))
    cache = MoDCache()
    with torch.no_grad():
        result = mod(ids, cache=cache, use_cache=True)
        handle.remove()
        dense = base(ids).logits
    update = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    assert 0 < result.processed_fraction[0].item() < 1
    skipped = update[0].abs().sum(-1) == 0
    assert skipped.any() and not skipped[0]  # skipped tokens get exactly zero; the sink token is processed
    assert int((~skipped).sum()) == round(result.processed_fraction[0].item() * 16)
    assert not torch.allclose(result.logits, dense)
    if part == "mlp":
        assert all(cache.layer_length(i) == 16 for i in range(4))  # no context lost
    else:
        assert cache.layer_length(2) == int((~skipped).sum()) and cache.layer_length(1) == 16


@pytest.mark.parametrize("part", ["attention", "mlp"])
def test_routed_part_equals_the_base_when_every_token_is_processed(part):
    base = build_tiny_model("llama", num_hidden_layers=4)
    ids = _ids(2, 12)
    with torch.no_grad():
        expected = base(ids).logits
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, routed_module=part))
    with torch.no_grad():
        torch.testing.assert_close(mod(ids, use_cache=False).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("part", ["attention", "mlp"])
@pytest.mark.parametrize("operator", ["threshold", "topk"])
def test_routed_part_decodes_with_a_cache_as_without(part, operator):
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, routed_module=part, operator=operator))
    _randomize_routers(mod, seed=2)
    ids = _ids(1, 12)
    cached = mod.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    uncached = mod.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    if operator == "threshold":  # top-k's decoding rule is a causal stand-in, not the prompt's own top-k
        assert torch.equal(cached, uncached)
    cache = MoDCache()
    with torch.no_grad():
        mod(cached[:, :-1], cache=cache, use_cache=True)
        step = mod(cached[:, -1:], cache=cache, use_cache=True).logits[:, -1]
        if operator == "threshold":
            torch.testing.assert_close(step, mod(cached, use_cache=False).logits[:, -1], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(step).all()


def test_routed_part_in_a_padded_batch_matches_single_sequences():
    base = build_tiny_model("llama", num_hidden_layers=4)
    mod = get_mod_model(base, MoDConfig(threshold=0.5, skip_first=1, skip_last=1, routed_module="attention"))
    _randomize_routers(mod, seed=3)
    a, b = _ids(1, 10, seed=1), _ids(1, 6, seed=2)
    batch = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, :6], mask[1, :6] = b[0], 1
    with torch.no_grad():
        together = mod(batch, attention_mask=mask, use_cache=False).logits
        alone = mod(b, use_cache=False).logits
    torch.testing.assert_close(together[1, :6], alone[0], rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_routers_of_a_routed_part():
    mod = get_mod_model(build_tiny_model("llama", num_hidden_layers=4),
                        MoDConfig(skip_first=1, skip_last=1, routed_module="mlp", router_weight="normalized"))  # fmt: skip
    _randomize_routers(mod, seed=5)
    mod.train()
    ids = _ids(2, 12)
    mod(ids, labels=ids).loss.backward()
    assert all(r.score.weight.grad is not None and r.score.weight.grad.abs().sum() > 0 for r in mod.routers)


@pytest.mark.parametrize("part", ["attention", "mlp"])
def test_influence_start_fits_a_routed_part_to_its_update_size(part):
    base = build_tiny_model("llama", num_hidden_layers=5)
    mod = get_mod_model(base, MoDConfig(skip_first=1, skip_last=1, target_skip=0.1, router_start="influence",
                                        routed_module=part))  # fmt: skip
    batches = [{"input_ids": _ids(8, 32, seed=s)} for s in range(6)]
    report = mod.begin_training(batches)
    assert all(r2 > 0 for r2 in report["router_start"]["r2"])
    assert abs(report["calibration"]["achieved_skip"] - 0.1) <= 0.005
    layer = mod._located.layers[2]
    block = layer.self_attn if part == "attention" else layer.mlp
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: seen.update(x=k.get("hidden_states", a[0] if a else None)),
                                             with_kwargs=True),
             block.register_forward_pre_hook(lambda m, a, k: seen.update(b=k.get("hidden_states", a[0] if a else None)),
                                             with_kwargs=True),
             block.register_forward_hook(lambda m, a, o: seen.update(u=o if torch.is_tensor(o) else o[0]))]  # fmt: skip
    with torch.no_grad():
        base(_ids(8, 32, seed=50), use_cache=False)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        score = mod.routers[1](seen["b"])
    size = seen["u"].norm(dim=-1) / seen["x"].norm(dim=-1)
    assert _rank_correlation(score[:, 1:], size[:, 1:]) > 0.15
