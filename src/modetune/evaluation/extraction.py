"""Answer extraction and scoring, exactly as the LLM-Adapters evaluation scripts do it.

The literature's numbers (LoRA, DoRA, MoDE tables) come from these rules, quirks included, so they
are reproduced rather than "improved":

* numeric tasks: remove every comma, take the **last** match of ``-?\\d+\\.?\\d*``; correct if
  ``|pred - gold| <= 0.001``. No number -> no prediction (counted wrong). Note ``1,2,3`` becomes
  ``123`` and ``.5`` reads as ``5``, as upstream.
* AQuA: the **first** capital letter A-E anywhere in the text (so ``"Each ..."`` yields ``E``).
* commonsense: the **first** occurrence of the task's label pattern (``true|false``,
  ``solution1|solution2``, ``answer1..answer5``, ``option1|option2``, ``ending1..ending4``),
  case-sensitive, also inside longer words (``untrue`` -> ``true``).
"""

from __future__ import annotations

import math
import re

from modetune.evaluation.tasks import TaskSpec, get_task

__all__ = [
    "NUMERIC_TOLERANCE",
    "extract_answer",
    "extract_label",
    "extract_letter",
    "extract_number",
    "is_correct",
    "score_generation",
]

#: |pred - gold| at or below this counts as correct (LLM-Adapters' ``miss = 0.001``)
NUMERIC_TOLERANCE = 0.001

_NUMBER = re.compile(r"-?\d+\.?\d*")
_LETTER = re.compile(r"[A-E]")


def extract_number(text: str) -> float | None:
    """The last number in ``text`` after removing commas (thousands separators), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:  # pragma: no cover - the pattern only matches float syntax
        return None


def extract_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The first capital letter among ``letters`` in ``text`` (AQuA), or None."""
    pattern = _LETTER if letters == "ABCDE" else re.compile(f"[{re.escape(letters)}]")
    m = pattern.search(text.strip())
    return m.group(0) if m else None


def extract_label(text: str, labels: tuple[str, ...] | list[str]) -> str | None:
    """The first occurrence of any of ``labels`` in ``text`` (case-sensitive), or None.

    Longer labels are tried first at each position, so ``answer10`` would not read as ``answer1``.
    """
    alternatives = sorted(labels, key=len, reverse=True)
    m = re.search("|".join(re.escape(label) for label in alternatives), text.strip())
    return m.group(0) if m else None


def extract_answer(task: TaskSpec | str, text: str) -> str | None:
    """The answer a generation commits to, as a string comparable with the gold (None if absent)."""
    spec = get_task(task) if isinstance(task, str) else task
    if spec.answer_type == "number":
        value = extract_number(text)
        if value is None:
            return None
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if spec.answer_type == "letter":
        return extract_letter(text, "".join(spec.labels))
    return extract_label(text, spec.labels)


def is_correct(task: TaskSpec | str, prediction: str | None, gold: str) -> bool:
    """Whether an extracted prediction matches the gold answer under the task's rule."""
    if prediction is None:
        return False
    spec = get_task(task) if isinstance(task, str) else task
    if spec.answer_type == "number":
        try:
            return abs(float(prediction) - float(gold.replace(",", ""))) <= NUMERIC_TOLERANCE
        except ValueError:
            return False
    return prediction == gold


def score_generation(task: TaskSpec | str, text: str, gold: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one raw generation."""
    prediction = extract_answer(task, text)
    return prediction, is_correct(task, prediction, gold)
