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
