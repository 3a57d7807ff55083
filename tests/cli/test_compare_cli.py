"""`modetune compare` on two synthetic eval outputs."""

from __future__ import annotations

import json

import pytest

from modetune.cli import main
from tests.evaluation.test_compare import rows, write_output


def test_compare_cli(tmp_path, capsys):
    a = write_output(tmp_path / "A", rows("gsm8k", [False] * 30 + [True] * 10))
    b = write_output(tmp_path / "B", rows("gsm8k", [True] * 30 + [True] * 10))
    out = tmp_path / "cmp" / "comparison.json"
    assert main(["compare", str(a), str(b), "--output", str(out), "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "+75.0" in printed and "*" in printed
    report = json.loads(out.read_text())
    assert report["tasks"]["gsm8k"]["only_b_correct"] == 30
    assert report["tasks"]["gsm8k"]["p_value"] < 1e-8


def test_compare_cli_errors(tmp_path, capsys):
    a = write_output(tmp_path / "A", rows("gsm8k", [True]))
    b = write_output(tmp_path / "B", rows("boolq", [True]))
    assert main(["compare", str(a), str(b)]) == 2
    assert "share no evaluated question" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_cli_pools_pairs(tmp_path, capsys):
    a0 = write_output(tmp_path / "A0", rows("gsm8k", [False] * 4))
    b0 = write_output(tmp_path / "B0", rows("gsm8k", [True] * 4))
    a1 = write_output(tmp_path / "A1", rows("gsm8k", [False] * 4))
    b1 = write_output(tmp_path / "B1", rows("gsm8k", [True] * 2 + [False] * 2))
    out = tmp_path / "cmp.json"
    assert (
        main(["compare", str(a0), str(b0), "--pool", str(a1), str(b1), "--output", str(out), "--bootstrap", "200"]) == 0
    )
    report = json.loads(out.read_text())
    assert report["tasks"]["gsm8k"]["n_paired"] == 8 and report["tasks"]["gsm8k"]["only_b_correct"] == 6
    shown = capsys.readouterr().out
    assert "+75.0" in shown and "+100.0, +50.0" in shown  # pooled: each pair's B - A
    with pytest.raises(SystemExit):  # --pool takes a pair (argparse's usage message)
        main(["compare", str(a0), str(b0), "--pool", str(a1)])


def test_compare_cli_output_path_that_cannot_be_written(tmp_path, capsys):
    a = write_output(tmp_path / "A", rows("gsm8k", [True, False]))
    assert main(["compare", str(a), str(a), "--output", str(tmp_path), "--bootstrap", "200"]) == 2
    assert "cannot write the comparison" in capsys.readouterr().err
