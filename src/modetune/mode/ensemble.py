"""MoDE's inference core: the late-layer adapters, the router and the ensemble, in torch alone.

This module imports nothing from modetune but `modetune.errors` and `modetune.tensors`, so `modetune export` copies it into a model directory that plain
transformers loads (`trust_remote_code=True`); `MoDEModel` (training, losses, PEFT) is built on the same pieces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modetune.errors import ConfigError
from modetune.tensors import first_tensor


# --------------------------------------------------------------------------------------------------
# The two small trainable pieces: per-layer adapters and the router
# --------------------------------------------------------------------------------------------------
class NormAdapter(nn.Module):
    """A trainable copy of the model's final norm (same class, same initial weights)."""

    def __init__(self, final_norm: nn.Module):
        super().__init__()
        self.norm = copy.deepcopy(final_norm).float()
        self.norm._forward_hooks.clear()
        self.norm._forward_pre_hooks.clear()
        for p in self.norm.parameters():
            p.requires_grad_(True)

    def forward(self, h: torch.Tensor, final_norm: nn.Module) -> torch.Tensor:
        return self.norm(h.float())


class AffineAdapter(nn.Module):
    """A d x d affine map initialised to the identity, followed by the model's frozen final norm."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=True)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(hidden_size))
            self.linear.bias.zero_()

    def forward(self, h: torch.Tensor, final_norm: nn.Module) -> torch.Tensor:
        mapped = self.linear(h.float())
        return final_norm(mapped.to(h.dtype)).float()


class SharedNormAdapter(nn.Module):
    """No trainable weights: the late layer goes through the model's own (frozen) final norm."""

    def forward(self, h: torch.Tensor, final_norm: nn.Module) -> torch.Tensor:
        return final_norm(h).float()


def make_adapter(kind: str, final_norm: nn.Module | None, hidden_size: int) -> nn.Module:
    if kind == "norm":
        if final_norm is None:
            raise ConfigError(
                "adapter='norm' copies the model's final norm, but this model has none; "
                "allowed here: adapter='affine' or adapter='none'"
            )
        return NormAdapter(final_norm)
    if kind == "affine":
        return AffineAdapter(hidden_size)
    return SharedNormAdapter()


def confidence_feature_count(k: int) -> int:
    """Entropy and max log-prob of each of the k late layers, plus top-1 agreement of the k - 1 others."""
    return 3 * k - 1 if k > 1 else 0


@torch.no_grad()
def confidence_features(ys: list[torch.Tensor], project: Any, chunk_size: int) -> torch.Tensor:
    """[..., 3k - 1]: each late layer's prediction entropy and max log-prob, then whether each non-final layer's
    top-1 token is the final layer's; chunk by chunk over positions, so at most [chunk, vocab] logits per layer
    are alive. Without gradient: the router learns to read how sure each layer is, not to change it."""
    lead = ys[0].shape[:-1]
    flat = [y.reshape(-1, y.shape[-1]) for y in ys]
    out = []
    for start in range(0, flat[0].shape[0], chunk_size):
        entropies, max_logps, tops = [], [], []
        for y in flat:
            logp = F.log_softmax(project(y[start : start + chunk_size]).float(), dim=-1)
            entropies.append(-(logp.exp() * logp).sum(-1))
            top = logp.max(-1)
            max_logps.append(top.values)
            tops.append(top.indices)
        agree = [(top == tops[-1]).float() for top in tops[:-1]]
        out.append(torch.stack(entropies + max_logps + agree, dim=-1))
    return torch.cat(out).reshape(*lead, -1)


class Router(nn.Module):
    """g = softmax(x W_g + b) over the k late layers, per token (b absent with router_bias=False, the paper's
    form); optionally keep only the top_k weights. With router_confidence, x = [y_L; features]."""

    def __init__(self, hidden_size: int, config: Any):
        super().__init__()
        k = config.num_layers
        extra = confidence_feature_count(k) if config.router_confidence else 0
        self.gate = nn.Linear(hidden_size + extra, k, bias=config.router_bias)
        self.top_k = config.top_k if config.router == "topk" else None
        with torch.no_grad():
            self.gate.weight.zero_()
            if self.gate.bias is not None:
                self.gate.bias.zero_()
            if config.router_init == "final" and k > 1 and self.gate.bias is not None:
                # softmax gives the final layer router_final_weight and the others (1 - w) / (k - 1) each
                w = config.router_final_weight
                self.gate.bias[-1] = torch.log(torch.tensor(w * (k - 1) / (1.0 - w)))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is not None:
            x = torch.cat([x.float(), features.float()], dim=-1)
        gates = F.softmax(self.gate(x.float()), dim=-1)
        if self.top_k is not None and self.top_k < gates.shape[-1]:
            top = gates.topk(self.top_k, dim=-1)
            kept = torch.zeros_like(gates).scatter(-1, top.indices, top.values)
            gates = kept / kept.sum(-1, keepdim=True)
        return gates


def keep_positions(t: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions a `*ForCausalLM` would compute logits for (`logits_to_keep`, as in transformers)."""
    if isinstance(logits_to_keep, int):
        return t if logits_to_keep == 0 else t[:, -logits_to_keep:]
    return t[:, logits_to_keep]


def mix(xs: list[torch.Tensor] | tuple[torch.Tensor, ...], gates: torch.Tensor) -> torch.Tensor:
    """sum_i gates[..., i] * xs[i]: the router's mixture, one fused multiply-add per layer (no stacked copy)."""
    mixed = xs[0] * gates[..., :1].to(xs[0].dtype)
    for i in range(1, len(xs)):
        mixed = mixed.addcmul(xs[i], gates[..., i : i + 1].to(xs[i].dtype))
    return mixed


@contextmanager
def capture_late_states(
    layers: nn.ModuleList, layer_indices: list[int], final_source: nn.Module
) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks recording h_i of each non-final late layer (slots 0..k-2) and, in slot k-1, the output of
    `final_source` (the final norm, or the last layer when the model has none)."""
    states: dict[int, torch.Tensor] = {}

    def store(slot: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            states[slot] = first_tensor(output)  # type: ignore[assignment]

        return hook

    handles = [layers[idx].register_forward_hook(store(slot)) for slot, idx in enumerate(layer_indices[:-1])]
    handles.append(final_source.register_forward_hook(store(len(layer_indices) - 1)))
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def normalized_states(
    adapters: nn.ModuleList, states: dict[int, torch.Tensor], final_norm: nn.Module | None
) -> list[torch.Tensor]:
    """k tensors [batch, seq, d] in float32: N_i(h_i) for the non-final late layers, then y_L."""
    final_norm = final_norm if final_norm is not None else nn.Identity()
    ys = [adapter(states[i], final_norm) for i, adapter in enumerate(adapters)]
    ys.append(states[len(adapters)].float())
    return ys


def ensemble_logits(
    ys: list[torch.Tensor],
    gates: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    mix_hidden: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """sum_i g_i * head(y_i): one projection of the mixed states when the head path is affine (`mix_hidden`)."""
    if mix_hidden:
        return project(mix(ys, gates))
    return mix([project(y).float() for y in ys], gates).to(dtype)
