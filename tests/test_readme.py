"""The README stays true: every CLI option is documented, and CI runs the README's test command."""

from __future__ import annotations

import argparse
from pathlib import Path

from modetune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_every_cli_option_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {option}"
        for name, parser in sub.choices.items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help" and f"`{option}`" not in readme
    ]
    assert not missing, f"undocumented options (run scripts/readme_options.py): {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command.replace(" -q", "") in readme
