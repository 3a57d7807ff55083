"""Evaluation on arithmetic and commonsense reasoning, by the LLM-Adapters protocol.

    from modetune.evaluation import evaluate_model
    report = evaluate_model(model, tokenizer, ["gsm8k", "boolq"], limit=200, output_dir="out/eval")
    report.results["tasks"]["gsm8k"]["accuracy"], report.average

`compare_runs` pairs two evaluation outputs question by question (McNemar + paired bootstrap), or several
pairs pooled (one per seed: the question is then the unit of the test and the bootstrap).
lm-evaluation-harness users: ``modetune.evaluation.lm_eval_model`` registers the ``modetune`` model
type (imported on demand, since lm-eval is an optional extra).
"""

from __future__ import annotations

from modetune.evaluation.compare import (
    compare_outputs,
    compare_pooled,
    compare_runs,
    load_eval_output,
    render_comparison,
)
from modetune.evaluation.contamination import check_contamination
from modetune.evaluation.extraction import (
    extract_answer,
    extract_label,
    extract_letter,
    extract_number,
    is_correct,
    score_generation,
)
from modetune.evaluation.pipeline import (
    LL_NORMS,
    LL_STYLES,
    SCORING_MODES,
    EvalReport,
    evaluate_model,
    render_table,
)
from modetune.evaluation.runner import PRESETS, GenerationSettings, generate_texts, loglikelihoods
from modetune.evaluation.stats import (
    accuracy_interval,
    mcnemar_exact,
    paired_bootstrap,
    sign_flip_exact,
    wilson_interval,
)
from modetune.evaluation.tasks import (
    GROUPS,
    TASKS,
    Choice,
    EvalExample,
    TaskSpec,
    find_task_file,
    get_task,
    load_task_examples,
    parse_choices,
    resolve_task_names,
    select_subset,
)

__all__ = [
    "GROUPS",
    "LL_NORMS",
    "LL_STYLES",
    "PRESETS",
    "SCORING_MODES",
    "TASKS",
    "Choice",
    "EvalExample",
    "EvalReport",
    "GenerationSettings",
    "TaskSpec",
    "accuracy_interval",
    "check_contamination",
    "compare_outputs",
    "compare_pooled",
    "compare_runs",
    "evaluate_model",
    "extract_answer",
    "extract_label",
    "extract_letter",
    "extract_number",
    "find_task_file",
    "generate_texts",
    "get_task",
    "is_correct",
    "load_eval_output",
    "load_task_examples",
    "loglikelihoods",
    "mcnemar_exact",
    "paired_bootstrap",
    "parse_choices",
    "render_comparison",
    "render_table",
    "resolve_task_names",
    "score_generation",
    "select_subset",
    "sign_flip_exact",
    "wilson_interval",
]
