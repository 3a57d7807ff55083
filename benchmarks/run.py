"""Performance benchmarks of MoDE against the plain model and LoRA, measured side by side in one run.

    python benchmarks/run.py                      # full suite on SmolLM2-135M (~20-25 min on 2 quiet cores)
    python benchmarks/run.py --suite train --repeats 5
    python benchmarks/run.py --tiny --quick       # a tiny random Llama: checks the machinery in seconds

Suites: train (step time and peak memory: LoRA, LoRA + MoDE k = 2, 3, 6, MoDE-only), generate (tokens/s,
batch 1 and 8), loglik (scoring throughput), memory (peak memory over sequence length and k). Results go to
`--output` (JSON) and a generated section of `--report` (markdown; the rest of that file is kept).

Why it is built this way:
* Timings alternate the configurations (A B C A B C ...) inside one process on one fixed batch, after a
  warm-up step each, and report medians, so slow drift of a shared machine hits every configuration alike.
* Each peak-memory figure comes from its own fresh process (forked from a server that only imported the
  libraries), as peak RSS after the model is loaded minus the RSS right after loading: model weights do
  not dilute the ratios, and one measurement's freed-but-kept heap never inflates the next. Every weight
  is read once before that baseline: transformers memory-maps safetensors checkpoints, so the weights
  would otherwise page in during the measured step and count as its memory. The peak is
  Linux's VmHWM, reset after loading through /proc/self/clear_refs: `ru_maxrss` is also recorded but it
  includes the loading transient, and on Linux a child even inherits its parent's peak across exec.
  On CUDA the figures are `torch.cuda.max_memory_allocated` (code path untested on this project's CI).
* Every measured ratio is printed next to the ratio predicted from matmul FLOP counts (`mode_flops.py`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import copy
import gc
import json
import multiprocessing as mp
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mode_flops
import mode_report
import torch
from torch import nn

# peft asks transformers a deprecated question on every wrap; the warning says nothing about performance
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results.json"
DEFAULT_REPORT = ROOT / "benchmarks" / "RESULTS.md"
SUITES = ("train", "generate", "loglik", "memory")
TINY = "tiny"
#: a tiny random Llama (tied embeddings like SmolLM2, 8 layers so k = 6 fits) for smoke tests
TINY_CONFIG: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
LEARNING_RATE = 1e-4
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
WORDS = (
    "the", "river", "city", "old", "market", "light", "winter", "bridge", "small", "road", "quiet", "garden", "north", "stone", "house",
    "morning", "window", "music", "teacher", "letter", "train", "harbor", "forest", "island", "summer", "evening", "village", "mountain", "paper", "story",
)  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# What to measure
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The workloads. The defaults are the issue's; `quick` shrinks them to check the machinery."""

    repeats: int
    train_shapes: list[tuple[int, int]]  # (tokens per sequence, batch)
    ks: tuple[int, ...] = (2, 3, 6)
    mode_only_k: int = 3
    memory_seqs: tuple[int, ...] = (256, 512, 1024)
    memory_ks: tuple[int, ...] = (1, 3, 6)
    memory_batch: int = 2
    gen_batches: tuple[int, ...] = (1, 8)
    gen_new_tokens: int = 128
    gen_repeats: int = 7  # whole generations vary by ~10% run to run on a shared CPU: more rounds than training
    decode_steps: int = 40  # single cached decoding steps, timed alternately (the steady-state per-token cost)
    decode_context: int = 64  # tokens already in the KV cache for those steps
    loglik_requests: int = 64
    loglik_batch: int = 8
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    @classmethod
    def make(cls, quick: bool, repeats: int | None, lora_dropout: float) -> Plan:
        if not quick:
            # 1024 tokens at batch 2: the same 2048 tokens per step as 256 x 8, so both lengths cost about
            # the same and the suite fits in ~20 minutes on 2 cores; only attention's share grows
            return cls(
                repeats=repeats or 3,
                train_shapes=[(256, 8), (1024, 2)],
                gen_repeats=repeats or 7,
                lora_dropout=lora_dropout,
            )
        return cls(
            repeats=repeats or 2,
            gen_repeats=repeats or 2,
            decode_steps=5,
            train_shapes=[(64, 8), (256, 2)],
            memory_seqs=(64, 128, 256),
            gen_new_tokens=16,
            loglik_requests=16,
            lora_dropout=lora_dropout,
        )


