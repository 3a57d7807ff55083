"""Mixture-of-Modules (MoM): each token's computation assembled from a pool of attention, FFN and SKIP modules.

`MoMConfig` + `MoMForCausalLM` (a transformers causal LM, registered with AutoConfig/AutoModelForCausalLM as
"modetune_mom") and `from_pretrained_layers` (phase 2: a pool built from an existing model's layers). It is
pre-trained by the recipe behind `modetune pretrain` (`modetune.training.pretrain`). The design, and where it
departs from the paper, is written at the top of `modetune/mom/model.py`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from modetune.mom.config import FIELD_HELP, MOM_FAMILIES, MoMConfig
from modetune.mom.from_layers import from_pretrained_layers
from modetune.mom.model import MoMCache, MoMCausalLMOutput, MoMForCausalLM

AutoConfig.register(MoMConfig.model_type, MoMConfig, exist_ok=True)
AutoModelForCausalLM.register(MoMConfig, MoMForCausalLM, exist_ok=True)

__all__ = [
    "FIELD_HELP",
    "MOM_FAMILIES",
    "MoMCache",
    "MoMCausalLMOutput",
    "MoMConfig",
    "MoMForCausalLM",
    "from_pretrained_layers",
]
