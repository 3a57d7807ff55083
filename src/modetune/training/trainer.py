"""`MethodTrainer`: `transformers.Trainer` taught three things every modetune recipe needs: log each loss
component the model reports, save only what trains, and make checkpoints that a killed process can never
leave half-valid.

It trains two kinds of model: a `MethodModel` (a depth method around a causal LM, `modetune train`: only the
method's weights and the PEFT adapter are saved) and a whole `PreTrainedModel` (`modetune pretrain`: saved
with its own `save_pretrained`). Either reports what it logs through `training_logs(outputs, share_scale)`.

Everything else (optimizer, schedule, gradient accumulation, mixed precision, DDP/FSDP/DeepSpeed through
accelerate, resuming data order and RNG) is the Trainer's own, so `accelerate launch` / `torchrun` work.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modetune.errors import ModetuneError
from modetune.files import atomic_write_text
from modetune.method_base import MethodModel, _is_peft
from modetune.runs import CHECKPOINT_MARKER


class TrainingDivergedError(ModetuneError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class MethodTrainer(Trainer):
    """A Trainer for a `MethodModel` (plain or wrapping a PEFT model) or a whole `PreTrainedModel`."""

    def __init__(self, *args: Any, keep_checkpoints: int | None = 2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keep_checkpoints = keep_checkpoints
        self._sums: dict[str, float] = {}
        self._tokens = 0
        self._window_start = time.perf_counter()
        self.tokens_seen = 0
        self._refuse_a_deepspeed_optimizer_with_router_scale()

    @property
    def trained_model(self) -> Any:
        """The model being trained, without the accelerate/DDP wrappers."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def wraps_method(self) -> bool:
        """A depth method around a causal LM (saved as its own weights + adapter), not a whole model."""
        return isinstance(self.trained_model, MethodModel)

    def _router_lr_scale(self) -> float:
        """The wrapped method's router rate multiple (1 for a whole model, e.g. MoM)."""
        return self.trained_model.router_lr_scale if self.wraps_method else 1.0

    def _refuse_a_deepspeed_optimizer_with_router_scale(self) -> None:
        """A DeepSpeed config with its own optimizer (or scheduler) bypasses `create_optimizer` (or sets every
        group's rate), which would drop `router_lr_scale` without a word."""
        scale = self._router_lr_scale()
        if scale == 1.0 or not self.is_deepspeed_enabled:
            return
        config = self.accelerator.state.deepspeed_plugin.hf_ds_config.config
        owned = [name for name in ("optimizer", "scheduler") if name in config]
        if owned:
            raise ModetuneError(
                f"router_lr_scale={scale} cannot be applied: the DeepSpeed config defines its own "
                f"{' and '.join(owned)}; remove that section (the Trainer's AdamW and schedule then carry the router "
                "group) or use router_lr_scale=1"
            )

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the routers in their own groups at `router_lr_scale` x the learning rate.

        A router starts from W = 0 and, at a LoRA-sized learning rate, barely moves in a short run (MoD's
        routers must move their scores by several units within a conversion; MoDE's W_g moved < 0.02 in issue
        11's runs). Each router parameter keeps the weight decay the Trainer gave it; the schedule scales every
        group alike. At scale 1 the optimizer is the Trainer's own.
        """
        optimizer = super().create_optimizer(model)
        scale = self._router_lr_scale()
        if scale == 1.0 or any(g.get("modetune_routers") for g in optimizer.param_groups):
            return optimizer
        routers = [p for p in self.trained_model.router_parameters() if p.requires_grad]
        ids = {id(p) for p in routers}
        decay_of: dict[int, float] = {}  # router parameter -> the weight decay of the group the Trainer put it in
        for group in optimizer.param_groups:
            decay_of.update((id(p), group.get("weight_decay", 0.0)) for p in group["params"] if id(p) in ids)
            group["params"] = [p for p in group["params"] if id(p) not in decay_of]
        if len(decay_of) != len(routers):  # e.g. FSDP's flattened parameters
            raise ModetuneError(
                f"router_lr_scale={scale} needs the routers' own parameters in the optimizer, but this setup hands it "
                "flattened or wrapped ones; use router_lr_scale=1, or FSDP with use_orig_params=True / FSDP2"
            )
        # in the routers' own order, one group per weight decay, emptied Trainer groups kept: with one decay
        # value this is the group layout MoD's runs have always saved, so their checkpoints still resume
        for decay in dict.fromkeys(decay_of[id(p)] for p in routers):
            optimizer.add_param_group(
                {"params": [p for p in routers if decay_of[id(p)] == decay], "lr": self.args.learning_rate * scale,
                 "weight_decay": decay, "modetune_routers": True}
            )  # fmt: skip
        return optimizer

    # -- loss and metrics ----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The CE parts are this micro-batch's share of a mean over every rank's and micro-batch's tokens
        # (num_items_in_batch counts them all); the loss is then multiplied by the ranks (see _rank_scale).
        # Per-batch mean terms (MoD's load term, a MoE base model's aux loss) are divided by micro-batches x
        # ranks, so their weight does not grow with --grad-accum or the number of processes.
        steps = self.args.gradient_accumulation_steps if num_items_in_batch is not None else 1
        shares = steps * self._rank_scale(num_items_in_batch)
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch, **self._forward_options(model, shares))
        loss, _ = self._checked_loss(
            outputs.loss, num_items_in_batch, "Lower --learning-rate, check the data, or train in float32."
        )
        if model.training:  # scaled back by `shares`, each logged part estimates the step's mean
            report = getattr(self.trained_model, "training_logs", None)  # a plain transformers model has none
            self._record(report(outputs, shares) if report is not None else {}, inputs)
        return (loss, outputs) if return_outputs else loss

    def _forward_options(self, model: Any, shares: int) -> dict[str, Any]:
        """A method's forward learns the step and skips the logits it does not need; a whole model no cache."""
        if not self.wraps_method:
            return {"use_cache": False}
        if model.training:
            self.trained_model.current_step = self.state.global_step
        skip_logits = True if (model.training or self.args.prediction_loss_only) else None
        return {"skip_logits": skip_logits, "micro_batches": shares if model.training else 1}

    def _checked_loss(
        self, loss: torch.Tensor, num_items_in_batch: int | torch.Tensor | None, advice: str
    ) -> tuple[torch.Tensor, int]:
        """The loss scaled for several ranks, and stopped before the update if it is not finite."""
        scale = self._rank_scale(num_items_in_batch)
        loss = loss * scale if scale != 1 else loss
        if not torch.isfinite(loss.detach()).all():
            last = latest_complete_checkpoint(self.args.output_dir)
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {self.state.global_step}; training stopped before the bad "
                f"update. Last good checkpoint: {last or 'none yet'}. {advice}"
            )
        return loss, scale

    def _rank_scale(self, num_items_in_batch: int | torch.Tensor | None) -> int:
        """As Trainer.compute_loss: each rank's loss is its share of a sum over the tokens of all ranks
        (num_items_in_batch counts them all), and DDP averages gradients over ranks, so the loss is multiplied by
        the number of ranks; without this, multi-process gradients are 1/world_size too small."""
        if not (self.args.average_tokens_across_devices and num_items_in_batch is not None):
            return 1
        scale = self.accelerator.num_processes // self.get_tp_size()
        return scale if self.args.n_gpu <= 1 else self.args.n_gpu

    def _record(self, values: dict[str, float], inputs: dict[str, torch.Tensor]) -> None:
        """Add one step's loss components and token count to the window that the next log averages."""
        for key, value in values.items():
            if math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + value
                self._sums[f"#{key}"] = self._sums.get(f"#{key}", 0.0) + 1
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        self._tokens += tokens
        self.tokens_seen += tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the model's components averaged since the last one
            for key, total in self._sums.items():
                if not key.startswith("#"):
                    logs[key] = total / self._sums[f"#{key}"]
            elapsed = time.perf_counter() - self._window_start
            if elapsed > 0 and self._tokens:
                logs["tokens_per_second"] = self._tokens / elapsed
            logs["tokens_seen"] = self.tokens_seen
            self._sums, self._tokens, self._window_start = {}, 0, time.perf_counter()
        super().log(logs, start_time)

    # -- saving and resuming -------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self.trained_model
        if not self.wraps_method or state_dict is None:
            model.save_pretrained(output_dir)
        else:
            # FSDP (full state dict) / DeepSpeed ZeRO-3: this rank's parameters are shards, and the Trainer has
            # gathered the whole state dict here; the method's weights and the PEFT adapter are written from it
            gathered = {
                k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k.startswith(model.state_prefixes)
            }
            peft_state = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
            model.save_pretrained(
                output_dir, method_state=gathered, **({"state_dict": peft_state} if _is_peft(model.model) else {})
            )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        write_marker(folder, {"global_step": self.state.global_step, "tokens_seen": self.tokens_seen})
        prune_checkpoints(Path(self.args.output_dir), self.keep_checkpoints)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        folder = Path(resume_from_checkpoint)
        if self.wraps_method:
            _load_method_checkpoint(self.trained_model, folder)
        else:
            _load_whole_model_checkpoint(self.trained_model, folder)
        state = (
            json.loads((folder / "trainer_state.json").read_text()) if (folder / "trainer_state.json").exists() else {}
        )
        marker = json.loads((folder / CHECKPOINT_MARKER).read_text()) if (folder / CHECKPOINT_MARKER).exists() else {}
        self.tokens_seen = int(marker.get("tokens_seen", 0)) or int(state.get("num_input_tokens_seen", 0) or 0)


