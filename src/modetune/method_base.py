"""What every depth method that wraps a causal LM shares, so `mode` and `mod` are sibling packages.

PEFT's split, for our methods:

* `MethodConfig`: a validated dataclass that round-trips through JSON and is saved beside the weights
  together with the base model's fingerprint (`mode_config.json`, `mod_config.json`);
* `MethodModel`: wraps a `*ForCausalLM` (or a `PeftModel` of one), knows where its pieces live
  (`modetune.architectures`), and saves/loads the method's own weights (safetensors) plus the PEFT adapter,
  refusing a run trained on another base model.

Each method's own `model.py` then holds only what the method does (MoDE's late-layer ensemble, MoD's token
routing), and its package registers it once (`register_method(MethodSpec(...))`, as PEFT's
`register_peft_method`): training, the CLI, run loading and the model card look methods up here, so a new
method is a new package plus one registration. Mixture-of-Modules is a model of its own (`MoMForCausalLM`,
a `PreTrainedModel` pre-trained by `modetune pretrain`), so it uses the transformers conventions directly.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from modetune.architectures import LocatedModel, locate
from modetune.errors import CheckpointError, ConfigError, ModetuneError
from modetune.files import atomic_write_text
from modetune.version import __version__

PEFT_CONFIG_NAME = "adapter_config.json"

try:  # PEFT is a dependency, but keep the core importable without it
    from peft import PeftModel
except ImportError:  # pragma: no cover
    PeftModel = None  # type: ignore[assignment,misc]

C = TypeVar("C", bound="MethodConfig")
M = TypeVar("M", bound="MethodModel")


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def help_field(text: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text (the CLI and README options are generated from it)."""
    return field(metadata={"help": text}, **kw)


