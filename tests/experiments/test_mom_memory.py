"""experiments/mom/memory.py --tiny: every model at two lengths, KV bytes equal to each layout's formula."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("mom_memory", ROOT / "experiments" / "mom" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mom_memory"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_tiny_smoke_run(tmp_path, capsys):
    memory = _load()
    out = tmp_path / "memory.json"
    assert memory.main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["length"]) for r in rows} == {(m, n) for m in memory.MODELS for n in (16, 48)}
    for r in rows:
        assert r["kv_bytes"] == r["kv_formula_bytes"] > 0
        assert r["prefill_seconds"] > 0 and r["decode_ms_per_token"] > 0
    kv = {(r["model"], r["length"]): r["kv_bytes"] / r["length"] for r in rows}
    tiny = memory.SIZES["tiny"]
    per_layer = 2 * tiny["hidden_size"] * 4  # K and V of all heads, float32
    assert kv["vanilla", 48] == tiny["num_hidden_layers"] * per_layer == kv["mom-qkv", 48]  # H = L rounds
    assert kv["mom-picked", 48] < kv["mom-slots", 48]
    assert "KV bytes held = the layout's formula: yes" in capsys.readouterr().out
