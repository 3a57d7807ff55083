"""Mixture-of-Depths Ensemble (MoDE; Luo & Specia, arXiv 2410.13077): the last k layers predict together.

from modetune.mode import MoDEConfig, get_mode_model
model = get_mode_model(base_or_peft_model, MoDEConfig(num_layers=3))

The method reads top to bottom in `modetune/mode/model.py`; its options live in `modetune/mode/config.py`.
"""

from __future__ import annotations

from modetune.method_base import MethodSpec, register_method
from modetune.mode.config import CONFIG_NAME, PAPER_PRESET, MoDEConfig
from modetune.mode.hub import MoDEForCausalLM
from modetune.mode.model import WEIGHTS_NAME, MoDEModel, MoDEOutput, get_mode_model

CITATION = """@article{luo2024mode,
  title   = {Tuning Language Models by Mixture-of-Depths Ensemble},
  author  = {Luo, Haoyan and Specia, Lucia},
  journal = {arXiv preprint arXiv:2410.13077},
  year    = {2024}
}"""

SPEC = register_method(
    MethodSpec(
        name="mode",
        config_class=MoDEConfig,
        model_class=MoDEModel,
        title="MoDE",
        summary="the last k decoder layers form a Mixture-of-Depths Ensemble (each through its own adapter and the "
        "frozen output head, mixed per token by a learned router), trained with the ensemble's cross-entropy plus "
        "λ × distillation from the final layer",
        tags=("mixture-of-depths-ensemble",),
        citation=CITATION,
        wrap=get_mode_model,
        presets={"paper": MoDEConfig.paper},
        order=0,
        export_class=MoDEForCausalLM,
    )
)

__all__ = [
    "CITATION",
    "CONFIG_NAME",
    "PAPER_PRESET",
    "SPEC",
    "WEIGHTS_NAME",
    "MoDEConfig",
    "MoDEModel",
    "MoDEOutput",
    "get_mode_model",
]
