"""Measure the choices the paper leaves open, to pick modetune's defaults.

1. Initial ensemble cross-entropy of an untrained k=3 MoDE on SmolLM2-135M over GSM8K worked solutions:
   router_init 'uniform' vs 'final' (and the base model).
2. Short LoRA + MoDE runs on the built-in arithmetic task (the demo's), varying router_init and the
   distillation weight lambda (1.0, 0.1, 0 = no distillation): held-out accuracy, ensemble and per-layer
   cross-entropy after training.

    python benchmarks/choose_defaults.py [--steps 40] [--seeds 0 1] [--gsm8k ../shared/data/gsm8k_openai/train.jsonl]
                                         [--skip-initial] [--skip-training] [--redo]

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


GRID = (("final", 1.0), ("final", 0.3), ("final", 0.1), ("final", 0.0), ("uniform", 1.0), ("uniform", 0.1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k_openai" / "train.jsonl"))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds per setting")
    parser.add_argument("--skip-initial", action="store_true", help="keep the untrained-ensemble figures on file")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--redo", action="store_true", help="re-run training settings already in defaults.json")
    args = parser.parse_args()
    out_path = ROOT / "benchmarks" / "defaults.json"
    results: dict = json.loads(out_path.read_text()) if out_path.exists() else {}
    torch.manual_seed(0)
    if not args.skip_initial or "initial" not in results:
        results["initial"] = initial_losses(Path(args.gsm8k), args.n)
        print(json.dumps(results["initial"], indent=2))
    if not args.skip_training:
        test = generate_problems(100, seed=0, difficulty=1, split="test")
        done = {} if args.redo else results.get("runs", {})
        results["runs"] = {}
        results["training_setup"] = {
            "steps": args.steps, "seeds": args.seeds, "data": "synthetic:2000:1", "test": "100 held-out problems",
            "peft": "lora (TrainConfig defaults)", "batch_size": 8, "learning_rate": 1e-3, "num_layers": 3,
        }  # fmt: skip
        for seed in args.seeds:
            for init, lam in GRID:
                key = f"router_init={init}, distill_weight={lam}, seed={seed}"
                results["runs"][key] = done.get(key) or short_run(args.steps, init, lam, test, seed=seed)
                print(key, json.dumps(results["runs"][key]), flush=True)
                out_path.write_text(json.dumps(results, indent=2) + "\n")  # keep what is done if interrupted
    out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
