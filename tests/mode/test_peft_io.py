"""PEFT composition (LoRA, DoRA, others), merging, Trainer, and refusing bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file

from modetune import CheckpointError, MoDEConfig, MoDEModel, ModetuneError, UnsupportedArchitectureError, get_mode_model
from tests.conftest import build_tiny_model


def _perturbed(mode: MoDEModel) -> MoDEModel:
    with torch.no_grad():
        for p in mode.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return mode.eval()


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_and_dora_train_and_merge(use_dora, batch):
    peft_model = get_peft_model(
        build_tiny_model("llama"), LoraConfig(r=4, target_modules="all-linear", use_dora=use_dora)
    )
    mode = get_mode_model(peft_model, MoDEConfig(num_layers=3))
    assert isinstance(mode.model, PeftModel)
    counts = mode.trainable_parameter_counts()
    assert counts["mode"] == 2 * 32 + 32 * 3 + 3 and counts["peft"] > 0
    mode.train()
    opt = torch.optim.AdamW([p for p in mode.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = mode(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    mode.eval()
    with torch.no_grad():
        before = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mode.merge_and_unload()
        assert not isinstance(mode.model, PeftModel)
        after = mode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_other_peft_methods_compose(batch):
    peft_model = get_peft_model(
        build_tiny_model("llama"),
        IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    )
    mode = get_mode_model(peft_model, MoDEConfig(num_layers=2)).train()
    mode(**batch).loss.backward()
    assert any("ia3" in n for n, p in mode.named_parameters() if p.grad is not None)


def test_prompt_learning_is_refused():
    peft_model = get_peft_model(
        build_tiny_model("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with pytest.raises(ModetuneError, match="virtual tokens"):
        get_mode_model(peft_model, MoDEConfig(num_layers=2))


def test_a_model_outside_the_table_is_discovered_and_a_failed_discovery_is_a_clear_error():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("bloom", vocab_size=64, hidden_size=32, n_layer=2, n_head=4)
    model = AutoModelForCausalLM.from_config(cfg)
    assert get_mode_model(model, MoDEConfig(num_layers=2))._located.source == "discovered"
    model.config.n_layer = 5  # no layer list of that length: discovery must say what it did not find
    with pytest.raises(
        UnsupportedArchitectureError, match=r"model type 'bloom' .*no nn.ModuleList of 5 decoder layers"
    ):
        get_mode_model(model, MoDEConfig(num_layers=2))


def test_mode_only_save_holds_only_mode_weights(tmp_path, batch):
    mode = _perturbed(get_mode_model(build_tiny_model("llama"), MoDEConfig(num_layers=3)))
    mode.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mode_config.json", "mode_model.safetensors"]
    assert set(load_file(tmp_path / "mode_model.safetensors")) == {
        "adapters.0.norm.weight",
        "adapters.1.norm.weight",
        "router.gate.weight",
        "router.gate.bias",
    }
    fingerprint = json.loads((tmp_path / "mode_config.json").read_text())["_extra"]["base_model"]
    assert fingerprint == {
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "vocab_size": 96,
    }
    restored = MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(restored(**batch).logits, mode(**batch).logits, rtol=0, atol=0)
    assert not any(p.requires_grad for p in restored.parameters())
    trainable = MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path, is_trainable=True)
    assert trainable.trainable_parameter_counts()["mode"] > 0


@pytest.mark.parametrize(
    "other,needle",
    [
        (lambda: build_tiny_model("llama", num_hidden_layers=3), "num_hidden_layers: saved 4, given 3"),
        (lambda: build_tiny_model("llama", hidden_size=16, num_attention_heads=2), "hidden_size: saved 32, given 16"),
        (lambda: build_tiny_model("llama", vocab_size=100), "vocab_size: saved 96, given 100"),
        (lambda: build_tiny_model("qwen2"), "architecture: saved 'LlamaForCausalLM', given 'Qwen2ForCausalLM'"),
    ],
)
def test_loading_onto_a_mismatched_base_is_refused(tmp_path, other, needle):
    get_mode_model(
        get_peft_model(build_tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])), num_layers=3
    ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="different base model") as err:
        MoDEModel.from_pretrained(other(), tmp_path)
    assert needle in str(err.value)


def test_corrupt_or_missing_files_are_refused(tmp_path):
    get_mode_model(build_tiny_model("llama"), num_layers=3).save_pretrained(tmp_path)
    weights = tmp_path / "mode_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"mode_model\.safetensors is truncated or corrupt"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    weights.write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"mode_model\.safetensors is missing"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    (tmp_path / "mode_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"mode_config\.json is not valid JSON"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)
    with pytest.raises(CheckpointError, match="is not a directory"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path / "nope")


def test_weights_of_another_mode_config_are_refused(tmp_path):
    get_mode_model(build_tiny_model("llama"), num_layers=3).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "mode_config.json").read_text())
    cfg["adapter"] = "affine"
    (tmp_path / "mode_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match this MoDE configuration"):
        MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path)


def test_transformers_trainer_trains_mode(tmp_path, batch):
    """A user's own transformers.Trainer run: a few steps, loss goes down, save and reload."""
    from transformers import Trainer, TrainingArguments

    rows = [{k: v[i] for k, v in batch.items()} for i in range(2)] * 8
    mode = get_mode_model(get_peft_model(build_tiny_model("llama"), LoraConfig(r=4, target_modules="all-linear")))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=2,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(model=mode, args=args, train_dataset=rows)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    mode.save_pretrained(tmp_path / "saved")
    restored = MoDEModel.from_pretrained(build_tiny_model("llama"), tmp_path / "saved")
    mode.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(**batch).logits, mode(**batch).logits, rtol=0, atol=0)
