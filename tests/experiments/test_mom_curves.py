"""experiments/mom/curves.py on tiny cells: curves with tokens and FLOPs, a finished cell is never retrained, the
seeds phase follows the sweep, the report renders from the JSONs, the plan measures a few steps; the two-phase cell
(vanilla -> MoM from its layers) is one continuous curve and resumes a killed phase 2 without phase 1."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("mom_curves", ROOT / "experiments" / "mom" / "curves.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mom_curves"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    docs = [f"{a} has {n} apples. so {a} has {n} apples." for a, n in
            ((rng.choice(["alice", "bob", "carol"]), rng.randint(1, 9)) for _ in range(300))]  # fmt: skip
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture
def curves(tmp_path, monkeypatch):
    module = _load()
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results" / "curves")
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(module, "REPORT", tmp_path / "RESULTS.md")
    monkeypatch.setattr(module, "HERE", tmp_path)
    return module


def tiny_grid(curves, corpus: Path, tokenizer: Path, **overrides):
    values = dict(corpus=(str(corpus),), tokens=192, every=64, batch_size=2, block_size=16, eval_blocks=4,
                  learning_rates=(3e-3,), max_extensions=0, seeds=(0, 1), archs=("vanilla", "mom"), tokenizer=str(tokenizer),
                  size=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))  # fmt: skip
    return curves.Grid(**{**values, **overrides})


def test_two_cells_end_to_end_then_resumed_without_training_and_reported(curves, corpus_file, tiny_model_dir):
    grid = tiny_grid(curves, corpus_file, tiny_model_dir)
    assert (grid.steps, grid.eval_steps, grid.tag) == (6, 2, "stories")
    cells = curves.sweep_cells(grid)
    assert [c.name for c in cells] == ["vanilla-lr0.003-s0", "mom-lr0.003-s0"]
    assert curves.seed_cells(grid) == []  # no sweep finished yet
    curves.run_cells(grid, cells, jobs=1, forward=[])

    results = {c.arch: json.loads((curves.results_dir(grid) / f"{c.name}.json").read_text()) for c in cells}
    for arch, r in results.items():
        assert r["status"] == "complete" and r["arch"] == arch and r["seed"] == 0
        assert [p["step"] for p in r["points"]] == [2, 4, 6]
        assert [p["tokens"] for p in r["points"]] == [64, 128, 192]
        flops = [p["forward_flops"] for p in r["points"]]
        assert 0 < flops[0] < flops[1] < flops[2] == pytest.approx(r["forward_flops"])
        assert r["points"][-1]["eval_loss"] == pytest.approx(r["final_eval_loss"], abs=1e-4)
    assert_portable(curves, results["vanilla"])
    # vanilla: constant FLOPs per token; MoM: each step's realised picks, at most its K-upper count
    vanilla, mom = results["vanilla"], results["mom"]
    assert vanilla["realised_flops_per_token"] == pytest.approx(vanilla["forward_flops_per_token_nominal"])
    assert mom["realised_flops_per_token"] <= mom["forward_flops_per_token_nominal"]
    assert mom["model_config"]["k_per_round"] == 2
    # each point carries the mean training loss of its own steps (logged every step), a MoM's router entropy too
    for arch, r in results.items():
        log = [json.loads(line) for line in (curves.run_dir(grid, cells[arch == "mom"]) / "metrics.jsonl")
               .read_text().splitlines() if line.strip()]  # fmt: skip
        steps = {d["step"]: d for d in log if "loss" in d and "eval_loss" not in d}
        for point, window in zip(r["points"], ((1, 2), (3, 4), (5, 6)), strict=True):
            assert point["train_loss"] == pytest.approx(sum(steps[s]["loss"] for s in window) / 2)
            if arch == "mom":
                assert point["router_entropy"] == pytest.approx(sum(steps[s]["router_entropy"] for s in window) / 2)
            else:
                assert "router_entropy" not in point

    # a finished cell is returned as it is: no training, not even a look at its run
    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    curves.pretrain = no_training
    before = (curves.results_dir(grid) / "mom-lr0.003-s0.json").read_text()
    curves.run_cells(grid, cells, jobs=1, forward=[])
    assert (curves.results_dir(grid) / "mom-lr0.003-s0.json").read_text() == before
    # a complete run whose JSON was lost: the curve is read again from the run, without training
    (curves.results_dir(grid) / "mom-lr0.003-s0.json").unlink()
    again = curves.run_cell(grid, cells[1])
    assert again["points"] == mom["points"]

    # the sweep is done: the seeds phase is each architecture's best rate at the other seeds
    assert curves.best_rates(grid) == {"vanilla": 3e-3, "mom": 3e-3}
    assert [c.name for c in curves.seed_cells(grid)] == ["vanilla-lr0.003-s1", "mom-lr0.003-s1"]

    # the report renders from the JSONs (a seed-1 copy stands in for a second seed's cell)
    for cell in cells:
        data = json.loads((curves.results_dir(grid) / f"{cell.name}.json").read_text())
        shifted = {**data, "cell": cell.name.replace("-s0", "-s1"), "seed": 1, "final_eval_loss": data["final_eval_loss"] + 0.1,
                   "points": [{**p, "eval_loss": p["eval_loss"] + 0.1} for p in data["points"]]}  # fmt: skip
        (curves.results_dir(grid) / f"{shifted['cell']}.json").write_text(json.dumps(shifted))
    curves.REPORT.write_text("# results\n\nkept text\n")
    curves.write_report(grid)
    text = curves.REPORT.read_text()
    assert text.startswith("# results\n\nkept text\n") and curves.BEGIN in text and curves.END in text
    assert (curves.results_dir(grid) / "curves.png").stat().st_size > 1000
    assert "| MoM (ours) | 2 | 0.003 | 2 |" in text
    # the last column: the seeds that did not choose the rate (here seed 1 alone, seed 0's loss + 0.1)
    row = next(line for line in text.splitlines() if line.startswith("| MoM (ours) | 2 | 0.003 | 2 |"))
    assert row.endswith(f"| {mom['final_eval_loss'] + 0.1:.3f} |")
    assert "| MoM (ours) - vanilla, equal parameters | 2 |" in text
    curves.write_report(grid)  # rewritten in place, between the markers
    assert curves.REPORT.read_text() == text


def assert_portable(curves, result) -> None:
    """Paths in the repository are stored relative to it (the JSONs are committed)."""
    assert curves.portable_paths(f'"{curves.REPO}/experiments/mom/runs/x"') == '"experiments/mom/runs/x"'
    assert curves.portable_paths(f"{curves.REPO.parent}/shared/data") == "../shared/data"
    assert result["pretrain_config"]["output"].endswith("vanilla-lr0.003-s0")


def test_plan_measures_a_few_steps_of_every_arch(curves, corpus_file, tiny_model_dir):
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, archs=curves.Grid.archs, learning_rates=(1e-3, 2e-3, 4e-3),
                     seeds=(0, 1, 2))  # fmt: skip
    text = curves.plan(grid, measure_steps=1)
    assert "= 30 cells" in text and text.count("\n| ") == 7  # header + 6 architectures
    rows = [line for line in text.splitlines() if line.startswith("| ") and "arch" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(curves.Grid.archs)
    assert all(float(r.split(" | ")[1]) > 0 for r in rows)
    assert "total:" in text
    # the two-phase row: phase 1 at vanilla's measured step time, phase 2 at MoM's (the same measurements)
    by_arch = {r.split(" | ")[0][2:]: [float(x) for x in r.strip(" |").split(" | ")[1:]] for r in rows}
    (note,) = [line for line in text.splitlines() if line.startswith("mom-2phase: ")]
    assert f"phase 1 (vanilla) 4 steps at {by_arch['vanilla'][0]:.3f} s/step" in note
    assert f"phase 2 (MoM from its layers) 2 steps at {by_arch['mom'][0]:.3f} s/step" in note
    assert min(by_arch["vanilla"][0], by_arch["mom"][0]) - 1e-3 <= by_arch["mom-2phase"][0]
    assert by_arch["mom-2phase"][0] <= max(by_arch["vanilla"][0], by_arch["mom"][0]) + 1e-3


def test_controls_are_what_the_docstring_says(curves, corpus_file, tiny_model_dir):
    grid = curves.Grid()
    # issue 15's MoM realised ~1.06 attention and FFN modules per round: the FLOP-matched vanilla has 5 layers
    assert curves.flop_matched_layers(grid) == 5
    cfg = curves.pretrain_config(grid, curves.Cell("mom-authors", 1e-3, 2))
    assert (cfg.preset, cfg.k_per_round, cfg.router_temperature, cfg.attention_assembly) == ("authors", 1, 0.2, "qkv")
    scaled = curves.pretrain_config(grid, curves.Cell("mom-authors-d3", 1e-3, 0))
    assert (scaled.router_hidden_size, scaled.router_temperature, scaled.k_per_round) == (64, 0.2, 1)
    gated = curves.pretrain_config(grid, curves.Cell("vanilla-gated", 1e-3, 0))
    assert (gated.arch, gated.gate_init, gated.gate_mode, gated.num_layers) == ("vanilla-gated", 0.34, "token", 4)
    scale = curves.pretrain_config(grid, curves.Cell("vanilla-scaled", 1e-3, 0))
    assert (scale.arch, scale.gate_init, scale.gate_mode) == ("vanilla-gated", 0.34, "scalar")
    assert "vanilla-scaled" not in grid.archs  # an optional cell, as mom-authors-d3
    assert (grid.steps, grid.eval_steps, grid.tag) == (2048, 128, "shared")
    # the two-phase cell: vanilla (the parameter-matched one, seed and rate of the cell) for half the steps, then
    # issue 15's MoM from its layers for the rest, each its own cosine
    first, second = curves.phase_configs(grid, curves.Cell("mom-2phase", 2e-3, 1))
    vanilla = curves.pretrain_config(grid, curves.Cell("vanilla", 2e-3, 1))
    assert grid.phase1_steps == 1024 and (first.max_steps, first.warmup_steps) == (1024, 51)
    differs = {k for k, v in first.to_dict().items() if vanilla.to_dict()[k] != v}
    assert differs == {"output", "max_steps", "warmup_steps"}
    mom = curves.pretrain_config(grid, curves.Cell("mom", 2e-3, 1))
    differs = {k for k, v in second.to_dict().items() if mom.to_dict()[k] != v}
    assert differs == {"output", "max_steps", "warmup_steps", "init_from", "seed", "data_seed", "data_offset"}
    assert (second.init_from, second.seed, second.max_steps, second.learning_rate) == (first.output, 1001, 1024, 2e-3)
    # its routers from another seed, its data read on from where phase 1 stopped in the cell's own order
    assert (second.data_seed, second.data_offset) == (1, 1024 * grid.batch_size)
    assert first.output.endswith("shared/mom-2phase-lr0.002-s1/phase1") and second.output.endswith("s1/phase2")
    with pytest.raises(ValueError, match="two-phase"):
        curves.pretrain_config(grid, curves.Cell("mom-2phase", 2e-3, 1))
    mean, lo, hi = curves.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / 3**0.5) == pytest.approx(mean - lo)


def test_two_phase_cell_is_one_continuous_curve_from_phase_one_weights(curves, corpus_file, tiny_model_dir):
    """vanilla for half the tokens, then MoM from its layers: one curve, steps, tokens and FLOPs continuing across the
    boundary, phase 2 starting where phase 1 ended; the report pairs it with vanilla on the same tokens."""
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, tokens=512, every=128, learning_rates=(1e-2,),
                     archs=("vanilla", "mom", "mom-2phase"))  # fmt: skip
    assert (grid.steps, grid.eval_steps, grid.phase1_steps) == (16, 4, 8)
    cells = curves.sweep_cells(grid)
    assert [c.name for c in cells] == ["vanilla-lr0.01-s0", "mom-lr0.01-s0", "mom-2phase-lr0.01-s0"]
    first, second = curves.phase_configs(grid, cells[2])
    assert (first.arch, first.num_layers, first.max_steps, first.seed) == ("vanilla", 2, 8, 0)
    assert (second.arch, second.max_steps, second.seed, second.k_per_round) == ("mom", 8, 1000, 2)
    assert second.init_from == first.output and first.learning_rate == second.learning_rate == 1e-2
    # phase 2 reads on where phase 1 stopped in the cell's order (8 steps x batch 2 blocks), as vanilla's second half
    assert (first.data_seed, first.data_offset, second.data_seed, second.data_offset) == (None, 0, 0, 16)
    curves.run_cells(grid, cells, jobs=1, forward=[])
    vanilla, mom, two = (json.loads((curves.results_dir(grid) / f"{c.name}.json").read_text()) for c in cells)

    points = two["points"]
    assert [p["step"] for p in points] == [4, 8, 12, 16] and [p["phase"] for p in points] == [1, 1, 2, 2]
    assert [p["tokens"] for p in points] == [p["tokens"] for p in vanilla["points"]] == [128, 256, 384, 512]
    flops = [p["forward_flops"] for p in points]
    assert 0 < flops[0] < flops[1] < flops[2] < flops[3] == pytest.approx(two["forward_flops"])
    assert two["tokens"] == 512 and two["final_eval_loss"] == pytest.approx(points[-1]["eval_loss"], abs=1e-4)
    phase1, phase2 = two["phases"]
    assert (phase1["arch"], phase1["steps"], phase2["arch"], phase2["steps"]) == ("vanilla", 8, "mom-2phase", 8)
    # phase 1 at the vanilla model's FLOPs per token, phase 2 at MoM's realised ones (at most its nominal)
    assert flops[1] == pytest.approx(256 * phase1["forward_flops_per_token_nominal"])
    assert (flops[3] - flops[1]) / 256 <= phase2["forward_flops_per_token_nominal"] * (1 + 1e-9)
    assert phase2["pretrain_config"]["init_from"].endswith("mom-2phase-lr0.01-s0/phase1")
    assert two["model_config"]["model_type"] == mom["model_config"]["model_type"]
    assert two["parameters"] == mom["parameters"]  # the same MoM: phase 1's layers are its pool
    # phase 2 starts from phase 1's weights: its first training loss (the MoM built from phase 1's layers, before
    # any update) is near phase 1's last, far below a fresh MoM's first (about ln of the vocabulary), and its first
    # held-out point lies below phase 1's last, itself far below a fresh MoM's first
    root = curves.run_dir(grid, cells[2])
    end1 = _train_losses(root / "phase1")[-1]
    start2 = _train_losses(root / "phase2")[0]
    fresh = _train_losses(curves.run_dir(grid, cells[1]))[0]
    assert abs(start2 - end1) < 0.25 * (fresh - end1)
    assert points[2]["eval_loss"] < points[1]["eval_loss"] < mom["points"][0]["eval_loss"] - 0.25

    # the report: a sweep row, a row at its best rate, and the paired differences with vanilla and with MoM
    curves.REPORT.write_text("# results\n")
    text = curves.REPORT.read_text() if curves.write_report(grid) else ""
    assert "| mom-2phase | **" in text and "| vanilla -> MoM (two-phase) | 2 | 0.01 | 1 |" in text
    assert "Two-phase cells (mom-2phase): phase 1 trains vanilla for 8 steps (256 tokens)" in text
    assert "| vanilla -> MoM (two-phase) - vanilla, equal parameters | 1 |" in text
    assert "| vanilla -> MoM (two-phase) - MoM (ours) | 1 |" in text


def test_killed_phase_two_resumes_without_training_phase_one_again(curves, corpus_file, tiny_model_dir, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    from modetune.training.trainer import MethodTrainer

    grid = tiny_grid(curves, corpus_file, tiny_model_dir, tokens=256, archs=("mom-2phase",))
    assert (grid.steps, grid.eval_steps, grid.phase1_steps) == (8, 2, 4)
    cell = curves.sweep_cells(grid)[0]
    root = curves.run_dir(grid, cell)
    # the same cell uninterrupted, elsewhere: the reference
    runs, results = curves.RUNS, curves.RESULTS
    monkeypatch.setattr(curves, "RUNS", tmp_path / "straight" / "runs")
    monkeypatch.setattr(curves, "RESULTS", tmp_path / "straight" / "results")
    straight = curves.run_cell(grid, cell)
    monkeypatch.setattr(curves, "RUNS", runs)
    monkeypatch.setattr(curves, "RESULTS", results)

    # killed in phase 2 after its first checkpoint (step 2 of 4): phase 1 complete, phase 2 unfinished, no curve
    class Killed(Exception):
        pass

    step = MethodTrainer.training_step

    def dying(self, *args, **kwargs):
        if Path(self.args.output_dir).name == "phase2" and self.state.global_step >= 2:
            raise Killed
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MethodTrainer, "training_step", dying)
    with pytest.raises(Killed):
        curves.run_cell(grid, cell)
    monkeypatch.setattr(MethodTrainer, "training_step", step)
    assert json.loads((root / "phase1" / "run.json").read_text())["status"] == "complete"
    assert json.loads((root / "phase2" / "run.json").read_text())["status"] == "running"
    assert (root / "phase2" / "checkpoint-2").is_dir() and curves.finished(grid, cell) is None

    # run again: only phase 2 trains, resumed from its checkpoint; the curve is the uninterrupted one
    calls = []
    pretrain = curves.pretrain

    def recording(cfg, argv=None):
        calls.append((Path(cfg.output).name, cfg.resume))
        return pretrain(cfg, argv=argv)

    monkeypatch.setattr(curves, "pretrain", recording)
    phase1 = (root / "phase1" / "run.json").read_text()
    result = curves.run_cell(grid, cell)
    assert calls == [("phase2", True)] and (root / "phase1" / "run.json").read_text() == phase1
    info = json.loads((root / "phase2" / "run.json").read_text())
    assert info["status"] == "complete" and [r["from"][-12:] for r in info["resumed"]] == ["checkpoint-2"]
    assert [p["phase"] for p in result["points"]] == [1, 1, 2, 2]
    # the cost per step counts only the steps each phase's timed segment trained (phase 2's resumed one: 2 of 4)
    timed = [json.loads((root / name / "run.json").read_text()) for name in ("phase1", "phase2")]
    steps = timed[0]["global_step"] + timed[1]["global_step"] - 2
    assert result["seconds_per_step"] == pytest.approx((timed[0]["seconds"] + timed[1]["seconds"]) / steps)
    for key in ("step", "tokens", "forward_flops", "eval_loss"):
        assert [p[key] for p in result["points"]] == pytest.approx([p[key] for p in straight["points"]], abs=1e-5)

    # a phase 2 that was not built from the phase 1 there (phase 1 unfinished, or made for another split): refused
    (curves.results_dir(grid) / f"{cell.name}.json").unlink()
    with pytest.raises(ValueError, match="ran 4 steps, this grid plans 6"):
        curves.run_cell(dataclasses.replace(grid, phase1_fraction=0.75), cell)
    info1 = json.loads(phase1)
    (root / "phase1" / "run.json").write_text(json.dumps({**info1, "status": "running"}))
    with pytest.raises(ValueError, match="not complete"):
        curves.run_cell(grid, cell)
    assert calls == [("phase2", True)]  # neither trained anything


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _fake_result(curves, grid, cell, loss: float) -> dict:
    """A finished cell's JSON as `run_cell` writes it (the fields the report reads)."""
    points = [{"step": s, "tokens": s * grid.tokens_per_step, "forward_flops": s * 1e6, "eval_loss": loss + 1 / s}
              for s in range(grid.eval_steps, grid.steps + 1, grid.eval_steps)]  # fmt: skip
    result = {"cell": cell.name, "status": "complete", "arch": cell.arch, "seed": cell.seed, "points": points,
              "final_eval_loss": points[-1]["eval_loss"], "forward_flops": points[-1]["forward_flops"],
              "realised_flops_per_token": 1e6 / grid.tokens_per_step, "model_config": {"num_hidden_layers": 4},
              "parameters": {"total": 1000, "non_embedding": 100}}  # fmt: skip
    curves.results_dir(grid).mkdir(parents=True, exist_ok=True)
    (curves.results_dir(grid) / f"{cell.name}.json").write_text(json.dumps(result))
    return result


