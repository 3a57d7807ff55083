"""Hugging Face ``datasets`` as data sources: hub names from the local cache, saved datasets, Parquet/Arrow/CSV.

Wherever modetune takes a data file (``--data``, `modetune.data.load_datasets`), it also takes

* a ``datasets.Dataset`` or ``DatasetDict`` object (Python API);
* a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a ``.parquet``, ``.arrow`` or ``.csv``/``.tsv`` file;
* a hub dataset name (``openai/gsm8k``, ``NAME:CONFIG``), **only if it is already in the local cache**:
  the hub is never contacted (offline mode is forced for the call). ``SOURCE@SPLIT`` picks a split.

Rows become `Example` records through the same record formats as JSON files (``instruction``/``input``/
``output``/``answer``, ``question``/``answer`` for GSM8K, ``prompt``/``completion``, ``messages``).
Where the column names differ, a column mapping renames them: ``{"instruction": "question",
"output": "answer"}`` or on the command line ``--columns instruction=question,output=answer``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modetune.errors import DataError

__all__ = [
    "HF_FILE_SUFFIXES",
    "is_hf_source",
    "load_hf_rows",
    "parse_columns",
    "parse_hf_spec",
]

#: file suffixes read through ``datasets`` (JSON/JSONL keep modetune's own reader, with line numbers)
HF_FILE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv"}
_HUB_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.-]+))?$"
)


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"instruction=question,output=answer"`` (modetune field = dataset column) -> a dict."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise DataError(
                f"--columns: '{part}' is not FIELD=COLUMN; write e.g. --columns instruction=question,output=answer"
            )
        mapping[target.strip()] = source.strip()
    return mapping


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``NAME[:CONFIG][@SPLIT]`` -> (name, config, split); a path keeps only an ``@SPLIT`` suffix."""
    base, at, split = spec.rpartition("@")
    if at and base and Path(base).expanduser().exists():
        return base, None, split or None
    m = _HUB_RE.match(spec)
    if m is None:
        return spec, None, None
    return m.group("name"), m.group("config"), m.group("split")


def is_hf_source(source: Any) -> bool:
    """True for what this module reads: a ``datasets`` object, a saved dataset dir, a Parquet/Arrow/CSV file,
    or a string that is not an existing path but looks like a hub name (``org/name``)."""
    if _is_datasets_object(source):
        return True
    text = str(source)
    name, _, _ = parse_hf_spec(text)
    path = Path(name).expanduser()
    if path.exists():
        return _is_saved_dataset(path) or path.suffix.lower() in HF_FILE_SUFFIXES
    return _HUB_RE.match(text) is not None and path.suffix.lower() not in (".json", ".jsonl", *HF_FILE_SUFFIXES)


def _is_datasets_object(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "column_names")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force ``datasets`` and ``huggingface_hub`` offline for the duration (they read the env at import)."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"))
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[2]


def _pick_split(obj: Any, split: str | None, default_split: str, label: str) -> Any:
    """A Dataset from a Dataset/DatasetDict: ``split``, else ``default_split``, else the only split."""
    if not hasattr(obj, "keys"):  # already a Dataset
        return obj
    splits = list(obj.keys())
    if split is not None:
        if split not in obj:
            raise DataError(f"{label}: no split '{split}' (splits: {', '.join(splits)}); write {label}@SPLIT")
        return obj[split]
    if default_split in obj:
        return obj[default_split]
    if len(splits) == 1:
        return obj[splits[0]]
    raise DataError(f"{label} has splits {', '.join(splits)}; pick one with {label}@SPLIT")


def _load_hub(name: str, config: str | None, split: str | None) -> Any:
    """A hub dataset from the local caches only: the hub repo snapshot (``huggingface_hub`` cache),
    else the ``datasets`` Arrow cache of an earlier ``load_dataset(name)``."""
    import datasets

    with _offline():
        try:
            from huggingface_hub import snapshot_download

            snapshot = snapshot_download(name, repo_type="dataset", local_files_only=True)
        except Exception:
            snapshot = None
        try:
            if snapshot is not None:
                return datasets.load_dataset(snapshot, config, split=split)
            return datasets.load_dataset(name, config, split=split)
        except Exception as exc:
            raise DataError(
                f"'{name}' is not a file or directory, nor a hub dataset in the local Hugging Face cache "
                f"({type(exc).__name__}); modetune never "
                "contacts the hub: load it once with `datasets.load_dataset` where there is network (or "
                "save_to_disk it and pass the directory)"
            ) from None


def load_hf_rows(
    source: Any,
    *,
    split: str | None = None,
    columns: str | Mapping[str, str] | None = None,
    default_split: str = "train",
) -> tuple[list[dict[str, Any]], str]:
    """(rows as dicts with the mapped column names, a label for error messages) from any source above."""
    import datasets

    mapping = parse_columns(columns)
    if _is_datasets_object(source):
        label = f"<{type(source).__name__}>"
        obj = _pick_split(source, split, default_split, label)
    else:
        text = str(source)
        name, config, spec_split = parse_hf_spec(text)
        split = split or spec_split
        path = Path(name).expanduser()
        label = text
        if _is_saved_dataset(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as exc:
                raise DataError(f"{path}: cannot read the saved dataset ({exc})") from None
            obj = _pick_split(loaded, split, default_split, label)
        elif path.is_file() and path.suffix.lower() in HF_FILE_SUFFIXES:
            builder = HF_FILE_SUFFIXES[path.suffix.lower()]
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            try:
                with _offline():
                    obj = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
            except Exception as exc:
                raise DataError(f"{path}: cannot read it as {builder} ({type(exc).__name__}: {exc})") from None
        elif path.exists():
            raise DataError(f"{path}: not a dataset file or a saved dataset directory")
        else:
            obj = _pick_split(_load_hub(name, config, split), split, default_split, label)
    present = list(obj.column_names)
    missing = [col for col in mapping.values() if col not in present]
    if missing:
        raise DataError(
            f"{label}: --columns names column(s) {', '.join(missing)} that the dataset does not have "
            f"(columns: {', '.join(present)})"
        )
    rename = {col: field for field, col in mapping.items() if col != field}
    rows = []
    for row in obj:
        out = {k: v for k, v in row.items() if k not in rename}  # a renamed column moves to its field
        for col, field in rename.items():
            out[field] = row[col]
        rows.append(out)
    if not rows:
        raise DataError(f"{label}: the dataset is empty")
    return rows, label
