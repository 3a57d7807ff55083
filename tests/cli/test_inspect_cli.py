"""`modetune inspect` end to end on a tiny model and a tiny run; bad input is refused before anything loads."""

from __future__ import annotations

import json

import pytest

from modetune.cli import main

FILES = {"lens.json", "lens.csv", "lens.md", "lens.png", "routing.png", "routing_by_class.png", "routing.html"}


def test_inspect_a_base_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "inspect"
    code = main(
        [
            "inspect",
            "--model",
            str(tiny_model_dir),
            "--data",
            "synthetic:4:1",
            "--cutoff-len",
            "96",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= FILES
    report = json.loads((out / "lens.json").read_text())
    res = report["results"]["model"]
    assert res["late_layers"] == [1, 2, 3] and res["tokens"] > 0
    # untrained 'norm' adapters are copies of the final norm: through them, each late layer is its plain lens
    for layer in res["late_layers"]:
        row = res["layers"][layer]
        assert abs(row["adapter_ce"] - row["lens_ce"]) < 1e-5
    printed = capsys.readouterr().out
    assert "routing.html" in printed and "lens.csv" in printed


def test_inspect_a_run_compares_it_to_its_base(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--output",
            str(run),
            "--data",
            "synthetic:16:1",
            "--cutoff-len",
            "96",
            "--batch-size",
            "4",
            "--lora-r",
            "4",
            "--learning-rate",
            "5e-3",
            "--max-steps",
            "3",
            "--save-steps",
            "0",
            "--layer-metrics-every",
            "1",
            "--router-init",
            "uniform",
        ]
    )
    assert code == 0
    out = tmp_path / "inspect"
    data = tmp_path / "held_out.json"
    from modetune.data import generate_problems, write_examples

    write_examples(generate_problems(3, seed=1, split="test"), data)
    code = main(["inspect", "--run", str(run), "--data", str(data), "--cutoff-len", "96", "--output", str(out)])
    assert code == 0
    assert FILES | {"training_curves.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "lens.json").read_text())["results"]
    assert set(results) == {"base", "run"}
    assert results["base"]["tokens"] == results["run"]["tokens"]
    # the "before" columns start where the run's training started (here a uniform router over k = 3)
    assert all(w == pytest.approx(1 / 3) for w in results["base"]["router"]["mean"].values())
    # training moved the run away from its base
    assert results["run"]["ensemble"]["ce"] != pytest.approx(results["base"]["ensemble"]["ce"], abs=1e-4)
    header = (out / "lens.csv").read_text().splitlines()[0]
    assert "base_lens_ce" in header and "run_adapter_ce" in header
    # and lens.md says how far the router's gate moved from its start (W_g = 0)
    assert results["base"]["router"]["parameters"]["weight_max_abs"] == 0
    assert results["run"]["router"]["parameters"]["weight_max_abs"] > 0
    assert (out / "lens.md").read_text().count("- router gate (W_g starts at 0): max |W_g| ") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.json"], "does not exist"),
        (["--data", "synthetic:4", "--limit", "0"], "--limit 0 is too small"),
        (["--prompt", "  "], "--prompt is empty"),
        (["--data", "synthetic:x"], "N must be an integer"),
    ],
)
def test_bad_input_is_refused_before_loading(tmp_path, capsys, args, message):
    # the model does not exist either: the data/option error must come first, from the checks, not from loading
    code = main(["inspect", "--model", str(tmp_path / "no-model"), *args, "--output", str(tmp_path / "o")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_run_directory(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    code = main(["inspect", "--run", str(tmp_path / "notarun"), "--prompt", "hi", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "run.json" in capsys.readouterr().err
