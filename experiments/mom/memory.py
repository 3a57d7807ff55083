"""Inference memory per token and speed of vanilla vs Mixture-of-Modules (issue 32, "Memory" bullet).

    OMP_NUM_THREADS=1 python experiments/mom/memory.py                 # 1k and 4k tokens, all four models
    OMP_NUM_THREADS=1 python experiments/mom/memory.py --tiny          # smoke run: tiny models, seconds
    python experiments/mom/memory.py --lengths 1024 --models vanilla mom-picked --decode 16

Models: randomly initialised at the "small" size of experiments/mom/run.py (d=192, 4 heads, FFN 512, llama
modules, vocabulary 49,152 tied; memory and speed need no training), float32, batch 1, SDPA attention, seed 0:

* vanilla: 4 layers (`LlamaForCausalLM`);
* mom-slots: MoM as in issue 15's runs (4 attention + 4 FFN modules + 1 SKIP, H=4, K=2, GRU state 64), with
  the former default `kv_layout='slots'` (one KV slot per (round, module) pair, every position);
* mom-picked: the same model with `kv_layout='picked'` (each slot keeps only the tokens that picked the module);
* mom-qkv: the same with `attention_assembly='qkv'` (the authors' assembly: one K/V per round).

Each (model, length) is measured in a fresh process (`--in-process` measures in this one: faster, less
isolated; `--tiny` implies it), as experiments/mom/run.py measured memory for RESULTS.md: the model is built
and warmed up on 2 tokens, the peak resident memory is reset (VmHWM via /proc/self/clear_refs, Linux), then

* prefill: one forward over `length` random tokens keeping the KV cache, head on the last position only. Records
  the peak RSS increase over the RSS before it, the cache's bytes (every tensor it holds, exact) and the time;
* decoding: `--decode` greedy tokens through that cache. Records the time per token and the peak RSS increase
  over prefill + decoding.

Per token = the figure / `length`; the table also gives the slope between the shortest and longest length (the
per-token measure of RESULTS.md) and each figure's ratio to vanilla. The cache bytes are checked against the
formula of each layout (docs/mom.md): vanilla L x 2 x kv_heads x head_dim x 4; mom-slots (used slots) x
(2 x kv_heads x head_dim x 4 + 8); mom-picked (attention picks held) x (2 x kv_heads x head_dim x 4 + 4);
mom-qkv H x 2 x kv_heads x head_dim x 4. Random routers pick a SKIP with probability 1/5 per pick here, so
mom-picked holds ~1.6 K/V per round and token; a trained router's SKIP share changes that (issue 15's: ~1.06).
Results: JSON (`--out`, default experiments/mom/results/memory.json; `--tiny` writes only with `--out`) and
a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from modetune.errors import exit_status
from modetune.mom import MoMCache, MoMConfig, MoMForCausalLM

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "memory.json"
SEED = 0
SIZES = {  # experiments/mom/run.py's "small" and "tiny" (vocabulary: the SmolLM2 tokenizer's 49,152)
    "small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, vocab_size=49152),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192, vocab_size=512),
}
MOM = dict(num_skip_modules=1, k_per_round=2, router="gru", router_hidden_size=64)  # issue 15's MoM runs
MODELS: dict[str, dict[str, str] | None] = {
    "vanilla": None,
    "mom-slots": dict(kv_layout="slots"),
    "mom-picked": dict(kv_layout="picked"),
    "mom-qkv": dict(attention_assembly="qkv"),
}


def build(name: str, size: str) -> Any:
    """A randomly initialised model (seed 0) of `size`: vanilla llama or one of the MoM variants of `MODELS`."""
    base = LlamaConfig(**SIZES[size], tie_word_embeddings=True, max_position_embeddings=8192)
    torch.manual_seed(SEED)
    if MODELS[name] is None:
        return LlamaForCausalLM(base).eval()
    n = base.num_hidden_layers  # pool = the vanilla layers' modules, one round per layer (as `modetune pretrain`)
    pool = dict(num_attention_modules=n, num_ffn_modules=n, num_rounds=n)
    return MoMForCausalLM(MoMConfig(base_config=base.to_dict(), **pool, **MOM, **MODELS[name])).eval()


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of every tensor a (MoM or transformers) dynamic cache holds."""
    return sum(t.nbytes for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values))


def kv_formula_bytes(model: Any, cache: DynamicCache) -> tuple[int, float]:
    """(bytes the layout's formula gives for this cache, K/V entries per token and round/layer) after a prefill."""
    fam = model.config.family_config() if isinstance(model, MoMForCausalLM) else model.config
    heads = fam.num_attention_heads
    entry = 2 * int(getattr(fam, "num_key_value_heads", None) or heads) * (fam.hidden_size // heads) * 4
    tokens = cache.get_seq_length()
    if not isinstance(cache, MoMCache):
        return fam.num_hidden_layers * entry * tokens, 1.0
    cfg = model.config
    if cfg.attention_assembly == "qkv":
        return cfg.num_rounds * entry * tokens, 1.0
    kv = cache.layers[: cfg.num_rounds * cfg.num_attention_modules]
    if cfg.kv_layout == "slots":
        used = sum(layer.is_initialized for layer in kv)
        return used * (entry + 8) * tokens, used / cfg.num_rounds
    extra = cache.layers[cfg.num_rounds * cfg.num_attention_modules :]
    picks = sum(int((layer.keys >= 0).sum()) for layer in extra if layer.is_initialized)
    return picks * (entry + 4), picks / tokens / cfg.num_rounds


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux) and return the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


