"""Where a causal LM keeps its decoder layers, final norm, output head and logit transform, proven.

MoDE must send every late layer through exactly the path the final layer takes to the logits. That path
differs between families (a projection after the norm in some OPT sizes, soft-capping in Gemma-2, a logit
scale in Cohere and Granite). Two sources, one proof:

* the explicit table `ARCHITECTURES`, one entry per family whose path is known by reading its code;
* discovery, for every other `*ForCausalLM`: the decoder stack (`get_decoder()` / `base_model`), its
  `nn.ModuleList` of `num_hidden_layers` layers, the output head (`get_output_embeddings()`), the final norm
  and any projection before the head found by tracing one short forward (the module that maps the last
  layer's output to the head's input), and the logit transform from the config names transformers uses
  (`final_logit_softcapping`, `logit_scale`, `logits_scaling`, `output_multiplier`).

Whatever the source, `verify_located` proves the path on a short dummy input: the model's own logits must
equal head(final_norm(h_L)) through the located pieces. Anything not found, and any mismatch, is a loud
error naming what failed; nothing is guessed silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from modetune.errors import UnsupportedArchitectureError
from modetune.tensors import first_tensor


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to `lm_head` output before returning logits: `cap * tanh(z * scale / cap)`.

    `scale` multiplies (Cohere's logit_scale, 1/Granite's logits_scaling); `softcap` is Gemma-2's
    final-logit soft-capping (None = no capping). Without capping the transform is linear, so mixing
    hidden states and projecting once gives the same logits as mixing per-layer logits.
    """

    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_affine(self) -> bool:
        return self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _no_transform(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform()


# the config names transformers uses for final-logit soft-capping, cap * tanh(logits / cap)
SOFTCAP_NAMES = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def transform_from_config(config: PretrainedConfig) -> LogitTransform:
    """The logit transform a `*ForCausalLM.forward` applies, from the config names transformers uses for it."""
    text = config.get_text_config()
    scale = 1.0
    for name, multiply in (("logit_scale", True), ("output_multiplier", True), ("logits_scaling", False)):
        value = getattr(text, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
            scale = scale * float(value) if multiply else scale / float(value)
    caps = [getattr(text, name, None) for name in SOFTCAP_NAMES]
    cap = next((float(c) for c in caps if isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0), None)
    return LogitTransform(scale=scale, softcap=cap)


def _gemma2_softcap(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(softcap=getattr(config, "final_logit_softcapping", None))


def _cohere_scale(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(scale=float(config.logit_scale))


def _granite_scale(config: PretrainedConfig) -> LogitTransform:
    return LogitTransform(scale=1.0 / float(config.logits_scaling))


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted attribute paths, from the `*ForCausalLM` module, of the pieces MoDE needs."""

    backbone: str  # the decoder stack module; calling it returns the final hidden states and the cache
    layers: str  # the nn.ModuleList of decoder layers
    final_norm: str | None  # the final norm (None: the model has none, e.g. OPT-350m)
    head: str = "lm_head"
    pre_head: str | None = None  # a module between the final norm and the head (OPT's project_out)
    logit_transform: Callable[[PretrainedConfig], LogitTransform] = _no_transform


_LLAMA_LIKE = ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.norm")

# One entry per `config.model_type`. Every entry is covered by the same test harness (tests/mode/test_model.py).
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,  # includes SmolLM2
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "gemma2": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_gemma2_softcap
    ),
    "cohere": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_cohere_scale
    ),
    "granite": ArchitectureSpec(
        backbone="model", layers="model.layers", final_norm="model.norm", logit_transform=_granite_scale
    ),
    "phi": ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.final_layernorm"),
    "gpt2": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_bigcode": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "falcon": ArchitectureSpec(backbone="transformer", layers="transformer.h", final_norm="transformer.ln_f"),
    "gpt_neox": ArchitectureSpec(backbone="gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm"),
    "opt": ArchitectureSpec(
        backbone="model.decoder",
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        pre_head="model.decoder.project_out",
    ),
}


@dataclass(frozen=True)
class LinearHead:
    """An affine head path, x -> prepare(x) @ weight.T + bias."""

    prepare: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class LocatedModel:
    """The live modules of one model, found through its `ArchitectureSpec`."""

    model_type: str
    backbone: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    pre_head: nn.Module | None
    head: nn.Module
    transform: LogitTransform
    source: str = "table"  # "table" or "discovered"
    paths: dict[str, str | None] | None = None  # dotted paths of the pieces, for messages and reports

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        """Normalized hidden states -> logits, exactly as the model maps its final hidden states."""
        if self.pre_head is not None:
            normed = self.pre_head(normed)
        return self.transform(self.head(normed))

    def head_path_parameters(self) -> list[nn.Parameter]:
        modules = [m for m in (self.pre_head, self.head) if m is not None]
        return [p for m in modules for p in m.parameters()]

    def head_is_affine(self) -> bool:
        return self.transform.is_affine

    def linear_head(self) -> tuple[LinearHead | None, str]:
        """The head path as `prepare(x) @ weight.T + bias`, the form fused kernels (Liger) take; else the reason.

        The logit scale is folded into the input and the bias (s * (W x + b) = W (s x) + s b), and a pre-head
        projection runs in `prepare`, so only a soft-capped head or a wrapped one (e.g. LoRA on `lm_head`)
        cannot be written this way.
        """
        if not self.transform.is_affine:
            return None, f"{self.model_type} soft-caps its logits, which mixes logits rather than hidden states"
        if type(self.head) is not nn.Linear:
            return None, f"the output head is a {type(self.head).__name__}, not a plain nn.Linear (e.g. PEFT-wrapped)"
        scale, pre_head, weight = self.transform.scale, self.pre_head, self.head.weight

        def prepare(normed: torch.Tensor) -> torch.Tensor:
            if pre_head is not None:
                normed = pre_head(normed.to(weight.dtype))
            return (normed * scale if scale != 1.0 else normed).to(weight.dtype)

        bias = self.head.bias
        return LinearHead(prepare, weight, None if bias is None else (bias * scale if scale != 1.0 else bias)), ""


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj  # type: ignore[return-value]


def locate(model: PreTrainedModel) -> LocatedModel:
    """Find layers, norm and head of a `*ForCausalLM`: from the table, else by discovery; loud when neither works.

    The result is not yet proven; `verify_located` does that (`get_mode_model` calls it).
    """
    model_type = getattr(model.config, "model_type", None)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        return discover(model)
    backbone, layers, head = _get(model, spec.backbone), _get(model, spec.layers), _get(model, spec.head)
    missing = [name for name, obj in (("backbone", backbone), ("layers", layers), ("head", head)) if obj is None]
    if missing or not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model type {model_type!r}) does not have the modules the architecture table "
            f"expects ({', '.join(f'{n}={getattr(spec, n)!r}' for n in missing or ['layers'])}); this transformers "
            "version may have renamed them. Update the entry in modetune/architectures.py."
        )
    final_norm = _get(model, spec.final_norm) if spec.final_norm else None
    pre_head = _get(model, spec.pre_head) if spec.pre_head else None
    transform = spec.logit_transform(model.config)
    if transform.softcap is not None and not math.isfinite(transform.softcap):
        transform = LogitTransform(scale=transform.scale)
    paths = {"backbone": spec.backbone, "layers": spec.layers, "final_norm": spec.final_norm,
             "pre_head": spec.pre_head, "head": spec.head}  # fmt: skip
    return LocatedModel(model_type, backbone, layers, final_norm, pre_head, head, transform, "table", paths)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Discovery: any *ForCausalLM the table does not list
# --------------------------------------------------------------------------------------------------
def _refuse(model: nn.Module, reason: str) -> UnsupportedArchitectureError:
    model_type = getattr(model.config, "model_type", None)
    return UnsupportedArchitectureError(
        f"model type {model_type!r} ({type(model).__name__}) cannot be wrapped: {reason}. modetune found no "
        "entry in its architecture table and could not discover the head path by itself; if the model is a "
        "decoder-only LM, add an ArchitectureSpec in modetune/architectures.py naming its decoder stack, layer "
        "list, final norm, head and logit transform (read its *ForCausalLM.forward)."
    )


def _num_layers(config: PretrainedConfig) -> int | None:
    text = config.get_text_config()
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _find_backbone(model: PreTrainedModel) -> tuple[str, nn.Module] | None:
    """The decoder stack: the `base_model_prefix` submodule, what `get_decoder()` returns, or a usual name.

    The first candidate that holds a list of `num_hidden_layers` modules wins (some models' `get_decoder()`
    returns their output head, which is called `decoder` there).
    """
    names = {id(m): n for n, m in model.named_modules()}
    candidates = [getattr(model, getattr(model, "base_model_prefix", "") or "model", None)]
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with suppress(Exception):  # some models raise here (no decoder attribute): try the next source
            candidates.append(get_decoder())
    candidates += [getattr(model, n, None) for n in ("model", "transformer", "decoder", "backbone", "language_model")]
    found = [(names[id(m)], m) for m in candidates if isinstance(m, nn.Module) and m is not model and id(m) in names]
    expected = _num_layers(model.config)
    for name, module in found:
        if any(isinstance(m, nn.ModuleList) and len(m) == expected for m in module.modules()):
            return name, module
    return found[0] if found else None


def _find_layers(model: PreTrainedModel, backbone_path: str, backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    expected = _num_layers(model.config)
    lists = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    matching = [(n, m) for n, m in lists if len(m) == expected]
    if not matching:
        sizes = ", ".join(f"{n or '.'}: {len(m)}" for n, m in lists[:6]) or "none"
        raise _refuse(
            model,
            f"no nn.ModuleList of {expected} decoder layers (config num_hidden_layers) in its decoder stack "
            f"{backbone_path!r} (module lists found: {sizes}); shared or recurrent blocks are not supported",
        )
    depth = min(n.count(".") for n, _ in matching)
    shallowest = [(n, m) for n, m in matching if n.count(".") == depth]
    if len(shallowest) > 1:
        raise _refuse(model, f"several layer lists could be the decoder layers: {', '.join(n for n, _ in shallowest)}")
    name, layers = shallowest[0]
    if "encoder" in f"{backbone_path}.{name}".split(".") or "encoder" in type(backbone).__name__.lower():
        raise _refuse(model, "it is an encoder model (BERT-style) exposed as a causal LM, which is out of scope")
    return f"{backbone_path}.{name}", layers  # type: ignore[return-value]


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and (a is b or (a.shape == b.shape and torch.equal(a, b)))


def dummy_inputs(model: PreTrainedModel, length: int = 6) -> dict[str, torch.Tensor]:
    """A short batch of ordinary token ids (no special tokens), on the model's device."""
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)
    low, high = min(3, vocab - 1), max(min(vocab, 100), 4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(low, high, (2, length), generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _trace_head_path(
    model: PreTrainedModel, layers: nn.ModuleList, head: nn.Module, layers_path: str
) -> tuple[tuple[str, nn.Module] | None, tuple[str, nn.Module] | None]:
    """(final norm, pre-head projection), each (path, module) or None: the modules, called after the last
    decoder layer, that map its output to the head's input, found by tracing one short forward."""
    calls: list[tuple[str, nn.Module, torch.Tensor | None, torch.Tensor | None]] = []
    seen: dict[str, torch.Tensor | None] = {}

    def record(name: str, module: nn.Module):
        def hook(_module, args, kwargs, output):
            source = args[0] if args else next(iter(kwargs.values()), None)
            calls.append((name, module, first_tensor(source), first_tensor(output)))

        return hook

    handles = [
        m.register_forward_hook(record(n, m), with_kwargs=True)
        for n, m in model.named_modules()
        if n and n != layers_path and not n.startswith(f"{layers_path}.") and m is not head
    ]
    handles.append(layers[-1].register_forward_hook(lambda _m, _a, out: seen.__setitem__("last", first_tensor(out))))
    handles.append(head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("head_in", first_tensor(args))))
    try:
        with _eval_mode(model):
            model(**dummy_inputs(model), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    last, head_in = seen.get("last"), seen.get("head_in")
    if last is None or head_in is None:
        raise _refuse(model, "a traced forward pass did not go through its last decoder layer and its output head")
    if _same(last, head_in):
        return None, None
    changing = [(n, m, i, o) for n, m, i, o in calls if o is not None and not _same(i, o)]
    for name, module, inp, out in changing:
        if not _same(inp, last):
            continue
        if _same(out, head_in):
            return (name, module), None
        for name2, module2, inp2, out2 in changing:
            if _same(inp2, out) and _same(out2, head_in):
                return (name, module), (name2, module2)
    raise _refuse(
        model,
        "no module maps its last decoder layer's output to the output head's input (the decoder stack or the "
        "causal LM transforms the final hidden state in code, not in a module)",
    )


def discover(model: PreTrainedModel) -> LocatedModel:
    """Find the pieces of a causal LM the table does not list, from its module tree, config and one traced forward."""
    model_type = getattr(model.config, "model_type", None)
    if getattr(model.config, "is_encoder_decoder", False):
        raise _refuse(model, "it is an encoder-decoder model; MoDE wraps decoder-only causal LMs")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise _refuse(model, "get_output_embeddings() returns no output head with a weight matrix")
    found = _find_backbone(model)
    if found is None:
        raise _refuse(model, "no decoder stack (get_decoder() / base_model) was found")
    backbone_path, backbone = found
    layers_path, layers = _find_layers(model, backbone_path, backbone)
    norm, pre_head = _trace_head_path(model, layers, head, layers_path)
    if norm is not None and not norm[0].startswith(f"{backbone_path}."):
        raise _refuse(model, f"its final norm {norm[0]!r} is applied outside the decoder stack {backbone_path!r}")
    names = {id(m): n for n, m in model.named_modules()}
    paths = {"backbone": backbone_path, "layers": layers_path, "final_norm": norm[0] if norm else None,
             "pre_head": pre_head[0] if pre_head else None, "head": names.get(id(head), "lm_head")}  # fmt: skip
    return LocatedModel(
        model_type,
        backbone,
        layers,
        norm[1] if norm else None,
        pre_head[1] if pre_head else None,
        head,
        transform_from_config(model.config),
        "discovered",
        paths,
    )


# --------------------------------------------------------------------------------------------------
# The proof
# --------------------------------------------------------------------------------------------------
# max |model logits - located path logits| allowed, relative to max(1, max |logits|)
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def verify_located(model: PreTrainedModel, located: LocatedModel) -> float:
    """Prove the located path on a short dummy input; returns the largest difference, raises on a mismatch.

    The model's own logits must equal head(final_norm(h_L)) computed through the located pieces, with h_L
    the last decoder layer's output: within `TOLERANCE` of the largest logit (exact in float32 in practice).
    """
    captured: dict[str, torch.Tensor] = {}
    source = located.final_norm if located.final_norm is not None else located.layers[-1]

    def capture(_module: nn.Module, _args: Any, output: Any) -> None:  # returns None: the output stays untouched
        captured["y"] = first_tensor(output)  # the last call: some models also normalize the embeddings with it

    handle = source.register_forward_hook(capture)
    try:
        with _eval_mode(model):
            logits = model(**dummy_inputs(model), use_cache=False).logits
            y = captured.get("y")
            if y is None:
                raise _refuse(model, f"its located final norm {located.paths and located.paths['final_norm']!r} "
                              "is never called in a forward pass")  # fmt: skip
            ours = located.project(y)
    finally:
        handle.remove()
    if ours.shape != logits.shape:
        raise UnsupportedArchitectureError(
            f"model type {located.model_type!r}: the located head path gives logits of shape {tuple(ours.shape)}, the "
            f"model {tuple(logits.shape)}; its *ForCausalLM.forward changes the logits in a way modetune does not know"
        )
    diff = (ours.float() - logits.float()).abs().max().item()
    scale = max(1.0, logits.float().abs().max().item())
    tolerance = TOLERANCE.get(logits.dtype, 1e-2)
    if not diff <= tolerance * scale:
        raise UnsupportedArchitectureError(
            f"model type {located.model_type!r} ({located.source} head path {located.paths}): the model's own logits "
            f"differ from head(final_norm(h_L)) through the located pieces by up to {diff:.3g} (allowed "
            f"{tolerance * scale:.3g} in {str(logits.dtype).replace('torch.', '')}); wrapping it would give a wrong "
            "model. Its *ForCausalLM.forward does something to the logits that modetune does not know: fix or add its "
            "entry in modetune/architectures.py."
        )
    return diff
