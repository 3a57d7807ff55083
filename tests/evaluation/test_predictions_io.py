"""predictions.jsonl, plain or gzipped: one reader, deterministic compression, `modetune compare` on either."""

from __future__ import annotations

import gzip
import json

import pytest

from modetune.cli import main
from modetune.errors import DataError, ModetuneError
from modetune.evaluation.compare import compare_runs, load_eval_output
from modetune.evaluation.predictions_io import (
    compress_predictions,
    compress_tree,
    iter_predictions,
    prediction_dirs,
    predictions_file,
    read_predictions,
)
from tests.evaluation.test_compare import rows, write_output


def test_read_predictions_accepts_a_directory_either_file_or_the_plain_name_of_a_gzipped_file(tmp_path):
    out = write_output(tmp_path / "out", rows("gsm8k", [True, False, True]))
    (out / "predictions.jsonl").write_text((out / "predictions.jsonl").read_text() + "\n")  # a blank line
    plain = read_predictions(out)
    assert [r["correct"] for r in plain] == [True, False, True]
    assert read_predictions(out / "predictions.jsonl") == plain
    original = (out / "predictions.jsonl").read_bytes()
    gz = compress_predictions(out)
    assert gz == out / "predictions.jsonl.gz" and not (out / "predictions.jsonl").exists()
    assert gzip.decompress(gz.read_bytes()) == original  # the same bytes, blank line included
    for path in (out, gz, out / "predictions.jsonl"):
        assert predictions_file(path) == gz
        assert read_predictions(path) == plain
    assert [n for n, _ in iter_predictions(out)] == [1, 2, 3]
    assert prediction_dirs(tmp_path) == [out]


def test_compression_is_deterministic(tmp_path):
    written = []
    for name in ("a", "b"):
        out = write_output(tmp_path / name, rows("boolq", [True, False] * 50))
        written.append(compress_predictions(out / "predictions.jsonl").read_bytes())
    assert written[0] == written[1]
    header = written[0][:10]
    assert header[3] == 0  # FLG: no file name stored
    assert header[4:8] == b"\0\0\0\0"  # MTIME 0


def test_bad_files_are_data_errors(tmp_path):
    out = write_output(tmp_path / "out", rows("gsm8k", [True]))
    (out / "predictions.jsonl.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(DataError, match="both"):
        read_predictions(out)
    (out / "predictions.jsonl").unlink()
    (out / "predictions.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        read_predictions(out)
    (out / "predictions.jsonl.gz").write_bytes(gzip.compress(b'{"task": "gsm8k", "correct": true}\n{oops\n'))
    with pytest.raises(DataError, match="line 2"):
        load_eval_output(out)
    (out / "predictions.jsonl.gz").write_bytes(gzip.compress(b"[1, 2]\n"))
    with pytest.raises(DataError, match="JSON object"):
        read_predictions(out)
    with pytest.raises(DataError, match=r"no predictions\.jsonl"):
        read_predictions(tmp_path)
    with pytest.raises(DataError, match=r"no predictions\.jsonl to compress"):
        compress_predictions(out)


def test_compare_gives_the_same_report_on_gzipped_predictions(tmp_path):
    # a grid cell's layout: <cell>/generate/<task>/, one `modetune eval` per task, two seeds pooled
    def cell(name: str, gsm8k: list[bool], boolq: list[bool]):
        write_output(tmp_path / name / "generate" / "gsm8k", rows("gsm8k", gsm8k))
        write_output(tmp_path / name / "generate" / "boolq", rows("boolq", boolq))
        return tmp_path / name

    a0 = cell("a0", [True] * 5 + [False] * 15, [True, False] * 5)
    b0 = cell("b0", [True] * 15 + [False] * 5, [True] * 10)
    a1 = cell("a1", [False] * 20, [False] * 10)
    b1 = cell("b1", [True] * 8 + [False] * 12, [True] * 3 + [False] * 7)
    plain = compare_runs(a0, b0, pool=[(a1, b1)], n_resamples=500)
    out = tmp_path / "plain.json"
    assert main(["compare", str(a0), str(b0), "--output", str(out), "--bootstrap", "500"]) == 0
    assert len(compress_tree(tmp_path)) == 8
    assert not list(tmp_path.rglob("predictions.jsonl"))
    assert compare_runs(a0, b0, pool=[(a1, b1)], n_resamples=500) == plain
    assert compare_runs(a0 / "generate" / "gsm8k" / "predictions.jsonl.gz", b0 / "generate" / "gsm8k")["tasks"] == {
        "gsm8k": compare_runs(a0, b0, n_resamples=10000)["tasks"]["gsm8k"]
    }
    gzipped = tmp_path / "gzipped.json"
    assert main(["compare", str(a0), str(b0), "--output", str(gzipped), "--bootstrap", "500"]) == 0
    assert json.loads(gzipped.read_text()) == json.loads(out.read_text())


def test_compare_still_names_the_plain_file_when_neither_is_there(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModetuneError, match=r"no predictions\.jsonl in it"):
        compare_runs(tmp_path / "empty", tmp_path / "empty")
