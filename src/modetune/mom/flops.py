"""Forward FLOPs per token of the vanilla stacks, and the vanilla sizes that match a MoM config's FLOPs.

A MoM model at equal parameters does more work per token than the vanilla model of the same modules (K picks per
router and round, routers), so "MoM beats vanilla" needs a vanilla control at equal compute too. The rule here:
count what a token runs, as `mom_forward_flops` does (2 x multiply-adds of the projections, the attention scores
over `context` keys, the routers and the LM head; embeddings and norms ignored), with MoM's *realised* picks
(modules per round that are not SKIP, measured), and give the vanilla model of the same width, heads and head
the layer count (or the FFN width) whose count is closest.
"""

from __future__ import annotations

from typing import Any

from modetune.errors import ConfigError
from modetune.mom.config import MoMConfig
from modetune.mom.gated import GatedLlamaConfig
from modetune.mom.model import mom_forward_flops


def vanilla_flops_per_token(config: Any, context: int = 0) -> float:
    """Forward FLOPs per token of a llama-style decoder config at `context` keys (a gated one: plus its gates)."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    hd = int(getattr(config, "head_dim", None) or d // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    attn = 2 * (d * heads * hd * 2 + d * kv_heads * hd * 2) + 2 * 2 * heads * hd * context
    per_token_gates = isinstance(config, GatedLlamaConfig) and config.gate_mode == "token"
    gates = 2 * 2 * d if per_token_gates else 0  # two w . rmsnorm(x) per layer (a scalar gate: none)
    return layers * (attn + 2 * 3 * d * ff + gates) + 2 * d * config.vocab_size


def _vanilla_like(mom_config: MoMConfig, **sizes: int) -> Any:
    """The decoder config of a MoM config's modules with other sizes (its family's config class)."""
    values = {k: v for k, v in mom_config.base_config.items() if k != "model_type"}
    values.update(sizes)
    return type(mom_config.family_config())(**values)


def _realised(mom_config: MoMConfig, attention_picks: float | None, ffn_picks: float | None, context: int) -> float:
    for name, value in (("attention_picks", attention_picks), ("ffn_picks", ffn_picks)):
        if value is not None and not 0 <= value <= mom_config.k_per_round:
            raise ConfigError(f"{name}={value!r} must be between 0 and K={mom_config.k_per_round} (picks per round)")
    return mom_forward_flops(mom_config, context, attention_picks, ffn_picks)


def matched_vanilla_layers(
    mom_config: MoMConfig,
    attention_picks: float | None = None,
    ffn_picks: float | None = None,
    context: int = 0,
    max_layers: int = 256,
) -> int:
    """The vanilla layer count (same width, heads, FFN size and head as the MoM modules) whose forward FLOPs per
    token are closest to the MoM config's at `attention_picks` / `ffn_picks` non-SKIP modules per round (default
    K: the upper bound); ties go to fewer layers."""
    target = _realised(mom_config, attention_picks, ffn_picks, context)
    costs = {n: vanilla_flops_per_token(_vanilla_like(mom_config, num_hidden_layers=n), context)
             for n in range(1, max_layers + 1)}  # fmt: skip
    return min(costs, key=lambda n: (abs(costs[n] - target), n))


def matched_vanilla_intermediate_size(
    mom_config: MoMConfig,
    num_layers: int,
    attention_picks: float | None = None,
    ffn_picks: float | None = None,
    context: int = 0,
    multiple: int = 64,
) -> int:
    """The FFN inner size (a multiple of `multiple`) of a `num_layers` vanilla model whose forward FLOPs per token
    are closest to the MoM config's (the width alternative to `matched_vanilla_layers`); ties go to the smaller."""
    target = _realised(mom_config, attention_picks, ffn_picks, context)
    d = mom_config.family_config().hidden_size
    without_ffn = vanilla_flops_per_token(
        _vanilla_like(mom_config, num_hidden_layers=num_layers, intermediate_size=0), context
    )
    exact = (target - without_ffn) / (num_layers * 2 * 3 * d)
    if exact <= 0:
        raise ConfigError(
            f"a {num_layers}-layer vanilla model costs more than the MoM config without any FFN; use fewer layers"
        )
    low = max(multiple, int(exact // multiple) * multiple)
    return min((low, low + multiple), key=lambda w: (abs(w - exact), w))
