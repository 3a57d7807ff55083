"""`modetune eval`: accuracy on arithmetic / commonsense benchmarks (LLM-Adapters protocol).

    modetune eval (--model MODEL | --run RUN_DIR) --task NAME [--task NAME ...] [--data FILE_OR_DIR]
                  [--limit N] [--scoring generate|loglikelihood] --output OUT_DIR

Writes OUT_DIR/results.json and OUT_DIR/predictions.jsonl and prints a table. All logic lives in
`modetune.evaluation`; this module only parses options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console

from modetune.card import record_evaluation
from modetune.cli.options import add_dataclass_options, dataclass_from_args
from modetune.errors import ConfigError, ModetuneError
from modetune.evaluation.config import GROUPS, EvalConfig, group_fields
from modetune.evaluation.pipeline import _resolve_files, build_prompt_text, evaluate_model, render_table
from modetune.evaluation.runner import PRESETS, GenerationSettings
from modetune.evaluation.tasks import (
    define_custom_tasks,
    get_task,
    load_task_examples,
    resolve_task_names,
    select_subset,
)
from modetune.loading import load_model_and_tokenizer, resolve_model
from modetune.runs import find_run_root, load_run, read_run_info

_EPILOG = """\
tasks: gsm8k svamp aqua multiarith addsub singleeq mawps (arithmetic);
       boolq piqa siqa hellaswag winogrande arc_easy arc_challenge openbookqa (commonsense);
       mathqa; groups: arithmetic, commonsense, all (members whose data file is found).
       any other LLM-Adapters-format file: --task NAME --answer-type number|letter|label [--choices ...] --data FILE.
data:  without --data, NAME/test.json is searched under $MODETUNE_DATA_DIR, ./data, ./shared/data,
       ../shared/data and the cache of `modetune data fetch NAME` (~/.cache/modetune/data).
       --data DIR searches DIR (also DIR/dataset/<LLM-Adapters name>/test.json);
       --data FILE is the file of the single task; --data NAME=FILE gives one task's file.
examples:
  modetune eval --model smollm2-135m --task gsm8k --task boolq --limit 200 --output out/base
  modetune eval --run runs/mode-lora --task commonsense --scoring loglikelihood --output out/mode
  modetune compare out/base out/mode
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model or a trained run on arithmetic/commonsense reasoning tasks",
        description="Accuracy with 95% CIs on LLM-Adapters-format test sets, by generation + answer\n"
        "extraction (the literature's protocol) or by log-likelihood multiple choice.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for group in GROUPS:
        others = tuple(f.name for f in fields(EvalConfig) if f.name not in group_fields(group))
        add_dataclass_options(parser, EvalConfig, group, skip=others)
    parser.set_defaults(run=run)


def parse_data_args(values: list[str] | None) -> Any:
    """``--data`` values -> None, one path, or {task: path, "*": default path}."""
    if not values:
        return None
    mapping: dict[str, Path] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and not Path(value).exists():
            mapping[get_task(name).name] = Path(rest)
        elif "*" in mapping:
            raise ConfigError("--data: give at most one plain FILE_OR_DIR; use NAME=FILE for the others")
        else:
            mapping["*"] = Path(value)
    if list(mapping) == ["*"]:
        return mapping["*"]
    return mapping


def _generation_settings(args: EvalConfig) -> GenerationSettings:
    values = dict(PRESETS[args.preset])
    for key in ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return GenerationSettings(**values)


def _check_inputs(args: EvalConfig, specs: list[Any], data: Any) -> dict[str, list[Any]]:
    """Every option, test file, model spec and run directory checked before a model is loaded; returns the
    questions that will be evaluated, per task."""
    args.validate()
    if args.scoring == "loglikelihood":
        numeric = [s.name for s in specs if not s.multiple_choice]
        if numeric:
            raise ConfigError(
                f"log-likelihood scoring needs multiple-choice tasks; {', '.join(numeric)} "
                "have free-form numeric answers (use --scoring generate for them)"
            )
    files = _resolve_files(specs, data)  # found and parsed (they are small) before any model time is spent
    selected = {}
    for spec in specs:
        examples = load_task_examples(spec, files[spec.name], with_choices=args.scoring == "loglikelihood")
        selected[spec.name] = select_subset(examples, args.limit, args.seed) if examples else []
    if args.run_dir:
        read_run_info(find_run_root(args.run_dir))
    else:
        resolve_model(args.model)
    return selected


