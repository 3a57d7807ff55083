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
from pathlib import Path
from typing import Any

from modetune.errors import ConfigError, ModetuneError

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
        help="evaluate a model or a MoDE run on arithmetic/commonsense reasoning tasks",
        description="Accuracy with 95% CIs on LLM-Adapters-format test sets, by generation + answer\n"
        "extraction (the literature's protocol) or by log-likelihood multiple choice.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model", help="model spec: embedded name (smollm2-135m), local HF dir, GGUF file, cached hub id"
    )
    # dest is not "run": the CLI dispatches on args.run
    which.add_argument(
        "--run", dest="run_dir", metavar="RUN_DIR", help="a run directory from `modetune train` (MoDE or MoD)"
    )
    parser.add_argument(
        "--base",
        default=None,
        metavar="SPEC",
        help="with --run: load the run onto this base model (any --model spec) instead of the one run.json names "
        "(found by its local path, embedded name or hub id in the local Hugging Face cache)",
    )
    parser.add_argument(
        "--task",
        dest="tasks",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME",
        help="task name(s) or group; repeat or comma-separate",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="FILE_OR_DIR",
        help="test file (one task), directory, or NAME=FILE; repeatable",
    )
    parser.add_argument(
        "--answer-type",
        choices=["number", "letter", "label"],
        default=None,
        help="score a --task that modetune does not list (its file given with --data) by the LLM-Adapters rule: "
        "last number, first letter, or first label",
    )
    parser.add_argument(
        "--choices",
        default=None,
        metavar="A,B,...",
        help="with --answer-type: the letters (default A-E) or labels (default: read from the file's "
        "'Answer format:' lines)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="seeded random subset of N questions per task"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset and of sampling (default: 0)")
    parser.add_argument(
        "--scoring",
        choices=["generate", "loglikelihood"],
        default="generate",
        help="generate + extract (default), or log-likelihood of each choice (multiple-choice tasks)",
    )
    parser.add_argument(
        "--output", required=True, metavar="OUT_DIR", help="directory for results.json and predictions.jsonl"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward/generate call (default: 8)")
    parser.add_argument(
        "--template", choices=["alpaca", "chat"], default="alpaca", help="prompt template (default: alpaca)"
    )

    gen = parser.add_argument_group("generation (--scoring generate)")
    gen.add_argument(
        "--preset",
        choices=["greedy", "llm-adapters"],
        default="greedy",
        help="greedy (default) or llm-adapters: LLM-Adapters' GenerationConfig (4-beam search); flags below "
        "override it",
    )
    gen.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 arithmetic, 32 commonsense")
    gen.add_argument("--num-beams", type=int, default=None, help="beams (default: the --preset's; greedy 1)")
    gen.add_argument(
        "--do-sample", action=argparse.BooleanOptionalAction, default=None, help="sample instead of greedy/beam"
    )
    gen.add_argument("--temperature", type=float, default=None, help="with --do-sample (default: the --preset's)")
    gen.add_argument("--top-p", type=float, default=None, help="with --do-sample (default: the --preset's)")
    gen.add_argument("--top-k", type=int, default=None, help="with --do-sample (default: the --preset's)")

    ll = parser.add_argument_group("log-likelihood (--scoring loglikelihood)")
    ll.add_argument(
        "--ll-style",
        choices=["auto", "text", "label", "partial"],
        default="auto",
        help="text: score each choice's own text after the bare question (lm-eval style); "
        "label: score ' answerN' after 'the correct answer is' (LLM-Adapters' training target format); "
        "partial: fill the '_' blank with each option and score the rest of the sentence (lm-eval's WinoGrande); "
        "auto (default): partial for WinoGrande, text otherwise",
    )
    ll.add_argument(
        "--ll-norm",
        choices=["auto", "char", "token", "none"],
        default="auto",
        help="rank by the summed log-prob (none), per token (token), or per character (char, lm-eval acc_norm); "
        "auto (default): char for --ll-style text, none for label and partial",
    )

    misc = parser.add_argument_group("other")
    misc.add_argument(
        "--train-data",
        nargs="+",
        default=None,
        metavar="FILE",
        help="training files to check for test questions (a --run's own files are checked automatically)",
    )
    misc.add_argument("--no-contamination-check", action="store_true", help="skip the training-data overlap check")
    misc.add_argument("--dtype", default="auto", help="model dtype (auto, float32, bfloat16, float16)")
    misc.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    misc.add_argument("--no-progress", action="store_true", help="no progress bars")
    misc.add_argument(
        "--no-dora-cache",
        action="store_true",
        help="recompute DoRA's B·A and weight norms on every forward pass instead of once (the same scores, "
        "slower; saves one B·A per DoRA-adapted matrix, in the adapter's dtype, fp32 by default)",
    )
    parser.set_defaults(run=run)


def parse_data_args(values: list[str] | None) -> Any:
    """``--data`` values -> None, one path, or {task: path, "*": default path}."""
    if not values:
        return None
    from modetune.evaluation.tasks import get_task

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


def _generation_settings(args: argparse.Namespace) -> Any:
    from modetune.evaluation.runner import PRESETS, GenerationSettings

    values = dict(PRESETS[args.preset])
    for key in ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return GenerationSettings(**values)


def _check_inputs(args: argparse.Namespace, specs: list[Any], data: Any) -> dict[str, list[Any]]:
    """Every option, test file, model spec and run directory checked before a model is loaded; returns the
    questions that will be evaluated, per task."""
    from modetune.evaluation.pipeline import _resolve_files
    from modetune.evaluation.tasks import load_task_examples, select_subset

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output} is a file; pass a directory for results.json")
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
        from modetune.runs import find_run_root, read_run_info

        read_run_info(find_run_root(args.run_dir))
    else:
        from modetune.loading import resolve_model

        resolve_model(args.model)
    return selected


