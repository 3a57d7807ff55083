"""Any causal LM: discovery of the head path, the wrap-time proof, MoE auxiliary losses, and the sweep over every
`*ForCausalLM` type registered in the installed transformers (tiny random models built from config defaults)."""

from __future__ import annotations

import pytest
import torch

from modetune import MoDEConfig, get_mode_model
from modetune.architectures import ARCHITECTURES, ArchitectureSpec, LogitTransform, locate, verify_located
from modetune.errors import UnsupportedArchitectureError
from tests import architecture_checks as checks
from tests.conftest import build_tiny_model
from tests.tiny_any import NotBuildableTiny, build_any_tiny, causal_lm_types

# Decoder-only types that build tiny and are refused, each with the part of the reason the refusal must give.
# Anything else that builds must wrap and pass every check: a new refusal fails the sweep.
EXPECTED_REFUSALS = {
    "hrm_text": "shared or recurrent blocks",  # two recurrent modules (H and L) iterated several times
    "prophetnet": "no module maps",  # n-gram streams: the head sees a reshaped state
    "xlnet": "no module maps",  # two-stream attention, the head sees the query stream
    "xlm": "several layer lists",  # parallel per-sublayer lists (attentions, ffns, ...)
}
ENCODER_REASON = "encoder model (BERT-style)"
# Wrapped and proven, but a check fails for a reason of the model's own making.
KNOWN_FAILURES = {
    "rwkv": "wraps and passes the proof and the identity, but backward through MoDE fails on a tensor modified "
    "in place (the base model alone trains; RWKV rescales weights in place between train and eval mode)",
}


def _build(model_type: str) -> torch.nn.Module:
    try:
        return build_any_tiny(model_type)
    except NotBuildableTiny as exc:
        pytest.skip(f"{model_type}: not buildable tiny: {exc}")
    except Exception as exc:  # the config class's defaults do not construct at all
        pytest.skip(f"{model_type}: not buildable tiny: {type(exc).__name__}: {str(exc)[:200]}")


@pytest.mark.parametrize("model_type", causal_lm_types())
def test_every_causal_lm_type_wraps_and_passes_the_harness(model_type: str) -> None:
    """Wrap (the proof runs), num_layers=1 identity, k=2 forward/backward reaching exactly MoDE + LoRA,
    cached == uncached greedy generation; or a refusal with its reason."""
    if model_type in KNOWN_FAILURES:
        pytest.xfail(KNOWN_FAILURES[model_type])
    model = _build(model_type)
    try:
        config = checks.mode_config(model, 2)
        get_mode_model(model, config)
    except UnsupportedArchitectureError as exc:
        message = str(exc)
        assert model_type in message
        if ENCODER_REASON in message:
            return
        assert model_type in EXPECTED_REFUSALS, f"{model_type} is refused: {message}"
        assert EXPECTED_REFUSALS[model_type] in message
        return
    except Exception as exc:
        if model_type in EXPECTED_REFUSALS:
            pytest.xfail(f"{model_type}: {type(exc).__name__}: {exc}")
        raise
    assert checks.identity_difference(model) == 0.0
    not_applicable = []
    for check in (
        checks.cached_equals_uncached,
        lambda _: checks.gradients_ok(checks.gradient_report(_build(model_type))),
    ):
        try:
            assert check(model), f"{model_type}: {check}"
        except checks.BaseModelCannot as exc:
            not_applicable.append(str(exc))
    if not_applicable:
        pytest.skip(f"{model_type}: wrapped and proven; the base model itself cannot: {'; '.join(not_applicable)}")


# -- discovery finds what the table says -----------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["llama", "gemma2", "cohere", "granite", "phi", "gpt2", "gpt_neox", "opt"])
def test_discovery_agrees_with_the_explicit_table(model_type: str, monkeypatch) -> None:
    model = build_tiny_model(model_type)
    table = locate(model)
    monkeypatch.delitem(ARCHITECTURES, model_type)
    found = locate(model)
    assert found.source == "discovered" and table.source == "table"
    # the stack may be found one wrapper up (OPTModel around OPTDecoder): calling either runs the same layers
    assert any(m is table.backbone for m in found.backbone.modules())
    for piece in ("layers", "final_norm", "pre_head", "head"):
        assert getattr(found, piece) is getattr(table, piece), piece
    assert found.transform == table.transform
    assert verify_located(model, found) == 0.0


