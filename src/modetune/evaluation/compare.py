"""`modetune compare`: is run B better than run A on the *same* questions?

Two evaluation outputs (directories with ``results.json`` + ``predictions.jsonl``) are paired per
question by (task, id, question text), so a subset picked with the same ``--limit``/``--seed`` pairs
up and a question that changed between files never does. Per task we report both accuracies on the
paired questions, the difference B - A, the exact McNemar p-value and a paired-bootstrap 95% CI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.errors import DataError, ModetuneError
from modetune.evaluation.stats import mcnemar_exact, paired_bootstrap

__all__ = ["EvalOutput", "compare_outputs", "compare_runs", "load_eval_output", "render_comparison"]

logger = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    """A loaded evaluation directory."""

    path: Path
    results: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _find_output_dir(path: Path) -> Path:
    """The directory holding predictions.jsonl: ``path`` itself, or ``path/eval`` for a run dir."""
    if path.is_file() and path.name == "predictions.jsonl":
        return path.parent
    for candidate in (path, path / "eval"):
        if (candidate / "predictions.jsonl").is_file():
            return candidate
    raise ModetuneError(
        f"'{path}' is not an evaluation output: no predictions.jsonl in it "
        "(pass the --output directory of a `modetune eval` run)"
    )


def load_eval_output(path: str | Path) -> EvalOutput:
    """Read results.json (optional) and predictions.jsonl of a `modetune eval` output directory."""
    path = Path(path)
    if not path.exists():
        raise ModetuneError(f"'{path}' does not exist (pass the --output directory of a `modetune eval` run)")
    directory = _find_output_dir(path)
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


def _key(row: Mapping[str, Any], position: int) -> tuple[str, str, str]:
    ident = row.get("id", row.get("index"))
    question = row.get("question") or row.get("prompt") or ""
    if ident is None and not question:
        ident = position  # last resort: file order
    return (str(row["task"]), str(ident), str(question))


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


def compare_runs(run_a: str | Path, run_b: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Load two evaluation directories and compare them (see `compare_outputs`)."""
    return compare_outputs(load_eval_output(run_a), load_eval_output(run_b), **kwargs)


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
