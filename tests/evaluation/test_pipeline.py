"""evaluate_model end to end on real files with a tiny model, plus exact-score checks with stubs."""

from __future__ import annotations

import json
import logging

import pytest

from modetune.errors import ConfigError, DataError, ModetuneError
from modetune.evaluation import pipeline
from modetune.evaluation.pipeline import evaluate_model, render_table
from modetune.evaluation.runner import GenerationSettings
from modetune.evaluation.stats import wilson_interval
from tests.evaluation.conftest import write_json

PRED_KEYS = {"task", "id", "question", "prompt", "generation", "prediction", "gold", "correct"}


def check_schema(results: dict, tasks: list[str], n: int) -> None:
    assert list(results["tasks"]) == tasks
    for r in results["tasks"].values():
        assert isinstance(r["accuracy"], float) and 0 <= r["accuracy"] <= 1
        assert isinstance(r["n"], int) and r["n"] == n
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1
    assert results["average"] == pytest.approx(sum(r["accuracy"] for r in results["tasks"].values()) / len(tasks))
    json.dumps(results)  # JSON-able


def read_predictions(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_generate_mode_on_real_files(tiny_lm, tiny_tokenizer, shared_data, tmp_path):
    tasks = ["gsm8k", "aqua", "boolq"]
    report = evaluate_model(
        tiny_lm,
        tiny_tokenizer,
        tasks,
        data=shared_data,
        limit=3,
        generation=GenerationSettings(max_new_tokens=4),
        batch_size=3,
        output_dir=tmp_path / "out",
        progress=False,
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    check_schema(results, tasks, 3)
    assert results["tasks"]["gsm8k"]["n_total"] == 1319
    assert results["scoring"] == "generate"
    assert results["settings"]["generation"]["max_new_tokens"] == 4
    rows = read_predictions(tmp_path / "out")
    assert len(rows) == 9 and all(set(r) >= PRED_KEYS for r in rows)
    assert all(r["prompt"].startswith("Below is an instruction") for r in rows)
    assert {r["gold"] for r in rows if r["task"] == "boolq"} <= {"true", "false"}
    assert report.results == results


def test_loglikelihood_mode_on_real_files(tiny_lm, tiny_tokenizer, shared_data, tmp_path):
    tasks = ["boolq", "piqa", "arc_easy", "openbookqa", "aqua"]
    for style in ("label", "text"):
        out = tmp_path / style
        report = evaluate_model(
            tiny_lm,
            tiny_tokenizer,
            tasks,
            data=shared_data,
            limit=3,
            scoring="loglikelihood",
            ll_style=style,
            output_dir=out,
            progress=False,
        )
        check_schema(report.results, tasks, 3)
        for r in report.results["tasks"].values():
            assert set(r["accuracy_by_norm"]) == {"char", "token", "none"}
            assert r["accuracy"] == r["accuracy_by_norm"]["none" if style == "label" else "char"]
        for row in read_predictions(out):
            labels = [c["label"] for c in row["choices"]]
            assert row["prediction"] in labels and row["gold"] in labels
            chosen = row["choices"][labels.index(row["prediction"])]
            assert row["generation"] == (chosen["label"] if style == "label" else chosen["text"])
            assert row["correct"] == (row["prediction"] == row["gold"])


def test_scores_are_aggregated_exactly(monkeypatch, tmp_path):
    """With generations fixed by a stub, accuracy/CI/no_answer follow from the extraction rules."""
    data = write_json(
        tmp_path / "gsm8k.json",
        [{"instruction": f"q{i}", "answer": f"{i}.0"} for i in range(10)],
    )
    canned = {f"q{i}": (f"The answer is {i}" if i < 4 else "no idea" if i < 6 else "1,000") for i in range(10)}

    def fake_generate(model, tok, prompts, **kwargs):
        return [next(v for k, v in canned.items() if f"\n{k}\n" in p) for p in prompts]

    monkeypatch.setattr(pipeline, "generate_texts", fake_generate)
    report = evaluate_model(None, None, ["gsm8k"], data=data, progress=False)
    r = report.results["tasks"]["gsm8k"]
    assert (r["correct"], r["n"], r["no_answer"]) == (4, 10, 2)
    assert r["ci95"] == list(wilson_interval(4, 10))
    assert report.average == 0.4
    assert report.accuracy("GSM8K") == 0.4


def test_loglikelihood_picks_the_best_scored_choice(monkeypatch, tmp_path):
    data = write_json(
        tmp_path / "arc.json",
        [
            {"instruction": "Which? Answer1: aa Answer2: b\n\nAnswer format: answer1/answer2", "answer": "answer1"},
            {"instruction": "Which? Answer1: aa Answer2: b\n\nAnswer format: answer1/answer2", "answer": "answer2"},
        ],
    )

    def fake_ll(model, tok, requests, **kwargs):
        # "aa": sum -2.0 over 2 chars/tokens (-1.0 each); "b": sum -1.5 over 1 char/token
        return [(-2.0, 2, False) if cont == "aa" else (-1.5, 1, False) for _, cont in requests]

    monkeypatch.setattr(pipeline, "loglikelihoods", fake_ll)
    common = dict(data=data, scoring="loglikelihood", ll_style="text", progress=False)
    by_sum = evaluate_model(None, None, ["arc_easy"], ll_norm="none", **common)
    by_char = evaluate_model(None, None, ["arc_easy"], ll_norm="char", **common)
    assert [p["prediction"] for p in by_sum.predictions] == ["answer2", "answer2"]  # -1.5 > -2.0
    assert [p["prediction"] for p in by_char.predictions] == ["answer1", "answer1"]  # -1.0 > -1.5
    acc = by_sum.results["tasks"]["arc_easy"]["accuracy_by_norm"]
    assert acc == {"char": 0.5, "token": 0.5, "none": 0.5}


def test_user_supplied_commonsense_files(tiny_lm, tiny_tokenizer, user_commonsense_dir):
    tasks = ["siqa", "winogrande", "hellaswag"]
    for scoring in ("generate", "loglikelihood"):
        report = evaluate_model(
            tiny_lm,
            tiny_tokenizer,
            tasks,
            data=user_commonsense_dir,
            scoring=scoring,
            generation=GenerationSettings(max_new_tokens=3),
            progress=False,
        )
        check_schema(report.results, tasks, 6)


def test_limit_subset_is_seeded(tiny_lm, tiny_tokenizer, shared_data, monkeypatch):
    monkeypatch.setattr(pipeline, "generate_texts", lambda m, t, prompts, **k: ["true"] * len(prompts))
    runs = [evaluate_model(None, None, ["boolq"], data=shared_data, limit=5, seed=s, progress=False) for s in (0, 0, 1)]
    ids = [[p["id"] for p in run.predictions] for run in runs]
    assert ids[0] == ids[1] != ids[2]


def test_contamination_guard(tmp_path, caplog, monkeypatch):
    data = write_json(
        tmp_path / "test.json",
        [{"instruction": f"How many apples does person {i} have?", "answer": "1"} for i in range(6)],
    )
    train = write_json(
        tmp_path / "train.json",
        [
            {"instruction": "how many  apples does PERSON 2 have?", "output": "1"},  # case/whitespace differ
            {"instruction": "How many apples does person 4 have?\n", "output": "1"},
            {"instruction": "Something else entirely", "output": "x"},
        ],
    )
    monkeypatch.setattr(pipeline, "generate_texts", lambda m, t, prompts, **k: ["1"] * len(prompts))
    with caplog.at_level(logging.WARNING):
        report = evaluate_model(None, None, ["svamp"], data=data, train_files=[train], progress=False)
    c = report.results["contamination"]
    assert c["n_overlap"] == 2 and c["per_task"] == {"svamp": 2}
    assert {e["id"] for e in c["examples"]} == {"svamp/2", "svamp/4"}
    assert "contamination" in caplog.text
    clean = evaluate_model(None, None, ["svamp"], data=data, train_files=[tmp_path / "gone.json"], progress=False)
    assert clean.results["contamination"]["n_overlap"] == 0
    assert clean.results["contamination"]["unreadable_files"]


def test_bad_inputs(tmp_path, shared_data):
    with pytest.raises(ModetuneError, match="unknown task"):
        evaluate_model(None, None, ["nope"], data=shared_data)
    with pytest.raises(ConfigError, match="log-likelihood scoring needs multiple-choice"):
        evaluate_model(None, None, ["gsm8k"], data=shared_data, scoring="loglikelihood")
    with pytest.raises(ConfigError, match="unknown scoring"):
        evaluate_model(None, None, ["gsm8k"], data=shared_data, scoring="beam")
    with pytest.raises(DataError, match="does not exist"):
        evaluate_model(None, None, ["gsm8k"], data=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="single file"):
        evaluate_model(None, None, ["gsm8k", "svamp"], data=shared_data / "gsm8k" / "test.json")
    bad = write_json(tmp_path / "bad.json", [{"instruction": "q", "answer": "1"}, {"instruction": "q2"}])
    with pytest.raises(DataError, match=r"record index 1.*missing field 'answer'"):
        evaluate_model(None, None, ["gsm8k"], data=bad)


def test_data_mapping(monkeypatch, tmp_path, shared_data):
    mine = write_json(tmp_path / "mine.json", [{"instruction": "q", "answer": "true"}])
    monkeypatch.setattr(pipeline, "generate_texts", lambda m, t, prompts, **k: ["true"] * len(prompts))
    report = evaluate_model(
        None, None, ["boolq", "gsm8k"], data={"boolq": mine, "*": shared_data}, limit=2, progress=False
    )
    assert report.results["tasks"]["boolq"]["n"] == 1
    assert report.results["tasks"]["gsm8k"]["file"].endswith("gsm8k/test.json")
    with pytest.raises(ConfigError, match="not being evaluated"):
        evaluate_model(None, None, ["gsm8k"], data={"boolq": mine})


def test_render_table():
    from rich.console import Console

    results = {
        "scoring": "generate",
        "tasks": {"gsm8k": {"accuracy": 0.5, "n": 10, "ci95": [0.2, 0.8], "n_total": 1319, "no_answer": 2}},
        "average": 0.5,
    }
    console = Console(record=True, width=120)
    console.print(render_table(results))
    text = console.export_text()
    assert "gsm8k" in text and "50.0%" in text and "average" in text and "subset of 1319" in text


def test_a_failed_write_leaves_the_previous_results_whole(tmp_path):
    """results.json is renamed into place after its predictions: present means complete, for resuming runners."""
    pipeline.EvalReport({"average": 0.5}, [{"id": "a", "correct": True}]).write(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):  # a prediction that is not JSON: fails before any file is replaced
        pipeline.EvalReport({"average": 0.9}, [{"id": "b", "correct": object()}]).write(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert set(before) == {"results.json", "predictions.jsonl"}