def test_report_is_provisional_at_the_first_rate_until_a_sweep_finishes(curves, corpus_file, tiny_model_dir):
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, learning_rates=(2e-3, 1e-3))
    curves.REPORT.write_text("# results\n")
    curves.write_report(grid)
    assert "(no cell has finished yet)" in curves.REPORT.read_text()

    _fake_result(curves, grid, curves.Cell("vanilla", 2e-3, 0), 3.0)
    _fake_result(curves, grid, curves.Cell("mom", 2e-3, 0), 2.5)
    curves.write_report(grid)
    text = curves.REPORT.read_text()
    assert "**Provisional: no architecture has finished its sweep yet.**" in text
    assert "| MoM (ours) | 4 | 0.002 | 1 |" in text and "| vanilla, equal parameters | 4 | 0.002 | 1 |" in text
    assert "| MoM (ours) - vanilla, equal parameters | 1 | " in text and "-0.500 |" in text
    assert (curves.results_dir(grid) / "curves.png").is_file()

    # vanilla's sweep finishes at its other rate, which is better: the report shows the best-rate cells only
    _fake_result(curves, grid, curves.Cell("vanilla", 1e-3, 0), 2.0)
    curves.write_report(grid)
    text = curves.REPORT.read_text()
    assert "Provisional" not in text
    assert "| vanilla, equal parameters | 4 | 0.001 | 1 |" in text and "| MoM (ours) | 4 |" not in text
    assert "their sweeps unfinished (rates still to run at seed 0): mom (0.001)." in text  # MoM is said missing


