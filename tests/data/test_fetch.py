"""`modetune data fetch`: download from a (local) mirror, verify sha256, store atomically, fail clearly."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

from modetune.cli import main
from modetune.data import fetch
from modetune.data.fetch import DATA_FILES, DataFile, FetchError, fetch_file, verify_file
from modetune.evaluation import task_data
from modetune.evaluation.task_data import fetch_data, files_for
from tests.data.mirror import mirror_files, start, upstream_path


def _spec(path: Path, local: str = "toy/test.json", name: str = "gsm8k") -> DataFile:
    data = path.read_bytes()
    return DataFile(name, local, "llm-adapters", "dataset/toy/test.json", hashlib.sha256(data).hexdigest(),
                    len(data), "0" * 40)  # fmt: skip


@pytest.fixture
def toy(tmp_path):
    """A small LLM-Adapters-format file, its pin, and a mirror serving it."""
    src = tmp_path / "src" / "toy.json"
    src.parent.mkdir()
    records = [
        {"instruction": f"What is {i} + 1?", "input": "", "output": "", "answer": str(i + 1)} for i in range(200)
    ]
    src.write_text(json.dumps(records, indent=1))
    spec = _spec(src)
    server = start({upstream_path(spec): src})
    yield spec, server, tmp_path / "cache"
    server.shutdown()


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_download_verifies_and_stores(toy):
    spec, server, cache = toy
    path = fetch_file(spec, cache, base_url=server.url)
    assert path == cache / "toy" / "test.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert _leftovers(cache) == [path]  # no temporary file left
    # a verified copy is not downloaded again
    n = len(server.requests)
    fetch_file(spec, cache, base_url=server.url)
    assert len(server.requests) == n


@pytest.mark.parametrize(
    ("fault", "message"),
    [("corrupt", "does not have the pinned content"), ("missing", "HTTP 404"), ("drop", "interrupted")],
)
def test_faults_leave_no_partial_file(toy, fault, message):
    spec, server, cache = toy
    server.faults[upstream_path(spec)] = fault
    with pytest.raises(FetchError, match=message):
        fetch_file(spec, cache, base_url=server.url)
    assert _leftovers(cache) == []


def test_fault_keeps_a_good_copy(toy):
    spec, server, cache = toy
    good = fetch_file(spec, cache, base_url=server.url)
    server.faults[upstream_path(spec)] = "corrupt"
    with pytest.raises(FetchError):
        fetch_file(spec, cache, base_url=server.url, force=True)
    assert hashlib.sha256(good.read_bytes()).hexdigest() == spec.sha256
    assert _leftovers(cache) == [good]


def test_stale_file_is_replaced(toy):
    spec, server, cache = toy
    stale = cache / spec.local
    stale.parent.mkdir(parents=True)
    stale.write_text("[]")
    assert not verify_file(spec, cache)
    fetch_file(spec, cache, base_url=server.url)
    assert verify_file(spec, cache)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_with_one_line(toy, monkeypatch, capsys):
    spec, _, cache = toy
    monkeypatch.setenv("MODETUNE_DATA_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(cache))
    t0 = time.time()
    with pytest.raises(FetchError, match="cannot download"):
        fetch_file(spec, cache)
    assert time.time() - t0 < 2  # refused at once, no retries
    assert main(["data", "fetch", "gsm8k"]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "network access" in err and "Traceback" not in err
    assert _leftovers(cache) == []


def test_cli_fetch_prints_licenses(toy, monkeypatch, capsys):
    spec, server, cache = toy
    monkeypatch.setattr(fetch, "DATA_FILES", (spec,))
    monkeypatch.setattr(task_data, "DATA_FILES", (spec,))  # the task-name resolution reads it from there
    monkeypatch.setenv("MODETUNE_DATA_URL", server.url)
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(cache))
    assert main(["data", "fetch", "gsm8k"]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "ODC-By" in out and "Cobbe et al." in out
    assert verify_file(spec, cache)


def test_names_and_groups():
    assert [f.local for f in files_for(["gsm8k"])] == ["gsm8k/test.json"]
    assert {f.local for f in files_for(["arc-e"])} == {"arc_easy/test.json", "arc_easy/train.json"}
    assert len(files_for(["all"])) == len(DATA_FILES)
    assert "mathqa/test.json" not in {f.local for f in files_for(["arithmetic"])}
    with pytest.raises(FetchError, match="hellaswag"):
        files_for(["hellaswag"])
    with pytest.raises(FetchError, match="no public file"):
        files_for(["nope"])


def test_urls_point_at_the_pinned_commits(monkeypatch):
    monkeypatch.delenv("MODETUNE_DATA_URL", raising=False)
    gsm = files_for(["gsm8k"])[0]
    assert gsm.url() == (
        "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/816657208af4db747803f87ba40a4c71383fed7a/"
        "dataset/gsm8k/test.json"
    )
    orig = files_for(["gsm8k_openai"])[0]
    assert "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/" in orig.url()


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_pins_match_the_shared_copies(shared_data_dir):
    """Every pinned file present in ../shared/data (byte copies of upstream) matches its sha256 and git blob."""
    checked = 0
    for spec in DATA_FILES:
        path = shared_data_dir / spec.local
        if not path.is_file():
            continue  # mathqa, siqa, winogrande: pinned from the upstream commit, not in shared/data
        assert verify_file(spec, shared_data_dir), spec.local
        assert _git_blob(path) == spec.git_blob, spec.local
        checked += 1
    assert checked >= 18


def test_fetch_real_files_from_local_mirror(shared_data_dir, tmp_path, monkeypatch):
    """The real gsm8k pin end to end through the mirror of ../shared/data; then `eval` finds it in the cache."""
    server = start(mirror_files(shared_data_dir))
    try:
        monkeypatch.setenv("MODETUNE_DATA_URL", server.url)
        paths = fetch_data(["gsm8k", "boolq"], tmp_path / "cache")
    finally:
        server.shutdown()
    assert sorted(p.relative_to(tmp_path / "cache").as_posix() for p in paths) == [
        "boolq/test.json", "boolq/train.json", "gsm8k/test.json"]  # fmt: skip
    from modetune.evaluation.tasks import find_task_file

    monkeypatch.chdir(tmp_path)  # no ./data, ../shared/data here
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(tmp_path / "cache"))
    assert find_task_file("gsm8k") == tmp_path / "cache" / "gsm8k" / "test.json"


def test_not_found_message_names_the_fetch_command(tmp_path, monkeypatch):
    from modetune.errors import DataError
    from modetune.evaluation.tasks import find_task_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"modetune data fetch gsm8k.*--data"):
        find_task_file("gsm8k")
    with pytest.raises(DataError) as info:
        find_task_file("hellaswag")
    assert "data fetch" not in str(info.value) and "--data" in str(info.value)
