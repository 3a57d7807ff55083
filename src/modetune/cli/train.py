"""`modetune train`: tune a causal LM with LoRA/DoRA + MoDE (or MoDE alone) into a run directory."""

from __future__ import annotations

import argparse
import sys

from modetune.cli.options import add_dataclass_options, dataclass_from_args, setup_logging
from modetune.config import MoDEConfig
from modetune.training.config import TrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train LoRA/DoRA + MoDE (or MoDE alone) and save a complete run",
        description="Train a causal LM with Mixture-of-Depths Ensemble. --num-layers 1 trains the PEFT method alone "
        "(the ensemble is the final layer), which is the baseline for a controlled comparison.",
    )
    add_dataclass_options(parser, TrainConfig, "run")
    add_dataclass_options(parser, MoDEConfig, "MoDE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modetune.training.recipe import train

    setup_logging()
    cfg = dataclass_from_args(TrainConfig, args)
    mode_cfg = dataclass_from_args(MoDEConfig, args)
    result = train(cfg, mode_cfg, argv=["modetune", *sys.argv[1:]])
    print(
        f"done: {result.global_step} steps in {result.seconds / 60:.1f} min, train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    )
    print(f"run saved in {result.run_dir}  (evaluate: modetune eval --run {result.run_dir} --task ...)")
    return 0
