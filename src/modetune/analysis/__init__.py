"""Instruments that show what the late layers and the router do."""

from modetune.analysis.curves import plot_training_curves, read_metrics
from modetune.analysis.layers import layer_losses

__all__ = ["layer_losses", "plot_training_curves", "read_metrics"]
