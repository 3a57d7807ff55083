"""`modetune train`: tune a causal LM with LoRA/DoRA + MoDE (or MoDE alone) into a run directory."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from modetune.cli.options import add_dataclass_options, dataclass_from_args, setup_logging
from modetune.mod.config import MoDConfig
from modetune.mode.config import MoDEConfig
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
    add_dataclass_options(parser, MoDConfig, "MoD (with --method mod)", shared=("router_lr_scale",))
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="default",
        help="MoDE settings to start from: 'default' (modetune's defaults) or 'paper' (the MoDE paper's "
        "configuration: MoDEConfig.paper(), see experiments/PAPER.md); MoDE flags given explicitly override it.",
    )
    _record_explicit(parser, {f.name for f in fields(MoDEConfig)})
    parser.set_defaults(run=run)


PRESETS = ("default", "paper")
_EXPLICIT = "_explicit_mode_options"


def _record_explicit(parser: argparse.ArgumentParser, names: set[str]) -> None:
    """Make each MoDE option note that it was given on the command line, so a preset never overrides it."""

    for action in parser._actions:
        if action.dest not in names:
            continue
        base = type(action)

        def call(self, parser, namespace, values, option_string=None, _base=base):
            if not hasattr(namespace, _EXPLICIT):
                setattr(namespace, _EXPLICIT, set())
            getattr(namespace, _EXPLICIT).add(self.dest)
            _base.__call__(self, parser, namespace, values, option_string)

        action.__class__ = type(f"Recorded{base.__name__}", (base,), {"__call__": call})


def mode_config_from_args(args: argparse.Namespace) -> MoDEConfig:
    """The MoDE config of a `modetune train` command line: the preset, then every explicitly given flag."""
    preset = getattr(args, "preset", "default")
    if preset == "default":
        return dataclass_from_args(MoDEConfig, args)
    explicit = getattr(args, _EXPLICIT, set())
    values = {name: getattr(args, name) for name in explicit}
    return MoDEConfig.paper(**values)


def _quiet_other_ranks() -> None:
    """Under torchrun / accelerate launch, rank 0 speaks for the job: the others show errors only."""
    import logging
    import os
    import warnings

    if int(os.environ.get("RANK", "0")) != 0:
        for name in ("", "modetune", "transformers", "peft", "accelerate"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bars


def run(args: argparse.Namespace) -> int:
    from modetune.training.recipe import train

    setup_logging()
    _quiet_other_ranks()
    cfg = dataclass_from_args(TrainConfig, args)
    mode_cfg = dataclass_from_args(MoDConfig, args) if cfg.method == "mod" else mode_config_from_args(args)
    result = train(cfg, mode_cfg, argv=["modetune", *sys.argv[1:]])
    if not result.is_main_process:
        return 0
    print(
        f"done: {result.global_step} steps in {result.seconds / 60:.1f} min, train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    )
    print(f"run saved in {result.run_dir}  (evaluate: modetune eval --run {result.run_dir} --task ...)")
    return 0
