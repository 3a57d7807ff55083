"""MoDification (Zhang et al., NAACL 2025): convert a pretrained causal LM into a Mixture-of-Depths model.

from modetune.mod import MoDConfig, get_mod_model
model = get_mod_model(base_or_peft_model, MoDConfig(operator="threshold", threshold=0.5))
"""

from __future__ import annotations

from modetune.mod.config import MoDConfig
from modetune.mod.model import MoDCache, MoDModel, MoDOutput, get_mod_model

__all__ = ["MoDCache", "MoDConfig", "MoDModel", "MoDOutput", "get_mod_model"]
