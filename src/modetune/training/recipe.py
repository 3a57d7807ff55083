"""The fine-tuning recipe behind `modetune train`, as plain code: data -> base model -> PEFT -> the depth
method (looked up in the registry) -> `MethodTrainer` -> a complete run directory."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, TrainerState, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as HFProgressCallback

from modetune.card import write_model_card
from modetune.data import build_sft_dataset, generate_problems, load_datasets, make_collator
from modetune.data.hf import is_hf_source
from modetune.errors import ConfigError, DataError
from modetune.loading import load_model_and_tokenizer, resolve_model, resolve_torch_dtype
from modetune.method_base import MethodConfig, MethodModel, quiet_peft
from modetune.methods import get_method
from modetune.runs import base_model_record, set_base_model_name, write_run_info
from modetune.training.config import TrainConfig
from modetune.training.lock import OutputNotWritableError
from modetune.training.run_dir import (
    check_output,
    draw_training_curves,
    is_main_process,
    prepare_resume,
    record_run_end,
    run_directory,
)
from modetune.training.trainer import MethodTrainer, latest_complete_checkpoint, session_callbacks, stopped_early
from modetune.version import __version__

logger = logging.getLogger(__name__)
SYNTHETIC = "synthetic"


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    train_loss: float
    eval_loss: float | None
    seconds: float
    is_main_process: bool = True
    stopped: bool = False  # ended by --stop-after-step before the schedule's end: continue with --resume


# -- data --------------------------------------------------------------------------------------------
def parse_synthetic_spec(spec: str) -> tuple[int, int | str] | None:
    """'synthetic[:N[:LEVEL]]' -> (N, LEVEL); None for anything else (a file path)."""
    if spec != SYNTHETIC and not spec.startswith(f"{SYNTHETIC}:"):
        return None
    parts = spec.split(":")[1:]
    try:
        n = int(parts[0]) if parts and parts[0] else 2000
    except ValueError:
        raise DataError(f"--data {spec!r}: N must be a whole number, as in 'synthetic:2000:1'") from None
    level: int | str = parts[1] if len(parts) > 1 else "mixed"
    if isinstance(level, str) and level.isdigit():
        level = int(level)
    return n, level


def load_training_examples(
    specs: list[str], mix: list[float] | None, seed: int, limit: int | None, columns: str | None = None
) -> list[Any]:
    """Examples from files, Hugging Face datasets (`modetune.data.hf`) and/or synthetic specs, mixed as
    `modetune.data.load_datasets` does."""
    files = [s for s in specs if parse_synthetic_spec(s) is None]
    synthetic = [s for s in specs if parse_synthetic_spec(s) is not None]
    if mix is not None and synthetic:
        raise ConfigError("--data-mix works with files only; set the size of synthetic data with 'synthetic:N'")
    for f in files:
        if not Path(f).is_file() and not is_hf_source(f):
            raise DataError(f"training file {f} does not exist")
    examples: list[Any] = []
    if files:
        examples += load_datasets(files, mix=mix, seed=seed, require_response=True, columns=columns)
    for i, spec in enumerate(synthetic):
        n, level = parse_synthetic_spec(spec)  # type: ignore[misc]
        examples += generate_problems(n, seed=seed + i, difficulty=level, split="train")
    if files and synthetic:
        random.Random(seed).shuffle(examples)
    if limit:
        examples = examples[:limit]
    if not examples:
        raise DataError("the training data is empty")
    return examples


def load_eval_examples(cfg: TrainConfig, examples: list[Any]) -> tuple[list[Any], list[Any]]:
    """(evaluation examples, the training examples left): --eval-data files, or --eval-split held out."""
    if cfg.eval_data:
        for f in cfg.eval_data:
            if not Path(f).is_file() and not is_hf_source(f):
                raise DataError(f"evaluation file {f} does not exist")
        return load_datasets(cfg.eval_data, seed=cfg.seed, require_response=True, columns=cfg.columns), examples
    if cfg.eval_split:
        n_eval = int(cfg.eval_split) if cfg.eval_split >= 1 else max(1, round(cfg.eval_split * len(examples)))
        if n_eval >= len(examples):
            raise ConfigError(f"--eval-split {cfg.eval_split} leaves no training records out of {len(examples)}")
        return examples[:n_eval], examples[n_eval:]
    return [], examples


# -- model -------------------------------------------------------------------------------------------
def wrap_peft(model: Any, cfg: TrainConfig) -> Any:
    """LoRA or DoRA on the base model, or nothing (the method alone)."""
    if cfg.peft == "none":
        return model
    targets: str | list[str] = cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            use_dora=cfg.peft == "dora",
            task_type="CAUSAL_LM",
        )
        with quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"--target-modules {cfg.target_modules!r}: {exc}") from None


def build_method_model(cfg: TrainConfig, method_cfg: MethodConfig, resolved: Any) -> tuple[MethodModel, Any]:
    """(the registered method around the PEFT-wrapped base, its tokenizer); the method's config is checked
    against the model's depth before the weights are read."""
    spec = get_method(cfg.method)
    if not isinstance(method_cfg, spec.config_class):
        raise ConfigError(
            f"--method {cfg.method} needs a {spec.config_class.__name__}, got {type(method_cfg).__name__}"
        )
    method_cfg.validate(_num_decoder_layers(resolved.path))
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    wrapped = spec.build(wrap_peft(model, cfg), method_cfg)
    if cfg.gradient_checkpointing:
        wrapped.gradient_checkpointing_enable()
    return wrapped, tokenizer


