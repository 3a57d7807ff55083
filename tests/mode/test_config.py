"""MoDEConfig: JSON round trip and a clear message for every bad value."""

from __future__ import annotations

import json

import pytest

from modetune import ConfigError, MoDEConfig, get_mode_model
from tests.conftest import build_tiny_model


def test_json_round_trip(tmp_path):
    cfg = MoDEConfig(num_layers=4, router="topk", top_k=3, adapter="affine", distill="js", distill_weight=0.3)
    assert MoDEConfig.from_json_string(cfg.to_json_string()) == cfg
    path = cfg.save_pretrained(tmp_path)
    assert json.loads(path.read_text())["top_k"] == 3


def test_every_field_has_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(MoDEConfig))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": -2}, "num_layers"),
        ({"num_layers": 2.5}, "num_layers"),
        ({"router": "gumbel"}, "router='gumbel' is not supported; allowed: 'softmax', 'topk'"),
        ({"adapter": "mlp"}, "adapter='mlp' is not supported; allowed: 'norm', 'affine', 'none'"),
        ({"distill": "mse"}, "distill='mse' is not supported; allowed: 'kl', 'reverse_kl', 'js', 'labels', 'none'"),
        ({"distill": "labels", "distill_temperature": 2.0}, "has no meaning with distill='labels'"),
        ({"router_init": "random"}, "router_init='random'"),
        ({"router": "topk", "top_k": 4, "num_layers": 3}, "top_k=4 is larger than num_layers=3; allowed: 1..3"),
        ({"top_k": 0}, "top_k"),
        ({"distill_weight": -0.1}, "distill_weight=-0.1 is negative"),
        ({"distill_weight": float("nan")}, "distill_weight"),
        ({"distill_temperature": 0}, "distill_temperature=0 must be positive"),
        ({"distill_temperature": -1.0}, "distill_temperature"),
        ({"router_final_weight": 1.0}, "router_final_weight"),
        ({"distill_every": 0}, "distill_every"),
        ({"distill_schedule": "random"}, "distill_schedule"),
        ({"loss_implementation": "fast"}, "loss_implementation"),
        ({"loss_chunk_size": -1}, "loss_chunk_size"),
        ({"distill_detach_teacher": "yes"}, "distill_detach_teacher"),
    ],
)
def test_bad_values_are_rejected_with_field_and_allowed_values(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        MoDEConfig(**kwargs)
    assert needle in str(err.value)


def test_more_layers_than_the_model_has():
    with pytest.raises(ConfigError, match=r"num_layers=5 is larger than the model's 4 decoder layers; allowed: 1..4"):
        get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=5))


def test_unknown_field_in_json():
    with pytest.raises(ConfigError, match="unknown MoDE config field"):
        MoDEConfig.from_dict({"num_layers": 2, "layers_k": 3})


def test_overrides_in_get_mode_model():
    mode = get_mode_model(build_tiny_model("llama"), num_layers=2, adapter="none")
    assert mode.mode_config.num_layers == 2 and mode.mode_config.adapter == "none"
