"""Runs travel: hub id in adapter_config.json, a modetune model card, and loading a copied run elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from modetune.cli import main
from modetune.errors import CheckpointError
from modetune.runs import load_run
from tests.conftest import save_tiny_model_dir

REPO = "toyorg/tiny-llama"


def _hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding REPO (the layout huggingface_hub leaves after a download)."""
    sha = "1" * 40
    repo = root / f"models--{REPO.replace('/', '--')}"
    save_tiny_model_dir(repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = _hub_cache(tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def trained_run(tmp_path, hub_cache):
    out = tmp_path / "machine-a" / "run"
    code = main(["train", "--model", REPO, "--output", str(out), "--data", "synthetic:16:1", "--max-steps", "2",
                 "--batch-size", "4", "--cutoff-len", "96", "--lora-r", "4", "--save-steps", "0",
                 "--eval-split", "4", "--learning-rate", "5e-3"])  # fmt: skip
    assert code == 0
    return out


def _logits(model, tokenizer):
    ids = tokenizer("Mia has 5 apples and buys 3 more.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_run_names_its_base_by_hub_id_and_has_a_card(trained_run, hub_cache):
    adapter = json.loads((trained_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == REPO
    info = json.loads((trained_run / "run.json").read_text())
    assert info["base_model"]["hub_id"] == REPO
    assert info["base_model"]["path"].startswith(str(hub_cache))  # the local path, recorded beside it
    card = (trained_run / "README.md").read_text()
    assert card.startswith('---\nbase_model: "toyorg/tiny-llama"\nlibrary_name: peft\n')
    assert '- "modetune"' in card and "More Information Needed" not in card
    for needed in ("k (num_layers) | 3", "λ = 0.1", "router", "per-layer adapter | norm", "lora: r=4",
                   "synthetic:16:1", "steps: 2", "held-out loss", "load_run(", "arXiv:2410.13077"):  # fmt: skip
        assert needed in card, needed


def test_copied_run_loads_elsewhere_by_hub_id(trained_run, hub_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    model_a, tok_a, _ = load_run(trained_run)
    expected = _logits(model_a, tok_a)
    # "another machine": the run copied elsewhere, the original cache path gone, the hub cache somewhere else
    elsewhere = tmp_path / "machine-b" / "run"
    shutil.copytree(trained_run, elsewhere)
    shutil.rmtree(trained_run.parent)
    moved = tmp_path / "other-hf-cache"
    hub_cache.rename(moved)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(moved))
    model_b, tok_b, info = load_run(elsewhere)
    assert info["base_loaded_from"] == REPO
    assert torch.allclose(_logits(model_b, tok_b), expected, atol=1e-5)

    # no cache at all: one clear message naming the base and the override
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"cannot find the base model.*toyorg/tiny-llama.*base=SPEC.*--base"):
        load_run(elsewhere)
    assert main(["eval", "--run", str(elsewhere), "--task", "gsm8k", "--output", str(tmp_path / "e")]) == 2

    # an explicit base (any model spec) works
    model_c, tok_c, info = load_run(
        elsewhere, base=str(moved / "models--toyorg--tiny-llama" / "snapshots" / ("1" * 40))
    )
    assert torch.allclose(_logits(model_c, tok_c), expected, atol=1e-5)

    # and so does `modetune eval --run ... --base ...`, whose results land in the run's card
    snapshot = str(moved / "models--toyorg--tiny-llama" / "snapshots" / ("1" * 40))
    test = tmp_path / "gsm.json"
    test.write_text(json.dumps([{"instruction": "Mia has 5 apples and buys 3. How many?", "answer": "8"}] * 2))
    code = main(["eval", "--run", str(elsewhere), "--base", snapshot, "--task", "gsm8k", "--data", str(test),
                 "--max-new-tokens", "2", "--output", str(tmp_path / "ev"), "--no-progress"])  # fmt: skip
    assert code == 0
    assert "| gsm8k | " in (elsewhere / "README.md").read_text()


def test_eval_results_go_into_the_card(trained_run, tmp_path):
    from modetune.card import record_evaluation

    results = {"tasks": {"gsm8k": {"accuracy": 0.25, "n": 4, "ci95": [0.05, 0.7], "n_total": 1319}},
               "scoring": "generate", "created": "now"}  # fmt: skip
    record_evaluation(trained_run, results, str(tmp_path / "out"))
    card = (trained_run / "README.md").read_text()
    assert "| gsm8k | 25.0% | 4 | 5.0-70.0 | generate |" in card
    assert json.loads((trained_run / "run.json").read_text())["evaluations"][0]["tasks"]["gsm8k"]["n"] == 4


def test_embedded_base_card_and_candidates():
    from modetune.card import render_model_card
    from modetune.runs import _base_candidates

    base = {
        "spec": "smollm2-135m",
        "path": "/nowhere/x",
        "kind": "embedded",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    assert _base_candidates(base) == ["smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    card = render_model_card({"base_model": base, "mode_config": {"num_layers": 3}, "train_config": {"peft": "lora"}})
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in card and "dequantized" in card
