"""`MoMConfig`: the module pool, the rounds and the routers of a Mixture-of-Modules model.

A transformers `PretrainedConfig` (model_type "modetune_mom"), so `MoMForCausalLM` saves, loads and registers
with the Auto classes like any causal LM. The attention and FFN modules are those of an ordinary decoder
family (llama, mistral, qwen2, qwen3); `base_config` holds that family's config (sizes, norm eps, rope), so a
pool built from a pre-trained model's layers and a freshly initialised pool are described the same way.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from modetune.errors import ConfigError

# Decoder families whose layers are `input_layernorm -> self_attn -> residual -> post_attention_layernorm -> mlp
# -> residual`, with rotary positions at the stack level: their layers split cleanly into an attention module
# and an FFN module. Anything else (parallel attention/FFN, post-norm, embedding scaling, soft-capping) would
# need its own module definition.
MOM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ROUTERS = ("gru", "linear")
WEIGHTINGS = ("softmax", "topk_softmax")
POOL_INITS = ("layers", "fresh")
ASSEMBLIES = ("outputs", "qkv")
KV_LAYOUTS = ("slots", "picked")
# bookkeeping keys of a saved config that say nothing about the modules
_NOT_ARCHITECTURE = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "_commit_hash",
    "auto_map",
    "id2label",
    "label2id",
}

# The authors' pre-training settings (github gzhch/Mixture-of-Modules, commit 2ed1d28: pretrain.sh, utils.py,
# mom/config.py, mom/model.py, mom/utils.py), as MoMConfig fields: `modetune pretrain --arch mom --preset authors`.
# Pool sizes and rounds are not part of it (they set the parameters and FLOPs a comparison matches). Not
# reproduced: their chunked layout (bottom vanilla layers, chunks of 8 rounds over 4 attention + 4 FFN modules
# with an anchor layer after each, top vanilla layers), GPT-2 modules, the balance loss taken over softmax(scores)
# (a second softmax; here over the tempered probabilities once), and their optimiser settings.
AUTHORS_PRESET: dict[str, Any] = {
    "k_per_round": 1,  # pretrain.sh:14 routing_top_k=1
    "num_skip_modules": 1,  # mom/config.py:183 enable_pause=True: one pause (SKIP) option per router
    # the paper's GRU router (mom/utils.py:173-231 GRUTokenRouter); pretrain.sh takes the router type as an
    # argument (ROUTER_TYPE=$3, default 'naive' = an MLP, pretrain.sh:7)
    "router": "gru",
    "router_hidden_size": 256,  # utils.py:23-25 router_dim=256 (pretrain.sh does not pass --router_dim)
    "router_temperature": 0.2,  # pretrain.sh:407 --router_softmax_temperature 0.2 (used by '*softmax' routers only)
    # '*softmax' router types divide the top-K probabilities by their sum (mom/model.py:314-315, 495-496): with
    # K = 1 the weight is exactly 1, so without --use_ste (default False, utils.py:26-28; pretrain.sh does not
    # pass it) the LM loss gives the router no gradient and only the balance loss trains it
    "weighting": "topk_softmax",
    "load_balance_weight": 0.01,  # pretrain.sh:10 router_aux_loss_coef=0.01 (train.py:62 adds coef x aux loss)
    # summed Q/K/V of the picked modules, one attention, per-module output projections weighted by the router
    # (mom/model.py:323-417, their only attention assembly); weighted_qkv=False (pretrain.sh:11) leaves Q/K/V
    # unweighted, as 'qkv' does here
    "attention_assembly": "qkv",
    "kv_layout": "slots",  # one K/V per round: the only layout of the 'qkv' assembly
}
PRESETS: dict[str, dict[str, Any]] = {"authors": AUTHORS_PRESET}

# Help text for every MoM field (the CLI and README are generated from it).
FIELD_HELP: dict[str, str] = {
    "num_attention_modules": "Attention modules in the pool (m^A in the paper).",
    "num_ffn_modules": "Feed-forward modules in the pool (m^F).",
    "num_skip_modules": "SKIP modules offered to each router (m^S >= 0): choosing one adds nothing to the residual "
    "stream, so a token can skip a round; several make skipping more likely at initialisation.",
    "num_rounds": "H: assembly rounds; each round adds one assembled attention module and one assembled FFN module.",
    "k_per_round": "K: modules each router picks per token and round (from its modules plus the SKIP modules).",
    "router": "'gru' (as in the authors' code: a GRU cell carries each token's routing state across rounds, then a "
    "linear layer scores the options) or 'linear' (a linear layer on the current hidden state).",
    "router_hidden_size": "Hidden size of the GRU router state (0: the model's hidden size).",
    "weighting": "How the picked modules' outputs are weighted: 'softmax' = their probabilities under the softmax "
    "over all options (the router gets a gradient even with K=1); 'topk_softmax' = those probabilities renormalised "
    "over the K picks (the authors' '*softmax' router types; with K=1 the weight is 1 and the router gets no gradient).",
    "attention_assembly": "How the K picked attention modules are combined: 'outputs' = each runs its own "
    "attention and their outputs are weighted and summed (KV cache: one slot per round and module); 'qkv' = the "
    "authors' code: the picked modules' Q/K/V projections are summed, one attention runs, each picked module's "
    "output projection is applied to its result and weighted (KV cache: one slot per round).",
    "kv_layout": "How an 'outputs' attention module runs and what the KV cache keeps of it (same attention, so the "
    "same logits up to float rounding): 'slots' = the module runs on the whole chunk, masked to the tokens that "
    "picked it, and its (round, module) slot keeps every position (zeros and a mask for the others); 'picked' = it "
    "runs on the tokens that picked it only and its slot keeps only their keys/values and positions (memory grows "
    "with the picks, not with rounds x modules; see docs/mom.md). Default: 'picked' ('slots' holds 3.6x its "
    "memory per token and takes 2.9-6.6x its prefill time at 1k-4k tokens, measured); the 'qkv' assembly keeps "
    "one slot per round and takes 'slots' only (its default).",
    "router_temperature": "Softmax temperature of the routers' scores: probabilities = softmax(logits / T); below 1 "
    "sharpens them, so with 'softmax' weighting a picked module's weight is closer to 1 (the authors' code uses 0.2).",
    "load_balance_weight": "Weight of a Switch-Transformer load-balancing loss over each router's choices, added "
    "to the loss in training (the authors' code uses 0.01; 0 = off).",
    "pool_init": "'layers': the pool was built from a pre-trained model's layers (phase 2 of the paper); 'fresh': "
    "random initialisation (recorded, and used by `modetune pretrain --arch mom`).",
    "router_init_bias": "Initial per-round logit bonus for module h in round h (0: uniform routing). With a pool built "
    "from layers, a positive value starts near the source model's layer order.",
    "fixed_routes": "Bypass the routers: round h uses attention module h and FFN module h with weight 1 (the source "
    "model's own computation when the pool was built from its layers).",
    "pruned_attention_modules": "Attention modules removed from the pool (never picked); for the pruning analysis.",
    "pruned_ffn_modules": "FFN modules removed from the pool (never picked).",
}


class MoMConfig(PretrainedConfig):
    """Pool sizes, rounds H, K per round, router form and pool initialisation of an MoM model (validated)."""

    model_type = "modetune_mom"

    def __init__(
        self,
        base_config: dict[str, Any] | PretrainedConfig | None = None,
        num_attention_modules: int = 4,
        num_ffn_modules: int = 4,
        num_skip_modules: int = 1,
        num_rounds: int = 4,
        k_per_round: int = 1,
        router: str = "gru",
        router_hidden_size: int = 0,
        weighting: str = "softmax",
        router_temperature: float = 1.0,
        attention_assembly: str = "outputs",
        kv_layout: str | None = None,
        load_balance_weight: float = 0.0,
        pool_init: str = "fresh",
        router_init_bias: float = 0.0,
        fixed_routes: bool = False,
        pruned_attention_modules: list[int] | None = None,
        pruned_ffn_modules: list[int] | None = None,
        **kwargs: Any,
    ):
        if isinstance(base_config, PretrainedConfig):
            base_config = base_config.to_dict()
        self.base_config: dict[str, Any] = {
            k: v for k, v in dict(base_config or {"model_type": "llama"}).items() if k not in _NOT_ARCHITECTURE
        }
        self.num_attention_modules = num_attention_modules
        self.num_ffn_modules = num_ffn_modules
        self.num_skip_modules = num_skip_modules
        self.num_rounds = num_rounds
        self.k_per_round = k_per_round
        self.router = router
        self.router_hidden_size = router_hidden_size
        self.weighting = weighting
        self.router_temperature = float(router_temperature)
        self.attention_assembly = attention_assembly
        self.kv_layout = kv_layout or ("slots" if attention_assembly == "qkv" else "picked")
        self.load_balance_weight = float(load_balance_weight)
        self.pool_init = pool_init
        self.router_init_bias = float(router_init_bias)
        self.fixed_routes = bool(fixed_routes)
        self.pruned_attention_modules = sorted(set(pruned_attention_modules or []))
        self.pruned_ffn_modules = sorted(set(pruned_ffn_modules or []))
        base = self.family_config()
        # values transformers' own utilities (loss, generation, lm-eval) read from the top-level config
        # (always derived from base_config, so the two can never disagree)
        derived = (
            "vocab_size",
            "hidden_size",
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "max_position_embeddings",
            "initializer_range",
        )
        for key in derived:
            kwargs[key] = getattr(base, key, None)
        kwargs["tie_word_embeddings"] = bool(getattr(base, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        self.validate()

    @staticmethod
    def preset(name: str) -> dict[str, Any]:
        """A named set of field values (`PRESETS`; "authors": `AUTHORS_PRESET`), a copy to pass as keyword arguments."""
        if name not in PRESETS:
            raise ConfigError(f"unknown MoM preset {name!r}; known: {', '.join(PRESETS)}")
        return dict(PRESETS[name])

    @classmethod
    def authors_preset(cls, **fields: Any) -> MoMConfig:
        """A config with the authors' pre-training settings (`AUTHORS_PRESET`); `fields` set the rest (base config,
        pool sizes, rounds) and may not override the preset's own fields."""
        clash = sorted(set(fields) & set(AUTHORS_PRESET))
        if clash:
            raise ConfigError(f"MoMConfig.authors_preset sets {', '.join(clash)} itself; leave them out")
        return cls(**AUTHORS_PRESET, **fields)

    def family_config(self) -> PretrainedConfig:
        """The decoder family's own config object (what each attention/FFN module is built from)."""
        model_type = self.base_config.get("model_type")
        if model_type not in MOM_FAMILIES:
            raise ConfigError(
                f"MoMConfig.base_config: model type {model_type!r} cannot be split into MoM modules; supported "
                f"families: {', '.join(MOM_FAMILIES)} (pre-norm decoder layers with self_attn and mlp)"
            )
        values = {k: v for k, v in self.base_config.items() if k != "model_type"}
        return AutoConfig.for_model(model_type, **values)

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MoMConfig.{name} must be a whole number >= 1, got {value!r} ({FIELD_HELP[name]})")

        for name in ("num_attention_modules", "num_ffn_modules", "num_rounds", "k_per_round"):
            positive(name)
        if not isinstance(self.num_skip_modules, int) or self.num_skip_modules < 0:
            raise ConfigError(f"MoMConfig.num_skip_modules must be a whole number >= 0, got {self.num_skip_modules!r}")
        if not isinstance(self.router_hidden_size, int) or self.router_hidden_size < 0:
            raise ConfigError(f"MoMConfig.router_hidden_size must be >= 0, got {self.router_hidden_size!r}")
        if not (self.router_temperature > 0 and math.isfinite(self.router_temperature)):
            raise ConfigError(f"MoMConfig.router_temperature must be > 0, got {self.router_temperature!r}")
        if not self.load_balance_weight >= 0:
            raise ConfigError(f"MoMConfig.load_balance_weight must be >= 0, got {self.load_balance_weight!r}")
        choices = (("router", ROUTERS), ("weighting", WEIGHTINGS), ("pool_init", POOL_INITS))
        for name, allowed in (*choices, ("attention_assembly", ASSEMBLIES), ("kv_layout", KV_LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"MoMConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.kv_layout == "picked" and self.attention_assembly == "qkv":
            raise ConfigError(
                "MoMConfig.kv_layout='picked' applies to attention_assembly='outputs'; 'qkv' already keeps one K/V "
                "per round and token (and a token that picked only SKIPs still holds a zero key every token attends to)"
            )
        for kind, pool, pruned in (
            ("attention", self.num_attention_modules, self.pruned_attention_modules),
            ("ffn", self.num_ffn_modules, self.pruned_ffn_modules),
        ):
            if any(not 0 <= i < pool for i in pruned):
                raise ConfigError(f"MoMConfig.pruned_{kind}_modules {pruned} names modules outside 0..{pool - 1}")
            options = pool - len(pruned) + self.num_skip_modules
            if self.k_per_round > options:
                raise ConfigError(
                    f"MoMConfig.k_per_round={self.k_per_round} exceeds the {options} {kind} options left (modules not pruned plus "
                    "SKIP modules); lower k_per_round or add modules"
                )
        if self.fixed_routes and self.num_rounds > min(self.num_attention_modules, self.num_ffn_modules):
            raise ConfigError(
                f"MoMConfig.fixed_routes needs num_rounds ({self.num_rounds}) <= the number of attention and FFN "
                f"modules ({self.num_attention_modules}, {self.num_ffn_modules}): round h uses module h"
            )
        if self.fixed_routes and (
            set(self.pruned_attention_modules) & set(range(self.num_rounds))
            or set(self.pruned_ffn_modules) & set(range(self.num_rounds))
        ):
            raise ConfigError("MoMConfig.fixed_routes uses module h in round h; it cannot be pruned")
        family = self.family_config()
        if getattr(family, "use_sliding_window", False):
            raise ConfigError(
                "MoM modules implement full attention and mistral's fixed window; a config with use_sliding_window=True "
                "(per-layer windows) is not supported"
            )

    def sliding_window(self) -> int | None:
        """The attention window of the family (mistral's `sliding_window`), or None for full attention."""
        if self.base_config.get("model_type") == "mistral":
            return self.base_config.get("sliding_window")
        return None
