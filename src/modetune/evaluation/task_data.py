"""The pinned data files of tasks, by task name, alias or group: `modetune data fetch` on top of
`modetune.data.fetch` (which downloads and verifies files and knows nothing of tasks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from modetune.data.fetch import (
    BENCHMARK_CITATIONS,
    DATA_FILES,
    SOURCES,
    DataFile,
    FetchError,
    data_cache_dir,
    fetch_file,
    fetchable_names,
    verify_file,
)
from modetune.errors import ModetuneError
from modetune.evaluation.tasks import GROUPS, get_task

__all__ = ["citations", "fetch_data", "files_for"]


def files_for(names: Iterable[str]) -> list[DataFile]:
    """The pinned files of task names, aliases or groups (``all``, ``arithmetic``, ``commonsense``)."""
    known = fetchable_names()
    wanted: list[str] = []
    for raw in names:
        for name in (p.strip() for p in str(raw).split(",") if p.strip()):
            key = name.lower().replace("-", "_")
            if key == "all":
                wanted.extend(known)
            elif key in GROUPS:
                wanted.extend(t for t in GROUPS[key] if t in known)
            elif key in known:
                wanted.append(key)
            else:
                try:
                    canonical = get_task(name).name
                except ModetuneError:
                    canonical = None
                if canonical not in known:
                    raise FetchError(
                        f"no public file is pinned for '{name}'; fetchable: {', '.join(known)} "
                        "(or all, arithmetic, commonsense; general-text for the general English corpus). "
                        "For other tasks pass your own file with --data"
                    )
                wanted.append(canonical)
    if not wanted:
        raise FetchError("nothing to fetch; name a task (e.g. gsm8k) or 'all'")
    order = list(dict.fromkeys(wanted))
    return [f for name in order for f in DATA_FILES if f.name == name]


def fetch_data(
    names: Iterable[str],
    root: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    on_file: Callable[[DataFile, Path, bool], None] | None = None,
) -> list[Path]:
    """Download (or verify) the pinned files of ``names`` into ``root``; returns their paths.

    ``on_file(spec, path, downloaded)`` is called after each file. Stops at the first failure, with
    the files already verified kept.
    """
    target = Path(root).expanduser() if root is not None else data_cache_dir()
    paths = []
    for spec in files_for(names):
        had = not force and verify_file(spec, target)
        path = fetch_file(spec, target, base_url=base_url, force=force)
        paths.append(path)
        if on_file is not None:
            on_file(spec, path, not had)
    return paths


def citations(names: Iterable[str]) -> list[str]:
    """License and citation lines for the sources and benchmarks behind ``names``' files."""
    specs = files_for(names)
    lines = []
    for key in dict.fromkeys(s.source for s in specs):
        src = SOURCES[key]
        lines.append(f"{src.name} ({src.repo}@{src.commit[:10]}): license: {src.license}. Cite: {src.citation}")
    for name in dict.fromkeys(s.name for s in specs):
        bench = BENCHMARK_CITATIONS.get(name.replace("_openai", ""))
        if bench:
            lines.append(f"{name}: benchmark {bench}")
    return lines
