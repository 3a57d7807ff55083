"""MoM's phase 2: a Mixture-of-Modules model whose module pool starts from a pretrained causal LM's layers."""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from modetune.architectures import locate
from modetune.errors import UnsupportedArchitectureError
from modetune.mom.config import MOM_FAMILIES, MoMConfig
from modetune.mom.model import MoMForCausalLM


def from_pretrained_layers(model: PreTrainedModel, config: MoMConfig | None = None) -> MoMForCausalLM:
    """Phase 2 of MoM: build the pool from a causal LM's layers (module i = layer i mod L), keep its
    embeddings, final norm and head. With `fix_routes_to_layers()` the result computes the model's own logits.

    `config` gives pool sizes, rounds, K and router, used as given (its `base_config` is replaced by the
    model's config); without one: m^A = m^F = H = L, K = 1, one SKIP.
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MOM_FAMILIES:
        raise UnsupportedArchitectureError(
            f"MoM can split layers of {', '.join(MOM_FAMILIES)} models, not {model_type!r}: its decoder layers must be "
            "pre-norm with `input_layernorm`, `self_attn`, `post_attention_layernorm` and `mlp`"
        )
    located = locate(model)
    layers = located.layers
    L = len(layers)
    values = config.to_dict() if config is not None else {}
    for key in ("model_type", "transformers_version", "architectures", "base_config", "pool_init"):
        values.pop(key, None)
    for key in ("num_attention_modules", "num_ffn_modules", "num_rounds"):
        values.setdefault(key, L)
    base = model.config.to_dict()
    attn_impl = getattr(model.config, "_attn_implementation", None)
    mom_config = MoMConfig(base_config=base, pool_init="layers", **values)
    if attn_impl:
        mom_config._attn_implementation = attn_impl
    dtype = next(model.parameters()).dtype
    mom = MoMForCausalLM(mom_config).to(dtype)
    with torch.no_grad():
        mom.embed_tokens.load_state_dict(model.get_input_embeddings().state_dict())
        for j, module in enumerate(mom.attention_modules):
            layer = layers[j % L]
            module.input_layernorm.load_state_dict(layer.input_layernorm.state_dict())
            module.self_attn.load_state_dict(layer.self_attn.state_dict())
        for j, module in enumerate(mom.ffn_modules):
            layer = layers[j % L]
            module.post_attention_layernorm.load_state_dict(layer.post_attention_layernorm.state_dict())
            module.mlp.load_state_dict(layer.mlp.state_dict())
        if located.final_norm is not None:
            mom.norm.load_state_dict(located.final_norm.state_dict())
        if mom_config.tie_word_embeddings:
            mom.lm_head.weight = mom.embed_tokens.weight
        else:
            mom.lm_head.load_state_dict(located.head.state_dict())
        mom.rotary_emb = copy.deepcopy(located.backbone.rotary_emb)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        mom.generation_config = copy.deepcopy(gen)
    return mom.eval() if not model.training else mom
