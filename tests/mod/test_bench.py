"""The MoD benchmark (benchmarks/mod_bench.py) runs end to end on a tiny random llama and writes its sections."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_mod_bench_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("mod_bench", None)
    import mod_bench

    report, readme, output = tmp_path / "RESULTS.md", tmp_path / "README.md", tmp_path / "mod.json"
    report.write_text("# Benchmarks\n\nAn existing section that must survive.\n")
    readme.write_text(f"# x\n\n{mod_bench.TABLE_START}\nold\n{mod_bench.TABLE_END}\n\nafter\n")
    args = ["--tiny", "--lengths", "48", "96", "--all-variants-up-to", "48", "--thresholds", "0.5", "0.7",
            "--ppl-len", "32", "--ppl-chunks", "2", "--task-n", "3", "--decode-steps", "2",
            "--output", str(output), "--report", str(report), "--readme", str(readme)]  # fmt: skip
    assert mod_bench.main(args) == 0
    results = json.loads(output.read_text())
    names = set(results["quality"])
    assert {"base", "threshold p=0.5", "threshold p=0.7"} <= names and any(n.startswith("top-k") for n in names)
    rows = {(r["tokens"], r["variant"]) for r in results["latency"]}
    assert (48, "threshold p=0.7") in rows and (96, "threshold p=0.7") not in rows  # long lengths: main variants
    for r in results["latency"]:
        assert r["prefill_s"] > 0 and r["decode_step_s"] > 0 and r["kv_bytes"] > 0
        if r["variant"] != "base":
            assert r["processed"] < 1 and r["kv_reduction"] > 1  # random routers skip, and skipped tokens cost no KV
    assert len(results["targets"]) == 3
    text = report.read_text()
    assert "An existing section that must survive." in text and "## MoDification" in text and "Load average" in text
    again = readme.read_text()
    assert "\nold\n" not in again and "after" in again and "| threshold p=0.5 |" in again
    mod_bench.main(args)  # a second run replaces its section instead of appending another
    assert report.read_text().count("## MoDification") == 1


def firsts(results: dict) -> list:
    """The thresholds of each calibrated method's first share."""
    seen, out = set(), []
    for row in results["rows"]:
        if "layer_thresholds" in row and row["method"] not in seen:
            seen.add(row["method"])
            out.append(row["layer_thresholds"])
    return out


