"""Instruments that show what the late layers and the router do."""

from modetune.analysis.curves import plot_training_curves, read_metrics

__all__ = ["plot_training_curves", "read_metrics"]
