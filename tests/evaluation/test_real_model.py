"""Real-model checks with SmolLM2-135M-Instruct (embedded model, fetched from PyPI on first use).

Run with `pytest -m slow tests/evaluation`. They show the two scoring modes on a real model: the
135M model rarely writes an LLM-Adapters label, so generation scores near zero on commonsense
tasks, while log-likelihood scoring is meaningful.
"""

from __future__ import annotations

import json

import pytest

from modetune.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scoring", ["generate", "loglikelihood"])
def test_smollm2_eval(shared_data, tmp_path, scoring):
    tasks = ["boolq", "arc_easy"] if scoring == "loglikelihood" else ["gsm8k", "boolq"]
    out = tmp_path / scoring
    args = ["eval", "--model", "smollm2-135m", "--data", str(shared_data), "--limit", "4", "--scoring", scoring]
    args += ["--output", str(out), "--no-progress", "--max-new-tokens", "48", "--task", *tasks]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == tasks
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    if scoring == "generate":
        assert all(r["generation"] for r in rows if r["task"] == "gsm8k")  # the model does answer
