"""The README stays true: every CLI option is documented, and CI runs the README's test command."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from modetune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_readme_option_tables_are_the_generated_ones():
    """The tables are scripts/readme_options.py's output, so every option (sub-subcommands included) is there
    with its current help, choices and default."""
    module = _readme_options()
    generated = module.options_markdown().strip("\n")
    assert module.readme_block() == generated, "option tables are stale: python scripts/readme_options.py --write"


def test_the_generated_tables_name_every_option_and_choice():
    text = _readme_options().options_markdown()
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version"):
                    assert f"`{option}`" in text, option
            if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
                missing = [c for c in action.choices if f"`{c}`" not in text]
                assert not missing, (action.dest, missing)
    assert "#### `modetune data list`" in text and "#### `modetune data fetch`" in text


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def _readme_options():
    spec = importlib.util.spec_from_file_location("readme_options", ROOT / "scripts" / "readme_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command.replace(" -q", "") in readme
