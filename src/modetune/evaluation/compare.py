"""`modetune compare`: is run B better than run A on the *same* questions?

Two evaluation outputs (directories with ``results.json`` + ``predictions.jsonl``) are paired per
question by (task, id, question text), so a subset picked with the same ``--limit``/``--seed`` pairs
up and a question that changed between files never does. Per task we report both accuracies on the
paired questions, the difference B - A, the exact McNemar p-value and a paired-bootstrap 95% CI.

A directory whose sub-directories are evaluation outputs of different tasks (one ``modetune eval`` per
task, as ``experiments/run.py`` writes them) is read as one output. Several pairs (A, B), for example one
per seed, can be pooled: each question is paired within its own pair, and since a question then recurs,
the test and the bootstrap treat the question as the unit (see `modetune.evaluation.stats`); each pair's own
difference and an interval over pairs *and* questions (`multi_bootstrap`) are reported next to it, since the
question-level interval says nothing about what another seed would do.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.errors import DataError, ModetuneError
from modetune.evaluation.predictions_io import NAMES as PREDICTION_NAMES
from modetune.evaluation.predictions_io import iter_predictions, prediction_dirs, predictions_file
from modetune.evaluation.stats import mcnemar_exact, multi_bootstrap, paired_bootstrap, sign_flip_exact

__all__ = ["EvalOutput", "compare_outputs", "compare_pooled", "compare_runs", "load_eval_output", "render_comparison"]

logger = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    """A loaded evaluation directory."""

    path: Path
    results: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _find_output_dirs(path: Path) -> list[Path]:
    """The directories holding predictions.jsonl (or predictions.jsonl.gz): ``path`` itself, ``path/eval`` for
    a run dir, or else every direct sub-directory that holds one (one evaluation per task), or those one level
    further down when a single sub-directory holds them (a grid cell scored one way: ``<cell>/generate/<task>/``)."""
    if path.is_file() and path.name in PREDICTION_NAMES:
        return [path.parent]
    for candidate in (path, path / "eval"):
        if candidate.is_dir() and predictions_file(candidate) is not None:
            return [candidate]
    parts = prediction_dirs(path)
    if parts:
        return parts
    deeper = sorted({p.parent.name for p in prediction_dirs(path, "*/*")})
    runs = sorted({p.parents[1].name for p in prediction_dirs(path, "*/*/*")})
    if len(deeper) == 1:  # e.g. a grid cell scored one way only: <cell>/generate/<task>/
        return _find_output_dirs(path / deeper[0])
    if deeper:
        hint = f"; it holds evaluation outputs one level down: pass one of {', '.join(f'{path}/{d}' for d in deeper)}"
    elif runs:
        hint = (
            f"; it holds several runs ({', '.join(runs)}): compare one pair, and pool the others with "
            "--pool RUN_A RUN_B"
        )
    else:
        hint = " (pass the --output directory of a `modetune eval` run)"
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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{results_file}: not valid JSON ({exc})") from exc
        tasks = results.get("tasks", {}) if isinstance(results, dict) else None
        if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
            raise DataError(f"{results_file}: not a `modetune eval` results file (its 'tasks' must map names to dicts)")
    predictions = []
    pred_file = predictions_file(directory) or directory / "predictions.jsonl"
    for lineno, row in iter_predictions(pred_file):
        if not isinstance(row, dict) or "task" not in row or "correct" not in row:
            raise DataError(f"{pred_file}, line {lineno}: a prediction needs at least 'task' and 'correct'")
        if not isinstance(row["task"], str):
            raise DataError(f"{pred_file}, line {lineno}: 'task' must be a name, got {row['task']!r}")
        if _identity(row) is None:
            row = {**row, "index": len(predictions)}  # last resort: the position in its own file
        predictions.append(row)
    if not predictions:
        raise DataError(f"{pred_file}: no predictions")
    return EvalOutput(directory, results, predictions)


def _identity(row: Mapping[str, Any]) -> Any:
    """What names a question besides its task: its id (or index), else its text; None if it has neither."""
    ident = row.get("id", row.get("index"))
    return ident if ident is not None or row.get("question") or row.get("prompt") else None


def _key(row: Mapping[str, Any], position: int) -> tuple[str, str, str]:
    question = row.get("question") or row.get("prompt") or ""
    ident = _identity(row)
    return (str(row["task"]), str(position if ident is None and not question else ident), str(question))


def _setup(out: EvalOutput, task: str) -> tuple[Any, ...] | None:
    """How a task was scored (scoring, log-likelihood style and normalisation), from results.json."""
    info = out.results.get("tasks", {}).get(task)
    return tuple(info.get(k) for k in ("scoring", "ll_style", "ll_norm")) if info else None


def _setup_text(setup: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in setup if part)


def compare_outputs(a: EvalOutput, b: EvalOutput, *, n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per-task paired comparison of two evaluation outputs (B - A). Raises if nothing pairs up."""
    return compare_pooled([(a, b)], n_resamples=n_resamples, seed=seed)


