"""The `modetune` command line: a thin layer over the library.

Each subcommand lives in its own module with two functions, `add_parser(subparsers)` and
`run(args) -> int`. User errors (`ModetuneError`) are printed as one clear message, exit status 2.
Under a multi-process launcher every rank validates the same inputs, so only each node's first process
(LOCAL_RANK 0) prints a user error: once per node, not once per rank.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from modetune.errors import exit_status
from modetune.version import __version__

# name -> module under modetune.cli; imported lazily so `modetune --help` stays fast
SUBCOMMANDS = {
    "train": "modetune.cli.train",
    "demo": "modetune.cli.demo",
    "eval": "modetune.cli.evaluate",
    "compare": "modetune.cli.compare",
    "pretrain": "modetune.cli.pretrain",
    "inspect": "modetune.cli.inspect",
    "export": "modetune.cli.export",
    "data": "modetune.cli.data",
}


def speaks_for_node() -> bool:
    """True in a plain process and in each node's first rank (torchrun / accelerate set LOCAL_RANK)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported once per node under a multi-process launcher."""

    def error(self, message: str):  # type: ignore[override]
        if not speaks_for_node():
            sys.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modetune",
        description="Dynamic depth for Hugging Face causal LMs: Mixture-of-Depths Ensemble (MoDE), MoDification "
        "(Mixture-of-Depths conversion) and Mixture-of-Modules.",
    )
    parser.add_argument("--version", action="version", version=f"modetune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # subcommand not built yet
            if exc.name != module_name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return exit_status(lambda: args.run(args), f"modetune {args.command}", quiet=not speaks_for_node())


if __name__ == "__main__":
    sys.exit(main())
