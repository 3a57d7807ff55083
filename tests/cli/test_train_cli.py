"""`modetune train` end to end on a tiny random model: run directory, metrics, resume after kill -9, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from modetune.runs import load_run
from tests.conftest import TINY_TRAIN_ARGS as BASE_ARGS


def _train(tmp_path: Path, model_dir: Path, *extra: str, out: str = "run") -> tuple[int, Path]:
    out_dir = tmp_path / out
    code = main(["train", "--model", str(model_dir), "--output", str(out_dir), *BASE_ARGS, *extra])
    return code, out_dir


def test_train_writes_a_complete_run(tmp_path, tiny_model_dir, capsys):
    code, run = _train(
        tmp_path, tiny_model_dir, "--max-steps", "4", "--save-steps", "2", "--eval-split", "8", "--eval-steps", "2"
    )
    assert code == 0
    names = {p.name for p in run.iterdir()}
    assert {
        "run.json",
        "metrics.jsonl",
        "mode_config.json",
        "mode_model.safetensors",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "training_curves.png",
        "checkpoint-2",
        "checkpoint-4",
    } <= names
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["global_step"] == 4
    # 'auto' resolved: Liger's kernels need CUDA (and liger-kernel installed)
    assert info["loss_implementation"] in (("chunked", "liger") if torch.cuda.is_available() else ("chunked",))
    assert info["command"][:2] == ["modetune", "train"] or info["command"][0] == "modetune"
    assert info["mode_config"]["num_layers"] == 3 and info["train_config"]["peft"] == "lora"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in records if "loss" in r]
    assert len(train_logs) == 4
    for key in (
        "ce_ensemble",
        "ce/layer1",
        "ce/layer3",
        "distill/layer1",
        "distill/layer2",
        "router/layer3",
        "router_entropy",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
    ):
        assert key in train_logs[0], key
    assert any("eval_loss" in r for r in records)
    # the run loads back with identical outputs
    model, tokenizer, loaded_info = load_run(run)
    assert loaded_info["run_dir"] == str(run)
    ids = tokenizer("Mia has 5 apples.", return_tensors="pt")
    with torch.no_grad():
        a = model(**ids).logits
    model2, _, _ = load_run(run / "checkpoint-4")
    with torch.no_grad():
        torch.testing.assert_close(model2(**ids).logits, a, rtol=0, atol=0)
    assert "run saved in" in capsys.readouterr().out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(run / "mode_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


def test_distill_labels_trains_each_late_layer_on_the_labels(tmp_path, tiny_model_dir):
    """--distill labels from the command line: the logged student terms are those layers' own cross-entropies."""
    code, run = _train(tmp_path, tiny_model_dir, "--max-steps", "2", "--save-steps", "0", "--distill", "labels")
    assert code == 0
    assert json.loads((run / "mode_config.json").read_text())["distill"] == "labels"
    logs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    for r in logs:
        for layer in (1, 2):
            assert r[f"distill/layer{layer}"] == pytest.approx(r[f"ce/layer{layer}"], rel=1e-5)


