"""The MoDE paper's own choices as options: a bias-free router (g = softmax(x W_g)) and the `paper` preset."""

from __future__ import annotations

import pytest
import torch

from modetune import MoDEConfig, MoDEModel, get_mode_model
from modetune.cli import build_parser
from modetune.cli.train import method_config_from_args
from modetune.errors import ConfigError
from modetune.mode import PAPER_PRESET
from modetune.mode import SPEC as MODE
from tests.conftest import build_tiny_model


def test_paper_preset_values_and_overrides():
    cfg = MoDEConfig.paper()
    assert (cfg.num_layers, cfg.router, cfg.router_bias, cfg.router_init) == (3, "softmax", False, "uniform")
    assert (cfg.adapter, cfg.distill, cfg.distill_weight, cfg.distill_detach_teacher) == ("norm", "kl", 1.0, True)
    assert MoDEConfig.paper(distill_weight=0.3).distill_weight == 0.3
    # modetune's defaults are untouched by the preset
    assert MoDEConfig().router_bias is True and MoDEConfig().router_init == "final"
    assert MoDEConfig().distill_weight == 0.1
    assert set(PAPER_PRESET) <= set(MoDEConfig().to_dict())


def test_bias_free_router_needs_uniform_init():
    with pytest.raises(ConfigError, match="router_bias=False cannot start from router_init='final'"):
        MoDEConfig(router_bias=False, router_init="final")
    with pytest.raises(ConfigError, match="router_bias"):
        MoDEConfig(router_bias="no")
    MoDEConfig(router_bias=False, router_init="final", num_layers=1)  # k = 1: no routing at all


def test_bias_free_router_is_softmax_of_xwg_and_trains(batch):
    model = get_mode_model(build_tiny_model("llama"), MoDEConfig.paper())
    gate = model.router.gate
    assert gate.bias is None
    out = model(**batch)
    # starts uniform (W_g = 0) and routes by softmax(x W_g) exactly
    assert torch.allclose(out.router_weights, torch.full_like(out.router_weights, 1 / 3))
    with torch.no_grad():
        gate.weight.normal_()
    captured = {}
    handle = model._located.final_norm.register_forward_hook(lambda m, a, o: captured.setdefault("y", o))
    out = model(**batch)
    handle.remove()
    expected = torch.softmax(captured["y"].float() @ gate.weight.T, dim=-1)
    assert torch.allclose(out.router_weights, expected, atol=1e-6)
    out.loss.backward()
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0


def test_bias_free_router_saves_and_loads(tmp_path, batch):
    model = get_mode_model(build_tiny_model("llama"), MoDEConfig.paper())
    with torch.no_grad():
        model.router.gate.weight.normal_()
    assert "router.gate.bias" not in model.method_state_dict()
    model.save_pretrained(tmp_path)
    loaded = MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    assert loaded.mode_config.router_bias is False
    model.eval()
    assert torch.allclose(model(**batch).logits, loaded(**batch).logits, atol=1e-6)


def _parse(*flags: str):
    return build_parser().parse_args(["train", "--output", "x", "--data", "synthetic", *flags])


def test_train_preset_paper_and_explicit_flags_win():
    assert method_config_from_args(MODE, _parse()) == MoDEConfig()
    assert method_config_from_args(MODE, _parse("--preset", "paper")) == MoDEConfig.paper()
    cfg = method_config_from_args(MODE, _parse("--preset", "paper", "--distill-weight", "0.1", "--num-layers", "4"))
    assert cfg == MoDEConfig.paper(distill_weight=0.1, num_layers=4)
    # an explicit flag equal to modetune's default still overrides the preset
    cfg = method_config_from_args(MODE, _parse("--preset", "paper", "--router-bias", "--router-init", "final"))
    assert cfg.router_bias is True and cfg.router_init == "final" and cfg.distill_weight == 1.0
    with pytest.raises(SystemExit):
        _parse("--preset", "nonsense")
