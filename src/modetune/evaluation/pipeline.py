"""`evaluate_model`: tasks -> prompts -> model -> extracted answers -> accuracy, CI, files.

Two scoring modes:

* ``generate`` (the literature's protocol): Alpaca prompt, decode (greedy by default), extract the
  answer with the LLM-Adapters rules (`modetune.evaluation.extraction`), compare with ``answer``.
* ``loglikelihood`` (multiple-choice tasks): score each option as a continuation of the prompt and
  pick the most likely, as lm-evaluation-harness does. Works for models too small to follow the
  answer format. Two ways to phrase an option (``ll_style``):

  - ``"text"`` (default): context = the prompt of the bare question (options and ``Answer format:``
    line removed), continuation = the option's own text (``"a marsh"``); lm-evaluation-harness's
    formulation.
  - ``"label"``: context = the full prompt + ``"the correct answer is"``, continuation = ``" answer2"``;
    the target format LLM-Adapters trains on (``output`` = ``"the correct answer is answer2"``), so a
    model tuned on it is scored on the decision it was taught to state.

  - ``"partial"`` (fill-in-the-blank tasks, WinoGrande; the default there): lm-evaluation-harness's
    partial evaluation. Context = the sentence up to the ``_`` blank with the option filled in,
    continuation = ``" "`` + the rest of the sentence; no prompt template, as lm-eval's ``winogrande``
    task. The continuation is the same for every option, so the ranking compares how well each
    filled-in prefix predicts the rest (lm-eval's ``acc``: summed log-prob, ``ll_norm="none"``).

  ``ll_style="auto"`` (the default) is ``partial`` for blank-filling tasks and ``text`` otherwise.
  Where conventions differ from lm-eval: lm-eval moves *all* trailing whitespace of a context
  (newlines included) into the continuation; modetune moves trailing spaces only, so in the ``text``
  and ``label`` styles the Alpaca prompt's final newline stays in the context. The ``partial``
  contexts end in the option's last word, so there the requests are identical to lm-eval's.

  Measured on SmolLM2-135M-Instruct (untuned; 150 questions per task, seed 0): ``text`` 62% PIQA,
  39% ARC-e, 32% OBQA, 25% ARC-c, 33% BoolQ; ``label`` 50/27/20/28/51% -- the untuned model just
  puts all its mass on one label (always ``solution1``/``answer4``/``false``). Hence ``text`` is the
  default; use ``label`` for models tuned on the LLM-Adapters commonsense format.

  ``ll_norm`` picks the ranking score: ``"none"`` (summed log-prob, lm-eval's ``acc``), ``"token"``
  (mean per token) or ``"char"`` (sum / characters, lm-eval's ``acc_norm``). ``"auto"`` uses
  ``none`` for labels (symbols whose length means nothing: char-normalising " true" vs " false"
  measurably hurt BoolQ) and ``char`` for choice texts. All three accuracies are in results.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modetune.data.loaders import Example
from modetune.data.templates import build_prompt
from modetune.errors import ConfigError, DataError, ModetuneError
from modetune.evaluation.contamination import check_contamination
from modetune.evaluation.extraction import score_generation
from modetune.evaluation.runner import GenerationSettings, dora_caching, generate_texts, loglikelihoods
from modetune.evaluation.stats import wilson_interval
from modetune.evaluation.tasks import (
    EvalExample,
    TaskSpec,
    blank_sentence,
    find_task_file,
    get_task,
    load_task_examples,
    question_stem,
    select_subset,
)
from modetune.files import atomic_write_text
from modetune.version import __version__

__all__ = [
    "LL_NORMS",
    "LL_STYLES",
    "SCORING_MODES",
    "EvalReport",
    "build_prompt_text",
    "evaluate_model",
    "multiple_choice_requests",
    "render_table",
]

logger = logging.getLogger(__name__)

SCORING_MODES = ("generate", "loglikelihood")
LL_STYLES = ("label", "text", "partial")
LL_NORMS = ("char", "token", "none")
SCHEMA_VERSION = 1

#: the words before the label in LLM-Adapters' commonsense training targets
ANSWER_PREFIX = "the correct answer is"


@dataclass
class EvalReport:
    """The outcome of `evaluate_model`: ``results`` (what results.json holds) and ``predictions``
    (one dict per example, what predictions.jsonl holds)."""

    results: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def average(self) -> float:
        return self.results["average"]

    def accuracy(self, task: str) -> float:
        return self.results["tasks"][get_task(task).name]["accuracy"]

    def write(self, output_dir: str | Path) -> Path:
        """Write ``predictions.jsonl`` and then ``results.json`` into ``output_dir`` (created if needed), each
        renamed into place whole: a ``results.json`` present means its predictions are complete (an interrupted
        write leaves the previous files or none, never half of one)."""
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output '{out}' exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        rows = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.predictions)
        atomic_write_text(out / "predictions.jsonl", rows)
        atomic_write_text(out / "results.json", json.dumps(self.results, indent=2, ensure_ascii=False) + "\n")
        return out


def build_prompt_text(example: EvalExample, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt for a test question, built by the same code as training prompts."""
    return build_prompt(Example(instruction=example.instruction, input=example.input), template, tokenizer)


