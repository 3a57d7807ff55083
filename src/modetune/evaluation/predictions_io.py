"""Reading and compressing ``predictions.jsonl``, plain or gzipped.

`modetune eval` writes ``predictions.jsonl`` (one JSON object per question). Stored results (the
experiment grids' ``experiments/results``) keep the same lines as ``predictions.jsonl.gz``, compressed
deterministically (no file name, mtime 0), so compressing the same file twice gives the same bytes. Every
reader goes through `read_predictions` / `iter_predictions`, which accept a directory, either file name, or
a path to the plain name whose gzipped twin is what exists. `compress_tree` converts a directory tree.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modetune.errors import DataError

__all__ = [
    "GZIPPED",
    "NAMES",
    "PLAIN",
    "compress_predictions",
    "compress_tree",
    "iter_predictions",
    "prediction_dirs",
    "predictions_file",
    "read_predictions",
]

PLAIN = "predictions.jsonl"
GZIPPED = "predictions.jsonl.gz"
NAMES = (PLAIN, GZIPPED)


def predictions_file(path: str | Path) -> Path | None:
    """The predictions file that ``path`` names: the file itself (either name), the one in a directory, or
    for ``.../predictions.jsonl`` that no longer exists its ``.gz`` twin; None if there is none. A
    directory holding both names is ambiguous (one may be stale) and raises DataError."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in NAMES if (path / name).is_file()]
        if len(found) > 1:
            raise DataError(f"{path}: holds both {PLAIN} and {GZIPPED}; keep one")
        return found[0] if found else None
    if path.name in NAMES and path.is_file():
        return path
    if path.name == PLAIN and path.with_name(GZIPPED).is_file():
        return path.with_name(GZIPPED)
    return None


def prediction_dirs(root: str | Path, pattern: str = "*") -> list[Path]:
    """The directories matching ``root/pattern`` that hold a predictions file (either name), sorted."""
    root = Path(root)
    return sorted({p.parent for name in NAMES for p in root.glob(f"{pattern}/{name}")})


def _text(file: Path) -> str:
    try:
        data = gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{file}: not a readable gzip file ({exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def iter_predictions(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON value) for every non-blank line of a predictions file (see
    `predictions_file` for what ``path`` may be). Raises DataError naming the file and line."""
    file = predictions_file(path)
    if file is None:
        raise DataError(f"{path}: no {PLAIN} or {GZIPPED}")
    for lineno, line in enumerate(_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}, line {lineno}: not valid JSON ({exc.msg})") from exc


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Every prediction (one dict per question) of a directory, ``predictions.jsonl`` or
    ``predictions.jsonl.gz``, in file order."""
    rows = []
    for lineno, row in iter_predictions(path):
        if not isinstance(row, dict):
            raise DataError(f"{predictions_file(path)}, line {lineno}: a prediction must be a JSON object")
        rows.append(row)
    return rows


def compress_predictions(path: str | Path) -> Path:
    """Replace ``predictions.jsonl`` (a file, or the one in a directory) by ``predictions.jsonl.gz`` holding
    the same bytes, written deterministically (no name, mtime 0, level 9); returns the new file. The plain
    file is removed only once the compressed one is complete and reads back identical."""
    path = Path(path)
    plain = path / PLAIN if path.is_dir() else path
    if plain.name != PLAIN or not plain.is_file():
        raise DataError(f"{path}: no {PLAIN} to compress")
    target = plain.with_name(GZIPPED)
    data = plain.read_bytes()
    temporary = target.with_name(target.name + ".partial")
    with temporary.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)
    if gzip.decompress(temporary.read_bytes()) != data:
        temporary.unlink()
        raise DataError(f"{plain}: compressed copy does not read back identical")
    os.replace(temporary, target)
    plain.unlink()
    return target


def compress_tree(root: str | Path) -> list[Path]:
    """Compress every ``predictions.jsonl`` under ``root`` (see `compress_predictions`); the new files."""
    return [compress_predictions(p) for p in sorted(Path(root).rglob(PLAIN))]
