"""`MoDEConfig`: every choice MoDE leaves open, validated, with help text, round-tripping through JSON.

Field help lives in each field's `metadata["help"]`, so the CLI builds its options from this one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from modetune.errors import ConfigError
from modetune.method_base import (
    MethodConfig,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive,
    help_field,
)

CONFIG_NAME = "mode_config.json"

ROUTERS = ("softmax", "topk")
ROUTER_INITS = ("uniform", "final")
ADAPTERS = ("norm", "affine", "none")
DISTILLS = ("kl", "reverse_kl", "js", "labels", "none")
DISTILL_SCHEDULES = ("all", "rotate")
LOSS_IMPLEMENTATIONS = ("auto", "chunked", "liger", "reference")

# MoDEConfig.paper(): the paper's stated choices plus our stated fill-ins (experiments/PAPER.md has the table)
PAPER_PRESET: dict[str, Any] = {
    "num_layers": 3,
    "router": "softmax",
    "router_bias": False,
    "router_init": "uniform",
    "adapter": "norm",
    "distill": "kl",
    "distill_weight": 1.0,
    "distill_temperature": 1.0,
    "distill_detach_teacher": True,
}


@dataclass
class MoDEConfig(MethodConfig):
    """Configuration of a Mixture-of-Depths Ensemble over the last `num_layers` decoder layers."""

    config_name: ClassVar[str] = CONFIG_NAME
    method_name: ClassVar[str] = "MoDE"

    num_layers: int = help_field(
        "k: how many of the last decoder layers form the ensemble, the final layer included "
        "(1 = the base model alone; the paper uses 3).",
        default=3,
    )
    router: str = help_field(
        "How per-token weights over the k layers are formed: 'softmax' (dense) or 'topk' "
        "(keep the top_k weights, renormalize).",
        default="softmax",
    )
    top_k: int = help_field("With router='topk': how many layers each token keeps (1..num_layers).", default=2)
    router_init: str = help_field(
        "'final': W_g = 0 and a bias that gives the final layer `router_final_weight` of the mass, so tuning "
        "starts from the base model's behaviour; 'uniform': W_g = 0, b = 0 (equal weights). "
        "Default chosen by measurement (see README, 'Choosing the defaults').",
        default="final",
    )
    router_bias: bool = help_field(
        "Give the router a bias b (g = softmax(x W_g + b)). --no-router-bias is the paper's form, "
        "g = softmax(x W_g); it needs router_init='uniform' (the 'final' init lives in the bias).",
        default=True,
    )
    router_confidence: bool = help_field(
        "Let the router also read how sure each late layer is: x = [y_L; per late layer its prediction's entropy "
        "and max log-probability; per non-final layer whether its top-1 token is the final layer's], computed "
        "without gradient (k extra vocabulary projections per forward). Off: x = y_L, the paper's router. The "
        "variant issue 11's analysis suggested (experiments/RESULTS.md, 'Why MoDE does not help here').",
        default=False,
    )
    router_lr_scale: float = help_field(
        "The router's learning rate is this many times --learning-rate (> 0; the schedule scales both alike). "
        "1 = one rate for everything, as the paper trains. Issue 11 measured why more can matter: at 100 steps of "
        "lr 1e-3 the router's W_g moves by under 0.02 (experiments/RESULTS.md).",
        default=1.0,
    )
    router_final_weight: float = help_field(
        "With router_init='final': the initial routing weight of the final layer, in (0, 1); the rest is "
        "split evenly over the other late layers.",
        default=0.9,
    )
    adapter: str = help_field(
        "Per-layer adaptation N_i of each non-final late layer: 'norm' (a trainable copy of the final norm), "
        "'affine' (a d x d linear map initialised to identity, then the frozen final norm) or 'none' "
        "(the frozen final norm, shared).",
        default="norm",
    )
    distill: str = help_field(
        "Distillation from the final layer (teacher) to each other late layer (student): 'kl' = "
        "KL(p_final || p_i), 'reverse_kl' = KL(p_i || p_final), 'js' (Jensen-Shannon), or 'none'. 'labels' "
        "replaces the teacher by the labels: each non-final late layer's own cross-entropy (deep supervision, "
        "as LayerSkip's early-exit loss), weighted by distill_weight; the variant issue 31's analysis chose.",
        default="kl",
    )
    distill_weight: float = help_field(
        "lambda: weight of the summed distillation terms in the loss (>= 0). 0.1 by measurement (short LoRA + "
        "MoDE runs on SmolLM2-135M: 1.0 cost accuracy, 0 left the late layers untrained; benchmarks/RESULTS.md).",
        default=0.1,
    )
    distill_temperature: float = help_field(
        "Softmax temperature T of the distillation (> 0); terms are multiplied by T^2 so gradient scale "
        "does not depend on T.",
        default=1.0,
    )
    distill_detach_teacher: bool = help_field(
        "Stop gradients through the teacher (final layer) in the distillation terms.", default=True
    )
    distill_every: int = help_field(
        "Compute the distillation terms (and per-layer metrics) every N training steps only (>= 1); the other "
        "steps cost a single vocabulary projection. 1 = every step.",
        default=1,
    )
    distill_schedule: str = help_field(
        "'all': every non-final late layer is distilled each distillation step; 'rotate': one late layer per "
        "step, in turn (as LayerSkip's training does), cheaper for large k.",
        default="all",
    )
    layer_metrics_every: int = help_field(
        "In training, compute each late layer's own cross-entropy every N steps (>= 1) when the "
        "distillation pass does not already produce it (it needs one vocabulary projection per layer).",
        default=10,
    )
    loss_implementation: str = help_field(
        "How the training losses are computed (all give the same numbers): 'chunked' = chunk by chunk over the "
        "labelled tokens, so at most one chunk of [chunk x vocab] logits per layer is alive at a time; 'liger' = "
        "Liger-Kernel's fused linear cross-entropy and JSD (pip install 'modetune[liger]'; CUDA, an affine "
        "plain-Linear head and a detached teacher); 'auto' = 'liger' when all of that holds, else 'chunked'; "
        "'reference' = materialise all logits at once (the straightforward computation the others are tested "
        "against).",
        default="auto",
    )
    loss_chunk_size: int = help_field(
        "Tokens per chunk with loss_implementation='chunked'; 0 = automatic (about 2^23 logits per chunk over "
        "all k layers, e.g. 32 tokens for k=3 and a 49k vocabulary).",
        default=0,
    )
    mix_in_hidden_space: bool = help_field(
        "When the output head is affine (every supported model but soft-capped ones), mix the normalized "
        "hidden states and project once, instead of projecting every layer and mixing logits (same result, "
        "k times cheaper). Soft-capped heads always mix logits.",
        default=True,
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, num_model_layers: int | None = None) -> None:
        """Reject bad values with a message naming the field and the allowed values."""
        check_int(self, "num_layers", low=1)
        if num_model_layers is not None and self.num_layers > num_model_layers:
            raise ConfigError(
                f"num_layers={self.num_layers} is larger than the model's {num_model_layers} decoder layers; "
                f"allowed: 1..{num_model_layers}"
            )
        check_choice(self, "router", ROUTERS)
        check_choice(self, "router_init", ROUTER_INITS)
        check_choice(self, "adapter", ADAPTERS)
        check_choice(self, "distill", DISTILLS)
        check_choice(self, "distill_schedule", DISTILL_SCHEDULES)
        check_int(self, "top_k", low=1)
        if self.router == "topk" and self.top_k > self.num_layers:
            raise ConfigError(
                f"top_k={self.top_k} is larger than num_layers={self.num_layers}; allowed: 1..{self.num_layers}"
            )
        check_bool(self, "router_bias")
        check_bool(self, "router_confidence")
        if not self.router_bias and self.router_init == "final" and self.num_layers > 1:
            raise ConfigError(
                "router_bias=False cannot start from router_init='final' (that initial weighting is a bias); "
                "allowed: router_init='uniform' with router_bias=False, or router_bias=True"
            )
        check_positive(self, "router_lr_scale")
        check_number(self, "router_final_weight")
        if not 0.0 < self.router_final_weight < 1.0:
            raise ConfigError(
                f"router_final_weight={self.router_final_weight!r} is out of range; allowed: 0 < value < 1"
            )
        check_number(self, "distill_weight")
        if self.distill_weight < 0:
            raise ConfigError(f"distill_weight={self.distill_weight!r} is negative; allowed: a number >= 0")
        check_positive(self, "distill_temperature")
        if self.distill == "labels" and self.distill_temperature != 1.0:
            raise ConfigError(
                f"distill_temperature={self.distill_temperature!r} has no meaning with distill='labels' (the "
                "students learn from the labels, not a softened teacher); allowed: 1.0, or a divergence as distill"
            )
        check_bool(self, "distill_detach_teacher")
        check_bool(self, "mix_in_hidden_space")
        check_int(self, "distill_every", low=1)
        check_int(self, "layer_metrics_every", low=1)
        check_choice(self, "loss_implementation", LOSS_IMPLEMENTATIONS)
        check_int(self, "loss_chunk_size", low=0)

    @classmethod
    def paper(cls, **overrides: Any) -> MoDEConfig:
        """The configuration of the MoDE paper (arXiv 2410.13077 v1) as far as it states one.

        k = 3 late layers, a dense softmax router without bias (g = softmax(x W_g)), a trainable copy of the
        final norm per late layer, KL distillation from the final layer. What the paper leaves unstated is
        filled in and listed in experiments/PAPER.md: router start (uniform: W_g = 0), KL direction
        (teacher = final layer, detached), lambda = 1 (plain sum of the two losses), T = 1.
        """
        values: dict[str, Any] = dict(PAPER_PRESET)
        values.update(overrides)
        return cls(**values)

    def card_rows(self) -> list[tuple[str, Any]]:
        """The model card's MoDE settings: k, router, adapter, distillation."""
        router = self.router + (f", top_k={self.top_k}" if self.router == "topk" else "")
        return [
            ("k (num_layers)", self.num_layers),
            ("router", router),
            ("router init", f"{self.router_init} (final weight {self.router_final_weight})"),
            ("per-layer adapter", self.adapter),
            ("distillation", f"{self.distill}, λ = {self.distill_weight}, T = {self.distill_temperature}"),
        ]

    @property
    def uses_distillation(self) -> bool:
        return self.distill != "none" and self.distill_weight > 0 and self.num_layers > 1

    @property
    def uses_teacher(self) -> bool:
        """Distillation toward the final layer (every kind but 'labels', which supervises on the labels)."""
        return self.uses_distillation and self.distill != "labels"
