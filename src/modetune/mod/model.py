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

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.errors import ModetuneError, UnsupportedArchitectureError
from modetune.method_base import MethodModel
from modetune.mod.config import MoDConfig
from modetune.mod.routing import MoDCache, Router, TokenRouting

WEIGHTS_NAME = "mod_model.safetensors"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


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
class MoDModel(TokenRouting, MethodModel):
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

    # -- calibration to a compute target ---------------------------------------------------------------
    @torch.no_grad()
    def finish_training(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """With `target_skip`: one threshold per routed layer, so that the layers skip that share of the decoder
        layers' token computations on `batches` (see `calibrate_thresholds`)."""
        if self.mod_config.target_skip is None:
            return {}
        return calibrate_thresholds(self, list(itertools.islice(batches, CALIBRATION_BATCHES)))

    def skipped_share(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, list[torch.Tensor]]:
        """(the share of all decoder layers' token computations skipped on `batches`, each routed layer's scores
        of the real tokens); forwards in eval mode, no cache."""
        skipped = tokens = 0.0
        scores: list[list[torch.Tensor]] = [[] for _ in self.layer_indices]
        for batch in batches:
            _, stats = self._routed_forward(input_ids=batch["input_ids"].to(self.device),
                                            attention_mask=_on(batch.get("attention_mask"), self.device),
                                            use_cache=False)  # fmt: skip
            for slot, idx in enumerate(self.layer_indices):
                g, select, valid = stats[idx]
                scores[slot].append(g[valid].float())
                skipped += float((valid & ~select).sum())
            tokens += float(valid.sum())
        return skipped / max(1.0, tokens * len(self._located.layers)), [torch.cat(s) for s in scores]

    def export_settings(self) -> dict[str, Any]:
        return {**self.mod_config.to_dict(), "layer_indices": list(self.layer_indices)}

    def _routed_stack(self) -> tuple[nn.ModuleList, nn.Module, Any]:
        return self._located.layers, self._located.backbone, self.causal_lm.config

    def router_parameters(self) -> list[nn.Parameter]:
        return list(self.routers.parameters())

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
        out, stats = self._routed_forward(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache, **kwargs
        )
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

    def _routed_forward(self, **kwargs: Any) -> tuple[Any, dict[int, tuple[torch.Tensor, ...]]]:
        """(the wrapped model's output with routing on, per routed layer its (scores, selection, real tokens))."""
        self._stats = {}
        try:
            with self.routing():
                out = self.model(**kwargs)
            return out, self._stats
        finally:
            self._stats = None

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
# Calibration
# --------------------------------------------------------------------------------------------------
CALIBRATION_BATCHES = 16  # held-out batches the thresholds are calibrated on
CALIBRATION_ROUNDS = 4  # passes: each layer's scores depend on what the layers before it skip


def calibrate_thresholds(model: MoDModel, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Set `layer_thresholds` so that every routed layer skips the same share s of the real tokens, with
    s = target_skip * (all layers) / (routed layers), the share of all layers' work asked for.

    Each pass sets each layer's threshold to the s-quantile of its router scores under the thresholds of the pass
    before (the first pass processes everything), then corrects s by the gap between the share achieved and the
    target; a few passes settle the shift that upstream skipping causes in downstream scores and the tokens that
    are always processed (sink tokens). Returns what was asked, what was achieved on `batches`, and the thresholds.
    """
    cfg = model.mod_config
    if not batches:
        raise ModetuneError("target_skip needs held-out batches to calibrate on; none were given")
    share = cfg.target_skip * len(model._located.layers) / len(model.layer_indices)
    was_training = model.training
    model.eval()
    cfg.layer_thresholds = [0.0] * len(model.layer_indices)
    scale = len(model._located.layers) / len(model.layer_indices)
    try:
        achieved, scores = model.skipped_share(batches)
        for _ in range(CALIBRATION_ROUNDS):
            cfg.layer_thresholds = [min(float(torch.quantile(s, min(share, 1.0))), 0.999999) for s in scores]
            achieved, scores = model.skipped_share(batches)
            # what the quantiles miss (tokens that are always processed, ties, upstream shifts) is asked for again
            share = max(0.0, share + (cfg.target_skip - achieved) * scale)
    finally:
        model.train(was_training)
    return {
        "target_skip": cfg.target_skip,
        "achieved_skip": round(achieved, 4),
        "layer_thresholds": [round(p, 6) for p in cfg.layer_thresholds],
        "calibration_tokens": int(scores[0].numel()) if scores else 0,
    }


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _on(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return t.to(device) if t is not None else None


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
