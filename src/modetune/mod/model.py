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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.errors import ModetuneError, UnsupportedArchitectureError
from modetune.method_base import MethodModel
from modetune.mod.config import MoDConfig
from modetune.mod.routing import MoDCache, Router, TokenRouting, routed_module, routed_part
from modetune.tensors import first_tensor

WEIGHTS_NAME = "mod_model.safetensors"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
@dataclass
class MoDOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the loss parts and, per routed layer (`MoDModel.layer_indices`), the routing."""

    lm_loss: torch.Tensor | None = None  # the language-modelling cross-entropy
    distill_loss: torch.Tensor | None = None  # objective='distill': KL(base || converted), mean per real token
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
        self._calibration_shares: list[float] | None = None  # per routed layer, while calibrate_thresholds runs
        self._training_shares: list[float] | None = None  # per routed layer: held in every training batch

    @property
    def mod_config(self) -> MoDConfig:
        return self.method_config  # type: ignore[return-value]

    def training_logs(self, outputs: MoDOutput, share_scale: float = 1.0) -> dict[str, float]:
        """The LM loss (a share of the step's mean, scaled back), the load term, and per routed layer the
        fraction of tokens processed and the mean router score."""
        values: dict[str, float] = {}
        if outputs.lm_loss is not None:
            values["lm_loss"] = float(outputs.lm_loss.detach()) * share_scale
        if outputs.distill_loss is not None:
            values["distill_loss"] = float(outputs.distill_loss.detach())
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

    # -- before and after training ---------------------------------------------------------------------
    @torch.no_grad()
    def begin_training(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """With router_start='influence': fit the routers to the frozen model's per-token layer influence; with
        `target_skip` as well, calibrate the thresholds and hold each layer's share of skipped tokens in every
        training batch (its threshold set from the batch's scores), so that training sees the skipping it will be
        used with, from the first step to the last."""
        cfg = self.mod_config
        if cfg.router_start != "influence":
            return {}
        held = list(itertools.islice(batches, CALIBRATION_BATCHES))
        report: dict[str, Any] = {"router_start": fit_routers_to_influence(self, held)}
        if cfg.target_skip is not None:
            report["calibration"] = calibrate_thresholds(self, held)
            # while training, each batch skips these shares exactly, however the routers' scores move
            self._training_shares = report["calibration"]["layer_shares"]
        return report

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
                                            use_cache=False, logits_to_keep=1)  # fmt: skip
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

    def _select(self, layer_idx: int, g: torch.Tensor, positions: torch.Tensor, cache: MoDCache | None) -> torch.Tensor:
        # calibrating, or training at the operating point: this layer's threshold from the scores it sees now
        shares = self._calibration_shares
        if shares is None and self.training:
            shares = self._training_shares
        if shares is not None:
            slot = self.layer_indices.index(layer_idx)
            may_skip = self._tokens & (positions >= self.mod_config.sink_tokens)
            self.mod_config.layer_thresholds[slot] = threshold_for_share(
                g, may_skip, int(self._tokens.sum()), shares[slot]
            )
        return super()._select(layer_idx, g, positions, cache)

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
        loss, distill_loss = out.loss, None
        if cfg.objective == "distill" and labels is not None:  # per-batch mean, like the load term
            teacher = self.teacher_logits(input_ids, attention_mask)
            distill_loss = distillation_loss(out.logits, teacher, attention_mask)
            loss = distill_loss / micro_batches
        if loss is not None and load_loss is not None and cfg.load_weight > 0:
            loss = loss + cfg.load_weight / micro_batches * load_loss.to(loss.device)
        return MoDOutput(
            loss=loss,
            logits=out.logits,
            cache=getattr(out, "cache", None),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            lm_loss=out.loss,
            distill_loss=distill_loss,
            load_loss=load_loss,
            processed_fraction=fraction,
            router_load=load.detach() if load is not None else None,
        )

    @torch.no_grad()
    def teacher_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The unconverted model's logits: this network with routing and any PEFT adapter switched off (no copy)."""
        with self._adapters_off():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _adapters_off(self) -> AbstractContextManager[Any]:
        return self.model.disable_adapter() if self.is_peft else nullcontext()

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


@torch.no_grad()
def calibrate_thresholds(
    model: MoDModel, batches: list[dict[str, torch.Tensor]], shares: list[float] | None = None
) -> dict[str, Any]:
    """Set `layer_thresholds` so that each routed layer skips its share of the real tokens: `shares` (one per
    routed layer), by default the same s everywhere, s = target_skip * (all layers) / (routed layers).

    The `batches` are joined into one and run through the model once; as the forward reaches each routed layer,
    its threshold is set between the scores that skip s of the tokens there. Each layer is thus calibrated on the
    scores it really sees, under the skipping of the layers before it, and the tokens that are always processed
    (sink tokens) are counted in. The share is exact on the calibration text up to ties. Returns what was asked,
    what was achieved on `batches` (run one by one, as at use), and the thresholds.
    """
    cfg = model.mod_config
    if not batches:
        raise ModetuneError("target_skip needs held-out batches to calibrate on; none were given")
    was_training = model.training
    model.eval()
    cfg.layer_thresholds = [0.0] * len(model.layer_indices)  # every token processed until each layer is set
    try:
        if shares is None:
            shares = _global_shares(model, batches) if cfg.share_allocation == "global" else _uniform_shares(model)
        input_ids, attention_mask = _joined_batch(batches, model.device)
        model._calibration_shares = shares
        model._routed_forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        model._calibration_shares = None
        achieved, scores = model.skipped_share(batches)
    finally:
        model._calibration_shares = None
        model.train(was_training)
    return {
        "target_skip": cfg.target_skip,
        "achieved_skip": round(achieved, 4),
        "layer_thresholds": [round(p, 6) for p in cfg.layer_thresholds],
        "layer_shares": [round(share, 6) for share in shares],
        "calibration_tokens": int(scores[0].numel()) if scores else 0,
    }


def _uniform_shares(model: MoDModel) -> list[float]:
    cfg = model.mod_config
    return [cfg.target_skip * len(model._located.layers) / len(model.layer_indices)] * len(model.layer_indices)


def _global_shares(model: MoDModel, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Each routed layer's share of skipped tokens under one cut on every layer's router scores, measured with
    every token processed (the thresholds at 0, as `calibrate_thresholds` sets them), placed so that target_skip
    of all layers' work falls below it."""
    cfg = model.mod_config
    _, scores = model.skipped_share(batches)
    pooled = torch.cat(scores).sort().values
    cut = pooled[
        min(max(1, round(cfg.target_skip * len(model._located.layers) * scores[0].numel())), pooled.numel()) - 1
    ]
    return [float((s <= cut).float().mean()) for s in scores]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, mean over the real (non-padding) tokens."""
    log_p = teacher.float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(student.float().log_softmax(-1), log_p, log_target=True, reduction="none").sum(-1)
    if attention_mask is None:
        return kl.mean()
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


INFLUENCE_RIDGE = 0.01  # ridge penalty per token (features have unit RMS)


@torch.no_grad()
def fit_routers_to_influence(model: MoDModel, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Fit each router's score to the log of how much its routed block changes each token, on `batches` run
    through the frozen model with every token processed (ridge regression on the router's features; sink tokens
    left out, they are always processed). The change is 1 - cos(x_in, x_out) for a whole layer, |update| / |x_in|
    for its attention or MLP (x_in: the layer's input). Scores then rank tokens by their block's influence, on one
    scale across layers. Returns the tokens used and each layer's R^2."""
    if not batches:
        raise ModetuneError(
            "router_start='influence' needs batches to measure the layers' influence on; none were given"
        )
    part = routed_part(model.mod_config)
    probes = [_InfluenceProbe(model.routers[slot], part) for slot in range(len(model.layer_indices))]
    handles = []
    for probe, idx in zip(probes, model.layer_indices, strict=True):
        layer = model._located.layers[idx]
        block = routed_module(layer, part, idx)
        handles.append(layer.register_forward_pre_hook(probe.layer_input, with_kwargs=True))
        handles.append(block.register_forward_pre_hook(probe.block_input, with_kwargs=True))
        handles.append(block.register_forward_hook(probe.block_output))
    was_training = model.training
    model.eval()
    try:
        with model._adapters_off():
            for batch in batches:
                ids = batch["input_ids"].to(model.device)
                mask = _on(batch.get("attention_mask"), model.device)
                keep = _fit_tokens(ids, mask, model.mod_config.sink_tokens)
                for probe in probes:
                    probe.keep = keep
                model.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    r2 = []
    for probe in probes:
        weight, bias, fit = probe.sums.solve(INFLUENCE_RIDGE)
        probe.router.score.weight.copy_(weight[None].to(probe.router.score.weight))
        probe.router.score.bias.fill_(bias)
        r2.append(round(fit, 4))
    return {"tokens": probes[0].sums.count, "r2": r2}


class _InfluenceProbe:
    """Hooks on one routed layer that add (router features, log change) of each kept token to a ridge fit."""

    def __init__(self, router: Router, part: str) -> None:
        self.router, self.part, self.sums = router, part, _RidgeSums()
        self.keep: torch.Tensor | None = None  # [B, T] the tokens of the running batch to learn from
        self._layer_in: torch.Tensor | None = None
        self._block_in: torch.Tensor | None = None

    def layer_input(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._layer_in = _hidden_argument(args, kwargs)

    def block_input(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._block_in = _hidden_argument(args, kwargs)

    def block_output(self, _module: nn.Module, _args: Any, output: Any) -> None:
        x_in, out = self._layer_in.float(), first_tensor(output).float()
        if self.part == "block":
            change = 1 - torch.cosine_similarity(x_in, out, dim=-1)
        else:  # the attention's or MLP's update, relative to the residual stream it is added to
            change = out.norm(dim=-1) / x_in.norm(dim=-1).clamp(min=1e-6)
        keep = self.keep
        self.sums.add(self.router.features(self._block_in)[keep], torch.log(change[keep].clamp(min=0) + 1e-6))


def _hidden_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _RidgeSums:
    """Running sums of the normal equations of a linear fit y ~ w.x + b."""

    def __init__(self) -> None:
        self.ata: torch.Tensor | None = None
        self.aty: torch.Tensor | None = None
        self.yty = self.ysum = 0.0
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], 1)
        y = y.double()
        self.ata = a.T @ a if self.ata is None else self.ata + a.T @ a
        self.aty = a.T @ y if self.aty is None else self.aty + a.T @ y
        self.yty += float(y @ y)
        self.ysum += float(y.sum())
        self.count += len(y)

    def solve(self, ridge: float) -> tuple[torch.Tensor, float, float]:
        """(w, b, R^2 on the fitted tokens); the bias is not penalised."""
        penalty = torch.eye(len(self.ata), dtype=self.ata.dtype, device=self.ata.device) * ridge * self.count
        penalty[-1, -1] = 0
        solution = torch.linalg.solve(self.ata + penalty, self.aty)
        sse = self.yty - 2 * float(solution @ self.aty) + float(solution @ self.ata @ solution)
        sst = self.yty - self.ysum**2 / max(1, self.count)
        return solution[:-1].float(), float(solution[-1]), 1 - sse / sst if sst > 0 else 0.0


def _fit_tokens(ids: torch.Tensor, mask: torch.Tensor | None, sink_tokens: int) -> torch.Tensor:
    real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    return real & (torch.arange(ids.shape[1], device=ids.device)[None] >= sink_tokens)


def threshold_for_share(g: torch.Tensor, candidates: torch.Tensor, real_tokens: int, share: float) -> float:
    """The threshold p that skips `share` of `real_tokens` when the tokens scoring `g[candidates]` may be
    skipped (processed iff g > p): midway between the last score skipped and the first kept, so held-out
    scores near the cut split evenly."""
    scores = g[candidates].float().sort().values
    skip = min(round(share * real_tokens), scores.numel())
    if skip <= 0:
        return 0.0
    if skip == scores.numel():
        return min(float(scores[-1]), MAX_THRESHOLD)
    return min(float(scores[skip - 1] + scores[skip]) / 2, MAX_THRESHOLD)


MAX_THRESHOLD = 0.999999  # the largest p allowed (p < 1)


def _joined_batch(batches: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches as one, right-padded to the longest row, with its attention mask."""
    rows, masks = [], []
    for batch in batches:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        rows.extend(ids)
        masks.extend(mask if mask is not None else torch.ones_like(ids))
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=rows[0].dtype)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = mask
    return input_ids.to(device), attention_mask.to(device)


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
