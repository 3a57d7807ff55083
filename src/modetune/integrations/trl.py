"""TRL: train a MoDE model with ``trl.SFTTrainer``'s data handling, with MoDE's own loss.

``trl.SFTTrainer`` (1.x) does not use a model's loss: at construction it patches ``model.forward`` with a
fused LM head over the *final* layer and computes a plain cross-entropy from its per-token log-probs. On a
`MoDEModel` that would train the final layer alone (no ensemble, no distillation), so `MoDESFTTrainer`
keeps everything of SFTTrainer (dataset formats, chat templates, completion-only and assistant-only
masks, packing, its config) but leaves ``model.forward`` alone and takes ``outputs.loss`` from the MoDE
model: the ensemble cross-entropy + λ·distillation, computed by modetune's chunked (or Liger) loss.

    from trl import SFTConfig
    from modetune.integrations.trl import MoDESFTTrainer

    model = get_mode_model(get_peft_model(base, LoraConfig(...)), MoDEConfig(num_layers=3))
    trainer = MoDESFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds, processing_class=tokenizer)
    trainer.train(); model.save_pretrained("out/")

Refused, with the reason (each would replace MoDE's loss by one TRL computes from final-layer outputs):
``loss_type="dft"``, ``label_smoothing_factor > 0``, ``compute_loss_func=``, ``use_liger_kernel=True``
(use modetune's ``loss_implementation="liger"`` for fused kernels), and ``peft_config=`` (wrap the model
with PEFT before `get_mode_model`). A plain ``trl.SFTTrainer`` given a `MoDEModel` fails in TRL 1.16
(``add_model_tags``), and would otherwise train with its final-layer loss. Packing runs (TRL's
padding-free batches reach the model as ``position_ids``), but whether packed documents stay separated
depends on the attention implementation, as for any model under TRL. ``SFTConfig`` defaults to
``bf16=True``; on a CPU pass ``bf16=False``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from modetune.errors import ConfigError
from modetune.mode import MoDEModel

try:
    import trl.trainer.sft_trainer as _sft_module
    from trl import SFTTrainer
except ImportError as exc:  # pragma: no cover - depends on the optional dependency
    raise ConfigError("TRL is not installed; install it with `pip install trl`") from exc

__all__ = ["MoDESFTTrainer"]


def _refuse_unsupported(model: Any, args: Any, kwargs: dict[str, Any]) -> None:
    if not isinstance(model, MoDEModel):
        raise ConfigError(
            f"MoDESFTTrainer trains a MoDEModel (get_mode_model(...)); got {type(model).__name__}. "
            "For a model without MoDE use trl.SFTTrainer itself"
        )
    if kwargs.get("peft_config") is not None:
        raise ConfigError(
            "MoDESFTTrainer: peft_config= is not supported; wrap the base with PEFT first, then MoDE: "
            "get_mode_model(get_peft_model(base, LoraConfig(...)), MoDEConfig(...))"
        )
    if kwargs.get("compute_loss_func") is not None:
        raise ConfigError(
            "MoDESFTTrainer: compute_loss_func= would replace MoDE's loss (ensemble CE + distillation); "
            "MoDE's loss options are in MoDEConfig"
        )
    if args is None:
        return
    if getattr(args, "loss_type", "nll") not in ("nll", None):
        raise ConfigError(
            f"MoDESFTTrainer: loss_type={args.loss_type!r} is computed by TRL from the final layer's token "
            "log-probs, not from the MoDE ensemble; use loss_type='nll' (MoDE's own loss)"
        )
    if getattr(args, "label_smoothing_factor", 0.0):
        raise ConfigError(
            "MoDESFTTrainer: label_smoothing_factor > 0 makes the trainer compute a smoothed loss from logits "
            "itself, bypassing MoDE's loss; set it to 0"
        )
    if getattr(args, "use_liger_kernel", False):
        raise ConfigError(
            "MoDESFTTrainer: use_liger_kernel=True patches the model for TRL's own loss path; for fused kernels "
            "use MoDEConfig(loss_implementation='liger') (Liger's fused linear cross-entropy and JSD inside "
            "MoDE's loss)"
        )


@contextlib.contextmanager
def _without_fused_lm_head() -> Iterator[None]:
    """SFTTrainer.__init__ patches model.forward with a final-layer fused head; skip that for MoDE."""
    original = _sft_module.add_fused_lm_head
    _sft_module.add_fused_lm_head = lambda *args, **kwargs: None
    try:
        yield
    finally:
        _sft_module.add_fused_lm_head = original


class MoDESFTTrainer(SFTTrainer):
    """``trl.SFTTrainer`` for a `MoDEModel`: TRL's data pipeline, MoDE's loss (see the module docstring).

    Logged besides TRL's metrics: ``mode/ce_ensemble`` and ``mode/distill`` (the two loss terms), so a
    run shows that the ensemble loss is the one being optimised.
    """

    def __init__(self, model: Any, args: Any = None, **kwargs: Any) -> None:
        _refuse_unsupported(model, args, kwargs)
        if not hasattr(model, "add_model_tags"):  # TRL tags the model card of the model it trains

            def add_model_tags(tags: Any, _model: Any = model) -> None:
                inner = _model.causal_lm
                if hasattr(inner, "add_model_tags"):
                    inner.add_model_tags(tags)

            model.add_model_tags = add_model_tags
        with _without_fused_lm_head():
            super().__init__(model=model, args=args, **kwargs)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        inputs["use_cache"] = False
        # TRL's collator may add fields a causal LM does not take (completion/assistant masks: already in labels)
        for key in ("completion_mask", "assistant_masks"):
            inputs.pop(key, None)
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch, skip_logits=True if model.training else None)
        loss = outputs.loss
        if outputs.ce_loss is not None:
            self._metrics[mode]["mode/ce_ensemble"].append(float(outputs.ce_loss))
        if outputs.distill_loss is not None and outputs.distill_loss.numel():
            self._metrics[mode]["mode/distill"].append(float(outputs.distill_loss.sum()))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None and self.model.training:
            # like Trainer.compute_loss: the token count spans every rank and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
