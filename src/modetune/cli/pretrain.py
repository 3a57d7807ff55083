"""`modetune pretrain`: pre-train a small vanilla transformer or Mixture-of-Modules model on a text corpus."""

from __future__ import annotations

import argparse
import sys

from modetune.cli.options import add_dataclass_options, dataclass_from_args, print_stopped_session, setup_logging
from modetune.training.config import OPTIMIZATION_GROUP, optimization_fields
from modetune.training.pretrain import PretrainConfig, config_fields, pretrain


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train a vanilla or Mixture-of-Modules (MoM) model (or a control for MoM) from scratch and save a complete run",
        description="Pre-train a llama-style transformer (--arch vanilla), a Mixture-of-Modules model (--arch mom) or "
        "a control for MoM (--arch vanilla-gated: per-token gated residual updates) on a text corpus, into a run "
        "directory like `modetune train`'s (metrics, curves, resumable checkpoints). --init-from builds the MoM pool "
        "from an existing model's layers (phase 2 of the paper); --preset authors takes the authors' MoM settings.",
    )
    mom, gate, shared = PretrainConfig.MOM_FIELDS, PretrainConfig.GATE_FIELDS, optimization_fields()
    add_dataclass_options(parser, PretrainConfig, "run", skip=mom + gate + shared)
    add_dataclass_options(
        parser, PretrainConfig, OPTIMIZATION_GROUP, skip=tuple(n for n in config_fields() if n not in shared)
    )
    add_dataclass_options(parser, PretrainConfig, "MoM", skip=tuple(n for n in config_fields() if n not in mom))
    add_dataclass_options(
        parser, PretrainConfig, "vanilla-gated", skip=tuple(n for n in config_fields() if n not in gate)
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = dataclass_from_args(PretrainConfig, args)
    result = pretrain(cfg, argv=["modetune", *sys.argv[1:]])
    if result.stopped:
        print_stopped_session(result.run_dir, result.global_step)
        return 0
    print(
        f"done: {result.global_step} steps in {result.seconds / 60:.1f} min, train loss {result.train_loss:.4f}, "
        f"held-out loss {result.eval_loss:.4f} (perplexity {result.perplexity:.2f})"
    )
    print(f"run saved in {result.run_dir}")
    return 0
