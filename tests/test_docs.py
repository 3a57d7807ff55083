"""The documentation site builds without broken links, and every `modetune ...` command it shows parses.

The commands are the ones in fenced code blocks of README.md and docs/*.md. They are parsed by the real CLI
parser (`modetune.cli.build_parser`, as `modetune` itself builds it) and never run. Synopsis notation is
expanded first: `[...]` marks optional parts (kept), `(A | B)` and `a|b` alternatives (each one is parsed),
`...` repetition (dropped), and placeholders for numbers (`--limit N`) get a number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Placeholders that stand for numbers in synopses (`--limit N`, `--num-rounds H --k-per-round K ...`).
NUMBER_PLACEHOLDERS = {"N": "10", "H": "4", "K": "1", "S": "1"}

# Commands shown in the docs that cannot parse offline, each with the reason. Empty: every command parses.
# An entry is the command exactly as `_commands` returns it (continuation lines joined, comment dropped).
ALLOWED_TO_FAIL: dict[str, str] = {}


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason='mkdocs or mkdocs-material is not installed (pip install -e ".[docs]"; the dev extra includes it)',
)
def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: every page in the nav, no link to a missing page or heading anchor."""
    config, site = str(ROOT / "mkdocs.yml"), str(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", config, "--site-dir", site],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav():
    """mkdocs only warns about a page missing from the nav; here it is an error even without mkdocs."""
    config = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert re.search(rf":\s*{re.escape(page.name)}\s*$", config, re.M), f"{page.name} is not in mkdocs.yml's nav"


def test_every_documented_command_parses():
    from modetune.cli import build_parser

    parser = build_parser()
    commands = _commands()
    failures = []
    for page, command in commands:
        for argv in _expand(command):
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    parser.parse_args(argv)
            except SystemExit:
                if command not in ALLOWED_TO_FAIL:
                    failures.append(f"{page}: {command}\n  as {shlex.join(argv)}\n  {stderr.getvalue().strip()}")
                continue
            # argparse also accepts an unambiguous prefix (`--num-layer`); the docs spell every option in full
            known = _option_strings(parser, argv)
            abbreviated = [w for w in argv if w.startswith("--") and w.split("=", 1)[0] not in known]
            if abbreviated:
                failures.append(f"{page}: {command}\n  abbreviated or unknown option(s) {abbreviated}")
    assert not failures, "documented commands that do not parse:\n" + "\n".join(failures)
    shown = {" ".join(argv[:2]) if argv[0] == "data" else argv[0] for _, c in commands for argv in _expand(c)}
    assert shown >= {"train", "eval", "compare", "inspect", "pretrain", "demo", "data fetch"}, shown
    stale = set(ALLOWED_TO_FAIL) - {command for _, command in commands}
    assert not stale, f"ALLOWED_TO_FAIL names commands no page shows any more: {stale}"


def test_the_synopsis_expansion():
    assert _expand("modetune eval (--model MODEL | --run RUN_DIR) [--limit N] [--scoring generate|loglikelihood]") == [
        ["eval", "--model", "MODEL", "--limit", "10", "--scoring", "generate"],
        ["eval", "--model", "MODEL", "--limit", "10", "--scoring", "loglikelihood"],
        ["eval", "--run", "RUN_DIR", "--limit", "10", "--scoring", "generate"],
        ["eval", "--run", "RUN_DIR", "--limit", "10", "--scoring", "loglikelihood"],
    ]
    assert _expand("modetune compare A B [--pool A2 B2]...") == [["compare", "A", "B", "--pool", "A2", "B2"]]
    assert _expand('.venv/bin/modetune demo --output "runs/my demo"') == [["demo", "--output", "runs/my demo"]]


def _option_strings(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option strings of the (sub-)subcommand that `argv` runs, and of the parsers above it."""
    known = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for i, word in enumerate(argv):
                if word in action.choices:
                    return known | _option_strings(action.choices[word], argv[i + 1 :])
    return known


def _commands() -> list[tuple[str, str]]:
    """(page, command) for every `modetune ...` command in a fenced code block (`&&` chains split)."""
    found = []
    for page in PAGES:
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(), re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s#.*$", "", line).strip()  # a trailing shell comment
                for part in re.split(r"&&|;", line):
                    part = " ".join(part.split())
                    first = part.split(" ", 1)[0]
                    if first == "modetune" or first.endswith("/modetune"):
                        found.append((page.relative_to(ROOT).as_posix(), part))
    assert len(found) >= 10, found
    return found


def _expand(command: str) -> list[list[str]]:
    """Every concrete argv (without the program name) a synopsis stands for."""
    alternatives = re.search(r"\(([^()]*\|[^()]*)\)", command)
    if alternatives:
        return [
            argv
            for choice in alternatives.group(1).split("|")
            for argv in _expand(command[: alternatives.start()] + choice.strip() + command[alternatives.end() :])
        ]
    command = command.replace("...", " ").replace("[", " ").replace("]", " ")
    words = shlex.split(command)[1:]
    options = [word.split("|") if "|" in word else [word] for word in words]
    return [[NUMBER_PLACEHOLDERS.get(w, w) for w in argv] for argv in itertools.product(*options)]