def test_a_best_rate_at_the_edge_of_the_sweep_extends_it_until_bracketed(curves, corpus_file, tiny_model_dir):
    """vanilla's best at the lowest rate adds half of it (and, still best, a quarter: the limit); mom's best in
    the middle is bracketed as swept. Seeds wait for the extension; the report's sweep table shows the new rates."""
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, learning_rates=(2e-3, 1e-3, 4e-3), max_extensions=2)
    for lr, loss in ((1e-3, 2.0), (2e-3, 2.5), (4e-3, 3.0)):
        _fake_result(curves, grid, curves.Cell("vanilla", lr, 0), loss)
    for lr, loss in ((1e-3, 2.6), (2e-3, 2.4), (4e-3, 2.9)):
        _fake_result(curves, grid, curves.Cell("mom", lr, 0), loss)
    assert curves.arch_rates(grid) == {"vanilla": (5e-4, 1e-3, 2e-3, 4e-3), "mom": (1e-3, 2e-3, 4e-3)}
    assert curves.best_rates(grid) == {"vanilla": None, "mom": 2e-3}
    assert [c.name for c in curves.seed_cells(grid)] == ["mom-lr0.002-s1"]
    assert "vanilla-lr0.0005-s0" in {c.name for c in curves.sweep_cells(grid)}

    _fake_result(curves, grid, curves.Cell("vanilla", 5e-4, 0), 1.9)  # still the best: a quarter comes next
    assert curves.arch_rates(grid)["vanilla"][0] == 2.5e-4
    _fake_result(curves, grid, curves.Cell("vanilla", 2.5e-4, 0), 1.8)  # best again, but the limit is reached
    assert curves.best_rates(grid)["vanilla"] == 2.5e-4
    curves.REPORT.write_text("# results\n")
    curves.write_report(grid)
    text = curves.REPORT.read_text()
    assert "| arch | lr 0.00025 | lr 0.0005 | lr 0.001 | lr 0.002 | lr 0.004 |" in text
    vanilla = next(line for line in text.splitlines() if line.startswith("| vanilla | "))
    mom = next(line for line in text.splitlines() if line.startswith("| mom | "))
    assert vanilla.count("**") == 2 and vanilla.startswith("| vanilla | **1.9") and "| - |" not in vanilla
    assert mom.startswith("| mom | - | - | 2.7") and "| **2.5" in mom  # final loss = loss + 1/steps here