def _check_free_space(out: Path, model: Any, cfg: TrainConfig) -> None:
    """Refuse to start when the disk cannot hold the final model and the kept checkpoints."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    saves = 1 + ((cfg.save_total_limit or 1) + 1 if cfg.save_steps else 0)
    # per save: the weights, AdamW's two moments (checkpoints), tokenizer and state files (~8 MiB)
    need = saves * (3 * trainable + 8 * 2**20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise OutputNotWritableError(
            f"not enough free space in {out}: {free / 2**20:.0f} MiB free, this run needs about "
            f"{need / 2**20:.0f} MiB (final model and {saves - 1} checkpoint(s)); free some space, lower "
            "--save-total-limit, or choose another --output"
        )


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def train(cfg: TrainConfig, method_cfg: MethodConfig, argv: list[str] | None = None) -> TrainResult:
    """Run one training job end to end and leave a complete run directory in `cfg.output`.

    `method_cfg` is the config of the registered method `cfg.method` (a `MoDEConfig` for 'mode', ...).
    Under torchrun / accelerate launch every rank runs this; only rank 0 locks, checks and writes the
    output directory. A start that fails (bad data, option, model) leaves the file system as it was.
    """
    cfg.validate()
    started = time.time()
    out = Path(cfg.output)
    is_main = is_main_process()
    with run_directory(out, is_main) as claim:
        configs = {"train_config": cfg, f"{cfg.method}_config": method_cfg}
        resume_from = check_output(out, cfg.resume, cfg.overwrite, configs, is_main)
        trainer, info, has_eval = _setup(cfg, method_cfg, out, resume_from, argv, is_main)
        if is_main:
            _check_free_space(out, trainer.model, cfg)
            if cfg.resume:
                prepare_resume(out, resume_from, info)
            write_run_info(out, info)
        claim.keep()
        try:
            return _run(trainer, info, out, resume_from, has_eval, started, is_main)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            last = latest_complete_checkpoint(out)
            raise OutputNotWritableError(
                f"writing to {out} failed ({exc.strerror}: {exc.filename or out}); the last complete checkpoint "
                f"({last or 'none yet'}) is intact. Free some space or fix the permissions, then continue with "
                "--resume"
            ) from None


def _setup(
    cfg: TrainConfig,
    method_cfg: MethodConfig,
    out: Path,
    resume_from: Path | None,
    argv: list[str] | None,
    is_main: bool,
) -> tuple[MethodTrainer, dict[str, Any], bool]:
    """Everything that can fail on user input, before the first byte of the run is written."""
    resolve_torch_dtype(cfg.dtype)  # a bad --dtype is refused before the data and the model are read
    set_seed(cfg.seed)
    examples = load_training_examples(cfg.data, cfg.data_mix, cfg.seed, cfg.max_train_samples, cfg.columns)
    eval_examples, examples = load_eval_examples(cfg, examples)
    resolved = resolve_model(cfg.model)
    model, tokenizer = build_method_model(cfg, method_cfg, resolved)
    use_cpu = not _cuda_available()
    # resolve 'auto' (and refuse an impossible 'liger') before anything is written
    loss_implementation = model.loss_implementation(torch.device("cpu" if use_cpu else "cuda"))
    train_ds = build_sft_dataset(examples, tokenizer, cfg.template, cfg.cutoff_len, cfg.train_on_inputs)
    eval_ds = (
        build_sft_dataset(eval_examples, tokenizer, cfg.template, cfg.cutoff_len, cfg.train_on_inputs)
        if eval_examples
        else None
    )
    info = _run_info(cfg, method_cfg, resolved, model, argv)
    info.update(
        loss_implementation=loss_implementation,
        num_train_examples=len(train_ds),
        num_eval_examples=len(eval_ds) if eval_ds else 0,
        data_stats=train_ds.stats.summary(),
    )
    set_base_model_name(model, info["base_model"]["hub_id"])  # adapter_config.json names the hub id
    args = _finetune_arguments(cfg, out, use_cpu, eval_ds is not None, model, is_main)
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=make_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=session_callbacks(out, cfg.stop_after_step),
        keep_checkpoints=cfg.save_total_limit,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    return trainer, info, eval_ds is not None


def _run_info(
    cfg: TrainConfig, method_cfg: MethodConfig, resolved: Any, model: MethodModel, argv: list[str] | None
) -> dict[str, Any]:
    """run.json at the start: what is run, on which base and data, with how many trainable parameters."""
    return {
        "modetune_version": __version__,
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(),
        "command": argv if argv is not None else sys.argv,
        "base_model": base_model_record(cfg.model, resolved),  # + the hub id, so the run travels
        "train_files": [str(Path(s).resolve()) for s in cfg.data if parse_synthetic_spec(s) is None],
        "synthetic_data": [s for s in cfg.data if parse_synthetic_spec(s) is not None],
        "train_config": cfg.to_dict(),
        f"{cfg.method}_config": method_cfg.to_dict(),
        "trainable_parameters": model.trainable_parameter_counts(),
        "layer_indices": model.layer_indices,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def _finetune_arguments(
    cfg: TrainConfig, out: Path, use_cpu: bool, evaluate: bool, model: MethodModel, is_main: bool
) -> TrainingArguments:
    dtype = _resolved_dtype(model)
    try:
        return training_arguments(
            cfg,
            out,
            use_cpu=use_cpu,
            evaluate=evaluate,
            num_train_epochs=cfg.num_epochs,
            report_to=[] if cfg.report_to == "none" else [cfg.report_to],
            bf16=dtype == "bfloat16",
            fp16=dtype == "float16",
            dataloader_num_workers=cfg.dataloader_workers,
            # Every trainable parameter gets a gradient on every step, whatever the MoDE options: the adapters
            # of layers that are not distilled on a step (distill_every, distill_schedule='rotate') still feed
            # the mixture, and top-k routing zeroes weights without cutting the graph
            # (tests/training/test_unused_parameters.py checks this). So DDP needs no unused-parameter search.
            ddp_find_unused_parameters=False,
            log_level="warning" if is_main else "error",
            log_level_replica="error",
        )
    except ValueError as exc:  # e.g. an unknown --lr-scheduler or --report-to
        raise ConfigError(f"invalid training option: {exc}") from None


def _run(
    trainer: MethodTrainer,
    info: dict[str, Any],
    out: Path,
    resume_from: Path | None,
    has_eval: bool,
    started: float,
    is_main: bool,
) -> TrainResult:
    if resume_from is not None and _finished_checkpoint(resume_from, trainer.args.max_steps):
        # killed while writing the final model: the Trainer would take one step past max_steps, so the
        # last checkpoint's weights are restored and saved as the final model instead
        trainer._load_from_checkpoint(str(resume_from))
        trainer.state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
        training_loss = _last_train_loss(out / "metrics.jsonl")
    else:
        started_with = trainer.accelerator.unwrap_model(trainer.model).begin_training(trainer.get_train_dataloader())
        if started_with:  # e.g. MoD's routers fitted to layer influence and thresholds calibrated, before step 1
            info["begin_training"] = started_with
            logger.info("before training: %s", started_with)
        training_loss = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).training_loss
        if stopped_early(trainer):
            if is_main:
                record_run_end(out, info, trainer.state.global_step, started, status="stopped")
            step = trainer.state.global_step
            return TrainResult(out, step, training_loss, None, time.time() - started, is_main, stopped=True)
    finished = trainer.accelerator.unwrap_model(trainer.model).finish_training(
        trainer.get_eval_dataloader() if has_eval else trainer.get_train_dataloader()
    )  # e.g. MoD's --target-skip calibration, before the final model is written
    if finished:
        info["finish_training"] = finished
        logger.info("after training: %s", finished)
    trainer.save_model(str(out))
    eval_loss = None
    if has_eval:
        eval_loss = float(trainer.evaluate()["eval_loss"])
    if is_main:
        curves = draw_training_curves(out)
        record_run_end(
            out,
            info,
            trainer.state.global_step,
            started,
            train_loss=training_loss,
            eval_loss=eval_loss,
            training_curves=str(curves) if curves else None,
        )
        try:
            write_model_card(out, info)  # replaces PEFT's empty template
        except Exception as exc:  # a card must never cost the user their trained model
            logger.warning("could not write the model card: %s", exc)
    return TrainResult(out, trainer.state.global_step, training_loss, eval_loss, time.time() - started, is_main)


def training_arguments(cfg: Any, out: Path, *, use_cpu: bool, evaluate: bool, **extra: Any) -> TrainingArguments:
    """The `TrainingArguments` every modetune recipe shares (train, pretrain), from a config with the usual fields.

    Checkpoints are pruned by the trainer only after they are marked complete, so `save_total_limit` stays off
    here; progress and logs go through modetune's own callbacks.
    """
    if use_cpu and _deepspeed_launch():
        # DeepSpeed's CPU path: accelerate drops DeepSpeed when told cpu=True (accelerate/state.py guards its
        # DeepSpeed set-up with `not cpu`), so it runs with use_cpu off and an explicit gloo process group
        use_cpu = False
        extra = {"ddp_backend": "gloo", "dataloader_pin_memory": False, **extra}
    return TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if (evaluate and cfg.eval_steps) else "no",
        eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,
        seed=cfg.seed,
        use_cpu=use_cpu,
        remove_unused_columns=False,
        disable_tqdm=True,
        prediction_loss_only=True,
        include_num_input_tokens_seen="no",
        **{"report_to": [], "data_seed": cfg.seed, **extra},
    )


def _finished_checkpoint(checkpoint: Path, max_steps: int) -> bool:
    """Whether a checkpoint was written after the last training step (nothing left to train); `max_steps`
    is this command's --max-steps (a resume may extend the run), else the run's own total from the state."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    total = max_steps if max_steps > 0 else int(state.get("max_steps") or 0)
    return total > 0 and int(state.get("global_step", 0)) >= total


def _last_train_loss(metrics: Path) -> float:
    """The run's mean training loss as logged before the kill (NaN if it never got that far)."""
    loss = float("nan")
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            loss = float(record.get("train_loss", loss))
    return loss


def _num_decoder_layers(path: Path) -> int | None:
    """The decoder depth from the model's config.json (None when the config does not say)."""
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True).get_text_config()
    except (OSError, ValueError, KeyError):
        return None  # loading the model reports it
    layers = getattr(config, "num_hidden_layers", None)
    return layers if isinstance(layers, int) else None


def _deepspeed_launch() -> bool:
    """Started by `accelerate launch` with DeepSpeed (`--use_deepspeed` or a config with distributed_type DEEPSPEED)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _cuda_available() -> bool:
    return torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


def _resolved_dtype(model: Any) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")
