"""lm-evaluation-harness integration: evaluate a MoDE run the way a PEFT adapter is evaluated.

Registers the lm-eval model type ``modetune``: a subclass of lm-eval's ``HFLM`` that hands the
harness an already-built model, so every ``loglikelihood`` request is scored from the MoDE ensemble's
``forward().logits`` and every ``generate_until`` decodes with ``MoDEModel.generate`` (ensemble logits
at every step). Model arguments (``--model_args``):

* ``run=RUN_DIR``: a saved MoDE run (`modetune.runs.load_run`); ``base=SPEC`` loads it onto that
  base model instead of the one recorded in run.json (refused if it is not the same model).
* ``model=SPEC`` (or ``pretrained=SPEC``): a plain model spec as for ``modetune eval --model``
  (embedded name, local checkpoint dir, GGUF file, cached hub id), e.g. to score the base model.
* ``dtype``, ``device``, and any ``HFLM`` option (``batch_size``, ``max_length``, ...).

lm-eval (0.4.x) only knows models whose module has been imported; its CLI has no plugin discovery.
So use one of:

* ``python -m modetune.evaluation.lm_eval_model --model modetune --model_args run=RUN_DIR --tasks ...``
  (this module registers the model, then runs lm-eval's own command line with the same arguments);
* the Python API: ``import modetune.evaluation.lm_eval_model`` then
  ``lm_eval.simple_evaluate(model="modetune", model_args="run=RUN_DIR", tasks=[...])``, or pass an
  instance: ``simple_evaluate(model=ModetuneLM(run=RUN_DIR), tasks=[...])``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from modetune.errors import ModetuneError
from modetune.evaluation.runner import dora_caching
from modetune.loading import load_model_and_tokenizer
from modetune.runs import load_run

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ModetuneError(
        "lm-evaluation-harness is not installed; install it with `pip install 'modetune[eval]'` "
        "(or `pip install lm-eval`)"
    ) from exc

__all__ = ["MODEL_NAMES", "ModetuneLM", "main", "register"]

#: the lm-eval ``--model`` names this module registers
MODEL_NAMES = ("modetune",)

logger = logging.getLogger(__name__)


def _load(run: str | None, model: Any, base: str | None, dtype: str, device: str) -> tuple[Any, Any, dict[str, Any]]:
    if run is not None and model is not None:
        raise ModetuneError("give either run=RUN_DIR or model=SPEC in --model_args, not both")
    if run is not None:
        # `base` overrides where the run's base model is loaded from (e.g. it moved); the method's base
        # fingerprint check refuses a different model with a clear error
        loaded_model, tokenizer, info = load_run(str(run), dtype=dtype, device=device, base=base)
        return loaded_model, tokenizer, {**info, **({"base_override": str(base)} if base is not None else {})}
    spec = model if model is not None else base
    if spec is None:
        raise ModetuneError("--model_args needs run=RUN_DIR (a MoDE run) or model=SPEC (a plain model)")
    loaded_model, tokenizer = load_model_and_tokenizer(str(spec), dtype=dtype, device=device)
    return loaded_model, tokenizer, {"model": str(spec)}


class ModetuneLM(HFLM):
    """lm-eval ``HFLM`` over a MoDE run (or any modetune-loadable model), scored through the ensemble."""

    def __init__(
        self,
        run: str | None = None,
        model: Any = None,
        pretrained: Any = None,
        base: str | None = None,
        tokenizer: Any = None,
        dtype: str = "auto",
        device: str | None = "auto",
        batch_size: int | str = 1,
        dora_cache: bool | str = True,
        **kwargs: Any,
    ) -> None:
        self.dora_cache = _flag(dora_cache, "dora_cache")
        if model is None and pretrained is not None:
            model = pretrained
        if model is not None and not isinstance(model, (str, Path)):
            # an already-built model instance (Python API); the tokenizer must come with it
            if tokenizer is None:
                raise ModetuneError("passing a model instance to ModetuneLM needs tokenizer=<its tokenizer>")
            instance, info = model, {"model": type(model).__name__}
        else:
            instance, loaded_tokenizer, info = _load(run, model, base, dtype, device or "auto")
            tokenizer = tokenizer or loaded_tokenizer
        if not hasattr(instance, "tie_weights"):
            # HFLM calls model.tie_weights(); a MoDEModel's base model is already tied when loaded
            object.__setattr__(instance, "tie_weights", lambda *a, **k: None)
        self.modetune_info = info
        super().__init__(pretrained=instance, tokenizer=tokenizer, backend="causal", batch_size=batch_size, **kwargs)

    # lm-eval's three request types, each scored with DoRA's B·A and weight norms computed once (as `modetune
    # eval` does; model_args dora_cache=False turns it off)
    def loglikelihood(self, requests: list[Any], *args: Any, **kwargs: Any) -> list[tuple[float, bool]]:
        with dora_caching(self.model, self.dora_cache):
            return super().loglikelihood(requests, *args, **kwargs)

    def loglikelihood_rolling(self, requests: list[Any], *args: Any, **kwargs: Any) -> list[float]:
        with dora_caching(self.model, self.dora_cache):
            return super().loglikelihood_rolling(requests, *args, **kwargs)

    def generate_until(self, requests: list[Any], *args: Any, **kwargs: Any) -> list[str]:
        with dora_caching(self.model, self.dora_cache):
            return super().generate_until(requests, *args, **kwargs)


def _flag(value: bool | str, name: str) -> bool:
    """A model_args switch: lm-eval passes True/False, or the text when it could not convert it."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ModetuneError(f"--model_args {name}={value!r}: use {name}=True or {name}=False")


def register() -> None:
    """Register ``ModetuneLM`` as the lm-eval model type ``modetune`` (idempotent)."""
    from lm_eval.api.registry import model_registry

    for alias in MODEL_NAMES:
        if alias not in model_registry:
            register_model(alias)(ModetuneLM)


register()


def main(argv: list[str] | None = None) -> None:
    """``python -m modetune.evaluation.lm_eval_model ARGS``: lm-eval's CLI with ``--model modetune``
    registered (same arguments as ``lm_eval``)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    # run through the importable module, so its class is the registered one
    from modetune.evaluation.lm_eval_model import main as _main

    _main()
