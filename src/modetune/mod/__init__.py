"""MoDification (Zhang et al., NAACL 2025): convert a pretrained causal LM into a Mixture-of-Depths model.

from modetune.mod import MoDConfig, get_mod_model
model = get_mod_model(base_or_peft_model, MoDConfig(operator="threshold", threshold=0.5))
"""

from __future__ import annotations

from modetune.method_base import MethodSpec, register_method
from modetune.mod.config import MoDConfig
from modetune.mod.hub import MoDForCausalLM
from modetune.mod.model import MoDModel, MoDOutput, get_mod_model
from modetune.mod.routing import MoDCache

CITATION = """@inproceedings{zhang2025modification,
  title     = {MoDification: Mixture of Depths Made Easy},
  author    = {Zhang, Chen and Zhong, Meizhi and Wang, Qimeng and Lu, Xuantao and Ye, Zheyu and Lu, Chengqiang and
               Gao, Yan and Hu, Yao and Chen, Kehai and Zhang, Min and Song, Dawei},
  booktitle = {Proceedings of NAACL},
  year      = {2025},
  note      = {arXiv:2410.14268}
}"""

SPEC = register_method(
    MethodSpec(
        name="mod",
        config_class=MoDConfig,
        model_class=MoDModel,
        title="MoDification",
        summary="routed decoder layers let each token skip them (Mixture-of-Depths, threshold-p or top-k routing), "
        "converted from the pretrained model",
        tags=("mixture-of-depths",),
        citation=CITATION,
        wrap=get_mod_model,
        order=10,
        export_class=MoDForCausalLM,
    )
)

__all__ = ["CITATION", "SPEC", "MoDCache", "MoDConfig", "MoDModel", "MoDOutput", "get_mod_model"]
