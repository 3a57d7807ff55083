"""Mixture-of-Depths Ensemble (MoDE), read top to bottom.

A decoder-only LM with L layers normally predicts from its last layer only: logits = head(norm(h_L)).
MoDE lets the last k layers (the final one included) predict together:

    y_i      = N_i(h_i)                   h_i: residual stream after decoder layer i (before the final norm)
                                          N_i: a trainable copy of the final norm (adapter="norm"), an identity-
                                               initialised affine map then the frozen norm ("affine"), or the
                                               frozen norm itself ("none"); the final layer keeps the model's norm
    logits_i = head(y_i)                  the model's own, frozen output path (pre-head projection, LM head,
                                          logit scaling or soft-capping): exactly what the final layer goes through
    g        = softmax(x W_g + b)         per-token router over the k layers; x = y_L, the final normalized state
                                          (router_confidence=True appends each late layer's entropy, max
                                          log-prob and top-1 agreement with the final layer, without gradient)
    logits   = sum_i g_i * logits_i       the ensemble; generation decodes from it
    loss     = CE(logits, labels) + lambda * sum_{i<L} D(p_L || p_i)     (see modetune.mode.losses)

Only the adapters N_i and the router (plus whatever a wrapped PEFT method trains) receive gradients.
When the head path is affine, sum_i g_i * head(y_i) = head(sum_i g_i * y_i), so the ensemble costs one
vocabulary projection, like the base model (soft-capped heads project every layer).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from modetune.architectures import verify_located
from modetune.errors import ConfigError, ModetuneError
from modetune.hub import CACHE_FIELD
from modetune.method_base import MethodModel, vocab_size_of
from modetune.mode.config import MoDEConfig
from modetune.mode.ensemble import (
    Router,
    capture_late_states,
    confidence_features,
    ensemble_logits,
    keep_positions,
    make_adapter,
    normalized_states,
)
from modetune.mode.losses import (
    LossParts,
    LossPlan,
    auto_chunk_size,
    liger_unavailable,
    mode_loss_chunked,
    mode_loss_liger,
    mode_loss_reference,
    pick_students,
    shift_labels,
    summarize_gates,
)

WEIGHTS_NAME = "mode_model.safetensors"


@dataclass(frozen=True)
class RouterAuxLoss:
    """A mixture-of-experts base model's auxiliary load-balancing loss, computed exactly as its own forward does.

    Every MoE `*ForCausalLM` in transformers adds `router_aux_loss_coef * load_balancing_loss_func(
    router_logits, num_experts, num_experts_per_tok, attention_mask)` to its loss when `output_router_logits`
    is on (config or call); MoDE adds the same term to its own loss, with the model's own function.
    """

    function: Any
    num_experts: int
    top_k: int
    coef: float

    @classmethod
    def of(cls, causal_lm: nn.Module) -> RouterAuxLoss | None:
        import sys

        function = getattr(sys.modules.get(type(causal_lm).__module__), "load_balancing_loss_func", None)
        text = causal_lm.config.get_text_config()

        def first(*values: Any) -> Any:
            return next((v for v in values if v is not None), None)

        num_experts = first(getattr(causal_lm, "num_experts", None), getattr(text, "num_local_experts", None),
                            getattr(text, "num_experts", None))  # fmt: skip
        top_k = first(getattr(causal_lm, "num_experts_per_tok", None), getattr(text, "num_experts_per_tok", None))
        coef = first(
            *(
                getattr(obj, name, None)
                for name in ("router_aux_loss_coef", "aux_loss_coef")
                for obj in (causal_lm, text)
            )
        )
        if function is None or None in (num_experts, top_k, coef):
            return None
        return cls(function, int(num_experts), int(top_k), float(coef))

    @staticmethod
    def enabled(causal_lm: nn.Module) -> bool:
        """The model's own default (config.output_router_logits), read at call time like its forward does."""
        return bool(getattr(causal_lm.config.get_text_config(), "output_router_logits", False))

    def loss(self, router_logits: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.function(router_logits, self.num_experts, self.top_k, attention_mask)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
@dataclass
class MoDEOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus every loss component and the routing weights, for logging.

    Per-layer tensors are ordered from the earliest late layer to the final one (`MoDEModel.layer_indices`).
    """

    ce_loss: torch.Tensor | None = None  # ensemble cross-entropy
    distill_loss: torch.Tensor | None = None  # [k-1] one term per non-final layer (unweighted)
    layer_ce: torch.Tensor | None = None  # [k] each layer's own cross-entropy (when computed this step)
    router_weights: torch.Tensor | None = None  # [batch, seq, k] (decoding: only the kept positions)
    router_mean: torch.Tensor | None = None  # [k] mean weight over (labelled, else attended) tokens
    router_entropy: torch.Tensor | None = None  # mean per-token routing entropy (nats)
    aux_loss: torch.Tensor | None = None  # a mixture-of-experts base model's load-balancing loss (unweighted)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class MoDEModel(MethodModel):
    """Wraps a `*ForCausalLM` (or a `PeftModel` of one) and predicts from its last k layers together."""

    config_class: ClassVar[type[MoDEConfig]] = MoDEConfig
    weights_name: ClassVar[str] = WEIGHTS_NAME
    counts_key: ClassVar[str] = "mode"

    def __init__(self, model: nn.Module, config: MoDEConfig | None = None, verify: bool = True):
        super().__init__(model, config or MoDEConfig())
        config = self.mode_config
        # prove the located head path before anything depends on it (one short forward; verify=False skips it)
        self.head_path_difference = verify_located(self.causal_lm, self._located) if verify else None
        num_model_layers = len(self._located.layers)
        config.validate(num_model_layers)
        k = config.num_layers
        self.layer_indices = list(range(num_model_layers - k, num_model_layers))
        hidden = self.causal_lm.config.get_text_config().hidden_size
        self.adapters = nn.ModuleList(
            make_adapter(config.adapter, self._located.final_norm, hidden) for _ in range(k - 1)
        )
        self.router = Router(hidden, config)
        self._freeze_base_unless_peft()
        self.adapters.to(self.device)
        self.router.to(self.device)
        if config.loss_implementation == "liger":
            self.loss_implementation(device=None)  # refuse now what cannot run on any device
        self._training_forwards = 0  # counts training forwards when no loop sets current_step

    @property
    def mode_config(self) -> MoDEConfig:
        return self.method_config  # type: ignore[return-value]

    def method_modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.adapters, "router": self.router}

    def router_parameters(self) -> list[nn.Parameter]:
        return list(self.router.parameters())

    # -- where things live ---------------------------------------------------------------------------
    def _locate(self) -> None:
        super()._locate()
        self._router_aux = RouterAuxLoss.of(self.causal_lm)
        backbone_parameters = inspect.signature(self._located.backbone.forward).parameters
        self._cache_argument = "cache" if "cache" in backbone_parameters else "past_key_values"
        self._resolved_loss: dict[tuple[str, str], str] = {}  # 'auto' / 'liger', resolved per device
        self._vocab_size = vocab_size_of(self._located)  # sizes the loss and routing chunks (not per forward)

    # -- capturing the late layers' hidden states ----------------------------------------------------
    def _capture_late_states(self) -> Any:
        """Hooks that record h_i of each non-final late layer and y_L (the final norm's output)."""
        loc = self._located
        final_source = loc.final_norm if loc.final_norm is not None else loc.layers[self.layer_indices[-1]]
        return capture_late_states(loc.layers, self.layer_indices, final_source)

    def _normalized_states(self, states: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """k tensors [batch, seq, d]: N_i(h_i) for the non-final late layers, then y_L."""
        return normalized_states(self.adapters, states, self._located.final_norm)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self._located.project(y.to(self.dtype))

    # -- the forward pass ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        skip_logits: bool | None = None,
        micro_batches: int = 1,
        **kwargs: Any,
    ) -> MoDEOutput:
        """Like a `*ForCausalLM.forward`, but logits and loss come from the late-layer ensemble.

        `skip_logits` (default: True when training with labels) skips the [batch, seq, vocab] ensemble
        logits; the loss never needs them. `micro_batches` (the shares the optimizer step adds up: micro-batches
        x processes) divides a mixture-of-experts base model's aux loss, a per-batch mean, so its weight does not
        grow with accumulation or ranks; the CE and distillation terms are already shares of the step through
        `num_items_in_batch`.
        """
        kwargs.pop("return_dict", None)
        # transformers >= 5.24 calls the KV cache `cache` (`past_key_values` is its deprecated alias)
        cache = kwargs.pop("cache", None) if past_key_values is None else past_key_values
        backbone_kwargs = {
            name: value
            for name, value in dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{self._cache_argument: cache},
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            ).items()
            if value is not None
        }
        aux = self._router_aux if labels is not None else None
        if aux is not None and not backbone_kwargs.setdefault("output_router_logits", aux.enabled(self.causal_lm)):
            aux = None
        with self._capture_late_states() as states:
            backbone_out = self._located.backbone(**backbone_kwargs)
        if labels is None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            # decoding: only the kept positions are normalized, routed and projected
            states = {slot: keep_positions(h, logits_to_keep) for slot, h in states.items()}
            logits_to_keep = 0
        ys = self._normalized_states(states)  # k x [B, T, d]
        gates = self.route(ys)  # [B, T, k]

        loss, parts = None, None
        aux_loss = None
        if labels is not None:
            parts = self._loss(ys, gates, labels, num_items_in_batch)
            loss = parts.total
            if aux is not None:  # exactly what the MoE base model adds to its own loss
                aux_loss = aux.loss(backbone_out.router_logits, attention_mask)
                loss = loss + aux.coef / micro_batches * aux_loss.to(loss.device)  # a per-batch mean (see MoD)
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        logits = None if skip_logits else self.ensemble_logits(ys, gates, logits_to_keep)

        router_mean = router_entropy = None
        if labels is not None:  # routing statistics for logging; decoding steps skip them
            router_mean, router_entropy = summarize_gates(gates, shift_labels(labels) != -100)
        return MoDEOutput(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: backbone_out.get(CACHE_FIELD)},  # the old name alone would warn
            hidden_states=getattr(backbone_out, "hidden_states", None),
            attentions=getattr(backbone_out, "attentions", None),
            ce_loss=parts.ce if parts else None,
            distill_loss=parts.distill if parts else None,
            layer_ce=parts.layer_ce if parts else None,
            router_weights=gates,
            router_mean=router_mean,
            router_entropy=router_entropy,
            aux_loss=aux_loss,
        )

    def route(self, ys: list[torch.Tensor]) -> torch.Tensor:
        """[B, T, k] routing weights from y_L (and, with router_confidence, the late layers' confidence)."""
        if not self.mode_config.router_confidence or len(ys) == 1:
            return self.router(ys[-1])
        chunk = auto_chunk_size(self._vocab_size, len(ys))
        return self.router(ys[-1], confidence_features(ys, self._project, chunk))

    def ensemble_logits(
        self, ys: list[torch.Tensor], gates: torch.Tensor, logits_to_keep: int | torch.Tensor = 0
    ) -> torch.Tensor:
        """sum_i g_i * head(y_i) at the kept positions; one projection when the head path is affine."""
        ys = [keep_positions(y, logits_to_keep) for y in ys]
        gates = keep_positions(gates, logits_to_keep)
        mix_hidden = self._located.head_is_affine() and self.mode_config.mix_in_hidden_space
        return ensemble_logits(ys, gates, self._project, mix_hidden, self.dtype)

    def _loss(
        self,
        ys: list[torch.Tensor],
        gates: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None,
    ) -> LossParts:
        cfg = self.mode_config
        step = self.current_step if self.current_step is not None else self._training_forwards
        if self.training and torch.is_grad_enabled():
            self._training_forwards += 1
        distill_now = cfg.uses_distillation and (not self.training or step % cfg.distill_every == 0)
        metrics_now = cfg.num_layers > 1 and (not self.training or step % cfg.layer_metrics_every == 0)
        per_layer = distill_now or metrics_now or not self._located.head_is_affine() or not cfg.mix_in_hidden_space
        plan = LossPlan(
            distill=cfg.distill if distill_now else "none",
            distill_weight=cfg.distill_weight if distill_now else 0.0,
            temperature=cfg.distill_temperature,
            detach_teacher=cfg.distill_detach_teacher,
            students=pick_students(cfg.num_layers, cfg.distill_schedule, step) if distill_now else (),
            per_layer=per_layer,
            layer_metrics=metrics_now,
        )
        labels = labels.to(gates.device)
        implementation = self.loss_implementation(gates.device)
        if implementation == "reference":
            return mode_loss_reference(ys, gates, labels, self._project, plan, num_items_in_batch)
        if implementation == "liger":
            head, _ = self._located.linear_head()
            return mode_loss_liger(ys, gates, labels, head, plan, num_items_in_batch)
        chunk = cfg.loss_chunk_size or auto_chunk_size(self._vocab_size, cfg.num_layers)
        head_params = tuple(p for p in self._located.head_path_parameters() if p.requires_grad)
        return mode_loss_chunked(ys, gates, labels, self._project, plan, chunk, num_items_in_batch, head_params)

    def training_logs(self, outputs: MoDEOutput, share_scale: float = 1.0) -> dict[str, float]:
        """The ensemble's CE, per late layer its distillation term, CE and mean router weight, and the router's
        entropy (the CE and distillation parts are shares of the step's mean: scaled back by `share_scale`)."""
        values: dict[str, float] = {}
        if outputs.ce_loss is not None:
            values["ce_ensemble"] = float(outputs.ce_loss) * share_scale
        for name, per_layer, scale in (
            ("distill", outputs.distill_loss, share_scale),
            ("ce", outputs.layer_ce, share_scale),
            ("router", outputs.router_mean, 1.0),
        ):
            if per_layer is not None:  # distillation covers the late layers but the final one: zip stops there
                values.update(
                    {
                        f"{name}/layer{i}": v * scale
                        for i, v in zip(self.layer_indices, per_layer.tolist(), strict=False)
                    }
                )
        if outputs.router_mean is not None:
            values["router_entropy"] = float(outputs.router_entropy)
        return values

    def loss_implementation(self, device: torch.device | None) -> str:
        """The loss implementation used on `device` (None: any device): the configured one, 'auto' resolved."""
        requested = self.mode_config.loss_implementation
        if requested in ("chunked", "reference"):
            return requested
        key = (requested, str(device))
        if key not in self._resolved_loss:
            unavailable = liger_unavailable(self._located, self.mode_config, device)
            if requested == "liger" and unavailable:
                raise ConfigError(f"loss_implementation='liger' cannot be used: {unavailable}")
            self._resolved_loss[key] = "chunked" if unavailable else "liger"
        return self._resolved_loss[key]

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`transformers` generation (any strategy, KV cache included) decoding from the ensemble logits."""
        causal_lm = self.causal_lm

        # `attention_mask` is named: generate() refuses it for models whose input preparation takes **kwargs
        # unless the forward's signature lists it
        def ensemble_forward(
            attention_mask: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0, **model_inputs: Any
        ) -> MoDEOutput:
            model_inputs.pop("labels", None)
            return self.forward(
                attention_mask=attention_mask, logits_to_keep=logits_to_keep, skip_logits=False, **model_inputs
            )

        causal_lm.forward = ensemble_forward  # the HF generation loop calls causal_lm(...) -> this
        try:
            return self.model.generate(*args, **kwargs)
        finally:
            del causal_lm.forward


def get_mode_model(
    model: nn.Module, config: MoDEConfig | None = None, *, verify: bool = True, **overrides: Any
) -> MoDEModel:
    """Wrap a `*ForCausalLM` or a `PeftModel` of one with MoDE (`overrides` are MoDEConfig fields).

    `verify` (default on) proves the located head path with one short forward before returning
    (`modetune.architectures.verify_located`); turn it off only when wrapping the same model many times.
    """
    if isinstance(model, MoDEModel):
        raise ModetuneError("this model is already a MoDEModel; wrap the base (or PEFT) model instead")
    if config is None:
        config = MoDEConfig(**overrides)
    elif overrides:
        config = MoDEConfig.from_dict({**config.to_dict(), **overrides})
    return MoDEModel(model, config, verify=verify)
