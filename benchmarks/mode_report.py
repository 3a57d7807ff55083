"""Markdown for `benchmarks/RESULTS.md` from the results JSON of `benchmarks/run.py`.

The generated text lives between two markers, so other sections of RESULTS.md (e.g. the measurements
behind the defaults) survive a re-run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN benchmarks/run.py: generated section, edit the script rather than this text -->"
END = "<!-- END benchmarks/run.py -->"


def write_report(path: Path, section: str) -> None:
    """Replace the generated section of `path` (or add it), keeping everything else."""
    block = f"{BEGIN}\n{section.strip()}\n{END}\n"
    if path.is_file():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            text = head + block + ("\n" + tail if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Benchmarks\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mem(mem: dict[str, Any] | None, key: str) -> str:
    if not mem or not mem.get("ok"):
        return "failed" if mem else "–"
    return _f(mem.get(key), 0)


def render_targets(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        verdict = {True: "**PASS**", False: "**MISS**", None: "not measured"}[t["passed"]]
        rows.append([t["target"], _f(t["measured"], 3), t["detail"], verdict])
    return _table(["Target", "Measured", "Limit", "Result"], rows) if rows else "(no target was measured)"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = ["## Performance benchmarks (`benchmarks/run.py`)", ""]
    if meta.get("tiny") or meta.get("quick"):
        what = "a tiny random model" if meta.get("tiny") else "shortened workloads (--quick)"
        parts += [
            f"> **Smoke configuration ({what}): these figures only show that the suite runs. Run the full "
            "command (no `--tiny`, no `--quick`) on a quiet machine for the real measurements.**",
            "",
        ]
    machine, versions = meta["machine"], meta["versions"]
    load, busy = machine.get("load_average_start"), machine.get("other_cpu_use_start")
    if busy is not None and busy > 0.25:
        parts += [
            f"> Warning: other processes kept {busy} of {machine['cores']} cores busy when the run started; "
            "the timings are noisy.",
            "",
        ]
    elif busy is None and load and machine.get("cores") and load[0] > 0.5 * machine["cores"]:  # older results
        parts += [
            f"> Warning: the 1-minute load average was {load[0]} on {machine['cores']} cores when the run started; "
            "other processes shared the CPU, so the timings are noisy.",
            "",
        ]
    commit = versions.get("git_commit", "unknown")[:12] + (
        " (uncommitted changes)" if versions.get("git_dirty") else ""
    )
    parts += [
        f"Command: `{meta['command']}`  ",
        f"Started {meta['started']}, took {meta.get('seconds', 0) / 60:.1f} min; model `{meta['model']}`; "
        f"suites: {', '.join(meta['suites'])}.  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{_f(machine.get('ram_gib'), 1)} GiB RAM, device `{machine['device']}`"
        + (f" ({machine['gpu']})" if machine.get("gpu") else "")
        + f"; load average {machine.get('load_average_start')} at start, {machine.get('load_average_end')} at end"
        + (
            f"; other processes' CPU use before the start {machine['other_cpu_use_start']} cores.  "
            if machine.get("other_cpu_use_start") is not None
            else ".  "
        ),
        f"Versions: Python {versions['python']}, torch {versions['torch']}, transformers {versions['transformers']}, "
        f"peft {versions['peft']}, modetune {versions['modetune']} (commit {commit}).",
        "",
        "### Targets",
        "",
        "Each target is a ratio of two figures measured in this run.",
        "",
        render_targets(results.get("targets", [])),
        "",
    ]
    if "train" in results:
        parts += _train(results["train"])
    if "generate" in results:
        parts += _generate(results["generate"])
    if "loglik" in results:
        parts += _loglik(results["loglik"])
    if "memory" in results:
        parts += _memory(results["memory"])
    parts += _method(results)
    return "\n".join(parts)


def _train(train: dict[str, Any]) -> list[str]:
    setup = train["setup"]
    shapes = ", ".join(f"{b} x {s}" for s, b in setup["shapes"])
    tokens = sorted({s * b for s, b in setup["shapes"]})
    same = (
        f"the longer sequences use a smaller batch so every shape holds {tokens[0]:,} tokens per step"
        if len(tokens) == 1
        else "tokens per step differ between shapes"
    )
    rows = []
    for r in train["rows"]:
        t = r["time_s"]
        mem = r.get("memory")
        rows.append(
            [
                f"{r['batch']} x {r['seq']}",
                r["variant"],
                _f(t["median"], 3),
                f"{_f(t['min'], 3)}–{_f(t['max'], 3)}",
                _f(r["tokens_per_s"], 0),
                _f(r["time_ratio"], 3),
                _f(r["predicted_ratio"], 3),
                _f(r["predicted_ratio_implemented"], 3),
                _mem(mem, "delta_mib"),
                _f(r.get("memory_delta_ratio"), 3),
                _mem(mem, "peak_mib"),
                f"{r['decoder_layers_on_backward_path']} / {r['decoder_layers']}",
                _f(r["trainable_params"]),
            ]
        )
    lora = setup["lora"]
    return [
        "### 1. Training step: time and peak memory",
        "",
        f"One step = forward + backward + {setup['optimizer']} on a fixed random batch (batch x tokens: {shapes}; "
        f"{same}, which keeps the suite short and the shapes comparable), "
        f"labels = {setup['labels']}. LoRA: r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, "
        f"{lora['target_modules']}, trained with the model's own loss (logits at every position). LoRA+MoDE wraps "
        "that same PEFT model with `MoDEConfig(num_layers=k)` (defaults: distillation every step, chunked loss); "
        "MoDE-only wraps the frozen base. "
        f"{setup['warmup_steps']} warm-up step each, then {setup['repeats']} alternating rounds; medians. "
        "Peak memory: one step in a fresh process, peak minus the resident size after loading (Δ), and the "
        "absolute peak.",
        "",
        _table(
            [
                "Shape",
                "Variant",
                "s/step",
                "min–max",
                "tokens/s",
                "time / LoRA",
                "FLOP-predicted",
                "FLOP-pred. (as implemented)",
                "peak Δ MiB",
                "Δ / LoRA",
                "peak MiB",
                "layers on backward path",
                "trainable params",
            ],
            rows,
        ),
        "",
    ]


def _generate(gen: dict[str, Any]) -> list[str]:
    rows = []
    for r in gen["rows"]:
        rows.append(
            [
                str(r["batch"]),
                r["model"],
                f"{r['prompt_tokens']} + {r['new_tokens']}",
                _f(r["time_s"]["median"], 3),
                _f(r["tokens_per_s"], 1),
                _f(r["tps_ratio"], 3),
                _f(r["predicted_ratio"], 3),
                _f(1e3 * r["decode_step_s"]["median"], 1) if r.get("decode_step_s") else "–",
                _f(r.get("decode_step_ratio"), 3),
                _mem(r.get("memory"), "delta_mib"),
                _f(r.get("memory_delta_ratio"), 3),
            ]
        )
    return [
        "### 2. Generation",
        "",
        f"`model.generate`, {gen['setup']['decoding']}, the same prompt in every row; tokens/s = batch x new "
        "tokens / seconds. MoDE = `get_mode_model(base, MoDEConfig(num_layers=3))` around the very same base model "
        "(untrained router and adapters: speed does not depend on their values). One decoding step: a single "
        "cached step (batch x 1 new token after 64 cached ones), timed alternately "
        f"{gen['setup'].get('decode_steps', '')} times; median ms and base / MoDE speed ratio, the per-token cost "
        "without the generation loop's run-to-run swings.",
        "",
        _table(
            [
                "Batch",
                "Model",
                "prompt + new tokens",
                "s (median)",
                "tokens/s",
                "MoDE / base",
                "FLOP-predicted",
                "1 step ms",
                "step MoDE / base",
                "peak Δ MiB",
                "Δ / base",
            ],
            rows,
        ),
        "",
    ]


def _loglik(ll: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["model"],
            str(r["requests"]),
            str(r["tokens"]),
            _f(r["time_s"]["median"], 3),
            _f(r["requests_per_s"], 2),
            _f(r["tokens_per_s"], 0),
            _f(r["ratio"], 3),
            _f(r["predicted_ratio"], 3),
            _f(r["mean_loglik"], 3),
        ]
        for r in ll["rows"]
    ]
    return [
        "### 3. Log-likelihood scoring",
        "",
        "`modetune.evaluation.runner.loglikelihoods` over distinct (context, continuation) pairs, batch size "
        f"{ll['setup']['batch_size']}.",
        "",
        _table(
            [
                "Model",
                "requests",
                "tokens",
                "s (median)",
                "requests/s",
                "tokens/s",
                "MoDE / base",
                "FLOP-predicted",
                "mean log-lik",
            ],
            rows,
        ),
        "",
    ]


def _memory(mem: dict[str, Any]) -> list[str]:
    setup = mem["setup"]
    seqs = list(setup["seqs"])
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for r in mem["rows"]:
        by_variant.setdefault(r["variant"], {})[r["seq"]] = r["memory"]
    fits = {f["variant"]: f for f in mem["fits"]}
    rows = []
    for variant, points in by_variant.items():
        fit = fits[variant]
        rows.append(
            [
                variant,
                *(_mem(points.get(s), "delta_mib") for s in seqs),
                _f(fit["slope_mib_per_1k_tokens"], 1),
                _f(fit["slope_ratio_vs_lora"], 3),
                _f(fit["slope_ratio_vs_k1"], 3),
            ]
        )
    return [
        "### 4. Peak memory over sequence length and k",
        "",
        f"Peak Δ MiB of one {setup['step']} at batch {setup['batch']}, each point in a fresh process. The slope is a "
        "least-squares fit of Δ over the tokens in the batch; MoDE's must be close to LoRA's (the base model trained "
        "with its own loss), not grow with k.",
        "",
        _table(
            ["Variant", *(f"Δ MiB @ {s}" for s in seqs), "slope MiB / 1k tokens", "slope / LoRA", "slope / k=1"],
            rows,
        ),
        "",
    ]


def _method(results: dict[str, Any]) -> list[str]:
    lines = [
        "### How the figures are computed",
        "",
        "* **Timing.** All configurations of a suite live in one process; after one warm-up call each they are "
        "timed in alternation (A B C A B C ...), and the tables report medians (min–max beside). Ratios divide "
        "medians of the same run.",
        "* **Memory.** Each figure comes from a new process (forked from a server that has only imported the "
        "libraries), which loads the model, reads every weight once (checkpoints are memory-mapped, so "
        "weights would otherwise page in during the step and count as its memory), then runs one step. Peak = Linux VmHWM, reset through "
        "`/proc/self/clear_refs` right after loading; Δ = peak minus the resident size at that moment, so the "
        "weights do not dilute ratios. `ru_maxrss` is stored in the JSON too, but it includes the loading "
        "transient and, on Linux, a child inherits its parent's peak across exec, so it is not used. On CUDA: "
        "`torch.cuda.max_memory_allocated` minus the allocation after loading.",
        "* **FLOP prediction** (`benchmarks/mode_flops.py`): matmuls only (2 FLOPs per multiply-add). Per token, "
        "the forward of the L decoder layers = W (every linear in them: 2·in·out, summed) + attention L·4·T·a "
        "(a = heads x head_dim, T = sequence length, no causal discount); the LM head H = 2·d·V per projected "
        "position. Backward of a frozen weight = its input gradient "
        "(1x forward); trainable LoRA weights and the router 2x; attention 2x. With N tokens, n labelled "
        "positions, R = LoRA forward per token, P = head projections per labelled position (k when the step "
        "distills, 1 otherwise):",
        "  * LoRA (HF loss, logits at every position): N·(2W + 3R + 3·L·4Ta) + 2·N·H",
        "  * LoRA + MoDE(k): N·(2W + 3R + 3·L·4Ta) + 2·n·P·H + 6·N·d·k (MoDE projects labelled positions only)",
        "  * MoDE-only(k): N·(W + L·4Ta) + n·P·H + n·(k-1)·H + 4·N·d·k: no backward through any decoder layer; "
        'only the k-1 adapted layers need the head\'s input gradient. The "as implemented" column counts what '
        "the chunked loss computes: an input gradient for all P projections.",
        "  * Generation and scoring: forward only; MoDE adds its router and hidden-space mix, 4·d·k per token.",
        "  Elementwise work (softmaxes over the vocabulary, norms, the optimizer) is not counted; on a CPU it is "
        "memory-bound, so measured ratios can exceed the prediction where MoDE adds vocabulary-sized softmaxes.",
    ]
    shape = (results.get("train") or {}).get("model_shape")
    if shape:
        lines.append(
            f"* Model shape used: L = {shape['num_layers']}, d = {shape['hidden']}, V = {shape['vocab']}, "
            f"a = {shape['attn_width']}, W = {shape['linear_flops'] / 1e6:.1f} MFLOP/token, "
            f"H = {2 * shape['hidden'] * shape['vocab'] / 1e6:.1f} MFLOP, LoRA r = {shape['lora_r']}: "
            f"R = {shape['lora_flops'] / 1e6:.2f} MFLOP/token."
        )
    lines.append("")
    return lines
