"""Reading a finished run's files, for the tests that compare multi-process training with one process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    """Everything the run trained: the MoDE weights and the LoRA adapter."""
    return {**load_file(run / "mode_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


def train_logs(run: Path) -> list[dict]:
    """The training records of metrics.jsonl (those with a loss), in order."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