def test_mode_only_and_dora(tmp_path, tiny_model_dir):
    code, run = _train(
        tmp_path, tiny_model_dir, "--max-steps", "2", "--save-steps", "0", "--peft", "none", out="mode-only"
    )
    assert code == 0 and not (run / "adapter_model.safetensors").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["trainable_parameters"]["peft"] == 0 and info["trainable_parameters"]["mode"] > 0
    code, run = _train(
        tmp_path,
        tiny_model_dir,
        "--max-steps",
        "2",
        "--save-steps",
        "0",
        "--peft",
        "dora",
        "--num-layers",
        "2",
        out="dora",
    )
    assert code == 0 and json.loads((run / "adapter_config.json").read_text())["use_dora"] is True


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--data", "/nonexistent/train.json"], "/nonexistent/train.json does not exist"),
        (["--num-layers", "9"], "num_layers=9 is larger than the model's 4 decoder layers"),
        (["--distill", "mse"], "distill='mse' is not supported"),
        (["--peft", "prefix"], "peft='prefix' is not supported"),
        (["--resume"], "is not a run directory"),
        (["--data", "synthetic:abc"], "N must be a whole number"),
        (["--router-lr-scale", "0"], "router_lr_scale=0.0 must be positive"),
        pytest.param(
            ["--loss-implementation", "liger"],
            "loss_implementation='liger' cannot be used",  # no CUDA here (or liger-kernel not installed)
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="Liger runs on CUDA"),
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, tiny_model_dir, capsys, extra, needle):
    code, _ = _train(tmp_path, tiny_model_dir, "--max-steps", "1", *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_bad_training_file_names_file_and_line(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "2+2?", "completion": "4"}\nnot json\n')
    code, _ = _train(tmp_path, tiny_model_dir, "--max-steps", "1", "--data", str(bad))
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl" in err and "line 2" in err


def test_existing_output_is_not_overwritten(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _ = _train(tmp_path, tiny_model_dir, "--max-steps", "1")
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, capsys):
    code, _run = _train(
        tmp_path,
        tiny_model_dir,
        "--max-steps",
        "6",
        "--save-steps",
        "1",
        "--learning-rate",
        "1e30",
        "--max-grad-norm",
        "0",
    )
    err = capsys.readouterr().err
    assert code == 2 and "the loss became" in err and "Last good checkpoint" in err
    checkpoint = err.split("Last good checkpoint: ")[1].split(".")[0]
    assert (Path(checkpoint) / "modetune-checkpoint-complete.json").exists() or checkpoint == "none yet"


def test_a_trained_run_is_evaluated_compared_and_checked_for_contamination(tmp_path, tiny_model_dir, capsys):
    """train -> eval --run (LoRA + MoDE run dir) -> compare; the run's own training file is flagged."""
    from modetune.data import write_problems

    data = write_problems(tmp_path / "problems.json", 12, seed=3, difficulty=1, split="test")
    code, run = _train(tmp_path, tiny_model_dir, "--max-steps", "2", "--save-steps", "0", "--data", str(data))
    assert code == 0
    outs = []
    for name, source in (("base", ["--model", str(tiny_model_dir)]), ("mode", ["--run", str(run)])):
        out = tmp_path / f"eval-{name}"
        code = main(
            [
                "eval",
                *source,
                "--task",
                "gsm8k",
                "--data",
                str(data),
                "--limit",
                "6",
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
        outs.append(out)
    results = json.loads((outs[1] / "results.json").read_text())
    assert results["tasks"]["gsm8k"]["n"] == 6
    assert results["contamination"]["n_overlap"] == 6
    rows = [json.loads(line) for line in (outs[1] / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"task", "generation", "prediction", "gold", "correct"} <= rows[0].keys()
    assert main(["compare", str(outs[0]), str(outs[1])]) == 0


def test_a_normal_run_shows_no_deprecation_warnings(tmp_path, tiny_model_dir, caplog):
    """Neither Python warnings nor transformers' logged deprecations from modetune's own calls."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _ = _train(tmp_path, tiny_model_dir, "--max-steps", "2", "--save-steps", "1")
    assert code == 0
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    deprecations += [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert not deprecations, deprecations


@pytest.mark.parametrize("local_rank,printed", [("0", True), ("1", False)])
def test_a_user_error_is_printed_once_per_node(tmp_path, tiny_model_dir, capsys, monkeypatch, local_rank, printed):
    """Every rank of a launcher validates the same inputs: only LOCAL_RANK 0 says what is wrong."""
    from modetune.cli import main

    monkeypatch.setenv("LOCAL_RANK", local_rank)
    code, _ = _train(tmp_path, tiny_model_dir, "--max-steps", "1", "--data", "/nonexistent/train.json")
    assert code == 2 and ("does not exist" in capsys.readouterr().err) is printed
    with pytest.raises(SystemExit) as exit_info:  # a bad option (argparse) likewise
        main(["train", "--model", str(tiny_model_dir), "--no-such-option"])
    assert exit_info.value.code == 2 and ("unrecognized arguments" in capsys.readouterr().err) is printed
