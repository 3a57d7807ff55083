"""`MoDConfig`: every choice MoDification leaves open, validated, with help text, round-tripping through JSON.

Field help lives in each field's `metadata["help"]`, so `modetune train --method mod` builds its flags from
this one place (as for `MoDEConfig`). Choices the papers leave open are options; the README says which
default was picked and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modetune.errors import ConfigError
from modetune.method_base import MethodConfig, check_choice, check_int, check_number, check_positive, help_field

CONFIG_NAME = "mod_config.json"

OPERATORS = ("threshold", "topk", "random")
ROUTER_INPUTS = ("normed", "hidden")
ROUTER_WEIGHTS = ("normalized", "sigmoid", "straight_through")
SKIPPED_KV = ("drop", "keep")
ROUTER_STARTS = ("constant", "influence")
SHARE_ALLOCATIONS = ("uniform", "global")
OBJECTIVES = ("lm", "distill")
ROUTED_MODULES = ("block", "attention", "mlp")


@dataclass
class MoDConfig(MethodConfig):
    """Configuration of a Mixture-of-Depths conversion (MoDification) of a pretrained causal LM."""

    config_name: ClassVar[str] = CONFIG_NAME
    method_name: ClassVar[str] = "MoD"

    operator: str = help_field(
        "How a routed layer picks the tokens it processes: 'threshold' (MoDification: a token is processed when its "
        "router score sigmoid(s) exceeds --threshold; causal, the count adapts per layer) or 'topk' (MoD: the "
        "--capacity fraction of each sequence with the highest scores; at decoding a new token is processed when its "
        "score reaches the lowest score selected in the prompt) or 'random' (a diagnostic: each token is processed "
        "with probability --capacity whatever its score, drawn from torch's random generator: do the routers beat "
        "chance?).",
        default="threshold",
    )
    threshold: float = help_field(
        "p for operator='threshold', in [0, 1): processed iff sigmoid(score) > p. Can be changed after training to "
        "trade quality for speed (p -> 0 processes every token).",
        default=0.5,
    )
    capacity: float = help_field(
        "For operator='topk', in (0, 1]: the fraction of each sequence's tokens a routed layer processes (for "
        "operator='random': the probability that a token is processed).",
        default=0.5,
    )
    sink_tokens: int = help_field(
        "Always process the first N positions of every sequence (>= 0): later tokens attend to them heavily "
        "(attention sinks), and a layer without their keys changes every token's attention.",
        default=1,
    )
    routed_layers: list[int] | None = help_field(
        "Explicit decoder-layer indices (0-based) that get a router; default: derived from --skip-first, "
        "--skip-last and --layer-stride.",
        default=None,
    )
    skip_first: int = help_field("Leave the first N decoder layers dense (no router).", default=2)
    skip_last: int = help_field("Leave the last N decoder layers dense (no router).", default=2)
    layer_stride: int = help_field(
        "Route every Nth layer of the remaining range (1 = all of them, 2 = every other one).", default=1
    )
    router_input: str = help_field(
        "What the linear router scores: 'normed' (the layer input divided by its RMS, no weights, so one learning "
        "rate suits every depth) or 'hidden' (the raw layer input).",
        default="normed",
    )
    router_weight: str = help_field(
        "How the router weight w multiplies the block's update (out = w * block(x) + (1 - w) * x, a two-expert "
        "mixture of the block and a no-op): 'straight_through' w = 1 in the forward pass with the gradient of "
        "w = sigmoid(s) / sigmoid(b0), so a processed token gets exactly the block's output and only skipping "
        "changes the model; 'normalized' w = sigmoid(s) / sigmoid(b0) (exactly 1 at initialisation; the load "
        "loss then also shrinks every processed token's update); 'sigmoid' w = sigmoid(s) (MoD's plain weighting, "
        "not equal to the base model at step 0).",
        default="straight_through",
    )
    router_init_bias: float = help_field(
        "b0: the router bias at initialisation (its weight starts at 0), so every token starts with score "
        "sigmoid(b0); must exceed logit(--threshold) for step 0 to process every token.",
        default=3.0,
    )
    router_start: str = help_field(
        "How the routers start: 'constant' (weight 0, bias --router-init-bias: every token processed, the converted "
        "model equals the base model at step 0) or 'influence' (before training, each router is fitted by ridge "
        "regression to log(1 - cos(x_in, x_out)), how much its layer changes each token, measured on the frozen "
        "model over training batches; with --target-skip the thresholds are then calibrated, so tokens are skipped "
        "from the first step).",
        default="constant",
    )
    objective: str = help_field(
        "What training minimises besides the load term: 'lm' (cross-entropy on the labels) or 'distill' "
        "(KL(base || converted) over every real token: the teacher is the same network with routing and adapters "
        "switched off, so the conversion learns to stay close to the model it came from, not to fit the data).",
        default="lm",
    )
    load_weight: float = help_field(
        "lambda_load: weight of the layer-load-reducing loss (>= 0) added to the LM loss.", default=1.0
    )
    load_target: float = help_field(
        "Target layer load in [0, 1]: the loss is mean over routed layers of max(0, mean sigmoid score - target), so "
        "routers are pushed toward skipping until their mean score reaches the target.",
        default=0.5,
    )
    router_lr_scale: float = help_field(
        "In `modetune train --method mod`: the routers' learning rate is this many times --learning-rate (> 0), "
        "so the scores can move within a short conversion while LoRA keeps its usual rate.",
        default=10.0,
    )
    target_skip: float | None = help_field(
        "After `modetune train`: calibrate one threshold per routed layer on held-out text (the validation split, "
        "else training batches) so that this share of the decoder layers' token computations is skipped, in (0, 1) "
        "(operator='threshold'); the share achieved is reported and written to run.json. None: --threshold for "
        "every layer.",
        default=None,
    )
    share_allocation: str = help_field(
        "How --target-skip's calibration shares the skipping among routed layers: 'uniform' (each layer skips the "
        "same share of tokens) or 'global' (one cut on the router scores of every layer, measured with every token "
        "processed: a layer whose tokens score low skips more; meaningful when scores are comparable across "
        "layers, as --router-start influence makes them).",
        default="uniform",
    )
    layer_thresholds: list[float] | None = help_field(
        "p per routed layer, in order (operator='threshold'); --target-skip's calibration sets it. None: "
        "--threshold for every layer.",
        default=None,
    )
    routed_module: str = help_field(
        "What a routed layer lets tokens skip: 'block' (the whole decoder layer: its attention, MLP and, with "
        "--skipped-kv drop, its key/value), 'attention' (only the attention: a skipped token gets no attention "
        "update and stores no key/value there; the MLP runs on every token) or 'mlp' (only the MLP: every token "
        "keeps its key/value, so no context is lost and no KV memory saved).",
        default="block",
    )
    skipped_kv: str = help_field(
        "'drop': a skipped token costs nothing in the routed block and stores no key/value at that layer (the MoD "
        "saving); 'keep': the routed block runs on every token (so skipped tokens keep their KV entry) and only "
        "the processed tokens take its output; no saving, a quality reference.",
        default="drop",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, num_model_layers: int | None = None) -> None:
        """Reject bad values with a message naming the field and the allowed values."""
        check_choice(self, "operator", OPERATORS)
        check_choice(self, "router_input", ROUTER_INPUTS)
        check_choice(self, "router_weight", ROUTER_WEIGHTS)
        check_choice(self, "skipped_kv", SKIPPED_KV)
        check_choice(self, "router_start", ROUTER_STARTS)
        check_choice(self, "share_allocation", SHARE_ALLOCATIONS)
        check_choice(self, "objective", OBJECTIVES)
        check_choice(self, "routed_module", ROUTED_MODULES)
        for name in ("threshold", "capacity", "router_init_bias", "load_weight", "load_target"):
            check_number(self, name)
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold={self.threshold!r} is out of range; allowed: 0 <= p < 1")
        if not 0.0 < self.capacity <= 1.0:
            raise ConfigError(f"capacity={self.capacity!r} is out of range; allowed: 0 < capacity <= 1")
        check_positive(self, "router_lr_scale")
        if self.load_weight < 0:
            raise ConfigError(f"load_weight={self.load_weight!r} is negative; allowed: a number >= 0")
        if not 0.0 <= self.load_target <= 1.0:
            raise ConfigError(f"load_target={self.load_target!r} is out of range; allowed: 0 <= target <= 1")
        if self.target_skip is not None:
            check_number(self, "target_skip")
            if not 0.0 < self.target_skip < 1.0:
                raise ConfigError(f"target_skip={self.target_skip!r} is out of range; allowed: 0 < share < 1")
            if self.operator != "threshold":
                raise ConfigError(
                    f"target_skip calibrates thresholds; it needs operator='threshold', not {self.operator!r}"
                )
        if self.layer_thresholds is not None and (
            not isinstance(self.layer_thresholds, list)
            or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0
                for p in self.layer_thresholds
            )
        ):
            raise ConfigError(f"layer_thresholds={self.layer_thresholds!r} must be a list of numbers in [0, 1)")
        check_int(self, "sink_tokens", low=0)
        check_int(self, "skip_first", low=0)
        check_int(self, "skip_last", low=0)
        check_int(self, "layer_stride", low=1)
        if self.routed_layers is not None:
            if not isinstance(self.routed_layers, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.routed_layers
            ):
                raise ConfigError(f"routed_layers={self.routed_layers!r} must be a list of layer indices >= 0")
            if len(set(self.routed_layers)) != len(self.routed_layers):
                raise ConfigError(f"routed_layers={self.routed_layers!r} lists a layer twice")
        if num_model_layers is not None:
            layers = self.layer_indices(num_model_layers)
            if not layers:
                raise ConfigError(
                    f"no layer gets a router: the model has {num_model_layers} decoder layers and skip_first="
                    f"{self.skip_first}, skip_last={self.skip_last}; lower them or pass routed_layers"
                )
            if self.layer_thresholds is not None and len(self.layer_thresholds) != len(layers):
                raise ConfigError(
                    f"layer_thresholds has {len(self.layer_thresholds)} values for {len(layers)} routed layers"
                )
            if self.target_skip is not None and self.target_skip * num_model_layers >= len(layers):
                raise ConfigError(
                    f"target_skip={self.target_skip} cannot be reached: skipping every token of the {len(layers)} "
                    f"routed layers skips {len(layers) / num_model_layers:.2f} of the {num_model_layers} layers' work"
                )
            if max(layers) >= num_model_layers:
                raise ConfigError(
                    f"routed_layers={self.routed_layers} names a layer the model does not have; allowed: "
                    f"0..{num_model_layers - 1}"
                )

    def layer_indices(self, num_model_layers: int) -> list[int]:
        """The decoder layers that get a router, in order."""
        if self.routed_layers is not None:
            return sorted(self.routed_layers)
        return list(range(self.skip_first, num_model_layers - self.skip_last, self.layer_stride))
