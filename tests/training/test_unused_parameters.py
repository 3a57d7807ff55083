"""Why DDP runs with find_unused_parameters=False: every trainable parameter gets a gradient on every step."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from modetune import MoDEConfig, get_mode_model
from tests.conftest import build_tiny_model

OPTIONS = {
    "default": {},
    "k=1": {"num_layers": 1},
    "topk-1": {"router": "topk", "top_k": 1},
    "no-distillation": {"distill": "none"},
    "distill-every-2": {"distill_every": 2, "layer_metrics_every": 2},
    "rotate": {"distill_schedule": "rotate"},
    "affine": {"adapter": "affine"},
    "mix-logits": {"mix_in_hidden_space": False},
}


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "mode-only"])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_trainable_parameter_gets_a_gradient_on_every_step(name, peft):
    torch.manual_seed(0)
    ids = torch.randint(3, 90, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    for step in (0, 1):  # a distillation step and (with distill_every=2) one without
        base = build_tiny_model("llama")
        model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear")) if peft else base
        mode = get_mode_model(model, MoDEConfig(loss_implementation="chunked", **OPTIONS[name]))
        mode.train()
        mode.current_step = step
        mode(input_ids=ids, labels=labels, skip_logits=True).loss.backward()
        unused = [n for n, p in mode.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"step {step}: no gradient for {unused}"
