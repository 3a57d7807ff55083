"""The Mixture-of-Modules experiment of issue 15, as a resumable grid of cells.

    OMP_NUM_THREADS=1 python experiments/mom/run.py --cells small-vanilla-s0 small-mom-s0 ...  # see RESULTS.md
    python experiments/mom/run.py --list                                                   # every cell
    python experiments/mom/run.py --summary                  # tables of the finished cells -> RESULTS.md
    python experiments/mom/run.py --all                                                    # the full grid

Each cell is one `modetune pretrain` run (resumed if it was interrupted, skipped if complete), followed by
the measurements, each written to the cell's `results.json` as soon as it is done (re-running a cell only
does what is missing):

* held-out perplexity (the corpus's fixed per-document split), with per-block losses and a block-bootstrap CI;
* cost: forward FLOPs per token (the modules a token runs; MoM counts K per router and round, an upper bound
  when SKIPs are picked, and the realised figure with the measured SKIP share), parameters, KV-cache bytes per
  token, training tokens/s, measured peak memory per token (fresh process, inference and training, 2 lengths);
* BoolQ: the pre-trained model fine-tuned on BoolQ questions (train file, "Question: ...? Answer:" -> " yes" /
  " no"), accuracy on a fixed subset of the test file by comparing the two answers' log-probabilities. The
  LLM-Adapters BoolQ files carry no passages, so this measures question-only BoolQ;
* pruning (MoM): held-out loss with each attention / FFN module removed from the pool, and with the least-used
  half of the attention modules and quarter of the FFN modules removed (the paper's claim).

Phase 2 ("p2-*" cells) builds the pool from SmolLM2-135M's 30 layers and trains on the same corpus; the base
model's own held-out perplexity is measured on the same blocks; "p2-fixed-*" is the control (routes fixed to
the layer order: plain fine-tuning of SmolLM2 by the same trainer and data). Runs go to experiments/mom/runs/ (not in git).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modetune.errors import ConfigError, exit_status

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"

# "small": steps chosen from the throughput measured on this machine (one core) so that one MoM run takes about
# 7-9 minutes on this machine's shared core; vanilla runs the same number of tokens (see RESULTS.md)
SMALL_STEPS = int(os.environ.get("MOM_SMALL_STEPS", "120"))
P2_STEPS = int(os.environ.get("MOM_P2_STEPS", "16"))
SIZES = {  # d, layers, heads, ffn; total parameters are dominated by the 49k-token embedding (tied)
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192),
    "small": dict(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512),  # "10m", short training
    "10m": dict(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512),
    "30m": dict(hidden_size=384, num_layers=8, num_heads=6, intermediate_size=1024),
}
TRAIN = {  # equal training tokens for both architectures of a size
    "tiny": dict(max_steps=60, batch_size=8, block_size=128, learning_rate=3e-3, warmup_steps=6, save_steps=20),
    "small": dict(
        max_steps=SMALL_STEPS, batch_size=8, block_size=128, learning_rate=2e-3, warmup_steps=10, save_steps=40
    ),
    "10m": dict(max_steps=1500, batch_size=16, block_size=256, learning_rate=2e-3, warmup_steps=100, save_steps=100),
    "30m": dict(max_steps=3000, batch_size=16, block_size=256, learning_rate=1e-3, warmup_steps=200, save_steps=100),
}
MOM = dict(num_skip_modules=1, k_per_round=2, router="gru", router_hidden_size=64)
EVAL_BLOCKS = {"tiny": 32, "small": 96, "10m": 0, "30m": 0, "p2": 16}
PRUNE_BLOCKS = 24  # held-out blocks (the first of the evaluation blocks) for the pruning analysis
BOOLQ = {"tiny": dict(train=256, test=200, steps=30), "small": dict(train=4000, test=500, steps=100), "10m": dict(train=4000, test=1000, steps=300),
         "30m": dict(train=4000, test=1000, steps=300)}  # fmt: skip


def cells() -> dict[str, dict[str, Any]]:
    grid = {}
    for size in SIZES:
        for arch in ("vanilla", "mom"):
            for seed in (0, 1):
                grid[f"{size}-{arch}-s{seed}"] = dict(size=size, arch=arch, seed=seed)
    for seed in (0, 1):
        grid[f"p2-smollm2-s{seed}"] = dict(size="p2", arch="mom", seed=seed)
        # control: the same fine-tuning with routes fixed to the source layer order = plain SmolLM2 fine-tuning
        grid[f"p2-fixed-s{seed}"] = dict(size="p2", arch="mom", seed=seed, fixed=True)
    return grid


def pretrain_config(name: str, cell: dict[str, Any]) -> Any:
    from modetune.training.pretrain import PretrainConfig

    out = str(RUNS / name)
    if cell["size"] == "p2":
        return PretrainConfig(output=out, arch="mom", init_from="smollm2-135m", seed=cell["seed"], max_steps=P2_STEPS,
                              batch_size=4, block_size=128, learning_rate=1e-4, save_steps=P2_STEPS,
                              save_total_limit=1, k_per_round=1, router_init_bias=4.0, router_hidden_size=64,
                              eval_max_blocks=EVAL_BLOCKS["p2"], warmup_steps=2)  # fmt: skip
    extra = MOM if cell["arch"] == "mom" else {}
    return PretrainConfig(output=out, arch=cell["arch"], seed=cell["seed"], eval_max_blocks=EVAL_BLOCKS[cell["size"]],
                          **SIZES[cell["size"]], **TRAIN[cell["size"]], **extra)  # fmt: skip


def _save(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


_HELDOUT: dict[tuple, list[dict[str, list[int]]]] = {}


def heldout_blocks(run: Path, tokenizer: Any) -> list[dict[str, list[int]]]:
    """The run's evaluation blocks (the same ones its trainer evaluated on; built once per process)."""
    from modetune.data.corpus import build_corpus
    from modetune.training.pretrain import EVAL_BLOCK_SELECTION, evaluation_blocks

    cfg = json.loads((run / "run.json").read_text())["pretrain_config"]
    key = (tuple(cfg["corpus"]), cfg["tokenizer"], cfg["block_size"], cfg["heldout_fraction"])
    if key not in _HELDOUT:
        _HELDOUT[key] = build_corpus(cfg["corpus"], tokenizer, cfg["block_size"], cfg["heldout_fraction"]).heldout
    blocks, count = _HELDOUT[key], cfg["eval_max_blocks"]
    if json.loads((run / "run.json").read_text())["corpus"].get("eval_block_selection") == EVAL_BLOCK_SELECTION:
        return evaluation_blocks(blocks, count)
    return blocks[:count] if count else blocks  # runs from before the blocks were spread: the first N


