"""MoDification: a pretrained causal LM turned into a Mixture-of-Depths model, read top to bottom.

Each routed decoder layer l gets a router, a linear score on the layer input x_t (one number per token):

    s_t   = x_t . w_l + b_l               x_t: the layer input, RMS-normalised without weights (router_input)
    g_t   = sigmoid(s_t)                  the router score
    keep  = g_t > p                       operator="threshold" (MoDification: causal, adaptive count), or the
                                          top capacity * T scores of the sequence (operator="topk", MoD)
    out_t = w_t * block(x)_t + (1 - w_t) * x_t   for kept tokens: a two-expert mixture of the block and a
                                          no-op, w_t = g_t / sigmoid(b0) (router_weight="normalized")
    out_t = x_t                           for skipped tokens: they pass on the residual stream unchanged

The block runs on the kept tokens only (gathered, then scattered back), so a skipped token costs nothing
there and stores no key/value at that layer. Keys keep their RoPE rotation from their true positions, and
attention among the kept tokens is masked by position, so each layer's cache may hold a different number
of tokens (`MoDCache`).

At initialisation w_l = 0 and b_l = b0, so every token scores sigmoid(b0) > p, is processed, and gets
weight exactly 1: the converted model equals the base model. Training adds a layer-load-reducing loss

    loss = CE + lambda_load * mean_l max(0, mean_t g_t - target)

that pushes scores down, traded against the language-modelling loss, until tokens start to fall below p.
Only the routers (plus whatever a wrapped PEFT method trains, e.g. LoRA) receive gradients.

Batches: every sequence keeps its own tokens; rows are padded to the largest kept count of the batch and
the padding slots are masked out of attention and of the cache (masking, not a per-sequence loop).
Supported: decoder layers called as `layer(hidden_states, attention_mask=, position_ids=,
position_embeddings=, cache=, ...)` (the llama-style families) with 'sdpa' or 'eager' attention and no
sliding window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.architectures import first_tensor
from modetune.errors import ModetuneError, UnsupportedArchitectureError
from modetune.method_base import CACHE_FIELD, MethodModel
from modetune.mod.config import MoDConfig

WEIGHTS_NAME = "mod_model.safetensors"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


# --------------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------------
class Router(nn.Module):
    """s = x . w + b per token (float32); w starts at 0 and b at b0, so every token starts at sigmoid(b0)."""

    def __init__(self, hidden_size: int, config: MoDConfig):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=True)
        self.normed = config.router_input == "normed"
        with torch.no_grad():
            self.score.weight.zero_()
            self.score.bias.fill_(config.router_init_bias)
        # sigmoid(b0), computed exactly as forward() computes it at step 0, so w = g / init_score is exactly 1
        self.register_buffer("init_score", torch.sigmoid(torch.tensor(config.router_init_bias)), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        if self.normed:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.score(x).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# The cache: per-layer variable lengths
# --------------------------------------------------------------------------------------------------
class MoDCache(DynamicCache):
    """A `DynamicCache` in which a routed layer holds keys/values only for the tokens it processed.

    Dense layers fill their `DynamicLayer` as usual. For routed layers the cache also keeps each stored
    key's position (for the position-based causal mask) and whether it is a real token or a batch-padding
    slot. `get_seq_length()` is the number of tokens fed so far, which every layer has seen whether it
    processed them or not, so generation computes positions as for the base model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen_tokens = 0
        # routed layer -> pieces of [B, n] positions of its cached keys / False for batch-padding slots
        # (kept as lists and concatenated only when a multi-token step needs a mask: decoding appends cheaply)
        self._positions: dict[int, list[torch.Tensor]] = {}
        self._valid: dict[int, list[torch.Tensor]] = {}
        self.all_valid: dict[int, bool] = {}  # routed layer -> no batch-padding slot stored
        self.topk_floor: dict[int, torch.Tensor] = {}  # topk: routed layer -> [B] lowest score kept in the prompt

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def layer_length(self, layer_idx: int) -> int:
        """How many key/value slots layer `layer_idx` holds (routed layers: only the processed tokens)."""
        if layer_idx >= len(self.layers) or self.layers[layer_idx].keys is None:
            return 0
        return int(self.layers[layer_idx].keys.shape[-2])

    def kv_bytes(self) -> int:
        """Bytes held by all keys and values."""
        return kv_bytes(self)

    def record(self, layer_idx: int, positions: torch.Tensor, valid: torch.Tensor, all_valid: bool) -> None:
        """Note the positions (and padding slots) of the keys layer `layer_idx` just stored."""
        self._positions.setdefault(layer_idx, []).append(positions)
        self._valid.setdefault(layer_idx, []).append(valid)
        self.all_valid[layer_idx] = self.all_valid.get(layer_idx, True) and all_valid

    def key_positions(self, layer_idx: int) -> torch.Tensor | None:
        """[B, n] positions of the keys layer `layer_idx` holds (None: nothing stored yet)."""
        return _joined(self._positions, layer_idx)

    def key_valid(self, layer_idx: int) -> torch.Tensor | None:
        return _joined(self._valid, layer_idx)

    def _index_metadata(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for store in (self._positions, self._valid):
            for key in store:
                store[key] = [fn(_joined(store, key))]
        for key in self.topk_floor:
            self.topk_floor[key] = fn(self.topk_floor[key])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._index_metadata(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._index_metadata(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._index_metadata(lambda t: t[indices])

    def crop(self, max_length: int) -> None:
        raise ModetuneError("a MoD cache cannot be cropped (assisted/speculative decoding is not supported)")


def _joined(store: dict[int, list[torch.Tensor]], key: int) -> torch.Tensor | None:
    pieces = store.get(key)
    if not pieces:
        return None
    if len(pieces) > 1:
        pieces[:] = [torch.cat(pieces, dim=1)]
    return pieces[0]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
@dataclass
class MoDOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the loss parts and, per routed layer (`MoDModel.layer_indices`), the routing."""

    lm_loss: torch.Tensor | None = None  # the language-modelling cross-entropy
    load_loss: torch.Tensor | None = None  # the layer-load-reducing term (unweighted)
    processed_fraction: torch.Tensor | None = None  # [n_routed] fraction of (non-padding) tokens processed
    router_load: torch.Tensor | None = None  # [n_routed] mean router score sigmoid(s), the soft load


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class MoDModel(MethodModel):
    """Wraps a `*ForCausalLM` (or a `PeftModel` of one) and lets routed layers skip tokens."""

    config_class: ClassVar[type[MoDConfig]] = MoDConfig
    weights_name: ClassVar[str] = WEIGHTS_NAME
    counts_key: ClassVar[str] = "mod"

    def __init__(self, model: nn.Module, config: MoDConfig | None = None):
        super().__init__(model, config or MoDConfig())
        config = self.mod_config
        _check_supported(self.causal_lm)
        config.validate(len(self._located.layers))
        self.layer_indices = config.layer_indices(len(self._located.layers))
        hidden = self.causal_lm.config.get_text_config().hidden_size
        self.routers = nn.ModuleList(Router(hidden, config) for _ in self.layer_indices)
        self._freeze_base_unless_peft()
        self.routers.to(self.device)
        self._tokens: torch.Tensor | None = None  # [B, T] non-padding tokens of the running forward
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    @property
    def mod_config(self) -> MoDConfig:
        return self.method_config  # type: ignore[return-value]

    def training_logs(self, outputs: MoDOutput, share_scale: float = 1.0) -> dict[str, float]:
        """The LM loss (a share of the step's mean, scaled back), the load term, and per routed layer the
        fraction of tokens processed and the mean router score."""
        values: dict[str, float] = {}
        if outputs.lm_loss is not None:
            values["lm_loss"] = float(outputs.lm_loss.detach()) * share_scale
        if outputs.load_loss is not None:
            values["load_loss"] = float(outputs.load_loss.detach())
        if outputs.processed_fraction is not None:
            fractions = outputs.processed_fraction.tolist()
            values.update({f"processed/layer{i}": v for i, v in zip(self.layer_indices, fractions, strict=True)})
            values["processed_mean"] = sum(fractions) / len(fractions)
        if outputs.router_load is not None:
            values.update(
                {
                    f"router_load/layer{i}": v
                    for i, v in zip(self.layer_indices, outputs.router_load.tolist(), strict=True)
                }
            )
        return values

    def method_modules(self) -> dict[str, nn.Module]:
        return {"routers": self.routers}

    def router_parameters(self) -> list[nn.Parameter]:
        return list(self.routers.parameters())

    # -- routing one layer ---------------------------------------------------------------------------
    def _select(self, layer_idx: int, g: torch.Tensor, positions: torch.Tensor, cache: MoDCache | None) -> torch.Tensor:
        """[B, T] bool: the tokens layer `layer_idx` processes (never batch padding; always the sink tokens)."""
        cfg, valid = self.mod_config, self._tokens
        sink = positions < cfg.sink_tokens
        if cfg.operator == "threshold":
            return ((g > cfg.threshold) | sink) & valid
        if cache is not None and layer_idx in cache.topk_floor:  # decoding: causal stand-in for top-k
            return ((g >= cache.topk_floor[layer_idx][:, None]) | sink) & valid
        k = torch.ceil(cfg.capacity * valid.sum(1).float()).long()  # [B]
        rank = g.masked_fill(~valid, -1.0).argsort(1, descending=True).argsort(1)
        top = (rank < k[:, None]) & valid
        if cache is not None:
            cache.topk_floor[layer_idx] = g.masked_fill(~top, math.inf).amin(1)
        return (top | sink) & valid

    def _mix_weight(self, router: Router, logits: torch.Tensor) -> torch.Tensor:
        """w: how much of the block's output a processed token takes (the rest is the no-op expert)."""
        g = torch.sigmoid(logits)
        kind = self.mod_config.router_weight
        if kind == "sigmoid":
            return g
        normalized = g / router.init_score
        if kind == "normalized":
            return normalized
        return normalized - normalized.detach() + 1.0  # straight_through: exactly 1 forward, gradient of w

    def _route_layer(
        self, slot: int, layer_idx: int, block: Callable[..., Any], hidden: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Replaces decoder layer `layer_idx`'s forward while routing is on."""
        if args:
            raise UnsupportedArchitectureError(
                f"{type(self.causal_lm).__name__} passes positional arguments to its decoder layers; MoD supports "
                "decoder layers called with keyword arguments (llama-style families)"
            )
        cache_key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(cache_key)
        cache = cache if isinstance(cache, MoDCache) else None
        B, T, d = hidden.shape
        if self._tokens is None or self._tokens.shape != (B, T):
            self._tokens = torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        router = self.routers[slot]
        logits = router(hidden)
        g = torch.sigmoid(logits)
        all_positions = _positions(kwargs.get("position_ids"), B, T, cache, hidden.device)
        select = self._select(layer_idx, g.detach(), all_positions, cache)
        if self._stats is not None:
            self._stats[layer_idx] = (g, select, self._tokens)
        w = self._mix_weight(router, logits)

        if self.mod_config.skipped_kv == "keep":  # every token through the block; only kept ones take its output
            out = first_tensor(block(hidden, **kwargs))
            wk = w[..., None].to(hidden.dtype)
            return torch.where(select[..., None], wk * out + (1 - wk) * hidden, hidden)

        if B == 1 and T == 1 and cache is not None and cache.all_valid.get(layer_idx, True):
            # one decoding step: no gather, and the single query may see every key this layer stored
            if not bool(select[0, 0]):
                return hidden
            out = first_tensor(block(hidden, **{**kwargs, "attention_mask": None}))
            cache.record(layer_idx, all_positions, select, True)
            wk = w[..., None].to(hidden.dtype)
            return wk * out + (1 - wk) * hidden

        counts = select.sum(1)
        n = int(counts.max())
        if n == 0:  # nobody is processed: the layer is skipped outright
            return hidden
        # gather: processed tokens first, in position order; rows padded to n with (masked) skipped tokens
        order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :n]
        slot_valid = torch.arange(n, device=hidden.device)[None, :] < counts[:, None]  # [B, n]
        positions = all_positions.gather(1, order)
        call = dict(kwargs)
        call["position_ids"] = positions
        if kwargs.get("position_embeddings") is not None:
            call["position_embeddings"] = tuple(
                _gather(t.expand(B, *t.shape[1:]), order) for t in kwargs["position_embeddings"]
            )
        call.pop("cache_position", None)
        call["attention_mask"] = self._layer_mask(layer_idx, positions, slot_valid, cache, hidden.dtype)
        kept = _gather(hidden, order)
        out = first_tensor(block(kept, **call))
        if cache is not None:
            cache.record(layer_idx, positions, slot_valid, bool(slot_valid.all()))
        wk = _gather(w, order)[..., None].to(hidden.dtype)
        mixed = torch.where(slot_valid[..., None], wk * out + (1 - wk) * kept, kept)
        return hidden.scatter(1, order[..., None].expand(B, n, d), mixed)  # scatter back

    def _layer_mask(
        self,
        layer_idx: int,
        positions: torch.Tensor,
        slot_valid: torch.Tensor,
        cache: MoDCache | None,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """Attention mask of the gathered queries over this layer's keys: key position <= query position."""
        past_pos = cache.key_positions(layer_idx) if cache is not None else None
        key_pos, key_valid = positions, slot_valid
        if past_pos is not None:
            key_pos = torch.cat([past_pos, positions], dim=1)
            key_valid = torch.cat([cache.key_valid(layer_idx), slot_valid], dim=1)
        n = positions.shape[1]
        sdpa = self.causal_lm.config._attn_implementation == "sdpa"
        if bool(key_valid.all()) and (n == 1 or (past_pos is None and sdpa)):
            return None  # plain causal (or a single query over all keys): the fast kernels' own path
        allowed = (key_pos[:, None, :] <= positions[:, :, None]) & key_valid[:, None, :]
        allowed[:, :, -n:] |= torch.eye(n, dtype=torch.bool, device=positions.device)  # padding slots see themselves
        allowed = allowed[:, None]  # [B, 1, n, keys]
        if sdpa:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    # -- switching routing on -------------------------------------------------------------------------
    @contextmanager
    def routing(self) -> Iterator[None]:
        """While active, routed layers run through `_route_layer` and the decoder stack uses a `MoDCache`."""
        layers, backbone = self._located.layers, self._located.backbone
        saved = {}
        for slot, idx in enumerate(self.layer_indices):
            layer = layers[idx]
            saved[idx] = layer.__dict__.get("forward")
            block = type(layer).forward.__get__(layer)

            def forward(hidden, *args, _slot=slot, _idx=idx, _block=block, **kwargs):
                return self._route_layer(_slot, _idx, _block, hidden, *args, **kwargs)

            layer.forward = forward

        def before(_module, args, kwargs):
            ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            if ids is None and args:
                ids = args[0]
            T = ids.shape[1]
            mask = kwargs.get("attention_mask")
            self._tokens = mask[:, -T:].bool() if (mask is not None and mask.dim() == 2) else None
            key = "cache" if "cache" in kwargs else "past_key_values"
            cache = kwargs.get(key)
            use_cache = kwargs.get("use_cache")
            use_cache = self.causal_lm.config.use_cache if use_cache is None else use_cache
            if (cache is None and use_cache) or (cache is not None and not isinstance(cache, MoDCache)):
                if cache is not None and cache.get_seq_length() > 0:
                    raise ModetuneError(
                        f"a MoD model needs a MoDCache (its layers store different numbers of tokens), got a filled "
                        f"{type(cache).__name__}; pass cache=MoDCache() or none"
                    )
                kwargs[key] = MoDCache()
            self._step_tokens = T
            return args, kwargs

        def after(_module, _args, kwargs, output):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            cache = getattr(output, CACHE_FIELD, None) or cache
            if isinstance(cache, MoDCache):
                cache.seen_tokens += self._step_tokens
            return output

        handles = [
            backbone.register_forward_pre_hook(before, with_kwargs=True),
            backbone.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for idx, previous in saved.items():
                if previous is None:
                    del layers[idx].forward
                else:
                    layers[idx].forward = previous
            self._tokens = None

    # -- the forward pass ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        skip_logits: bool | None = None,  # accepted for the shared Trainer; the base model computes the logits
        micro_batches: int = 1,
        **kwargs: Any,
    ) -> MoDOutput:
        """Like a `*ForCausalLM.forward` with routing; the loss adds lambda_load x the load objective.

        `micro_batches`: how many shares the optimizer step adds up (micro-batches x processes). The LM loss
        is already this batch's share of the step (through `num_items_in_batch`); the load term is a per-batch
        mean, so it is divided by `micro_batches` to keep its weight independent of accumulation and ranks.
        """
        kwargs.pop("return_dict", None)
        if use_cache is None:
            use_cache = not self.training and labels is None
        if num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        self._stats = {}
        try:
            with self.routing():
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache, **kwargs
                )
            stats, self._stats = self._stats, None
        finally:
            self._stats = None
        load, fraction = self._layer_loads(stats)
        cfg = self.mod_config
        load_loss = torch.clamp(load - cfg.load_target, min=0).mean() if load is not None else None
        loss = out.loss
        if loss is not None and load_loss is not None and cfg.load_weight > 0:
            loss = loss + cfg.load_weight / micro_batches * load_loss.to(loss.device)
        return MoDOutput(
            loss=loss,
            logits=out.logits,
            cache=getattr(out, "cache", None),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            lm_loss=out.loss,
            load_loss=load_loss,
            processed_fraction=fraction,
            router_load=load.detach() if load is not None else None,
        )

    def _layer_loads(self, stats: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per routed layer: the soft load (mean score, differentiable) and the processed fraction."""
        if not stats:
            return None, None
        loads, fractions = [], []
        for idx in self.layer_indices:
            g, select, valid = stats[idx]
            count = valid.sum().clamp(min=1)
            loads.append((g * valid).sum() / count)
            fractions.append((select & valid).sum() / count)
        return torch.stack(loads), torch.stack(fractions).float()

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`transformers` generation with routing; the KV cache is a `MoDCache` (per-layer lengths)."""
        if kwargs.get("use_cache", True) and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs["cache"] = MoDCache()
        with self.routing():
            return self.model.generate(*args, **kwargs)


def get_mod_model(model: nn.Module, config: MoDConfig | None = None, **overrides: Any) -> MoDModel:
    """Wrap a `*ForCausalLM` or a `PeftModel` of one with MoD routers (`overrides` are MoDConfig fields)."""
    if isinstance(model, MoDModel):
        raise ModetuneError("this model is already a MoDModel; wrap the base (or PEFT) model instead")
    if config is None:
        config = MoDConfig(**overrides)
    elif overrides:
        config = MoDConfig.from_dict({**config.to_dict(), **overrides})
    return MoDModel(model, config)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def kv_bytes(cache: Any) -> int:
    """Bytes held by all keys and values of a transformers cache (a `DynamicCache`, a `MoDCache`)."""
    return sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None
    )


def _gather(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """t[b, order[b, j], ...] for a [B, T, ...] tensor."""
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
    return t.gather(1, index)


def _positions(
    position_ids: torch.Tensor | None, B: int, T: int, cache: MoDCache | None, device: torch.device
) -> torch.Tensor:
    """[B, T] absolute positions of this step's tokens (what RoPE and the position-based mask use)."""
    if position_ids is None:
        start = cache.seen_tokens if cache is not None else 0
        position_ids = torch.arange(start, start + T, device=device)[None]
    return position_ids.to(device).expand(B, T)


def _check_supported(causal_lm: PreTrainedModel) -> None:
    config = causal_lm.config.get_text_config()
    impl = causal_lm.config._attn_implementation
    if impl not in ATTENTION_IMPLEMENTATIONS:
        raise UnsupportedArchitectureError(
            f"MoD builds its own per-layer attention masks for attn_implementation in {ATTENTION_IMPLEMENTATIONS}; "
            f"this model uses {impl!r}. Load it with attn_implementation='sdpa'."
        )
    layer_types = set(getattr(config, "layer_types", None) or [])
    if getattr(config, "sliding_window", None) or (layer_types - {"full_attention"}):
        raise UnsupportedArchitectureError(
            f"{type(causal_lm).__name__} uses sliding-window or non-full attention layers, which MoD's "
            "position-based masks do not model; use a model with full attention (or sliding_window=None)"
        )
