"""The Mixture-of-Modules experiment of issue 15, as a resumable grid of cells.

    OMP_NUM_THREADS=1 python experiments/mom/run.py --cells tiny-vanilla-s0 tiny-mom-s0   # what was run here
    python experiments/mom/run.py --list                                                   # every cell
    python experiments/mom/run.py --all                                                    # the full grid

Each cell is one `modetune pretrain` run (resumed if it was interrupted, skipped if complete), followed by
the measurements, each written to the cell's `results.json` as soon as it is done (re-running a cell only
does what is missing):

* held-out perplexity (the corpus's fixed per-document split);
* cost: forward FLOPs per token (the modules a token runs; MoM counts K per router and round, an upper bound
  when SKIPs are picked), parameters, KV-cache bytes per token, training tokens/s;
* BoolQ: the pre-trained model fine-tuned on BoolQ questions (train file, "Question: ...? Answer:" -> " yes" /
  " no"), accuracy on a fixed subset of the test file by comparing the two answers' log-probabilities. The
  LLM-Adapters BoolQ files carry no passages, so this measures question-only BoolQ;
* pruning (MoM): held-out loss with each attention / FFN module removed from the pool, and with the least-used
  half of the attention modules and quarter of the FFN modules removed (the paper's claim).

Phase 2 ("p2-*" cells) builds the pool from SmolLM2-135M's 30 layers and trains on the same corpus; the base
model's own held-out perplexity is measured on the same blocks. Runs go to experiments/mom/runs/ (not in git).
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

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"

SIZES = {  # d, layers, heads, ffn; total parameters are dominated by the 49k-token embedding (tied)
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192),
    "10m": dict(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512),
    "30m": dict(hidden_size=384, num_layers=8, num_heads=6, intermediate_size=1024),
}
TRAIN = {  # equal training tokens for both architectures of a size
    "tiny": dict(max_steps=60, batch_size=8, block_size=128, learning_rate=3e-3, warmup_steps=6, save_steps=20),
    "10m": dict(max_steps=1500, batch_size=16, block_size=256, learning_rate=2e-3, warmup_steps=100, save_steps=100),
    "30m": dict(max_steps=3000, batch_size=16, block_size=256, learning_rate=1e-3, warmup_steps=200, save_steps=100),
}
MOM = dict(num_skip_modules=1, k_per_round=2, router="gru", router_hidden_size=64)
EVAL_BLOCKS = {"tiny": 32, "10m": 0, "30m": 0}
BOOLQ = {"tiny": dict(train=256, test=200, steps=30), "10m": dict(train=4000, test=1000, steps=300),
         "30m": dict(train=4000, test=1000, steps=300)}  # fmt: skip


def cells() -> dict[str, dict[str, Any]]:
    grid = {}
    for size in SIZES:
        for arch in ("vanilla", "mom"):
            for seed in (0, 1):
                grid[f"{size}-{arch}-s{seed}"] = dict(size=size, arch=arch, seed=seed)
    for seed in (0, 1):
        grid[f"p2-smollm2-s{seed}"] = dict(size="p2", arch="mom", seed=seed)
    return grid


def pretrain_config(name: str, cell: dict[str, Any]) -> Any:
    from modetune.mom.pretrain import PretrainConfig

    out = str(RUNS / name)
    if cell["size"] == "p2":
        return PretrainConfig(output=out, arch="mom", init_from="smollm2-135m", seed=cell["seed"], max_steps=200,
                              batch_size=4, block_size=256, learning_rate=1e-4, save_steps=20, k_per_round=1,
                              router_init_bias=4.0, router_hidden_size=64)  # fmt: skip
    extra = MOM if cell["arch"] == "mom" else {}
    return PretrainConfig(output=out, arch=cell["arch"], seed=cell["seed"], eval_max_blocks=EVAL_BLOCKS[cell["size"]],
                          **SIZES[cell["size"]], **TRAIN[cell["size"]], **extra)  # fmt: skip


def _save(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def heldout_blocks(run: Path, tokenizer: Any) -> list[dict[str, list[int]]]:
    from modetune.data.corpus import build_corpus

    cfg = json.loads((run / "run.json").read_text())["pretrain_config"]
    corpus = build_corpus(cfg["corpus"], tokenizer, cfg["block_size"], cfg["heldout_fraction"])
    return corpus.heldout[: cfg["eval_max_blocks"]] if cfg["eval_max_blocks"] else corpus.heldout


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
    from modetune.errors import ConfigError

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
        ids, labels = _batch([train[i] for i in idx], tokenizer, yes, no)
        loss = model(input_ids=ids[0], attention_mask=ids[1], labels=labels, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 32):
            chunk = test[i : i + 32]
            (ids, mask), _ = _batch(chunk, tokenizer, yes, no, with_answer=False)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
            pred = logits[:, yes] > logits[:, no]
            correct += sum(int(p) == int(gold) for p, (_, gold) in zip(pred.tolist(), chunk, strict=True))
    acc = correct / len(test)
    majority = max(sum(g for _, g in test), sum(not g for _, g in test)) / len(test)
    half = 1.96 * math.sqrt(acc * (1 - acc) / len(test))
    return {"accuracy": acc, "ci95": [acc - half, acc + half], "n": len(test), "majority_baseline": majority,
            "train_examples": len(train), "steps": spec["steps"]}  # fmt: skip


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


def run_cell(name: str, cell: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    import modetune.mom  # noqa: F401
    from modetune.mom.pretrain import load_tokenizer, pretrain
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
    if cell["size"] == "p2" and "base_heldout_loss" not in results:
        from modetune.loading import load_model_and_tokenizer

        base, _ = load_model_and_tokenizer("smollm2-135m", dtype="float32", device="cpu")
        results["base_heldout_loss"] = heldout_loss(base, blocks)
        results["base_heldout_perplexity"] = math.exp(results["base_heldout_loss"])
        _save(results_path, results)
    if cell["arch"] == "mom" and "pruning" not in results:
        results["pruning"] = pruning(model, blocks)
        _save(results_path, results)
    if cell["size"] != "p2" and "boolq" not in results:
        results["boolq"] = boolq(run, tokenizer, BOOLQ[cell["size"]], cell["seed"])
        _save(results_path, results)
    results["status"] = "complete"
    _save(results_path, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=[], help="cells to run (see --list)")
    parser.add_argument("--all", action="store_true", help="run every cell")
    parser.add_argument("--list", action="store_true", help="list the cells and their state")
    args = parser.parse_args(argv)
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
    sys.exit(main())