@torch.no_grad()
def block_losses(model: Any, blocks: list[dict[str, list[int]]], batch: int = 8) -> list[float]:
    """Mean next-token loss of each held-out block (all blocks have the same length, so their mean is the loss)."""
    model.eval()
    losses: list[float] = []
    for i in range(0, len(blocks), batch):
        ids = torch.tensor([b["input_ids"] for b in blocks[i : i + batch]])
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        losses += nll.mean(1).tolist()
    return losses


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of `values` (resampling blocks)."""
    x = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(0, len(x), (n, len(x)), generator=torch.Generator().manual_seed(seed))
    means = x[idx].mean(1).sort().values
    return [float(means[int(0.025 * n)]), float(means[int(0.975 * n) - 1])]


def perplexity_summary(losses: list[float]) -> dict[str, Any]:
    mean = sum(losses) / len(losses)
    lo, hi = bootstrap_ci(losses)
    return {"loss": mean, "loss_ci95": [lo, hi], "perplexity": math.exp(mean),
            "perplexity_ci95": [math.exp(lo), math.exp(hi)], "blocks": len(losses), "block_losses": losses}  # fmt: skip


@torch.no_grad()
def heldout_loss(model: Any, blocks: list[dict[str, list[int]]], batch: int = 8) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch):
        ids = torch.tensor([b["input_ids"] for b in blocks[i : i + batch]])
        out = model(input_ids=ids, labels=ids, use_cache=False)
        k = ids.numel() - ids.shape[0]
        total += float(out.loss) * k
        n += k
    return total / n


@contextmanager
def pruned(model: Any, attention: list[int] = (), ffn: list[int] = ()):  # type: ignore[assignment]
    """Modules removed from the pool inside the block (yields False if that leaves too few options)."""
    saved = (list(model.config.pruned_attention_modules), list(model.config.pruned_ffn_modules))
    try:
        try:
            model.prune_modules(attention=attention, ffn=ffn)
            ok = True
        except ConfigError:
            ok = False
        yield ok
    finally:
        model.config.pruned_attention_modules, model.config.pruned_ffn_modules = saved


def pruning(model: Any, blocks: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Held-out loss with modules removed from the pool (one at a time, then the least-used share)."""
    cfg = model.config
    with torch.no_grad():
        ids = torch.tensor([b["input_ids"] for b in blocks[:8]])
        out = model(input_ids=ids, use_cache=False)
    loads = {"attention": out.attention_load.tolist(), "ffn": out.ffn_load.tolist()}
    result: dict[str, Any] = {"loss_full_pool": heldout_loss(model, blocks), "load": loads}
    result["single"] = {"attention": [], "ffn": []}
    for kind, n in (("attention", cfg.num_attention_modules), ("ffn", cfg.num_ffn_modules)):
        for j in range(n):
            with pruned(model, **{kind: [j]}) as ok:
                result["single"][kind].append(heldout_loss(model, blocks) if ok else None)
    order_a = sorted(range(cfg.num_attention_modules), key=lambda j: loads["attention"][j])
    order_f = sorted(range(cfg.num_ffn_modules), key=lambda j: loads["ffn"][j])
    half_a, quarter_f = order_a[: cfg.num_attention_modules // 2], order_f[: max(1, cfg.num_ffn_modules // 4)]
    for label, kw in (("half_attention", {"attention": half_a}), ("quarter_ffn", {"ffn": quarter_f}),
                      ("half_attention_quarter_ffn", {"attention": half_a, "ffn": quarter_f})):  # fmt: skip
        with pruned(model, **kw) as ok:
            result[label] = {"removed": kw, "loss": heldout_loss(model, blocks) if ok else None}
    return result


def boolq_examples(split: str, n: int) -> list[tuple[str, bool]]:
    from modetune.data.corpus import _question, shared_data_dir

    records = json.loads((shared_data_dir() / "boolq" / f"{split}.json").read_text())
    return [
        (f"Question: {_question(r['instruction']).rstrip('?')}? Answer:", r["answer"] == "true") for r in records[:n]
    ]


def boolq(run: Path, tokenizer: Any, spec: dict[str, int], seed: int) -> dict[str, Any]:
    """Fine-tune a copy of the pre-trained model on BoolQ questions, then score yes vs no on test questions."""
    from transformers import AutoModelForCausalLM, set_seed

    import modetune.mom  # noqa: F401  (registers the MoM model type)

    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(run), dtype=torch.float32)
    yes, no = (tokenizer(" yes", add_special_tokens=False)["input_ids"][-1],
               tokenizer(" no", add_special_tokens=False)["input_ids"][-1])  # fmt: skip
    train = boolq_examples("train", spec["train"])
    test = boolq_examples("test", spec["test"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    model.train()
    rng = torch.Generator().manual_seed(seed)
    for _ in range(spec["steps"]):
        idx = torch.randint(0, len(train), (16,), generator=rng).tolist()
        chunk = [train[i] for i in idx]
        (ids, mask), _ = _batch(chunk, tokenizer, yes, no, with_answer=False)
        # the LM loss of the answer token only (the head runs on the last position: same loss, 1/T the cost)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits[:, -1]
        gold = torch.tensor([yes if g else no for _, g in chunk])
        loss = torch.nn.functional.cross_entropy(logits.float(), gold)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct = yes_share = 0
    with torch.no_grad():
        for i in range(0, len(test), 32):
            chunk = test[i : i + 32]
            (ids, mask), _ = _batch(chunk, tokenizer, yes, no, with_answer=False)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits[:, -1]
            pred = logits[:, yes] > logits[:, no]
            yes_share += int(pred.sum())
            correct += sum(int(p) == int(gold) for p, (_, gold) in zip(pred.tolist(), chunk, strict=True))
    acc = correct / len(test)
    majority = max(sum(g for _, g in test), sum(not g for _, g in test)) / len(test)
    half = 1.96 * math.sqrt(acc * (1 - acc) / len(test))
    return {"accuracy": acc, "ci95": [acc - half, acc + half], "n": len(test), "majority_baseline": majority,
            "train_examples": len(train), "steps": spec["steps"], "batch": 16, "learning_rate": 3e-4,
            "predicted_yes_share": yes_share / len(test)}  # fmt: skip


def _batch(items: list[tuple[str, bool]], tokenizer: Any, yes: int, no: int, with_answer: bool = True):
    seqs = [tokenizer(q, add_special_tokens=False)["input_ids"][-120:] for q, _ in items]
    if with_answer:
        seqs = [[*s, yes if g else no] for s, (_, g) in zip(seqs, items, strict=True)]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])  # left padding: the answer is last
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    labels = torch.full_like(ids, -100)
    if with_answer:
        labels[:, -1] = ids[:, -1]
    return (ids, mask), labels


