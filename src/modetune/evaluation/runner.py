"""Model calls for evaluation: batched generation and continuation log-likelihoods.

Everything here talks to a generic Hugging Face-style causal LM: ``model(input_ids=...,
attention_mask=...).logits`` and ``model.generate(**kwargs)``. A `modetune.MoDEModel` behaves that
way, so a MoDE run is scored through its ensemble logits and decodes from the ensemble.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from modetune.errors import ConfigError

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "PRESETS",
    "GenerationSettings",
    "dora_caching",
    "generate_texts",
    "loglikelihoods",
]

#: Alpaca markers a model may run on into; nothing after them belongs to the answer. LLM-Adapters
#: keeps the text between the first and second "### Response:", which this reproduces.
logger = logging.getLogger(__name__)

DEFAULT_STOP_STRINGS = ("### Instruction:", "### Response:", "### Input:")


@dataclass
class GenerationSettings:
    """Decoding settings. The default is greedy decoding.

    ``max_new_tokens=None`` takes the task's default (256 arithmetic, 32 commonsense, as LLM-Adapters).
    The ``llm-adapters`` preset is the upstream scripts' GenerationConfig (4 beams; their
    temperature/top-p/top-k are inert because they never set ``do_sample``).
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature} (use greedy decoding instead)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        self.stop_strings = tuple(self.stop_strings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as stored in results.json)."""
        return {**asdict(self), "stop_strings": list(self.stop_strings)}

    def generate_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling knobs only when sampling)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens or max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
        }
        if self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                if getattr(self, key) is not None:
                    kwargs[key] = getattr(self, key)
        return kwargs


#: named decoding settings for ``--preset``
PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {},
    "llm-adapters": {"num_beams": 4, "temperature": 0.1, "top_p": 0.75, "top_k": 40},
}


# --------------------------------------------------------------------------------------------------
# helpers


def _device_of(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


@contextlib.contextmanager
def _padding(tokenizer: Any, side: str) -> Iterator[Any]:
    """Temporarily set the padding side (and a pad token if the tokenizer has none)."""
    old_side = tokenizer.padding_side
    old_pad = tokenizer.pad_token
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif getattr(tokenizer, "unk_token", None) is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ConfigError("the tokenizer has no pad, eos or unk token to pad batches with")
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start : start + batch_size])


def _truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if pos >= 0:
            cut = min(cut, pos)
    return text[:cut]


class _StopOnStrings:
    """Stop a row once its newly generated text contains one of the stop strings.

    A plain callable with the ``StoppingCriteria`` signature, so it works with any ``generate``
    that accepts HF stopping criteria (HF's own ``stop_strings`` needs ``tokenizer=`` too).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_len = prompt_len
        # enough tokens to contain the longest stop string, whatever the tokenization
        self.window = max((len(s) for s in self.stops), default=0) + 2

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        tails = self.tokenizer.batch_decode(new[:, -self.window :], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _stopping_criteria(tokenizer: Any, stops: Sequence[str], prompt_len: int) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    inner = _StopOnStrings(tokenizer, stops, prompt_len)

    class _Criteria(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            return inner(input_ids, scores)

    return StoppingCriteriaList([_Criteria()])


@contextlib.contextmanager
def dora_caching(model: Any, enabled: bool = True) -> Iterator[None]:
    """Compute each DoRA layer's B·A and weight norm once instead of on every forward pass.

    PEFT's DoRA recomputes both per call; while evaluation holds the weights fixed, PEFT's own `DoraCaching`
    (PEFT >= 0.19) keeps them, which gives the same outputs bit for bit and faster scoring (README,
    "Evaluation"; `benchmarks/dora_cache.py`). It holds one B·A per DoRA-adapted matrix, in the adapter's
    dtype (fp32 by default, even on a bf16 model): on CUDA the cache is skipped, with a warning, when that
    would not fit in free memory. The caches are freed on exit. Inside the context the weights, the adapter
    scale, device and dtype must not change (PEFT's cache does not key on them). Models without DoRA are
    untouched; `enabled=False` turns PEFT's process-wide switch off for the duration.
    """
    dora = _dora_layers(model)
    if enabled and not dora:
        yield
        return
    try:
        from peft.helpers import DoraCaching
    except ImportError:  # PEFT < 0.19: no cache to turn on
        if enabled:
            logger.warning("this PEFT version has no DoRA cache (PEFT >= 0.19); DoRA is evaluated without it")
        yield
        return
    if enabled:
        extra = sum(numel * dtype.itemsize for numel, dtype, _ in dora)
        free = _free_accelerator_memory(model)
        if free is not None and extra > 0.9 * free:
            logger.warning(
                "DoRA cache skipped: it needs %.0f MB and %.0f MB are free (--no-dora-cache / dora_cache=False silences this)",
                extra / 2**20,
                free / 2**20,
            )
            enabled = False
        else:
            logger.info(
                "DoRA cache: %.0f MB for %d adapted matrices (--no-dora-cache / dora_cache=False saves it)",
                extra / 2**20,
                len(dora),
            )
    try:
        with DoraCaching(enabled=enabled):
            yield
    finally:
        for _, _, cache in dora:
            cache.clear()


def _dora_layers(model: Any) -> list[tuple[int, torch.dtype, dict | None]]:
    """For each DoRA-adapted matrix of `model`: the elements and dtype of the B·A that PEFT caches, and the
    cache itself (the `_dora_cache` of the DoRA module PEFT keeps in `lora_magnitude_vector`; None before
    PEFT 0.19)."""
    modules = getattr(model, "modules", None)
    out = []
    for module in modules() if callable(modules) else ():
        magnitudes = getattr(module, "lora_magnitude_vector", None)
        weight = getattr(module.get_base_layer(), "weight", None) if magnitudes else None
        if weight is None:
            continue
        for adapter, dora in magnitudes.items():
            lora_a = getattr(module, "lora_A", {})  # an embedding's lives elsewhere: PEFT's default fp32 then
            dtype = lora_a[adapter].weight.dtype if adapter in lora_a else torch.float32
            out.append((weight.numel(), dtype, getattr(dora, "_dora_cache", None)))
    return out


def _free_accelerator_memory(model: Any) -> int | None:
    """Free bytes on the model's CUDA device; None elsewhere (CPU memory is not checked)."""
    device = _device_of(model)
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


# --------------------------------------------------------------------------------------------------
# generation


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Generate a response for each prompt: batched, left-padded, longest prompts first.

    Returns only the new text (prompt removed, special tokens skipped), cut at the first stop string.
    ``progress(k)`` is called after each batch with the number of prompts just finished.
    """
    settings = settings or GenerationSettings()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    lengths = [len(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list[str] = [""] * len(prompts)
    gen_kwargs = settings.generate_kwargs(max_new_tokens)
    if settings.do_sample:
        torch.manual_seed(seed)
    with _padding(tokenizer, "left"):
        for batch in _batches(order, batch_size):
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
            input_ids = enc["input_ids"].to(device)
            attention_mask = enc["attention_mask"].to(device)
            prompt_len = input_ids.shape[1]
            kwargs = dict(gen_kwargs)
            if settings.stop_strings:
                kwargs["stopping_criteria"] = _stopping_criteria(tokenizer, settings.stop_strings, prompt_len)
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
            if not isinstance(sequences, torch.Tensor):  # return_dict_in_generate set in a generation config
                sequences = sequences.sequences
            texts = tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                out[i] = _truncate_at_stops(text, settings.stop_strings).strip()
            if progress is not None:
                progress(len(batch))
    return out


# --------------------------------------------------------------------------------------------------
# log-likelihood


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, the way lm-evaluation-harness splits them: trailing
    spaces of the context move to the continuation, and the continuation is the tail of the whole
    string's tokenization (so a word is tokenized as in running text)."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ctx:  # an empty context still needs one token to condition on
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [bos]
    return list(ctx), list(cont)


def _max_length(model: Any, tokenizer: Any) -> int:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else 2048


@torch.no_grad()
def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, int, bool]]:
    """For each ``(context, continuation)``: (sum of continuation token log-probs, continuation token
    count, whether every continuation token is the model's argmax). Right-padded batches, longest
    first; over-long inputs lose tokens from the left of the context."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    max_len = _max_length(model, tokenizer)
    encoded: list[tuple[list[int], list[int], int]] = []
    for context, continuation in requests:
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        full = ctx + cont
        start = max(0, len(full) - 1 - max_len)  # drop context tokens from the left if too long
        n_cont = min(len(cont), len(full) - 1 - start)
        # the model reads full[:-1]; the logits at position t score token t + 1
        encoded.append((full[start:-1], full[start + 1 :], n_cont))
    # requests whose model input is identical (same context, continuations differing only in their
    # last token: "... answer1" vs "... answer2", " true" vs " false") share one forward pass
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (inp, _, _) in enumerate(encoded):
        groups.setdefault(tuple(inp), []).append(i)
    unique = list(groups)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    order = sorted(range(len(unique)), key=lambda u: -len(unique[u]))
    results: list[tuple[float, int, bool]] = [(0.0, 0, False)] * len(encoded)
    for batch in _batches(order, batch_size):
        width = max(len(unique[u]) for u in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, u in enumerate(batch):
            input_ids[row, : len(unique[u])] = torch.tensor(unique[u], dtype=torch.long)
            attention_mask[row, : len(unique[u])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        done = 0
        for row, u in enumerate(batch):
            length = len(unique[u])
            members = groups[unique[u]]
            longest = max(encoded[i][2] for i in members)
            steps = logits[row, length - longest : length].float().log_softmax(-1)
            for i in members:
                _, targets, n_cont = encoded[i]
                own = steps[longest - n_cont :]
                target = torch.tensor(targets[length - n_cont :], dtype=torch.long, device=own.device)
                token_lp = own.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                greedy = bool((own.argmax(-1) == target).all())
                results[i] = (float(token_lp.sum()), n_cont, greedy)
            done += len(members)
        if progress is not None:
            progress(done)
    return results