def _check_context(model: Any, tokenizer: Any, selected: dict[str, list[Any]], args: EvalConfig) -> str | None:
    """A warning when prompts do not fit the model's context (RoPE models still run past it, unreliably)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int):
        return None
    new = (args.max_new_tokens or 0) if args.scoring == "generate" else 0
    too_long = [
        (task, ex.index)
        for task, examples in selected.items()
        for ex in examples
        if len(tokenizer(build_prompt_text(ex, args.template, tokenizer))["input_ids"]) + new > context
    ]
    if not too_long:
        return None
    shown = ", ".join(f"{task} #{index}" for task, index in too_long[:5]) + (" ..." if len(too_long) > 5 else "")
    return (
        f"{len(too_long)} question(s) do not fit the model's context of {context} tokens with their prompt"
        f"{f' and {new} new tokens' if new else ''} ({shown}); their results are unreliable"
    )


def run(namespace: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "peft", "accelerate", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console(stderr=True)
    args = dataclass_from_args(EvalConfig, namespace)
    if args.answer_type or args.choices:
        define_custom_tasks(args.tasks, args.answer_type, args.choices, args.data)
    data = parse_data_args(args.data)
    specs = resolve_task_names(args.tasks, data)
    settings = _generation_settings(args)
    selected = _check_inputs(args, specs, data)

    model, tokenizer, model_info, run_train_files = _load(args, console)
    context_warning = _check_context(model, tokenizer, selected, args)
    if context_warning:
        console.print(f"[yellow]warning:[/] {context_warning}")
    train_files = _contamination_files([*args.train_data, *run_train_files], args, console)
    report = evaluate_model(
        model,
        tokenizer,
        specs,
        data=data,
        limit=args.limit,
        seed=args.seed,
        scoring=args.scoring,
        generation=settings,
        ll_style=args.ll_style,
        ll_norm=args.ll_norm,
        template=args.template,
        batch_size=args.batch_size,
        train_files=train_files or None,
        output_dir=args.output,
        model_info={**model_info, "argv": ["modetune", *sys.argv[1:]]},
        progress=args.progress,
        dora_cache=args.dora_cache,
    )
    _report(report.results, args, console)
    return 0


def _load(args: EvalConfig, console: Console) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """(model, tokenizer, what results.json says of the model, the run's own training files)."""
    if args.run_dir:
        console.print(f"loading run {args.run_dir} ...")
        model, tokenizer, info = load_run(args.run_dir, dtype=args.dtype, device=args.device, base=args.base)
        model_info = {
            "run_dir": str(info.get("run_dir", args.run_dir)),
            "base_model": info.get("base_model"),
            "train_files": info.get("train_files"),
        }
        return model, tokenizer, model_info, [str(f) for f in info.get("train_files") or []]
    console.print(f"loading model {args.model} ...")
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    return model, tokenizer, {"spec": args.model}, []


def _contamination_files(candidates: list[str], args: EvalConfig, console: Console) -> list[str]:
    """The training files to check for test questions: none with --no-contamination-check; missing ones
    are named in a warning and skipped."""
    if not args.contamination_check:
        return []
    missing = [f for f in candidates if not Path(f).is_file()]
    if missing:
        console.print(f"[yellow]warning:[/] training file(s) not found, not checked for overlap: {', '.join(missing)}")
    return [f for f in candidates if f not in missing]


def _report(results: dict[str, Any], args: EvalConfig, console: Console) -> None:
    """The table, a contamination warning, where the results are, and the run's model card updated."""
    Console().print(render_table(results))
    contamination = results.get("contamination")
    if contamination and contamination["n_overlap"]:
        per_task = ", ".join(f"{t}: {c}" for t, c in contamination["per_task"].items() if c)
        console.print(
            f"[bold yellow]warning:[/] {contamination['n_overlap']} evaluated question(s) appear verbatim in "
            f"the training data ({per_task}); see 'contamination' in results.json"
        )
    out = Path(args.output)
    console.print(f"wrote {out / 'results.json'} and {out / 'predictions.jsonl'}")
    if args.run_dir:
        try:  # the run's card lists its evaluations; the results themselves are already safe in OUT_DIR
            record_evaluation(args.run_dir, results, str(out))
        except (OSError, ModetuneError) as exc:
            console.print(f"[yellow]warning:[/] could not add the results to the run's model card: {exc}")
