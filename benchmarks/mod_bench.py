#!/usr/bin/env python
"""MoDification benchmark: what skipping tokens saves (prefill, decoding, KV memory) and what it costs (quality).

For each context length (default 1k, 4k, 8k tokens of held-out text) every variant is measured in turn,
round-robin (base, MoD p=..., ..., top-k, then again), so a background process slows them alike:

  prefill_s      one forward over the prompt, filling the KV cache (logits for the last position only)
  decode_step_s  median time of one cached greedy decoding step after that prefill
  kv_bytes       bytes held by all keys and values after the prefill (MoD: routed layers hold only processed
                 tokens); exact, not timed
  processed      fraction of tokens each routed layer processed in the prefill (mean over routed layers);
                 skipped_layer_compute = (1 - processed) * routed layers / all layers

Quality on held-out text (perplexity over --ppl-chunks chunks of --ppl-len tokens) and on one task
(ARC-Easy test, log-likelihood of each choice, mean per token, first --task-n items).

  python benchmarks/mod_bench.py --run-threshold RUN [--run-topk RUN] --thresholds 0.3 0.5 0.7 \
      --report benchmarks/RESULTS.md --readme README.md
  python benchmarks/mod_bench.py --tiny            # smoke run on a tiny random llama (seconds)

The top-k variant uses --run-topk's routers (trained with operator=topk); without it, the threshold run's
routers with operator=topk at the capacity that matches the main threshold's processed fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.files import replace_marked_block
from modetune.mod.routing import kv_bytes

ROOT = Path(__file__).resolve().parents[1]
SECTION_START, SECTION_END = "<!-- mod-bench:start -->", "<!-- mod-bench:end -->"
TABLE_START, TABLE_END = "<!-- mod-table:start -->", "<!-- mod-table:end -->"
DATA = ROOT.parent / "shared" / "data"


@dataclass
class Variant:
    name: str
    model: Any  # a *ForCausalLM (base) or a MoDModel
    settings: dict[str, Any] = field(default_factory=dict)  # MoDConfig fields applied before each use

    @property
    def is_mod(self) -> bool:
        return self.settings is not None and hasattr(self.model, "mod_config")

    def activate(self) -> None:
        if self.is_mod:
            for key, value in self.settings.items():
                setattr(self.model.mod_config, key, value)


# -- models -----------------------------------------------------------------------------------------------
def tiny_models(seed: int = 0) -> tuple[Any, Any, list[list[int]]]:
    """A tiny random llama, a MoD copy with random routers, and random 'text' (token ids)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from modetune.mod import MoDConfig, get_mod_model

    config = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=4096)  # fmt: skip
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config).eval()
    copy = LlamaForCausalLM(config).eval()
    copy.load_state_dict(base.state_dict())
    mod = get_mod_model(copy, MoDConfig(skip_first=1, skip_last=1)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in mod.routers:
            router.score.weight.copy_(torch.randn(router.score.weight.shape, generator=gen))
    text = torch.randint(3, 96, (20000,), generator=gen).tolist()
    return base, mod, [text]


def load_run(run: str, spec: str, dtype: str) -> Any:
    from modetune.loading import load_model_and_tokenizer
    from modetune.mod import MoDModel

    model, _ = load_model_and_tokenizer(spec, dtype=dtype)
    mod = MoDModel.from_pretrained(model, run)
    return mod.merge_and_unload().eval()  # LoRA merged: inference pays for no adapter


# -- data -------------------------------------------------------------------------------------------------
def heldout_ids(tokenizer: Any) -> list[int]:
    """GSM8K test questions and solutions, concatenated (held out: the conversion trains on GSM8K train)."""
    lines = (DATA / "gsm8k_openai" / "test.jsonl").read_text().splitlines()
    text = "\n\n".join(f"{r['question']}\n{r['answer']}" for r in map(json.loads, lines))
    return tokenizer(text)["input_ids"]


def choice_items(tokenizer: Any, n: int, task: str = "arc_easy") -> list[tuple[list[int], list[list[int]], int]]:
    """The first `n` test questions (0: all) of an LLM-Adapters multiple-choice set with "Answer1: ..." choices
    (arc_easy, arc_challenge, openbookqa) as (prompt ids, choice ids, gold index): "Question: ...\nAnswer:" then
    " choice", as lm-evaluation-harness scores ARC."""
    import re

    items = []
    records = json.loads((DATA / task / "test.json").read_text())
    for record in records[:n] if n else records:
        text = record["instruction"].split("question: ", 1)[1].split("\n\nAnswer format")[0]
        question, _, choices = text.partition("\n\nAnswer1:")
        options = [c.strip() for c in re.split(r"\s*Answer\d+:\s*", "Answer1:" + choices) if c.strip()]
        prompt = tokenizer(f"Question: {question.strip()}\nAnswer:")["input_ids"]
        conts = [tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in options]
        items.append((prompt, conts, int(record["answer"].replace("answer", "")) - 1))
    return items


def tiny_items(n: int) -> list[tuple[list[int], list[list[int]], int]]:
    import random

    rng = random.Random(0)
    return [([rng.randrange(3, 96) for _ in range(12)], [[rng.randrange(3, 96) for _ in range(3)] for _ in range(4)], 0)
            for _ in range(n)]  # fmt: skip


# -- measurements -----------------------------------------------------------------------------------------
def prefill_and_decode(variant: Variant, ids: list[int], steps: int) -> dict[str, Any]:
    import torch
    from transformers import DynamicCache

    from modetune.mod import MoDCache

    variant.activate()
    x = torch.tensor([ids])
    cache = MoDCache() if variant.is_mod else DynamicCache()
    with torch.no_grad():
        start = time.perf_counter()
        out = variant.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        processed = float(out.processed_fraction.mean()) if variant.is_mod else 1.0
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            out = variant.model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - start)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return {"prefill_s": prefill, "decode_step_s": statistics.median(times), "kv_bytes": kv_bytes(cache),
            "processed": processed}  # fmt: skip


