"""`modetune pretrain`: a tiny run lowers the loss, resumes after kill -9 to the same weights, phase 2 works."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from modetune.data.corpus import build_corpus, is_heldout
from modetune.mom import AUTHORS_PRESET
from modetune.training.pretrain import (
    PretrainConfig,
    build_model,
    continued_order,
    evaluation_blocks,
    flops_per_token,
    load_tokenizer,
)
from modetune.training.run_dir import segment_start_step
from modetune.training.trainer import checkpoint_step


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """Repetitive little stories: learnable in a few dozen steps by a tiny model."""
    rng = random.Random(0)
    names, things = ["alice", "bob", "carol", "dave"], ["apples", "pears", "books", "coins"]
    docs = []
    for _ in range(400):
        a, b = rng.sample(names, 2)
        t = rng.choice(things)
        n = rng.randint(1, 9)
        docs.append(f"{a} has {n} {t}. {b} has {n} {t} too. so {a} and {b} have the same number of {t}.")
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text("\n\n".join(docs))
    return path


def _args(tok: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--output", str(out), "--tokenizer", str(tok), "--corpus", str(corpus),
        "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--block-size", "32",
        "--batch-size", "4", "--learning-rate", "0.003", "--warmup-steps", "2", "--eval-max-blocks", "4",
        *extra,
    ]  # fmt: skip


def _assert_same_weights(a_run: Path, b_run: Path) -> None:
    a, b = load_file(a_run / "model.safetensors"), load_file(b_run / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("arch", ["mom", "vanilla", "vanilla-gated"])
def test_tiny_pretraining_lowers_the_loss(tmp_path, tiny_model_dir, corpus_file, arch):
    extra = ["--num-rounds", "3", "--k-per-round", "2", "--attention-assembly", "qkv", "--load-balance-weight", "0.01"]
    extra = extra if arch == "mom" else []
    out = tmp_path / arch
    code = main(
        _args(tiny_model_dir, corpus_file, out, "--arch", arch, "--max-steps", "30", "--save-steps", "0", *extra)
    )
    assert code == 0
    losses = _losses(out)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["heldout_perplexity"] < float(torch.tensor(losses[0]).exp())
    assert (out / "model.safetensors").is_file() and (out / "training_curves.png").is_file()
    split = info["corpus"]["split"]
    assert split["train"]["documents"] > 0 and split["heldout"]["documents"] > 0
    if arch == "mom":
        assert info["model_config"]["model_type"] == "modetune_mom"
        record = next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r)
        assert "router_entropy" in record and "router/atte0" in record
    if arch == "vanilla-gated":
        assert info["model_config"]["model_type"] == "modetune_gated_llama"
        record = next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r)
        assert record["gate/attention"] == pytest.approx(0.34, abs=0.05) and "gate/ffn" in record
        plain = build_model(PretrainConfig(output="x", arch="vanilla", hidden_size=32, num_layers=2, num_heads=2,
                                           block_size=32), load_tokenizer(str(tiny_model_dir)))  # fmt: skip
        extra_flops = 2 * 2 * 2 * 32  # two gates (a 32-wide dot product each) in each of 2 layers
        assert info["forward_flops_per_token"] == flops_per_token(plain, 16) + extra_flops


def test_scalar_gates_reach_the_model_and_cost_no_flops(tmp_path, tiny_model_dir, corpus_file):
    out = tmp_path / "scaled"
    steps = ["--arch", "vanilla-gated", "--gate-mode", "scalar", "--gate-init", "0.5", "--max-steps", "2"]
    assert main(_args(tiny_model_dir, corpus_file, out, *steps, "--save-steps", "0")) == 0
    info = json.loads((out / "run.json").read_text())
    assert (info["model_config"]["gate_mode"], info["model_config"]["gate_init"]) == ("scalar", 0.5)
    record = next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r)
    assert record["gate/attention"] == pytest.approx(0.5, abs=0.01)  # one scale, moved a little by one step
    plain = build_model(PretrainConfig(output="x", arch="vanilla", hidden_size=32, num_layers=2, num_heads=2,
                                       block_size=32), load_tokenizer(str(tiny_model_dir)))  # fmt: skip
    assert info["forward_flops_per_token"] == flops_per_token(plain, 16)


def test_authors_preset_fills_the_mom_options_left_at_their_defaults(tmp_path, tiny_model_dir, corpus_file):
    out = tmp_path / "authors"
    steps = ["--arch", "mom", "--preset", "authors", "--max-steps", "2", "--save-steps", "0", "--num-rounds", "2"]
    assert main(_args(tiny_model_dir, corpus_file, out, *steps, "--router-hidden-size", "16")) == 0
    info = json.loads((out / "run.json").read_text())
    model = info["model_config"]
    expected = {**AUTHORS_PRESET, "router_hidden_size": 16}  # an option given another value keeps it
    assert {k: model[k] for k in expected} == expected and model["num_rounds"] == 2
    assert info["pretrain_config"]["preset"] == "authors" and info["pretrain_config"]["router_temperature"] == 0.2
    # the resolved values are what a resume compares: the same command resumes
    assert main([*_args(tiny_model_dir, corpus_file, out, *steps, "--router-hidden-size", "16"), "--resume"]) == 0


# runs `modetune` in a child that SIGKILLs itself right after its step-4 checkpoint is saved: a hard crash at a
# known point, where polling for the checkpoint and killing from outside raced with a fast machine finishing first
_KILLED_AFTER_STEP_4 = """
import os, signal, sys
from transformers import TrainerCallback
import modetune.training.pretrain as pretrain
from modetune.cli import main

