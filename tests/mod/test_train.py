"""`modetune train --method mod` end to end on a tiny model: run directory, per-layer metrics, resume, reload."""

from __future__ import annotations

import json

import pytest
import torch

from modetune.cli import main
from modetune.mod import MoDModel
from modetune.runs import load_run
from tests.conftest import TINY_TRAIN_ARGS

ARGS = ["--method", "mod", "--data", "synthetic:48:1", "--cutoff-len", "96", "--batch-size", "4", "--lora-r", "4",
        "--learning-rate", "5e-2", "--train-on-inputs", "--skip-first", "1", "--skip-last", "1",
        "--router-init-bias", "1.0", "--load-weight", "2.0", "--load-target", "0.0"]  # fmt: skip


def test_train_method_mod_writes_a_resumable_run(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", str(tiny_model_dir), "--output", str(out), *ARGS]
    assert main([*base, "--max-steps", "4", "--save-steps", "2"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"run.json", "metrics.jsonl", "mod_config.json", "mod_model.safetensors", "adapter_model.safetensors",
            "checkpoint-2", "checkpoint-4"} <= names  # fmt: skip
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["mod_config"]["load_weight"] == 2.0
    assert info["layer_indices"] == [1, 2]
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if "loss" in r]
    assert all({"lm_loss", "load_loss", "processed/layer1", "processed/layer2", "processed_mean"} <= set(r)
               for r in train_logs)  # fmt: skip
    assert train_logs[0]["processed_mean"] == 1.0  # step 0: every token processed
    assert train_logs[-1]["processed_mean"] < 1.0  # the load objective made routers skip

    # resume continues the same run
    assert main([*base, "--max-steps", "6", "--save-steps", "2", "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["global_step"] == 6

    # the saved run reloads onto the base model
    from transformers import AutoModelForCausalLM

    mod = MoDModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    with torch.no_grad():
        result = mod(torch.randint(3, 50, (1, 20)))
    assert result.processed_fraction.shape == (2,)

    # `modetune eval` loads a MoD run like a MoDE run (generation through the MoD cache)
    data = tmp_path / "svamp.json"
    data.write_text(json.dumps([{"instruction": "Mia has 5 apples and buys 3. How many now?", "answer": "8"}]))
    code = main(["eval", "--run", str(out), "--task", "svamp", "--data", f"svamp={data}", "--max-new-tokens", "3",
                 "--output", str(tmp_path / "eval"), "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["model"]["run_dir"] == str(out) and results["tasks"]["svamp"]["n"] == 1

    # `modetune inspect` is MoDE's instrument: a MoD run is refused with a message saying what to use
    assert main(["inspect", "--run", str(out), "--prompt", "hi", "--output", str(tmp_path / "inspect")]) == 2
    assert not (tmp_path / "inspect").exists()
    assert "is a MoDification run; `modetune inspect` looks inside MoDE runs" in capsys.readouterr().err


def test_target_skip_calibrates_per_layer_thresholds_after_training(tmp_path, tiny_model_dir, capsys):
    """`--target-skip 0.25`: the saved run skips 25% ± 2 points of the decoder layers' work on the calibration
    text, says so in run.json, and loads with its per-layer thresholds."""
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--method", "mod", "--output", str(out), *TINY_TRAIN_ARGS,
            "--max-steps", "3", "--save-steps", "0", "--skip-first", "1", "--skip-last", "1", "--target-skip", "0.25"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "run.json").read_text())["finish_training"]
    assert abs(report["achieved_skip"] - 0.25) <= 0.02 and report["calibration_tokens"] > 0
    saved = json.loads((out / "mod_config.json").read_text())
    assert saved["layer_thresholds"] == pytest.approx(report["layer_thresholds"], abs=1e-6)
    model, _, _ = load_run(out)
    assert model.mod_config.layer_thresholds == saved["layer_thresholds"]


def test_conversion_recipe_trains_at_its_operating_point_and_resumes(tmp_path, tiny_model_dir, capsys):
    """--router-start influence --target-skip 0.25 --objective distill: the routers are fitted and the thresholds
    calibrated before step 1, so every logged step skips; the loss is the KL to the base model; resume starts
    from the same thresholds."""
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--method", "mod", "--output", str(out), *TINY_TRAIN_ARGS,
            "--save-steps", "2", "--logging-steps", "1", "--skip-first", "1", "--skip-last", "1",
            "--target-skip", "0.25", "--router-start", "influence", "--objective", "distill", "--load-weight", "0"]  # fmt: skip
    assert main([*argv, "--max-steps", "2"]) == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    started = info["begin_training"]
    assert started["router_start"]["tokens"] > 0 and abs(started["calibration"]["achieved_skip"] - 0.25) <= 0.02
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if "loss" in r]
    # skipping from the first step, at the calibrated shares in every batch
    skip = 0.25 * 4 / 2  # of the 2 routed layers' tokens, for 25% of the 4 layers' work
    assert train_logs and all(abs(1 - r["processed_mean"] - skip) < 0.02 for r in train_logs)
    assert all(r["loss"] == pytest.approx(r["distill_loss"], rel=1e-3) for r in train_logs)
    assert abs(info["finish_training"]["achieved_skip"] - 0.25) <= 0.02
    assert main([*argv, "--max-steps", "4", "--resume"]) == 0, capsys.readouterr().err
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["global_step"] == 4
    assert resumed["begin_training"]["calibration"] == started["calibration"]  # the same start on resume


def test_conversion_on_plain_text_documents(tmp_path, tiny_model_dir, capsys):
    """`{"text": ...}` records (general text) train the conversion: the documents are cut into cutoff-length
    windows, learnt whole, and the thresholds are calibrated on the held-out documents' windows."""
    words = ["the", "a", "house", "river", "walked", "quietly", "under", "over", "morning", "letter", "sister", "long"]
    gen = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (120,), generator=gen)) for _ in range(12)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"title": f"doc {i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--method", "mod", "--output", str(out), "--data", str(data),
            "--cutoff-len", "64", "--batch-size", "4", "--lora-r", "4", "--learning-rate", "5e-3", "--max-steps", "2",
            "--save-steps", "0", "--eval-split", "4", "--skip-first", "1", "--skip-last", "1", "--target-skip", "0.25",
            "--objective", "distill", "--load-weight", "0"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["num_train_examples"] > len(docs)  # windows, not documents
    assert abs(info["finish_training"]["achieved_skip"] - 0.25) <= 0.02
