"""DDP through torchrun and accelerate launch (CPU, gloo, 2 processes, tiny model) against one process.

Slow (each launch starts two fresh Python processes: about a minute each on a loaded 2-core machine; the
module takes 5-8 minutes): `pytest -m slow tests/training/test_ddp.py`.
Measured tolerance (2 ranks x batch 2 vs 1 process x batch 4, 6 steps, float32): per-step losses and gradient
norms agree to ~1e-7 relative; final MoDE + LoRA weights to max |diff| 2.6e-6 (per-rank padding to a shorter
length and the gloo all-reduce change the summation order, and Adam amplifies those rounding differences).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.equivalence import LOSS_RTOL, WEIGHT_ATOL, run_weights, train_args, train_logs

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _launch(launcher: str, args: list[str], **kwargs) -> subprocess.Popen:
    if launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531", "-m", "modetune", *args]
    else:
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29532",
               "-m", "modetune", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one(launcher, tiny_model_dir, single, tmp_path):
    out = tmp_path / "run"
    proc = _launch(launcher, train_args(tiny_model_dir, out, 2))
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    # the same global batch gives the same training
    a, b = train_logs(single), train_logs(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # each step logged once (rank 0 only)
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=LOSS_RTOL)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    wa, wb = run_weights(single), run_weights(out)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    # rank 0 alone speaks and writes
    assert stdout.count("done:") == 1 and stdout.count("run saved in") == 1, stdout
    assert stderr.count("SFT tokenization") == 1 and stderr.count("Loading weights: 100%") == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    # the 2-process run loads in one process, with the single run's logits
    from modetune.runs import load_run

    model_a, tok, _ = load_run(single)
    model_b, _, _ = load_run(out)
    ids = tok("Mia has 5 apples.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model_b(**ids).logits, model_a(**ids).logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(model_b(**ids).logits, load_run(out)[0](**ids).logits, rtol=0, atol=0)


def test_resume_after_kill_9_of_one_rank(tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    proc = _launch("torchrun", train_args(tiny_model_dir, straight, 2))
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]

    killed = tmp_path / "killed"
    proc = _launch("torchrun", train_args(tiny_model_dir, killed, 2))
    marker = killed / "checkpoint-4" / "modetune-checkpoint-complete.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert marker.exists() and len(workers) == 2, "the run never reached checkpoint-4 with two workers"
    os.kill(int(workers[1]), signal.SIGKILL)  # one rank dies; torchrun stops the other
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (killed / "mode_model.safetensors").exists(), "killed too late to test resuming"
    proc = _launch("torchrun", train_args(tiny_model_dir, killed, 2, "--resume"))
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    a, b = run_weights(straight), run_weights(killed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
