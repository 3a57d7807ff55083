"""The README and the docs stay true: every CLI option is documented, and CI runs the README's test command."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from modetune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_option_tables_are_the_generated_ones():
    """docs/options.md's tables are scripts/docs_options.py's output, so every option (sub-subcommands included)
    is there with its current help, choices and default."""
    module = _docs_options()
    generated = module.options_markdown().strip("\n")
    assert module.page_block() == generated, "option tables are stale: python scripts/docs_options.py --write"


def test_the_generated_tables_name_every_option_and_choice():
    text = _docs_options().options_markdown()
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version"):
                    assert f"`{option}`" in text, option
            if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
                missing = [c for c in action.choices if f"`{c}`" not in text]
                assert not missing, (action.dest, missing)
    assert "## `modetune data list`" in text and "## `modetune data fetch`" in text


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def _docs_options():
    spec = importlib.util.spec_from_file_location("docs_options", ROOT / "scripts" / "docs_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command.replace(" -q", "") in readme


def test_the_readme_stays_short_and_links_every_docs_page():
    """The README is the front page (what modetune is, set-up, quick starts, results); the rest lives in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "the README grew past 300 lines: move the detail to a docs/ page"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", readme))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    for report in ("experiments/RESULTS.md", "benchmarks/RESULTS.md"):
        assert f"]({report})" in readme, report