def perplexity(variant: Variant, text: list[int], length: int, chunks: int) -> tuple[float, float]:
    """(perplexity, mean processed fraction) over `chunks` consecutive chunks of `length` tokens."""
    import math

    import torch

    variant.activate()
    losses, processed = [], []
    with torch.no_grad():
        for i in range(chunks):
            x = torch.tensor([text[i * length : (i + 1) * length]])
            out = variant.model(input_ids=x, labels=x, use_cache=False)
            losses.append(float(out.lm_loss if variant.is_mod else out.loss))
            processed.append(float(out.processed_fraction.mean()) if variant.is_mod else 1.0)
    return math.exp(sum(losses) / len(losses)), sum(processed) / len(processed)


def choice_scores(model: Any, prompt: list[int], conts: list[list[int]]) -> list[float]:
    """Mean per-token log-likelihood of each continuation after `prompt`, the choices run as one right-padded
    batch."""
    import torch

    rows = [prompt + cont for cont in conts]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float().log_softmax(-1)
    picked = logp.gather(2, ids[:, 1:, None])[..., 0]
    return [float(picked[i, len(prompt) - 1 : len(row) - 1].mean()) for i, row in enumerate(rows)]


def task_accuracy(variant: Variant, items: list[tuple[list[int], list[list[int]], int]]) -> float:
    """Share of items whose answer has the highest mean per-token log-likelihood (`choice_scores`)."""
    variant.activate()
    correct = 0
    for prompt, conts, answer in items:
        scores = choice_scores(variant.model, prompt, conts)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == answer)
    return correct / len(items)


