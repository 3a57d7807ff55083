"""experiments/report.py: the answer-collapse table names each row's most common answer and its share."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.experiments.test_grid_runner import _load


def _cell(tmp_path, row_name: str, label: str, track, answers: dict[str, list[str]], seed: int = 0):
    result_dir = tmp_path / row_name / f"s{seed}"
    for task, preds in answers.items():
        out = result_dir / "ll_label" / task
        out.mkdir(parents=True)
        lines = [
            json.dumps({"task": task, "id": f"{task}/{i}", "prediction": p, "correct": False})
            for i, p in enumerate(preds)
        ]
        (out / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return SimpleNamespace(result_dir=result_dir, seed=seed, track=track, row=SimpleNamespace(label=label))


def test_answer_collapse_reports_the_most_common_answer_and_its_share(tmp_path):
    report = _load("report")
    track = SimpleNamespace(scorings=(("loglikelihood", "label"),))
    constant = _cell(tmp_path, "lora", "1. LoRA", track, {"arc_easy": ["answer2"] * 4, "boolq": ["true", "false"]})
    varied = _cell(tmp_path, "mode", "3. MoDE", track, {"arc_easy": ["answer1", "answer3", "answer3", "answer4"]})
    other_seed = _cell(tmp_path, "lora", "1. LoRA", track, {"arc_easy": ["answer1"] * 3 + ["answer2"]}, seed=1)
    rows = [("lora", [other_seed, constant]), ("mode", [varied])]
    table = "\n".join(report._answer_collapse("commonsense", rows, track))
    assert "| arc_easy | boolq |" in table
    # per seed, in seed order: seed 0 collapsed onto answer2, seed 1 onto answer1 (pooled, neither would show)
    assert "| 1. LoRA | ll_label | answer2 100.0 · answer1 75.0 | true 50.0 |" in table
    assert "| 3. MoDE | ll_label | answer3 50.0 | – |" in table


def _scored(tmp_path, row_name: str, seed: int, correct: dict[str, list[bool]], baseline: str | None):
    result_dir = tmp_path / row_name / f"s{seed}"
    for task, flags in correct.items():
        out = result_dir / "generate" / task
        out.mkdir(parents=True)
        lines = [json.dumps({"task": task, "id": f"{task}/{i}", "correct": c}) for i, c in enumerate(flags)]
        (out / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    row = SimpleNamespace(label=row_name, baseline=baseline)
    return SimpleNamespace(result_dir=result_dir, seed=seed, row=row)


def test_paired_by_task_pools_the_shared_seeds_task_by_task(tmp_path):
    from scipy.stats import binomtest

    report = _load("report")
    # easy: equal in both rows; hard: the variant loses 6 questions and wins 0 over two seeds
    base = {"easy": [True, False] * 5, "hard": [True] * 6 + [False] * 4}
    worse = {"easy": [True, False] * 5, "hard": [True] * 3 + [False] * 7}
    lora = [_scored(tmp_path, "lora", s, base, None) for s in (0, 1)]
    variant = [_scored(tmp_path, "variant", s, worse, "lora") for s in (0, 1, 2)]  # seed 2 has no partner
    reports = {"variant": report._paired(lora, variant, "generate")}
    lines = report._paired_by_task([("lora", lora), ("variant", variant)], reports, "generate", ["easy", "hard"])
    row = next(line for line in lines if line.startswith("| variant | lora |"))
    easy, hard = row.split(" | ")[2:4]
    assert easy.startswith("+0.0 [+0.0, +0.0]") and easy.endswith("p = 1.000")
    # 6 losses over two seeds, but the same 3 questions each time: the question is the unit (sign flips of
    # three nets of -2: p = 2/2^3), not the 6 answers exact McNemar would count as independent
    assert binomtest(0, 6, 0.5).pvalue < 0.05
    assert hard.startswith("-30.0 [") and hard.endswith(f"p = {2 / 2**3:.3f} |")
    assert "uncorrected for the 2 sets" in lines[0]
