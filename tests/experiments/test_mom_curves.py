"""experiments/mom/curves.py on tiny cells: curves with tokens and FLOPs, a finished cell is never retrained, the
seeds phase follows the sweep, the report renders from the JSONs, the plan measures a few steps."""

from __future__ import annotations

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
                  learning_rates=(3e-3,), seeds=(0, 1), archs=("vanilla", "mom"), tokenizer=str(tokenizer),
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
    assert "= 25 cells" in text and text.count("\n| ") == 6  # header + 5 architectures
    rows = [line for line in text.splitlines() if line.startswith("| ") and "arch" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(curves.Grid.archs)
    assert all(float(r.split(" | ")[1]) > 0 for r in rows)
    assert "total:" in text


def test_controls_are_what_the_docstring_says(curves, corpus_file, tiny_model_dir):
    grid = curves.Grid()
    # issue 15's MoM realised ~1.06 attention and FFN modules per round: the FLOP-matched vanilla has 5 layers
    assert curves.flop_matched_layers(grid) == 5
    cfg = curves.pretrain_config(grid, curves.Cell("mom-authors", 1e-3, 2))
    assert (cfg.preset, cfg.k_per_round, cfg.router_temperature, cfg.attention_assembly) == ("authors", 1, 0.2, "qkv")
    scaled = curves.pretrain_config(grid, curves.Cell("mom-authors-d3", 1e-3, 0))
    assert (scaled.router_hidden_size, scaled.router_temperature, scaled.k_per_round) == (64, 0.2, 1)
    gated = curves.pretrain_config(grid, curves.Cell("vanilla-gated", 1e-3, 0))
    assert (gated.arch, gated.gate_init, gated.num_layers) == ("vanilla-gated", 0.34, 4)
    assert (grid.steps, grid.eval_steps, grid.tag) == (2048, 128, "shared")
    mean, lo, hi = curves.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / 3**0.5) == pytest.approx(mean - lo)