# -- report -----------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> tuple[str, str]:
    """(RESULTS.md section, README table)."""
    meta, rows, quality = results["meta"], results["latency"], results["quality"]
    lines = [SECTION_START, "## MoDification (modetune.mod): skipping tokens per layer", ""]
    own = meta["threads"]  # the benchmark's own share of the load average
    busy = ("the machine was **not idle** (other processes ran throughout)"
            if min(meta["load_start"][0], meta["load_end"][0]) > own + 0.5 else "the machine was otherwise idle")  # fmt: skip
    lines.append(
        f"Model {meta['model']}, {meta['threads']} thread(s), {meta['dtype']}, torch {meta['torch']}, transformers "
        f"{meta['transformers']}. Load average at start/end: {meta['load_start']} / {meta['load_end']} on "
        f"{meta['cores']} cores: {busy}; variants were measured round-robin per length so background load "
        f"affects them alike. Command: `{meta['command']}`."
    )
    if meta.get("note"):
        lines += ["", meta["note"]]
    lines += ["", "Quality (held-out GSM8K-test perplexity, "
              f"{meta['ppl_chunks']} x {meta['ppl_len']} tokens; ARC-Easy accuracy, first {meta['task_n']} items):", "",
              "| variant | processed | layer compute skipped | perplexity | rel. ppl | ARC-Easy acc |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    base_ppl = quality["base"]["ppl"]
    for name, q in quality.items():
        lines.append(
            f"| {name} | {q['processed']:.3f} | {q['skipped_compute']:.1%} | {q['ppl']:.3f} | "
            f"{q['ppl'] / base_ppl - 1:+.1%} | {q['acc']:.3f} |"
        )
    lines += ["", "Efficiency vs the base model (ratios > 1 = MoD better; median over repeats):", "",
              "| tokens | variant | processed | prefill s | prefill speed-up | decode ms/token | decode speed-up | "
              "KV MiB | KV reduction |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['processed']:.3f} | {r['prefill_s']:.2f} | "
            f"{r['prefill_speedup']:.2f}x | {1000 * r['decode_step_s']:.1f} | {r['decode_speedup']:.2f}x | "
            f"{r['kv_bytes'] / 2**20:.1f} | {r['kv_reduction']:.2f}x |"
        )
    lines += ["", "Targets (at the longest length, main threshold variant):", ""]
    for t in results["targets"]:
        lines.append(f"- {t['name']}: measured {t['measured']} -> **{'PASS' if t['passed'] else 'MISS'}**")
    lines += ["", SECTION_END]
    table = [TABLE_START, "| variant | layer compute skipped | rel. perplexity | ARC-Easy | "
             f"prefill speed-up @{rows[-1]['tokens'] if rows else '-'} | KV reduction |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    longest = max((r["tokens"] for r in rows), default=None)
    for name, q in quality.items():
        if name == "base":
            continue
        at = [r for r in rows if r["tokens"] == longest and r["variant"] == name]
        speed = f"{at[0]['prefill_speedup']:.2f}x" if at else "-"
        kv = f"{at[0]['kv_reduction']:.2f}x" if at else "-"
        table.append(f"| {name} | {q['skipped_compute']:.1%} | {q['ppl'] / base_ppl - 1:+.1%} | {q['acc']:.3f} | "
                     f"{speed} | {kv} |")  # fmt: skip
    table.append(TABLE_END)
    return "\n".join(lines) + "\n", "\n".join(table) + "\n"


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random llama with random routers (smoke test)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--run-threshold", help="run directory of a MoD conversion with operator=threshold")
    parser.add_argument("--run-topk", help="run directory of a MoD conversion with operator=topk (optional)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5], help="p values; the first is 'main'")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--all-variants-up-to", type=int, default=4096,
                        help="above this length only base, the main threshold and top-k are timed")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--ppl-len", type=int, default=512)
    parser.add_argument("--ppl-chunks", type=int, default=16)
    parser.add_argument("--task-n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "mod_results.json"))
    parser.add_argument("--report", help="markdown file to write the MoD section into (others kept)")
    parser.add_argument("--readme", help="README to write the summary table into (between mod-table markers)")
    parser.add_argument("--note", default="", help="a sentence added to the report (e.g. how the runs were trained)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    if args.tiny:
        base, mod, (text,) = tiny_models()
        topk_mod, items, model_name = None, tiny_items(args.task_n), "tiny random llama (6 layers)"
    else:
        from modetune.loading import load_model_and_tokenizer

        if not args.run_threshold:
            parser.error("--run-threshold is required (or --tiny)")
        base, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
        base.eval()
        mod = load_run(args.run_threshold, args.model, args.dtype)
        topk_mod = load_run(args.run_topk, args.model, args.dtype) if args.run_topk else None
        text, items, model_name = heldout_ids(tokenizer), choice_items(tokenizer, args.task_n), args.model
    n_layers, n_routed = len(mod._located.layers), len(mod.layer_indices)

    variants = [Variant("base", base, None)]
    for p in args.thresholds:
        variants.append(Variant(f"threshold p={p}", mod, {"operator": "threshold", "threshold": p}))
    quality: dict[str, dict[str, float]] = {}

    def measure_quality(v: Variant) -> None:
        ppl, processed = perplexity(v, text, args.ppl_len, args.ppl_chunks)
        quality[v.name] = {"ppl": ppl, "processed": processed, "acc": task_accuracy(v, items),
                           "skipped_compute": (1 - processed) * (n_routed / n_layers if v.is_mod else 0.0)}  # fmt: skip
        print(f"quality {v.name}: {quality[v.name]}", flush=True)

    for v in variants:
        measure_quality(v)
    main_name = variants[1].name
    matched = quality[main_name]["processed"]
    if topk_mod is not None:
        trained = topk_mod.mod_config.capacity
        capacity = round(max(0.01, min(1.0, matched)), 3)
        if abs(trained - capacity) > 0.02:  # also at the trained capacity, where its routers were converted
            variants.append(
                Variant(f"top-k c={trained:.2f} (trained)", topk_mod, {"operator": "topk", "capacity": trained})
            )
            measure_quality(variants[-1])
        variants.append(Variant(f"top-k c={capacity:.2f} (matched, own routers)", topk_mod,
                                {"operator": "topk", "capacity": capacity}))  # fmt: skip
    else:
        capacity = round(max(0.01, min(1.0, matched)), 3)
        variants.append(Variant(f"top-k c={capacity:.2f} (same routers)", mod,
                                {"operator": "topk", "capacity": capacity}))  # fmt: skip
    measure_quality(variants[-1])
    topk_name = variants[-1].name

    raw: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for length in args.lengths:
        ids = (text * (1 + length // max(1, len(text))))[:length]
        timed = [v for v in variants if length <= args.all_variants_up_to or v.name in ("base", main_name, topk_name)]
        for rep in range(args.repeats):
            for v in timed:  # round-robin: base and every variant in turn, per repeat
                m = prefill_and_decode(v, ids, args.decode_steps)
                raw.setdefault((length, v.name), []).append(m)
                print(f"{length} tokens, repeat {rep}, {v.name}: {m}", flush=True)
    rows = []
    for (length, name), ms in raw.items():
        b = raw[(length, "base")]
        med = {k: statistics.median(m[k] for m in ms) for k in ("prefill_s", "decode_step_s", "kv_bytes", "processed")}
        bmed = {k: statistics.median(m[k] for m in b) for k in ("prefill_s", "decode_step_s", "kv_bytes")}
        rows.append({"tokens": length, "variant": name, **med, "repeats": len(ms),
                     "prefill_speedup": bmed["prefill_s"] / med["prefill_s"],
                     "decode_speedup": bmed["decode_step_s"] / med["decode_step_s"],
                     "kv_reduction": bmed["kv_bytes"] / med["kv_bytes"]})  # fmt: skip
    longest = max(args.lengths)
    main_row = next(r for r in rows if r["tokens"] == longest and r["variant"] == main_name)
    rel_ppl = quality[main_name]["ppl"] / quality["base"]["ppl"] - 1
    targets = [
        {"name": f"KV memory reduction >= 1.5x at {longest}", "measured": f"{main_row['kv_reduction']:.2f}x",
         "passed": main_row["kv_reduction"] >= 1.5},
        {"name": f"prefill speed-up >= 1.15x at {longest}", "measured": f"{main_row['prefill_speedup']:.2f}x",
         "passed": main_row["prefill_speedup"] >= 1.15},
        {"name": "relative perplexity increase <= 5%", "measured": f"{rel_ppl:+.1%}", "passed": rel_ppl <= 0.05},
    ]  # fmt: skip
    results = {
        "meta": {"model": model_name, "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__,
                 "transformers": transformers.__version__, "cores": os.cpu_count(), "load_start": load_start,
                 "load_end": [round(x, 2) for x in os.getloadavg()], "machine": platform.machine(),
                 "command": "python benchmarks/mod_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "ppl_len": args.ppl_len, "ppl_chunks": args.ppl_chunks, "task_n": len(items),
                 "routed_layers": mod.layer_indices, "num_layers": n_layers, "note": args.note,
                 "threshold_run": args.run_threshold, "topk_run": args.run_topk},
        "quality": quality, "latency": rows, "targets": targets,
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    section, table = render(results)
    if args.report:
        replace_marked_block(Path(args.report), SECTION_START, SECTION_END, section)
    if args.readme:
        replace_marked_block(Path(args.readme), TABLE_START, TABLE_END, table)
    print(section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
