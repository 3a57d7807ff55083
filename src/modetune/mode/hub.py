"""A MoDE model as plain transformers loads it: the exported form of a `MoDEModel` (see `modetune.hub`).

It predicts exactly as `MoDEModel` does at inference (logits from the late-layer ensemble, generation with the
base model's KV cache), from the same pieces (`modetune.mode.ensemble`); training stays in modetune.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.hub import CACHE_FIELD, WrapperConfig, WrapperForCausalLM
from modetune.mode.ensemble import (
    Router,
    capture_late_states,
    confidence_features,
    ensemble_logits,
    keep_positions,
    make_adapter,
    normalized_states,
)

CONFIDENCE_CHUNK = 1024  # positions per chunk of the router's confidence features (the result does not depend on it)


class MoDEForCausalLM(WrapperForCausalLM):
    """The last k layers of `self.model` predict together: sum_i g_i * head(N_i(h_i)), routed per token."""

    _keep_in_fp32_modules_strict = ["adapters", "router"]  # noqa: RUF012 (computed in float32, as in MoDEModel)

    def __init__(self, config: WrapperConfig) -> None:
        super().__init__(config)
        settings = SimpleNamespace(**config.method)
        self.settings = settings
        num_layers = len(self.located("layers"))
        self.layer_indices = list(range(num_layers - settings.num_layers, num_layers))
        hidden = config.text_config.hidden_size
        final_norm = self.located("final_norm")
        self.adapters = nn.ModuleList(
            make_adapter(settings.adapter, final_norm, hidden) for _ in range(settings.num_layers - 1)
        )
        self.router = Router(hidden, settings)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Like a `*ForCausalLM.forward`; the logits (and the loss, with labels) come from the ensemble."""
        kwargs.pop("return_dict", None)
        final_norm = self.located("final_norm")
        layers = self.located("layers")
        final_source = final_norm if final_norm is not None else layers[self.layer_indices[-1]]
        with capture_late_states(layers, self.layer_indices, final_source) as states:
            out = self.located("backbone")(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        states = {slot: keep_positions(h, logits_to_keep) for slot, h in states.items()}
        ys = normalized_states(self.adapters, states, final_norm)
        features = None
        if self.settings.router_confidence and len(ys) > 1:
            features = confidence_features(ys, self.project, CONFIDENCE_CHUNK)
        gates = self.router(ys[-1], features)
        mix_hidden = self.config.located.get("logit_softcap") is None and self.settings.mix_in_hidden_space
        logits = ensemble_logits(ys, gates, self.project, mix_hidden, self.dtype)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.text_config.vocab_size)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: out.get(CACHE_FIELD)},
            hidden_states=out.get("hidden_states"),
            attentions=out.get("attentions"),
        )