def test_mod_curve_smoke(tmp_path, monkeypatch):
    """benchmarks/mod_curve.py: every baseline at every share, shares close to those asked for, and the plot."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("mod_curve", None)
    import mod_curve

    output, report = tmp_path / "curve.json", tmp_path / "RESULTS.md"
    report.write_text("# Benchmarks\n\nkept\n")
    args = ["--tiny", "--fractions", "0.2", "0.4", "--task-n", "4", "--output", str(output), "--report", str(report),
            "--conversion", "tiny", "--topk", "--detail-shares", "0.4", "--speed-contexts", "64", "128",
            "--decode-steps", "2", "--fixed", "tiny=healed"]  # fmt: skip
    assert mod_curve.main(args) == 0
    results = json.loads(output.read_text())
    methods = [row["method"] for row in results["rows"]]
    assert (
        methods
        == ["influence_routing", "static_layers", "static_attention", "random_routing"] * 2
        + ["conversion", "conversion_topk"] * 2  # top-k with the same routers at the same compute
        + ["healed"]  # a --fixed run: one row, as trained
    )
    assert results["rows"][-1]["as_trained"] and "prefill_speedup_128" in results["rows"][-1]
    topk = [r for r in results["rows"] if r["method"] == "conversion_topk"]
    assert [round(r["skipped_compute"], 1) for r in topk] == [0.2, 0.4] and all(r["capacity"] < 1 for r in topk)
    assert len(results["block_influence"]) == 6 and 0 < results["attention_share_of_layer_compute"] < 1
    for row in results["rows"]:
        assert row["perplexity_gsm8k"] > 0 and 0 < row["skipped_compute"] < 1 and row["command"]
        if row["method"] in ("random_routing", "conversion", "influence_routing"):
            assert row["processed"] < 1
        if "prefill_speedup_128" in row:  # every length and every task, at the detail shares
            assert all(row[f"{kind}_{n}"] > 0 for kind in ("prefill_speedup", "decode_speedup") for n in (64, 128))
            assert row["kv_reduction_128"] >= 1 and row["kv_reduction_64"] >= 1
            assert 0 <= row["arc_easy"] <= 1 and 0 <= row["openbookqa"] <= 1
        if "calibrated_skip" in row:  # calibrated to the share asked for, on the calibration text, where reachable
            share = 0.2 if row["layer_thresholds"] in firsts(results) else 0.4
            reachable = len(row["layer_thresholds"]) / 6
            assert abs(row["calibrated_skip"] - min(share, reachable)) <= 0.01 + (share >= reachable) * 0.02
    timed = [row for row in results["rows"] if "prefill_speedup_128" in row]  # at the --speed-shares only
    assert sorted(row["method"] for row in timed) == sorted(set(methods))  # the --fixed row is always detailed
    assert [row["kv_reduction_128"] for row in timed if row["method"] == "static_layers"] == [6 / (6 - 2)]
    again = ["--tiny", "--fractions", "0.2", "0.4", "--tasks", "--output", str(output), "--only", "random_routing"]
    assert mod_curve.main(again) == 0  # one method measured again, the other rows kept with their commands
    rows = json.loads(output.read_text())["rows"]
    assert sorted(r["method"] for r in rows) == sorted(methods)
    assert {r["command"].endswith("random_routing") for r in rows if r["method"] == "random_routing"} == {True}
    assert {"--conversion tiny" in r["command"] for r in rows if r["method"] != "random_routing"} == {True}
    once_more = ["--tiny", "--fractions", "0.4", "--output", str(output), "--only", "static_layers"]
    assert mod_curve.main(once_more) == 0  # one share of one method measured again: the other share is kept
    rows = json.loads(output.read_text())["rows"]
    static = {r["share"]: r["command"] for r in rows if r["method"] == "static_layers"}
    assert sorted(static) == [0.2, 0.4] and static[0.4].endswith("static_layers") and "--conversion" in static[0.2]
    timing = ["--tiny", "--fractions", "0.4", "--output", str(output), "--only", "static_layers", "--tasks",
              "--detail-shares", "0.4", "--speed-contexts", "64", "--decode-steps", "1"]  # fmt: skip
    scored = []
    monkeypatch.setattr(mod_curve, "task_accuracy", lambda variant, items: scored.append(variant.name) or 0.125)
    assert mod_curve.main(timing) == 0  # a pass that only times keeps the tasks of the earlier pass
    (row,) = [r for r in json.loads(output.read_text())["rows"] if r["method"] == "static_layers" and r["share"] == 0.4]
    assert "arc_easy" in row and "prefill_speedup_64" in row and row["command"].endswith("1") and not scored
    assert len(row["earlier_commands"]) == 2 and "--conversion tiny" in row["earlier_commands"][0]
    rescore = ["--tiny", "--fractions", "0.4", "--output", str(output), "--only", "static_layers", "--task-n", "4",
               "--detail-shares", "0.4", "--speed-contexts"]  # fmt: skip
    assert mod_curve.main(rescore) == 0 and "base" not in scored  # the base's answers on the same questions reused
    assert json.loads(output.read_text())["base"]["arc_easy"] != 0.125 and "static" in scored
    assert output.with_suffix(".png").stat().st_size > 0
    text = report.read_text()
    assert "kept" in text and "| static_layers |" in text and text.count(mod_curve.CURVE_START) == 1
    assert "| prefill @128 |" in text and "| OpenBookQA |" in text
    figure = output.with_suffix(".png")
    figure.unlink()
    assert mod_curve.main(["--render-only", "--output", str(output), "--report", str(report)]) == 0
    assert figure.stat().st_size > 0  # the figure is redrawn, the report rewritten from the JSON
    with pytest.raises(SystemExit):  # argparse's message naming --report, no traceback
        mod_curve.main(["--render-only", "--output", str(output)])
    assert mod_curve.render(json.loads(output.read_text())) in report.read_text()


def test_choice_scores_in_one_padded_batch_equal_one_forward_per_choice(monkeypatch):
    """The benchmarks' task scoring batches a question's choices; a MoD model (tokens skipped) and the base model
    give the same scores as one forward per choice."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import mod_bench

    base, mod, _ = mod_bench.tiny_models()
    mod.mod_config.threshold = 0.5
    for model in (base, mod):
        for prompt, conts, _answer in mod_bench.tiny_items(3):
            conts = [conts[0], conts[1] + [7, 8], conts[2][:1]]  # different lengths: padded rows
            alone = []
            for cont in conts:
                ids = torch.tensor([prompt + cont])
                with torch.no_grad():
                    logp = model(input_ids=ids, use_cache=False).logits[0, :-1].float().log_softmax(-1)
                alone.append(float(logp.gather(1, ids[0, 1:, None])[-len(cont) :, 0].mean()))
            assert mod_bench.choice_scores(model, prompt, conts) == pytest.approx(alone, abs=1e-4)


def test_mod_curve_keeps_the_rows_measured_before_a_pass_stops(tmp_path, monkeypatch):
    """A long pass writes its results after every row, so stopping it loses only the row in progress."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("mod_curve", None)
    import mod_curve

    output = tmp_path / "curve.json"
    measure, calls = mod_curve.measure, []

    def stops_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(mod_curve, "measure", stops_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        mod_curve.main(["--tiny", "--fractions", "0.2", "--tasks", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]  # the base, then influence_routing and static_layers
    assert [r["method"] for r in rows] == ["influence_routing", "static_layers"] and all(r["command"] for r in rows)
