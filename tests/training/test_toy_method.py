"""A fourth method is a new package plus one registration: a toy method defined here, registered from this file,
trains, saves, loads and evaluates through `modetune train --method toy` without any change to modetune.

The toy learns one logit scale (a temperature) on top of the PEFT-tuned model: a positive scale never changes
greedy decoding, so its `generate` is the wrapped model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune import method_base
from modetune.cli import main
from modetune.errors import ConfigError
from modetune.method_base import (
    MethodConfig,
    MethodModel,
    MethodSpec,
    check_positive,
    get_method,
    help_field,
    register_method,
    registered_methods,
)
from modetune.runs import load_run
from tests.conftest import TINY_TRAIN_ARGS


@dataclass
class ToyConfig(MethodConfig):
    config_name: ClassVar[str] = "toy_config.json"
    method_name: ClassVar[str] = "toy"

    initial_scale: float = help_field("The logit scale to start from.", default=1.0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, num_model_layers: int | None = None) -> None:
        check_positive(self, "initial_scale")


class ToyModel(MethodModel):
    config_class: ClassVar[type[ToyConfig]] = ToyConfig
    weights_name: ClassVar[str] = "toy_model.safetensors"
    counts_key: ClassVar[str] = "toy"

    def __init__(self, model: nn.Module, config: ToyConfig) -> None:
        super().__init__(model, config)
        self.scale = nn.Linear(1, 1, bias=False)  # a module, so it is saved as the method's own weights
        nn.init.constant_(self.scale.weight, config.initial_scale)
        self.scale.to(self.device)
        self.layer_indices = [len(self._located.layers) - 1]

    def method_modules(self) -> dict[str, nn.Module]:
        return {"scale": self.scale}

    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs: Any):
        for name in ("skip_logits", "micro_batches"):  # what MethodTrainer passes a method
            kwargs.pop(name, None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits * self.scale.weight[0, 0]
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].flatten(0, 1).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
            loss = loss / count
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.generate(*args, **kwargs)

    def training_logs(self, outputs: Any, share_scale: float = 1.0) -> dict[str, float]:
        return {"toy_scale": float(self.scale.weight.detach())}


TOY = MethodSpec(
    name="toy",
    config_class=ToyConfig,
    model_class=ToyModel,
    title="Toy",
    summary="one learned logit scale on top of the tuned model (a test of the method registry)",
    tags=("toy-method",),
)


@pytest.fixture
def toy_registered():
    register_method(TOY)
    yield TOY
    method_base._METHODS.pop("toy", None)  # leave the registry as the other tests expect it


def test_a_registered_method_trains_saves_loads_and_evaluates_from_the_cli(
    toy_registered, tmp_path, tiny_model_dir, capsys
):
    run = tmp_path / "toy_run"
    code = main(
        ["train", "--method", "toy", "--initial-scale", "2.0", "--peft", "lora", "--model", str(tiny_model_dir),
         "--output", str(run), "--max-steps", "3", "--save-steps", "2", *TINY_TRAIN_ARGS]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["toy_config"] == {"initial_scale": 2.0}
    assert {"toy_config.json", "toy_model.safetensors", "adapter_model.safetensors", "checkpoint-2"} <= {
        p.name for p in run.iterdir()
    }
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("toy_scale" in r for r in logged if "loss" in r)  # the method's own logged values
    card = (run / "README.md").read_text()
    assert '- "toy-method"' in card and "one learned logit scale" in card and "initial_scale | 2.0" in card

    model, _, loaded = load_run(run)
    assert isinstance(model, ToyModel) and loaded["toy_config"]["initial_scale"] == 2.0
    trained_scale = float(model.scale.weight)
    assert trained_scale != 2.0  # it trained, and the trained value is what was saved and loaded

    # resume is compared against the method's own config, like MoDE's
    code = main(
        ["train", "--method", "toy", "--initial-scale", "3.0", "--model", str(tiny_model_dir), "--output", str(run),
         "--resume", "--max-steps", "3", *TINY_TRAIN_ARGS]
    )  # fmt: skip
    assert code == 2 and "initial_scale: was 2.0, now 3.0" in capsys.readouterr().err

    gsm8k = tmp_path / "gsm8k.json"
    gsm8k.write_text(json.dumps([{"instruction": "What is 2 plus 3?", "answer": "5"}] * 2))
    out = tmp_path / "eval"
    code = main(
        ["eval", "--run", str(run), "--task", "gsm8k", "--data", f"gsm8k={gsm8k}", "--max-new-tokens", "2",
         "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["tasks"]["gsm8k"]["n"] == 2


def test_the_registry_refuses_clashes_and_names_the_registered_methods(toy_registered):
    assert registered_methods()[:2] == ("mode", "mod") and "toy" in registered_methods()
    register_method(TOY)  # the same spec again: a no-op
    clash = MethodSpec(name="toy", config_class=ToyConfig, model_class=ToyModel, title="Other", summary="")
    with pytest.raises(ConfigError, match="clashes with the registered method 'toy'"):
        register_method(clash)
    with pytest.raises(ConfigError, match="allowed: mode, mod, toy"):
        get_method("tyo")


def test_an_unknown_method_is_a_clear_cli_error(tmp_path, tiny_model_dir, capsys):
    code = main(["train", "--method", "tyo", "--model", str(tiny_model_dir), "--output", str(tmp_path / "r"),
                 *TINY_TRAIN_ARGS])  # fmt: skip
    assert code == 2
    assert "method='tyo' is not supported; allowed: mode, mod" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
