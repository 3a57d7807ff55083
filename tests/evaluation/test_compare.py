"""Paired comparison of two synthetic evaluation outputs with a known difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modetune.errors import DataError, ModetuneError
from modetune.evaluation.compare import compare_pooled, compare_runs, load_eval_output, render_comparison
from modetune.evaluation.stats import mcnemar_exact, sign_flip_exact


def write_output(directory: Path, rows: list[dict], scoring: str = "generate") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tasks = sorted({r["task"] for r in rows})
    results = {"tasks": {t: {"scoring": scoring} for t in tasks}, "average": 0.0}
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def rows(task: str, correct: list[bool], start: int = 0) -> list[dict]:
    return [
        {"task": task, "id": f"{task}/{i}", "question": f"question {i}", "correct": c, "gold": "1", "prediction": "1"}
        for i, c in enumerate(correct, start=start)
    ]


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    # gsm8k, 40 questions: both right on 10, only A on 2, only B on 14, neither on 14 -> B - A = +0.30
    a = [True] * 10 + [True] * 2 + [False] * 14 + [False] * 14
    b = [True] * 10 + [False] * 2 + [True] * 14 + [False] * 14
    # boolq, 20 questions: identical -> no difference
    same = [True, False, True, True] * 5
    # B evaluated 5 extra gsm8k questions that A did not (unpaired)
    run_a = write_output(tmp_path / "A", rows("gsm8k", a) + rows("boolq", same))
    run_b = write_output(tmp_path / "B", rows("gsm8k", b) + rows("gsm8k", [True] * 5, start=100) + rows("boolq", same))
    return run_a, run_b


def test_known_difference(two_runs):
    report = compare_runs(*two_runs, n_resamples=2000)
    g = report["tasks"]["gsm8k"]
    assert g["n_paired"] == 40
    assert (g["both_correct"], g["only_a_correct"], g["only_b_correct"], g["neither_correct"]) == (10, 2, 14, 14)
    assert g["accuracy_a"] == pytest.approx(12 / 40) and g["accuracy_b"] == pytest.approx(24 / 40)
    assert g["diff"] == pytest.approx(0.3)
    assert g["p_value"] == pytest.approx(mcnemar_exact(2, 14)) and g["p_value"] < 0.01
    lo, hi = g["diff_ci95"]
    assert 0 < lo < 0.3 < hi
    assert g["unpaired_b"] == 5 and "unpaired_a" not in g
    s = report["tasks"]["boolq"]
    assert s["diff"] == 0 and s["p_value"] == 1.0
    assert report["average"]["diff"] == pytest.approx(0.15)
    assert report["pooled"]["n_paired"] == 60


def test_comparison_is_antisymmetric(two_runs):
    ab = compare_runs(*two_runs, n_resamples=500)
    ba = compare_runs(*reversed(two_runs), n_resamples=500)
    assert ba["tasks"]["gsm8k"]["diff"] == pytest.approx(-ab["tasks"]["gsm8k"]["diff"])
    assert ba["tasks"]["gsm8k"]["p_value"] == ab["tasks"]["gsm8k"]["p_value"]


def test_changed_question_text_does_not_pair(tmp_path):
    a = rows("gsm8k", [True, False])
    b = rows("gsm8k", [True, True])
    b[1]["question"] = "a different question"
    report = compare_runs(write_output(tmp_path / "A", a), write_output(tmp_path / "B", b), n_resamples=200)
    assert report["tasks"]["gsm8k"]["n_paired"] == 1


def test_no_shared_examples(tmp_path):
    a = write_output(tmp_path / "A", rows("gsm8k", [True]))
    b = write_output(tmp_path / "B", rows("boolq", [True]))
    with pytest.raises(ModetuneError, match="share no evaluated question"):
        compare_runs(a, b)


def test_bad_directories(tmp_path):
    with pytest.raises(ModetuneError, match="does not exist"):
        compare_runs(tmp_path / "nope", tmp_path / "nope2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModetuneError, match=r"no predictions\.jsonl"):
        compare_runs(tmp_path / "empty", tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predictions.jsonl").write_text('{"task": "gsm8k", "correct": true}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        compare_runs(broken, broken)
    (broken / "predictions.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DataError, match="'task' and 'correct'"):
        compare_runs(broken, broken)


def test_scoring_mismatch_is_flagged(tmp_path):
    a = write_output(tmp_path / "A", rows("boolq", [True, False]), scoring="generate")
    b = write_output(tmp_path / "B", rows("boolq", [True, True]), scoring="loglikelihood")
    report = compare_runs(a, b, n_resamples=200)
    assert "scored differently: generate vs loglikelihood" in report["tasks"]["boolq"]["warning"]


def test_log_likelihood_style_mismatch_is_flagged_in_any_pooled_pair(tmp_path):
    def ll_output(name: str, style: str) -> Path:
        out = write_output(tmp_path / name, rows("boolq", [True, False]), scoring="loglikelihood")
        results = json.loads((out / "results.json").read_text())
        results["tasks"]["boolq"].update(ll_style=style, ll_norm="char")
        (out / "results.json").write_text(json.dumps(results))
        return out

    text_a, label_b = ll_output("A0", "text"), ll_output("B0", "label")
    assert "text/char vs loglikelihood/label/char" in compare_runs(text_a, label_b)["tasks"]["boolq"]["warning"]
    # a mismatch in the first pair is not hidden by a matching last pair
    pooled = compare_runs(text_a, label_b, pool=[(ll_output("A1", "text"), ll_output("B1", "text"))])
    assert "(pair 1)" in pooled["tasks"]["boolq"]["warning"]


def test_render(two_runs):
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(render_comparison(compare_runs(*two_runs, n_resamples=200)))
    text = console.export_text()
    assert "gsm8k" in text and "+30.0" in text and "pooled" in text


def test_a_directory_of_per_task_outputs_reads_as_one(tmp_path):
    # the grid's layout: <cell>/<scoring>/<task>/predictions.jsonl, one `modetune eval` per task
    for name, g, b in (("A", [True, False, False], [True, True]), ("B", [True, True, True], [True, False])):
        write_output(tmp_path / name / "generate" / "gsm8k", rows("gsm8k", g))
        write_output(tmp_path / name / "generate" / "boolq", rows("boolq", b))
    report = compare_runs(tmp_path / "A" / "generate", tmp_path / "B" / "generate", n_resamples=200)
    assert report["tasks"]["gsm8k"]["only_b_correct"] == 2 and report["tasks"]["boolq"]["only_a_correct"] == 1
    assert report["pooled"]["n_paired"] == 5
    # one level higher, with one scoring below: the same comparison
    assert compare_runs(tmp_path / "A", tmp_path / "B", n_resamples=200)["pooled"] == report["pooled"]
    # with several scorings below, the message names the directories to pass
    write_output(tmp_path / "A" / "ll_text" / "boolq", rows("boolq", [True]))
    with pytest.raises(ModetuneError, match=r"one level down: pass one of .*A/generate"):
        compare_runs(tmp_path / "A", tmp_path / "B")
    # a row of seeds, each a cell: the message points at --pool
    with pytest.raises(ModetuneError, match=r"several runs \(A, B\).*--pool"):
        compare_runs(tmp_path, tmp_path / "B")
    # the same task twice below one directory cannot be merged
    write_output(tmp_path / "A" / "generate" / "gsm8k_again", rows("gsm8k", [True]))
    with pytest.raises(DataError, match="task gsm8k is in both"):
        compare_runs(tmp_path / "A" / "generate", tmp_path / "B" / "generate")


def test_rows_without_any_identity_pair_by_position_in_their_own_file(tmp_path):
    def bare(correct: list[bool], task: str) -> list[dict]:
        return [{"task": task, "correct": c} for c in correct]

    for name, first, second in (("A", [True, True], [True, False, True]), ("B", [True], [True, True, False])):
        write_output(tmp_path / name / "t1", bare(first, "t1"))
        write_output(tmp_path / name / "t2", bare(second, "t2"))
    t2 = compare_runs(tmp_path / "A", tmp_path / "B", n_resamples=200)["tasks"]["t2"]
    assert t2["n_paired"] == 3 and (t2["both_correct"], t2["only_a_correct"], t2["only_b_correct"]) == (1, 1, 1)


def test_pooling_refuses_a_repeated_pair_and_a_pair_sharing_nothing(tmp_path):
    a = write_output(tmp_path / "A", rows("gsm8k", [True, False]))
    b = write_output(tmp_path / "B", rows("gsm8k", [True, True]))
    with pytest.raises(ModetuneError, match="given twice"):
        compare_runs(a, b, pool=[(a, b)])
    with pytest.raises(ModetuneError, match="given twice"):  # a shared A still needs B's runs to differ
        compare_pooled([(load_eval_output(a), load_eval_output(b))] * 2, shared_a=True)
    other = write_output(tmp_path / "C", rows("boolq", [True]))
    with pytest.raises(ModetuneError, match="share no evaluated question"):
        compare_runs(a, b, pool=[(write_output(tmp_path / "A1", rows("gsm8k", [True])), other)])


def test_one_evaluation_of_a_can_stand_in_for_every_pair_when_asked(tmp_path):
    """The untuned model against two seeds of a tuned one: A is evaluated once, each seed's B pairs with it."""
    a = load_eval_output(write_output(tmp_path / "A", rows("gsm8k", [False, False, True])))
    seeds = [load_eval_output(write_output(tmp_path / f"B{s}", rows("gsm8k", [True, s == 0, True]))) for s in (0, 1)]
    pooled = compare_pooled([(a, b) for b in seeds], n_resamples=200, shared_a=True)
    assert pooled["pairs"] == 2 and pooled["pooled"]["n_paired"] == 6
    assert pooled["pooled"]["diff"] == pytest.approx(3 / 6) and pooled["pooled"]["diff_per_pair"] == pytest.approx(
        [2 / 3, 1 / 3]
    )