def compare_pooled(
    pairs: Sequence[tuple[EvalOutput, EvalOutput]], *, n_resamples: int = 10000, seed: int = 0, shared_a: bool = False
) -> dict[str, Any]:
    """Per-task comparison (B - A) of one or more pairs of evaluation outputs, e.g. one pair per seed.

    A question pairs only within its own pair. With several pairs the same question recurs, so the unit
    of the test and of the bootstrap is the question (`sign_flip_exact`, clustered `paired_bootstrap`);
    with one pair both reduce to exact McNemar and the plain paired bootstrap. `shared_a`: one evaluation of A
    stands in for every pair (a model that no seed changes, e.g. the untuned one under greedy decoding); B's
    outputs must still be different runs.
    """
    if not pairs:
        raise ValueError("compare_pooled needs at least one pair")
    for side in (1,) if shared_a else (0, 1):
        seen: set[Path] = set()
        for pair in pairs:
            path = pair[side].path.resolve()
            if path in seen:
                raise ModetuneError(
                    f"'{pair[side].path}' is given twice: each pooled pair must be a different run (another seed)"
                )
            seen.add(path)
    by_task: dict[str, list[tuple[tuple[str, str, str], bool, bool]]] = {}
    by_pair: list[dict[tuple[str, str, str], int]] = []  # per pair: question -> B - A (-1, 0 or +1)
    unpaired: dict[str, dict[str, int]] = {}
    setups: dict[str, set[str]] = {}
    for number, (a, b) in enumerate(pairs):
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
        for key in shared:
            by_task.setdefault(key[0], []).append((key, bool(index_a[key]["correct"]), bool(index_b[key]["correct"])))
        by_pair.append({k: int(bool(index_b[k]["correct"])) - int(bool(index_a[k]["correct"])) for k in shared})
        n_shared = Counter(k[0] for k in shared)
        answered = {name: Counter(r["task"] for r in out.predictions) for name, out in (("a", a), ("b", b))}
        for task in n_shared:
            for name, counts in answered.items():
                if counts[task] > n_shared[task]:
                    extra = unpaired.setdefault(task, {})
                    extra[f"unpaired_{name}"] = extra.get(f"unpaired_{name}", 0) + counts[task] - n_shared[task]
            setup_a, setup_b = _setup(a, task), _setup(b, task)
            if setup_a and setup_b and setup_a != setup_b:
                setups.setdefault(task, set()).add(
                    f"{_setup_text(setup_a)} vs {_setup_text(setup_b)}"
                    + (f" (pair {number + 1})" if len(pairs) > 1 else "")
                )
    pooled = len(pairs) > 1
    tasks: dict[str, Any] = {}
    everything: list[tuple[tuple[str, str, str], bool, bool]] = []
    for task, rows in by_task.items():
        everything.extend(rows)
        tasks[task] = {**_summarise(rows, n_resamples, seed, pooled), **unpaired.get(task, {})}
        if pooled:
            tasks[task].update(_over_pairs(by_pair, task, n_resamples, seed))
        if task in setups:
            tasks[task]["warning"] = "A and B were scored differently: " + "; ".join(sorted(setups[task]))
            logger.warning("compare: task %s: %s", task, tasks[task]["warning"])
    tasks_a = {r["task"] for a, _ in pairs for r in a.predictions}
    tasks_b = {r["task"] for _, b in pairs for r in b.predictions}
    mean_a = sum(t["accuracy_a"] for t in tasks.values()) / len(tasks)
    mean_b = sum(t["accuracy_b"] for t in tasks.values()) / len(tasks)
    test = (
        f"{len(pairs)} pairs pooled, each question paired within its pair; exact sign-flip test on each "
        "question's net difference over its pairs (exact McNemar when a question occurs once); bootstrap "
        "over questions, 95% CI of B - A"
        if pooled
        else "exact McNemar on discordant pairs; paired bootstrap 95% CI of B - A"
    )
    return {
        "a": " + ".join(str(a.path) for a, _ in pairs),
        "b": " + ".join(str(b.path) for _, b in pairs),
        "pairs": len(pairs),
        "tasks": tasks,
        "average": {"accuracy_a": mean_a, "accuracy_b": mean_b, "diff": mean_b - mean_a},
        "pooled": {
            **_summarise(everything, n_resamples, seed, pooled),
            **(_over_pairs(by_pair, None, n_resamples, seed) if pooled else {}),
        },
        "tasks_only_in_a": sorted(tasks_a - set(by_task)),
        "tasks_only_in_b": sorted(tasks_b - set(by_task)),
        "test": test,
    }


