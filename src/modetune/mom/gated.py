"""A vanilla llama-style transformer with per-token gated residual branches: the shrinkage control for MoM.

MoM's router weights are not renormalised (with 'softmax' weighting) and a SKIP pick adds nothing, so a token's
residual update in a round is its attention / FFN output times a weight well below 1 (about 0.34 summed over the
picked modules at initialisation for K = 2 of 4 modules + 1 SKIP; ~47% SKIP picks after training). Shrunk
updates alone may speed early training at a high learning rate, whatever the module assembly does. This model
tests that: the vanilla stack, where each branch's update is multiplied by a per-token scalar gate

    g = sigmoid(w . rmsnorm(x) + b)        (x: the residual stream entering the branch; rmsnorm without weights)

one gate for attention and one for the FFN in every layer, so each token can shrink its updates as MoM's router
weights do, with no module choice. `gate_init` is the gate's value at initialisation (w = 0, b = logit(gate_init)):
0.34 (default) starts at MoM's mean weight, a value near 1 (e.g. 0.95) starts as the vanilla model. With the gates
held at exactly 1 the model is the vanilla `LlamaForCausalLM` bit for bit (tested), and the same seed initialises
the shared weights identically (the gates draw no random numbers).

`gate_mode="scalar"` drops the per-token part: each branch's update is multiplied by one learnt scale
g = sigmoid(b) (LayerScale/ReZero-like), the same for every token. Against the per-token gate it separates
"shrunk updates" from "updates each token can shrink on its own".

It is a transformers model (model_type "modetune_gated_llama", registered with the Auto classes by
`modetune.mom`): save/load, `generate` with llama's KV cache and `Trainer` work as for llama.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from modetune.errors import ConfigError

GATE_INIT_HELP = (
    "Gated vanilla (--arch vanilla-gated): each residual update is multiplied by a per-token gate "
    "sigmoid(w . rmsnorm(x) + b); this is its value at initialisation, in (0, 1) (w = 0, b = logit of it). 0.34 = "
    "MoM's mean summed router weight per round at initialisation (K=2 of 4 modules + 1 SKIP); near 1 (e.g. 0.95) "
    "starts as the vanilla model."
)
GATE_MODES = ("token", "scalar")
GATE_MODE_HELP = (
    "Gated vanilla (--arch vanilla-gated): 'token' = one gate per token, sigmoid(w . rmsnorm(x) + b); 'scalar' = "
    "one learnt scale per residual branch, sigmoid(b), the same for every token (separates shrunk updates from "
    "per-token gating)."
)


def check_gate_init(value: float, name: str = "gate_init") -> None:
    """Refuse a gate start a sigmoid cannot take (`name`: how the caller spells the setting)."""
    if not 0 < value < 1:
        raise ConfigError(
            f"{name} must be in (0, 1), got {value!r}: a sigmoid gate never reaches 0 or 1 (and its gradient "
            "vanishes near them); use e.g. 0.95 to start close to the vanilla model"
        )


def check_gate_mode(value: str, name: str = "gate_mode") -> None:
    """Refuse a gate mode that is not one of `GATE_MODES`."""
    if value not in GATE_MODES:
        raise ConfigError(f"{name} {value!r} is not supported; allowed: {', '.join(GATE_MODES)}")


class GatedLlamaConfig(LlamaConfig):
    """A llama config plus `gate_init` (the residual gates' value at initialisation) and `gate_mode` (per token or
    one scale per branch)."""

    model_type = "modetune_gated_llama"

    def __init__(self, gate_init: float = 0.34, gate_mode: str = "token", **kwargs: Any):
        self.gate_init = float(gate_init)
        self.gate_mode = gate_mode
        super().__init__(**kwargs)
        check_gate_init(self.gate_init)
        check_gate_mode(self.gate_mode)


class ResidualGate(nn.Module):
    """g = sigmoid(w . rmsnorm(x) + b), one scalar per token: [B, T, d] -> [B, T, 1]; with `per_token=False`
    g = sigmoid(b), one scale for every token (no `weight`)."""

    def __init__(self, hidden_size: int, eps: float, per_token: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size)) if per_token else None
        self.bias = nn.Parameter(torch.zeros(()))
        self.eps = eps
        self.last_mean: torch.Tensor | None = None  # mean gate of the last forward (for the training logs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            g = torch.sigmoid(self.bias.to(x.dtype)).expand(x.shape[:-1])[..., None]
            self.last_mean = g.detach().float().mean()
            return g
        z = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        g = torch.sigmoid(z @ self.weight.to(z.dtype) + self.bias.to(z.dtype))[..., None]
        self.last_mean = g.detach().float().mean()
        return g


class GatedLlamaDecoderLayer(LlamaDecoderLayer):
    """llama's decoder layer with each residual branch's update multiplied by its per-token gate."""

    def __init__(self, config: GatedLlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        per_token = config.gate_mode == "token"
        self.attention_gate = ResidualGate(config.hidden_size, config.rms_norm_eps, per_token)
        self.ffn_gate = ResidualGate(config.hidden_size, config.rms_norm_eps, per_token)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        update, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + self.attention_gate(residual) * update
        residual = hidden_states
        update = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + self.ffn_gate(residual) * update


class GatedLlamaPreTrainedModel(LlamaPreTrainedModel):
    """Gated llama's shared plumbing: its config class and the gates' initialisation."""

    config_class = GatedLlamaConfig
    _no_split_modules = ["GatedLlamaDecoderLayer"]  # noqa: RUF012 (transformers' class attributes)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """llama's init, plus gates at w = 0, b = logit(gate_init) (no random numbers: same seed, same weights)."""
        if isinstance(module, ResidualGate):
            if module.weight is not None:
                module.weight.zero_()
            module.bias.fill_(math.log(self.config.gate_init / (1 - self.config.gate_init)))
        else:
            super()._init_weights(module)


class GatedLlamaModel(GatedLlamaPreTrainedModel, LlamaModel):
    """llama's decoder stack built from gated layers (its forward, masks and cache are llama's own)."""

    def __init__(self, config: GatedLlamaConfig):
        GatedLlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([GatedLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class GatedLlamaForCausalLM(GatedLlamaPreTrainedModel, LlamaForCausalLM):
    """Gated llama with its LM head: llama's loss, generation and cache; logs the mean gates while training."""

    def __init__(self, config: GatedLlamaConfig):
        GatedLlamaPreTrainedModel.__init__(self, config)
        self.model = GatedLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def gates(self) -> list[tuple[ResidualGate, ResidualGate]]:
        """(attention gate, FFN gate) of each layer."""
        return [(layer.attention_gate, layer.ffn_gate) for layer in self.model.layers]

    def training_logs(self, outputs: Any, share_scale: float = 1.0) -> dict[str, float]:
        """Mean attention and FFN gate of the last forward, over layers and tokens (padding included)."""
        means = [(a.last_mean, f.last_mean) for a, f in self.gates()]
        if any(a is None or f is None for a, f in means):
            return {}
        return {
            "gate/attention": float(torch.stack([a for a, _ in means]).mean()),
            "gate/ffn": float(torch.stack([f for _, f in means]).mean()),
        }
