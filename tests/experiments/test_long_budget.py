"""experiments/long_budget.py on a tiny model: each cell trains on one schedule, stops at its milestones to be
evaluated there, resumes from the milestone's checkpoint, and finished pieces are skipped."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.experiments.test_grid_runner import _load


@pytest.fixture
def long(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MODETUNE_EXPERIMENTS_REPORT", str(tmp_path / "RESULTS.md"))
    run = _load("run")
    _load("report")
    long = _load("long_budget")
    monkeypatch.setattr(long, "grid", run)
    monkeypatch.setattr(long, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(long, "WORK", tmp_path / "work")
    monkeypatch.setattr(long, "WHY", tmp_path / "why")  # never the repository's inspections
    monkeypatch.setattr(long, "MAX_STEPS", 6)
    monkeypatch.setattr(long, "MILESTONES", (2, 4, 6))
    monkeypatch.setattr(long, "COMMON", [
        "--model", str(tiny_model_dir), "--max-steps", "6", "--batch-size", "2", "--learning-rate", "1e-3",
        "--cutoff-len", "64", "--save-steps", "1", "--save-total-limit", "0", "--logging-steps", "1",
    ])  # fmt: skip
    monkeypatch.setattr(long, "TEST_SETS", (long.TestSet("synthetic_l1", "synthetic:1", 3, 5),))
    monkeypatch.setattr(long, "TRACK", run.Track("arithmetic", ["synthetic:16:1"], [], (), 4, (), 0, 6))
    lora = ["--peft", "lora", "--lora-r", "2", "--target-modules", "q_proj,v_proj"]
    rows = [
        (run.Row("lora", "1. LoRA", [*lora, "--num-layers", "1"], "base"), (0,)),
        (run.Row("lora_mode", "2. LoRA + MoDE", [*lora, "--num-layers", "2"], "lora"), (0,)),
    ]
    monkeypatch.setattr(long, "ROWS", rows)
    return long


def _trained(long) -> list:
    return [c for c in long.all_cells() if c.row.train]


def test_pieces_stop_at_milestones_evaluate_them_and_resume(long, tmp_path, monkeypatch):
    cells = long.all_cells()
    assert [c.key for c in cells] == ["arithmetic/base", "arithmetic/lora/s0", "arithmetic/lora_mode/s0"]
    untuned, first = cells[0], cells[1]

    # first the untuned model: one evaluation, of the final milestone's questions, nothing trained
    assert long.main(["--max-pieces", "1"]) == 0
    info = json.loads((untuned.piece_dir(0) / "cell.json").read_text())
    assert info["step"] == 0 and info["scores"]["generate"]["synthetic_l1"]["n"] == 5
    assert info["model"] == long.base_model() and "step_seconds" not in info
    assert untuned.done(6) and not untuned.run_dir.exists() and not first.piece_dir(2).exists()

    # one piece: the training stops at the milestone (no model beyond it is evaluated) and is not complete
    assert long.main(["--max-pieces", "1"]) == 0
    info = json.loads((first.piece_dir(2) / "cell.json").read_text())
    assert info["step"] == 2 and info["scores"]["generate"]["synthetic_l1"]["n"] == 3
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "stopped"
    assert (
        max(json.loads(line)["step"] for line in (first.piece_dir(2) / "metrics.jsonl").read_text().splitlines()) <= 2
    )

    # the rest: the training resumes from its checkpoint, the last milestone evaluates the finished run
    assert long.main([]) == 0
    assert all(c.done(s) for c in cells for s in (2, 4, 6))
    run_info = json.loads((first.run_dir / "run.json").read_text())
    assert run_info["status"] == "complete" and run_info["resumed"]
    final = json.loads((first.piece_dir(6) / "cell.json").read_text())
    assert final["scores"]["generate"]["synthetic_l1"]["n"] == 5
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Pieces finished: 7 of 7" in report and "#### Step 4" in report and "| lora | generator, 150 |" in report
    # the untuned model: a row of each milestone's table (on its questions: 3 before the final, 5 there) and
    # LoRA's baseline, paired with each LoRA seed
    for step, questions in ((4, 3), (6, 5)):
        section = report.split(f"#### Step {step}")[1].split("####")[0]
        untuned_line = next(line for line in section.splitlines() if line.startswith("| 0. untuned base model | – |"))
        assert untuned_line.endswith(f"({questions}) |")
    assert "| 1. LoRA | base | generator, 150 | 1 |" in report
    assert (tmp_path / "figures" / "long_curves.png").is_file() and (tmp_path / "figures" / "long_forest.png").is_file()

    # finished pieces are skipped
    def refuse(*args, **kwargs):
        raise AssertionError("a finished piece ran again")

    monkeypatch.setattr(long, "run_piece", refuse)
    assert long.main([]) == 0

    # --inspect looks inside the finished run that mixes layers (not LoRA's final layer alone), once
    monkeypatch.setattr(long, "TRACK", dataclasses.replace(long.TRACK, inspect_data=("--data", "synthetic:4:1")))
    assert long.main(["--inspect"]) == 0
    inspected = sorted(p.relative_to(tmp_path / "why").as_posix() for p in (tmp_path / "why").rglob("*.md"))
    assert inspected == ["arithmetic/lora_mode/s0/lens.md", "arithmetic/lora_mode/s0/router_probe.md"]
    long.grid.reload_and_report("long_report", long.all_cells(), print)  # its table joins the report
    text = (tmp_path / "RESULTS.md").read_text()
    inside = text.partition("#### Inside the runs at the last milestone\n\n")[2]
    _, _, line, end, *_ = inside.splitlines()  # one inspected cell: LoRA's final layer alone is not one
    assert end == "", inside
    number = r"[+-]?\d+\.\d+"
    probe = rf"{number} \[{number}, {number}\] \((constant|final_state|all_states|confidence|final_state\+confidence)\)"
    assert re.fullmatch(rf"\| 2\. LoRA \+ MoDE \| 0 \| {number} \| {number} \| L\d+ {number} \| L\d+ {number} \| {number} "
                        rf"\| {number} \| {probe} \|", line), line  # fmt: skip
    monkeypatch.setattr(long.subprocess, "run", refuse)
    assert long.main(["--inspect"]) == 0  # already inspected: nothing runs


def _fake_piece(cell, step: int, answers: dict[str, list[bool]]) -> None:
    """A finished piece as run_piece leaves it: cell.json and one evaluation output per test set."""
    cell.piece_dir(step).mkdir(parents=True)
    info = {"cell": cell.key, "step": step, "step_seconds": 1.0, "eval_seconds": 2.0}
    (cell.piece_dir(step) / "cell.json").write_text(json.dumps(info))
    for task, correct in answers.items():
        out = cell.piece_dir(step) / "generate" / task
        out.mkdir(parents=True)
        rows = [{"task": task, "id": f"{task}-{i}", "question": f"q{i}", "correct": c} for i, c in enumerate(correct)]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_compares_like_with_like_over_seeds_and_milestones(long, tmp_path, monkeypatch):
    lora, mode = (row for row, _ in long.ROWS)
    monkeypatch.setattr(long, "ROWS", [(lora, (0, 1)), (mode, (0, 1))])
    cells = {(c.row.name, c.seed): c for c in _trained(long)}
    untuned = long.all_cells()[0]  # wrong on every question; one evaluation stands in for both seeds
    _fake_piece(untuned, 0, {"synthetic_l1": [False] * 5, "gsm8k": [False, False]})
    for (row, seed), cell in cells.items():
        gain = row == "lora_mode"
        for step in (2, 4):  # the 3 shared questions: MoDE gains one of them in seed 0, none in seed 1
            _fake_piece(cell, step, {"synthetic_l1": [gain and seed == 0, False, True]})
        # the final: the shared 3 plus 2 more (MoDE gains both in both seeds), and an LLM-Adapters set
        _fake_piece(cell, 6, {"synthetic_l1": [gain and seed == 0, False, True, gain, gain], "gsm8k": [True, False]})
    long.grid.reload_and_report("long_report", long.all_cells(), print)
    text = (tmp_path / "RESULTS.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 2. LoRA + MoDE | lora | ")]
    shared = [r for r in rows if "| generator, 150 |" in r]
    assert len(shared) == 3  # the same 3 questions at every milestone
    assert all("| 2 | 33.3 | +16.7 [" in r and "s0 +33.3, s1 +0.0" in r for r in shared)
    final = [r for r in rows if "| generator, 600 |" in r]  # only at the final, where it has more questions
    assert len(final) == 1 and "| 20.0 | +50.0 [" in final[0] and "s0 +60.0, s1 +40.0" in final[0]
    adapters = [r for r in rows if "| LLM-Adapters |" in r]
    assert len(adapters) == 1 and "| +0.0 [" in adapters[0] and adapters[0].endswith("| n/a |")  # never disagree
    assert (tmp_path / "figures" / "long_curves.png").is_file() and (tmp_path / "figures" / "long_forest.png").is_file()
    against_untuned = [line for line in text.splitlines() if line.startswith("| 1. LoRA | base | generator, 150 |")]
    assert len(against_untuned) == 3 and all("| 2 | 0.0 | +33.3 [" in r and "s0 +33.3, s1 +33.3" in r
                                              for r in against_untuned)  # fmt: skip


def test_a_variant_is_also_compared_with_the_row_it_changes_one_thing_of(long, tmp_path, monkeypatch):
    lora, mode = (row for row, _ in long.ROWS)
    variant = long.grid.Row("variant", "3. a variant of row 2", [*mode.flags, "--distill", "labels"], "lora")
    monkeypatch.setattr(long, "ROWS", [(lora, (0,)), (mode, (0,)), (variant, (0,))])
    monkeypatch.setattr(long, "ALSO_AGAINST", {"variant": "lora_mode"})
    cells = {c.row.name: c for c in _trained(long)}
    _fake_piece(long.all_cells()[0], 0, {"synthetic_l1": [False] * 5})
    for name, correct in (("lora", [False, False, True]), ("lora_mode", [True, False, True]), ("variant", [True] * 3)):
        _fake_piece(cells[name], 2, {"synthetic_l1": correct})
    long.grid.reload_and_report("long_report", long.all_cells(), print)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 3. a variant of row 2 | lora | generator, 150 | 1 | 33.3 | +66.7 [" in text  # its baseline
    assert "| 3. a variant of row 2 | lora_mode | generator, 150 | 1 | 66.7 | +33.3 [" in text  # the row it changes
    assert "| 2. LoRA + MoDE | lora | generator, 150 | 1 | 33.3 | +33.3 [" in text
    assert not any(line.startswith("| 2. LoRA + MoDE | lora_mode |") for line in text.splitlines())


def test_an_only_that_matches_no_cell_is_refused_with_the_valid_keys(long, capsys):
    """A typo in --only used to select nothing and exit 0 having done nothing; now it names the cells."""
    with pytest.raises(SystemExit) as exit_:
        long.main(["--only", "arithmetic/lora_mdoe"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--only 'arithmetic/lora_mdoe' matches no cell" in err and "arithmetic/lora_mode/s0" in err
    assert "Traceback" not in err
    assert long.main(["--only", "arithmetic/lora_mode", "--commands"]) == 0  # a prefix still selects


def test_an_interrupted_evaluation_resumes_at_the_test_set_it_stopped_in(long, monkeypatch):
    """The final milestone's evaluation takes about 1.5 h here: a kill in its last set must not cost the others."""
    import modetune.evaluation

    monkeypatch.setattr(long, "TEST_SETS", (long.TestSet("synthetic_l1", "synthetic:1", 3, 5),
                                            long.TestSet("synthetic_l2", "synthetic:2", 3, 5)))  # fmt: skip
    cell = _trained(long)[0]
    real, scored = modetune.evaluation.evaluate_model, []

    def killed_in_the_second_set(*args, **kwargs):
        scored.append(Path(kwargs["output_dir"]).name)
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(modetune.evaluation, "evaluate_model", killed_in_the_second_set)
    with pytest.raises(KeyboardInterrupt):
        long.run_piece(cell, 2, print)
    assert not cell.done(2) and scored == ["synthetic_l1", "synthetic_l2"]
    partial = long._partial(cell, 2)
    assert json.loads((partial / "train_stats.json").read_text())["train_wall_seconds"] > 0
    digest = long.weights_digest(long._checkpoint(cell, 2))  # the checkpoint is pruned once the piece is done

    scored.clear()
    monkeypatch.setattr(modetune.evaluation, "evaluate_model", lambda *a, **k: scored.append(1) or real(*a, **k))
    long.run_piece(cell, 2, print)
    assert len(scored) == 1  # only the set the kill interrupted
    info = json.loads((cell.piece_dir(2) / "cell.json").read_text())
    assert set(info["scores"]["generate"]) == {"synthetic_l1", "synthetic_l2"} and info["train_wall_seconds"] > 0
    assert not partial.exists() and not (cell.piece_dir(2) / "train_stats.json").exists()
    first = json.loads((cell.piece_dir(2) / "generate" / "synthetic_l1" / "results.json").read_text())
    assert first["model"]["weights_sha256"] == digest != long.weights_digest(cell.run_dir / "no-such-dir")
    assert info["eval_seconds"] == pytest.approx(sum(
        json.loads((cell.piece_dir(2) / "generate" / t / "results.json").read_text())["elapsed_seconds"]
        for t in ("synthetic_l1", "synthetic_l2")), abs=0.2)  # fmt: skip

    # a set scored from other weights (another training of the cell, say) is scored again
    stale = long._partial(cell, 4) / "generate" / "synthetic_l1"
    stale.mkdir(parents=True)
    (stale / "results.json").write_text(json.dumps({**first, "model": {**first["model"], "step": 4}}))
    scored.clear()
    long.run_piece(cell, 4, print)
    assert len(scored) == 2


