"""Hugging Face datasets as --data: objects, saved directories, Parquet/Arrow/CSV, cached hub names, columns."""

from __future__ import annotations

import json
import socket

import pytest

datasets = pytest.importorskip("datasets")

from modetune.data import load_dataset_file, load_datasets  # noqa: E402
from modetune.data.hf import is_hf_source, parse_columns, parse_hf_spec  # noqa: E402
from modetune.errors import DataError  # noqa: E402

ROWS = {
    "question": ["Mia has 5 apples and buys 3. How many?", "Leo has 12 marbles and loses 4. How many?"],
    "solution": ["5 + 3 = 8. The answer is 8.", "12 - 4 = 8. The answer is 8."],
    "final": [8, 8.0],
}
MAP = "instruction=question,output=solution,answer=final"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt off this machine fails the test: the hub must never be contacted."""
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
            raise AssertionError(f"network access attempted: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _check(examples):
    assert [e.instruction for e in examples] == ROWS["question"]
    assert [e.response for e in examples] == ROWS["solution"]
    assert [e.answer for e in examples] == ["8", "8"]


def test_dataset_object_with_column_mapping():
    ds = datasets.Dataset.from_dict(ROWS)
    _check(load_dataset_file(ds, columns=MAP, require_response=True))
    _check(load_datasets(ds, columns=parse_columns(MAP), shuffle=False))


def test_missing_column_is_named():
    ds = datasets.Dataset.from_dict(ROWS)
    with pytest.raises(DataError, match=r"column\(s\) prompt .*columns: question, solution, final"):
        load_dataset_file(ds, columns="instruction=prompt")
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset_file(ds)  # names differ and no mapping: the message lists the expected fields
    with pytest.raises(DataError, match="FIELD=COLUMN"):
        parse_columns("instruction")


def test_saved_dataset_and_dataset_dict(tmp_path):
    ds = datasets.Dataset.from_dict(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    _check(load_dataset_file(tmp_path / "one", columns=MAP))
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert is_hf_source(tmp_path / "dict")
    _check(load_dataset_file(tmp_path / "dict", columns=MAP))  # "train" by default
    assert len(load_dataset_file(f"{tmp_path / 'dict'}@test", columns=MAP)) == 1
    assert len(load_dataset_file(tmp_path / "dict", columns=MAP, split="test")) == 1
    with pytest.raises(DataError, match="no split 'dev'"):
        load_dataset_file(tmp_path / "dict", columns=MAP, split="dev")


@pytest.mark.parametrize("suffix", ["parquet", "csv", "arrow"])
def test_files(tmp_path, suffix):
    ds = datasets.Dataset.from_dict(ROWS)
    path = tmp_path / f"train.{suffix}"
    if suffix == "parquet":
        ds.to_parquet(str(path))
    elif suffix == "csv":
        ds.to_csv(str(path), index=False)
    else:
        with datasets.arrow_writer.ArrowWriter(path=str(path)) as writer:
            writer.write_table(ds.data.table)
            writer.finalize()
    _check(load_dataset_file(path, columns=MAP, require_response=True))


def test_json_file_with_column_mapping(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({k: v[i] for k, v in ROWS.items()}) + "\n" for i in range(2)))
    _check(load_dataset_file(path, columns=MAP))


def _fake_hub_cache(root, repo: str) -> None:
    """The layout huggingface_hub leaves after downloading a dataset repo (refs/main -> snapshots/<sha>)."""
    sha = "0" * 40
    repo_dir = root / f"datasets--{repo.replace('/', '--')}"
    data = repo_dir / "snapshots" / sha / "data"
    data.mkdir(parents=True)
    datasets.Dataset.from_dict(ROWS).to_parquet(str(data / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_dict(ROWS).select([1]).to_parquet(str(data / "test-00000-of-00001.parquet"))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)


def test_hub_name_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    _fake_hub_cache(tmp_path / "hub", "toyorg/toymath")
    assert parse_hf_spec("toyorg/toymath:main@test") == ("toyorg/toymath", "main", "test")
    assert is_hf_source("toyorg/toymath")
    _check(load_dataset_file("toyorg/toymath", columns=MAP))
    assert [e.instruction for e in load_dataset_file("toyorg/toymath@test", columns=MAP)] == ROWS["question"][1:]
    with pytest.raises(DataError, match=r"nor a hub dataset in the local Hugging Face cache.*never"):
        load_dataset_file("toyorg/not-downloaded", columns=MAP)


def test_training_loader_takes_hf_sources(tmp_path):
    from modetune.training.recipe import load_training_examples

    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "saved"))
    examples = load_training_examples([str(tmp_path / "saved")], None, 0, None, columns=MAP)
    assert sorted(e.instruction for e in examples) == sorted(ROWS["question"])
    with pytest.raises(DataError, match="does not exist"):
        load_training_examples([str(tmp_path / "missing.json")], None, 0, None)