class KillAfterStep4(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)

session_callbacks = pretrain.session_callbacks
pretrain.session_callbacks = lambda *a, **k: [*session_callbacks(*a, **k), KillAfterStep4()]
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_matches_uninterrupted(tmp_path, tiny_model_dir, corpus_file):
    steps = ["--arch", "mom", "--max-steps", "8", "--save-steps", "2", "--k-per-round", "2"]
    straight = tmp_path / "straight"
    assert main(_args(tiny_model_dir, corpus_file, straight, *steps)) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-c", _KILLED_AFTER_STEP_4, *_args(tiny_model_dir, corpus_file, killed, *steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoint-4" / "modetune-checkpoint-complete.json").exists()
    assert not (killed / "model.safetensors").exists() and not (killed / "checkpoint-6").exists()
    assert main([*_args(tiny_model_dir, corpus_file, killed, *steps), "--resume"]) == 0
    _assert_same_weights(straight, killed)
    steps_logged = [
        r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert steps_logged == list(range(1, 9))
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    assert segment_start_step(info) == checkpoint_step(info["resumed"][0]["from"]) >= 4  # `seconds` times the rest


def test_stop_after_step_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, corpus_file, capsys):
    steps = ["--max-steps", "6", "--save-steps", "4"]
    straight = tmp_path / "straight"
    assert main(_args(tiny_model_dir, corpus_file, straight, *steps)) == 0
    stopped = tmp_path / "stopped"
    assert main(_args(tiny_model_dir, corpus_file, stopped, *steps, "--stop-after-step", "3")) == 0
    assert "stopped after step 3" in capsys.readouterr().out
    info = json.loads((stopped / "run.json").read_text())
    assert info["status"] == "stopped" and (stopped / "checkpoint-3").is_dir()
    assert not (stopped / "model.safetensors").exists()
    assert main([*_args(tiny_model_dir, corpus_file, stopped, *steps), "--resume"]) == 0
    _assert_same_weights(straight, stopped)
    assert json.loads((stopped / "run.json").read_text())["status"] == "complete"


def test_phase_two_from_a_models_layers(tmp_path, tiny_model_dir, corpus_file):
    out = tmp_path / "phase2"
    code = main(_args(tiny_model_dir, corpus_file, out, "--init-from", str(tiny_model_dir), "--max-steps", "3",
                      "--save-steps", "0", "--router-init-bias", "2.0"))  # fmt: skip
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pool_init"] == "layers" and cfg["num_attention_modules"] == 4 and cfg["num_rounds"] == 4


