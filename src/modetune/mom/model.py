"""Mixture-of-Modules (MoM; Gong et al., EMNLP 2024, arXiv 2407.06677) as a transformers causal LM.

A vanilla transformer runs every token through layers 1..L in order. MoM owns a pool of attention modules
(a norm + multi-head attention), a pool of FFN modules (a norm + MLP) and SKIP modules, and assembles each
token's computation in H rounds. In round h, for each token:

    attention router: scores the m^A attention modules + m^S SKIPs, keeps the top K
    x <- x + sum_k w_k * A_{i_k}(x)            (a SKIP adds nothing)
    FFN router:       scores the m^F FFN modules + m^S SKIPs, keeps the top K
    x <- x + sum_k w_k * F_{j_k}(x)

then the final norm and the LM head. A vanilla transformer is the special case m^A = m^F = H, K = 1, round h
always picking module h with weight 1 (`fix_routes_to_layers()`); layer skipping, MoD and MoE are other
special cases (SKIP modules; K > 1 over FFN modules).

Where this follows the paper and where it departs, and why
----------------------------------------------------------
The arXiv HTML was not reachable from this machine; the abstract, third-party summaries and the authors'
code (GitHub gzhch/Mixture-of-Modules, commit 2ed1d28, GPT-2 based; read through a code index, not copied)
were. "Authors" below means that code.

* Pool, rounds, K, SKIP (paper and authors): attention modules, FFN modules and SKIP options; two routers pick
  the best K of each kind per token in each of H rounds; the weighted picks are added to the residual stream;
  a SKIP (the authors' "pause" option, one per router) costs nothing and adds nothing. Departure: the authors
  split the depth into bottom vanilla layers, C chunks (each with its own pool and routers, routed for several
  rounds) with a fixed "anchor" layer after each, and top vanilla layers; here there is one pool and one pair
  of routers for all H rounds (the paper's framework without chunking; a chunked model is a composition of
  these). `num_skip_modules` > 1 is ours (more SKIP options = more prior mass on skipping).
* Router (authors): 'gru' carries a per-token GRU state across rounds (separate states for attention and
  FFN) and scores the options with a linear layer; 'linear' is the MoE-style alternative (the authors'
  'naive' router is a two-layer MLP). Ours: the router input is RMS-normalised (no parameters) and a learned
  per-round bias is added, so a router shared across rounds can still tell rounds apart, and
  `router_init_bias` starts a phase-2 model near the source layer order.
* Weighting (authors): scores are a softmax over the options; 'topk_softmax' renormalises over the K picks
  (the authors' '*softmax' router types), 'softmax' keeps the raw probabilities (default here: with K = 1 the
  renormalised weight is the constant 1 and the router would get no gradient without the authors' STE
  option). `router_temperature` divides the logits before the softmax (the authors' softmax temperature, 0.2
  in their pretraining script; 1 by default here). `load_balance_weight` adds the Switch-Transformer balance
  loss the authors use (coefficient 0.01 there; 0 by default here; theirs takes a softmax of the already
  softmaxed scores, here the tempered probabilities once).
* The authors' settings as one preset: `MoMConfig.authors_preset()` / `modetune pretrain --preset authors`
  (`AUTHORS_PRESET` in `modetune/mom/config.py`, each value with the file and line of their code it comes
  from): K = 1, GRU state 256, temperature 0.2, 'topk_softmax' (so with K = 1 a pick's weight is exactly 1 and,
  as in their code without STE, only the balance loss trains the routers), balance 0.01, 'qkv'. Known
  departures even under the preset: one pool instead of their chunks with anchor layers and vanilla bottom/top
  layers (and their 8 rounds per chunk over 4 + 4 modules), llama modules instead of GPT-2's, their optimiser
  settings (Adam betas 0.9/0.95, 5,000 steps, bf16).
* Attention assembly and its KV cache. Authors ('qkv'): the picked modules' Q/K/V projections are summed (the
  router weights the output side only), one attention runs on the sum, each picked module's output
  projection is applied to the result and weighted; the cache has one K/V slot per round, holding each
  earlier token's own assembled keys. Default here ('outputs'): each picked module runs its own attention
  over the tokens that picked *that module in that round*, outputs weighted and summed; the cache has one
  slot per (round, module) pair plus its selection mask. Why offer it and default to it: a query of module A
  then never meets keys made by module B (a different projection space), every attention is a proper
  single-module attention, and a token's cost is only the modules it picked (as MoD skips tokens). Its cache
  layout (`kv_layout`, ours; issue 32): 'slots' (default) allocates a slot when its module is first picked in
  its round, keeps every position in it and pads earlier ones with masked zeros, so memory grows with the
  (round, module) pairs used (up to H x m^A K/V per token: ~4x vanilla's cache at issue 15's size); 'picked'
  keeps only the keys/values (and positions) of the tokens that picked the module, so memory grows with the
  picks (H x the non-SKIP picks per round; ~1.07x vanilla with issue 15's trained routers, at most K x). Both
  are the same attention, so the same logits up to float rounding. Both assemblies reduce exactly to the
  vanilla model and cache under fixed routes (tested bitwise), and give the same logits cached and uncached.
* Two-phase initialisation (paper and authors): phase 1 pre-trains a vanilla transformer, phase 2 splits its
  layers into modules (`from_pretrained_layers`; module i is a copy of layer i mod L, the authors map
  consecutive layers into each chunk), adds the routers and trains everything. Routers start random unless
  `router_init_bias` > 0 (ours).
* Compute: an FFN module runs only on the tokens that picked it; an 'outputs' attention module runs on the whole
  chunk when any token picked it, masked to those tokens, with a [T, S] mask per module and round
  (`kv_layout='slots'`), or on the picking tokens only, gathered, with no mask for one sequence ('picked'). The
  reported FLOPs per token count the modules a token picked, not the 'slots' layout's dense work.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from modetune.errors import ConfigError
from modetune.mom.config import MoMConfig


def family_module(model_type: str) -> Any:
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def family_classes(model_type: str) -> tuple[type, type, type]:
    """(DecoderLayer, RotaryEmbedding, RMSNorm) classes of a decoder family, from transformers itself."""
    prefix = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type][: -len("ForCausalLM")]
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    return (
        getattr(module, f"{prefix}DecoderLayer"),
        getattr(module, f"{prefix}RotaryEmbedding"),
        getattr(module, f"{prefix}RMSNorm"),
    )


# -- the cache -------------------------------------------------------------------------------------------
class MoMCache(DynamicCache):
    """One KV slot per (round, attention module) pair (per round for 'qkv'), and each slot's bookkeeping.

    `kv_layout='slots'`: slot (h, j) holds, for every cached position, the keys/values module j produced in round
    h, and a selection mask says which tokens picked module j in round h (the others are masked out of the
    attention). A slot is filled only when some token picks its module: the positions before are then padded
    with masked zeros, so a module nobody uses in a round costs no memory (with fixed routes the cache is
    exactly the vanilla one, H slots). The masks live in the same DynamicCache as extra "layers" (float flags
    [B, 1, S, 1] stored as keys and as values), so beam-search reordering and batch selection treat them
    exactly like the keys.

    `kv_layout='picked'`: slot (h, j) holds the keys/values of the tokens that picked module j in round h only,
    in order, and the extra layer holds each entry's position (int32 [B, 1, N, 1]; the value side is empty,
    [B, 1, N, 0]). A batch row that did not pick the module in a chunk where another row did gets an entry
    with position -1 (masked), so only batch size 1 is exactly "the picks, nothing else".
    """

    def __init__(self, num_rounds: int, num_modules: int):
        super().__init__()
        self.num_rounds, self.num_modules = num_rounds, num_modules
        self.length = 0  # tokens seen (slots may hold fewer: they are padded when next used)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def kv_slot(self, round_idx: int, module_idx: int) -> int:
        return round_idx * self.num_modules + module_idx

    def _mask_slot(self, round_idx: int, module_idx: int) -> int:
        return self.num_rounds * self.num_modules + self.kv_slot(round_idx, module_idx)

    def filled(self, round_idx: int, module_idx: int) -> int:
        slot = self.kv_slot(round_idx, module_idx)
        return self.layers[slot].get_seq_length() if slot < len(self.layers) else 0

    def pad_slot(self, round_idx: int, module_idx: int, like: torch.Tensor, heads: int, head_dim: int) -> None:
        """Masked zeros for the positions seen since slot (h, j) was last used."""
        gap = self.length - self.filled(round_idx, module_idx)
        if gap > 0:
            zeros = like.new_zeros(like.shape[0], heads, gap, head_dim)
            self.update(zeros, zeros, self.kv_slot(round_idx, module_idx))
            self.update_selection(
                round_idx, module_idx, torch.zeros(like.shape[0], gap, dtype=torch.bool, device=like.device)
            )

    def update_selection(self, round_idx: int, module_idx: int, selected: torch.Tensor) -> torch.Tensor:
        """Append this chunk's selection [B, T] to slot (h, j); return the selection of all cached positions."""
        flag = selected[:, None, :, None].to(torch.float32)
        stored, _ = self.update(flag, flag, self._mask_slot(round_idx, module_idx))
        return stored[:, 0, :, 0] > 0.5

    def update_positions(self, round_idx: int, module_idx: int, positions: torch.Tensor) -> torch.Tensor:
        """'picked' layout: append this chunk's entry positions [B, C] (-1 = no entry) to slot (h, j); return the
        positions of all its entries [B, N]. Stored as int32 keys with an empty value side (4 bytes an entry)."""
        stored_as = positions.to(torch.int32)[:, None, :, None]
        stored, _ = self.update(stored_as, stored_as[..., :0], self._mask_slot(round_idx, module_idx))
        return stored[:, 0, :, 0]

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds: keys, values and the slots' masks or positions."""
        return sum(t.nbytes for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values))