def kv_bytes_per_token(model: Any) -> int:
    """Key/value cache bytes per cached token (float32): vanilla L layers; MoM an upper bound, every (round,
    module) slot in use (slots are allocated only for pairs some token picks; a store of only the picked
    modules' keys would need K per round)."""
    from modetune.mom import MoMForCausalLM

    if isinstance(model, MoMForCausalLM):
        return model.config.num_rounds * model.config.num_attention_modules * 2 * model._kv_heads * model._head_dim * 4
    c = model.config
    kv = (c.num_key_value_heads or c.num_attention_heads) * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * 2 * kv * 4


def realized_flops_per_token(model: Any, load: dict[str, list[float]], context: int) -> float:
    """Forward FLOPs per token with the measured SKIP shares: a picked SKIP costs nothing (K picks per router
    and round, of which the SKIP share is free); routers and head as in `forward_flops_per_token`."""
    cfg, fam = model.config, model.config.family_config()
    skip_a = sum(load["attention"][cfg.num_attention_modules :])
    skip_f = sum(load["ffn"][cfg.num_ffn_modules :])
    attn = model.forward_flops_per_token(context, attention_picks=1) - model.forward_flops_per_token(context, 0)
    attn /= cfg.num_rounds
    mlp = 2 * 3 * fam.hidden_size * fam.intermediate_size
    k = cfg.k_per_round
    return model.forward_flops_per_token(context) - cfg.num_rounds * k * (skip_a * attn + skip_f * mlp)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(run: str, ids_file: str, mode: str) -> dict[str, Any]:
    """In a fresh process: peak resident memory added by one forward ('inference': no grad, KV cache kept, head on
    the last position only) or one forward + backward ('train': loss on every position) on the saved ids."""
    from transformers import AutoModelForCausalLM

    import modetune.mom  # noqa: F401

    ids = torch.load(ids_file)
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32)
    with torch.no_grad():  # warm-up on 2 tokens (lazy buffers, kernels), counted in the baseline
        model.eval()(input_ids=ids[:, :2], use_cache=False)
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = _status_bytes("VmRSS")
    if mode == "inference":
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    else:
        model.train()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
    after = _status_bytes("VmHWM")
    return {"peak_rss_increase_bytes": after - before, "tokens": ids.numel()}


