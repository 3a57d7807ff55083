"""`modetune demo`: the README's first command (embedded SmolLM2, generated problems, before/after)."""

from __future__ import annotations

import argparse

from modetune.cli.options import add_dataclass_options, dataclass_from_args, setup_logging
from modetune.demo import DemoConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="tune the embedded SmolLM2-135M with LoRA + MoDE on generated arithmetic problems, before/after",
        description="Measure SmolLM2-135M-Instruct on held-out generated arithmetic problems, train LoRA + MoDE for "
        "a few minutes, and measure again. Needs nothing but PyPI.",
    )
    add_dataclass_options(parser, DemoConfig, "demo")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modetune.demo import run_demo

    setup_logging("modetune.data", "modetune.training")
    run_demo(dataclass_from_args(DemoConfig, args))
    return 0