def check_choice(cfg: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def check_int(cfg: Any, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    if value < low:
        raise ConfigError(f"{name}={value!r} is too small; allowed: an integer >= {low}")


def check_number(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN check
        raise ConfigError(f"{name}={value!r} must be a finite number")


def check_positive(cfg: Any, name: str) -> None:
    check_number(cfg, name)
    value = getattr(cfg, name)
    if value <= 0:
        raise ConfigError(f"{name}={value!r} must be positive; allowed: a number > 0")


def check_bool(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")


def save_config_json(path: Path, fields_: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a method config (plus `_extra`) atomically: a killed process leaves the old file or the new one."""
    payload = {**fields_, **({"_extra": extra} if extra else {})}
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class MethodConfig:
    """JSON round-trip for a method's `@dataclass` config; subclasses set `config_name` and `method_name`."""

    config_name: ClassVar[str]
    method_name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.method_name} config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.method_name} config field(s) {unknown}; allowed fields: {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_string(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.method_name} config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save_pretrained(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write the config file atomically; `extra` (e.g. the base-model fingerprint) is stored beside the fields."""
        return save_config_json(Path(directory) / self.config_name, self.to_dict(), extra)

    def validate(self, num_model_layers: int | None = None) -> None:
        """Refuse values the method cannot use; with `num_model_layers`, also those the model's depth rules out
        (training calls this before it reads the model's weights)."""

    def card_rows(self) -> list[tuple[str, Any]]:
        """(setting, value) rows for the model card's settings table; by default every field."""
        return list(self.to_dict().items())


def load_config(directory: Path, config_cls: type[C]) -> tuple[C, dict[str, Any]]:
    """Read a saved method config: the config and the stored extras (base fingerprint, versions)."""
    what, name = config_cls.method_name, config_cls.config_name
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory with a saved {what} model")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} does not hold a saved {what} model")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the file is corrupt")
    extra = data.pop("_extra", {}) or {}
    try:
        return config_cls.from_dict(data), extra
    except ConfigError as exc:
        saved = str(extra.get("modetune_version", "")) if isinstance(extra, dict) else ""
        if saved and _is_newer_version(saved):
            raise CheckpointError(
                f"{path} was written by modetune {saved}, newer than this modetune {__version__}, with settings "
                f"this version cannot read ({exc}); upgrade: pip install -U modetune"
            ) from None
        raise CheckpointError(f"{path}: {exc}") from None


def _is_newer_version(saved: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(saved) > Version(__version__)
    except InvalidVersion:
        return False


# --------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------
class MethodModel(nn.Module):
    """A `*ForCausalLM` (or a `PeftModel` of one) with a depth method's own small modules around it.

    Subclasses set `config_class`, `weights_name` and `counts_key`, build their modules in `__init__` after
    calling `super().__init__(model, config)`, and list them in `method_modules()`; saving, loading, the
    base-model fingerprint, parameter counts and the PEFT conveniences are shared.
    """

    config_class: ClassVar[type[MethodConfig]]
    weights_name: ClassVar[str]  # the method's own weights, e.g. "mode_model.safetensors"
    counts_key: ClassVar[str]  # its key in trainable_parameter_counts(), e.g. "mode"
    accepts_loss_kwargs = True  # transformers.Trainer passes num_items_in_batch (correct grad accumulation)

    def __init__(self, model: nn.Module, config: MethodConfig) -> None:
        super().__init__()
        name = self.config_class.method_name
        if not isinstance(config, self.config_class):
            raise ConfigError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        if not isinstance(model, nn.Module) or not isinstance(
            getattr(_unwrap(model), "config", None), PretrainedConfig
        ):
            raise ModetuneError(
                f"{name} needs a transformers *ForCausalLM (or a PeftModel of one), got {type(model).__name__}; "
                "load one with AutoModelForCausalLM.from_pretrained(...)"
            )
        _reject_prompt_learning(model, name)
        self.model = model
        self.method_config = config
        self._locate()
        self.current_step: int | None = None  # set by the training loop
        self.layer_indices: list[int] = []  # the decoder layers the method acts on (run.json, logged names)

    # -- where things live ---------------------------------------------------------------------------
    def _locate(self) -> None:
        """Find layers, final norm and head (again after the base model changed, e.g. a LoRA merge)."""
        self._located: LocatedModel = locate(self.causal_lm)

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The innermost `*ForCausalLM` (under any PEFT wrapper)."""
        return _unwrap(self.model)

    @property
    def config(self):  # the base model's config, as HF-style callers expect
        return self.causal_lm.config

    @property
    def generation_config(self):
        return self.causal_lm.generation_config

    @property
    def device(self) -> torch.device:
        return self._located.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._located.head.weight.dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.causal_lm.get_input_embeddings()

    def fingerprint(self) -> dict[str, Any]:
        """What a saved run must match to be loaded onto a base model."""
        return fingerprint_of(self.causal_lm)

    def _freeze_base_unless_peft(self) -> None:
        """Method-only tuning trains the method's modules alone: the base model is frozen."""
        if not _is_peft(self.model):
            for p in self.model.parameters():
                p.requires_grad_(False)

    # -- the method's own modules ---------------------------------------------------------------------
    def method_modules(self) -> dict[str, nn.Module]:
        """Name -> module of everything the method adds (saved in `weights_name`)."""
        raise NotImplementedError

    def router_parameters(self) -> list[nn.Parameter]:
        """The routers' parameters: the Trainer gives them their own optimizer group at `router_lr_scale` x the
        learning rate (a method without routers has none)."""
        return []

    @property
    def router_lr_scale(self) -> float:
        return float(getattr(self.method_config, "router_lr_scale", 1.0))

    def training_logs(self, outputs: Any, share_scale: float = 1.0) -> dict[str, float]:
        """What the method logs for one training micro-batch beside the loss (metrics.jsonl, averaged over the
        logging window). Loss parts computed as this micro-batch's share of the step's mean are multiplied by
        `share_scale`, so each logged value estimates the step's mean (see `MethodTrainer.compute_loss`)."""
        return {}

    def loss_implementation(self, device: torch.device | None) -> str | None:
        """The loss implementation the method resolves for `device` (recorded in run.json); None: it has one."""
        return None

    @property
    def state_prefixes(self) -> tuple[str, ...]:
        """Key prefixes of the method's weights in this module's `state_dict()` (what a gathered FSDP/ZeRO-3
        state dict holds for them)."""
        return tuple(f"{name}." for name in self.method_modules())

    def method_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the method's own weights, on the CPU."""
        return {
            f"{name}.{k}": v.detach().contiguous().cpu()
            for name, module in self.method_modules().items()
            for k, v in module.state_dict().items()
        }

    def load_method_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        expected = self.method_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{source} does not match this {self.config_class.method_name} configuration: missing {missing}, "
                f"unexpected {unexpected}, wrong shape {wrong}"
            )
        for name, module in self.method_modules().items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def load_method_weights(self, directory: str | os.PathLike[str]) -> None:
        """Load the method's weights from a saved model or checkpoint directory into this model."""
        path = Path(directory) / self.weights_name
        self.load_method_state_dict(_read_weights(path, self.config_class.method_name), source=str(path))

    # -- saving and loading ------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        method_state: dict[str, torch.Tensor] | None = None,
        **peft_kwargs: Any,
    ) -> None:
        """Write the method's weights (safetensors) + config + base fingerprint, and the PEFT adapter if wrapped.

        `method_state` replaces `method_state_dict()` when the caller holds gathered weights (FSDP, ZeRO-3).
        Every file is written under a temporary name and renamed into place, so a killed process leaves
        either the old file or the new one, never half of one.
        """
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        if _is_peft(self.model):
            # modetune never resizes the vocabulary: without this, PEFT asks the Hub whether it did
            peft_kwargs.setdefault("save_embedding_layers", "auto" if _targets_embeddings(self.model) else False)
            self.model.save_pretrained(str(directory), **peft_kwargs)
        state = self.method_state_dict() if method_state is None else method_state
        tmp = directory / f".{self.weights_name}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "modetune_version": __version__})
        os.replace(tmp, directory / self.weights_name)
        extra = {"base_model": self.fingerprint(), "peft": _is_peft(self.model), "modetune_version": __version__}
        self.method_config.save_pretrained(directory, extra=extra)

    @classmethod
    def from_pretrained(
        cls: type[M], base_model: nn.Module, path: str | os.PathLike[str], is_trainable: bool = False, **kwargs: Any
    ) -> M:
        """Restore a saved run (and its PEFT adapter, if one was saved) onto `base_model`."""
        directory = Path(path)
        config, extra = load_config(directory, cls.config_class)
        _check_fingerprint(extra.get("base_model"), fingerprint_of(_unwrap(base_model)), directory, cls.config_class)
        model = base_model
        if extra.get("peft") or (directory / PEFT_CONFIG_NAME).exists():
            if not (directory / PEFT_CONFIG_NAME).exists():
                raise CheckpointError(f"{directory} was saved with a PEFT adapter but {PEFT_CONFIG_NAME} is missing")
            if not _is_peft(base_model):
                model = _load_peft(base_model, directory, is_trainable)
        wrapped = cls(model, config, **kwargs)
        wrapped.load_method_weights(directory)
        if not is_trainable:
            wrapped.eval()
            for module in wrapped.method_modules().values():
                for p in module.parameters():
                    p.requires_grad_(False)
        return wrapped

    def begin_training(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Called by `modetune train` before the first step (and again on resume, before the checkpoint is loaded),
        with training batches in their seeded order; what it returns goes into run.json. Default: nothing."""
        return {}

    def finish_training(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Called by `modetune train` after the last step, before the final model is saved, with held-out batches
        (the validation split, else training batches); what it returns goes into run.json. Default: nothing."""
        return {}

    def export_settings(self) -> dict[str, Any]:
        """The settings the exported model (`modetune export`, `MethodSpec.export_class`) is built from."""
        return self.method_config.to_dict()

    # -- PEFT conveniences ---------------------------------------------------------------------------
    @property
    def is_peft(self) -> bool:
        """True when the base model is wrapped by a PEFT adapter (not yet merged)."""
        return _is_peft(self.model)

    def merge_and_unload(self: M) -> M:
        """Merge a wrapped LoRA-style adapter into the base weights; the method's modules stay as they are."""
        if _is_peft(self.model):
            self.model = self.model.merge_and_unload()
            self._locate()
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options: Any) -> None:
        # `options`: what transformers' Trainer also passes (every_n_layers, offload), handed on when set
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        extra = {k: v for k, v in options.items() if v is not None}
        enable = getattr(self.causal_lm, "activation_checkpointing_enable", None)  # its name from transformers 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs, **extra)
        else:
            self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **extra)
        if _is_peft(self.model) or any(p.requires_grad for p in self.model.parameters()):
            self.causal_lm.enable_input_require_grads()

    def trainable_parameter_counts(self) -> dict[str, int]:
        own = sum(p.numel() for m in self.method_modules().values() for p in m.parameters() if p.requires_grad)
        peft = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {self.counts_key: own, "peft": peft, "trainable": own + peft, "all": total}

    def print_trainable_parameters(self) -> None:
        c = self.trainable_parameter_counts()
        print(
            f"trainable params: {c['trainable']:,} ({self.config_class.method_name} {c[self.counts_key]:,} + "
            f"PEFT {c['peft']:,}) || all params: {c['all']:,} || trainable%: {100 * c['trainable'] / c['all']:.4f}"
        )


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """One depth method, as training, the CLI, run loading and the model card need it.

    `name` is the `--method` value and run.json's `<name>_config` key; `wrap(model, config)` builds the
    `MethodModel` (default: `model_class(model, config)`); `presets` are named starting configurations for
    `--preset` (e.g. MoDE's 'paper'); `summary` is one sentence for the CLI help and the model card;
    `order` places the method in listings (help, error messages): lower first, then by registration.
    `export_class` is the model class `modetune export` writes (a `modetune.hub.WrapperForCausalLM` whose
    module, with the modetune modules it imports, becomes the export's modeling file); None: no export.
    """

    name: str
    config_class: type[MethodConfig]
    model_class: type[MethodModel]
    title: str
    summary: str
    tags: tuple[str, ...] = ()
    citation: str = ""
    wrap: Callable[[nn.Module, Any], MethodModel] | None = None
    presets: dict[str, Callable[..., MethodConfig]] = field(default_factory=dict)
    order: int = 100
    export_class: type | None = None

    def build(self, model: nn.Module, config: MethodConfig) -> MethodModel:
        return self.wrap(model, config) if self.wrap is not None else self.model_class(model, config)


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make a method available to `modetune train --method NAME`, `load_run` and the model card.

    Registering the same spec again is a no-op; another spec under a taken name or config file is refused.
    """
    for other in _METHODS.values():
        if other == spec:
            return spec
        if other.name == spec.name or other.config_class.config_name == spec.config_class.config_name:
            raise ConfigError(
                f"method {spec.name!r} ({spec.config_class.config_name}) clashes with the registered method "
                f"{other.name!r} ({other.config_class.config_name}); choose another name and config file"
            )
    _METHODS[spec.name] = spec
    return spec


def registered_methods() -> tuple[str, ...]:
    """The names of the registered methods, by their `order`, then in registration order."""
    return tuple(sorted(_METHODS, key=lambda name: _METHODS[name].order))


def get_method(name: str) -> MethodSpec:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"method={name!r} is not supported; allowed: {', '.join(registered_methods())}") from None


def saved_method(directory: str | os.PathLike[str]) -> MethodSpec | None:
    """The method whose saved model is in `directory` (found by its config file); None if none is."""
    for spec in map(get_method, registered_methods()):
        if (Path(directory) / spec.config_class.config_name).is_file():
            return spec
    return None


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def fingerprint_of(causal_lm: PreTrainedModel) -> dict[str, Any]:
    """Architecture, depth, width and vocabulary of a base model: enough to refuse a mismatched base.

    The vocabulary is the head's full row count: under DeepSpeed ZeRO-3 a rank's head weight is an empty
    partition that keeps its whole shape in `ds_shape` (reading 0 there made a saved run refuse its own base).
    """
    located = locate(causal_lm)
    return {
        "architecture": type(causal_lm).__name__,
        "model_type": causal_lm.config.model_type,
        "num_hidden_layers": len(located.layers),
        "hidden_size": causal_lm.config.get_text_config().hidden_size,
        "vocab_size": vocab_size_of(located),
    }


def vocab_size_of(located: LocatedModel) -> int:
    """The head's full row count, also under DeepSpeed ZeRO-3 (a rank's partition keeps it in `ds_shape`)."""
    head = located.head.weight
    return int(getattr(head, "ds_shape", head.shape)[0])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if _is_peft(model) else model


def _is_peft(model: nn.Module) -> bool:
    return PeftModel is not None and isinstance(model, PeftModel)


def _targets_embeddings(model: nn.Module) -> bool:
    from peft.utils.other import EMBEDDING_LAYER_NAMES

    targets = getattr(model.active_peft_config, "target_modules", None) or ()
    targets = [targets] if isinstance(targets, str) else list(targets)
    return any(name in targets for name in EMBEDDING_LAYER_NAMES)


def _reject_prompt_learning(model: nn.Module, method: str = "MoDE") -> None:
    if _is_peft(model) and model.active_peft_config.is_prompt_learning:
        raise ModetuneError(
            f"PEFT method {model.active_peft_config.peft_type} adds virtual tokens outside the decoder layers and "
            f"is not supported by {method}; use a method that adapts modules (LoRA, DoRA, IA3, LoHa, LoKr, ...)"
        )


def _read_weights(path: Path, what: str = "MoDE") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the {what} weights were not saved or were deleted")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read ({exc})") from None


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; that
    FutureWarning is about PEFT's call, not the user's, so a modetune console does not show it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _load_peft(base_model: nn.Module, directory: Path, is_trainable: bool) -> nn.Module:
    try:
        with quiet_peft():
            return PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
    except Exception as exc:
        raise CheckpointError(f"the PEFT adapter in {directory} cannot be loaded: {exc}") from None


def _check_fingerprint(
    saved: dict[str, Any] | None, actual: dict[str, Any], directory: Path, config_cls: type[MethodConfig]
) -> None:
    if not saved:
        raise CheckpointError(
            f"{directory / config_cls.config_name} has no base-model fingerprint; it was not saved by modetune"
        )
    diffs = [
        f"{key}: saved {saved.get(key)!r}, given {actual[key]!r}" for key in actual if saved.get(key) != actual[key]
    ]
    if diffs:
        raise CheckpointError(
            f"the {config_cls.method_name} model in {directory} was trained on a different base model "
            f"({'; '.join(diffs)}). Load it onto the base model it was trained with."
        )