def test_a_second_runner_takes_the_next_free_cell_and_never_the_same_one(long, monkeypatch):
    first, second = _trained(long)
    ran = []

    def piece(cell, step, log):  # what run_piece leaves behind, without the training
        ran.append((cell.key, step))
        cell.piece_dir(step).mkdir(parents=True)
        (cell.piece_dir(step) / "cell.json").write_text("{}")

    monkeypatch.setattr(long, "run_piece", piece)
    monkeypatch.setattr(long, "_write_report", lambda log: None)
    logged = []
    other = long.claim_cell(first, print)  # the runner already on the first cell
    assert long.run_cells([first, second], 0, logged.append) == 3
    assert ran == [(second.key, 2), (second.key, 4), (second.key, 6)]
    assert any("skipped: another runner has it" in line and first.key in line for line in logged)
    again = long.claim_cell(second, print)  # released when its runner was done with it
    assert again is not None
    again.release()

    # the other runner finishes one piece and stops; this one goes on from the next, within --max-pieces
    piece(first, 2, print)
    other.release()
    ran.clear()
    assert long.run_cells([first, second], 1, print) == 1
    assert ran == [(first.key, 4)]


def test_the_plan_counts_what_is_left_from_the_measured_times(long):
    first = _trained(long)[0]
    for step in (2, 4):  # two of LoRA's three pieces finished, at an hour a step and no evaluation time
        first.piece_dir(step).mkdir(parents=True)
        (first.piece_dir(step) / "cell.json").write_text(json.dumps({"step_seconds": 3600, "eval_seconds": 0}))
    lines = long.plan_lines()
    assert lines[0] == "- 1. LoRA: 1 seeds x 6.0 h" and lines[1].startswith(
        "- 2. LoRA + MoDE: 1 seeds x 6.0 h (its step"
    )
    assert lines[2].startswith("- 0. untuned base model: one evaluation")
    assert "in all: 12 h of one thread, 8 h of it still to run (about 4 h with two runners" in lines[3]


