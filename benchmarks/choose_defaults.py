"""Measure the choices the paper leaves open, to pick modetune's defaults.

1. Initial ensemble cross-entropy of an untrained k=3 MoDE on SmolLM2-135M over GSM8K worked solutions:
   router_init 'uniform' vs 'final' (and the base model).
2. Short LoRA + MoDE runs on the built-in arithmetic task (the demo's), varying router_init and the
   distillation weight lambda: held-out accuracy and ensemble cross-entropy after training.

    python benchmarks/choose_defaults.py [--steps 40] [--gsm8k ../shared/data/gsm8k_openai/train.jsonl]

Writes benchmarks/defaults.json and prints a markdown table (copied into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from modetune import MoDEConfig, get_mode_model
from modetune.analysis import layer_losses
from modetune.data import generate_problems, load_dataset_file
from modetune.loading import load_model_and_tokenizer, resolve_model

ROOT = Path(__file__).resolve().parents[1]


def initial_losses(gsm8k: Path, n: int) -> dict[str, float]:
    model, tok = load_model_and_tokenizer("smollm2-135m")
    examples = load_dataset_file(gsm8k)[:n]
    out = {}
    for init in ("uniform", "final"):
        mode = get_mode_model(model, MoDEConfig(num_layers=3, router_init=init))
        losses = layer_losses(mode, tok, examples, cutoff_len=384)
        out[f"ensemble_{init}"] = losses["ensemble"]
        out["final_layer"] = losses["layers"][29]
        out.update({f"layer_{k}": v for k, v in losses["layers"].items()})
    return out


def short_run(steps: int, router_init: str, distill_weight: float, test: list, seed: int = 0) -> dict[str, float]:
    from modetune.demo import _accuracy
    from modetune.runs import load_run
    from modetune.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            output=tmp, model=str(resolve_model("smollm2-135m").path), data=["synthetic:2000:1"], cutoff_len=128,
            max_steps=steps, batch_size=8, learning_rate=1e-3, warmup_steps=4, save_steps=0, seed=seed, overwrite=True,
        )  # fmt: skip
        started = time.time()
        train(cfg, MoDEConfig(num_layers=3, router_init=router_init, distill_weight=distill_weight), argv=[])
        seconds = time.time() - started
        model, tok, _ = load_run(tmp)
        acc = _accuracy(model, tok, test)
        losses = layer_losses(model, tok, test, cutoff_len=128)
    return {"accuracy": acc["accuracy"], "ensemble_ce": losses["ensemble"], "train_seconds": seconds,
            **{f"ce_layer_{k}": v for k, v in losses["layers"].items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k_openai" / "train.jsonl"))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict = {"initial": initial_losses(Path(args.gsm8k), args.n)}
    print(json.dumps(results["initial"], indent=2))
    if not args.skip_training:
        test = generate_problems(100, seed=0, difficulty=1, split="test")
        results["runs"] = {}
        for init, lam in (("final", 1.0), ("uniform", 1.0), ("final", 0.1)):
            key = f"router_init={init}, distill_weight={lam}"
            results["runs"][key] = short_run(args.steps, init, lam, test)
            print(key, json.dumps(results["runs"][key]))
    (ROOT / "benchmarks" / "defaults.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