# -- the proof -------------------------------------------------------------------------------------------
def test_proof_catches_a_norm_applied_twice(monkeypatch) -> None:
    wrong = ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.norm", pre_head="model.norm")
    monkeypatch.setitem(ARCHITECTURES, "llama", wrong)
    with pytest.raises(UnsupportedArchitectureError, match=r"'llama'.*differ.*by up to [0-9.e-]+"):
        get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=2))
    get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=2), verify=False)  # the opt-out skips it


def test_proof_catches_a_missing_softcap(monkeypatch) -> None:
    no_cap = ArchitectureSpec(backbone="model", layers="model.layers", final_norm="model.norm")
    monkeypatch.setitem(ARCHITECTURES, "gemma2", no_cap)
    with pytest.raises(UnsupportedArchitectureError, match="gemma2"):
        get_mode_model(build_tiny_model("gemma2"), MoDEConfig(num_layers=2))


def test_proof_catches_a_wrong_layer_list(monkeypatch) -> None:
    model = build_tiny_model("llama")
    located = locate(model)
    located.final_norm = located.layers[-2]  # "h_L" taken one layer early
    with pytest.raises(UnsupportedArchitectureError, match="differ"):
        verify_located(model, located)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_proof_passes_in_half_precision(dtype: torch.dtype) -> None:
    model = build_tiny_model("llama").to(dtype)
    assert verify_located(model, locate(model)) <= 3e-2 * 10


def test_proof_leaves_the_training_mode_alone() -> None:
    model = build_tiny_model("llama").train()
    mode = get_mode_model(model, MoDEConfig(num_layers=2))
    assert model.training and mode.head_path_difference == 0.0


def test_logit_transform_from_config_names() -> None:
    from transformers import AutoConfig

    from modetune.architectures import transform_from_config

    assert transform_from_config(AutoConfig.for_model("cohere", logit_scale=0.5)) == LogitTransform(scale=0.5)
    assert transform_from_config(AutoConfig.for_model("granite", logits_scaling=4.0)) == LogitTransform(scale=0.25)
    assert transform_from_config(AutoConfig.for_model("gemma2", final_logit_softcapping=2.0)).softcap == 2.0
    assert transform_from_config(AutoConfig.for_model("recurrent_gemma", logits_soft_cap=30.0)).softcap == 30.0
    assert transform_from_config(AutoConfig.for_model("llama")) == LogitTransform()


def test_a_module_that_is_not_a_causal_lm_is_refused() -> None:
    from modetune.errors import ModetuneError

    with pytest.raises(ModetuneError, match=r"needs a transformers \*ForCausalLM.*got Linear"):
        get_mode_model(torch.nn.Linear(4, 4))


def test_encoder_models_are_refused_with_the_reason() -> None:
    model = _build("bert")
    with pytest.raises(UnsupportedArchitectureError, match="encoder model"):
        get_mode_model(model)


# -- mixture-of-experts base models: the auxiliary load-balancing loss ----------------------------------
MOE_TYPES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "phimoe", "gpt_oss", "jetmoe"]


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_aux_loss_is_included_exactly_as_the_base_model_does(model_type: str) -> None:
    model = _build(model_type)
    model.config.output_router_logits = True
    batch = checks.dummy_inputs(model)
    labels = batch["input_ids"].clone()
    labels[:, :2] = -100
    with torch.no_grad():
        base = model(**batch, labels=labels, use_cache=False)
        mode = get_mode_model(model, MoDEConfig(num_layers=1, loss_implementation="reference"))
        ours = mode(**batch, labels=labels, use_cache=False)
    assert base.aux_loss is not None and ours.aux_loss is not None
    assert torch.allclose(ours.aux_loss, base.aux_loss, atol=1e-6)
    assert torch.allclose(ours.loss, base.loss, atol=1e-5), (ours.loss, base.loss)
    with torch.no_grad():  # under gradient accumulation the per-batch aux term counts once per optimizer step
        halved = mode(**batch, labels=labels, use_cache=False, micro_batches=2).loss
    weight = getattr(model.config, "router_aux_loss_coef", None) or model.config.aux_loss_coef
    assert torch.allclose(ours.loss - halved, weight / 2 * ours.aux_loss, atol=1e-5)
    model.config.output_router_logits = False  # off: neither adds it
    with torch.no_grad():
        assert mode(**batch, labels=labels, use_cache=False).aux_loss is None
