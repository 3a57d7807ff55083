"""MoD's inference core: the routers, the per-layer KV cache and token routing through a decoder layer.

This module imports nothing from modetune but `modetune.errors`, `modetune.hub` and `modetune.tensors`, so `modetune export`
copies it into a model directory that plain transformers loads (`trust_remote_code=True`). `TokenRouting` is
the routing itself, shared by `MoDModel` (training, PEFT) and the exported model: its host lists the routers
(`self.routers`), the routed layer indices, the settings (`self.mod_config`) and, through `_routed_stack()`,
where the decoder layers, the decoder stack and the model config are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from modetune.errors import ModetuneError, UnsupportedArchitectureError
from modetune.hub import CACHE_FIELD
from modetune.tensors import first_tensor


# --------------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------------
class Router(nn.Module):
    """s = x . w + b per token (float32); w starts at 0 and b at b0, so every token starts at sigmoid(b0)."""

    def __init__(self, hidden_size: int, config: Any):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=True)
        self.normed = config.router_input == "normed"
        with torch.no_grad():
            self.score.weight.zero_()
            self.score.bias.fill_(config.router_init_bias)
        self.init_bias = float(config.router_init_bias)  # a number, not a buffer: nothing to (re)initialise on load

    @property
    def init_score(self) -> torch.Tensor:
        """sigmoid(b0), computed exactly as forward() computes it at step 0, so w = g / init_score is exactly 1."""
        return torch.sigmoid(torch.tensor(self.init_bias, dtype=torch.float32, device=self.score.bias.device))

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the linear score reads: the layer input in float32, divided by its RMS for router_input='normed'."""
        x = hidden.float()
        if self.normed:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(hidden)).squeeze(-1)


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
# Routing tokens through the routed layers
# --------------------------------------------------------------------------------------------------
class TokenRouting:
    """Routes tokens past the routed decoder layers while `routing()` is active (a mixin for an `nn.Module`)."""

    mod_config: Any  # the settings: operator, threshold, capacity, sink_tokens, router_weight, skipped_kv
    routers: nn.ModuleList
    layer_indices: list[int]
    _tokens: torch.Tensor | None  # [B, T] non-padding tokens of the running forward
    _stats: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None  # filled when not None
    _layer_call: dict[str, Any] = {}  # noqa: RUF012 (routed_module='mlp': the running layer's keyword arguments)

    def _routed_stack(self) -> tuple[nn.ModuleList, nn.Module, PretrainedConfig]:
        """(the decoder layers, the decoder stack they run in, the causal LM's config)."""
        raise NotImplementedError

    # -- routing one layer ---------------------------------------------------------------------------
    def _select(self, layer_idx: int, g: torch.Tensor, positions: torch.Tensor, cache: MoDCache | None) -> torch.Tensor:
        """[B, T] bool: the tokens layer `layer_idx` processes (never batch padding; always the sink tokens)."""
        cfg, valid = self.mod_config, self._tokens
        sink = positions < cfg.sink_tokens
        if cfg.operator == "threshold":
            per_layer = getattr(cfg, "layer_thresholds", None)
            p = per_layer[self.layer_indices.index(layer_idx)] if per_layer else cfg.threshold
            return ((g > p) | sink) & valid
        if cfg.operator == "random":  # chance: the same expected share of tokens, whatever the router says
            return ((torch.rand(g.shape, device=g.device) < cfg.capacity) | sink) & valid
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
    ) -> Any:
        """Replaces the routed part's forward (decoder layer `layer_idx`, or its attention or MLP) while routing is
        on. A skipped token keeps its input (a whole layer) or gets no update (attention, MLP)."""
        if args:
            raise UnsupportedArchitectureError(
                f"{type(self).__name__} wraps a model that passes positional arguments to its decoder layers; MoD supports "
                "decoder layers called with keyword arguments (llama-style families)"
            )
        part = routed_part(self.mod_config)
        if part == "mlp":  # the MLP gets only the hidden states: positions and cache come from its layer's call
            kwargs = self._layer_call
        cache_key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(cache_key)
        cache = cache if isinstance(cache, MoDCache) else None
        B, T = hidden.shape[:2]
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
        if part == "block":
            return self._route_tokens(layer_idx, block, hidden, select, w, all_positions, cache, kwargs, update=False)
        if part == "mlp":
            return self._route_tokens(layer_idx, block, hidden, select, w, all_positions, None, None, update=True)
        return self._route_tokens(layer_idx, block, hidden, select, w, all_positions, cache, kwargs, update=True), None

    def _route_tokens(
        self,
        layer_idx: int,
        block: Callable[..., Any],
        hidden: torch.Tensor,
        select: torch.Tensor,
        w: torch.Tensor,
        all_positions: torch.Tensor,
        cache: MoDCache | None,
        kwargs: dict[str, Any] | None,
        update: bool,
    ) -> torch.Tensor:
        """Run `block` on the selected tokens only. `update`: the block's output is an update to be added (attention,
        MLP), so a skipped token gets zero and a kept one w * out; else (a whole layer) a skipped token keeps its
        input and a kept one gets w * out + (1 - w) * input. `kwargs` None: a per-token block (the MLP), called
        on the gathered tokens alone, with no attention mask, positions or cache."""
        B, T, d = hidden.shape
        skipped = torch.zeros_like(hidden) if update else hidden

        def mixed_output(out: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            wk = weight[..., None].to(out.dtype)
            return wk * out if update else wk * out + (1 - wk) * x

        if self.mod_config.skipped_kv == "keep":  # every token through the block; only kept ones take its output
            out = first_tensor(block(hidden, **(kwargs or {})))
            return torch.where(select[..., None], mixed_output(out, w, hidden), skipped)

        if B == 1 and T == 1 and (kwargs is None or (cache is not None and cache.all_valid.get(layer_idx, True))):
            # one decoding step: no gather, and the single query may see every key this layer stored
            if not bool(select[0, 0]):
                return skipped
            if kwargs is None:
                return mixed_output(first_tensor(block(hidden)), w, hidden)
            out = first_tensor(block(hidden, **{**kwargs, "attention_mask": None}))
            cache.record(layer_idx, all_positions, select, True)
            return mixed_output(out, w, hidden)

        counts = select.sum(1)
        n = int(counts.max())
        if n == 0:  # nobody is processed: the block is skipped outright
            return skipped
        # gather: processed tokens first, in position order; rows padded to n with (masked) skipped tokens
        order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :n]
        slot_valid = torch.arange(n, device=hidden.device)[None, :] < counts[:, None]  # [B, n]
        kept = _gather(hidden, order)
        if kwargs is None:
            out = first_tensor(block(kept))
        else:
            positions = all_positions.gather(1, order)
            call = dict(kwargs)
            call["position_ids"] = positions
            if kwargs.get("position_embeddings") is not None:
                call["position_embeddings"] = tuple(
                    _gather(t.expand(B, *t.shape[1:]), order) for t in kwargs["position_embeddings"]
                )
            call.pop("cache_position", None)
            call["attention_mask"] = self._layer_mask(layer_idx, positions, slot_valid, cache, hidden.dtype)
            out = first_tensor(block(kept, **call))
            if cache is not None:
                cache.record(layer_idx, positions, slot_valid, bool(slot_valid.all()))
        mixed = torch.where(slot_valid[..., None], mixed_output(out, _gather(w, order), kept), _gather(skipped, order))
        return skipped.scatter(1, order[..., None].expand(B, n, d), mixed)  # scatter back

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
        sdpa = self._routed_stack()[2]._attn_implementation == "sdpa"
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
        layers, backbone, lm_config = self._routed_stack()
        part = routed_part(self.mod_config)
        saved = {}
        handles = []
        for slot, idx in enumerate(self.layer_indices):
            target = routed_module(layers[idx], part, idx)
            saved[idx] = (target, target.__dict__.get("forward"))
            block = type(target).forward.__get__(target)

            def forward(*args, _slot=slot, _idx=idx, _block=block, **kwargs):
                hidden = args[0] if args else kwargs.pop("hidden_states")
                return self._route_layer(_slot, _idx, _block, hidden, *args[1:], **kwargs)

            target.forward = forward
            if part == "mlp":  # the MLP's positions and cache: those of its layer's call
                handles.append(layers[idx].register_forward_pre_hook(self._remember_layer_call, with_kwargs=True))

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
            use_cache = lm_config.use_cache if use_cache is None else use_cache
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

        handles += [
            backbone.register_forward_pre_hook(before, with_kwargs=True),
            backbone.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for target, previous in saved.values():
                if previous is None:
                    del target.forward
                else:
                    target.forward = previous
            self._tokens = None
            self._layer_call = {}

    def _remember_layer_call(self, _layer: nn.Module, _args: tuple, kwargs: dict) -> None:
        self._layer_call = kwargs


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
ROUTED_PARTS = {"attention": "self_attn", "mlp": "mlp"}  # routed_module -> the decoder layer's attribute


def routed_part(settings: Any) -> str:
    """What a routed layer routes: 'block' (the whole decoder layer), 'attention' or 'mlp'."""
    return getattr(settings, "routed_module", "block")


def routed_module(layer: nn.Module, part: str, layer_idx: int) -> nn.Module:
    """The module whose forward routing replaces: the decoder layer itself or its attention or MLP."""
    if part == "block":
        return layer
    module = getattr(layer, ROUTED_PARTS[part], None)
    if not isinstance(module, nn.Module):
        raise UnsupportedArchitectureError(
            f"routed_module={part!r} needs decoder layer {layer_idx} ({type(layer).__name__}) to keep its "
            f"{part} in `.{ROUTED_PARTS[part]}`; it does not. Use routed_module='block'."
        )
    return module


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