@dataclass(frozen=True)
class Variant:
    """One trained configuration: 'lora' (HF loss), 'lora+mode' (k layers) or 'mode-only' (frozen base)."""

    method: str
    k: int = 0

    @property
    def label(self) -> str:
        return {"lora": "LoRA", "lora+mode": f"LoRA+MoDE(k={self.k})", "mode-only": f"MoDE-only(k={self.k})"}[
            self.method
        ]


# --------------------------------------------------------------------------------------------------
# Models and inputs (used by the timing process and by the memory workers alike)
# --------------------------------------------------------------------------------------------------
class ByteTokenizer:
    """Just enough tokenizer for `loglikelihoods` on the tiny model (bytes folded into its vocabulary)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    pad_token, eos_token = "<pad>", "</s>"
    padding_side = "right"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict[str, list[int]]:
        ids = [3 + b % (self.vocab_size - 3) for b in text.encode()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def load_base(spec: str, device: str) -> tuple[nn.Module, Any]:
    """The plain causal LM in eval mode, and its tokenizer (a byte tokenizer for the tiny model)."""
    if spec == TINY:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY_CONFIG), dtype=torch.float32)
        return model.to(device).eval(), ByteTokenizer(TINY_CONFIG["vocab_size"])
    from modetune.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, device=device)


def wrap(base: nn.Module, variant: Variant, plan: Plan, peft_model: nn.Module | None = None) -> nn.Module:
    """Build `variant` on `base` (LoRA variants reuse `peft_model` when given: same LoRA weights)."""
    from modetune import MoDEConfig, get_mode_model

    if variant.method == "mode-only":
        return get_mode_model(base, MoDEConfig(num_layers=variant.k))
    if peft_model is None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=plan.lora_r,
            lora_alpha=plan.lora_alpha,
            lora_dropout=plan.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(base, lora)
    if variant.method == "lora":
        return peft_model
    return get_mode_model(peft_model, MoDEConfig(num_layers=variant.k))


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The innermost `*ForCausalLM` under MoDE and PEFT wrappers."""
    if hasattr(model, "causal_lm"):
        return model.causal_lm
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def vocab_size(model: nn.Module) -> int:
    return int(causal_lm_of(model).get_output_embeddings().weight.shape[0])


def make_batch(vocab: int, batch: int, seq: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch; the first half of each sequence is prompt (label -100), as in SFT."""
    torch.manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq))
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return ids.to(device), labels.to(device)


def labelled_positions(labels: torch.Tensor) -> int:
    """Positions that predict a label (position t is scored on label t + 1)."""
    return int((labels[:, 1:] != -100).sum())


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, ids: torch.Tensor, labels: torch.Tensor
) -> float:
    """Forward + backward (+ AdamW step): what one training step costs."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return float(loss.detach())


def generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, pad_id: int) -> torch.Tensor:
    """Greedy decoding of exactly `new_tokens` tokens (EOS suppressed), so every run does the same work."""
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} new tokens, expected {new_tokens}")
    return out


def prompt_ids(tokenizer: Any, batch: int, device: str) -> torch.Tensor:
    """The same short prompt in every row (no padding, so base and MoDE decode identical shapes)."""
    ids = tokenizer(PROMPT)["input_ids"]
    return torch.tensor([ids] * batch, dtype=torch.long, device=device)


