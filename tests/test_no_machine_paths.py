"""No committed text names a path of the machine it was written on (issue 34).

Results, reports and docs are read on other machines: a path into this machine's work area, the root
user's home or any user's home means nothing there. Write it relative to the repository instead
(``../shared/data``, ``experiments/results/...``), with ``~`` for the home directory, or as a placeholder
(``<repo>``). experiments/run.py's `portable_paths` does this for what the experiment grids store.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {
    ".md", ".rst", ".txt", ".json", ".jsonl", ".csv", ".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".html",
}  # fmt: skip
# An absolute path: the work area, root's home, or a user's home, at the start of a word (so neither a URL's
# path nor a relative path under .. or ~ counts). Spelled so that this file does not match itself.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:(?:work|root)/|home/[\w.-]+/)")
# (path, what must stay and why). Nothing yet: add an entry only for a path that must be literal, with its reason.
ALLOWED: dict[str, str] = {}


def _tracked_text_files() -> list[Path]:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    names = [n for n in done.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
    return [ROOT / n for n in names if Path(n).suffix.lower() in TEXT_SUFFIXES and n not in ALLOWED]


def test_no_committed_file_names_a_machine_path():
    hits = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:  # tracked but deleted in the working tree
            continue
        if not MACHINE_PATH.search(text):
            continue
        for lineno, line in enumerate(text.splitlines(), start=1):
            if match := MACHINE_PATH.search(line):
                hits.append(
                    f"{path.relative_to(ROOT)}:{lineno}: ...{line[max(0, match.start() - 40) : match.end() + 40]}..."
                )
    assert not hits, "machine paths in committed files (write them relative to the repository):\n" + "\n".join(hits)


def test_the_pattern_finds_machine_paths_and_nothing_else():
    found = [
        "--data /" + "work/shared/data/x.json",
        '"file": "/' + 'root/.cache/modetune/t.json"',
        "cd /" + "home/someone/modetune",
    ]
    kept = [
        "../shared/data/x.json",
        "~/.cache/modetune",
        "https://example.org/" + "work/x",
        "experiments/" + "work/y",
        "/tmp/x",
    ]
    assert all(MACHINE_PATH.search(s) for s in found)
    assert not any(MACHINE_PATH.search(s) for s in kept)