def _check_context(model: Any, tokenizer: Any, selected: dict[str, list[Any]], args: argparse.Namespace) -> str | None:
    """A warning when prompts do not fit the model's context (RoPE models still run past it, unreliably)."""
    from modetune.evaluation.pipeline import build_prompt_text

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


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from modetune.evaluation.pipeline import evaluate_model, render_table
    from modetune.evaluation.tasks import resolve_task_names

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "peft", "accelerate", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console(stderr=True)

    if args.answer_type or args.choices:
        from modetune.evaluation.tasks import define_custom_tasks

        define_custom_tasks(args.tasks, args.answer_type, args.choices, args.data)
    data = parse_data_args(args.data)
    specs = resolve_task_names(args.tasks, data)
    settings = _generation_settings(args)
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of examples, got {args.limit}")

    selected = _check_inputs(args, specs, data)

    train_files: list[str] = list(args.train_data or [])
    if args.run_dir:
        from modetune.runs import load_run

        console.print(f"loading run {args.run_dir} ...")
        model, tokenizer, info = load_run(args.run_dir, dtype=args.dtype, device=args.device, base=args.base)
        train_files += [str(f) for f in info.get("train_files") or []]
        model_info = {
            "run_dir": str(info.get("run_dir", args.run_dir)),
            "base_model": info.get("base_model"),
            "train_files": info.get("train_files"),
        }
    else:
        from modetune.loading import load_model_and_tokenizer

        console.print(f"loading model {args.model} ...")
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
        model_info = {"spec": args.model}
    context_warning = _check_context(model, tokenizer, selected, args)
    if context_warning:
        console.print(f"[yellow]warning:[/] {context_warning}")
    if args.no_contamination_check:
        train_files = []
    missing = [f for f in train_files if not Path(f).is_file()]
    if missing:
        console.print(f"[yellow]warning:[/] training file(s) not found, not checked for overlap: {', '.join(missing)}")
        train_files = [f for f in train_files if f not in missing]

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
        progress=not args.no_progress,
        dora_cache=not args.no_dora_cache,
    )
    Console().print(render_table(report.results))
    contamination = report.results.get("contamination")
    if contamination and contamination["n_overlap"]:
        per_task = ", ".join(f"{t}: {c}" for t, c in contamination["per_task"].items() if c)
        console.print(
            f"[bold yellow]warning:[/] {contamination['n_overlap']} evaluated question(s) appear verbatim in "
            f"the training data ({per_task}); see 'contamination' in results.json"
        )
    out = Path(args.output)
    console.print(f"wrote {out / 'results.json'} and {out / 'predictions.jsonl'}")
    if args.run_dir:
        from modetune.card import record_evaluation

        try:  # the run's card lists its evaluations; the results themselves are already safe in OUT_DIR
            record_evaluation(args.run_dir, report.results, str(out))
        except (OSError, ModetuneError) as exc:
            console.print(f"[yellow]warning:[/] could not add the results to the run's model card: {exc}")
    return 0
