"""`modetune demo`: the README's first command (embedded SmolLM2, generated problems, before/after)."""

from __future__ import annotations

import argparse
from pathlib import Path

from modetune.cli.options import add_dataclass_options, dataclass_from_args, setup_logging
from modetune.demo import DemoConfig, run_demo
from modetune.errors import ConfigError
from modetune.loading import resolve_model
from modetune.runs import RUN_FILE
from modetune.training.config import PEFT_METHODS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="tune the embedded SmolLM2-135M with LoRA + MoDE on generated arithmetic problems, before/after",
        description="Measure SmolLM2-135M-Instruct on held-out generated arithmetic problems, train LoRA + MoDE for "
        "a few minutes, and measure again. Needs nothing but PyPI.",
    )
    add_dataclass_options(parser, DemoConfig, "demo")
    parser.set_defaults(run=run)


def check_demo_config(cfg: DemoConfig) -> None:
    """Every demo option (and the directory it will replace) checked before anything is loaded or deleted."""
    for name in ("train_problems", "test_problems", "max_steps", "batch_size", "num_layers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.learning_rate > 0:
        raise ConfigError(f"--learning-rate must be positive, got {cfg.learning_rate}")
    if cfg.difficulty not in ("1", "2", "3", "mixed"):
        raise ConfigError(f"--difficulty {cfg.difficulty!r} is not a level; allowed: 1, 2, 3, mixed")
    if cfg.peft not in PEFT_METHODS:
        raise ConfigError(f"--peft {cfg.peft!r} is not supported; allowed: {', '.join(PEFT_METHODS)}")
    out = Path(cfg.output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RUN_FILE).is_file())):
        raise ConfigError(
            f"--output {out} exists and is not a modetune run; the demo only replaces its own run "
            "directories: choose another --output"
        )
    resolve_model(cfg.model)


def run(args: argparse.Namespace) -> int:
    setup_logging("modetune.data", "modetune.training")
    cfg = dataclass_from_args(DemoConfig, args)
    check_demo_config(cfg)
    run_demo(cfg)
    return 0
