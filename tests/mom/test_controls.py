"""The controls a MoM comparison needs: the gated-residual vanilla model, FLOP matching, the authors' preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from modetune.errors import ConfigError
from modetune.mom import (
    AUTHORS_PRESET,
    GatedLlamaConfig,
    GatedLlamaForCausalLM,
    MoMConfig,
    MoMForCausalLM,
    mom_forward_flops,
)
from modetune.mom.flops import matched_vanilla_intermediate_size, matched_vanilla_layers, vanilla_flops_per_token
from tests.conftest import VOCAB

SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2)  # fmt: skip


def gated(seed: int = 0, **overrides) -> GatedLlamaForCausalLM:
    torch.manual_seed(seed)
    return GatedLlamaForCausalLM(GatedLlamaConfig(**{**SIZES, **overrides})).eval()


def vanilla(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SIZES)).eval()


def live_gates(model: GatedLlamaForCausalLM) -> GatedLlamaForCausalLM:
    """Gates that differ per token (random w), so the cache tests see real gating."""
    with torch.no_grad():
        for pair in model.gates():
            for gate in pair:
                gate.weight.normal_(0, 1.0)
    return model


# -- gated vanilla ---------------------------------------------------------------------------------------
def test_same_seed_gives_the_vanilla_weights_and_gates_start_at_gate_init(batch):
    model, plain = gated(gate_init=0.34), vanilla()
    own, theirs = model.state_dict(), plain.state_dict()
    assert all(torch.equal(own[k], theirs[k]) for k in theirs)
    assert {k for k in own if k not in theirs} == {
        f"model.layers.{i}.{g}_gate.{p}" for i in range(3) for g in ("attention", "ffn") for p in ("weight", "bias")
    }
    model(**batch)
    for pair in model.gates():
        for gate in pair:
            assert torch.equal(gate.weight, torch.zeros(32))
            torch.testing.assert_close(gate.last_mean, torch.tensor(0.34))
    logs = model.training_logs(None)
    assert logs == pytest.approx({"gate/attention": 0.34, "gate/ffn": 0.34})


def test_gates_forced_to_one_reduce_exactly_to_the_vanilla_model(batch):
    model, plain = gated(), vanilla()
    with torch.no_grad():
        for pair in model.gates():
            for gate in pair:
                gate.weight.normal_()  # whatever w is, b = 40 makes sigmoid exactly 1.0 in float32
                gate.bias.fill_(40.0)
        a = model(**batch).logits
        b = plain(**batch).logits
        assert torch.equal(a, b)
        # and a gate below one changes the output (the gates are really in the path)
        model.gates()[0][1].bias.fill_(0.0)
        assert not torch.allclose(model(**batch).logits, b)


def test_gated_cached_and_uncached_agree(batch):
    model = live_gates(gated())
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        out = model(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        cache, steps = out.cache, [out.logits]
        for t in range(7, ids.shape[1]):
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=1e-4, atol=1e-5)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), model.generate(ids, use_cache=False, **kw))


def test_gated_save_and_load_round_trip(tmp_path, batch):
    model = live_gates(gated(gate_init=0.8))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, GatedLlamaForCausalLM) and loaded.config.gate_init == 0.8
    assert loaded.config.model_type == "modetune_gated_llama"
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded.eval()(**batch).logits)


def test_gates_train_and_bad_gate_init_is_refused(batch):
    model = gated().train()
    model(**batch).loss.backward()
    for pair in model.gates():
        for gate in pair:
            assert gate.weight.grad.abs().sum() > 0 and gate.bias.grad != 0
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="gate_init must be in"):
            GatedLlamaConfig(gate_init=bad)


def test_scalar_gates_scale_every_token_alike_and_train(tmp_path, batch):
    """gate_mode='scalar': one learnt scale per branch (no per-token weight), started at gate_init."""
    model = gated(gate_init=0.34, gate_mode="scalar").train()
    names = {k for k in model.state_dict() if "_gate." in k}
    assert names == {f"model.layers.{i}.{g}_gate.bias" for i in range(3) for g in ("attention", "ffn")}
    hidden = torch.randn(2, 5, 32)
    for pair in model.gates():
        for gate in pair:
            g = gate(hidden)
            assert g.shape == (2, 5, 1) and torch.allclose(g, torch.full_like(g, 0.34))
    model(**batch).loss.backward()
    assert all(gate.bias.grad != 0 for pair in model.gates() for gate in pair)
    with torch.no_grad():
        for i, (attention, ffn) in enumerate(model.gates()):
            attention.bias.fill_(0.1 * i)
            ffn.bias.fill_(-0.2 * i)
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.gate_mode == "scalar" and all(a.weight is None for a, _ in loaded.gates())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    with pytest.raises(ConfigError, match="gate_mode 'layer' is not supported; allowed: token, scalar"):
        GatedLlamaConfig(gate_mode="layer")


def test_a_config_saved_before_gate_mode_loads_per_token_gates(tmp_path):
    model = gated(gate_init=0.5)
    model.save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    saved = json.loads(config.read_text())
    del saved["gate_mode"]
    config.write_text(json.dumps(saved))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.gate_mode == "token" and all(a.weight is not None for a, _ in loaded.gates())


# -- FLOP matching ---------------------------------------------------------------------------------------
def mom_config(**overrides) -> MoMConfig:
    base = {**LlamaConfig(**SIZES).to_dict(), "num_hidden_layers": 4}
    values = dict(num_attention_modules=4, num_ffn_modules=4, num_rounds=4, k_per_round=2, router_hidden_size=8)
    return MoMConfig(base_config=base, **{**values, **overrides})


@pytest.mark.parametrize(("attention_picks", "ffn_picks"), [(None, None), (1.06, 1.06), (0.5, 1.5), (1.0, 0.0)])
def test_matched_layers_are_the_closest_vanilla_flops(attention_picks, ffn_picks):
    cfg = mom_config()
    target = MoMForCausalLM(cfg).forward_flops_per_token(16, attention_picks, ffn_picks)
    chosen = matched_vanilla_layers(cfg, attention_picks, ffn_picks, context=16)
    cost = {n: vanilla_flops_per_token(LlamaConfig(**{**SIZES, "num_hidden_layers": n}), 16) for n in range(1, 40)}
    best = min(abs(c - target) for c in cost.values())
    assert abs(cost[chosen] - target) == best
    assert all(abs(cost[n] - target) > best for n in range(1, chosen))  # ties go to fewer layers


def test_matched_layers_known_cases():
    # fixed routes: MoM is the vanilla model of its rounds; K=2 without SKIPs: about twice its layers
    assert matched_vanilla_layers(mom_config(fixed_routes=True)) == 4
    # K=1, linear routers (a fraction of a layer's cost in all): the vanilla model of the rounds
    assert matched_vanilla_layers(mom_config(k_per_round=1, router="linear"), 1.0, 1.0) == 4
    # GRU routers of state 8 at d=32 cost 0.87 of a layer over 4 rounds: one more layer
    assert matched_vanilla_layers(mom_config(k_per_round=1), 1.0, 1.0) == 5
    assert matched_vanilla_layers(mom_config(router="linear"), 2.0, 2.0) == 8
    with pytest.raises(ConfigError, match="between 0 and K=2"):
        matched_vanilla_layers(mom_config(), 2.5, 1.0)


def test_matched_ffn_width_is_the_closest():
    cfg = mom_config()
    target = MoMForCausalLM(cfg).forward_flops_per_token(0, 1.2, 1.2)
    width = matched_vanilla_intermediate_size(cfg, num_layers=4, attention_picks=1.2, ffn_picks=1.2, multiple=8)
    assert width % 8 == 0
    cost = {w: vanilla_flops_per_token(LlamaConfig(**{**SIZES, "num_hidden_layers": 4, "intermediate_size": w}))
            for w in range(8, 1024, 8)}  # fmt: skip
    assert abs(cost[width] - target) == min(abs(c - target) for c in cost.values())


def test_mom_flops_of_the_config_equal_the_models():
    cfg = mom_config(attention_assembly="qkv")
    model = MoMForCausalLM(cfg)
    for args in ((0,), (16, 1.0), (16, 0.5, 1.5)):
        assert model.forward_flops_per_token(*args) == mom_forward_flops(cfg, *args)
    # by hand, 16 keys, 1 attention and K=2 FFN modules per round: attention 2(32x32x2 + 32x16x2) + 2x2x32x16,
    # FFN 2x3x32x64, two GRU routers 2x2(3(32x8 + 8x8) + 8x5), 4 rounds, head 2x32x96
    assert model.forward_flops_per_token(16, 1.0) == 4 * (8192 + 2 * 12288 + 4000) + 6144
    # a gated vanilla model costs its vanilla model plus two d-wide dot products per layer
    gated_cost = vanilla_flops_per_token(GatedLlamaConfig(**SIZES), 16)
    assert gated_cost - vanilla_flops_per_token(LlamaConfig(**SIZES), 16) == 3 * 2 * 2 * 32


# -- the authors' preset and the router temperature -----------------------------------------------------
def test_authors_preset_sets_exactly_the_listed_fields():
    assert AUTHORS_PRESET == {
        "k_per_round": 1,
        "num_skip_modules": 1,
        "router": "gru",
        "router_hidden_size": 256,
        "router_temperature": 0.2,
        "weighting": "topk_softmax",
        "load_balance_weight": 0.01,
        "attention_assembly": "qkv",
        "kv_layout": "slots",
    }
    cfg = MoMConfig.authors_preset(num_rounds=3)
    default = MoMConfig(num_rounds=3).to_dict()
    changed = {k for k, v in cfg.to_dict().items() if default.get(k) != v}
    assert changed == {k for k, v in AUTHORS_PRESET.items() if default[k] != v}
    assert all(getattr(cfg, k) == v for k, v in AUTHORS_PRESET.items())
    with pytest.raises(ConfigError, match="k_per_round"):
        MoMConfig.authors_preset(k_per_round=2)
    with pytest.raises(ConfigError, match="unknown MoM preset"):
        MoMConfig.preset("mine")


def test_router_temperature_sharpens_the_weights_and_is_validated(batch):
    def weights(temperature: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = MoMForCausalLM(mom_config(router_temperature=temperature, k_per_round=1)).eval()
        with torch.no_grad():
            for p in model.attention_router.parameters():
                p.normal_(0, 0.5)
            x = model.embed_tokens(batch["input_ids"])
            w, *_ = model._route(model.attention_router, x, None, 0, 4, [])
        return w.sum(-1)

    plain, sharp = weights(1.0), weights(0.2)
    picked = (plain > 0) & (sharp > 0)
    assert picked.any() and bool((sharp[picked] > plain[picked]).all())
    with pytest.raises(ConfigError, match="router_temperature"):
        MoMConfig(router_temperature=0.0)
    assert MoMConfig().router_temperature == 1.0 and math.isfinite(MoMConfig(router_temperature=0.2).router_temperature)
