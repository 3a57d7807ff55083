"""A run directory: everything one training run produced, loadable with one call.

runs/NAME/
  run.json                 what was run: command line, configs, base model, training files, summary
  metrics.jsonl            one line per logged step (every loss component, router weights, lr, tokens/s)
  mode_config.json         MoDE config + base-model fingerprint      } `MoDEModel.from_pretrained`
  mode_model.safetensors   MoDE weights (adapters + router)           } loads these
  adapter_config.json      PEFT adapter (when trained with LoRA/DoRA) }
  adapter_model.safetensors
  tokenizer files, training_curves.png, checkpoint-N/ (resumable, each marked complete when whole)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modetune.errors import CheckpointError

RUN_FILE = "run.json"


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """Atomically (re)write run.json."""
    tmp = run_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


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


def load_run(
    run_dir: str | os.PathLike[str], *, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any, dict[str, Any]]:
    """(MoDEModel in eval mode, tokenizer, run info) for a run directory or one of its checkpoints."""
    from transformers import AutoTokenizer

    from modetune.loading import load_model_and_tokenizer
    from modetune.mode import MoDEModel

    weights_dir = Path(run_dir)
    root = find_run_root(weights_dir)
    info = read_run_info(root)
    if not (weights_dir / "mode_config.json").is_file():
        raise CheckpointError(
            f"{weights_dir} holds no trained model yet (mode_config.json is missing): the run did not finish; "
            f"resume it with `modetune train --output {root} --resume ...` or load one of its checkpoint-N folders"
        )
    base_spec = info.get("base_model", {})
    spec = (
        base_spec.get("path") if base_spec.get("path") and Path(base_spec["path"]).exists() else base_spec.get("spec")
    )
    if not spec:
        raise CheckpointError(f"{root / RUN_FILE} does not name its base model")
    base, tokenizer = load_model_and_tokenizer(spec, dtype=dtype, device=device)
    model = MoDEModel.from_pretrained(base, weights_dir)
    if (weights_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    info = {**info, "run_dir": str(root), "weights_dir": str(weights_dir)}
    return model, tokenizer, info
