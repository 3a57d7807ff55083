"""Checkpoint completeness: a half-written checkpoint is never picked up, and pruning keeps the newest."""

from __future__ import annotations

from modetune.training.trainer import CHECKPOINT_MARKER, latest_complete_checkpoint, prune_checkpoints, write_marker


def _ckpt(root, step, complete=True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / "mode_model.safetensors").write_bytes(b"x")
    if complete:
        write_marker(path, {"global_step": step})
    return path


def test_half_written_checkpoint_is_ignored(tmp_path):
    _ckpt(tmp_path, 2)
    good = _ckpt(tmp_path, 4)
    _ckpt(tmp_path, 6, complete=False)  # the process was killed while writing this one
    assert latest_complete_checkpoint(tmp_path) == good
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_prune_keeps_newest_complete_and_drops_stale_partials(tmp_path):
    _ckpt(tmp_path, 2)
    _ckpt(tmp_path, 3, complete=False)
    _ckpt(tmp_path, 4)
    _ckpt(tmp_path, 6)
    partial_newer = _ckpt(tmp_path, 8, complete=False)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert not (partial_newer / CHECKPOINT_MARKER).exists()


def test_a_gathered_state_dict_is_what_gets_saved(tmp_path):
    """Under FSDP / ZeRO-3 the Trainer passes the gathered full state dict to _save: it, not this rank's
    (sharded) parameters, must end up in the saved MoDE weights and PEFT adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import TrainingArguments

    from modetune import MoDEConfig, get_mode_model
    from modetune.training.trainer import MethodTrainer
    from tests.conftest import build_tiny_model

    mode = get_mode_model(get_peft_model(build_tiny_model("llama"), LoraConfig(r=2)), MoDEConfig(num_layers=2))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=mode, args=args)
    gathered = {k: v + 1.0 for k, v in mode.state_dict().items()}  # differs from the module's own values
    trainer._save(str(tmp_path / "saved"), state_dict=gathered)
    mode_weights = load_file(tmp_path / "saved" / "mode_model.safetensors")
    adapter = load_file(tmp_path / "saved" / "adapter_model.safetensors")
    assert mode_weights.keys() == mode.method_state_dict().keys()
    for k, v in mode_weights.items():
        torch.testing.assert_close(v, gathered[k], rtol=0, atol=0)
    lora = {k: v for k, v in gathered.items() if "lora_A" in k}
    assert lora and len(adapter) == 2 * len(lora)
    for k, v in adapter.items():
        source = next(
            g
            for g in gathered
            if g.startswith("model.") and g.replace(".default", "").endswith(k.split("model.", 1)[1])
        )
        torch.testing.assert_close(v, gathered[source], rtol=0, atol=0)


def test_logged_loss_parts_do_not_depend_on_gradient_accumulation(tmp_path, tiny_model_dir):
    """With num_items_in_batch, each micro-batch's loss is its share of the step's mean; the loss and the logged
    parts must be the step's whether it is one batch of 4 or two micro-batches of 2 (same examples, same weights)."""
    import json

    from modetune.cli import main
    from tests.conftest import TINY_TRAIN_ARGS

    def first_log(method: str, batch: str, accum: str) -> dict:
        out = tmp_path / f"{method}-{batch}x{accum}"
        args = ["train", "--model", str(tiny_model_dir), "--output", str(out), *TINY_TRAIN_ARGS, "--method", method,
                "--batch-size", batch, "--grad-accum", accum, "--max-steps", "1", "--logging-steps", "1",
                "--save-steps", "0", "--lora-dropout", "0", "--max-train-samples", "4"]  # fmt: skip
        if method == "mod":
            args += ["--skip-first", "1", "--skip-last", "1"]
        assert main(args) == 0
        return next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line)

    for method, key in (("mode", "ce_ensemble"), ("mod", "lm_loss")):
        whole, accumulated = first_log(method, "4", "1"), first_log(method, "2", "2")
        assert abs(whole[key] - accumulated[key]) < 1e-4, (method, whole, accumulated)  # our logged parts
        # the optimized loss too: MoD's load term (a per-batch mean) is not counted once per micro-batch
        assert abs(whole["loss"] - accumulated["loss"]) < 1e-4, (method, whole, accumulated)