def _over_pairs(
    by_pair: list[dict[tuple[str, str, str], int]], task: str | None, n_resamples: int, seed: int
) -> dict[str, Any]:
    """Each pair's own B - A, and the CI over pairs *and* questions (`multi_bootstrap`) on the questions every
    pair answered (of `task`, or all): when the pairs are seeds, an interval that covers another seed too."""
    keys = [{k: d for k, d in pair.items() if task is None or k[0] == task} for pair in by_pair]
    common = [k for k in keys[0] if all(k in other for other in keys[1:])]
    out: dict[str, Any] = {"diff_per_pair": [sum(p.values()) / len(p) if p else math.nan for p in keys]}
    if common:
        boot = multi_bootstrap([[p[k] for k in common] for p in keys], n_resamples=n_resamples, seed=seed)
        out["seed_question_ci95"] = [boot["ci_low"], boot["ci_high"]]
        out["n_common_questions"] = len(common)
    return out


def _summarise(
    rows: list[tuple[tuple[str, str, str], bool, bool]], n_resamples: int, seed: int, by_question: bool
) -> dict[str, Any]:
    """Counts, accuracies, B - A, its CI and p; ``by_question``: a question's repeats count as one unit."""
    n = len(rows)
    correct_a = [a for _, a, _ in rows]
    correct_b = [b for _, _, b in rows]
    only_a = sum(1 for a, b in zip(correct_a, correct_b, strict=True) if a and not b)
    only_b = sum(1 for a, b in zip(correct_a, correct_b, strict=True) if b and not a)
    clusters = [key for key, _, _ in rows] if by_question else None
    boot = paired_bootstrap(correct_a, correct_b, n_resamples=n_resamples, seed=seed, clusters=clusters)
    if by_question:
        net: dict[tuple[str, str, str], int] = {}
        for key, a, b in rows:
            net[key] = net.get(key, 0) + int(b) - int(a)
        p_value = sign_flip_exact(list(net.values()))
    else:
        p_value = mcnemar_exact(only_a, only_b)
    return {
        "n_paired": n,
        **({"n_questions": len(set(clusters))} if clusters else {}),
        "accuracy_a": sum(correct_a) / n,
        "accuracy_b": sum(correct_b) / n,
        "diff": (sum(correct_b) - sum(correct_a)) / n,
        "both_correct": sum(1 for a, b in zip(correct_a, correct_b, strict=True) if a and b),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "neither_correct": sum(1 for a, b in zip(correct_a, correct_b, strict=True) if not a and not b),
        "p_value": p_value,
        "diff_ci95": [boot["ci_low"], boot["ci_high"]],
        "bootstrap_p_value": boot["p_value"],
    }


def compare_runs(
    run_a: str | Path, run_b: str | Path, *, pool: Sequence[tuple[str | Path, str | Path]] = (), **kwargs: Any
) -> dict[str, Any]:
    """Load evaluation directories and compare them (see `compare_pooled`); ``pool`` adds more pairs (A, B),
    for example the other seeds, whose questions pair only within their own pair."""
    pairs = [(load_eval_output(a), load_eval_output(b)) for a, b in [(run_a, run_b), *pool]]
    return compare_pooled(pairs, **kwargs)


def render_comparison(report: Mapping[str, Any]) -> Any:
    """A rich Table: per task n, accuracy A and B, B - A with its CI, McNemar p; below it, for pooled pairs
    (seeds), each pair's B - A and the CI over pairs and questions."""
    from rich.console import Group
    from rich.table import Table

    pooled = report["pairs"] > 1
    table = Table(title=f"A = {report['a']}\nB = {report['b']}")
    for name in ("task", "n", "acc A", "acc B", "B - A", "95% CI", "sign-flip p" if pooled else "McNemar p"):
        table.add_column(name, justify="left" if name == "task" else "right")

    def row(name: str, r: Mapping[str, Any], style: str | None = None) -> None:
        lo, hi = r["diff_ci95"]
        p = r["p_value"]
        mark = " *" if p < 0.05 else ""
        table.add_row(name, str(r["n_paired"]), f"{100 * r['accuracy_a']:.1f}%", f"{100 * r['accuracy_b']:.1f}%",
                      f"{100 * r['diff']:+.1f}", f"{100 * lo:+.1f} to {100 * hi:+.1f}", f"{p:.3g}{mark}", style=style)  # fmt: skip

    rows = dict(report["tasks"])
    if len(rows) > 1:
        rows["pooled"] = report["pooled"]
    for name, r in rows.items():
        row(name, r, style="bold" if name == "pooled" else None)
    if not pooled:
        return table
    lines = ["B - A per pair, and its 95% CI over pairs and questions (on the questions every pair answered):"]
    for name, r in rows.items():
        per_pair = ", ".join(f"{100 * d:+.1f}" for d in r["diff_per_pair"])
        ci = r.get("seed_question_ci95")
        interval = f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else "no question common to every pair"
        lines.append(f"  {name}: {per_pair}; {interval}")
    return Group(table, *lines)