def test_bad_options_are_one_clear_line(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert main(_args(tiny_model_dir, corpus_file, tmp_path / "x", "--arch", "vanilla", "--init-from", "y")) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(_args(tiny_model_dir, corpus_file, tmp_path / "x", "--k-per-round", "9")) == 2
    assert "k_per_round" in capsys.readouterr().err


def test_heldout_split_is_fixed_by_document(tiny_model_dir, corpus_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    a = build_corpus([str(corpus_file)], tok, 16, 0.2)
    b = build_corpus([str(corpus_file)], tok, 16, 0.2)
    assert a.stats == b.stats and a.heldout == b.heldout
    assert is_heldout("x", 0.999) and not is_heldout("x", 0.001)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corpus", "missing.txt"], "missing.txt"),
        (["--arch", "mom", "--k-per-round", "9"], "k_per_round"),
        (["--arch", "mom", "--num-rounds", "0"], "--num-rounds must be >= 1, got 0; leave it out"),
        (["--arch", "mom", "--num-ffn-modules", "-1"], "--num-ffn-modules must be >= 1"),
        (["--arch", "vanilla", "--preset", "authors"], "--preset sets MoM options; it needs --arch mom"),
        (["--arch", "mom", "--preset", "mine"], "--preset 'mine' is not known; known: authors"),
        (["--arch", "vanilla-gated", "--gate-init", "1"], "--gate-init must be in (0, 1), got 1.0"),
    ],
)
def test_a_failed_start_leaves_nothing_behind(tmp_path, tiny_model_dir, corpus_file, capsys, extra, message):
    out = tmp_path / "new" / "run"
    assert main([*_args(tiny_model_dir, corpus_file, out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # no empty output directory (nor its parent) is left


def test_resume_without_a_checkpoint_starts_again_like_train(tmp_path, tiny_model_dir, corpus_file):
    out = tmp_path / "run"
    assert main(_args(tiny_model_dir, corpus_file, out, "--max-steps", "2", "--save-steps", "0")) == 0
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 1, "loss": 9')  # torn line
    assert main(_args(tiny_model_dir, corpus_file, out, "--max-steps", "2", "--save-steps", "0", "--resume")) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed"][0]["from"] == "start"
    assert segment_start_step(info) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the torn line and the first attempt's lines are gone


def test_evaluation_blocks_are_spread_over_every_source_of_the_heldout_set():
    # 10 held-out blocks of a first source, then 10 of a second: 4 spread blocks score both, the first 4 would not
    heldout = [{"input_ids": [source, i]} for source in (0, 1) for i in range(10)]
    picked = evaluation_blocks(heldout, 4)
    assert [b["input_ids"] for b in picked] == [[0, 0], [0, 5], [1, 0], [1, 5]]
    assert evaluation_blocks(heldout, 0) == heldout and evaluation_blocks(heldout, 50) == heldout
    assert len({id(b) for b in evaluation_blocks(heldout, 19)}) == 19  # never the same block twice


def test_continued_order_is_where_the_trainers_own_order_stopped(tmp_path):
    """--data-offset: phase 1 of k blocks in the trainer's seeded order, then phase 2 reading on from block k, see
    every block once; the order is the one transformers' sampler draws (checked against its dataloader)."""
    from transformers import Trainer, TrainingArguments

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": torch.tensor([i])}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, seed=7, data_seed=3,
                             use_cpu=True, report_to=[], remove_unused_columns=False)  # fmt: skip
    trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=Blocks())
    seen = [int(i) for batch in trainer.get_train_dataloader() for i in batch["input_ids"].flatten()]
    assert seen == continued_order(40, 3, 0) and sorted(seen) == list(range(40))
    phase2 = continued_order(40, 3, 12)
    assert phase2[:28] == seen[12:] and set(seen[:12]).isdisjoint(phase2[:28])
