"""The performance suite (`benchmarks/run.py`) runs end to end on a tiny random model and writes its
JSON and markdown; the FLOP model and the report writer behave as documented."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import mode_flops
        import mode_report

        yield mode_flops, mode_report
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_tiny_quick_suite_writes_every_section(tmp_path):
    output, report = tmp_path / "results.json", tmp_path / "RESULTS.md"
    report.write_text("# Benchmarks\n\nHand-written section that must survive.\n")
    cmd = [sys.executable, str(BENCHMARKS / "run.py"), "--tiny", "--quick", "--suite", "all", "--repeats", "1",
           "--threads", "1", "--output", str(output), "--report", str(report)]  # fmt: skip
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.time() - started < 300

    results = json.loads(output.read_text())
    for section in ("meta", "train", "generate", "loglik", "memory", "targets"):
        assert section in results, section
    meta = results["meta"]
    assert meta["tiny"] and meta["quick"] and meta["versions"]["torch"] and meta["machine"]["cores"]

    train = {(r["variant"], r["seq"]): r for r in results["train"]["rows"]}
    assert {v for v, _ in train} == {"LoRA", "LoRA+MoDE(k=2)", "LoRA+MoDE(k=3)", "LoRA+MoDE(k=6)", "MoDE-only(k=3)"}
    for row in train.values():
        assert row["time_s"]["median"] > 0 and row["predicted_ratio"] > 0
        assert row["memory"]["ok"], row["memory"].get("error")
        assert row["memory"]["peak_mib"] >= row["memory"]["delta_mib"]
    only = next(r for (v, _), r in train.items() if v.startswith("MoDE-only"))
    lora = next(r for (v, _), r in train.items() if v == "LoRA")
    assert only["decoder_layers_on_backward_path"] == 0  # backward stops before the decoder layers
    assert lora["decoder_layers_on_backward_path"] == lora["decoder_layers"]

    assert {(r["model"], r["batch"]) for r in results["generate"]["rows"]} == {
        ("base", 1), ("base", 8), ("MoDE(k=3)", 1), ("MoDE(k=3)", 8)
    }  # fmt: skip
    assert all(r["memory"]["ok"] and r["tokens_per_s"] > 0 for r in results["generate"]["rows"])
    assert all(r["decode_step_s"]["median"] > 0 and r["decode_step_ratio"] > 0 for r in results["generate"]["rows"])
    assert results["meta"]["machine"]["other_cpu_use_start"] is not None
    assert "one cached decoding step" in report.read_text()
    assert [r["model"] for r in results["loglik"]["rows"]] == ["base", "MoDE(k=3)"]
    assert all(r["memory"]["ok"] for r in results["memory"]["rows"])
    assert all(f["slope_mib_per_1k_tokens"] is not None for f in results["memory"]["fits"])
    assert results["targets"] and all(t["passed"] in (True, False) for t in results["targets"])

    text = report.read_text()
    assert "Hand-written section that must survive." in text
    for heading in ("### Targets", "### 1. Training step", "### 2. Generation", "### 3. Log-likelihood",
                    "### 4. Peak memory", "FLOP prediction", "Smoke configuration"):  # fmt: skip
        assert heading in text, heading
    assert "PASS" in text or "MISS" in text


def test_report_section_is_replaced_in_place(bench_modules, tmp_path):
    _, mode_report = bench_modules
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmarks\n\nbefore\n")
    mode_report.write_report(path, "first")
    path.write_text(path.read_text() + "\nafter\n")
    mode_report.write_report(path, "second")
    text = path.read_text()
    assert "before" in text and "after" in text and "second" in text and "first" not in text
    assert text.count(mode_report.BEGIN) == 1 and text.index("before") < text.index("second") < text.index("after")


def test_flop_model_orders_the_variants(bench_modules):
    mode_flops, _ = bench_modules
    # SmolLM2-135M's shape: 30 layers, d 576, 9 heads x 64, MLP 1536, 3 KV heads, vocab 49152
    per_layer = 2 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)
    lora = 2 * 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    shape = mode_flops.ModelShape(30, 576, 49152, 576, 30 * per_layer, 30 * lora, 8)
    kw = dict(batch=8, seq=256, labelled=8 * 128)

    def total(method, **extra):
        return mode_flops.train_step_flops(shape, method, **kw, **extra)["total"]

    base = total("lora")
    ratios = [total("lora+mode", k=k) / base for k in (2, 3, 6)]
    assert ratios == sorted(ratios) and 1.0 < ratios[1] < 1.2
    # MoDE projects only the labelled half, so a single projection is cheaper than LoRA's full-width head
    assert total("lora+mode", k=3, per_layer=False) < base
    only = total("mode-only", k=3)
    assert only / base < 0.7 and total("mode-only", k=3, implemented=True) > only
