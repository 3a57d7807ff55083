"""Half precision and gradient checkpointing, for each of the three methods.

bf16/fp16 fine-tuning (`modetune train --dtype`) stores the frozen base in half precision and keeps what trains
(LoRA, MoDE's adapters and router, MoD's routers) and the loss's mixing in float32; the Trainer's matching flag
adds autocast. MoM pre-training (`modetune pretrain --mixed-precision bf16`) keeps every weight in float32
under bf16 autocast. The tolerances below are measured on the tiny models (see docs/training.md).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch
from peft import LoraConfig, get_peft_model

from modetune.cli import main
from modetune.data import write_problems
from modetune.loading import resolve_model
from modetune.method_base import get_method
from modetune.mod import get_mod_model
from modetune.mode import get_mode_model
from modetune.mom import MoMConfig, MoMForCausalLM
from modetune.training.config import TrainConfig
from modetune.training.recipe import build_method_model
from tests.conftest import TINY_TRAIN_ARGS, build_tiny_model

# largest |loss(half) - loss(float32)| on the fixed batch (nats), per precision
LOSS_TOLERANCE = {"bfloat16": 0.02, "float16": 0.005}


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, 60, (2, 12))
    return {"input_ids": ids, "labels": ids}


def _method_model(tiny_model_dir, method: str, dtype: str):
    extra = {"skip_first": 1, "skip_last": 1} if method == "mod" else {}
    cfg = TrainConfig(model=str(tiny_model_dir), method=method, dtype=dtype, lora_r=4)
    method_cfg = get_method(method).config_class(**extra)
    torch.manual_seed(0)
    model, _ = build_method_model(cfg, method_cfg, resolve_model(cfg.model))
    return model.train()


def _autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", ["mode", "mod"])
def test_half_precision_trains_in_float32_where_it_matters(tiny_model_dir, method, dtype):
    full, half = _method_model(tiny_model_dir, method, "float32"), _method_model(tiny_model_dir, method, dtype)
    trainable = [(n, p) for n, p in half.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for _, p in trainable), [
        n for n, p in trainable if p.dtype != torch.float32
    ]
    frozen = [p for p in half.causal_lm.get_input_embeddings().parameters()]
    assert all(p.dtype == getattr(torch, dtype) for p in frozen)
    loss_full = full(**_batch()).loss
    with _autocast(dtype):
        loss_half = half(**_batch()).loss
    assert loss_half.dtype == torch.float32  # the loss (and MoDE's mixing) is computed in float32
    assert abs(loss_half.item() - loss_full.item()) <= LOSS_TOLERANCE[dtype], (loss_half.item(), loss_full.item())
    loss_half.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)


def test_mom_under_bf16_autocast_keeps_float32_weights():
    base = build_tiny_model("llama")
    torch.manual_seed(0)
    mom = MoMForCausalLM(MoMConfig(base_config=base.config.to_dict(), num_rounds=3, router_init_bias=0.5)).train()
    loss_full = mom(**_batch()).loss
    with _autocast("bfloat16"):
        loss_half = mom(**_batch()).loss
    assert abs(loss_half.item() - loss_full.item()) <= LOSS_TOLERANCE["bfloat16"]
    loss_half.backward()
    assert all(
        p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in mom.parameters() if p.grad is not None
    )


def _finite_losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
    return losses


@pytest.mark.parametrize("method", ["mode", "mod"])
def test_fifty_bf16_steps_then_eval_in_both_precisions(tmp_path, tiny_model_dir, method, capsys):
    run = tmp_path / "run"
    extra = ["--skip-first", "1", "--skip-last", "1"] if method == "mod" else []
    argv = ["train", "--model", str(tiny_model_dir), "--output", str(run), "--method", method, *TINY_TRAIN_ARGS,
            "--dtype", "bfloat16", "--max-steps", "50", "--save-steps", "0", "--logging-steps", "5", *extra]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert len(_finite_losses(run)) == 10
    data = write_problems(tmp_path / "problems.json", 4, seed=3, difficulty=1, split="test")
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"eval-{dtype}"
        argv = ["eval", "--run", str(run), "--dtype", dtype, "--task", "gsm8k", "--data", str(data),
                "--max-new-tokens", "4", "--output", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        assert json.loads((out / "results.json").read_text())["tasks"]["gsm8k"]["n"] == 4


def test_fifty_bf16_steps_of_mom_pretraining(tmp_path, tiny_model_dir, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"story {i}: a cat sat on a mat and slept." for i in range(300)))
    run = tmp_path / "mom"
    argv = ["pretrain", "--tokenizer", str(tiny_model_dir), "--corpus", str(corpus), "--output", str(run),
            "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--block-size", "16", "--max-steps", "50",
            "--logging-steps", "5", "--mixed-precision", "bf16"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert len(_finite_losses(run)) >= 10


# -- gradient checkpointing -------------------------------------------------------------------------------
def _lora_base():
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(build_tiny_model("llama"), lora)


def _build(method: str):
    if method == "mode":
        return get_mode_model(_lora_base(), num_layers=3)
    if method == "mod":
        model = get_mod_model(_lora_base(), skip_first=1, skip_last=0)
        with torch.no_grad():  # scores around the threshold: some tokens skip each routed layer
            for router in model.routers:
                router.score.weight.normal_()
                router.score.bias.fill_(0.5)
        return model
    base = build_tiny_model("llama")
    torch.manual_seed(0)
    return MoMForCausalLM(MoMConfig(base_config=base.config.to_dict(), num_rounds=3, router_init_bias=0.5))


def _gradients(method: str, checkpointing: bool, monkeypatch) -> tuple[dict[str, torch.Tensor], int]:
    """The parameters' gradients on the fixed batch, and how many times an MLP ran (forward hooks do not fire in
    a checkpoint's recomputation, so the MLP class's forward is counted)."""
    model = _build(method)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    mlp_class = type(next(m for name, m in model.named_modules() if name.endswith("mlp")))
    forward, calls = mlp_class.forward, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(mlp_class, "forward", counted)
        model(**_batch()).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("method", ["mode", "mod", "mom"])
def test_gradient_checkpointing_gives_the_same_gradients(method, monkeypatch):
    plain, plain_calls = _gradients(method, False, monkeypatch)
    checkpointed, recomputed_calls = _gradients(method, True, monkeypatch)
    assert recomputed_calls > plain_calls  # the layers really ran again in backward
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