def test_the_sweep_phase_runs_the_extension_its_own_results_call_for(
    curves, corpus_file, tiny_model_dir, monkeypatch, capsys
):
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, learning_rates=(1e-3, 2e-3), max_extensions=1,
                     archs=("vanilla",))  # fmt: skip
    losses = {1e-3: 2.0, 2e-3: 2.5, 5e-4: 2.2}
    ran = []

    def fake_run(grid_, cell, argv=None):
        ran.append(cell.name)
        return _fake_result(curves, grid_, cell, losses[cell.learning_rate])

    monkeypatch.setattr(curves, "run_cell", fake_run)
    monkeypatch.setattr(curves, "grid_from", lambda args: grid)
    assert curves.main(["--phase", "all"]) == 0
    assert ran == ["vanilla-lr0.001-s0", "vanilla-lr0.002-s0", "vanilla-lr0.0005-s0", "vanilla-lr0.001-s1"]
    capsys.readouterr()
    assert curves.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["vanilla-lr0.0005-s0", "vanilla-lr0.001-s0", "vanilla-lr0.001-s1", "vanilla-lr0.002-s0"]


def test_a_diverged_cell_is_a_result_of_the_sweep_not_a_stop(curves, corpus_file, tiny_model_dir, monkeypatch):
    grid = tiny_grid(curves, corpus_file, tiny_model_dir, learning_rates=(2e-3, 1e-3))

    def diverges(cfg, argv):
        raise curves.TrainingDivergedError("the loss is nan at step 3; lower --learning-rate")

    monkeypatch.setattr(curves, "_train", diverges)
    result = curves.run_cell(grid, curves.Cell("mom", 1e-3, 0))
    assert result["status"] == "diverged" and "nan at step 3" in result["reason"]
    assert curves.finished(grid, curves.Cell("mom", 1e-3, 0)) == result  # never run again
    _fake_result(curves, grid, curves.Cell("mom", 2e-3, 0), 2.5)
    assert curves.best_rates(grid)["mom"] == 2e-3  # the rate that did not diverge
    curves.REPORT.write_text("# results\n")
    curves.write_report(grid)
    text = curves.REPORT.read_text()
    assert "| mom | diverged | **" in text  # the sweep table's rates ascend


def test_a_user_error_ends_the_script_with_its_message_and_status_2(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import runpy

    from modetune.training import pretrain as pretrain_module

    load_tokenizer = pretrain_module.load_tokenizer
    monkeypatch.setattr(pretrain_module, "load_tokenizer", lambda spec: load_tokenizer(str(tiny_model_dir)))
    missing = tmp_path / "missing.txt"
    monkeypatch.setattr(sys, "argv", ["curves.py", "--corpus", str(missing), "--cells", "vanilla-lr0.002-s0"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "experiments" / "mom" / "curves.py"), run_name="__main__")
    assert stopped.value.code == 2
    assert f"experiments/mom/curves.py: error: corpus file {missing} does not exist" in capsys.readouterr().err
