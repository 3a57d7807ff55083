"""Mixture-of-Modules (MoM): each token's computation assembled from a pool of attention, FFN and SKIP modules.

`MoMConfig` + `MoMForCausalLM` (a transformers causal LM, registered with AutoConfig/AutoModelForCausalLM as
"modetune_mom") and `from_pretrained_layers` (phase 2: a pool built from an existing model's layers). It is
pre-trained by the recipe behind `modetune pretrain` (`modetune.training.pretrain`). The design, and where it
departs from the paper, is written at the top of `modetune/mom/model.py`. The controls a MoM comparison needs:
`GatedLlamaForCausalLM` (vanilla with per-token gated residual updates, "modetune_gated_llama") and the FLOP
accounting of `modetune.mom.flops` (a vanilla model whose FLOPs per token match a MoM config's).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from modetune.mom.config import AUTHORS_PRESET, FIELD_HELP, MOM_FAMILIES, MoMConfig
from modetune.mom.from_layers import from_pretrained_layers
from modetune.mom.gated import GatedLlamaConfig, GatedLlamaForCausalLM
from modetune.mom.model import MoMCache, MoMCausalLMOutput, MoMForCausalLM, mom_forward_flops

AutoConfig.register(MoMConfig.model_type, MoMConfig, exist_ok=True)
AutoModelForCausalLM.register(MoMConfig, MoMForCausalLM, exist_ok=True)
AutoConfig.register(GatedLlamaConfig.model_type, GatedLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(GatedLlamaConfig, GatedLlamaForCausalLM, exist_ok=True)

__all__ = [
    "AUTHORS_PRESET",
    "FIELD_HELP",
    "MOM_FAMILIES",
    "GatedLlamaConfig",
    "GatedLlamaForCausalLM",
    "MoMCache",
    "MoMCausalLMOutput",
    "MoMConfig",
    "MoMForCausalLM",
    "from_pretrained_layers",
    "mom_forward_flops",
]
