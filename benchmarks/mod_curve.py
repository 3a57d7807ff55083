#!/usr/bin/env python
"""MoDification's quality-compute curve: each way of skipping layer compute, at the same shares.

    OMP_NUM_THREADS=1 python benchmarks/mod_curve.py [--fractions 0.1 0.2 0.3 0.4] [--detail-shares 0.25] \
        [--arc-n 2376] [--speed-context 8192] [--conversion RUN[=LABEL] ...] [--only METHOD ...] \
        [--report benchmarks/RESULTS.md]
    python benchmarks/mod_curve.py --tiny                 # smoke run on a tiny random llama (seconds)

The baselines a conversion has to beat, each at the same share of the decoder layers' forward FLOPs skipped
(`skipped_compute`, counted at 1k tokens: every linear layer, plus attention's 4·T·a per token):

* `static_layers`: delete the n decoder layers with the lowest block influence, 1 - cos(x_in, x_out)
  (ShortGPT), measured on calibration text (GSM8K train), n = round(share · L);
* `static_attention`: drop the attention of the n layers whose attention block changes the residual stream least
  (1 - cos(x, x + attn(x))); its skipped share counts the attention's part of a layer only;
* `random_routing`: MoD's routing with `operator="random"` on the default routed layers (all but the first and
  last 2): each token skips each routed layer with the probability that gives the share (chance routing, the
  floor a trained router must clear);
* `influence_routing`: the conversion recipe's starting point without training: routers fitted to each token's
  layer influence (`--router-start influence`), one cut across layers (`--share-allocation global`);
* a conversion (`--conversion RUN[=LABEL]`, repeatable): a trained MoD run's own routers, one threshold per routed
  layer calibrated on the calibration text to each share, with the run's share allocation.

`--only` measures the methods named and keeps every other row of the existing results (each row records the
command that measured it).

Quality: perplexity of held-out general text (`perplexity`: the Wikipedia articles of `modetune data fetch
general-text`) and of GSM8K-test text (`perplexity_gsm8k`; chunks of --ppl-len tokens) at every share; at --detail-shares
also ARC-Easy test accuracy (log-likelihood of each choice, mean per token, first --arc-n questions) and, with
every other process paused, one prefill of --speed-context tokens (speed-up and KV reduction against the base
model). Writes benchmarks/mod_curve.json and benchmarks/figures/mod_curve.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mod_bench import (  # noqa: E402
    DATA,
    Variant,
    choice_items,
    perplexity,
    prefill_and_decode,
    task_accuracy,
    tiny_items,
    tiny_models,
)

from modetune.architectures import locate  # noqa: E402
from modetune.data.general_text import general_text_documents  # noqa: E402
from modetune.files import replace_marked_block  # noqa: E402
from modetune.mod import get_mod_model  # noqa: E402
from modetune.mod.model import calibrate_thresholds, fit_routers_to_influence  # noqa: E402
from modetune.runs import load_run  # noqa: E402

OUT = ROOT / "benchmarks" / "mod_curve.json"
FIGURE = ROOT / "benchmarks" / "figures" / "mod_curve.png"
CONTEXT = 1024  # tokens at which the compute shares are counted


# -- where the compute is -----------------------------------------------------------------------------------
def layer_flops(layer: nn.Module, config: Any, context: int = CONTEXT) -> tuple[float, float]:
    """(attention, whole layer) forward FLOPs per token of one decoder layer at `context` tokens."""

    def linear(module: nn.Module) -> int:
        return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))

    heads = config.num_attention_heads
    width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    attention = linear(layer.self_attn) + 4 * context * width
    return attention, linear(layer) + 4 * context * width


# -- block influence (ShortGPT) -----------------------------------------------------------------------------
@torch.no_grad()
def block_influence(model: nn.Module, blocks: list[list[int]]) -> tuple[list[float], list[float]]:
    """Per decoder layer: 1 - mean cos(x_in, x_out) of the whole layer, and of its attention block alone."""
    layers = locate(model).layers
    sums_layer, sums_attn, count = [0.0] * len(layers), [0.0] * len(layers), 0
    captured: dict[str, torch.Tensor] = {}

    def before(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured[f"in{i}"] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured[f"out{i}"] = output if isinstance(output, torch.Tensor) else output[0]

        return hook

    def attention(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured[f"attn{i}"] = output[0]

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles += [layer.register_forward_pre_hook(before(i), with_kwargs=True), layer.register_forward_hook(after(i)),
                    layer.self_attn.register_forward_hook(attention(i))]  # fmt: skip
    try:
        for ids in blocks:
            model(input_ids=torch.tensor([ids]), use_cache=False)
            for i in range(len(layers)):
                x = captured[f"in{i}"][0].float()
                sums_layer[i] += float((1 - torch.cosine_similarity(x, captured[f"out{i}"][0].float(), dim=-1)).sum())
                mid = x + captured[f"attn{i}"][0].float()
                sums_attn[i] += float((1 - torch.cosine_similarity(x, mid, dim=-1)).sum())
            count += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [s / count for s in sums_layer], [s / count for s in sums_attn]


@contextmanager
def removed(model: nn.Module, layers: list[int], attention_only: bool) -> Iterator[None]:
    """The listed decoder layers (or only their attention) pass the residual stream through unchanged."""
    located = locate(model).layers
    patched = []
    for i in layers:
        target = located[i].self_attn if attention_only else located[i]
        if attention_only:
            target.forward = lambda hidden_states, *a, **k: (torch.zeros_like(hidden_states), None)
        else:
            target.forward = lambda hidden_states, *a, **k: hidden_states
        patched.append(target)
    try:
        yield
    finally:
        for target in patched:
            del target.forward


# -- the curve ------------------------------------------------------------------------------------------------
def context_key(context: int) -> str:
    """How a context length names its columns: 8192 -> '8k' (the issue's `prefill_speedup_8k`), 256 -> '256'."""
    return f"{context // 1024}k" if context % 1024 == 0 else str(context)


TASK_LABELS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "openbookqa": "OpenBookQA"}