def test_malformed_results_and_predictions_are_data_errors(tmp_path):
    good = write_output(tmp_path / "good", rows("gsm8k", [True]))
    bad = write_output(tmp_path / "bad", rows("gsm8k", [True]))
    (bad / "results.json").write_text('{"tasks": []}')
    with pytest.raises(DataError, match="'tasks' must map"):
        compare_runs(good, bad)
    (bad / "results.json").unlink()
    (bad / "predictions.jsonl").write_text('{"task": ["gsm8k"], "correct": true}\n')
    with pytest.raises(DataError, match="'task' must be a name"):
        compare_runs(good, bad)
    (bad / "predictions.jsonl").write_bytes(b'{"task": "gsm8k", "correct": true, "question": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        compare_runs(good, bad)


def test_pooled_pairs_pair_questions_within_their_own_pair(tmp_path):
    # the same 4 questions in two seeds: seed 0 B gains 2, seed 1 B loses 1 -> pooled 8 pairs, +1 net
    s0a = write_output(tmp_path / "s0A", rows("gsm8k", [False, False, True, True]))
    s0b = write_output(tmp_path / "s0B", rows("gsm8k", [True, True, True, True]))
    s1a = write_output(tmp_path / "s1A", rows("gsm8k", [True, True, False, False]))
    s1b = write_output(tmp_path / "s1B", rows("gsm8k", [True, False, False, False]))
    report = compare_runs(s0a, s0b, pool=[(s1a, s1b)], n_resamples=200)
    g = report["tasks"]["gsm8k"]
    assert g["n_paired"] == 8  # the same ids in both seeds stay apart (merged, they would pair 4)
    assert (g["both_correct"], g["only_a_correct"], g["only_b_correct"], g["neither_correct"]) == (3, 1, 2, 2)
    # the question is the unit: q0, q1 gain +1 in seed 0 and q1 loses 1 in seed 1 -> nets (+1, 0, 0, 0)
    assert g["n_questions"] == 4 and g["p_value"] == pytest.approx(sign_flip_exact([1, 0, 0, 0])) == 1.0
    assert "s0A + " in report["a"] and "s1B" in report["b"] and report["pairs"] == 2
    assert "sign-flip" in report["test"]
    # each pair's own difference, and the interval over pairs and questions on the questions both answered
    assert g["diff_per_pair"] == [0.5, -0.25] and report["pooled"]["diff_per_pair"] == [0.5, -0.25]
    assert g["n_common_questions"] == 4 and g["seed_question_ci95"][0] <= 0.125 <= g["seed_question_ci95"][1]
