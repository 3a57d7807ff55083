"""`modetune compare`: is run B better than run A on the *same* questions?

Two evaluation outputs (directories with ``results.json`` + ``predictions.jsonl``) are paired per
question by (task, id, question text), so a subset picked with the same ``--limit``/``--seed`` pairs
up and a question that changed between files never does. Per task we report both accuracies on the
paired questions, the difference B - A, the exact McNemar p-value and a paired-bootstrap 95% CI.

A directory whose sub-directories are evaluation outputs of different tasks (one ``modetune eval`` per
task, as ``experiments/run.py`` writes them) is read as one output. Several pairs (A, B), for example one
per seed, can be pooled: each question is paired within its own pair, then all pairs count together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.errors import DataError, ModetuneError
from modetune.evaluation.stats import mcnemar_exact, paired_bootstrap

__all__ = ["EvalOutput", "compare_outputs", "compare_runs", "load_eval_output", "pool_outputs", "render_comparison"]

logger = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    """A loaded evaluation directory."""

    path: Path
    results: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _find_output_dirs(path: Path) -> list[Path]:
    """The directories holding predictions.jsonl: ``path`` itself, ``path/eval`` for a run dir, or else
    every direct sub-directory that holds one (one evaluation per task)."""
    if path.is_file() and path.name == "predictions.jsonl":
        return [path.parent]
    for candidate in (path, path / "eval"):
        if (candidate / "predictions.jsonl").is_file():
            return [candidate]
    parts = sorted(p.parent for p in path.glob("*/predictions.jsonl"))
    if parts:
        return parts
    deeper = sorted({p.parent.parent.name for p in path.glob("*/*/predictions.jsonl")})
    hint = (
        f"; it holds evaluation outputs one level down: pass one of {', '.join(f'{path}/{d}' for d in deeper)}"
        if deeper
        else " (pass the --output directory of a `modetune eval` run)"
    )
    raise ModetuneError(f"'{path}' is not an evaluation output: no predictions.jsonl in it{hint}")


def load_eval_output(path: str | Path) -> EvalOutput:
    """Read a `modetune eval` output directory (results.json, optional, and predictions.jsonl), or a
    directory of such outputs for different tasks, merged into one."""
    path = Path(path)
    if not path.exists():
        raise ModetuneError(f"'{path}' does not exist (pass the --output directory of a `modetune eval` run)")
    directories = _find_output_dirs(path)
    if len(directories) == 1:
        return _load_one(directories[0])
    parts = [_load_one(d) for d in directories]
    owner: dict[str, Path] = {}
    for part in parts:
        for task in {r["task"] for r in part.predictions}:
            if task in owner:
                raise DataError(
                    f"'{path}': task {task} is in both {owner[task]} and {part.path}; pass one of them, not the "
                    "directory holding both"
                )
            owner[task] = part.path
    tasks = {t: r for part in parts for t, r in part.results.get("tasks", {}).items()}
    return EvalOutput(path, {"tasks": tasks}, [r for part in parts for r in part.predictions])


def _load_one(directory: Path) -> EvalOutput:
    results: dict[str, Any] = {}
    results_file = directory / "results.json"
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{results_file}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    predictions = []
    pred_file = directory / "predictions.jsonl"
    for lineno, line in enumerate(pred_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{pred_file}, line {lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "task" not in row or "correct" not in row:
            raise DataError(f"{pred_file}, line {lineno}: a prediction needs at least 'task' and 'correct'")
        predictions.append(row)
    if not predictions:
        raise DataError(f"{pred_file}: no predictions")
    return EvalOutput(directory, results, predictions)


def _identity(row: Mapping[str, Any], position: int) -> Any:
    ident = row.get("id", row.get("index"))
    if ident is None and not (row.get("question") or row.get("prompt")):
        ident = position  # last resort: file order
    return ident


def _key(row: Mapping[str, Any], position: int) -> tuple[str, str, str]:
    question = row.get("question") or row.get("prompt") or ""
    return (str(row["task"]), str(_identity(row, position)), str(question))


def compare_outputs(a: EvalOutput, b: EvalOutput, *, n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per-task paired comparison of two evaluation outputs (B - A). Raises if nothing pairs up."""
    index_a = {_key(r, i): r for i, r in enumerate(a.predictions)}
    index_b = {_key(r, i): r for i, r in enumerate(b.predictions)}
    shared = [k for k in index_a if k in index_b]
    if not shared:
        tasks_a = sorted({r["task"] for r in a.predictions})
        tasks_b = sorted({r["task"] for r in b.predictions})
        raise ModetuneError(
            f"'{a.path}' and '{b.path}' share no evaluated question (tasks {', '.join(tasks_a)} vs "
            f"{', '.join(tasks_b)}); evaluate both on the same tasks with the same --limit/--seed"
        )
    by_task: dict[str, list[tuple[bool, bool]]] = {}
    for key in shared:
        by_task.setdefault(key[0], []).append((bool(index_a[key]["correct"]), bool(index_b[key]["correct"])))

    tasks: dict[str, Any] = {}
    all_pairs: list[tuple[bool, bool]] = []
    for task, pairs in by_task.items():
        all_pairs.extend(pairs)
        tasks[task] = _summarise(pairs, n_resamples, seed)
        for name, out in (("A", a), ("B", b)):
            n_in = sum(1 for r in out.predictions if r["task"] == task)
            if n_in > len(pairs):
                tasks[task][f"unpaired_{name.lower()}"] = n_in - len(pairs)
        modes = {out.results.get("tasks", {}).get(task, {}).get("scoring") for out in (a, b)}
        if len(modes - {None}) > 1:
            tasks[task]["warning"] = "A and B used different scoring modes"
            logger.warning("compare: task %s was scored differently in A and B (%s)", task, ", ".join(map(str, modes)))
    only_a = sorted({r["task"] for r in a.predictions} - set(by_task))
    only_b = sorted({r["task"] for r in b.predictions} - set(by_task))
    mean_a = sum(t["accuracy_a"] for t in tasks.values()) / len(tasks)
    mean_b = sum(t["accuracy_b"] for t in tasks.values()) / len(tasks)
    return {
        "a": str(a.path),
        "b": str(b.path),
        "tasks": tasks,
        "average": {"accuracy_a": mean_a, "accuracy_b": mean_b, "diff": mean_b - mean_a},
        "pooled": _summarise(all_pairs, n_resamples, seed),
        "tasks_only_in_a": only_a,
        "tasks_only_in_b": only_b,
        "test": "exact McNemar on discordant pairs; paired bootstrap 95% CI of B - A",
    }


