"""Build a tiny random model of *any* causal-LM type registered in the installed transformers.

Generic on purpose: the config class's own defaults, with every size field it actually has shrunk (names
differ between families: hidden_size / n_embd / d_model, ...). Passed to the constructor, so fields derived
in `__init__` (layer_types, head_dim, ...) stay consistent. Whatever cannot be built this way is reported
with the reason, never silently dropped.
"""

from __future__ import annotations

import inspect

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

TINY_VOCAB = 128
LAYERS = 4
# canonical value for each size field, under every name transformers uses for it
_SIZES: list[tuple[int, tuple[str, ...]]] = [
    (LAYERS, ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")),
    (64, ("hidden_size", "n_embd", "d_model", "dim", "word_embed_proj_dim", "embed_dim", "model_dim")),
    (4, ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads")),
    (2, ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num", "num_experts_per_tok",
        "moe_topk", "top_k", "n_group", "topk_group", "num_experts_per_token")),
    (16, ("head_dim", "kv_channels", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "qk_head_dim",
         "attention_head_dim", "mamba_d_head", "mamba_head_dim", "linear_key_head_dim", "linear_value_head_dim",
         "d_state", "mamba_d_state", "state_size", "ssm_state_size", "time_step_rank", "rotary_dim")),
    (128, ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "decoder_ffn_dim", "ffn_hidden_size", "max_position_embeddings",
          "n_positions", "n_ctx", "max_seq_len", "seq_length")),
    (32, ("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size",
         "kv_lora_rank", "q_lora_rank", "shared_intermediate_size", "mlp_intermediate_size", "intermediate_size_mlp")),
    (4, ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")),
    (8, ("mamba_n_heads", "mamba_num_heads", "linear_num_value_heads", "n_mamba_heads")),
    (2, ("linear_num_key_heads",)),
    (TINY_VOCAB, ("vocab_size",)),
]  # fmt: skip
_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")


def causal_lm_types() -> list[str]:
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str):
    """The config class's defaults with every size field it has shrunk."""
    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class()
    present = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    accepted = set(inspect.signature(config_class.__init__).parameters)
    overrides: dict = {}
    for value, names in _SIZES:
        for name in names:
            if name in present or name in accepted:
                current = getattr(defaults, name, None)
                if current is None or (isinstance(current, (int, float)) and not isinstance(current, bool)):
                    overrides[name] = value
    if "num_experts_per_tok" in overrides and ("num_experts" in overrides or "num_local_experts" in overrides):
        overrides["num_experts_per_tok"] = 2
    for name in _TOKENS:
        token = getattr(defaults, name, None)
        if isinstance(token, int) and token >= TINY_VOCAB:
            overrides[name] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}.get(name, 3)
        elif isinstance(token, list):
            overrides[name] = [t if t < TINY_VOCAB else 2 for t in token]
    for flag in ("tie_word_embeddings",):
        if flag in present:
            overrides[flag] = getattr(defaults, flag)
    overrides["first_k_dense_replace"] = 1 if "first_k_dense_replace" in present else None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "sliding_window" in present and getattr(defaults, "sliding_window", None):
        overrides["sliding_window"] = 8
    if "layer_types" in present and getattr(defaults, "layer_types", None):
        kinds = list(dict.fromkeys(defaults.layer_types))  # keep every kind of layer, in a short pattern
        overrides["layer_types"] = [kinds[i % len(kinds)] for i in range(LAYERS - 1)] + [defaults.layer_types[-1]]
    try:
        return config_class(**overrides)
    except AttributeError:  # layer_types is derived (a read-only property) in some hybrid configs
        overrides.pop("layer_types", None)
        return config_class(**overrides)


MAX_PARAMETERS = 3_000_000


class NotBuildableTiny(Exception):
    """The generic shrink leaves this type too large (a size field under a name we do not know)."""


def build_any_tiny(model_type: str, seed: int = 0) -> torch.nn.Module:
    config = tiny_config(model_type)
    with torch.device("meta"):  # count first: a size field we did not shrink would cost gigabytes
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if n > MAX_PARAMETERS:
        raise NotBuildableTiny(f"{n:,} parameters after the generic shrink (limit {MAX_PARAMETERS:,})")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    from modetune.architectures import dummy_inputs

    try:  # the base model must run its own forward in this tiny form, or nothing can be tested on it
        with torch.no_grad():
            model(**dummy_inputs(model), use_cache=False)
    except Exception as exc:
        raise NotBuildableTiny(f"the tiny base model's own forward fails: {type(exc).__name__}: {exc}") from None
    return model
