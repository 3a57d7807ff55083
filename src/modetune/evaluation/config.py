"""`EvalConfig`: everything `modetune eval` takes, with help text; the CLI options are generated from it, as
`modetune train`'s are from `TrainConfig`. Each field's `group` metadata names its option group."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from modetune.errors import ConfigError
from modetune.evaluation.pipeline import LL_NORMS, LL_STYLES, SCORING_MODES
from modetune.evaluation.runner import PRESETS

GROUPS = ("model and tasks", "generation (--scoring generate)", "log-likelihood (--scoring loglikelihood)", "other")
ANSWER_TYPES = ("number", "letter", "label")
TEMPLATES = ("alpaca", "chat")


def _opt(text: str, group: int = 0, **kw: Any) -> Any:
    """A field with its help text, option group and argparse extras (choices, metavar, flag, required)."""
    meta = {"help": text, "group": GROUPS[group]}
    meta.update({k: kw.pop(k) for k in ("choices", "metavar", "flag", "required") if k in kw})
    return field(metadata=meta, **kw)


@dataclass
class EvalConfig:
    """An evaluation: which model (a base model or a run), which tasks and files, how answers are scored."""

    model: str | None = _opt(
        "Model spec: embedded name (smollm2-135m), local HF dir, GGUF file, cached hub id (or --run).",
        metavar="MODEL",
        default=None,
    )
    run_dir: str | None = _opt(
        "A run directory from `modetune train` (any registered method), instead of --model.",
        flag="--run",  # dest is not "run": the CLI dispatches on args.run
        metavar="RUN_DIR",
        default=None,
    )
    base: str | None = _opt(
        "With --run: load the run onto this base model (any --model spec) instead of the one run.json names "
        "(found by its local path, embedded name or hub id in the local Hugging Face cache).",
        metavar="SPEC",
        default=None,
    )
    tasks: list[str] = _opt(
        "Task name(s) or group; repeat or comma-separate.",
        flag="--task",
        metavar="NAME",
        required=True,
        default_factory=list,
    )
    data: list[str] = _opt(
        "Test file (one task), directory, or NAME=FILE; repeatable.", metavar="FILE_OR_DIR", default_factory=list
    )
    answer_type: str | None = _opt(
        "Score a --task that modetune does not list (its file given with --data) by the LLM-Adapters rule: "
        "last number, first letter, or first label.",
        choices=list(ANSWER_TYPES),
        default=None,
    )
    choices: str | None = _opt(
        "With --answer-type: the letters (default A-E) or labels (default: read from the file's "
        "'Answer format:' lines).",
        metavar="A,B,...",
        default=None,
    )
    limit: int | None = _opt("Seeded random subset of N questions per task.", metavar="N", default=None)
    seed: int = _opt("Seed of the --limit subset and of sampling.", default=0)
    scoring: str = _opt(
        "generate + extract, or log-likelihood of each choice (multiple-choice tasks).",
        choices=list(SCORING_MODES),
        default="generate",
    )
    output: str = _opt(
        "Directory for results.json and predictions.jsonl.", metavar="OUT_DIR", required=True, default=""
    )
    batch_size: int = _opt("Prompts per forward/generate call.", default=8)
    template: str = _opt("Prompt template.", choices=list(TEMPLATES), default="alpaca")
    preset: str = _opt(
        "greedy or llm-adapters: LLM-Adapters' GenerationConfig (4-beam search); the flags below override it.",
        group=1,
        choices=list(PRESETS),
        default="greedy",
    )
    max_new_tokens: int | None = _opt("Default: 256 arithmetic, 32 commonsense.", group=1, default=None)
    num_beams: int | None = _opt("Beams (default: the --preset's; greedy 1).", group=1, default=None)
    do_sample: bool | None = _opt("Sample instead of greedy/beam.", group=1, default=None)
    temperature: float | None = _opt("With --do-sample (default: the --preset's).", group=1, default=None)
    top_p: float | None = _opt("With --do-sample (default: the --preset's).", group=1, default=None)
    top_k: int | None = _opt("With --do-sample (default: the --preset's).", group=1, default=None)
    ll_style: str = _opt(
        "text: score each choice's own text after the bare question (lm-eval style); label: score ' answerN' after "
        "'the correct answer is' (LLM-Adapters' training target format); partial: fill the '_' blank with each "
        "option and score the rest of the sentence (lm-eval's WinoGrande); auto: partial for WinoGrande, text "
        "otherwise.",
        group=2,
        choices=["auto", *LL_STYLES],
        default="auto",
    )
    ll_norm: str = _opt(
        "Rank by the summed log-prob (none), per token (token), or per character (char, lm-eval acc_norm); "
        "auto: char for --ll-style text, none for label and partial.",
        group=2,
        choices=["auto", *LL_NORMS],
        default="auto",
    )
    train_data: list[str] = _opt(
        "Training files to check for test questions (a --run's own files are checked automatically).",
        group=3,
        metavar="FILE",
        default_factory=list,
    )
    contamination_check: bool = _opt("Check the training data for test questions.", group=3, default=True)
    dtype: str = _opt("Model dtype (auto, float32, bfloat16, float16).", group=3, default="auto")
    device: str = _opt("auto, cpu, cuda, cuda:N, mps.", group=3, default="auto")
    progress: bool = _opt("Progress bars.", group=3, default=True)
    dora_cache: bool = _opt(
        "Cache DoRA's B·A and weight norms while scoring (the same scores, faster; --no-dora-cache saves one B·A "
        "per DoRA-adapted matrix, in the adapter's dtype, fp32 by default).",
        group=3,
        default=True,
    )

    def validate(self) -> None:
        """What can be refused from the options alone, before any file or model is read."""
        if (self.model is None) == (self.run_dir is None):
            raise ConfigError("pass exactly one of --model MODEL or --run RUN_DIR")
        if self.base is not None and self.run_dir is None:
            raise ConfigError("--base replaces a run's base model; it needs --run RUN_DIR")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be a positive number of examples, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            raise ConfigError(f"--output {self.output} is a file; pass a directory for results.json")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_fields(group: str) -> tuple[str, ...]:
    """The names of `EvalConfig`'s fields in one option group."""
    return tuple(f.name for f in fields(EvalConfig) if f.metadata["group"] == group)