def make_requests(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct (context, continuation) pairs of pseudo-text (no two share a forward pass)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        context = f"Story {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(32, 64)))
        continuation = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        out.append((context, continuation))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# Peak memory, one fresh process per measurement
# --------------------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _ru_maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak excludes everything before this call."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def make_resident(model: nn.Module) -> None:
    """Read every weight once. transformers memory-maps safetensors checkpoints, so weights otherwise page
    in during the first step and would count as that step's memory (about the whole model size)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.numel():
                tensor.sum()


class PeakMeter:
    """Peak memory of the code between `start()` and `stop()`, above what was resident at `start()`."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        gc.collect()
        self.rss0 = _status_bytes("VmRSS") or _ru_maxrss_bytes()
        self.reset = _reset_peak_rss()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.cuda0 = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> dict[str, Any]:
        mib = 2**20
        peak = _status_bytes("VmHWM") if self.reset else None
        out: dict[str, Any] = {
            "rss_after_load_mib": self.rss0 / mib,
            "ru_maxrss_mib": _ru_maxrss_bytes() / mib,
            "method": "VmHWM reset after loading" if peak is not None else "ru_maxrss (includes loading)",
        }
        peak = peak if peak is not None else _ru_maxrss_bytes()
        out["peak_mib"] = peak / mib
        out["delta_mib"] = (peak - self.rss0) / mib
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            out["method"] = "torch.cuda.max_memory_allocated"
            out["peak_mib"] = torch.cuda.max_memory_allocated() / mib
            out["delta_mib"] = (torch.cuda.max_memory_allocated() - self.cuda0) / mib
            out["rss_after_load_mib"] = self.cuda0 / mib
        return out


def measure_peak(task: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: load, wrap, then measure one training step or one generation."""
    plan = Plan(**task["plan"])
    device = task["device"]
    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    base, tokenizer = load_base(task["spec"], device)
    model = base if task["method"] == "base" else wrap(base, Variant(task["method"], task.get("k", 0)), plan)
    make_resident(model)
    meter = PeakMeter(device)
    if task["kind"] == "train":
        ids, labels = make_batch(vocab_size(model), task["batch"], task["seq"], device)
        model.train()
        optimizer = torch.optim.AdamW(trainable(model), lr=LEARNING_RATE) if task["optimizer_step"] else None
        meter.start()
        train_step(model, optimizer, ids, labels)
    else:
        model.eval()
        ids = prompt_ids(tokenizer, task["batch"], device)
        meter.start()
        generate(model, ids, task["new_tokens"], tokenizer.pad_token_id)
    return meter.stop()


def _worker(task: dict[str, Any], conn: Any) -> None:
    try:
        conn.send({"ok": True, **measure_peak(task)})
    except BaseException:
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        conn.close()


class MemoryProbe:
    """Runs `measure_peak` in a new process per task, forked from a server that preloaded the libraries
    (so a measurement costs a model load, not a Python + torch start-up)."""

    def __init__(self, timeout: float = 3600.0):
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.ctx = mp.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(["torch", "transformers", "peft", "modetune", "mode_flops"])
        self.timeout = timeout

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        receiver, sender = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker, args=(task, sender), daemon=True)
        proc.start()
        sender.close()
        try:
            if receiver.poll(self.timeout):
                result = receiver.recv()
            else:
                proc.kill()
                result = {"ok": False, "error": f"timed out after {self.timeout:.0f} s"}
        except EOFError:
            result = {"ok": False, "error": "the worker died (out of memory?)"}
        proc.join()
        result["exitcode"] = proc.exitcode
        result["seconds"] = time.perf_counter() - started
        if not result["ok"]:
            log(f"  memory measurement failed: {result['error']}")
        return result


# --------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------
def alternate(
    runs: dict[str, Callable[[], Any]], repeats: int, device: str, warmup: dict[str, Callable[[], Any]] | None = None
) -> dict[str, list[float]]:
    """Warm each up once, then time A B C A B C ... `repeats` rounds; seconds per call, per name."""
    for fn in (warmup or runs).values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            gc.collect()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def _step_into(
    losses: dict[str, float],
    label: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    losses[label] = train_step(model, optimizer, ids, labels)


def count_layers_on_backward_path(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> int:
    """How many decoder layers produce outputs that autograd tracks, i.e. that backward runs through."""
    from modetune.architectures import locate

    flags: list[bool] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        flags.append(bool(out.requires_grad))

    handles = [layer.register_forward_hook(hook) for layer in locate(causal_lm_of(model)).layers]
    try:
        model(input_ids=ids[:1, :8], labels=labels[:1, :8].clone().fill_(5))
    finally:
        for handle in handles:
            handle.remove()
    return sum(flags)


def memory_task(args: argparse.Namespace, plan: Plan, **task: Any) -> dict[str, Any]:
    return {"spec": args.spec, "device": args.device, "threads": args.threads, "plan": asdict(plan), **task}


# --------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace, plan: Plan, probe: MemoryProbe) -> dict[str, Any]:
    """Step time (alternating, in this process) and peak memory (fresh processes) of every variant."""
    variants = [Variant("lora"), *(Variant("lora+mode", k) for k in plan.ks), Variant("mode-only", plan.mode_only_k)]
    plain, _ = load_base(args.spec, args.device)
    lora_base, _ = load_base(args.spec, args.device)
    shape = mode_flops.model_shape(plain, plan.lora_r)
    peft_model = wrap(lora_base, Variant("lora"), plan)
    models = {v.label: wrap(plain if v.method == "mode-only" else lora_base, v, plan, peft_model) for v in variants}
    optimizers = {label: torch.optim.AdamW(trainable(m), lr=LEARNING_RATE) for label, m in models.items()}
    params = {label: sum(p.numel() for p in trainable(m)) for label, m in models.items()}
    rows: list[dict[str, Any]] = []
    for seq, batch in plan.train_shapes:
        ids, labels = make_batch(shape.vocab, batch, seq, args.device)
        labelled = labelled_positions(labels)
        log(f"train: {batch} x {seq} tokens, {len(variants)} variants, {plan.repeats} rounds")
        for model in models.values():
            model.train()
        graph = {label: count_layers_on_backward_path(m, ids, labels) for label, m in models.items()}
        losses: dict[str, float] = {}
        steps = {
            label: partial(_step_into, losses, label, m, optimizers[label], ids, labels) for label, m in models.items()
        }
        times = alternate(steps, plan.repeats, args.device)
        flops = {
            v.label: {
                kind: mode_flops.train_step_flops(
                    shape,
                    v.method,
                    batch=batch,
                    seq=seq,
                    labelled=labelled,
                    k=v.k,
                    per_layer=v.k > 1,
                    implemented=kind == "implemented",
                )["total"]
                for kind in ("minimal", "implemented")
            }
            for v in variants
        }
        base_time, base_flops = statistics.median(times["LoRA"]), flops["LoRA"]
        for v in variants:
            t = summary(times[v.label])
            row = {
                "variant": v.label,
                "method": v.method,
                "k": v.k,
                "seq": seq,
                "batch": batch,
                "labelled": labelled,
                "time_s": t,
                "tokens_per_s": batch * seq / t["median"],
                "loss": losses[v.label],
                "time_ratio": t["median"] / base_time,
                "flops": flops[v.label]["minimal"],
                "flops_implemented": flops[v.label]["implemented"],
                "predicted_ratio": flops[v.label]["minimal"] / base_flops["minimal"],
                "predicted_ratio_implemented": flops[v.label]["implemented"] / base_flops["implemented"],
                "decoder_layers_on_backward_path": graph[v.label],
                "decoder_layers": shape.num_layers,
                "trainable_params": params[v.label],
            }
            rows.append(row)
            log(
                f"  {v.label:<18} {t['median']:8.3f} s/step  ratio {row['time_ratio']:.3f} "
                f"(FLOP-predicted {row['predicted_ratio']:.3f})  layers on backward path {graph[v.label]}"
            )
    del models, optimizers, peft_model, plain, lora_base
    gc.collect()
    for row in rows:
        log(f"train memory: {row['variant']} {row['batch']} x {row['seq']}")
        row["memory"] = probe.run(
            memory_task(
                args,
                plan,
                kind="train",
                method=row["method"],
                k=row["k"],
                seq=row["seq"],
                batch=row["batch"],
                optimizer_step=True,
            )
        )
    for shape_rows in _group(rows, ("seq", "batch")):
        base_mem = next(r["memory"] for r in shape_rows if r["method"] == "lora")
        for row in shape_rows:
            row["memory_delta_ratio"] = _ratio(row["memory"], base_mem, "delta_mib")
            row["memory_peak_ratio"] = _ratio(row["memory"], base_mem, "peak_mib")
    return {
        "setup": {
            "optimizer": f"AdamW(lr={LEARNING_RATE}) over the trainable parameters",
            "lora": {
                "r": plan.lora_r,
                "alpha": plan.lora_alpha,
                "dropout": plan.lora_dropout,
                "target_modules": "all-linear",
            },
            "labels": "input_ids, first half of each sequence -100",
            "shapes": plan.train_shapes,
            "repeats": plan.repeats,
            "warmup_steps": 1,
        },
        "model_shape": shape.to_dict(),
        "rows": rows,
    }


def run_generate(args: argparse.Namespace, plan: Plan, probe: MemoryProbe) -> dict[str, Any]:
    """Greedy decoding speed of the plain model and of MoDE(k=3) wrapped around that same model."""
    from modetune import MoDEConfig, get_mode_model

    base, tokenizer = load_base(args.spec, args.device)
    shape = mode_flops.model_shape(base)
    mode = get_mode_model(base, MoDEConfig(num_layers=3)).eval()
    models = {"base": base, "MoDE(k=3)": mode}
    pad = tokenizer.pad_token_id
    rows: list[dict[str, Any]] = []
    for batch in plan.gen_batches:
        ids = prompt_ids(tokenizer, batch, args.device)
        n = plan.gen_new_tokens
        log(f"generate: batch {batch}, {ids.shape[1]}-token prompt, {n} new tokens, {plan.gen_repeats} rounds")
        runs = {name: partial(generate, m, ids, n, pad) for name, m in models.items()}
        warm = {name: partial(generate, m, ids, min(8, n), pad) for name, m in models.items()}
        times = alternate(runs, plan.gen_repeats, args.device, warmup=warm)
        steps = decode_step_times(models, batch, plan, args.device)
        flops = {
            name: mode_flops.generation_flops(
                shape, batch=batch, prompt=ids.shape[1], new_tokens=n, mode_k=3 if name != "base" else None
            )
            for name in models
        }
        base_tps = batch * n / statistics.median(times["base"])
        for name in models:
            t = summary(times[name])
            tps = batch * n / t["median"]
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "prompt_tokens": ids.shape[1],
                    "new_tokens": n,
                    "time_s": t,
                    "tokens_per_s": tps,
                    "tps_ratio": tps / base_tps,
                    "predicted_ratio": flops["base"] / flops[name],
                    "decode_step_s": summary(steps[name]),
                    "decode_step_ratio": statistics.median(steps["base"]) / statistics.median(steps[name]),
                }
            )
            log(
                f"  {name:<10} {tps:8.1f} tokens/s  ratio {tps / base_tps:.3f} (FLOP-predicted "
                f"{flops['base'] / flops[name]:.3f}); one decoding step "
                f"{1e3 * statistics.median(steps[name]):.1f} ms"
            )
    del models, mode, base
    gc.collect()
    for row in rows:
        log(f"generate memory: {row['model']} batch {row['batch']}")
        method = "base" if row["model"] == "base" else "mode-only"
        row["memory"] = probe.run(
            memory_task(
                args, plan, kind="generate", method=method, k=3, batch=row["batch"], new_tokens=row["new_tokens"]
            )
        )
    for batch_rows in _group(rows, ("batch",)):
        base_mem = next(r["memory"] for r in batch_rows if r["model"] == "base")
        for row in batch_rows:
            row["memory_delta_ratio"] = _ratio(row["memory"], base_mem, "delta_mib")
    setup = {
        "prompt": PROMPT,
        "decoding": "greedy, min_new_tokens = max_new_tokens",
        "rounds": plan.gen_repeats,
        "decode_steps": plan.decode_steps,
        "decode_context": plan.decode_context,
    }
    return {"setup": setup, "rows": rows}


def decode_step_times(models: dict[str, nn.Module], batch: int, plan: Plan, device: str) -> dict[str, list[float]]:
    """One cached decoding step (1 new token after `decode_context` cached ones), timed alternately many times.

    A whole `generate` call also times the Python generation loop and the KV cache's growth, which swing by
    ~10% between runs on a shared CPU; the single step isolates what MoDE adds per token.
    """
    torch.manual_seed(0)
    base = models["base"]
    context = torch.randint(3, vocab_size(base), (batch, plan.decode_context), device=device)
    with torch.no_grad():
        cache = base(input_ids=context, use_cache=True).past_key_values
    step_inputs = dict(
        input_ids=torch.randint(3, vocab_size(base), (batch, 1), device=device),
        attention_mask=torch.ones(batch, plan.decode_context + 1, dtype=torch.long, device=device),
        position_ids=torch.full((batch, 1), plan.decode_context, device=device),
        use_cache=True,
        logits_to_keep=1,
    )

    def step(model: nn.Module) -> None:
        with torch.no_grad():  # a fresh copy of the cache each time, so every step sees the same context
            model(past_key_values=copy.deepcopy(cache), **step_inputs)

    return alternate({name: partial(step, m) for name, m in models.items()}, plan.decode_steps, device)


def run_loglik(args: argparse.Namespace, plan: Plan, probe: MemoryProbe) -> dict[str, Any]:
    """`modetune.evaluation.runner.loglikelihoods` throughput, plain model vs MoDE(k=3) on it."""
    from modetune import MoDEConfig, get_mode_model
    from modetune.evaluation.runner import loglikelihoods

    base, tokenizer = load_base(args.spec, args.device)
    shape = mode_flops.model_shape(base)
    mode = get_mode_model(base, MoDEConfig(num_layers=3)).eval()
    models = {"base": base, "MoDE(k=3)": mode}
    requests = make_requests(plan.loglik_requests)
    lengths = [len(tokenizer(c + x)["input_ids"]) for c, x in requests]
    log(f"loglik: {len(requests)} requests ({sum(lengths)} tokens), batch {plan.loglik_batch}, {plan.repeats} rounds")
    scores: dict[str, float] = {}

    def score(name: str, model: nn.Module, batch: list[tuple[str, str]], batch_size: int) -> None:
        out = loglikelihoods(model, tokenizer, batch, batch_size=batch_size)
        scores[name] = sum(lp for lp, _, _ in out) / len(out)

    runs = {name: partial(score, name, m, requests, plan.loglik_batch) for name, m in models.items()}
    warm = {name: partial(score, name, m, requests[:4], 4) for name, m in models.items()}
    times = alternate(runs, plan.repeats, args.device, warmup=warm)
    flops = {
        name: sum(
            mode_flops.inference_flops(shape, tokens=n, context=n, projected=n, mode_k=3 if name != "base" else None)
            for n in lengths
        )
        for name in models
    }
    base_rps = len(requests) / statistics.median(times["base"])
    rows = []
    for name in models:
        t = summary(times[name])
        rps = len(requests) / t["median"]
        rows.append(
            {
                "model": name,
                "requests": len(requests),
                "tokens": sum(lengths),
                "time_s": t,
                "requests_per_s": rps,
                "tokens_per_s": sum(lengths) / t["median"],
                "ratio": rps / base_rps,
                "predicted_ratio": flops["base"] / flops[name],
                "mean_loglik": scores[name],
            }
        )
        log(
            f"  {name:<10} {rps:8.2f} requests/s  ratio {rps / base_rps:.3f} (FLOP-predicted "
            f"{flops['base'] / flops[name]:.3f})"
        )
    return {"setup": {"batch_size": plan.loglik_batch, "requests": len(requests)}, "rows": rows}


def run_memory(args: argparse.Namespace, plan: Plan, probe: MemoryProbe) -> dict[str, Any]:
    """Forward + backward peak memory over sequence length and k, each point in a fresh process."""
    variants = [Variant("lora")]
    variants += [Variant("lora+mode", k) for k in plan.memory_ks]
    variants += [Variant("mode-only", k) for k in plan.memory_ks]
    rows = []
    for seq in plan.memory_seqs:
        for v in variants:
            log(f"memory: {v.label} {plan.memory_batch} x {seq}")
            mem = probe.run(
                memory_task(
                    args,
                    plan,
                    kind="train",
                    method=v.method,
                    k=v.k,
                    seq=seq,
                    batch=plan.memory_batch,
                    optimizer_step=False,
                )
            )
            rows.append({"variant": v.label, "method": v.method, "k": v.k, "seq": seq, "memory": mem})
    slopes = {}
    for v in variants:
        points = [(r["seq"] * plan.memory_batch, r["memory"].get("delta_mib")) for r in rows if r["variant"] == v.label]
        slope = _slope([(x, y) for x, y in points if y is not None])
        slopes[v.label] = None if slope is None else slope * 1000
    fits = []
    for v in variants:
        k1 = Variant(v.method, 1).label if v.method != "lora" else "LoRA"
        fits.append(
            {
                "variant": v.label,
                "method": v.method,
                "k": v.k,
                "slope_mib_per_1k_tokens": slopes[v.label],
                "slope_ratio_vs_lora": _div(slopes[v.label], slopes["LoRA"]),
                "slope_ratio_vs_k1": _div(slopes[v.label], slopes.get(k1)),
            }
        )
        log(f"  {v.label:<18} {slopes[v.label] or float('nan'):8.1f} MiB per 1k tokens")
    return {
        "setup": {
            "batch": plan.memory_batch,
            "seqs": plan.memory_seqs,
            "ks": plan.memory_ks,
            "step": "forward + backward, no optimizer step",
        },
        "rows": rows,
        "fits": fits,
    }


# --------------------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------------------
def _group(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return list(groups.values())


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _ratio(mem: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    return _div(mem.get(key), base.get(key)) if mem.get("ok") and base.get("ok") else None


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None with fewer than two distinct x)."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


# --------------------------------------------------------------------------------------------------
# Targets (the issue's, each a ratio measured in this run)
# --------------------------------------------------------------------------------------------------
def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/MISS per target; `measured` is the figure the verdict is about."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: float | None, limit: float, passed: bool | None, detail: str) -> None:
        out.append({"target": target, "measured": measured, "limit": limit, "passed": passed, "detail": detail})

    train = results.get("train")
    if train:
        rows = train["rows"]
        longest = max((r["seq"], r["batch"]) for r in rows)
        for seq, batch in sorted({(r["seq"], r["batch"]) for r in rows}):
            by = {r["variant"]: r for r in rows if (r["seq"], r["batch"]) == (seq, batch)}
            k3 = by.get("LoRA+MoDE(k=3)")
            if k3:
                limit = 1.05 * k3["predicted_ratio"]
                add(
                    f"LoRA+MoDE(k=3) / LoRA step time, {batch} x {seq}",
                    k3["time_ratio"],
                    limit,
                    k3["time_ratio"] <= limit,
                    f"≤ 1.05 × FLOP-predicted {k3['predicted_ratio']:.3f}",
                )
            only = next((r for r in by.values() if r["method"] == "mode-only"), None)
            if only:
                limit = 1.05 * only["predicted_ratio"]
                add(
                    f"{only['variant']} / LoRA step time, {batch} x {seq}",
                    only["time_ratio"],
                    limit,
                    only["time_ratio"] <= limit,
                    f"≤ 1.05 × FLOP-predicted {only['predicted_ratio']:.3f} (backward stops at the adapters)",
                )
                add(
                    f"{only['variant']}: decoder layers on the backward path, {batch} x {seq}",
                    only["decoder_layers_on_backward_path"],
                    0,
                    only["decoder_layers_on_backward_path"] == 0,
                    f"0 of {only['decoder_layers']}",
                )
            if (seq, batch) == longest and k3:
                r3 = k3.get("memory_delta_ratio")
                add(
                    f"LoRA+MoDE(k=3) / LoRA peak memory (Δ over loaded model), {batch} x {seq}",
                    r3,
                    1.15,
                    None if r3 is None else r3 <= 1.15,
                    "≤ 1.15",
                )
                k6 = by.get("LoRA+MoDE(k=6)")
                if k6:
                    d3, d6 = k3["memory"].get("delta_mib"), k6["memory"].get("delta_mib")
                    r = _div(d6, d3)
                    add(
                        f"LoRA+MoDE k=6 / k=3 peak memory (Δ), {batch} x {seq}",
                        r,
                        1.05,
                        None if r is None else abs(r - 1) <= 0.05,
                        "within 5%",
                    )
    gen = results.get("generate")
    if gen:
        for row in gen["rows"]:
            if row["model"] != "base":
                add(
                    f"{row['model']} / base generation tokens/s, batch {row['batch']}",
                    row["tps_ratio"],
                    0.95,
                    row["tps_ratio"] >= 0.95,
                    "≥ 0.95",
                )
                if row.get("decode_step_ratio") is not None:
                    add(
                        f"{row['model']} / base speed of one cached decoding step, batch {row['batch']}",
                        row["decode_step_ratio"],
                        0.95,
                        row["decode_step_ratio"] >= 0.95,
                        "≥ 0.95",
                    )
    mem = results.get("memory")
    if mem:
        for fit in mem["fits"]:
            if fit["method"] != "lora" and fit["k"] > 1:
                r = fit["slope_ratio_vs_lora"]
                add(
                    f"{fit['variant']}: memory growth per token / LoRA's",
                    r,
                    1.15,
                    None if r is None else r <= 1.15,
                    "≤ 1.15 (grows like the base model's)",
                )
    return out


# --------------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": ram,
        "platform": platform.platform(),
        "device": device,
        "load_average_start": _loadavg(),
        "other_cpu_use_start": other_cpu_use(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def other_cpu_use(seconds: float = 5.0) -> float | None:
    """Cores kept busy by other processes, measured from /proc/stat while this one sleeps.

    The load average is a poor check: it still counts a job that ended a minute ago, and during the run it
    counts the benchmark itself.
    """

    def busy_and_total() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = busy_and_total()
        time.sleep(seconds)
        busy1, total1 = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    return round((busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1), 2)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, Any]:
    import peft
    import transformers

    import modetune

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "modetune": modetune.__version__,
    }
    git = ["git", "-C", str(ROOT), "--no-optional-locks"]
    try:  # read-only queries
        out["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--suite", nargs="+", choices=[*SUITES, "all"], default=["all"], help="what to measure")
    parser.add_argument("--model", default="smollm2-135m", help="a modetune model spec (default smollm2-135m)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model (smoke tests)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 3; 2 quick)")
    parser.add_argument("--quick", action="store_true", help="shorter sequences and generations, fewer rounds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0, as LoraConfig)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="markdown report (section rewritten)")
    parser.add_argument("--render-from", type=Path, default=None, help="only re-render the report from this JSON")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per memory measurement")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.spec = TINY if args.tiny else args.model
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_from is not None:
        results = json.loads(args.render_from.read_text())
        mode_report.write_report(args.report, mode_report.render(results))
        log(f"report written to {args.report}")
        return 0
    import transformers

    transformers.logging.set_verbosity_error()
    from modetune.loading import resolve_device

    args.device = str(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = list(SUITES) if "all" in args.suite else [s for s in SUITES if s in args.suite]
    plan = Plan.make(args.quick, args.repeats, args.lora_dropout)
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "command": "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv]),
            "model": args.spec,
            "tiny": args.tiny,
            "quick": args.quick,
            "suites": suites,
            "plan": asdict(plan),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine_info(args.device),
            "versions": versions(),
        }
    }
    if args.tiny:
        results["meta"]["tiny_config"] = TINY_CONFIG
    probe = MemoryProbe(args.timeout)
    runners = {"train": run_train, "generate": run_generate, "loglik": run_loglik, "memory": run_memory}
    for suite in suites:
        t0 = time.time()
        results[suite] = runners[suite](args, plan, probe)
        results[suite]["seconds"] = time.time() - t0
    results["meta"]["seconds"] = time.time() - started
    results["meta"]["machine"]["load_average_end"] = _loadavg()
    results["targets"] = evaluate_targets(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    mode_report.write_report(args.report, mode_report.render(results))
    print(mode_report.render_targets(results["targets"]))
    log(f"done in {results['meta']['seconds']:.0f} s; results: {args.output}; report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