def multiple_choice_requests(
    spec: TaskSpec, example: EvalExample, prompt: str, style: str = "text"
) -> list[tuple[str, str]]:
    """(context, continuation) pairs, one per option, for log-likelihood scoring."""
    if example.choices is None:
        raise ModetuneError(f"{example.id}: choices were not parsed (load with with_choices=True)")
    if style == "label":
        prefix = "The answer is" if spec.answer_type == "letter" else ANSWER_PREFIX
        return [(prompt + prefix, " " + c.label) for c in example.choices]
    if style == "text":
        return [(prompt, c.text) for c in example.choices]
    if style == "partial":
        before, after = blank_sentence(spec, example.instruction, where=example.id)
        return [(before + c.text, " " + after.strip()) for c in example.choices]
    raise ConfigError(f"unknown log-likelihood style '{style}'; use one of {', '.join(LL_STYLES)}")


def _style_for(spec: TaskSpec, ll_style: str) -> str:
    """The log-likelihood style of one task: ``auto`` is lm-eval's partial scoring for blank-filling
    tasks (WinoGrande) and the choice text otherwise."""
    if ll_style != "auto":
        return ll_style
    return "partial" if spec.blank else "text"


def _norm_for(style: str, ll_norm: str) -> str:
    # labels are symbols ("answer1", " true"): their length means nothing, so rank by the sum; partial
    # continuations are the same text for every option (lm-eval's acc); choice texts differ in length,
    # so rank per character (lm-eval's acc_norm)
    if ll_norm != "auto":
        return ll_norm
    return "char" if style == "text" else "none"


def _ll_settings(styles: Mapping[str, str], norms: Mapping[str, str]) -> dict[str, Any]:
    """The resolved style and norm (``"per task"`` when tasks differ), and each task's pair."""
    style = next(iter(set(styles.values()))) if len(set(styles.values())) == 1 else "per task"
    norm = next(iter(set(norms.values()))) if len(set(norms.values())) == 1 else "per task"
    out: dict[str, Any] = {"style": style, "norm": norm}
    if "per task" in (style, norm):
        out["per_task"] = {name: {"style": styles[name], "norm": norms[name]} for name in styles}
    return out


def _normalised(logprob: float, n_tokens: int, continuation: str, norm: str) -> float:
    if norm == "char":
        return logprob / max(1, len(continuation))
    if norm == "token":
        return logprob / max(1, n_tokens)
    return logprob


