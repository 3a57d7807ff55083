"""Mixture-of-Depths Ensemble (MoDE; Luo & Specia, arXiv 2410.13077): the last k layers predict together.

from modetune.mode import MoDEConfig, get_mode_model
model = get_mode_model(base_or_peft_model, MoDEConfig(num_layers=3))

The method reads top to bottom in `modetune/mode/model.py`; its options live in `modetune/mode/config.py`.
"""

from __future__ import annotations

from modetune.mode.config import CONFIG_NAME, PAPER_PRESET, MoDEConfig
from modetune.mode.model import WEIGHTS_NAME, MoDEModel, MoDEOutput, get_mode_model

__all__ = ["CONFIG_NAME", "PAPER_PRESET", "WEIGHTS_NAME", "MoDEConfig", "MoDEModel", "MoDEOutput", "get_mode_model"]
