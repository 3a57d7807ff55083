"""`modetune inspect`: per-layer lens table, routing maps (PNG + one self-contained HTML page) and training curves.

    modetune inspect (--model MODEL | --run RUN_DIR) (--data FILE | --task NAME | --prompt TEXT)
                     [--limit N] --output DIR

Every input is checked before a model is loaded. The computation lives in `modetune.analysis.lens`, the
files in `modetune.analysis.report`; this module parses options, loads, and prints.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modetune.analysis.curves import plot_training_curves
from modetune.analysis.lens import example_batches, inspect_batches, prompt_batches
from modetune.analysis.probe import collect_late_logits, probe_markdown, probe_router
from modetune.analysis.report import (
    plot_lens,
    plot_routing_by_class,
    plot_routing_heatmap,
    write_json,
    write_lens_tables,
    write_routing_html,
)
from modetune.cli.options import setup_logging
from modetune.data import Example, generate_problems, load_dataset_file
from modetune.errors import CheckpointError, ConfigError, DataError
from modetune.evaluation.tasks import find_task_file, get_task
from modetune.loading import load_model_and_tokenizer, resolve_model
from modetune.methods import saved_method
from modetune.mode import SPEC as MODE
from modetune.mode import get_mode_model
from modetune.mode.config import MoDEConfig
from modetune.runs import find_run_root, load_run, read_run_info

_EPILOG = """\
data:  --data FILE (any format `modetune train` reads), --data synthetic[:N[:LEVEL]] (held-out generated
       problems: the test split, disjoint from training), --task NAME (its test file, found as in
       `modetune eval`; the scored text is the file's output field, a model-written rationale in
       LLM-Adapters' arithmetic test files; records without one are scored on their gold answer), or
       --prompt TEXT (raw text, no template: every token after the first is scored; repeatable).
files: lens.json (everything), lens.csv / lens.md (per-layer table), lens.png, routing.png,
       routing_by_class.png, routing.html, training_curves.png (--run with metrics);
       router_probe.json / .md with --router-probe.
router probe (--router-probe): on half of the examples, fit fresh routers that read y_L (the paper's input),
       every late layer's state, or each layer's confidence (entropy, max log-prob, agreement with the final
       layer); report their cross-entropy on the other half next to the final layer alone and the oracle:
       how much of the oracle's headroom a router could reach (modetune.analysis.probe).
examples:
  modetune inspect --run runs/demo --data synthetic:50:1 --output out/inspect-demo
  modetune inspect --model smollm2-135m --task gsm8k --limit 50 --output out/inspect-base
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="per-layer lens table, routing maps and training curves of a model or a MoDE run",
        description="Look inside a model or a MoDE run: every layer's cross-entropy and top-1 accuracy (plain "
        "logit lens, and the late layers through their MoDE adapters), the oracle figure, what the router picks, "
        "routing maps (PNG and one self-contained HTML page) and a run's training curves.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="base model spec (as `modetune train --model`); inspected untrained")
    which.add_argument(
        "--run", dest="run_dir", metavar="RUN_DIR", help="a run directory from `modetune train` (compared to its base)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE", help="dataset file, or synthetic[:N[:LEVEL]]")
    source.add_argument("--task", metavar="NAME", help="a benchmark name (its test file, as `modetune eval` finds it)")
    source.add_argument(
        "--prompt", action="append", metavar="TEXT", help="raw text to inspect (every token scored); repeatable"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="where to look for --task files (default: as modetune eval)")
    parser.add_argument(
        "--limit", type=int, default=100, metavar="N", help="seeded random subset of N records (default: 100)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the --limit subset and of synthetic data (default: 0)"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the files")
    parser.add_argument(
        "--num-layers",
        type=int,
        default=3,
        metavar="K",
        help="with --model: ensemble size k of the untrained MoDE wrapper (default: 3)",
    )
    parser.add_argument("--no-base", action="store_true", help="with --run: skip the base model's columns")
    parser.add_argument(
        "--template",
        choices=["alpaca", "chat"],
        default="alpaca",
        help="prompt template for --data/--task (default: alpaca)",
    )
    parser.add_argument("--cutoff-len", type=int, default=256, help="maximum tokens per example (default: 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (default: 8)")
    parser.add_argument("--top-n", type=int, default=5, help="top predictions per layer in the HTML page (default: 5)")
    parser.add_argument("--map-examples", type=int, default=20, help="examples shown in the routing maps (default: 20)")
    parser.add_argument(
        "--router-probe",
        action="store_true",
        help="also fit held-out probe routers on richer inputs (router_probe.md; see the epilog)",
    )
    parser.add_argument(
        "--probe-tokens",
        type=int,
        default=2048,
        metavar="N",
        help="labelled tokens the probe keeps (whole examples; their logits are held in memory: "
        "N x k x vocab x 4 bytes) (default: 2048)",
    )
    parser.add_argument("--dtype", default="auto", help="model dtype (auto, float32, bfloat16, float16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    parser.set_defaults(run=run)


def _router_probe(model: Any, batches: list[Any], max_tokens: int, out: Path, console: Any) -> list[Path]:
    if len(model.layer_indices) < 2:
        raise ConfigError("--router-probe needs k >= 2 late layers to route between; give a run or --num-layers 2+")
    console.print(f"router probe: collecting up to {max_tokens} labelled tokens, fitting probes ...")
    try:
        result = probe_router(collect_late_logits(model, batches, max_tokens=max_tokens))
    except ValueError as err:
        raise ConfigError(f"--router-probe: {err}; give more data (--limit) or more --probe-tokens") from None
    table = probe_markdown(result)
    console.print(table)
    md = out / "router_probe.md"
    md.write_text("# Router probe\n\n" + table)
    return [write_json(result, out / "router_probe.json"), md]


def _check_args(args: argparse.Namespace) -> None:
    for name, low in (
        ("limit", 1),
        ("num_layers", 1),
        ("cutoff_len", 2),
        ("batch_size", 1),
        ("top_n", 1),
        ("map_examples", 0),
        ("probe_tokens", 1),
    ):
        value = getattr(args, name)
        if value < low:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is too small; allowed: an integer >= {low}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a directory")
    if args.prompt is not None and not all(p.strip() for p in args.prompt):
        raise ConfigError("--prompt is empty; give some text")


def _load_examples(args: argparse.Namespace) -> tuple[list[Any] | None, list[str] | None, str]:
    """(examples, prompts, description) of the data source, validated before any model is loaded."""
    if args.prompt is not None:
        return None, list(args.prompt), f"{len(args.prompt)} prompt(s)"
    if args.data is not None and args.data.split(":")[0] == "synthetic":
        parts = args.data.split(":")
        try:
            n = int(parts[1]) if len(parts) > 1 and parts[1] else args.limit
        except ValueError:
            raise ConfigError(f"--data {args.data}: N must be an integer (synthetic[:N[:LEVEL]])") from None
        level: int | str = parts[2] if len(parts) > 2 else 1
        level = int(level) if isinstance(level, str) and level.isdigit() else level
        examples = generate_problems(min(n, args.limit), seed=args.seed, difficulty=level, split="test")
        return examples, None, f"{len(examples)} held-out synthetic problems (level {level}, seed {args.seed})"
    if args.task is not None:
        spec = get_task(args.task)
        path = find_task_file(spec, args.data_dir)
        what = f"task {spec.name} ({path})"
    else:
        path = Path(args.data)
        if not path.is_file():
            raise ConfigError(f"--data {path} does not exist; give a dataset file or synthetic[:N[:LEVEL]]")
        what = str(path)
    records = load_dataset_file(path)
    fixed = []
    for ex in records:
        if not ex.response.strip():
            if not ex.answer:
                continue
            ex = Example(ex.instruction, ex.input, str(ex.answer), ex.answer, ex.source, ex.index)
        fixed.append(ex)
    if not fixed:
        raise DataError(f"{path}: no record has a response or gold answer to score")
    if len(fixed) > args.limit:
        rng = random.Random(args.seed)
        fixed = [fixed[i] for i in sorted(rng.sample(range(len(fixed)), args.limit))]
    return fixed, None, f"{len(fixed)} records of {what}"


def _check_model_source(args: argparse.Namespace) -> dict[str, Any] | None:
    """The run's info (run.json), or None for --model; errors name the problem before anything loads."""
    if args.run_dir is None:
        resolve_model(args.model)
        return None
    info = read_run_info(find_run_root(args.run_dir))
    spec = saved_method(args.run_dir)
    if spec is None:
        raise CheckpointError(f"{args.run_dir} holds no trained model yet (mode_config.json is missing)")
    if spec.name != MODE.name:
        raise CheckpointError(
            f"{args.run_dir} is a {spec.title} run; `modetune inspect` looks inside MoDE runs (late layers and "
            "their router). Evaluate it with `modetune eval --run`"
            + (" or measure its skipping with benchmarks/mod_bench.py" if spec.name == "mod" else "")
        )
    return info


def run(args: argparse.Namespace) -> int:
    setup_logging()
    _check_args(args)
    examples, prompts, data_desc = _load_examples(args)
    info = _check_model_source(args)
    console = Console()
    models, tokenizer, subject, info = _load_models(args, info)
    if prompts is not None:
        batches = prompt_batches(prompts, tokenizer, cutoff_len=args.cutoff_len)
    else:
        batches = example_batches(
            examples, tokenizer, template=args.template, cutoff_len=args.cutoff_len, batch_size=args.batch_size
        )
    results = {}
    for name, (model, tok) in models.items():
        console.print(f"inspecting {name} on {data_desc} ...")
        results[name] = inspect_batches(model, tok, batches, top_n=args.top_n, map_examples=args.map_examples)
    main_name = "run" if "run" in results else "model"
    files = _write_files(results, main_name, subject, data_desc, Path(args.output))
    if args.router_probe:
        files += _router_probe(models[main_name][0], batches, args.probe_tokens, Path(args.output), console)
    if info is not None:
        metrics = Path(info["run_dir"]) / "metrics.jsonl"
        if metrics.is_file():
            files.append(plot_training_curves(metrics, Path(args.output) / "training_curves.png"))
    _print_summary(console, results, results[main_name], subject, data_desc)
    print("files written:")
    for path in files:
        print(f"  {path}")
    return 0


def _load_models(
    args: argparse.Namespace, info: dict[str, Any] | None
) -> tuple[dict[str, tuple[Any, Any]], Any, str, dict[str, Any] | None]:
    """({name: (MoDE model, tokenizer)}, tokenizer, subject, run info): a run and, unless --no-base, its base
    wrapped with the run's own MoDE configuration freshly initialised (where its training started); or a
    --model wrapped untrained with k = --num-layers."""
    models: dict[str, tuple[Any, Any]] = {}
    if args.run_dir is None:
        base, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
        models["model"] = (get_mode_model(base, MoDEConfig(num_layers=args.num_layers)), tokenizer)
        return models, tokenizer, f"model {args.model} (untrained MoDE wrapper, k={args.num_layers})", info
    tuned, tokenizer, info = load_run(args.run_dir, dtype=args.dtype, device=args.device)
    if not args.no_base:
        record = info.get("base_model", {})
        spec = record.get("path") if record.get("path") and Path(record["path"]).exists() else record.get("spec")
        base, _ = load_model_and_tokenizer(spec, dtype=args.dtype, device=args.device)
        start = MoDEConfig.from_dict(tuned.mode_config.to_dict())
        models["base"] = (get_mode_model(base, start), tokenizer)
    models["run"] = (tuned, tokenizer)
    return models, tokenizer, f"run {info['run_dir']}", info


def _write_files(results: dict[str, Any], main_name: str, subject: str, data_desc: str, out: Path) -> list[Path]:
    """lens.json, the lens tables and plot, and the routing maps (PNG and one HTML page) of the main model."""
    out.mkdir(parents=True, exist_ok=True)
    main = results[main_name]
    return [
        write_json({"subject": subject, "data": data_desc, "results": results}, out / "lens.json"),
        *write_lens_tables(results, out),
        plot_lens(results, out / "lens.png"),
        plot_routing_heatmap(main, out / "routing.png"),
        plot_routing_by_class(main, out / "routing_by_class.png"),
        write_routing_html(
            main, out / "routing.html", f"modetune inspect: routing map of {main_name}", f"{subject}, {data_desc}"
        ),
    ]


def _print_summary(console: Console, results: dict[str, Any], main: dict[str, Any], subject: str, data: str) -> None:
    """Per late layer: lens and adapter CE/accuracy and the router's weight, per model; then the oracle line."""
    table = Table(title=f"{subject}: late layers on {data} ({main['tokens']} labelled tokens)")
    table.add_column("layer", justify="right")
    for name in results:
        table.add_column(f"{name} lens CE / acc", justify="right")
        table.add_column(f"{name} adapter CE / acc", justify="right")
        table.add_column(f"{name} router mean / argmax", justify="right")
    for layer in main["late_layers"]:
        cells = [str(layer)]
        for res in results.values():
            row = res["layers"][layer]
            cells += [
                f"{row['lens_ce']:.3f} / {row['lens_acc']:.1%}",
                f"{row['adapter_ce']:.3f} / {row['adapter_acc']:.1%}",
                f"{row['router_mean']:.2f} / {row['router_argmax_share']:.0%}",
            ]
        table.add_row(*cells)
    ensemble = [f"{res['ensemble']['ce']:.3f} / {res['ensemble']['acc']:.1%}" for res in results.values()]
    table.add_row("ensemble", *[x for e in ensemble for x in ("", e, "")])
    console.print(table)
    for name, res in results.items():
        o = res["oracle"]
        console.print(
            f"{name}: a non-final late layer beats the final layer on {o['late_beats_final_share']:.1%} of tokens; "
            f"oracle CE {o['oracle_ce']:.3f} vs final {res['final']['ce']:.3f} vs ensemble {res['ensemble']['ce']:.3f};"
            f" router entropy {res['router']['entropy']:.3f} nats"
        )