def _resolve_files(specs: Sequence[TaskSpec], data: Any) -> dict[str, Path]:
    """Task -> data file from ``data``: None, a file/dir path, or a mapping {task: path, "*": default}."""
    if isinstance(data, Mapping):
        mapping = {get_task(k).name if k != "*" else "*": v for k, v in data.items()}
        unknown = set(mapping) - {s.name for s in specs} - {"*"}
        if unknown:
            raise ConfigError(f"--data names task(s) not being evaluated: {', '.join(sorted(unknown))}")
        default = mapping.get("*")
        return {s.name: find_task_file(s, mapping.get(s.name, default)) for s in specs}
    if data is not None and Path(data).is_file() and len(specs) > 1:
        raise ConfigError(
            f"--data {data} is a single file but {len(specs)} tasks were given; "
            "use --data TASK=FILE for each task, or a directory"
        )
    return {s.name: find_task_file(s, data) for s in specs}


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "ex") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _evaluate_generate(
    model: Any,
    tokenizer: Any,
    spec: TaskSpec,
    examples: list[EvalExample],
    prompts: list[str],
    settings: GenerationSettings,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    bar = _progress_bar(len(examples), spec.name, progress)
    try:
        texts = generate_texts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens or spec.max_new_tokens,
            settings=settings,
            batch_size=batch_size,
            seed=seed,
            progress=bar.update,
        )
    finally:
        bar.close()
    rows = []
    no_answer = 0
    for ex, prompt, text in zip(examples, prompts, texts, strict=True):
        prediction, correct = score_generation(spec, text, ex.gold)
        no_answer += prediction is None
        rows.append(_row(ex, prompt, text, prediction, correct, "generate"))
    return rows, {"no_answer": no_answer}


