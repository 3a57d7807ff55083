"""modetune: dynamic depth for Hugging Face causal LMs: MoDE, MoDification and Mixture-of-Modules.

from modetune import MoDEConfig, get_mode_model, MoDEModel
model = get_mode_model(base_or_peft_model, MoDEConfig(num_layers=3))

from modetune import MoDConfig, get_mod_model
model = get_mod_model(base_or_peft_model, MoDConfig(threshold=0.5))
"""

from __future__ import annotations

from modetune.errors import CheckpointError, ConfigError, ModetuneError, UnsupportedArchitectureError
from modetune.method_base import MethodSpec, register_method
from modetune.mod import MoDConfig, MoDModel, MoDOutput, get_mod_model
from modetune.mode import MoDEModel, MoDEOutput, get_mode_model
from modetune.mode.config import MoDEConfig
from modetune.mom import MoMConfig, MoMForCausalLM  # also registers "modetune_mom" with the Auto classes
from modetune.version import __version__

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MethodSpec",
    "MoDConfig",
    "MoDEConfig",
    "MoDEModel",
    "MoDEOutput",
    "MoDModel",
    "MoDOutput",
    "MoMConfig",
    "MoMForCausalLM",
    "ModetuneError",
    "UnsupportedArchitectureError",
    "__version__",
    "get_mod_model",
    "get_mode_model",
    "register_method",
]
