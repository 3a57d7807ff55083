"""experiments/commonsense_pilot.py: the balanced rewrite of the training files keeps every record's meaning
while spreading the gold answer over the positions, and the whole pilot runs on a tiny model, resumably."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter

import pytest

from modetune.evaluation.tasks import load_task_examples, parse_choices, select_subset
from tests.experiments.test_grid_runner import _load

WORDS = ["red", "blue", "green", "tall", "cold", "warm", "iron", "salt", "rain", "moss", "sand", "oak"]
ANSWERS = ("answer1", "answer2", "answer3", "answer4")


def _choice_record(i: int, k: int = 4, gold: int = 0) -> dict[str, str]:
    options = [f"{WORDS[(i + j) % len(WORDS)]} {i}" for j in range(k)]
    listed = " ".join(f"Answer{j + 1}: {text}" for j, text in enumerate(options))
    labels = "/".join(f"answer{j + 1}" for j in range(k))
    return {
        "instruction": f"Please choose the correct answer to the question: What is {i}?\n\n{listed}\n\n"
        f"Answer format: {labels}",
        "input": "",
        "output": f"the correct answer is answer{gold + 1}",
        "answer": f"answer{gold + 1}",
    }


def _boolq_record(i: int, answer: str) -> dict[str, str]:
    return {
        "instruction": f"Please answer the following question with true or false, question: is {WORDS[i % 12]} {i}?"
        "\n\nAnswer format: true/false",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def _piqa_record(i: int) -> dict[str, str]:
    return {
        "instruction": f"Please choose the correct solution to the question: How to {WORDS[i % 12]}?\n\n"
        f"Solution1: use {WORDS[(i + 1) % 12]}\n\nSolution2: use {WORDS[(i + 2) % 12]}\n\n"
        "Answer format: solution1/solution2",
        "input": "",
        "output": f"the correct answer is solution{i % 2 + 1}",
        "answer": f"solution{i % 2 + 1}",
    }


def _texts(task: str, record: dict[str, str]) -> dict[str, str]:
    return {c.label: c.text for c in parse_choices(task, record["instruction"])}


@pytest.fixture
def pilot():
    return _load("commonsense_pilot")


def test_balancing_spreads_the_gold_answer_evenly_and_keeps_each_record_meaning(pilot):
    # every gold answer at position 1 (the worst case), 40 records with 4 options and 6 with 3
    records = [_choice_record(i, gold=0) for i in range(40)] + [_choice_record(i, k=3, gold=0) for i in range(40, 46)]
    balanced = pilot.balance(records, "arc_easy", seed=0)
    assert len(balanced) == len(records)
    four = Counter(r["answer"] for r in balanced[:40])
    three = Counter(r["answer"] for r in balanced[40:])
    assert four == dict.fromkeys(ANSWERS, 10) and three == dict.fromkeys(ANSWERS[:3], 2)  # uniform, exactly
    for old, new in zip(records, balanced, strict=True):
        before, after = _texts("arc_easy", old), _texts("arc_easy", new)
        assert sorted(before.values()) == sorted(after.values())  # the same options, reordered
        assert after[new["answer"]] == before[old["answer"]]  # the label still names the gold text
        assert new["output"] == f"the correct answer is {new['answer']}"  # and the target says the same label
        assert new["instruction"].split("\n\n")[0] == old["instruction"].split("\n\n")[0]  # the question too
        assert new["instruction"].endswith(old["instruction"].rsplit("\n\n", 1)[1])  # and the format line
    # deterministic for a seed, another seed another permutation
    assert pilot.balance(records, "arc_easy", seed=0) == balanced
    assert pilot.balance(records, "arc_easy", seed=1) != balanced
    assert records[0]["answer"] == "answer1"  # the input is left as it was

    # uneven counts: each position gets n // k or n // k + 1
    odd = Counter(r["answer"] for r in pilot.balance([_choice_record(i, gold=i % 2) for i in range(10)], "obqa"))
    assert sorted(odd.values()) == [2, 2, 3, 3]


def test_balancing_boolq_subsamples_the_majority_answer(pilot):
    records = [_boolq_record(i, "true" if i % 3 else "false") for i in range(30)]  # 20 true, 10 false
    balanced = pilot.balance(records, "boolq", seed=0)
    assert Counter(r["answer"] for r in balanced) == {"true": 10, "false": 10}
    assert [r for r in records if r in balanced] == balanced  # a subset, in file order
    assert pilot.balance(records, "boolq", seed=0) == balanced


def test_permuting_options_follows_the_gold_text(pilot):
    record = _choice_record(3, gold=1)  # tall 3, cold 3 (gold), warm 3, iron 3
    moved = pilot.permute_options("arc_challenge", record, [2, 3, 0, 1])
    assert _texts("arc_challenge", moved) == {
        "answer1": "warm 3",
        "answer2": "iron 3",
        "answer3": "tall 3",
        "answer4": "cold 3",
    }
    assert moved["answer"] == "answer4" and moved["output"] == "the correct answer is answer4"
    assert pilot.permute_options("arc_challenge", record, [0, 1, 2, 3]) == record
    with pytest.raises(ValueError, match="not a permutation"):
        pilot.permute_options("arc_challenge", record, [0, 0, 1, 2])


def test_answer_text_targets_name_the_gold_option(pilot):
    records = [_choice_record(i, gold=i % 4) for i in range(8)]
    named = pilot.DATA_KINDS["answer_text"](records, "openbookqa")
    for record in named:
        gold = _texts("openbookqa", record)[record["answer"]]
        assert record["output"] == f"the correct answer is {record['answer']}: {gold}"
    boolq = [_boolq_record(i, "true" if i % 2 else "false") for i in range(4)]
    assert pilot.name_answer_text(boolq, "boolq") == boolq  # a BoolQ label is its text


@pytest.fixture
def tiny_pilot(tmp_path, tiny_model_dir, monkeypatch):
    """The pilot on a tiny random model, tiny data files in the LLM-Adapters format, and 2 steps per recipe."""
    report_md = tmp_path / "RESULTS.md"
    report_md.write_text("# Results\n\nabove\n\n<!-- commonsense-pilot: begin -->\nresults pending\n"
                         "<!-- commonsense-pilot: end -->\n\nbelow\n")  # fmt: skip
    monkeypatch.setenv("MODETUNE_EXPERIMENTS_REPORT", str(report_md))
    run = _load("run")
    report = _load("report")
    pilot = _load("commonsense_pilot")
    data = tmp_path / "data"
    files = {
        "boolq": ([_boolq_record(i, "true" if i % 3 else "false") for i in range(12)],
                  [_boolq_record(i, "true" if i % 2 else "false") for i in range(20, 26)]),
        "piqa": ([], [_piqa_record(i) for i in range(6)]),
        **{name: ([_choice_record(i, gold=i % 3) for i in range(8)], [_choice_record(i, gold=i % 4) for i in range(30, 36)])
           for name in ("arc_easy", "arc_challenge", "openbookqa")},
    }  # fmt: skip
    for name, (train, test) in files.items():
        (data / name).mkdir(parents=True)
        (data / name / "test.json").write_text(json.dumps(test))
        if train:
            (data / name / "train.json").write_text(json.dumps(train))
    monkeypatch.setattr(run, "SHARED", data)
    monkeypatch.setattr(run, "RESULTS", tmp_path / "grid_results")  # no grid cell: nothing measured before
    monkeypatch.setattr(pilot, "grid", run)
    monkeypatch.setattr(pilot, "grid_report", report)
    monkeypatch.setattr(pilot, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(pilot, "WORK", tmp_path / "work")
    monkeypatch.setattr(pilot, "MODEL", str(tiny_model_dir))
    monkeypatch.setattr(pilot, "CONFIRMATORY", 2)  # of 6 questions per set: 4 left to choose the recipe on
    monkeypatch.setattr(pilot, "COMMON", ["--batch-size", "2", "--cutoff-len", "128", "--save-steps", "1",
                                          "--save-total-limit", "1", "--logging-steps", "1"])  # fmt: skip
    monkeypatch.setattr(pilot, "LORA", ["--peft", "lora", "--lora-r", "2", "--target-modules", "q_proj,v_proj",
                                        "--num-layers", "1"])  # fmt: skip
    monkeypatch.setattr(pilot, "RECIPES", [dataclasses.replace(r, steps=2, warmup=0) for r in pilot.RECIPES])
    return pilot


def test_the_pilot_runs_end_to_end_resumes_and_reports(tiny_pilot, tmp_path, monkeypatch, capsys):
    pilot = tiny_pilot
    names = [r.name for r in pilot.RECIPES]
    assert names == ["grid", "low_lr_long", "balanced", "answer_text"]
    assert pilot.main(["--plan"]) == 0
    assert "Nothing measured yet" in capsys.readouterr().out

    assert pilot.main(["--limit", "4"]) == 0
    for name in ["untuned", *names]:
        info = json.loads((tmp_path / "results" / name / "cell.json").read_text())
        assert info["limit"] == 4 and set(info["scores"]) == {"ll_text", "ll_label"}
        assert set(info["scores"]["ll_label"]) == {"boolq", "piqa", "arc_easy", "arc_challenge", "openbookqa"}
        assert all(s["n"] == 4 for s in info["scores"]["ll_text"].values())
        assert (tmp_path / "results" / name / "ll_text" / "piqa" / "predictions.jsonl.gz").is_file()
        assert not (tmp_path / "results" / name / "ll_text" / "piqa" / "predictions.jsonl").exists()
    answer_text = json.loads((tmp_path / "results" / "answer_text" / "cell.json").read_text())
    assert answer_text["global_step"] == 2 and answer_text["data"] == "answer_text"
    assert answer_text["train_data"]["boolq"] == {"records": 8, "gold": {"false": 4, "true": 4}}
    assert str(tmp_path / "work" / "data" / "answer_text") in " ".join(pilot.RECIPES[3].train_command())
    assert (tmp_path / "results" / "answer_text" / "metrics.jsonl").is_file()
    # the rewritten training files live in the work directory, none beside the shared data
    assert sorted(p.name for p in (tmp_path / "work" / "data").iterdir()) == ["answer_text", "balanced"]
    assert sorted(p.name for p in (tmp_path / "data" / "boolq").iterdir()) == ["test.json", "train.json"]
    written = json.loads((tmp_path / "work" / "data" / "answer_text" / "arc_easy.json").read_text())
    assert all(r["output"].startswith(f"the correct answer is {r['answer']}: ") for r in written)
    # the grid recipe trains on the shared files as they are, as the grid did
    assert str(tmp_path / "data" / "boolq" / "train.json") in pilot.RECIPES[0].train_command()

    text = (tmp_path / "RESULTS.md").read_text()
    block = text.split("<!-- commonsense-pilot: begin -->")[1].split("<!-- commonsense-pilot: end -->")[0]
    assert text.startswith("# Results\n\nabove\n\n") and text.endswith("<!-- commonsense-pilot: end -->\n\nbelow\n")
    assert "results pending" not in text and "Finished: 4 of 4 recipes" in block
    assert "#### Log-likelihood, text" in block and "#### Log-likelihood, label" in block
    assert "| answer_text | " in block and "Δ vs untuned per set" in block and "(n = 20)" in block
    assert "#### Most common predicted label" in block and "p Holm-adjusted over the 8 recipe × scoring" in block
    # the recipe is chosen on questions the confirmatory run will not be tested on
    held = {
        e.instruction for e in select_subset(load_task_examples("piqa", tmp_path / "data" / "piqa" / "test.json"), 2)
    }
    with gzip.open(tmp_path / "results" / "untuned" / "ll_text" / "piqa" / "predictions.jsonl.gz", "rt") as lines:
        scored = [json.loads(line) for line in lines]
    assert len(scored) == 4 and not held & {r["question"] for r in scored}

    # resumable: a second call trains and evaluates nothing
    def refuse(*args, **kwargs):
        raise AssertionError("a finished recipe ran again")

    monkeypatch.setattr(pilot, "run_one", refuse)
    monkeypatch.setattr(pilot.grid, "_train", refuse)
    assert pilot.main(["--limit", "4"]) == 0

    # --report rewrites only the block; --plan reads the times this pilot measured
    (tmp_path / "RESULTS.md").write_text(text.replace(block, "\nstale\n"))
    assert pilot.main(["--report"]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == text
    assert pilot.main(["--plan", "--limit", "4"]) == 0
    plan = capsys.readouterr().out
    assert "- answer_text: 2 steps" in plan and "done" in plan and "from this pilot" in plan
