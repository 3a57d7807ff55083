"""The Liger-Kernel loss path, held to the reference computation.

No GPU here: Triton's interpreter runs the very same Liger kernels on CPU, so loss and gradients are compared
for real (TRITON_INTERPRET=1, set by tests/conftest.py). On a CUDA machine the same tests run the compiled
kernels.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("liger_kernel.transformers.functional", reason="liger-kernel is not installed")

from peft import LoraConfig, get_peft_model

from modetune import MoDEConfig, get_mode_model
from modetune.errors import ConfigError
from tests.conftest import TRITON_INTERPRETED, build_tiny_model

# the interpreter evaluates masked-out lanes too (-inf - -inf there); the values are never used
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def loss_and_grads(model_type: str, batch, implementation: str, **overrides):
    torch.manual_seed(0)
    peft_model = get_peft_model(build_tiny_model(model_type), LoraConfig(r=4, target_modules="all-linear"))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    cfg = MoDEConfig(num_layers=3, router_init="uniform", loss_implementation=implementation, **overrides)
    mode = get_mode_model(peft_model, cfg).train()
    mode.current_step = 0  # a distillation and metrics step
    with torch.no_grad():
        mode.router.gate.weight.normal_(0, 0.3)
        for p in mode.adapters.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = mode(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in mode.named_parameters() if p.grad is not None}
    return out, grads, mode


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {"distill": "kl"}),
        ("llama", {"distill": "reverse_kl", "distill_temperature": 2.0}),
        ("llama", {"distill": "js", "distill_weight": 0.5}),
        ("llama", {"distill": "none"}),
        ("llama", {"distill": "labels", "distill_weight": 0.5}),
        ("llama", {"distill_schedule": "rotate"}),
        ("cohere", {"distill": "kl"}),  # logit scale folded into the input
        ("opt", {"distill": "kl", "adapter": "affine"}),  # a pre-head projection (project_out) with LoRA on it
    ],
)
def test_liger_matches_reference(model_type, overrides, batch):
    ref_out, ref, _ = loss_and_grads(model_type, batch, "reference", **overrides)
    lig_out, lig, mode = loss_and_grads(model_type, batch, "liger", **overrides)
    assert mode.loss_implementation(torch.device("cpu")) == "liger"
    assert abs(lig_out.loss.item() - ref_out.loss.item()) / ref_out.loss.item() < 1e-5
    torch.testing.assert_close(lig_out.ce_loss, ref_out.ce_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lig_out.distill_loss, ref_out.distill_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lig_out.layer_ce, ref_out.layer_ce, rtol=1e-5, atol=1e-6)
    assert ref.keys() == lig.keys()
    assert any("lora_A" in n for n in ref) and any(n.startswith("router.") for n in ref)
    for name in ref:
        torch.testing.assert_close(lig[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_liger_skips_layer_metrics_between_metric_steps(batch):
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, loss_implementation="liger"))
    mode.train()
    mode.current_step = 1  # distillation every step, layer metrics every 10
    out = mode(**batch)
    assert out.layer_ce is None and (out.distill_loss > 0).all()
    with torch.no_grad():  # evaluation: no gradients anywhere, metrics always
        evaluated = mode.eval()(**batch)
    reference = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, loss_implementation="reference"))
    with torch.no_grad():
        expected = reference.eval()(**batch)
    torch.testing.assert_close(evaluated.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(evaluated.layer_ce, expected.layer_ce, rtol=1e-5, atol=1e-6)


def test_auto_uses_liger_only_where_it_holds(batch, monkeypatch):
    llama = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3))
    assert llama.mode_config.loss_implementation == "auto"
    assert llama.loss_implementation(torch.device("cpu")) == "liger"  # TRITON_INTERPRET=1 stands in for CUDA
    gemma2 = get_mode_model(build_tiny_model("gemma2"), MoDEConfig(num_layers=3))
    assert gemma2.loss_implementation(torch.device("cpu")) == "chunked"  # soft-capped: mixes logits
    phi = get_mode_model(build_tiny_model("phi"), MoDEConfig(num_layers=3))
    assert phi.loss_implementation(torch.device("cpu")) == "chunked"  # head bias: no fused JSD
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3))
    assert cpu.loss_implementation(torch.device("cpu")) == "chunked"
    assert torch.isfinite(cpu.train()(**batch).loss)


@pytest.mark.parametrize(
    ("model_type", "overrides", "message"),
    [
        ("gemma2", {}, "soft-caps"),
        ("phi", {}, "bias"),
        ("llama", {"distill_detach_teacher": False}, "distill_detach_teacher=True"),
        ("llama", {"mix_in_hidden_space": False}, "mix_in_hidden_space=False"),
    ],
)
def test_explicit_liger_refuses_what_it_cannot_compute(model_type, overrides, message):
    cfg = MoDEConfig(num_layers=3, loss_implementation="liger", **overrides)
    with pytest.raises(ConfigError, match=message):
        get_mode_model(build_tiny_model(model_type), cfg)


@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a CUDA machine has the device")
def test_explicit_liger_names_the_missing_device(batch, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    mode = get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3, loss_implementation="liger"))
    with pytest.raises(ConfigError, match="need a CUDA device"):
        mode.train()(**batch)