def test_the_cells_that_decide_come_first_then_the_paper_then_the_variant():
    long = _load("long_budget")
    assert [c.key.split("/", 1)[1] for c in long.all_cells()] == [
        "base", "lora/s0", "lora_mode/s0", "lora/s1", "lora_mode/s1", "lora/s2", "lora_mode/s2",
        "paper/s0", "paper/s1", "lora_mode_labels/s0", "lora_mode_labels/s1",
    ]  # fmt: skip
    variant = long.VARIANT.flags
    assert variant[variant.index("--distill") + 1] == "labels" and "--num-layers" in variant


def test_each_curve_point_says_how_many_seeds_its_mean_is_over():
    report = _load("long_report")
    per_seed = {0: [(250, 0.4), (500, 0.5)], 1: [(250, 0.6)], 2: []}  # seed 1 has reached step 250 only
    assert report.means_over_seeds(per_seed, (250, 500, 1000)) == [(250, 50.0, 2), (500, 50.0, 1)]


def test_figure_labels_drop_number_and_flags_but_never_cut_a_word():
    long, report = _load("long_budget"), _load("report")
    labels = {row.name: report.short_label(row) for row, _ in long.ROWS}
    assert labels["paper"] == "LoRA + MoDE, the paper's configuration"
    assert labels["lora_mode_labels"] == "LoRA + MoDE, late layers trained on the labels"
    assert labels["lora"] == "LoRA (r=32, q,k,v,up,down)"  # a parenthesis that is not flags stays


def test_a_forest_line_names_its_baseline_in_words():
    long, report = _load("long_budget"), _load("long_report")
    names = {row.name: report.baseline_name(row) for row, _ in long.ROWS}
    assert names["lora"] == "LoRA" and names["lora_mode"] == "LoRA + MoDE"
