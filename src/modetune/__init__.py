"""modetune: Mixture-of-Depths Ensemble (MoDE) tuning for Hugging Face causal LMs.

from modetune import MoDEConfig, get_mode_model, MoDEModel
model = get_mode_model(base_or_peft_model, MoDEConfig(num_layers=3))
"""

from __future__ import annotations

__version__ = "0.1.0"

from modetune.errors import CheckpointError, ConfigError, ModetuneError, UnsupportedArchitectureError
from modetune.mode import MoDEModel, MoDEOutput, get_mode_model
from modetune.mode.config import MoDEConfig
from modetune.mom import MoMConfig, MoMForCausalLM  # also registers "modetune_mom" with the Auto classes

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MoDEConfig",
    "MoDEModel",
    "MoDEOutput",
    "MoMConfig",
    "MoMForCausalLM",
    "ModetuneError",
    "UnsupportedArchitectureError",
    "__version__",
    "get_mode_model",
]