class _SlotView:
    """What an HF attention module sees as its cache: writes go to one (round, module) slot of a MoMCache."""

    def __init__(self, cache: MoMCache, slot: int):
        self.cache, self.slot = cache, slot

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        return self.cache.update(key_states, value_states, self.slot)


def _picked_order(sel: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """For a selection [B, T]: (indices [B, C] of each row's selected tokens in order, right-padded with unselected
    ones, or None when every token is selected; which of the C entries are real [B, C]). C = the most per row."""
    if bool(sel.all()):
        return None, sel
    count = sel.sum(1)
    order = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)[:, : int(count.max())]
    return order, torch.arange(order.shape[1], device=sel.device)[None] < count[:, None]


def _gather_tokens(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """t [B, T, ...] at the token indices `order` [B, C] -> [B, C, ...]."""
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return t.gather(1, index)


# -- modules and routers --------------------------------------------------------------------------------
class AttentionModule(GradientCheckpointingLayer):
    """A decoder layer's attention half: its input norm and its attention (the family's own classes); recomputed
    in backward under gradient checkpointing, as transformers' own decoder layers are."""

    def __init__(self, norm: nn.Module, attn: nn.Module):
        super().__init__()
        self.input_layernorm, self.self_attn = norm, attn

    def forward(
        self, x: torch.Tensor, position_embeddings: Any, mask: torch.Tensor | None, cache: Any = None
    ) -> torch.Tensor:
        out, _ = self.self_attn(
            self.input_layernorm(x), position_embeddings=position_embeddings, attention_mask=mask, cache=cache
        )
        return out


class FFNModule(GradientCheckpointingLayer):
    """A decoder layer's FFN half: its post-attention norm and its MLP (recomputed under gradient checkpointing)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module):
        super().__init__()
        self.post_attention_layernorm, self.mlp = norm, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x))


class Router(nn.Module):
    """Scores `num_modules + num_skip` options per token and round ('gru': state carried across rounds)."""

    def __init__(self, hidden: int, options: int, rounds: int, form: str, state_size: int, eps: float):
        super().__init__()
        self.form, self.eps = form, eps
        if form == "gru":
            self.cell = nn.GRUCell(hidden, state_size)
            self.proj = nn.Linear(state_size, options)
        else:
            self.proj = nn.Linear(hidden, options)
        self.round_bias = nn.Parameter(torch.zeros(rounds, options))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None, round_idx: int):
        z = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.form == "gru":
            flat = z.reshape(-1, z.shape[-1])
            state = self.cell(flat, state)
            logits = self.proj(state).view(*x.shape[:-1], -1)
        else:
            logits = self.proj(z)
        return logits + self.round_bias[round_idx], state


@dataclass
class MoMCausalLMOutput(CausalLMOutputWithPast):
    """A causal-LM output plus routing statistics (averaged over rounds and real tokens).

    attention_load / ffn_load: fraction of picks that went to each option (modules, then SKIPs);
    router_entropy: mean entropy (nats) of the routers' distributions; routes: per round, the picked
    option indices [B, T, K] of the attention and FFN routers (only with `output_routes=True`).
    """

    attention_load: torch.Tensor | None = None
    ffn_load: torch.Tensor | None = None
    router_entropy: torch.Tensor | None = None
    routes: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


# -- the model -----------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    """What every attention module sees of one forward's chunk besides its hidden states: the cache, which keys
    are real tokens ([B, past + T]), how many positions the cache held before it, and the rotary embeddings."""

    cache: MoMCache | None
    key_valid: torch.Tensor
    past: int
    position_embeddings: Any


@dataclass
class _Routing:
    """What one forward's routers did, round by round: loads, entropies, balance terms, the picks."""

    balance: bool
    keep_routes: bool
    loads_a: list[torch.Tensor] = field(default_factory=list)
    loads_f: list[torch.Tensor] = field(default_factory=list)
    entropies: list[torch.Tensor] = field(default_factory=list)
    balance_terms: list[torch.Tensor] = field(default_factory=list)
    routes: list[tuple[Any, Any]] = field(default_factory=list)

    def add(self, model: MoMForCausalLM, attention: tuple[Any, Any], ffn: tuple[Any, Any], real: torch.Tensor) -> None:
        (picks_a, probs_a), (picks_f, probs_f) = attention, ffn
        if self.balance:
            self.balance_terms.append(model._balance(picks_a, probs_a, real) + model._balance(picks_f, probs_f, real))
        self.loads_a.append(model._load(picks_a, probs_a.shape[-1], real))
        self.loads_f.append(model._load(picks_f, probs_f.shape[-1], real))
        self.entropies.append(model._entropy(probs_a, real))
        self.entropies.append(model._entropy(probs_f, real))
        if self.keep_routes:
            self.routes.append((picks_a, picks_f))


class MoMForCausalLM(PreTrainedModel, GenerationMixin):
    """A Mixture-of-Modules causal LM: embeddings, a module pool, two routers, H rounds, final norm, head."""

    config_class = MoMConfig
    base_model_prefix = "mom"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # the pool modules; the qkv assembly's attention is not recomputed
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["AttentionModule", "FFNModule"]  # noqa: RUF012 (transformers' class attributes)
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}  # noqa: RUF012

    def __init__(self, config: MoMConfig):
        super().__init__(config)
        family = config.family_config()
        self._family = family
        layer_cls, rotary_cls, norm_cls = family_classes(family.model_type)
        d = family.hidden_size
        self.embed_tokens = nn.Embedding(family.vocab_size, d, getattr(family, "pad_token_id", None))
        attn, ffn = [], []
        for j in range(max(config.num_attention_modules, config.num_ffn_modules)):
            layer = layer_cls(family, layer_idx=j)  # its two halves become one attention and one FFN module
            if j < config.num_attention_modules:
                attn.append(AttentionModule(layer.input_layernorm, layer.self_attn))
            if j < config.num_ffn_modules:
                ffn.append(FFNModule(layer.post_attention_layernorm, layer.mlp))
        self.attention_modules = nn.ModuleList(attn)
        self.ffn_modules = nn.ModuleList(ffn)
        state = config.router_hidden_size or d
        eps = float(getattr(family, "rms_norm_eps", 1e-6))
        H, S = config.num_rounds, config.num_skip_modules
        self.attention_router = Router(d, config.num_attention_modules + S, H, config.router, state, eps)
        self.ffn_router = Router(d, config.num_ffn_modules + S, H, config.router, state, eps)
        self.norm = norm_cls(d, eps=eps)
        self.rotary_emb = rotary_cls(config=family)
        self.lm_head = nn.Linear(d, family.vocab_size, bias=False)
        attn0 = self.attention_modules[0].self_attn
        self._kv_heads = int(getattr(family, "num_key_value_heads", None) or family.num_attention_heads)
        self._head_dim = int(attn0.head_dim)
        self.post_init()

    # -- HF plumbing ---------------------------------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a per-layer DynamicCache; forward() makes a MoMCache

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The family's usual init (transformers' own, which also rebuilds rotary buffers) plus the routers'."""
        from transformers import initialization as init

        if isinstance(module, nn.GRUCell):
            bound = module.hidden_size**-0.5
            for p in module.parameters():
                init.uniform_(p, -bound, bound)
        elif isinstance(module, Router):
            bias = torch.zeros_like(module.round_bias)
            for h in range(min(bias.shape[0], bias.shape[1] - self.config.num_skip_modules)):
                bias[h, h] = self.config.router_init_bias
            init.copy_(module.round_bias, bias)
        else:
            super()._init_weights(module)

    def fix_routes_to_layers(self, fixed: bool = True) -> MoMForCausalLM:
        """Round h uses attention module h and FFN module h with weight 1 (the source model, exactly)."""
        self.config.fixed_routes = fixed
        try:
            self.config.validate()
        except ConfigError:
            self.config.fixed_routes = False
            raise
        return self

    def prune_modules(self, attention: list[int] = (), ffn: list[int] = ()) -> MoMForCausalLM:  # type: ignore[assignment]
        """Remove modules from the pool (the routers never pick them again); for the pruning analysis."""
        before = (self.config.pruned_attention_modules, self.config.pruned_ffn_modules)
        self.config.pruned_attention_modules = sorted(set(before[0]) | set(attention))
        self.config.pruned_ffn_modules = sorted(set(before[1]) | set(ffn))
        try:
            self.config.validate()
        except ConfigError:
            self.config.pruned_attention_modules, self.config.pruned_ffn_modules = before
            raise
        return self

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, router: Router, x: torch.Tensor, state: Any, h: int, n_modules: int, pruned: list[int]):
        """-> (weights [B,T,n_modules] (0 = not picked), picked [B,T,n_modules] bool, picks, probs, state)."""
        B, T = x.shape[:2]
        if self.config.fixed_routes:
            picked = torch.zeros(B, T, n_modules, dtype=torch.bool, device=x.device)
            picked[..., h] = True
            return picked.to(x.dtype), picked, None, None, state
        logits, state = router(x, state, h)
        logits = logits.float()
        if self.config.router_temperature != 1.0:
            logits = logits / self.config.router_temperature
        if pruned:
            logits[..., pruned] = float("-inf")
        probs = logits.softmax(-1)
        top_logits, picks = logits.topk(self.config.k_per_round, dim=-1)
        w = top_logits.softmax(-1) if self.config.weighting == "topk_softmax" else probs.gather(-1, picks)
        options = logits.shape[-1]
        dense = torch.zeros(B, T, options, dtype=w.dtype, device=x.device).scatter(-1, picks, w)
        picked = torch.zeros(B, T, options, dtype=torch.bool, device=x.device).scatter(-1, picks, True)
        return dense[..., :n_modules].to(x.dtype), picked[..., :n_modules], picks, probs, state

    def _attention_mask(
        self, selected: torch.Tensor, key_valid: torch.Tensor, past: int, T: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Additive mask [B,1,T,S]: causal, not padding, and the key picked this module in this round (or is the
        query itself). None when that is plain causal attention that SDPA can do on its own (no key beyond a window)."""
        S = key_valid.shape[1]
        window = self.config.sliding_window()
        if (
            bool(selected.all())
            and bool(key_valid.all())
            and (past == 0 or T == 1)
            and (not window or window >= S)
            and self.config._attn_implementation == "sdpa"
        ):
            return None
        q_pos = torch.arange(past, past + T, device=selected.device)[:, None]
        k_pos = torch.arange(S, device=selected.device)[None, :]
        allowed = k_pos <= q_pos
        if window:
            allowed = allowed & (q_pos - k_pos < window)
        keys = (selected & key_valid)[:, None, :] | (k_pos == q_pos)[None]  # [B, T, S]
        allowed = allowed[None] & keys
        mask = torch.zeros(allowed.shape, dtype=dtype, device=selected.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def training_logs(self, outputs: MoMCausalLMOutput, share_scale: float = 1.0) -> dict[str, float]:
        """The routers' entropy and, per option (modules, then SKIPs), its share of the attention and FFN picks."""
        if outputs.router_entropy is None:
            return {}
        values = {"router_entropy": float(outputs.router_entropy)}
        for kind, load in (("atte", outputs.attention_load), ("ffn", outputs.ffn_load)):
            values.update({f"router/{kind}{j}": v for j, v in enumerate(load.tolist())})
        return values

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MoMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_routes: bool = False,
        **kwargs: Any,
    ) -> MoMCausalLMOutput:
        cfg = self.config
        self._family._attn_implementation = cfg._attn_implementation  # modules read it from the family config
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        for unused in ("output_attentions", "output_hidden_states", "return_dict", "cache_position"):
            kwargs.pop(unused, None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        use_cache, cache = self._cache_for(cache, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        key_valid, position_ids = self._key_valid_and_positions(x, attention_mask, position_ids, past)
        chunk = _Chunk(cache, key_valid, past, self.rotary_emb(x, position_ids=position_ids))

        # the balance penalty trains the routers; an evaluation's loss stays the plain cross-entropy, comparable
        # with any other model's
        balance = bool(cfg.load_balance_weight and labels is not None and self.training)
        routing = _Routing(balance=balance, keep_routes=output_routes)
        real = key_valid[:, -T:]
        state_a = state_f = None
        for h in range(cfg.num_rounds):
            x, picks_a, probs_a, state_a = self._attention_round(x, h, state_a, chunk)
            x, picks_f, probs_f, state_f = self._ffn_round(x, h, state_f)
            if picks_a is not None:
                routing.add(self, (picks_a, probs_a), (picks_f, probs_f), real)

        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if isinstance(logits_to_keep, int):
            kept = x[:, -logits_to_keep:] if logits_to_keep > 0 else x
        else:
            kept = x[:, logits_to_keep]
        logits = self.lm_head(kept)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=cfg.vocab_size, **kwargs)
            if routing.balance_terms:
                loss = loss + cfg.load_balance_weight * torch.stack(routing.balance_terms).mean()
        return MoMCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            attention_load=torch.stack(routing.loads_a).mean(0) if routing.loads_a else None,
            ffn_load=torch.stack(routing.loads_f).mean(0) if routing.loads_f else None,
            router_entropy=torch.stack(routing.entropies).mean() if routing.entropies else None,
            routes=tuple(routing.routes) if output_routes else None,
        )

    def _cache_for(self, cache: Any, use_cache: bool | None) -> tuple[bool, MoMCache | None]:
        """(whether to return a cache, the MoMCache to use): an empty foreign cache is replaced by our own."""
        cfg = self.config
        if use_cache is None:
            use_cache = bool(getattr(cfg, "use_cache", True)) and not self.training
        if cache is not None and not isinstance(cache, MoMCache):
            if cache.get_seq_length() > 0:
                raise ValueError("MoMForCausalLM needs its own MoMCache; got a filled " + type(cache).__name__)
            cache = None
        if use_cache and cache is None:
            per_round = 1 if cfg.attention_assembly == "qkv" else cfg.num_attention_modules
            cache = MoMCache(cfg.num_rounds, per_round)
        return use_cache, cache

    @staticmethod
    def _key_valid_and_positions(
        x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.LongTensor | None, past: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, past+T] which keys are real tokens, [B, T] position ids counting real tokens only)."""
        B, T = x.shape[:2]
        key_valid = torch.ones(B, past + T, dtype=torch.bool, device=x.device)
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("MoMForCausalLM takes a 2D attention_mask (1 = real token, 0 = padding)")
            m = attention_mask.to(torch.bool)
            key_valid[:, -m.shape[1] :] = m[:, -(past + T) :]
        if position_ids is None:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        return key_valid, position_ids

    def _attention_round(
        self, x: torch.Tensor, h: int, state: torch.Tensor | None, chunk: _Chunk
    ) -> tuple[torch.Tensor, Any, Any, torch.Tensor | None]:
        """Round h's assembled attention: every module some token picked runs, on the whole chunk masked to the
        tokens that picked it ('slots') or on those tokens only ('picked'). Returns (x, picks, probs, router state)."""
        cfg = self.config
        w, picked, picks, probs, state = self._route(
            self.attention_router, x, state, h, cfg.num_attention_modules, cfg.pruned_attention_modules
        )
        if cfg.attention_assembly == "qkv":
            x = x + self._qkv_assembled_attention(x, w, picked, h, chunk)
            return x, picks, probs, state
        run = self._picked_module_attention if cfg.kv_layout == "picked" else self._slotted_module_attention
        out = None
        for j, module in enumerate(self.attention_modules):
            sel = picked[..., j]
            if not bool(sel.any()):
                continue
            y = run(module, h, j, x, w[..., j], sel, chunk)
            if y is not None:
                out = y if out is None else out + y
        return (x + out if out is not None else x), picks, probs, state

    def _slotted_module_attention(
        self,
        module: AttentionModule,
        h: int,
        j: int,
        x: torch.Tensor,
        weight: torch.Tensor,
        sel: torch.Tensor,
        chunk: _Chunk,
    ) -> torch.Tensor:
        """'slots': module j runs on the whole chunk, its keys masked to the tokens that picked it in round h; its
        cache slot keeps every position. Returns its router-weighted output [B, T, d]."""
        cache = chunk.cache
        slot = cache.kv_slot(h, j) if cache is not None else None
        if cache is not None:
            cache.pad_slot(h, j, x, self._kv_heads, self._head_dim)
        sel_all = cache.update_selection(h, j, sel) if cache is not None else sel
        mask = self._attention_mask(sel_all, chunk.key_valid, chunk.past, x.shape[1], x.dtype)
        y = module(x, chunk.position_embeddings, mask, cache=_SlotView(cache, slot) if cache is not None else None)
        return y * weight[..., None]

    def _picked_module_attention(
        self,
        module: AttentionModule,
        h: int,
        j: int,
        x: torch.Tensor,
        weight: torch.Tensor,
        sel: torch.Tensor,
        chunk: _Chunk,
    ) -> torch.Tensor | None:
        """'picked': module j runs on the (real) tokens that picked it in round h only, gathered in order, so the
        attention among them is plain causal attention (no [T, S] mask for one sequence) and only their keys and
        values are cached. The same attention as 'slots' for every token that picked the module. Returns its
        router-weighted output scattered back to [B, T, d], or None when no real token picked it."""
        B, T, d = x.shape
        cache, position_embeddings = chunk.cache, chunk.position_embeddings
        sel = sel & chunk.key_valid[:, -T:]
        if not bool(sel.any()):
            return None
        order, valid = _picked_order(sel)
        index = order if order is not None else torch.arange(T, device=x.device).expand(B, T)
        positions = torch.where(valid, chunk.past + index, -1)
        key_positions = cache.update_positions(h, j, positions) if cache is not None else positions
        mask = self._picked_mask(positions, key_positions, x.dtype)
        view = _SlotView(cache, cache.kv_slot(h, j)) if cache is not None else None
        if order is None:  # every token of the chunk picked it: no gather
            return module(x, position_embeddings, mask, cache=view) * weight[..., None]
        xs, pe = _gather_tokens(x, order), tuple(_gather_tokens(t, order) for t in position_embeddings)
        y = module(xs, pe, mask, cache=view) * (weight.gather(1, order) * valid)[..., None]
        return torch.zeros_like(x).scatter_add_(1, order[..., None].expand(-1, -1, d), y)

    def _picked_mask(
        self, positions: torch.Tensor, key_positions: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Additive mask [B,1,C,N+C] for gathered queries at `positions` (-1 = padding) over keys at `key_positions`:
        a real key, not after the query, within the window. None when SDPA's own causal mask is exact: no cached
        entries (padding entries of the chunk come after every real one) or one query over only real cached keys."""
        C, N = positions.shape[1], key_positions.shape[1] - positions.shape[1]
        window = self.config.sliding_window()
        real_keys = key_positions >= 0
        in_window = not window or int(positions.max()) - int(key_positions[real_keys].min()) < window
        plain = N == 0 or (C == 1 and bool(real_keys[:, :N].all()))
        if plain and in_window and self.config._attn_implementation == "sdpa":
            return None
        q, k = positions[:, :, None], key_positions[:, None, :]
        allowed = (k >= 0) & (k <= q)
        if window:
            allowed = allowed & (q - k < window)
        allowed = allowed | (q < 0)  # a padding query's output is dropped; never leave its row empty
        mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def _ffn_round(
        self, x: torch.Tensor, h: int, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, Any, Any, torch.Tensor | None]:
        """Round h's assembled FFN: each module runs only on the tokens that picked it."""
        cfg = self.config
        w, picked, picks, probs, state = self._route(
            self.ffn_router, x, state, h, cfg.num_ffn_modules, cfg.pruned_ffn_modules
        )
        out = None
        for j, module in enumerate(self.ffn_modules):
            sel = picked[..., j]
            if bool(sel.all()):
                y = module(x) * w[..., j : j + 1]
            elif bool(sel.any()):
                y = torch.zeros_like(x)
                y[sel] = module(x[sel]) * w[..., j][sel][:, None]
            else:
                continue
            out = y if out is None else out + y
        return (x + out if out is not None else x), picks, probs, state

    def _qkv_assembled_attention(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        picked: torch.Tensor,
        h: int,
        chunk: _Chunk,
    ) -> torch.Tensor:
        """The authors' assembly: the picked modules' Q/K/V projections (of their own input norms) are summed, one
        attention runs over them (keys of earlier tokens are their own assemblies, cached per round), and each
        picked module's output projection of the result is weighted by the router and summed. A token that
        picked only SKIPs contributes zero keys and values, as in the authors' code."""
        B, T, _ = x.shape
        fam, hd = self._family, self._head_dim
        q = x.new_zeros(B, T, fam.num_attention_heads, hd)
        k = x.new_zeros(B, T, self._kv_heads, hd)
        v = x.new_zeros(B, T, self._kv_heads, hd)
        for j, module in enumerate(self.attention_modules):
            sel = picked[..., j]
            if not bool(sel.any()):
                continue
            attn, xs = module.self_attn, module.input_layernorm(x[sel])
            qj = attn.q_proj(xs).view(xs.shape[0], -1, hd)
            kj = attn.k_proj(xs).view(xs.shape[0], -1, hd)
            if hasattr(attn, "q_norm"):  # qwen3: per-head norms before the rotation
                qj, kj = attn.q_norm(qj), attn.k_norm(kj)
            q[sel] += qj
            k[sel] += kj
            v[sel] += attn.v_proj(xs).view(xs.shape[0], -1, hd)
        fm = family_module(fam.model_type)
        cos, sin = chunk.position_embeddings
        q, k = fm.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if chunk.cache is not None:
            k, v = chunk.cache.update(k, v, chunk.cache.kv_slot(h, 0))
        everyone = torch.ones_like(chunk.key_valid)
        mask = self._attention_mask(everyone, chunk.key_valid, chunk.past, T, x.dtype)
        attn0 = self.attention_modules[0].self_attn
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, fm.eager_attention_forward)
        y, _ = interface(attn0, q, k, v, mask, dropout=0.0, scaling=attn0.scaling)
        y = y.reshape(B, T, -1)
        out = torch.zeros_like(x)
        for j, module in enumerate(self.attention_modules):
            sel = picked[..., j]
            if bool(sel.all()):
                out = out + module.self_attn.o_proj(y) * w[..., j : j + 1]
            elif bool(sel.any()):
                out[sel] += module.self_attn.o_proj(y[sel]) * w[..., j][sel][:, None]
        return out

    @staticmethod
    def _balance(picks: torch.Tensor, probs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Switch-Transformer load balancing: options x sum_i (share of picks_i x mean probability_i)."""
        options = probs.shape[-1]
        share = torch.zeros(options, device=probs.device).index_add_(
            0, picks[real].reshape(-1), torch.ones(picks[real].numel(), device=probs.device)
        )
        share = share / share.sum().clamp(min=1)
        return options * (share * probs[real].mean(0)).sum()

    @staticmethod
    def _load(picks: torch.Tensor, options: int, real: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(options, device=picks.device)
        counts.index_add_(0, picks[real].reshape(-1), torch.ones(picks[real].numel(), device=picks.device))
        return (counts / counts.sum().clamp(min=1)).detach()

    @staticmethod
    def _entropy(probs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        p = probs[real]
        return -(p * p.clamp(min=1e-12).log()).sum(-1).mean().detach()

    # -- cost ----------------------------------------------------------------------------------------
    def forward_flops_per_token(
        self, context: int = 0, attention_picks: float | None = None, ffn_picks: float | None = None
    ) -> float:
        """Multiply-adds x 2 of the modules a token runs (`mom_forward_flops` of this model's config)."""
        return mom_forward_flops(self.config, context, attention_picks, ffn_picks)


def mom_forward_flops(
    config: MoMConfig, context: int = 0, attention_picks: float | None = None, ffn_picks: float | None = None
) -> float:
    """Forward FLOPs per token (multiply-adds x 2) of the modules a token runs, its routers and the head.

    `attention_picks` / `ffn_picks`: attention / FFN modules a token runs per round, default K (an upper bound:
    a picked SKIP costs nothing; pass K x (1 - SKIP share) for the realised figure). The attention-score term
    uses `context` keys. Embedding lookups and norms are ignored; the head is counted. A function of the config
    alone, so a FLOP-matched control can be sized without building the model.
    """
    fam, cfg = config.family_config(), config
    d, ff = fam.hidden_size, fam.intermediate_size
    heads = fam.num_attention_heads
    hd = int(getattr(fam, "head_dim", None) or d // heads)
    kv_heads = int(getattr(fam, "num_key_value_heads", None) or heads)
    attn = 2 * (d * heads * hd * 2 + d * kv_heads * hd * 2) + 2 * 2 * heads * hd * context
    mlp = 2 * 3 * d * ff
    k = 1 if cfg.fixed_routes else cfg.k_per_round
    state = cfg.router_hidden_size or d
    options = (cfg.num_attention_modules + cfg.num_ffn_modules) / 2 + cfg.num_skip_modules
    per_router = 3 * (d * state + state * state) + state * options if cfg.router == "gru" else d * options
    router = 0 if cfg.fixed_routes else 2 * 2 * per_router
    a = attention_picks if attention_picks is not None else k
    f = ffn_picks if ffn_picks is not None else k
    return cfg.num_rounds * (a * attn + f * mlp + router) + 2 * d * fam.vocab_size
