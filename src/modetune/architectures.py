"""Where each model family keeps its decoder layers, final norm, output head and logit transform.

MoDE must send every late layer through exactly the path the final layer takes to the logits. That path
differs between families (a projection after the norm in some OPT sizes, soft-capping in Gemma-2, a logit
scale in Cohere and Granite), so it is written down here, one entry per family, instead of guessed.
An unknown family is a loud error; adding one is a single entry in `ARCHITECTURES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from modetune.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to `lm_head` output before returning logits: `cap * tanh(z * scale / cap)`.

    `scale` multiplies (Cohere's logit_scale, 1/Granite's logits_scaling); `softcap` is Gemma-2's
    final-logit soft-capping (None = no capping). Without capping the transform is linear, so mixing
    hidden states and projecting once gives the same logits as mixing per-layer logits.
    """

    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_affine(self) -> bool:
        return self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _no_transform(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform()


def _gemma2_softcap(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(softcap=getattr(config, "final_logit_softcapping", None))


def _cohere_scale(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(scale=float(config.logit_scale))


def _granite_scale(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(scale=1.0 / float(config.logits_scaling))


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted attribute paths, from the `*ForCausalLM` module, of the pieces MoDE needs."""

    backbone: str  # the decoder stack module; calling it returns the final hidden states and the cache
    layers: str  # the nn.ModuleList of decoder layers
    final_norm: str | None  # the final norm (None: the model has none, e.g. OPT-350m)
    head: str = "lm_head"
    pre_head: str | None = None  # a module between the final norm and the head (OPT's project_out)
    logit_transform: Callable[[PretrainedConfig], LogitTransform] = _no_transform


_LLAMA_LIKE = ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.norm")

# One entry per `config.model_type`. Every entry is covered by the same test harness (tests/test_mode.py).
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,  # includes SmolLM2
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "gemma2": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_gemma2_softcap
    ),
    "cohere": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_cohere_scale
    ),
    "granite": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_granite_scale
    ),
    "phi": ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.final_layernorm"),
    "gpt2": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_bigcode": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "falcon": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_neox": ArchitectureSpec(backbone="gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm"),
    "opt": ArchitectureSpec(
        backbone="model.decoder",
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        pre_head="model.decoder.project_out",
    ),
}


@dataclass(frozen=True)
class LinearHead:
    """An affine head path, x -> prepare(x) @ weight.T + bias."""

    prepare: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class LocatedModel:
    """The live modules of one model, found through its `ArchitectureSpec`."""

    model_type: str
    backbone: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    pre_head: nn.Module | None
    head: nn.Module
    transform: LogitTransform

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        """Normalized hidden states -> logits, exactly as the model maps its final hidden states."""
        if self.pre_head is not None:
            normed = self.pre_head(normed)
        return self.transform(self.head(normed))

    def head_path_parameters(self) -> list[nn.Parameter]:
        modules = [m for m in (self.pre_head, self.head) if m is not None]
        return [p for m in modules for p in m.parameters()]

    def head_is_affine(self) -> bool:
        return self.transform.is_affine

    def linear_head(self) -> tuple[LinearHead | None, str]:
        """The head path as `prepare(x) @ weight.T + bias`, the form fused kernels (Liger) take; else the reason.

        The logit scale is folded into the input and the bias (s * (W x + b) = W (s x) + s b), and a pre-head
        projection runs in `prepare`, so only a soft-capped head or a wrapped one (e.g. LoRA on `lm_head`)
        cannot be written this way.
        """
        if not self.transform.is_affine:
            return None, f"{self.model_type} soft-caps its logits, which mixes logits rather than hidden states"
        if type(self.head) is not nn.Linear:
            return None, f"the output head is a {type(self.head).__name__}, not a plain nn.Linear (e.g. PEFT-wrapped)"
        scale, pre_head, weight = self.transform.scale, self.pre_head, self.head.weight

        def prepare(normed: torch.Tensor) -> torch.Tensor:
            if pre_head is not None:
                normed = pre_head(normed.to(weight.dtype))
            return (normed * scale if scale != 1.0 else normed).to(weight.dtype)

        bias = self.head.bias
        return LinearHead(prepare, weight, None if bias is None else (bias * scale if scale != 1.0 else bias)), ""


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj  # type: ignore[return-value]


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def locate(model: PreTrainedModel) -> LocatedModel:
    """Find layers, norm and head of a `*ForCausalLM`; fail loudly for anything not in the table."""
    model_type = getattr(model.config, "model_type", None)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} ({type(model).__name__}) is not in modetune's architecture table; "
            f"supported: {', '.join(supported_model_types())}. To add it, write one ArchitectureSpec entry in "
            "modetune/architectures.py naming its decoder stack, layer list, final norm, head and logit transform "
            "(read the model's *ForCausalLM.forward), then run the architecture tests."
        )
    backbone, layers, head = _get(model, spec.backbone), _get(model, spec.layers), _get(model, spec.head)
    missing = [name for name, obj in (("backbone", backbone), ("layers", layers), ("head", head)) if obj is None]
    if missing or not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model type {model_type!r}) does not have the modules the architecture table "
            f"expects ({', '.join(f'{n}={getattr(spec, n)!r}' for n in missing or ['layers'])}); this transformers "
            "version may have renamed them. Update the entry in modetune/architectures.py."
        )
    final_norm = _get(model, spec.final_norm) if spec.final_norm else None
    pre_head = _get(model, spec.pre_head) if spec.pre_head else None
    transform = spec.logit_transform(model.config)
    if transform.softcap is not None and not math.isfinite(transform.softcap):
        transform = LogitTransform(scale=transform.scale)
    return LocatedModel(model_type, backbone, layers, final_norm, pre_head, head, transform)  # type: ignore[arg-type]
