"""Faults in `modetune train`: concurrent trainings, failed starts, unwritable or full disks, kill -9 anywhere.

Every kill here is a real SIGKILL of a training process (it sends it to itself at a chosen point, so the
points are exact and the test is deterministic); `--resume` must then give bit-identical final weights.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from modetune.errors import CheckpointError
from modetune.runs import CHECKPOINT_MARKER, load_run
from modetune.training.lock import LOCK_NAME
from modetune.training.trainer import latest_complete_checkpoint
from tests.conftest import TINY_TRAIN_ARGS

ARGS = [
    *TINY_TRAIN_ARGS,
    "--lora-dropout",
    "0.1",
    "--max-steps",
    "6",
    "--save-steps",
    "2",
    "--loss-implementation",
    "chunked",  # explicit: a module-scoped fixture runs before conftest hides TRITON_INTERPRET from 'auto'
]


def train_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--output", str(out), *ARGS, *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(run / "mode_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0, msg=name)


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its content (directories as 'dir')."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(train_args(tiny_model_dir, out)) == 0
    return out


# -- two trainings, one directory -----------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from modetune.training.lock import acquire_run_lock
lock = acquire_run_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_second_training_refuses_at_once_naming_the_first_and_a_killed_one_leaves_no_stale_lock(
    tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((out / LOCK_NAME).read_text())
        before = tree_digest(tmp_path)
        started = time.perf_counter()
        code = main(train_args(tiny_model_dir, out))
        refused_in = time.perf_counter() - started
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"is in use by another training (pid {holder.pid} on host {owner['host']}" in err
        assert refused_in < 2.0, f"took {refused_in:.1f} s to refuse: it should not load data or model first"
        assert tree_digest(tmp_path) == before
    finally:
        holder.kill()  # SIGKILL: the holder never releases the lock itself
        holder.wait()
    assert (out / LOCK_NAME).exists()  # the dead holder's lock file is still there...
    assert main(train_args(tiny_model_dir, out, "--max-steps", "1")) == 0  # ...and is taken over
    assert not (out / LOCK_NAME).exists()  # released when the run ends
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow  # two fresh Python processes: about a minute on a loaded 2-core machine
def test_two_real_trainings_on_one_directory(tmp_path, tiny_model_dir):
    """The second of two `modetune train` processes on the same --output refuses, naming the first."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modetune",
            *train_args(tiny_model_dir, out, "--max-steps", "100000", "--save-steps", "0"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while not (out / "run.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first training ended before the second could start"
        second = subprocess.run(
            [sys.executable, "-m", "modetune", *train_args(tiny_model_dir, out, "--overwrite")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"is in use by another training (pid {first.pid} " in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


# -- a failed start leaves nothing behind ------------------------------------------------------------------
def _bad_jsonl(tmp_path: Path) -> str:
    path = tmp_path / "inputs" / "bad.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"prompt": "2+2?", "completion": "4"}\n{not json\n')
    return str(path)


FAILED_STARTS = {
    "malformed data": (lambda t: ["--data", _bad_jsonl(t)], "line 2"),
    "missing data file": (lambda t: ["--data", str(t / "nope.json")], "does not exist"),
    "missing eval file": (lambda t: ["--eval-data", str(t / "nope.json")], "evaluation file"),
    "unknown model": (lambda t: ["--model", "no-such-model-xyz"], "no-such-model-xyz"),
    "missing model dir": (lambda t: ["--model", str(t / "no-model")], "no-model"),
    "too many layers": (lambda t: ["--num-layers", "9"], "num_layers=9"),
    "bad scheduler": (lambda t: ["--lr-scheduler", "sawtooth"], "sawtooth"),
    "bad dtype": (lambda t: ["--dtype", "float8"], "float8"),
    "bad target modules": (lambda t: ["--target-modules", "no_such_proj"], "--target-modules"),
}


@pytest.mark.parametrize("case", sorted(FAILED_STARTS))
def test_failed_start_leaves_nothing_behind(tmp_path, tiny_model_dir, capsys, case):
    extra, needle = FAILED_STARTS[case]
    extra = extra(tmp_path)
    out = tmp_path / "new" / "deeper" / "run"  # none of these directories exists yet
    existing = tmp_path / "existing"
    existing.mkdir()
    before = tree_digest(tmp_path)
    for target in (out, existing):
        code = main(train_args(tiny_model_dir, target, *extra))
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert tree_digest(tmp_path) == before  # no new directory, nothing left in the existing empty one


def test_failed_resume_leaves_the_run_untouched(tmp_path, tiny_model_dir, straight_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = tree_digest(run)
    code = main(train_args(tiny_model_dir, run, "--resume", "--lora-r", "8"))
    err = capsys.readouterr().err
    assert code == 2 and "--resume with different settings" in err and "lora_r: was 4, now 8" in err
    code = main(train_args(tiny_model_dir, run, "--resume", "--data", str(tmp_path / "gone.json")))
    assert code == 2
    assert tree_digest(run) == before


# -- unwritable output, disk full ----------------------------------------------------------------------------
def test_unwritable_output_is_refused_before_training(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import modetune.training.lock as lock

    real_open = os.open

    def read_only_fs(path, flags, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", read_only_fs)
    out = tmp_path / "run"
    code = main(train_args(tiny_model_dir, out))
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write to {out} (Read-only file system)" in err and "Traceback" not in err
    assert not out.exists()


def test_a_full_disk_is_refused_before_training(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import shutil

    import modetune.training.recipe as recipe

    monkeypatch.setattr(recipe.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    out = tmp_path / "run"
    code = main(train_args(tiny_model_dir, out))
    err = capsys.readouterr().err
    assert code == 2 and f"not enough free space in {out}: 1 MiB free" in err and "Traceback" not in err
    assert not out.exists()


def test_disk_full_mid_checkpoint_leaves_no_valid_looking_checkpoint_and_resumes(
    tmp_path, tiny_model_dir, straight_run, capsys, monkeypatch
):
    """ENOSPC halfway through checkpoint-4's optimizer file: a clear error, checkpoint-2 intact, resume exact."""
    real_save = torch.save
    out = tmp_path / "run"

    def disk_fills_up(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
            Path(f).write_bytes(b"\0" * 100)  # what fitted before the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    code = main(train_args(tiny_model_dir, out))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"writing to {out} failed (No space left on device" in err
    assert f"the last complete checkpoint ({out / 'checkpoint-2'}) is intact" in err
    assert latest_complete_checkpoint(out) == out / "checkpoint-2"
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_run(out / "checkpoint-4")
    with pytest.raises(CheckpointError, match="did not finish"):
        load_run(out)
    load_run(out / "checkpoint-2")
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert main(train_args(tiny_model_dir, out, "--resume")) == 0
    assert_same_weights(straight_run, out)


# -- kill -9 at every kind of point, then --resume ----------------------------------------------------------
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    point, argv = sys.argv[1], sys.argv[2:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def half_then_die(write, path, *args, **kwargs):
        tmp = Path(str(path) + ".full")
        write(str(tmp), *args, **kwargs)
        data = tmp.read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # the process dies halfway through the file
        tmp.unlink()
        die()

    import safetensors.torch
    import torch
    import modetune.training.recipe as recipe
    import modetune.training.trainer as trainer

    if point == "before-first-step":
        recipe._run = lambda *a, **k: die()
    elif point == "mid-training":
        original_step = trainer.MethodTrainer.training_step
        def training_step(self, *a, **k):
            if self.state.global_step == 3:
                die()
            return original_step(self, *a, **k)
        trainer.MethodTrainer.training_step = training_step
    elif point in ("checkpoint-mode-weights", "final-mode-weights"):
        folder = "checkpoint-4" if point.startswith("checkpoint") else None
        original_save_file = safetensors.torch.save_file
        def save_file(tensors, filename, *a, **k):
            parent = Path(filename).parent.name
            if (folder and parent == folder) or (not folder and not parent.startswith("checkpoint")):
                half_then_die(lambda p, *b, **c: original_save_file(tensors, p, *b, **c), filename, *a, **k)
            return original_save_file(tensors, filename, *a, **k)
        safetensors.torch.save_file = save_file
    elif point == "checkpoint-optimizer":
        original_torch_save = torch.save
        def torch_save(obj, f, *a, **k):
            if str(f).endswith("checkpoint-4/optimizer.pt"):
                half_then_die(lambda p, *b, **c: original_torch_save(obj, p, *b, **c), f, *a, **k)
            return original_torch_save(obj, f, *a, **k)
        torch.save = torch_save
    elif point == "checkpoint-marker":
        def write_marker(folder, payload):
            if folder.name == "checkpoint-4":
                (folder / ".modetune-checkpoint-complete.json.tmp").write_text('{"global_st')
                die()
            return original_marker(folder, payload)
        original_marker = trainer.write_marker
        trainer.write_marker = write_marker
    elif point == "final-run-json":
        original_info = recipe.write_run_info
        def write_run_info(run_dir, info):
            if info.get("status") == "complete":
                die()
            return original_info(run_dir, info)
        recipe.write_run_info = write_run_info
    else:
        raise SystemExit(f"unknown point {point}")

    from modetune.cli import main
    sys.exit(main(argv))
    """
)
KILL_POINTS = [
    "before-first-step",  # run.json written, no checkpoint yet: --resume starts again from step 0
    "mid-training",  # between checkpoint-2 and checkpoint-4
    "checkpoint-mode-weights",  # halfway through checkpoint-4's MoDE weights
    "checkpoint-optimizer",  # halfway through checkpoint-4's optimizer state
    "checkpoint-marker",  # checkpoint-4 whole but its completion marker half-written
    "final-mode-weights",  # halfway through the final model's MoDE weights
    "final-run-json",  # final model written, run.json not yet 'complete'
]
# Each point costs a fresh Python process (15-25 s here); the default suite kills inside a checkpoint
# write and inside the final-model write, `pytest -m slow` adds the other five.
DEFAULT_KILL_POINTS = ("checkpoint-optimizer", "final-mode-weights")


@pytest.mark.parametrize(
    "point", [p if p in DEFAULT_KILL_POINTS else pytest.param(p, marks=pytest.mark.slow) for p in KILL_POINTS]
)
def test_kill_9_anywhere_then_resume_gives_identical_weights(tmp_path, tiny_model_dir, straight_run, point):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(driver), point, *train_args(tiny_model_dir, out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == -9, f"the training was not killed at {point}: {proc.stderr[-2000:]}"
    # whatever was on disk when it died: a checkpoint either is whole and loads, or is refused
    for folder in sorted(out.glob("checkpoint-*")):
        if (folder / CHECKPOINT_MARKER).is_file():
            load_run(folder)
        else:
            with pytest.raises(CheckpointError):
                load_run(folder)
    with pytest.raises(CheckpointError):
        load_run(out)  # the final model is never valid before run.json says 'complete'
    assert main(train_args(tiny_model_dir, out, "--resume")) == 0
    assert_same_weights(straight_run, out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no step logged twice


# -- a session ended on purpose: --stop-after-step --------------------------------------------------------
def test_stop_after_step_then_resume_gives_identical_weights(tmp_path, tiny_model_dir, straight_run, capsys):
    """Sessions ended at steps 3 and 5 (neither a --save-steps multiple) and resumed give the straight run's
    weights: the schedule is --max-steps', and each stop writes its checkpoint and logs its step."""
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, out, "--stop-after-step", "3")) == 0
    assert "stopped after step 3" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "stopped" and info["global_step"] == 3
    assert latest_complete_checkpoint(out) == out / "checkpoint-3"
    with pytest.raises(CheckpointError, match="did not finish"):
        load_run(out)  # no final model from a stopped session

    # a stop the run has already passed is refused, the run untouched
    before = tree_digest(out)
    assert main(train_args(tiny_model_dir, out, "--resume", "--stop-after-step", "3")) == 2
    assert "already at step 3" in capsys.readouterr().err
    assert tree_digest(out) == before

    assert main(train_args(tiny_model_dir, out, "--resume", "--stop-after-step", "5")) == 0
    assert latest_complete_checkpoint(out) == out / "checkpoint-5"
    assert main(train_args(tiny_model_dir, out, "--resume")) == 0
    assert_same_weights(straight_run, out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_a_stop_at_or_after_the_last_step_is_refused(tmp_path, tiny_model_dir, capsys):
    assert main(train_args(tiny_model_dir, tmp_path / "run", "--stop-after-step", "6")) == 2
    err = capsys.readouterr().err
    assert "--stop-after-step 6 is not before the last step (--max-steps 6)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
