"""Training curves per late layer, from a run's metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modetune.files import atomic_save_figure


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The training-log records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(metrics_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Three panels: ensemble and per-layer cross-entropy, distillation terms, mean router weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    keys = sorted({k for r in records for k in r})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for key in ["loss", "ce_ensemble", *[k for k in keys if k.startswith("ce/")]]:
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, label=key.replace("ce/", "CE "), lw=2 if key == "ce_ensemble" else 1)
    ax.set(title="Cross-entropy (nats)", xlabel="step")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key in [k for k in keys if k.startswith("distill/")]:
        steps, values = _series(records, key)
        ax.plot(steps, values, label=key.replace("distill/", "KD "))
    ax.set(title="Distillation to the final layer", xlabel="step")
    if ax.lines:
        ax.legend(fontsize=8)
    ax = axes[2]
    for key in [k for k in keys if k.startswith("router/")]:
        steps, values = _series(records, key)
        ax.plot(steps, values, label=key.replace("router/", "weight "))
    ax.set(title="Mean routing weight", xlabel="step", ylim=(0, 1))
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_path)
    atomic_save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out
