"""A run directory: everything one training run produced, loadable with one call.

runs/NAME/
  run.json                 what was run: command line, configs, base model, training files, summary
  metrics.jsonl            one line per logged step (every loss component, router weights, lr, tokens/s)
  mode_config.json         MoDE config + base-model fingerprint      } `MoDEModel.from_pretrained`
  mode_model.safetensors   MoDE weights (adapters + router)           } loads these
  adapter_config.json      PEFT adapter (when trained with LoRA/DoRA) }
  adapter_model.safetensors
  README.md                model card (modetune.card): settings, data, results, how to load, citation
  tokenizer files, training_curves.png, checkpoint-N/ (resumable, each marked complete when whole)

Runs travel: the base model is named by its Hugging Face hub id where one is known (adapter_config.json's
``base_model_name_or_path``, run.json's ``base_model.hub_id``), with the local path it was loaded from
recorded beside it. `load_run` on another machine finds the base at that path, else by the embedded
model name or the hub id (local Hugging Face cache only, never the network), or takes ``base=``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modetune.errors import CheckpointError, ModetuneError
from modetune.files import atomic_write_text
from modetune.loading import EMBEDDED_MODELS, load_model_and_tokenizer, resolve_model
from modetune.method_base import MethodModel
from modetune.methods import get_method, registered_methods, saved_method

RUN_FILE = "run.json"
CHECKPOINT_MARKER = "modetune-checkpoint-complete.json"  # written last into each checkpoint-N (training/trainer.py)


def base_hub_id(spec: str, resolved: Any) -> str | None:
    """The hub id of a resolved base model: an embedded model's original repo, a cached hub id itself, a
    directory inside a Hugging Face cache (``models--ORG--NAME/snapshots/...``); None otherwise."""
    if resolved.kind == "embedded":
        return EMBEDDED_MODELS[spec].hub_id or None
    if resolved.kind == "hub":
        return str(spec)
    parts = Path(resolved.path).parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part[len("models--") :].replace("--", "/", 1)
    return None


def base_model_record(spec: str, resolved: Any) -> dict[str, Any]:
    """run.json's ``base_model``: the spec given, the local path loaded, its kind and the portable hub id."""
    return {"spec": str(spec), "path": str(resolved.path), "kind": resolved.kind, "hub_id": base_hub_id(spec, resolved)}


def set_base_model_name(model: Any, name: str | None) -> None:
    """Name the base by ``name`` (its hub id) in every PEFT config of ``model``, so adapter_config.json
    points at something that exists on another machine rather than at a local cache path."""
    if not name:
        return
    for module in model.modules():
        configs = getattr(module, "peft_config", None)
        if isinstance(configs, dict):
            for config in configs.values():
                config.base_model_name_or_path = name


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """Atomically (re)write run.json."""
    atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=2, default=str) + "\n")


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {run_dir} is not a modetune run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def find_run_root(path: str | os.PathLike[str]) -> Path:
    """The run directory holding `path` (a run directory itself, or one of its checkpoint-N folders)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory written by `modetune train`")
    for candidate in (path, path.parent):
        if (candidate / RUN_FILE).is_file():
            return candidate
    raise CheckpointError(f"{path} has no {RUN_FILE}; pass a run directory written by `modetune train`")


def _base_candidates(base: dict[str, Any]) -> list[str]:
    """Where a run's base may be, best first: the recorded path (same machine), then for an embedded base
    its name (the very weights it was trained on) before the hub id, for others the hub id first."""
    out: list[str] = []
    path, spec, hub_id = base.get("path"), base.get("spec"), base.get("hub_id")
    if path and Path(path).exists():
        out.append(str(path))
    order = [spec, hub_id] if base.get("kind") == "embedded" else [hub_id, spec]
    out.extend(str(s) for s in order if s)
    return list(dict.fromkeys(out))


def resolve_run_base(info: dict[str, Any], root: Path, base: str | None = None) -> str:
    """The model spec a run's base loads from (see `_base_candidates`); ``base`` overrides. A run whose
    base is found nowhere raises a `CheckpointError` naming what was tried and the fix."""
    if base is not None:
        return str(base)
    record = info.get("base_model") or {}
    candidates = _base_candidates(record)
    if not candidates:
        raise CheckpointError(f"{root / RUN_FILE} does not name its base model; pass base=SPEC (or --base SPEC)")
    tried = []
    for spec in candidates:
        try:
            resolve_model(spec)
            return spec
        except ModetuneError as exc:
            tried.append(f"{spec}: {str(exc).split(';')[0]}")
    want = record.get("hub_id") or record.get("spec")
    raise CheckpointError(
        f"cannot find the base model of the run in {root} (tried {' | '.join(tried)}); pass the same model "
        f"({want}) as base=SPEC (Python: load_run(run, base=...)) or --base SPEC (modetune eval): a local "
        "directory, a GGUF file or a hub id in the local Hugging Face cache"
    )


def saved_method_class(directory: str | os.PathLike[str]) -> type[MethodModel] | None:
    """Which registered depth method saved the model in `directory` (by its config file); None if none did."""
    spec = saved_method(directory)
    return spec.model_class if spec is not None else None


def load_run(
    run_dir: str | os.PathLike[str], *, dtype: str = "auto", device: str = "auto", base: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(the method's model in eval mode, tokenizer, run info) for a run directory or one of its checkpoints.

    The method is read from the saved config file of a registered method (`mode_config.json`: a `MoDEModel`,
    `mod_config.json`: a `MoDModel`, ...). ``base`` overrides the base model (any `--model` spec); otherwise it is found as
    `resolve_run_base` says, so a run copied to another machine loads by its hub id or embedded model name.
    A different model is refused by the base fingerprint check."""
    from transformers import AutoTokenizer

    weights_dir = Path(run_dir)
    root = find_run_root(weights_dir)
    info = read_run_info(root)
    method = saved_method_class(weights_dir)
    if method is None:
        names = ", ".join(get_method(m).config_class.config_name for m in registered_methods())
        raise CheckpointError(
            f"{weights_dir} holds no trained model yet (none of {names}): the run did not "
            f"finish; resume it with `modetune train --output {root} --resume ...` or load one of its "
            "checkpoint-N folders"
        )
    # a model whose writing was interrupted never loads as valid: checkpoints count once marked complete
    # (the marker is written last), the final model once run.json says the run is complete
    if weights_dir.resolve() != root.resolve() and not (weights_dir / CHECKPOINT_MARKER).is_file():
        raise CheckpointError(
            f"{weights_dir} is an incomplete checkpoint (no {CHECKPOINT_MARKER}: its writing was interrupted); "
            f"load an earlier checkpoint or resume the run with `modetune train --output {root} --resume ...`"
        )
    if weights_dir.resolve() == root.resolve() and info.get("status", "complete") != "complete":
        raise CheckpointError(
            f"the run in {root} did not finish (run.json status {info.get('status')!r}); resume it with "
            f"`modetune train --output {root} --resume ...` or load one of its checkpoint-N folders"
        )
    spec = resolve_run_base(info, root, base)
    base_model, tokenizer = load_model_and_tokenizer(spec, dtype=dtype, device=device)
    model = method.from_pretrained(base_model, weights_dir)
    if (weights_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    info = {**info, "run_dir": str(root), "weights_dir": str(weights_dir), "base_loaded_from": spec}
    return model, tokenizer, info