def _summarise(pairs: list[tuple[bool, bool]], n_resamples: int, seed: int) -> dict[str, Any]:
    n = len(pairs)
    acc_a = sum(a for a, _ in pairs) / n
    acc_b = sum(b for _, b in pairs) / n
    only_a = sum(1 for a, b in pairs if a and not b)
    only_b = sum(1 for a, b in pairs if b and not a)
    boot = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], n_resamples=n_resamples, seed=seed)
    return {
        "n_paired": n,
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "diff": acc_b - acc_a,
        "both_correct": sum(1 for a, b in pairs if a and b),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "neither_correct": sum(1 for a, b in pairs if not a and not b),
        "p_value": mcnemar_exact(only_a, only_b),
        "diff_ci95": [boot["ci_low"], boot["ci_high"]],
        "bootstrap_p_value": boot["p_value"],
    }


def compare_runs(
    run_a: str | Path, run_b: str | Path, *, pool: Sequence[tuple[str | Path, str | Path]] = (), **kwargs: Any
) -> dict[str, Any]:
    """Load two evaluation directories and compare them (see `compare_outputs`); ``pool`` adds more pairs
    (A, B), for example the other seeds, whose questions pair only within their own pair."""
    if not pool:
        return compare_outputs(load_eval_output(run_a), load_eval_output(run_b), **kwargs)
    pairs = [(load_eval_output(a), load_eval_output(b)) for a, b in [(run_a, run_b), *pool]]
    return compare_outputs(*pool_outputs(pairs), **kwargs)


def pool_outputs(pairs: Sequence[tuple[EvalOutput, EvalOutput]]) -> tuple[EvalOutput, EvalOutput]:
    """Several (A, B) pairs as one: each prediction's id is prefixed with its pair's number, so a question
    pairs only within its own pair (seed 0's A with seed 0's B) however often it recurs across pairs."""
    pooled: list[EvalOutput] = []
    for side in (0, 1):
        outputs = [pair[side] for pair in pairs]
        predictions = [
            {**r, "id": f"pair{n}:{_identity(r, position)}"}
            for n, out in enumerate(outputs)
            for position, r in enumerate(out.predictions)
        ]
        tasks = {t: r for out in outputs for t, r in out.results.get("tasks", {}).items()}
        pooled.append(EvalOutput(Path(" + ".join(str(out.path) for out in outputs)), {"tasks": tasks}, predictions))
    return pooled[0], pooled[1]


def render_comparison(report: Mapping[str, Any]) -> Any:
    """A rich Table: per task n, accuracy A and B, B - A with its CI, McNemar p."""
    from rich.table import Table

    table = Table(title=f"A = {report['a']}\nB = {report['b']}")
    for name, justify in (
        ("task", "left"),
        ("n", "right"),
        ("acc A", "right"),
        ("acc B", "right"),
        ("B - A", "right"),
        ("95% CI", "right"),
        ("McNemar p", "right"),
    ):
        table.add_column(name, justify=justify)

    def row(name: str, r: Mapping[str, Any], style: str | None = None) -> None:
        lo, hi = r["diff_ci95"]
        p = r["p_value"]
        mark = " *" if p < 0.05 else ""
        table.add_row(
            name,
            str(r["n_paired"]),
            f"{100 * r['accuracy_a']:.1f}%",
            f"{100 * r['accuracy_b']:.1f}%",
            f"{100 * r['diff']:+.1f}",
            f"{100 * lo:+.1f} to {100 * hi:+.1f}",
            f"{p:.3g}{mark}",
            style=style,
        )

    for task, r in report["tasks"].items():
        row(task, r)
    if len(report["tasks"]) > 1:
        row("pooled", report["pooled"], style="bold")
    return table
