"""What the multi-process equality tests (DDP, DeepSpeed, FSDP) share: one tiny recipe, its tolerances, and
reading a finished run's files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

COMMON = [
    "--data", "synthetic:48:1", "--cutoff-len", "96", "--lora-r", "4", "--learning-rate", "5e-3",
    "--lora-dropout", "0", "--max-steps", "6", "--save-steps", "2", "--loss-implementation", "chunked",
]  # fmt: skip
WEIGHT_ATOL = 2e-5
LOSS_RTOL = 1e-5


def train_args(model: Path, out: Path, batch: int, *extra: str) -> list[str]:
    """`modetune train` on the tiny recipe at a per-process batch size."""
    return ["train", "--model", str(model), "--output", str(out), *COMMON, "--batch-size", str(batch), *extra]


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    """Everything the run trained: the MoDE weights and the LoRA adapter."""
    return {**load_file(run / "mode_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


def train_logs(run: Path) -> list[dict]:
    """The training records of metrics.jsonl (those with a loss), in order."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
