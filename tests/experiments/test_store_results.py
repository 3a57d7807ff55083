"""experiments/run.py's `store_results`: what a finished cell keeps names no path of the machine it ran on and
holds its predictions gzipped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.experiments.test_grid_runner import _load


def test_portable_paths_follow_the_repository_conventions(monkeypatch):
    run = _load("run")
    monkeypatch.setattr(run, "REPO", Path("/srv/work/main"))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path("/srv/home/someone")))
    text = json.dumps(
        {
            "command": "python -m modetune train --data /srv/work/shared/data/boolq/train.json synthetic:3000:2 "
            "--output /srv/home/someone/.cache/modetune/experiments/commonsense/lora/s0 --overwrite",
            "file": "/srv/work/main/experiments/x.json",
            "kept": ["https://example.org/srv/work/shared/data", "/srv/work/mainframe/y", "/srv/elsewhere/z"],
        }
    )
    assert json.loads(run.portable_paths(text)) == {
        "command": "python -m modetune train --data ../shared/data/boolq/train.json synthetic:3000:2 "
        "--output ~/.cache/modetune/experiments/commonsense/lora/s0 --overwrite",
        "file": "experiments/x.json",
        "kept": ["https://example.org/srv/work/shared/data", "../mainframe/y", "/srv/elsewhere/z"],
    }


def test_store_results_gzips_predictions_and_rewrites_paths(tmp_path, monkeypatch):
    run = _load("run")
    monkeypatch.setattr(run, "REPO", tmp_path / "main")
    cell = tmp_path / "cell.partial"
    (cell / "generate" / "gsm8k").mkdir(parents=True)
    lines = b'{"task": "gsm8k", "id": 1, "correct": true}\n'
    (cell / "generate" / "gsm8k" / "predictions.jsonl").write_bytes(lines)
    (cell / "generate" / "gsm8k" / "results.json").write_text(json.dumps({"file": f"{tmp_path}/shared/data/t.json"}))
    (cell / "cell.json").write_text(json.dumps({"seed": 0, "train_loss": 1.25}, indent=2) + "\n")
    unchanged = (cell / "cell.json").read_bytes()
    run.store_results(cell)
    assert gzip.decompress((cell / "generate" / "gsm8k" / "predictions.jsonl.gz").read_bytes()) == lines
    assert not (cell / "generate" / "gsm8k" / "predictions.jsonl").exists()
    assert json.loads((cell / "generate" / "gsm8k" / "results.json").read_text()) == {"file": "../shared/data/t.json"}
    assert (cell / "cell.json").read_bytes() == unchanged  # nothing to rewrite: not rewritten
