"""The shared `MoDETrainer` (metrics.jsonl, crash-safe checkpoints, resume) taught to train a `MoDModel`.

Only two things differ: which model type it unwraps, and which quantities it logs (the LM loss, the load
term, and per routed layer the fraction of tokens processed and the mean router score).
"""

from __future__ import annotations

from typing import Any

import torch

from modetune.mod.model import MoDModel
from modetune.training.trainer import MoDETrainer


class MoDTrainer(MoDETrainer):
    """A Trainer for a `MoDModel` (plain or wrapping a PEFT model)."""

    @property
    def mode_model(self) -> MoDModel:  # the name the shared trainer's save/resume code uses
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, MoDModel):
            raise TypeError(f"MoDTrainer needs a MoDModel, got {type(model).__name__}")
        return model

    def _accumulate(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> None:
        values: dict[str, float] = {}
        if outputs.lm_loss is not None:  # a share of the step's mean, as MoDE's parts (see compute_loss)
            values["lm_loss"] = float(outputs.lm_loss.detach()) * getattr(self, "_share_scale", 1)
        if outputs.load_loss is not None:
            values["load_loss"] = float(outputs.load_loss.detach())
        layers = self.mode_model.layer_indices
        if outputs.processed_fraction is not None:
            fractions = outputs.processed_fraction.tolist()
            for i, v in enumerate(fractions):
                values[f"processed/layer{layers[i]}"] = v
            values["processed_mean"] = sum(fractions) / len(fractions)
        if outputs.router_load is not None:
            for i, v in enumerate(outputs.router_load.tolist()):
                values[f"router_load/layer{layers[i]}"] = v
        self._record(values, inputs)