def _load_method_checkpoint(model: MethodModel, folder: Path) -> None:
    """The method's weights and, under PEFT, the adapter's, from a checkpoint folder."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    model.load_method_weights(folder)
    if isinstance(model.model, PeftModel):
        adapter = folder / "adapter_model.safetensors"
        if not adapter.is_file():
            raise ModetuneError(f"{adapter} is missing: the checkpoint {folder} is incomplete")
        set_peft_model_state_dict(model.model, load_file(str(adapter)))


def _load_whole_model_checkpoint(model: Any, folder: Path) -> None:
    """A whole model's model.safetensors (tied output embeddings may be absent: they are the input ones)."""
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModetuneError(f"{weights} is missing: the checkpoint {folder} is incomplete")
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModetuneError(f"{weights} does not match the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()


def write_marker(folder: Path, payload: dict[str, Any]) -> None:
    """Mark a checkpoint complete: written last, atomically, after every other file is on disk."""
    atomic_write_text(folder / CHECKPOINT_MARKER, json.dumps(payload), fsync=True)


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The optimiser step a `checkpoint-N` directory was saved at."""
    return int(Path(checkpoint).name.split("-")[-1])


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            name = path.name
            if path.is_dir() and name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and name.split("-")[-1].isdigit():
                found.append((checkpoint_step(path), path))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint with its completion marker; half-written ones are never returned."""
    complete = [p for _, p in _checkpoints(Path(output_dir)) if (p / CHECKPOINT_MARKER).is_file()]
    return complete[-1] if complete else None


def prune_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Delete incomplete checkpoints older than the newest complete one, and complete ones beyond `keep`."""
    checkpoints = _checkpoints(output_dir)
    complete = [p for _, p in checkpoints if (p / CHECKPOINT_MARKER).is_file()]
    newest = complete[-1] if complete else None
    for step, path in checkpoints:
        if path in complete:
            continue
        if newest is not None and step < checkpoint_step(newest):
            shutil.rmtree(path, ignore_errors=True)
    if keep:
        for path in complete[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log (training and evaluation) to `metrics.jsonl`, one JSON object per line."""

    def __init__(self, path: Path):
        self.path = path
        self._last_logged_step = -1

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed at the very end (killed while writing the final model): the Trainer logs the last
        # step's loss again; the line from before the kill stays, the repeat is dropped
        if state.is_world_process_zero and self.path.is_file():
            for line in self.path.read_text().splitlines():
                record = json.loads(line) if line.strip() else {}
                if "loss" in record:
                    self._last_logged_step = max(self._last_logged_step, int(record.get("step", -1)))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs and state.global_step <= self._last_logged_step:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


class StopAfterStepCallback(TrainerCallback):
    """Ends the session once step `step` is trained, logged and checkpointed (`--stop-after-step`). The schedule
    stays that of --max-steps, so a run resumed from that checkpoint trains as one never stopped would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step <= state.global_step < state.max_steps:
            control.should_log = control.should_save = control.should_training_stop = True
        return control


def session_callbacks(out: Path, stop_after_step: int = 0) -> list[TrainerCallback]:
    """The callbacks every recipe trains with: metrics.jsonl, the progress bar, and the optional early stop."""
    callbacks: list[TrainerCallback] = [JsonlMetricsCallback(out / "metrics.jsonl"), ProgressCallback()]
    if stop_after_step:
        callbacks.append(StopAfterStepCallback(stop_after_step))
    return callbacks


def stopped_early(trainer: Trainer) -> bool:
    """Whether the session ended before the schedule's last step (`--stop-after-step`)."""
    return trainer.state.global_step < trainer.state.max_steps


class ProgressCallback(TrainerCallback):
    """A tqdm bar with loss, tokens/s and ETA (replaces the Trainer's default bar)."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            postfix = {"loss": f"{logs['loss']:.4f}"}
            if "tokens_per_second" in logs:
                postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
            self.bar.set_postfix(postfix)
        elif self.bar is not None and logs and "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
