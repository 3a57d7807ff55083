"""The shared half of a modetune model that loads with plain transformers (`trust_remote_code=True`).

`modetune export` writes a model directory whose `modeling_modetune.py` is this module, the method's own
inference core and its wrapper class, put together into one file (`modetune.export.bundle_sources`); so this
module imports only torch and transformers. A wrapper is a composite model, as transformers' multimodal
models are: `config.text_config` is the base model's config, `self.model` the base `*ForCausalLM` built from
it, and the method's modules sit beside it. `config.located` says where the base model keeps its decoder
layers, final norm and head (dotted paths, as `modetune.architectures` proved them), and `config.lora`, when
the adapters were not merged, which linear layers carry a LoRA adapter of which rank and scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# the output field of the KV cache: `cache` from transformers 5.24 on (`past_key_values` is its deprecated alias)
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class WrapperConfig(PretrainedConfig):
    """The base model's config (`text_config`) plus the method's settings, where things are, and the adapters."""

    model_type = "modetune"

    def __init__(
        self,
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        method: dict[str, Any] | None = None,
        located: dict[str, Any] | None = None,
        lora: dict[str, list[float]] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config["model_type"]](**text_config)
        self.text_config = text_config
        self.method = dict(method or {})
        self.located = dict(located or {})
        self.lora = dict(lora) if lora else None  # module path -> [rank, scaling]
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)


class LoraLinear(nn.Module):
    """y = W x + scaling * B(A(x)): a LoRA adapter beside a frozen linear layer, as PEFT computes it at inference."""

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        update = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
        return (result + update).to(result.dtype)


def add_lora(model: nn.Module, lora: dict[str, list[float]]) -> None:
    """Replace each listed linear layer of `model` by a `LoraLinear` of the stated rank and scaling."""
    for path, (rank, scaling) in lora.items():
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, LoraLinear(getattr(parent, name), int(rank), float(scaling)))


class WrapperForCausalLM(PreTrainedModel, GenerationMixin):
    """A base `*ForCausalLM` (`self.model`) with a depth method around it; subclasses add the method."""

    config_class = WrapperConfig
    base_model_prefix = "wrapper"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: WrapperConfig) -> None:
        super().__init__(config)
        if getattr(config, "_attn_implementation", None):  # from_pretrained(..., attn_implementation=...) reaches it
            config.text_config._attn_implementation = config._attn_implementation
        # in the dtype transformers is building the wrapper in (from_pretrained's `dtype`), not text_config's own
        self.model = AutoModelForCausalLM.from_config(config.text_config, dtype=torch.get_default_dtype())
        if config.lora:
            add_lora(self.model, config.lora)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def located(self, name: str) -> Any:
        """The base model's module at `config.located[name]` (None when the model has none, e.g. no final norm)."""
        path = self.config.located.get(name)
        return self.model.get_submodule(path) if path else None

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        """Normalized hidden states -> logits, exactly as the base model maps its final hidden states."""
        pre_head, head = self.located("pre_head"), self.located("head")
        normed = normed.to(self.dtype)
        if pre_head is not None:
            normed = pre_head(normed)
        logits = head(normed)
        scale, softcap = self.config.located.get("logit_scale", 1.0), self.config.located.get("logit_softcap")
        if scale != 1.0:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from the exported file; nothing is initialised at random."""
