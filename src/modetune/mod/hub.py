"""A MoD model as plain transformers loads it: the exported form of a `MoDModel` (see `modetune.hub`).

Tokens are routed exactly as in `MoDModel` (the same `TokenRouting`, routers and `MoDCache`), so logits and
cached generation match modetune's; training stays in modetune.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.hub import WrapperConfig, WrapperForCausalLM
from modetune.mod.routing import MoDCache, Router, TokenRouting


class MoDForCausalLM(TokenRouting, WrapperForCausalLM):
    """`self.model` with a router before each routed decoder layer: tokens scoring below the threshold skip it."""

    _keep_in_fp32_modules_strict = ["routers"]  # noqa: RUF012 (scores are computed in float32, as in MoDModel)

    def __init__(self, config: WrapperConfig) -> None:
        super().__init__(config)
        self.mod_config = SimpleNamespace(**config.method)
        self.layer_indices = list(config.method["layer_indices"])
        hidden = config.text_config.hidden_size
        self.routers = nn.ModuleList(Router(hidden, self.mod_config) for _ in self.layer_indices)
        self._tokens = None
        self._stats = None
        self.post_init()

    def _routed_stack(self) -> tuple[nn.ModuleList, nn.Module, PretrainedConfig]:
        return self.located("layers"), self.located("backbone"), self.model.config

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Like a `*ForCausalLM.forward`, with the routed layers skipping tokens."""
        kwargs.pop("return_dict", None)
        if use_cache is None:
            use_cache = not self.training and labels is None
        with self.routing():
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache, **kwargs
            )

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`transformers` generation; the KV cache is a `MoDCache` (each routed layer stores its own tokens)."""
        if kwargs.get("use_cache", True) and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs["cache"] = MoDCache()
        return super().generate(*args, **kwargs)