@torch.no_grad()
def probe(name: str, size: str, length: int, decode: int) -> dict[str, Any]:
    """One measurement: prefill `length` random tokens with the cache, then `decode` greedy tokens through it."""
    model = build(name, size)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(SEED))
    model(input_ids=ids[:, :2], use_cache=True, logits_to_keep=1)  # warm-up: lazy buffers, kernels
    before = _reset_peak()
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    prefill_seconds = time.perf_counter() - start
    prefill_peak = _status_bytes("VmHWM") - before
    cache = out.cache
    held = cache_bytes(cache)
    formula, kv_per_round = kv_formula_bytes(model, cache)
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(decode):
        out = model(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    decode_seconds = (time.perf_counter() - start) / max(decode, 1)
    return {
        "model": name,
        "size": size,
        "length": length,
        "decode_tokens": decode,
        "attn_implementation": model.config._attn_implementation,
        "kv_bytes": held,
        "kv_formula_bytes": formula,
        "kv_entries_per_token_and_round": kv_per_round,
        "prefill_peak_rss_bytes": prefill_peak,
        "total_peak_rss_bytes": _status_bytes("VmHWM") - before,
        "prefill_seconds": prefill_seconds,
        "decode_ms_per_token": 1000 * decode_seconds,
        "threads": torch.get_num_threads(),
    }


def measure(name: str, size: str, length: int, decode: int, in_process: bool) -> dict[str, Any]:
    if in_process:
        return probe(name, size, length, decode)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", name, size, str(length), str(decode)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per model and length, KV and peak bytes per token (ratio to vanilla) and speed; then slopes."""
    vanilla = {r["length"]: r for r in rows if r["model"] == "vanilla"}

    def ratio(r: dict[str, Any], key: str) -> str:
        v = vanilla.get(r["length"])
        return f" ({r[key] / v[key]:.2f}x)" if v and v[key] > 0 else ""

    out = [
        "| model | tokens | KV bytes/token | K/V per token and round | peak prefill RSS/token (KB) | peak prefill+decode "
        "RSS/token (KB) | prefill s | decode ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["length"]
        out.append(
            f"| {r['model']} | {n} | {r['kv_bytes'] / n:,.0f}{ratio(r, 'kv_bytes')} | "
            f"{r['kv_entries_per_token_and_round']:.2f} | {r['prefill_peak_rss_bytes'] / n / 1024:.1f}"
            f"{ratio(r, 'prefill_peak_rss_bytes')} | {r['total_peak_rss_bytes'] / n / 1024:.1f}"
            f"{ratio(r, 'total_peak_rss_bytes')} | {r['prefill_seconds']:.2f}{ratio(r, 'prefill_seconds')} | "
            f"{r['decode_ms_per_token']:.1f}{ratio(r, 'decode_ms_per_token')} |"
        )
    off = [f"{r['model']} at {r['length']}" for r in rows if r["kv_bytes"] != r["kv_formula_bytes"]]
    out.append(f"\nKV bytes held = the layout's formula: {'NO for ' + ', '.join(off) if off else 'yes, every row'}.")
    lengths = sorted({r["length"] for r in rows})
    if len(lengths) > 1:
        lo, hi = lengths[0], lengths[-1]
        out.append(f"\nPeak prefill RSS per token as the slope between {lo} and {hi} tokens (RESULTS.md's measure):")
        for name in dict.fromkeys(r["model"] for r in rows):
            by = {r["length"]: r["prefill_peak_rss_bytes"] for r in rows if r["model"] == name}
            if lo in by and hi in by:
                out.append(f"* {name}: {(by[hi] - by[lo]) / (hi - lo) / 1024:.1f} KB/token")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="prefill lengths (default 1024 4096)")
    parser.add_argument("--decode", type=int, default=None, help="greedy tokens decoded after the prefill (default 32)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny models, 16 and 48 tokens, in-process")
    parser.add_argument("--in-process", action="store_true", help="measure in this process, not a fresh one each")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default {OUT.relative_to(HERE.parents[1])})"
    )
    parser.add_argument("--probe", nargs=4, metavar=("MODEL", "SIZE", "LENGTH", "DECODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe:
        name, size, length, decode = args.probe
        print(json.dumps(probe(name, size, int(length), int(decode))))
        return 0
    size = "tiny" if args.tiny else "small"
    lengths = args.lengths or ([16, 48] if args.tiny else [1024, 4096])
    decode = args.decode if args.decode is not None else (3 if args.tiny else 32)
    rows = [measure(m, size, n, decode, args.in_process or args.tiny) for n in lengths for m in args.models]
    out = args.out or (None if args.tiny else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        method = (
            "peak RSS (VmHWM reset via /proc/self/clear_refs) minus RSS before the prefill; randomly initialised "
            f"models, seed {SEED}, random tokens, batch 1, float32, 1 thread"
        )
        out.write_text(json.dumps({"method": method, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "experiments/mom/memory.py"))
