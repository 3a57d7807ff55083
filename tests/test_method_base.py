"""The glue MoDE and MoD share (`modetune.method_base`): one save/load path, counts, and a quiet console."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.utils import logging as hf_logging

from modetune.errors import CheckpointError
from modetune.method_base import MethodModel
from modetune.mod import MoDConfig, MoDModel, get_mod_model
from modetune.mode import MoDEConfig, MoDEModel, get_mode_model
from tests.conftest import build_tiny_model

METHODS = {
    "mode": (lambda m: get_mode_model(m, MoDEConfig(num_layers=2)), MoDEModel),
    "mod": (lambda m: get_mod_model(m, MoDConfig(skip_first=1, skip_last=1, threshold=0.5)), MoDModel),
}


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tiny_model("llama", num_hidden_layers=5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_both_methods_save_and_load_through_the_shared_base(method, tmp_path):
    wrap, cls = METHODS[method]
    model = wrap(get_peft_model(_base(), LoraConfig(r=2, target_modules=["q_proj"])))
    assert isinstance(model, MethodModel)
    with torch.no_grad():  # make the method's own weights differ from their initialisation
        for module in model.method_modules().values():
            for p in module.parameters():
                p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(3, 90, (2, 7))
    model.eval()
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / cls.weights_name).is_file() and (tmp_path / cls.config_class.config_name).is_file()
    loaded = cls.from_pretrained(_base(), tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=0)
    assert loaded.method_config == model.method_config
    assert not any(p.requires_grad for m in loaded.method_modules().values() for p in m.parameters())
    counts = model.trainable_parameter_counts()
    own = sum(p.numel() for m in model.method_modules().values() for p in m.parameters())
    assert counts[cls.counts_key] == own and counts["trainable"] == own + counts["peft"] > own


def test_a_run_of_one_method_is_refused_by_the_other(tmp_path):
    get_mode_model(_base(), MoDEConfig(num_layers=2)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"mod_config\.json is missing"):
        MoDModel.from_pretrained(_base(), tmp_path)


def test_state_prefixes_name_exactly_the_method_weights():
    for wrap, _ in METHODS.values():
        model = wrap(_base())
        mine = {k for k in model.state_dict() if k.startswith(model.state_prefixes)}
        assert mine == set(model.method_state_dict())


def test_saving_a_peft_run_does_not_ask_the_hub_about_the_vocabulary(tmp_path):
    """PEFT's save_embedding_layers='auto' looks the base model's id up on the Hub; offline it warns."""
    base = _base()
    base.name_or_path = base.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as our loader sets it
    model = get_mode_model(get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])), MoDEConfig(num_layers=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "config file" in m or "remote file" in m], messages


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_cache_deprecation_warning_from_our_calls(method):
    """transformers 5.24 renamed `past_key_values` to `cache`; reading the old name logs a deprecation."""
    wrap, _ = METHODS[method]
    model = wrap(_base()).eval()
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    hf_logging.warning_once.cache_clear()  # the warning is logged once per process: make it visible here
    try:
        ids = torch.randint(3, 90, (1, 6))
        model(input_ids=ids, labels=ids, use_cache=False)  # a training forward
        model(input_ids=ids, use_cache=True)
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "deprecated" in m], records.messages


def test_fingerprint_reads_a_zero3_partitioned_head_by_its_full_shape():
    """Under DeepSpeed ZeRO-3 a rank's head weight is an empty partition carrying its whole shape in ds_shape."""
    from modetune.method_base import fingerprint_of

    base = _base()
    whole = fingerprint_of(base)
    head = base.get_output_embeddings()
    shape = head.weight.shape
    head.weight = torch.nn.Parameter(torch.empty(0))  # what a ZeRO-3 rank holds
    head.weight.ds_shape = shape
    assert fingerprint_of(base) == whole and whole["vocab_size"] == shape[0] > 0
