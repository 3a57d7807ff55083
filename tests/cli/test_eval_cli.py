"""`modetune eval` through the real command line (in-process), on a tiny local model and a MoDE run."""

from __future__ import annotations

import json

import pytest

from modetune.cli import main
from tests.evaluation.conftest import mode_run_dir, tiny_tokenizer, write_json  # noqa: F401  (fixtures)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared(request):
    from tests.conftest import shared_data_dir

    path = shared_data_dir()
    if path is None or not (path / "boolq" / "test.json").is_file():
        pytest.skip("shared data directory not found (set MODETUNE_SHARED_DATA)")
    return path


def test_eval_model_generate_and_loglikelihood(tiny_model_dir, shared, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(
        ["eval", "--model", str(tiny_model_dir), "--task", "gsm8k", "--task", "boolq,piqa", "--data", str(shared),
         "--limit", "2", "--max-new-tokens", "3", "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["gsm8k", "boolq", "piqa"]
    assert all(r["n"] == 2 for r in results["tasks"].values())
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    printed = capsys.readouterr()
    assert "average" in printed.out and "gsm8k" in printed.out

    out_ll = tmp_path / "ll"
    code = main(
        ["eval", "--model", str(tiny_model_dir), "--task", "boolq", "piqa", "--data", str(shared),
         "--limit", "2", "--scoring", "loglikelihood", "--ll-style", "text", "--output", str(out_ll), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out_ll / "results.json").read_text())
    assert results["scoring"] == "loglikelihood"
    assert results["settings"]["loglikelihood"] == {"style": "text", "norm": "char"}

    # the two outputs pair up question by question
    assert main(["compare", str(out), str(out_ll), "--bootstrap", "200"]) == 0
    assert "boolq" in capsys.readouterr().out


def test_eval_run_with_contamination_warning(mode_run_dir, tmp_path, capsys):  # noqa: F811  (fixture)
    data = write_json(
        tmp_path / "svamp.json",
        [
            {"instruction": "Mia has 5 apples. She buys 3 more. How many apples does Mia have now?", "answer": "8"},
            {"instruction": "A box holds 3 pens. How many pens are in 2 boxes?", "answer": "6"},
        ],
    )
    out = tmp_path / "out"
    code = main(
        ["eval", "--run", str(mode_run_dir), "--task", "svamp", "--data", f"svamp={data}",
         "--max-new-tokens", "2", "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["run_dir"] == str(mode_run_dir)
    assert results["contamination"]["n_overlap"] == 1
    assert "appear verbatim in the training data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "gsm9k"], "unknown task 'gsm9k'"),
        (["--task", "gsm8k", "--data", "/nonexistent/gsm8k.json"], "does not exist"),
        (["--task", "gsm8k", "--scoring", "loglikelihood"], "multiple-choice"),
        (["--task", "gsm8k", "--limit", "0"], "--limit"),
    ],
)
def test_eval_bad_input_exits_2(tiny_model_dir, shared, tmp_path, capsys, extra, message):
    args = ["eval", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"), *extra]
    if "--data" not in extra:
        args += ["--data", str(shared)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_record_exits_2(tiny_model_dir, tmp_path, capsys):
    bad = write_json(tmp_path / "bad.json", [{"instruction": "q", "answer": "maybe"}])
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--task",
        "boolq",
        "--data",
        str(bad),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert "not one of true/false" in capsys.readouterr().err


@pytest.mark.parametrize("which", [[], ["--model", "a", "--run", "b"]])
def test_exactly_one_of_model_or_run(tmp_path, capsys, which):
    assert main(["eval", "--task", "gsm8k", "--output", str(tmp_path / "o"), *which]) == 2
    assert "pass exactly one of --model MODEL or --run RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dora_cache_is_on_unless_no_dora_cache(tiny_model_dir, shared, tmp_path, monkeypatch):
    import contextlib

    import modetune.evaluation.pipeline as pipeline

    seen = []

    @contextlib.contextmanager
    def recording(model, enabled=True):
        seen.append(enabled)
        yield

    monkeypatch.setattr(pipeline, "dora_caching", recording)
    args = ["eval", "--model", str(tiny_model_dir), "--task", "gsm8k", "--data", str(shared), "--limit", "1",
            "--max-new-tokens", "1", "--no-progress"]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b"), "--no-dora-cache"]) == 0
    assert seen == [True, False]
