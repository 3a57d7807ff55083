"""Contamination guard: test questions that appear verbatim in a model's training files.

A tuned model that saw a test question during training inflates its score (e.g. LLM-Adapters'
``math_data.json`` holds ~80% of the arithmetic test questions). When a run directory records its
training files, the evaluator compares question texts after normalising case and whitespace and
reports the overlap; it warns rather than refuses, because the user may know better.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modetune.data.loaders import load_dataset_file
from modetune.errors import ModetuneError

__all__ = ["check_contamination", "load_training_questions", "normalize_question"]

logger = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    """Lower-case, collapse runs of whitespace, strip: the key two questions must share to match."""
    return _WS.sub(" ", text).strip().lower()


def load_training_questions(paths: Iterable[str | Path]) -> tuple[set[str], list[str], list[str]]:
    """Normalised question texts (``instruction``/``question``/``prompt``/last user message) of the
    training files. Returns (questions, files read, problems) — unreadable files are reported, not
    raised, so a moved training file does not block an evaluation."""
    questions: set[str] = set()
    read: list[str] = []
    problems: list[str] = []
    for path in paths:
        try:
            records = load_dataset_file(Path(path))
        except ModetuneError as exc:
            problems.append(str(exc))
            continue
        read.append(str(path))
        for rec in records:
            if rec.plain_text:
                continue  # a document, not a question: nothing an evaluation question could repeat verbatim
            questions.add(normalize_question(rec.instruction))
            if rec.input:
                questions.add(normalize_question(f"{rec.instruction}\n{rec.input}"))
    return questions, read, problems


def check_contamination(
    examples_by_task: Mapping[str, Sequence[Any]],
    train_files: Sequence[str | Path],
    *,
    max_examples: int = 5,
) -> dict[str, Any]:
    """Find evaluated questions whose normalised text is a training question.

    ``examples_by_task`` maps task names to examples with ``instruction``, ``input`` and ``id``.
    Returns a JSON-able report: ``n_overlap``, ``per_task`` counts, the first ``max_examples``
    overlaps, the files checked and any that could not be read. Logs a warning when something overlaps.
    """
    questions, read, problems = load_training_questions(train_files)
    for problem in problems:
        logger.warning("contamination check: cannot read training file: %s", problem)
    per_task: dict[str, int] = {}
    overlaps: list[dict[str, str]] = []
    for task, examples in examples_by_task.items():
        count = 0
        for ex in examples:
            keys = {normalize_question(ex.instruction)}
            if ex.input:
                keys.add(normalize_question(f"{ex.instruction}\n{ex.input}"))
            if keys & questions:
                count += 1
                if len(overlaps) < max_examples:
                    overlaps.append({"task": task, "id": ex.id, "question": ex.instruction[:200]})
        per_task[task] = count
    total = sum(per_task.values())
    report = {
        "train_files": read,
        "unreadable_files": problems,
        "n_overlap": total,
        "per_task": per_task,
        "examples": overlaps,
    }
    if total:
        shown = "; ".join(f"{o['id']}: {o['question'][:80]!r}" for o in overlaps)
        logger.warning(
            "contamination: %d evaluated question(s) appear verbatim in the training data (%s). e.g. %s",
            total,
            ", ".join(f"{t}={c}" for t, c in per_task.items() if c),
            shown,
        )
    return report