def measure(
    variant: Variant, text: dict[str, list[int]], tasks: dict[str, list], args: argparse.Namespace, detail: bool = False
) -> dict[str, float]:
    """Perplexity; with `detail`, also the tasks' accuracy and, at each --speed-contexts length, one prefill (its
    time and the KV bytes it leaves) and --decode-steps cached decoding steps (their median time)."""
    ppl, processed = perplexity(variant, text["gsm8k"], args.ppl_len, args.ppl_chunks)
    quality = {"perplexity_gsm8k": ppl, "processed": processed}
    if "general" in text:
        quality["perplexity"], quality["processed_general"] = perplexity(
            variant, text["general"], args.ppl_len, args.ppl_chunks
        )  # routing calibrated on GSM8K may skip another share of general text: recorded
    if not detail:
        return quality
    for task, items in tasks.items():
        quality[task] = task_accuracy(variant, items)
    ids = text["gsm8k"]
    for context in args.speed_contexts:
        run = prefill_and_decode(variant, (ids * (1 + context // len(ids)))[:context], args.decode_steps)
        key = context_key(context)
        quality.update({f"prefill_s_{key}": run["prefill_s"], f"decode_step_s_{key}": run["decode_step_s"],
                        f"kv_bytes_{key}": run["kv_bytes"]})  # fmt: skip
    return quality


def against_base(quality: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Speed-ups and KV reductions of a detailed measurement against the base model's, per context length."""
    ratios = {}
    for key in [k.removeprefix("prefill_s_") for k in quality if k.startswith("prefill_s_")]:
        ratios[f"prefill_speedup_{key}"] = base[f"prefill_s_{key}"] / quality[f"prefill_s_{key}"]
        ratios[f"decode_speedup_{key}"] = base[f"decode_step_s_{key}"] / quality[f"decode_step_s_{key}"]
        ratios[f"kv_reduction_{key}"] = base[f"kv_bytes_{key}"] / max(1, quality[f"kv_bytes_{key}"])
    return ratios


def curve(
    base: nn.Module,
    text: dict[str, list[int]],
    calib: list[list[int]],
    tasks: dict[str, list],
    args: argparse.Namespace,
    conversions: list[tuple[str, Any]],
    fixed: list[tuple[str, Any]] = (),
    known_base: dict[str, float] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Every method's rows at each share in `args.fractions` (with `args.only`: those methods' rows only).
    `known_base`: the base model's task accuracies already measured on the same questions (deterministic, so
    reused rather than scored again). `on_row` gets the results so far after every row (a long pass that is
    stopped keeps what it measured)."""

    def wanted(method: str) -> bool:
        return not args.only or method in args.only

    layers = locate(base).layers
    config = base.config.get_text_config()
    attn_share, layer_total = (sum(v) for v in zip(*(layer_flops(layer, config) for layer in layers), strict=True))
    attention_fraction = attn_share / layer_total
    influence, attn_influence = block_influence(base, calib)
    L = len(layers)
    detailed = set(args.detail_shares)  # shares at which the task, prefill time and KV bytes are measured too
    known_base = known_base or {}
    base_tasks = {task: items for task, items in tasks.items() if task not in known_base}
    base_quality = {**measure(Variant("base", base, None), text, base_tasks, args, detail=bool(detailed)), **known_base}
    rows = []

    def results() -> dict:
        return {
            "base_perplexity": base_quality.get("perplexity"),
            "base_perplexity_gsm8k": base_quality["perplexity_gsm8k"],
            "base": base_quality,
            "attention_share_of_layer_compute": round(attention_fraction, 4),
            "block_influence": [round(v, 5) for v in influence],
            "attention_influence": [round(v, 5) for v in attn_influence],
            "rows": rows,
        }

    def add(method: str, skipped: float, quality: dict[str, float], **extra: Any) -> None:
        quality.update(against_base(quality, base_quality))
        rows.append({"method": method, "skipped_compute": round(skipped, 4), "perplexity": None, **quality, **extra})
        print(json.dumps(rows[-1]), flush=True)
        if on_row is not None:
            on_row(results())

    mod = get_mod_model(base, operator="random")
    routed = len(mod.layer_indices)
    calib_batches = [{"input_ids": torch.tensor([ids])} for ids in calib]
    fitted = None
    if wanted("influence_routing"):  # the conversion recipe's start, no training: routers fitted to layer influence
        fitted = get_mod_model(copy.deepcopy(base), router_start="influence", share_allocation="global")
        fit_routers_to_influence(fitted, calib_batches)
    for share in args.fractions:
        if fitted is not None:
            fitted.mod_config.target_skip = share
            report = calibrate_thresholds(fitted, calib_batches)
            quality = measure(Variant("influence", fitted, {}), text, tasks, args, detail=share in detailed)
            add("influence_routing", (1 - quality["processed"]) * routed / L, quality, share=share,
                calibrated_skip=report["achieved_skip"], layer_thresholds=report["layer_thresholds"])  # fmt: skip
        if wanted("static_layers"):
            n = max(1, round(share * L))
            order = sorted(range(L), key=influence.__getitem__)[:n]
            with removed(base, order, attention_only=False):
                quality = measure(Variant("static", base, None), text, tasks, args, detail=share in detailed)
            add("static_layers", n / L, quality, share=share, layers=sorted(order))
        if wanted("static_attention"):
            n_attn = min(L, max(1, round(share / attention_fraction * L)))
            order = sorted(range(L), key=attn_influence.__getitem__)[:n_attn]
            with removed(base, order, attention_only=True):
                quality = measure(Variant("attention", base, None), text, tasks, args, detail=share in detailed)
            add("static_attention", n_attn * attention_fraction / L, quality, share=share, layers=sorted(order))
        if wanted("random_routing"):
            capacity = max(0.01, 1 - share * L / routed)
            torch.manual_seed(0)
            random_variant = Variant("random", mod, {"operator": "random", "capacity": capacity})
            quality = measure(random_variant, text, tasks, args, detail=share in detailed)
            add("random_routing", (1 - quality["processed"]) * routed / L, quality, share=share,
                capacity=round(capacity, 4))  # fmt: skip

    for label, run in conversions:  # its routers, thresholds calibrated to each share on the calibration text
        for share in args.fractions:
            run.mod_config.operator, run.mod_config.target_skip = "threshold", share
            report = calibrate_thresholds(run, calib_batches)
            quality = measure(Variant(label, run, {}), text, tasks, args, detail=share in detailed)
            add(label, (1 - quality["processed"]) * len(run.layer_indices) / L, quality, share=share,
                calibrated_skip=report["achieved_skip"], layer_thresholds=report["layer_thresholds"],
                share_allocation=run.mod_config.share_allocation)  # fmt: skip
            if args.topk:  # the same routers choosing each layer's top tokens over the whole sequence, same compute
                capacity = max(0.01, 1 - share * L / len(run.layer_indices))
                topk = Variant(f"{label}_topk", run, {"operator": "topk", "capacity": capacity})
                quality = measure(topk, text, tasks, args, detail=share in detailed)
                add(f"{label}_topk", (1 - quality["processed"]) * len(run.layer_indices) / L, quality, share=share,
                    capacity=round(capacity, 4))  # fmt: skip
    for label, run in fixed:  # skipping fixed in training (e.g. layers deleted, then healed): one row, as trained
        quality = measure(Variant(label, run, {}), text, tasks, args, detail=bool(detailed))
        add(label, (1 - quality["processed"]) * len(run.layer_indices) / L, quality, as_trained=True)
    return results()


def plot(results: dict, path: Path) -> None:
    """Quality against compute, one line per method: perplexity / base (log scale) on each text, then each task's
    accuracy with the base model's as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results["base"]
    panels = [(k, label, True) for k, label in (("perplexity", "general text (Wikipedia)"),
              ("perplexity_gsm8k", "GSM8K test")) if base.get(k)]  # fmt: skip
    panels += [(t, TASK_LABELS[t], False) for t in TASK_LABELS if base.get(t) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), squeeze=False)
    methods = sorted({r["method"] for r in results["rows"]})  # one colour and marker per method in every panel
    style = {m: (plt.cm.tab20(i % 20), "os^D"[i % 4]) for i, m in enumerate(methods)}
    for ax, (key, label, is_perplexity) in zip(axes[0], panels, strict=True):
        skipped = general_skipped if key == "perplexity" else (lambda r: r["skipped_compute"])
        for method in methods:
            rows = sorted((r for r in results["rows"] if r["method"] == method and r.get(key) is not None), key=skipped)
            values = [r[key] / base[key] if is_perplexity else r[key] for r in rows]
            color, marker = style[method]
            ax.plot([100 * skipped(r) for r in rows], values, marker=marker, linestyle="-", color=color, label=method)
        if is_perplexity:
            ax.set_yscale("log")
            ax.axhline(1.25, color="grey", linestyle=":", label="target: 1.25 x base")
            ax.set_ylabel(f"perplexity / base ({label}, log scale)")
        else:
            ax.axhline(base[key], color="black", linestyle="--", label=f"base model ({base[key]:.3f})")
            ax.set_ylabel(f"{label} accuracy ({results['task_n'][key]} questions)")
        ax.set_xlabel("share of decoder-layer compute skipped (%, at 1k tokens)"
                      + (" on this text" if key == "perplexity" else ""))  # fmt: skip
        ax.set_title(f"{results.get('model', '')}: {label}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


CURVE_START, CURVE_END = "<!-- mod-curve:start -->", "<!-- mod-curve:end -->"


def figure_path(json_path: Path) -> Path:
    """The figure beside a results file: the repository's figure for the repository's results."""
    return FIGURE if json_path == OUT else json_path.with_suffix(".png")


def general_skipped(row: dict) -> float:
    """The share of layer compute a row skips on the general text: a routed row's thresholds are calibrated on
    the calibration text and skip another share there (`processed_general`); a static row skips the same."""
    if row.get("processed_general") is None or row["processed"] >= 1:
        return row["skipped_compute"]
    return row["skipped_compute"] / (1 - row["processed"]) * (1 - row["processed_general"])


def _ratio(value: float | None, base: float | None, fmt: str = "{:.2f}x") -> str:
    return fmt.format(value / base) if value is not None and base else "-"


def render(results: dict) -> str:
    """The curve as markdown tables (benchmarks/RESULTS.md): quality at every share, speed where measured."""
    base = results["base"]
    tasks = [t for t in TASK_LABELS if base.get(t) is not None]
    contexts = sorted({k.removeprefix("prefill_s_") for k in base if k.startswith("prefill_s_")},
                      key=lambda k: int(k[:-1]) * 1024 if k.endswith("k") else int(k))  # fmt: skip
    general = base.get("perplexity")
    task_text = ", ".join(
        f"{TASK_LABELS[t]} ({results['task_n'][t]} test questions, base {base[t]:.3f})" for t in tasks
    )
    lines = [
        CURVE_START,
        f"Model {results['model']}: perplexity of held-out text, {results['ppl_chunks']} x {results['ppl_len']} tokens"
        + (f" of general text (Wikipedia articles, `modetune data fetch general-text`; base {general:.2f}) and" if general else "")
        + f" of GSM8K test (base {base['perplexity_gsm8k']:.2f})"
        + (f"; accuracy (log-likelihood of each choice) on {task_text}" if tasks else "")
        + ". The baselines and `influence_routing` are untrained; the conversions are trained runs (LoRA merged). "
        f"Attention is {100 * results['attention_share_of_layer_compute']:.0f}% of a decoder layer's compute at "
        f"{results['context_for_compute']} tokens. For routed rows the general-text column gives, in brackets, the "
        "share the thresholds (calibrated on the calibration text) skip there.",
        "",
        "| method | layer compute skipped |" + (" general-text perplexity / base |" if general else "")
        + " GSM8K perplexity / base |" + "".join(f" {TASK_LABELS[t]} |" for t in tasks),
        "|---|---|" + ("---|" if general else "") + "---|" + "---|" * len(tasks),
    ]  # fmt: skip
    rows = sorted(results["rows"], key=lambda r: (r["method"], r["skipped_compute"]))
    for row in rows:
        cells = [row["method"], f"{100 * row['skipped_compute']:.1f}%"]
        if general:
            cell = _ratio(row.get("perplexity"), general)
            if row.get("processed_general") is not None and row["processed"] < 1:  # routing: its own share there
                cell += f" (at {100 * general_skipped(row):.1f}%)"
            cells.append(cell)
        cells.append(_ratio(row["perplexity_gsm8k"], base["perplexity_gsm8k"]))
        cells += [f"{row[t]:.3f}" if row.get(t) is not None else "-" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    timed = [row for row in rows if any(k.startswith("prefill_speedup_") for k in row)]
    if contexts and timed:
        lines += [
            "",
            "Speed and memory against the base model (one prefill of each length, then the median of "
            f"{results.get('decode_steps', '?')} cached decoding steps; every other process paused): base prefill "
            + ", ".join(f"{base[f'prefill_s_{k}']:.1f} s" for k in contexts) + f" and KV {base[f'kv_bytes_{contexts[-1]}'] / 2**20:.0f} MiB "
            f"at {' / '.join(contexts)} tokens.",
            "",
            "| method | layer compute skipped |" + "".join(f" prefill @{k} |" for k in contexts)
            + "".join(f" decoding step @{k} |" for k in contexts) + "".join(f" KV @{k} |" for k in contexts),
            "|---|---|" + "---|" * 3 * len(contexts),
        ]  # fmt: skip
        for row in timed:
            cells = [row["method"], f"{100 * row['skipped_compute']:.1f}%"]
            for kind in ("prefill_speedup", "decode_speedup", "kv_reduction"):
                cells += [f"{row[f'{kind}_{k}']:.2f}x" if row.get(f"{kind}_{k}") else "-" for k in contexts]
            lines.append("| " + " | ".join(cells) + " |")
    commands: dict[str, list[str]] = {}
    for row in results["rows"]:
        for command in [*row.get("earlier_commands", []), row.get("command", results.get("command", ""))]:
            methods = commands.setdefault(command, [])
            if row["method"] not in methods:
                methods.append(row["method"])
    lines += ["", "Made by:", ""]
    lines += [f"* `{command}` ({', '.join(methods)})" for command, methods in commands.items()]
    lines += ["", f"Figure: `{FIGURE.relative_to(ROOT)}`.", CURVE_END]
    return "\n".join(lines)


def merged_run(path: str) -> Any:
    """A trained MoD run with its LoRA merged into the weights, as it would be deployed (an unmerged adapter
    would cost the conversion time that is not the method's)."""
    model = load_run(path, dtype="float32", device="cpu")[0]
    return model.merge_and_unload().eval()


def merged_rows(kept: list[dict], measured: list[dict]) -> list[dict]:
    """The measured rows, and the kept ones at a (method, share) not measured again (a kept row that does not
    record its share is replaced whenever its method is measured). A row measured again keeps the kept row's
    fields it did not measure (e.g. the tasks of an earlier pass when this pass only timed), and the earlier
    command in `earlier_commands`."""
    key = lambda row: (row["method"], row.get("share"))  # noqa: E731
    new = {key(row) for row in measured}
    methods = {row["method"] for row in measured}
    old = {key(row): row for row in kept}
    stays = [row for row in kept
             if key(row) not in new and not ("share" not in row and row["method"] in methods)]  # fmt: skip
    updated = []
    for row in measured:
        before = old.get(key(row), {})
        earlier = [*before.get("earlier_commands", []), before.get("command")]
        earlier = [c for i, c in enumerate(earlier) if c and c != row["command"] and c not in earlier[:i]]
        updated.append({**before, **row, **({"earlier_commands": earlier} if earlier else {})})
    return sorted(stays + updated, key=lambda row: (row["method"], row.get("share") or 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random llama (smoke test; writes nothing by default)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--ppl-len", type=int, default=512)
    parser.add_argument("--ppl-chunks", type=int, default=8)
    parser.add_argument("--calib-blocks", type=int, default=4, help="512-token blocks of GSM8K train for influence")
    parser.add_argument("--tasks", nargs="*", default=["arc_easy", "openbookqa"], choices=list(TASK_LABELS),
                        help="multiple-choice test sets scored at --detail-shares (LLM-Adapters files)")  # fmt: skip
    parser.add_argument("--task-n", type=int, default=0, help="first N questions of each task (0: all)")
    parser.add_argument("--topk", action="store_true",
                        help="also each conversion's routers as top-k (operator=topk) at the same compute")  # fmt: skip
    parser.add_argument("--output", default=None, help=f"default: {OUT.relative_to(ROOT)} (none with --tiny)")
    parser.add_argument("--report", help="markdown file to write the table into (between mod-curve markers)")
    parser.add_argument(
        "--conversion",
        action="append",
        default=[],
        metavar="RUN[=LABEL]",
        help="a `modetune train --method mod` run (repeatable): its rows at each share under LABEL (default "
        "'conversion'), thresholds calibrated on the calibration text with the run's share_allocation (--tiny: the "
        "tiny model with random routers)",
    )
    parser.add_argument(
        "--fixed",
        action="append",
        default=[],
        metavar="RUN=LABEL",
        help="a MoD run whose skipping was fixed in training, measured once as trained (e.g. the static-layer "
        "baseline healed with the conversion's recipe: --routed-layers ... --sink-tokens 0 --router-init-bias -30)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="METHOD",
        help="measure only these methods (the baselines, influence_routing, a conversion's LABEL) and keep the other "
        "rows of the existing --output",
    )
    parser.add_argument("--detail-shares", type=float, nargs="+", default=[],
                        help="shares (of --fractions) at which each method is also scored on --tasks and timed: at each "
                        "--speed-contexts length one prefill, the KV bytes it leaves and --decode-steps cached decoding "
                        "steps; run alone (every other process paused)")  # fmt: skip
    parser.add_argument("--speed-contexts", type=int, nargs="*", default=[1024, 4096, 8192], help="none: no timing")
    parser.add_argument("--decode-steps", type=int, default=8, help="cached decoding steps timed after each prefill")
    parser.add_argument(
        "--render-only", action="store_true", help="redraw the figure and rewrite --report from the existing JSON"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.render_only and not args.report:
        parser.error("--render-only rewrites a report: name it with --report (e.g. --report benchmarks/RESULTS.md)")
    if args.render_only:
        source = Path(args.output or OUT)
        results = json.loads(source.read_text())
        plot(results, figure_path(source))
        replace_marked_block(Path(args.report), CURVE_START, CURVE_END, render(results), if_missing="error")
        return 0
    conversions, fixed = [], []
    if args.tiny:
        base, tiny_conversion, (ids,) = tiny_models()
        text = {"gsm8k": ids, "general": ids[::-1]}
        calib, name = [ids[:64], ids[64:128]], "tiny random llama"
        tasks = {task: tiny_items(min(args.task_n or 8, 8)) for task in args.tasks}
        args.ppl_len, args.ppl_chunks = 32, 2
        conversions = [(spec.partition("=")[2] or "conversion", tiny_conversion) for spec in args.conversion]
        fixed = [(spec.partition("=")[2] or "fixed", tiny_conversion) for spec in args.fixed]
    else:
        from modetune.loading import load_model_and_tokenizer

        base, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
        test = (DATA / "gsm8k_openai" / "test.jsonl").read_text().splitlines()
        train = (DATA / "gsm8k_openai" / "train.jsonl").read_text().splitlines()
        gsm8k = "\n\n".join(f"{r['question']}\n{r['answer']}" for r in map(json.loads, test))
        general = "\n\n".join(article for _, article in general_text_documents("wikipedia"))
        text = {"gsm8k": tokenizer(gsm8k)["input_ids"], "general": tokenizer(general)["input_ids"]}
        calib_ids = tokenizer("\n\n".join(f"{r['question']}\n{r['answer']}" for r in map(json.loads, train[:400])))
        calib = [calib_ids["input_ids"][i * 512 : (i + 1) * 512] for i in range(args.calib_blocks)]
        tasks, name = {task: choice_items(tokenizer, args.task_n, task) for task in args.tasks}, args.model
        conversions = [(spec.partition("=")[2] or "conversion", merged_run(spec.partition("=")[0]))
                       for spec in args.conversion]  # fmt: skip
        fixed = [(spec.partition("=")[2] or "fixed", merged_run(spec.partition("=")[0])) for spec in args.fixed]
    base.eval()
    command = "python benchmarks/mod_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    kept = json.loads(Path(args.output or OUT).read_text()) if args.only else {}
    known_base = {task: kept["base"][task] for task, items in tasks.items()  # the same questions: the same answer
                  if task in kept.get("base", {}) and kept.get("task_n", {}).get(task) == len(items)}  # fmt: skip
    output = args.output or (None if args.tiny else str(OUT))

    def combined(measured: dict) -> dict:
        """This pass's results, merged into the kept ones with --only."""
        for row in measured["rows"]:
            row["command"] = command
        results = {"model": name, "context_for_compute": CONTEXT, "ppl_len": args.ppl_len,
                   "ppl_chunks": args.ppl_chunks, "decode_steps": args.decode_steps,
                   "task_n": {task: len(items) for task, items in tasks.items()} if args.detail_shares else {},
                   **measured}  # fmt: skip
        if args.only:  # the other rows (and their commands) stay as they were, and so do base figures not measured now
            results["rows"] = merged_rows(kept["rows"], measured["rows"])
            results["base"] = {**kept.get("base", {}), **measured["base"]}
            results["task_n"] = {**kept.get("task_n", {}), **results["task_n"]}
        return results

    def save(results: dict) -> None:
        if output:
            Path(output).write_text(json.dumps(results, indent=2) + "\n")

    measured = curve(base, text, calib, tasks, args, conversions, fixed, known_base,
                     on_row=lambda so_far: save(combined(so_far)))  # fmt: skip
    results = combined(measured)
    save(results)
    if output:
        plot(results, figure_path(Path(output)))
    if args.report:
        replace_marked_block(Path(args.report), CURVE_START, CURVE_END, render(results),
                             heading="## MoDification: the quality-compute curve\n\n")  # fmt: skip
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    return 0 if all(math.isfinite(r["perplexity_gsm8k"]) for r in measured["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
