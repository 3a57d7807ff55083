"""experiments/run.py on a tiny model and a two-cell grid: finished cells are skipped, an interrupted training
is resumed from its checkpoint, results and the report are written as cells finish."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modetune.errors import exit_status

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def grid(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MODETUNE_EXPERIMENTS_REPORT", str(tmp_path / "RESULTS.md"))
    run = _load("run")
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run, "WORK", tmp_path / "work")
    monkeypatch.setattr(run, "COMMON", [
        "--model", str(tiny_model_dir), "--max-steps", "4", "--batch-size", "2", "--learning-rate", "1e-3",
        "--cutoff-len", "64", "--save-steps", "2", "--save-total-limit", "2", "--logging-steps", "1",
    ])  # fmt: skip
    monkeypatch.setattr(run, "WHY", tmp_path / "why")
    track = run.Track(
        "arithmetic", ["synthetic:16:1"], [], (), 4, (("generate", "text"),), 4, 6, ("--data", "synthetic:3:1")
    )
    monkeypatch.setattr(run, "TRACKS", {"arithmetic": track})
    lora = ["--peft", "lora", "--lora-r", "2", "--target-modules", "q_proj,v_proj"]
    rows = [
        run.Row("lora", "1. LoRA", [*lora, "--num-layers", "1"], None, (0,), 1, tracks=("arithmetic",)),
        run.Row("lora_mode", "2. LoRA + MoDE", [*lora, "--num-layers", "2"], "lora", (0,), 1, tracks=("arithmetic",)),
    ]
    monkeypatch.setattr(run, "ROWS", rows)
    return run


def test_grid_skips_finished_cells_and_resumes_an_interrupted_training(grid, tmp_path, monkeypatch):
    cells = grid.all_cells()
    assert [c.key for c in cells] == ["arithmetic/lora/s0", "arithmetic/lora_mode/s0"]
    first, second = cells

    # an interrupted training of the second cell: a complete checkpoint-2, run.json still 'running', no final model
    subprocess.run(second.train_command(), check=True, capture_output=True, env=grid._child_env())
    shutil.rmtree(second.run_dir / "checkpoint-4")
    info = json.loads((second.run_dir / "run.json").read_text())
    (second.run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    for name in ("mode_model.safetensors", "mode_config.json", "adapter_model.safetensors"):
        (second.run_dir / name).unlink()

    assert grid.main([]) == 0
    assert first.done and second.done
    assert json.loads((second.run_dir / "run.json").read_text())["resumed"]  # continued from checkpoint-2
    resumed = json.loads((second.result_dir / "cell.json").read_text())
    assert resumed["global_step"] == 4 and "synthetic_l23" in resumed["scores"]["generate"]
    assert resumed["train_resumed"] and not json.loads((first.result_dir / "cell.json").read_text())["train_resumed"]
    assert (second.result_dir / "generate" / "synthetic_l23" / "predictions.jsonl.gz").is_file()
    report = (tmp_path / "RESULTS.md").read_text()
    assert "2. LoRA + MoDE" in report and "vs lora" in report and "Cells finished: 2 of 2" in report
    # the resumed training's wall clock saw only its last segment: the cost table estimates it instead
    assert f"≈{resumed['step_seconds'] * 4 / 60:.1f} |" in report

    # finished cells are skipped: nothing trains or evaluates again
    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(grid, "run_cell", refuse)
    assert grid.main([]) == 0

    # --inspect looks inside the finished cells' runs; the small files land beside the results
    assert grid.main(["--inspect", "--only", "arithmetic/lora_mode"]) == 0
    why = tmp_path / "why" / "arithmetic" / "lora_mode" / "s0"
    assert {p.name for p in why.iterdir()} == set(grid.WHY_FILES)
    assert "kl_from_final" in (why / "lens.md").read_text()
    assert "| probe: confidence |" in (why / "router_probe.md").read_text()
    assert "--router-probe" not in grid.inspect_command(first, tmp_path)  # k = 1: nothing to route
    assert grid._inspected(second)
    lens = (why / "lens.md").read_text()
    (why / "lens.md").write_text(
        "\n".join(line for line in lens.splitlines() if not line.startswith("- router gate ("))
    )
    assert not grid._inspected(second)  # inspected before the gate line existed: --inspect runs it again
    (why / "lens.md").write_text(lens)
    (why / "router_probe.md").unlink()
    assert not grid._inspected(second)  # inspected before the probe existed: --inspect runs it again
    assert not (tmp_path / "why" / "arithmetic" / "lora").exists()


def test_an_interrupted_evaluation_leaves_no_finished_cell(grid, monkeypatch):
    cell = grid.all_cells()[0]

    def broken(*args, **kwargs):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(grid, "_evaluate", broken)
    with pytest.raises(RuntimeError):
        grid.run_cell(cell, print)
    assert not cell.done and not cell.result_dir.exists()


def test_missing_shared_data_is_refused_before_any_cell_starts(grid, tmp_path, monkeypatch, capsys):
    """Without the test and training sets the first cell used to fail in its child process with a traceback."""
    monkeypatch.setattr(grid, "SHARED", tmp_path / "no-shared-data")
    assert exit_status(lambda: grid.main([]), "experiments/run.py") == 2
    err = capsys.readouterr().err
    assert f"experiments/run.py: error: the experiments' data is not at {tmp_path / 'no-shared-data'}" in err
    assert "MODETUNE_SHARED_DATA" in err and "modetune data fetch all" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()  # nothing started
    assert grid.main(["--commands"]) == 0  # what needs no data still works


def test_the_runners_end_on_a_user_error_without_a_traceback(tmp_path):
    """The scripts' own entry points go through errors.exit_status, as the CLI does (status 2, one line)."""
    env = {**os.environ, "MODETUNE_SHARED_DATA": str(tmp_path / "missing"),
           "MODETUNE_EXPERIMENTS_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    long = _load("long_budget")
    todo = [c.key for c in long.all_cells() if not all(c.done(step) for step in long.MILESTONES)]
    if not todo:
        pytest.skip("every long-budget piece is finished: nothing would start")
    # a long-budget cell with a piece not finished in the repository: it would start training
    done = subprocess.run([sys.executable, "experiments/long_budget.py", "--only", todo[-1]],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("experiments/long_budget.py: error: the experiments' data is not at")
    assert "Traceback" not in done.stderr and not (tmp_path / "work").exists()