def measure_memory(run: Path, blocks: list[dict[str, list[int]]], lengths: tuple[int, ...] = (256, 1024),
                   modes: tuple[str, ...] = ("inference", "train")) -> dict[str, Any]:  # fmt: skip
    """Peak RSS increase of a forward (and forward + backward) at two lengths, each in a fresh process, on held-out
    text (blocks concatenated); per token = the slope between the two lengths."""
    import subprocess
    import tempfile

    flat = [t for b in blocks for t in b["input_ids"]]
    result: dict[str, Any] = {"method": "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the forward, loaded and warmed-up model, fresh process per "
                              "measurement, batch 1, float32, 1 thread", "lengths": list(lengths)}  # fmt: skip
    for mode in modes:
        peaks = []
        for length in lengths:
            with tempfile.NamedTemporaryFile(suffix=".pt") as f:
                torch.save(torch.tensor([flat[:length]]), f.name)
                out = subprocess.run([sys.executable, __file__, "--memory-probe", str(run), f.name, mode],
                                     capture_output=True, text=True, check=True)  # fmt: skip
            peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_increase_bytes"])
        slope = (peaks[-1] - peaks[0]) / (lengths[-1] - lengths[0])
        result[mode] = {"peak_bytes": peaks, "bytes_per_token": slope}
    return result