def _evaluate_loglikelihood(
    model: Any,
    tokenizer: Any,
    spec: TaskSpec,
    examples: list[EvalExample],
    prompts: list[str],
    style: str,
    norm: str,
    template: str,
    batch_size: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if style == "partial":  # lm-eval's formulation: the bare sentence, no prompt template
        prompts = [blank_sentence(spec, ex.instruction, where=ex.id)[0] for ex in examples]
    elif style == "text":  # the options are what is scored, so the context is the bare question
        prompts = [
            build_prompt_text(
                dataclasses.replace(ex, instruction=question_stem(spec, ex.instruction)), template, tokenizer
            )
            for ex in examples
        ]
    per_example = [multiple_choice_requests(spec, ex, p, style) for ex, p in zip(examples, prompts, strict=True)]
    flat = [req for reqs in per_example for req in reqs]
    bar = _progress_bar(len(flat), spec.name, progress, unit="choice")
    try:
        scores = loglikelihoods(model, tokenizer, flat, batch_size=batch_size, progress=bar.update)
    finally:
        bar.close()
    rows = []
    correct_by_norm = dict.fromkeys(LL_NORMS, 0)
    pos = 0
    for ex, prompt, reqs in zip(examples, prompts, per_example, strict=True):
        got = scores[pos : pos + len(reqs)]
        pos += len(reqs)
        assert ex.choices is not None
        picks = {}
        for n in LL_NORMS:
            values = [_normalised(lp, nt, cont, n) for (lp, nt, _), (_, cont) in zip(got, reqs, strict=True)]
            picks[n] = max(range(len(values)), key=lambda i, v=values: v[i])
            correct_by_norm[n] += ex.choices[picks[n]].label == ex.gold
        chosen = picks[norm]
        label = ex.choices[chosen].label
        shown = ex.choices[chosen].text if style == "partial" else reqs[chosen][1].strip()
        row = _row(ex, prompt, shown, label, label == ex.gold, "loglikelihood")
        row["choices"] = [
            {"label": c.label, "text": c.text, "logprob": round(lp, 4), "n_tokens": nt, "greedy": greedy}
            for c, (lp, nt, greedy) in zip(ex.choices, got, strict=True)
        ]
        rows.append(row)
    n = max(1, len(examples))
    return rows, {"accuracy_by_norm": {k: v / n for k, v in correct_by_norm.items()}}


def _row(
    ex: EvalExample, prompt: str, generation: str, prediction: str | None, correct: bool, scoring: str
) -> dict[str, Any]:
    return {
        "task": ex.task,
        "id": ex.id,
        "index": ex.index,
        "question": ex.instruction,
        "prompt": prompt,
        "generation": generation,
        "prediction": prediction,
        "gold": ex.gold,
        "correct": bool(correct),
        "scoring": scoring,
    }


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str | TaskSpec],
    *,
    data: str | Path | Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    seed: int = 0,
    scoring: str = "generate",
    generation: GenerationSettings | None = None,
    ll_style: str = "auto",
    ll_norm: str = "auto",
    template: str = "alpaca",
    batch_size: int = 8,
    train_files: Sequence[str | Path] | None = None,
    output_dir: str | Path | None = None,
    model_info: Mapping[str, Any] | None = None,
    progress: bool = True,
    dora_cache: bool = True,
) -> EvalReport:
    """Evaluate an HF-style causal LM (or a `MoDEModel`) on benchmark tasks.

    Args:
        tasks: task names/aliases or specs (see `modetune.evaluation.tasks.TASKS`).
        data: where the test files are: a file (one task), a directory, or {task: path} with an
            optional ``"*"`` default; None searches `default_data_dirs`.
        limit: evaluate a seeded random subset of this many questions per task (same ``seed`` ->
            same questions, so runs stay comparable).
        scoring: ``"generate"`` or ``"loglikelihood"`` (multiple-choice tasks only).
        generation: decoding settings (greedy by default).
        ll_style, ll_norm: log-likelihood phrasing and ranking score (see the module docstring);
            ``"auto"`` picks per task (``partial`` for WinoGrande, ``text`` otherwise; the norm
            ``none`` for labels and partial, ``char`` for choice texts).
        template: prompt template, ``"alpaca"`` (the protocol) or ``"chat"``.
        train_files: training files to check for verbatim test questions (contamination guard).
        output_dir: if given, write results.json and predictions.jsonl there.
        model_info: JSON-able description of the model, stored under ``"model"`` in results.json.
        progress: show a progress bar per task (stderr).
        dora_cache: cache DoRA's B·A and weight norms while scoring (`dora_caching`: same outputs, faster,
            one extra copy of each DoRA-adapted matrix in memory); False saves that memory.

    Raises:
        ModetuneError: unknown task, missing file, malformed record, numeric task in
            log-likelihood mode, or a bad option.
    """
    _check_options(scoring, ll_style, ll_norm, batch_size)
    specs = [t if isinstance(t, TaskSpec) else get_task(t) for t in tasks]
    styles = {s.name: _style_for(s, ll_style) for s in specs}
    norms = {s.name: _norm_for(styles[s.name], ll_norm) for s in specs}
    _check_tasks(specs, scoring, styles)
    settings = generation or GenerationSettings()
    files = _resolve_files(specs, data)
    # load everything first, so a bad file fails before any model time is spent
    selected, n_total = _load_selected(specs, files, scoring == "loglikelihood", limit, seed)
    contamination = check_contamination(selected, train_files) if train_files else None

    if hasattr(model, "eval"):
        model.eval()
    started = time.time()
    with dora_caching(model, dora_cache):
        sources = {s.name: {"n_total": n_total[s.name], "file": str(files[s.name])} for s in specs}
        task_results, predictions = _score_tasks(
            model, tokenizer, specs, selected, sources, scoring, settings, (styles, norms), template, batch_size,
            seed, progress,
        )  # fmt: skip

    average = sum(r["accuracy"] for r in task_results.values()) / len(task_results)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tasks": task_results,
        "average": average,
        "scoring": scoring,
        "model": dict(model_info or {}),
        "settings": {
            "limit": limit,
            "seed": seed,
            "batch_size": batch_size,
            "template": template,
            "generation": settings.to_dict() if scoring == "generate" else None,
            "loglikelihood": _ll_settings(styles, norms) if scoring == "loglikelihood" else None,
        },
        "contamination": contamination,
        "environment": _environment(),
        "elapsed_seconds": round(time.time() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report = EvalReport(results, predictions)
    if output_dir is not None:
        report.write(output_dir)
    return report


def _score_tasks(
    model: Any,
    tokenizer: Any,
    specs: list[TaskSpec],
    selected: dict[str, list[EvalExample]],
    sources: dict[str, dict[str, Any]],
    scoring: str,
    settings: GenerationSettings,
    ll: tuple[dict[str, str], dict[str, str]],
    template: str,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """({task: accuracy, interval, its source (`sources`), timing, scoring details}, every scored row)."""
    styles, norms = ll
    task_results: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    for spec in specs:
        examples = selected[spec.name]
        prompts = [build_prompt_text(ex, template, tokenizer) for ex in examples]
        t0 = time.time()
        if scoring == "generate":
            rows, extra = _evaluate_generate(
                model, tokenizer, spec, examples, prompts, settings, batch_size, seed, progress
            )
        else:
            style, norm = styles[spec.name], norms[spec.name]
            rows, extra = _evaluate_loglikelihood(
                model, tokenizer, spec, examples, prompts, style, norm, template, batch_size, progress
            )
            extra = {**extra, "ll_style": style, "ll_norm": norm}
        task_results[spec.name] = {
            **_accuracy(rows),
            **sources[spec.name],
            "category": spec.category,
            "scoring": scoring,
            "seconds": round(time.time() - t0, 2),
            **extra,
        }
        predictions.extend(rows)
    return task_results, predictions


def _check_options(scoring: str, ll_style: str, ll_norm: str, batch_size: int) -> None:
    """Refuse a bad option before any task, file or model is read."""
    if scoring not in SCORING_MODES:
        raise ConfigError(f"unknown scoring '{scoring}'; use one of {', '.join(SCORING_MODES)}")
    if ll_style not in (*LL_STYLES, "auto"):
        raise ConfigError(f"unknown log-likelihood style '{ll_style}'; use one of auto, {', '.join(LL_STYLES)}")
    if ll_norm not in (*LL_NORMS, "auto"):
        raise ConfigError(f"unknown log-likelihood normalisation '{ll_norm}'; use one of auto, {', '.join(LL_NORMS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")


def _check_tasks(specs: list[TaskSpec], scoring: str, styles: dict[str, str]) -> None:
    """Refuse tasks the scoring cannot handle (log-likelihood needs choices; 'partial' needs a blank)."""
    if not specs:
        raise ConfigError("no task given")
    if scoring != "loglikelihood":
        return
    no_blank = [s.name for s in specs if styles[s.name] == "partial" and not s.blank]
    if no_blank:
        raise ConfigError(
            f"--ll-style partial fills a '_' blank in the sentence (WinoGrande); {', '.join(no_blank)} "
            "has no blank: use --ll-style text or label"
        )
    numeric = [s.name for s in specs if not s.multiple_choice]
    if numeric:
        raise ConfigError(
            f"log-likelihood scoring needs multiple-choice tasks; {', '.join(numeric)} "
            "have free-form numeric answers (use --scoring generate for them)"
        )


def _load_selected(
    specs: list[TaskSpec], files: Mapping[str, Path], with_choices: bool, limit: int | None, seed: int
) -> tuple[dict[str, list[EvalExample]], dict[str, int]]:
    """({task: the seeded subset of its examples}, {task: how many examples its file holds})."""
    selected: dict[str, list[EvalExample]] = {}
    n_total: dict[str, int] = {}
    for spec in specs:
        examples = load_task_examples(spec, files[spec.name], with_choices=with_choices)
        if not examples:
            raise DataError(f"{files[spec.name]}: no examples")
        n_total[spec.name] = len(examples)
        selected[spec.name] = select_subset(examples, limit, seed)
    return selected, n_total


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, count, correct and the Wilson 95% interval of one task's scored rows."""
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else 0.0, "n": n, "correct": correct, "ci95": [lo, hi]}


def _environment() -> dict[str, str]:
    import torch
    import transformers

    return {
        "modetune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def render_table(results: Mapping[str, Any], title: str | None = None) -> Any:
    """A rich Table of per-task accuracy with 95% CI and the average row."""
    from rich.table import Table

    table = Table(title=title or f"modetune eval ({results.get('scoring', '?')})")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("note")
    for name, r in results["tasks"].items():
        lo, hi = r["ci95"]
        note = ""
        if r.get("no_answer"):
            note = f"{r['no_answer']} without an answer"
        if r.get("n", 0) < r.get("n_total", 0):
            note = (note + "; " if note else "") + f"subset of {r['n_total']}"
        table.add_row(name, str(r["n"]), f"{100 * r['accuracy']:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}", note)
    avg = results.get("average")
    if avg is not None and not math.isnan(avg):
        table.add_row(
            "average", "", f"{100 * avg:.1f}%", "", f"mean over {len(results['tasks'])} task(s)", style="bold"
        )
    return table
