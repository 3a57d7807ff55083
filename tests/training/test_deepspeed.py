"""DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch` (DeepSpeed's CPU accelerator, gloo, 2 processes, tiny
model) against one process with the same global batch.

Needs `pip install 'modetune[deepspeed]'` and a C++ compiler: on CPU, DeepSpeed compiles its shared-memory
communication op (`deepspeed_shm_comm`, into ~/.cache/torch_extensions) the first time a process group starts,
which took 19 minutes on this loaded 2-core machine; later launches reuse it. Slow (about 3 minutes after that):
`pytest -m slow tests/training/test_deepspeed.py`.
Measured (2 ranks x batch 2 vs 1 process x batch 4, 6 steps, float32): per-step losses 8e-8 relative, gradient norms
3e-7, final MoDE + LoRA weights max |diff| 2.6e-6 (ZeRO-2) and 6.4e-6 (ZeRO-3); tolerances as tests/training/test_ddp.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.equivalence import LOSS_RTOL, WEIGHT_ATOL, run_weights, train_args, train_logs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="deepspeed is not installed (pip install 'modetune[deepspeed]')",
    ),
    pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed's CPU path compiles a C++ op: no c++ compiler"),
]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _launch(stage: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", f"configs/accelerate/deepspeed_zero{stage}.yaml",
           "--num_processes", "2", "--main_process_port", str(29550 + stage), "-m", "modetune", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_processes_equal_one(stage, tiny_model_dir, single, tmp_path):
    out = tmp_path / "run"
    proc = _launch(stage, train_args(tiny_model_dir, out, 2))
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    # the same global batch gives the same training
    a, b = train_logs(single), train_logs(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=LOSS_RTOL)
    wa, wb = run_weights(single), run_weights(out)
    assert wa.keys() == wb.keys()
    for name in wa:
        # under ZeRO-3 a rank holds a shard only: these are the weights gathered on save, full-sized
        assert wb[name].shape == wa[name].shape, name
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    assert proc.stdout.count("run saved in") == 1, proc.stdout
    # the training was sharded: each rank's optimizer checkpoint holds about half of the fp32 trainable weights
    trainable = json.loads((out / "run.json").read_text())["trainable_parameters"]["trainable"]
    shards = sorted((out / "checkpoint-6" / "global_step6").glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    assert len(shards) == 2
    for path in shards:
        state = torch.load(path, map_location="cpu", weights_only=False)
        optim = state["optimizer_state_dict"]
        assert int(optim["zero_stage"]) == stage
        flat = optim["single_partition_of_fp32_groups"] if stage == 2 else optim["fp32_flat_groups"]
        assert abs(sum(t.numel() for t in flat) - trainable / 2) <= 2, (path.name, trainable)
    # the run loads in one process, with the single run's logits
    from modetune.runs import load_run

    model_a, tok, _ = load_run(single)
    model_b, _, _ = load_run(out)
    ids = tok("Mia has 5 apples.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model_b(**ids).logits, model_a(**ids).logits, rtol=0, atol=1e-4)

    # a run stopped after checkpoint-4 (what a kill leaves: no checkpoint-6, no final model) resumes from
    # DeepSpeed's own checkpoint to the same final weights
    stopped = tmp_path / "stopped"
    later = {"checkpoint-6", "mode_model.safetensors", "adapter_model.safetensors", "mode_config.json"}
    shutil.copytree(out, stopped, ignore=lambda d, names: [n for n in names if Path(d) == out and n in later])
    info = json.loads((stopped / "run.json").read_text())
    info["train_config"]["output"] = str(stopped)
    (stopped / "run.json").write_text(json.dumps(info))
    assert not (stopped / "mode_model.safetensors").exists() and (stopped / "checkpoint-4" / "global_step4").is_dir()
    _launch(stage, [*train_args(tiny_model_dir, stopped, 2), "--resume"])
    resumed = run_weights(stopped)
    for name in wb:
        torch.testing.assert_close(resumed[name], wb[name], rtol=0, atol=0, msg=name)