@contextmanager
def fixed_routes_build(fixed: bool):
    """For the phase-2 control: the pool built from SmolLM2's layers with routes fixed to the layer order (round h ->
    module h, weight 1), i.e. ordinary fine-tuning of SmolLM2 by the same trainer, data order and optimiser."""
    import modetune.training.pretrain as pretrain_module

    original = pretrain_module.build_model
    if fixed:
        pretrain_module.build_model = lambda cfg, tokenizer: original(cfg, tokenizer).fix_routes_to_layers()
    try:
        yield
    finally:
        pretrain_module.build_model = original


def run_cell(name: str, cell: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    import modetune.mom  # noqa: F401
    from modetune.training.pretrain import flops_per_token, load_tokenizer, pretrain
    from modetune.training.trainer import latest_complete_checkpoint

    cfg = pretrain_config(name, cell)
    run = Path(cfg.output)
    results_path = run / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"cell": name, **cell}
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if info.get("status") != "complete":
        cfg.resume = latest_complete_checkpoint(run) is not None
        cfg.overwrite = not cfg.resume
        t0 = time.time()
        with fixed_routes_build(cell.get("fixed", False)):
            pretrain(cfg, argv=["experiments/mom/run.py", "--cells", name])
        results["pretrain_seconds_this_call"] = round(time.time() - t0, 1)
        info = json.loads((run / "run.json").read_text())
    results.update(
        heldout_loss=info["eval_loss"], heldout_perplexity=info["heldout_perplexity"], parameters=info["parameters"],
        forward_flops_per_token=info["forward_flops_per_token"], train_tokens=info["tokens_seen"],
        train_seconds=info["seconds"],
    )  # fmt: skip
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["tokens_per_second"] for r in metrics if "tokens_per_second" in r]
    results["train_tokens_per_second_median"] = sorted(speeds)[len(speeds) // 2] if speeds else None
    _save(results_path, results)
    tokenizer = load_tokenizer(cfg.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(run), dtype=torch.float32).eval()
    results["kv_cache_bytes_per_token"] = kv_bytes_per_token(model)
    blocks = heldout_blocks(run, tokenizer)
    if "heldout" not in results:
        results["heldout"] = perplexity_summary(block_losses(model, blocks))
        _save(results_path, results)
    if cell["size"] == "p2" and "base_heldout" not in results:
        from modetune.loading import load_model_and_tokenizer

        base, _ = load_model_and_tokenizer("smollm2-135m", dtype="float32", device="cpu")
        results["base_heldout"] = perplexity_summary(block_losses(base, blocks))
        results["base_forward_flops_per_token"] = flops_per_token(base, context=len(blocks[0]["input_ids"]) // 2)
        diff = [a - b for a, b in zip(results["heldout"]["block_losses"], results["base_heldout"]["block_losses"],
                                      strict=True)]  # fmt: skip
        results["loss_minus_base"] = {"mean": sum(diff) / len(diff), "ci95": bootstrap_ci(diff)}
        del base
        _save(results_path, results)
    if cell["arch"] == "mom" and not cell.get("fixed") and "routing" not in results:
        with torch.no_grad():
            ids = torch.tensor([b["input_ids"] for b in blocks[:PRUNE_BLOCKS]])
            out = model(input_ids=ids, use_cache=False)
        load = {"attention": out.attention_load.tolist(), "ffn": out.ffn_load.tolist()}
        context = len(blocks[0]["input_ids"]) // 2
        results["routing"] = {"load": load, "router_entropy": float(out.router_entropy),
                              "forward_flops_per_token_realized": realized_flops_per_token(model, load, context)}  # fmt: skip
        _save(results_path, results)
    if cell["arch"] == "mom" and cell["size"] != "p2" and "pruning" not in results:
        results["pruning"] = pruning(model, blocks[:PRUNE_BLOCKS])
        _save(results_path, results)
    if cell["size"] != "p2" and "memory" not in results:
        results["memory"] = measure_memory(run, blocks)
        _save(results_path, results)
    if cell["size"] != "p2" and "boolq" not in results:
        results["boolq"] = boolq(run, tokenizer, BOOLQ[cell["size"]], cell["seed"])
        _save(results_path, results)
    results["status"] = "complete"
    _save(results_path, results)
    return results


def summarize(size: str = "small", seeds: tuple[int, ...] = (0, 1)) -> str:
    """Markdown tables of a size's finished cells (and the phase-2 cells); copies their results.json to
    experiments/mom/results/ (kept in git; the runs themselves are not)."""
    import shutil

    keep = HERE / "results"
    keep.mkdir(exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for name in cells():
        path = RUNS / name / "results.json"
        if path.is_file() and (name.startswith(size + "-") or name.startswith("p2-")):
            done[name] = json.loads(path.read_text())
            shutil.copy(path, keep / f"{name}.json")
    lines = ["| cell | params (total / non-emb.) | train tokens | held-out ppl [95% CI, blocks] | BoolQ acc [95% CI] "
             "(majority) | fwd GFLOPs/token (K-upper / realised) | train tok/s | mem/token infer / train (KB) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in done.items():
        if name.startswith("p2-"):
            continue
        h, b, m = r.get("heldout", {}), r.get("boolq", {}), r.get("memory", {})
        realised = r.get("routing", {}).get("forward_flops_per_token_realized")
        flops = f"{r['forward_flops_per_token'] / 1e9:.4f}" + (f" / {realised / 1e9:.4f}" if realised else "")
        mem = " / ".join(f"{m[k]['bytes_per_token'] / 1024:.0f}" for k in ("inference", "train") if k in m)
        lines.append(
            f"| {name} | {r['parameters']['total']:,} / {r['parameters']['non_embedding']:,} | {r['train_tokens']:,} | "
            f"{h.get('perplexity', float('nan')):.1f} [{h.get('perplexity_ci95', [0, 0])[0]:.1f}, "
            f"{h.get('perplexity_ci95', [0, 0])[1]:.1f}, n={h.get('blocks')}] | "
            f"{100 * b.get('accuracy', float('nan')):.1f} [{100 * b.get('ci95', [0, 0])[0]:.1f}, "
            f"{100 * b.get('ci95', [0, 0])[1]:.1f}] ({100 * b.get('majority_baseline', float('nan')):.1f}) | {flops} | "
            f"{r.get('train_tokens_per_second_median') or float('nan'):.0f} | {mem} |"
        )
    out = ["\n".join(lines), ""]
    # across seeds and paired MoM - vanilla
    rows = ["| quantity | vanilla | MoM | MoM - vanilla |", "|---|---|---|---|"]
    per_arch: dict[str, list[dict[str, Any]]] = {"vanilla": [], "mom": []}
    for arch in per_arch:
        per_arch[arch] = [
            done[f"{size}-{arch}-s{s}"] for s in seeds if "heldout" in done.get(f"{size}-{arch}-s{s}", {})
        ]
    pairs = [s for s in seeds if all("heldout" in done.get(f"{size}-{a}-s{s}", {}) for a in per_arch)]
    if per_arch["vanilla"] and per_arch["mom"]:

        def seed_stats(key: str, arch: str) -> str:
            vals = [key_of(r, key) for r in per_arch[arch]]
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            mean = sum(vals) / len(vals)
            return f"{mean:.3f} (seeds: {', '.join(f'{v:.3f}' for v in vals)})"

        def key_of(r: dict[str, Any], key: str) -> float | None:
            if key == "loss":
                return r["heldout"]["loss"]
            if key == "ppl":
                return r["heldout"]["perplexity"]
            if key == "boolq":
                return 100 * r["boolq"]["accuracy"] if "boolq" in r else None
            return None

        for label, key in (("held-out loss (nats)", "loss"), ("held-out perplexity", "ppl"),
                           ("BoolQ accuracy (%)", "boolq")):  # fmt: skip
            diffs = []
            for s in pairs:
                a, b = key_of(done[f"{size}-mom-s{s}"], key), key_of(done[f"{size}-vanilla-s{s}"], key)
                if a is not None and b is not None:
                    diffs.append(a - b)
            diff = f"{sum(diffs) / len(diffs):+.3f} (seeds: {', '.join(f'{d:+.3f}' for d in diffs)})" if diffs else "-"
            rows.append(f"| {label} | {seed_stats(key, 'vanilla')} | {seed_stats(key, 'mom')} | {diff} |")
        # paired per-block loss differences: per seed, and averaged over seeds (block bootstrap)
        per_seed, pooled = [], None
        for s in pairs:
            d = [a - b for a, b in zip(done[f"{size}-mom-s{s}"]["heldout"]["block_losses"],
                                       done[f"{size}-vanilla-s{s}"]["heldout"]["block_losses"], strict=True)]  # fmt: skip
            lo, hi = bootstrap_ci(d)
            per_seed.append(f"seed {s}: {sum(d) / len(d):+.3f} [{lo:+.3f}, {hi:+.3f}]")
            pooled = d if pooled is None else [x + y for x, y in zip(pooled, d, strict=True)]
        if pooled:
            pooled = [x / len(pairs) for x in pooled]
            lo, hi = bootstrap_ci(pooled)
            rows.append(f"| paired per-block loss difference MoM - vanilla, 95% block-bootstrap CI | | | "
                        f"{'; '.join(per_seed)}; mean of seeds {sum(pooled) / len(pooled):+.3f} [{lo:+.3f}, {hi:+.3f}] |")  # fmt: skip
    out += ["\n".join(rows), ""]
    for name, r in done.items():
        if name.startswith("p2-") and "heldout" in r:
            h, b = r["heldout"], r.get("base_heldout", {})
            diff = r.get("loss_minus_base", {})
            out.append(
                f"{name}: MoM ppl {h['perplexity']:.3f} [{h['perplexity_ci95'][0]:.3f}, {h['perplexity_ci95'][1]:.3f}] vs "
                f"base {b.get('perplexity', float('nan')):.3f} on the same {h['blocks']} blocks; loss difference "
                f"{diff.get('mean', float('nan')):+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]; train tokens {r['train_tokens']:,}; fwd FLOPs/token "
                f"{r['forward_flops_per_token'] / 1e9:.4f} G (K-upper), "
                f"{r.get('routing', {}).get('forward_flops_per_token_realized', float('nan')) / 1e9:.4f} G realised, base "
                f"{r.get('base_forward_flops_per_token', float('nan')) / 1e9:.4f} G"
            )  # fmt: skip
    for seed in seeds:
        mom, fixed = done.get(f"p2-smollm2-s{seed}", {}), done.get(f"p2-fixed-s{seed}", {})
        if "heldout" in mom and "heldout" in fixed:
            d = [a - b for a, b in zip(mom["heldout"]["block_losses"], fixed["heldout"]["block_losses"], strict=True)]
            lo, hi = bootstrap_ci(d)
            out.append(
                f"p2 seed {seed}: MoM - fixed-route fine-tuning, per-block loss {sum(d) / len(d):+.4f} [{lo:+.4f}, {hi:+.4f}]"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=[], help="cells to run (see --list)")
    parser.add_argument("--all", action="store_true", help="run every cell")
    parser.add_argument("--list", action="store_true", help="list the cells and their state")
    parser.add_argument("--summary", action="store_true", help="print the RESULTS tables of the finished cells")
    parser.add_argument("--memory-probe", nargs=3, metavar=("RUN", "IDS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.summary:
        print(summarize())
        return 0
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return 0
    grid = cells()
    if args.list:
        for name in grid:
            path = RUNS / name / "results.json"
            state = json.loads(path.read_text()).get("status", "partial") if path.is_file() else "not run"
            print(f"{name:24s} {state}")
        return 0
    names = list(grid) if args.all else args.cells
    unknown = [n for n in names if n not in grid]
    if unknown:
        print(f"unknown cells: {unknown}; see --list", file=sys.stderr)
        return 2
    for name in names:
        print(json.dumps(run_cell(name, grid[name]), indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "experiments/mom/run.py"))
