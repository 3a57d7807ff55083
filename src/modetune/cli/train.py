"""`modetune train`: tune a causal LM with LoRA/DoRA and a registered depth method into a run directory.

Each registered method (`modetune.methods`) contributes its config's fields as an option group; a field two
methods share (e.g. `--router-lr-scale`) is one option serving both, each keeping its own default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import fields

from transformers.utils import logging as hf_logging

from modetune.cli.options import add_dataclass_options, dataclass_from_args, print_stopped_session, setup_logging
from modetune.errors import ConfigError
from modetune.method_base import MethodConfig, MethodSpec
from modetune.methods import get_method, registered_methods
from modetune.training.config import OPTIMIZATION_GROUP, TrainConfig, optimization_fields
from modetune.training.recipe import train

_EXPLICIT = "_explicit_method_options"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train LoRA/DoRA + a depth method (MoDE by default) and save a complete run",
        description="Train a causal LM with a depth method: MoDE (Mixture-of-Depths Ensemble, the default) or "
        "MoDification (--method mod). With MoDE, --num-layers 1 trains the PEFT method alone (the ensemble is "
        "the final layer), which is the baseline for a controlled comparison.",
    )
    shared = optimization_fields()
    own = tuple(f.name for f in fields(TrainConfig) if f.name not in shared)
    add_dataclass_options(parser, TrainConfig, "run", skip=shared)
    add_dataclass_options(parser, TrainConfig, OPTIMIZATION_GROUP, skip=own)
    added: set[str] = set()
    for name in registered_methods():
        spec = get_method(name)
        own = {f.name for f in fields(spec.config_class)}
        title = spec.title if name == TrainConfig.method else f"{spec.title} (with --method {name})"
        add_dataclass_options(parser, spec.config_class, title, shared=tuple(sorted(own & added)))
        added |= own
    presets = sorted({p for name in registered_methods() for p in get_method(name).presets})
    parser.add_argument(
        "--preset",
        choices=["default", *presets],
        default="default",
        help="The method's settings to start from: 'default' (its defaults) or a named preset of the method "
        "(MoDE: 'paper', the MoDE paper's configuration, MoDEConfig.paper(), see experiments/PAPER.md); options "
        "given explicitly override it.",
    )
    _record_explicit(parser, added)
    parser.set_defaults(run=run)


def _record_explicit(parser: argparse.ArgumentParser, names: set[str]) -> None:
    """Make each method option note that it was given on the command line, so a preset never overrides it."""

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


def method_config_from_args(spec: MethodSpec, args: argparse.Namespace) -> MethodConfig:
    """The method's config of a `modetune train` command line: the preset, then every explicitly given flag."""
    preset = getattr(args, "preset", "default")
    if preset == "default":
        return dataclass_from_args(spec.config_class, args)
    if preset not in spec.presets:
        allowed = ", ".join(["default", *spec.presets])
        raise ConfigError(f"--preset {preset} is not a preset of --method {spec.name}; allowed: {allowed}")
    own = {f.name for f in fields(spec.config_class)}
    explicit = getattr(args, _EXPLICIT, set()) & own
    return spec.presets[preset](**{name: getattr(args, name) for name in explicit})


def _quiet_other_ranks() -> None:
    """Under torchrun / accelerate launch, rank 0 speaks for the job: the others show errors only."""
    if int(os.environ.get("RANK", "0")) != 0:
        for name in ("", "modetune", "transformers", "peft", "accelerate"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        hf_logging.disable_progress_bar()  # the weight-loading bars


def run(args: argparse.Namespace) -> int:
    setup_logging()
    _quiet_other_ranks()
    cfg = dataclass_from_args(TrainConfig, args)
    method_cfg = method_config_from_args(get_method(cfg.method), args)
    result = train(cfg, method_cfg, argv=["modetune", *sys.argv[1:]])
    if not result.is_main_process:
        return 0
    if result.stopped:
        print_stopped_session(result.run_dir, result.global_step)
        return 0
    print(
        f"done: {result.global_step} steps in {result.seconds / 60:.1f} min, train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    )
    print(f"run saved in {result.run_dir}  (evaluate: modetune eval --run {result.run_dir} --task ...)")
    return 0
