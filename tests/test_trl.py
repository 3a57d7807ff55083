"""TRL: LoRA + MoDE trained by trl.SFTTrainer's pipeline (MoDESFTTrainer) with MoDE's own loss."""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig  # noqa: E402

from modetune import MoDEConfig, MoDEModel, get_mode_model  # noqa: E402
from modetune.errors import ConfigError  # noqa: E402
from modetune.integrations.trl import MoDESFTTrainer  # noqa: E402


def _dataset():
    return datasets.Dataset.from_dict(
        {
            "prompt": [f"Question: what is {i} plus 1? Answer:" for i in range(24)],
            "completion": [f" {i + 1}. The answer is {i + 1}." for i in range(24)],
        }
    )


def _model(model_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_mode_model(get_peft_model(base, lora), MoDEConfig(num_layers=3, router_init="uniform"))


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "trl-out"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                  logging_steps=1, max_length=64, save_strategy="no", report_to=[], use_cpu=True,
                  gradient_checkpointing=False, bf16=False, seed=0)  # fmt: skip
    values.update(overrides)
    return SFTConfig(**values)


def test_sft_trainer_trains_with_the_mode_loss(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _model(tiny_model_dir)
    reference = copy.deepcopy(model).eval()  # the model as it was before the first update
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs) if not seen else None, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    trainer = MoDESFTTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), processing_class=tokenizer)
    assert "forward" not in model.__dict__  # TRL's final-layer fused head was not patched in
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3

    # each logged loss is MoDE's: ensemble CE + lambda * distillation
    lam = model.mode_config.distill_weight
    for h in logs:
        assert h["mode/distill"] > 0
        assert h["loss"] == pytest.approx(h["mode/ce_ensemble"] + lam * h["mode/distill"], rel=1e-4)

    # and the first one is what MoDEModel computes on that batch (completion-only labels from TRL's collator)
    batch = {k: v for k, v in seen[0].items() if k in ("input_ids", "attention_mask", "labels")}
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    with torch.no_grad():
        expected = reference(**batch)
        plain_ce = reference.causal_lm(**batch).loss  # what a plain SFT loss of the final layer would be
    assert logs[0]["loss"] == pytest.approx(float(expected.loss), rel=1e-4)
    assert abs(float(plain_ce) - logs[0]["loss"]) > 1e-3

    # router, per-layer adapters and LoRA all trained
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("router") for n in changed)
    assert any(n.startswith("adapters") for n in changed)
    assert any("lora_" in n for n in changed)

    # saved and reloaded onto a fresh base: identical outputs
    model.save_pretrained(tmp_path / "saved")
    reloaded = MoDEModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "saved")
    model.eval()
    ids = tokenizer("Question: what is 3 plus 1? Answer:", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, reloaded(**ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "kwargs", "message"),
    [
        ({"loss_type": "dft"}, {}, "loss_type='dft'"),
        ({"label_smoothing_factor": 0.1}, {}, "label_smoothing_factor"),
        ({"use_liger_kernel": True}, {}, "loss_implementation='liger'"),
        ({}, {"compute_loss_func": lambda *a, **k: 0}, "compute_loss_func"),
        ({}, {"peft_config": LoraConfig(r=4)}, "wrap the base with PEFT first"),
    ],
)
def test_features_that_bypass_the_mode_loss_are_refused(tiny_model_dir, tmp_path, overrides, kwargs, message):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match=message):
        MoDESFTTrainer(model=_model(tiny_model_dir), args=_args(tmp_path, **overrides), train_dataset=_dataset(),
                       processing_class=tokenizer, **kwargs)  # fmt: skip


def test_plain_models_and_plain_sft_trainer(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match="trains a MoDEModel"):
        MoDESFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=_args(tmp_path),
                       train_dataset=_dataset(), processing_class=tokenizer)  # fmt: skip
