"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU with gloo: MoDE's router and adapters shard, train like
one process, and a full state dict gathered on save is what `MethodTrainer._save` writes.

Raw torch, not `accelerate launch --config_file configs/accelerate/fsdp.yaml`: on a machine without CUDA the
installed accelerate cannot select FSDP (it sets `DistributedType.FSDP` only when the process group is of a
GPU-like type, and on CPU it is `MULTI_CPU` or, with `use_cpu=False`, `NO`), so the Trainer path is untested here;
see README "Scaling". Slow (two spawned processes import torch, transformers and PEFT on a loaded 2-core machine):
`pytest -m slow tests/training/test_fsdp.py`.
Measured (2 ranks x 2 sequences vs 1 process x 4, 4 AdamW steps, float32): MoDE + LoRA weights max |diff| 1.3e-7,
per-step losses 2.1e-7 relative; the tolerances below (as tests/training/test_ddp.py) leave room for other summation
orders. Without a GPU, accelerate runs configs/accelerate/fsdp.yaml as DDP (MULTI_CPU); checked by hand.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.training.equivalence import LOSS_RTOL, WEIGHT_ATOL

pytestmark = pytest.mark.slow
WORLD = 2
STEPS = 4


def _batches() -> list[dict[str, torch.Tensor]]:
    """STEPS global batches of 4 sequences (some left padding, prompt tokens labelled -100)."""
    from tests.conftest import VOCAB

    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(3, VOCAB, (4, 16), generator=g)
        mask = torch.ones_like(ids)
        ids[1, :4], mask[1, :4] = 0, 0
        ids[3, :2], mask[3, :2] = 0, 0
        labels = ids.clone()
        labels[:, :6] = -100
        labels[mask == 0] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _model():
    from peft import LoraConfig, get_peft_model

    from modetune import MoDEConfig, get_mode_model
    from tests.conftest import build_tiny_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_mode_model(
        get_peft_model(build_tiny_model("llama"), lora), MoDEConfig(num_layers=3, loss_implementation="chunked")
    ).train()


def _train(mode, rank: int, world: int) -> list[float]:
    """AdamW steps on this rank's rows of each global batch; the loss is this rank's share of the global mean
    (times `world`, because FSDP averages gradients over ranks), as `MethodTrainer._rank_scale` does."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in mode.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for batch in _batches():
        n_items = int((batch["labels"] != -100).sum())
        rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
        out = mode(**{k: v[rows] for k, v in batch.items()}, num_items_in_batch=n_items)
        (out.loss * world).backward()
        optimizer.step()
        optimizer.zero_grad()
        summed = out.loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(summed)
        losses.append(float(summed))
    return losses


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    from modetune.training.trainer import MethodTrainer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mode = _model()
        # shard as accelerate's TRANSFORMER_BASED_WRAP would (each decoder layer), plus MoDE's own modules (each
        # adapter and the router: a ModuleList has no forward, so adapters are sharded one by one), then the root
        for layer in mode._located.layers:
            fully_shard(layer)
        for adapter in mode.adapters:
            fully_shard(adapter)
        fully_shard(mode.router)
        fully_shard(mode)
        sharded = {
            name: [list(p.placements) == [Shard(0)], list(p.to_local().shape), list(p.shape)]
            for name, p in mode.named_parameters()
            if name.startswith(mode.state_prefixes)
            if isinstance(p, DTensor)
        }
        losses = _train(mode, rank, WORLD)
        # what the Trainer does on save under FSDP with FULL_STATE_DICT: gather on every rank, rank 0 writes
        full = get_model_state_dict(mode, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            stub = SimpleNamespace(
                args=SimpleNamespace(should_save=True), trained_model=mode, wraps_method=True, processing_class=None
            )
            MethodTrainer._save(stub, str(Path(out_dir) / "saved"), state_dict=full)
            torch.save({k: v for k, v in full.items() if k.startswith(mode.state_prefixes) or "lora_" in k},
                       Path(out_dir) / "gathered.pt")  # fmt: skip
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "sharded": sharded}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_shards_mode_modules_trains_like_one_process_and_saves_full_weights(tmp_path):
    from safetensors.torch import load_file

    from modetune import MoDEModel

    torch.set_num_threads(1)
    single = _model()
    single_losses = _train(single, 0, 1)
    expected = single.method_state_dict()
    lora = {k: v.detach() for k, v in single.state_dict().items() if "lora_" in k}

    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # every router and adapter parameter is a DTensor split along dim 0: each rank holds a part of it
        assert set(report["sharded"]) == set(expected), report["sharded"]
        for name, (shard0, local, full) in report["sharded"].items():
            assert shard0 and local[0] < full[0], (name, local, full)
        assert report["losses"] == pytest.approx(single_losses, rel=LOSS_RTOL)

    gathered = torch.load(tmp_path / "gathered.pt")
    assert expected.keys() <= gathered.keys() and lora.keys() <= gathered.keys()
    for name, value in {**expected, **lora}.items():
        torch.testing.assert_close(gathered[name], value, rtol=0, atol=WEIGHT_ATOL, msg=name)

    # _save wrote the gathered weights (not a rank's shards), and they load in one process
    saved = tmp_path / "saved"
    for name, value in load_file(saved / "mode_model.safetensors").items():
        torch.testing.assert_close(value, gathered[name], rtol=0, atol=0, msg=name)
    assert len(load_file(saved / "adapter_model.safetensors")) == len(lora)
    from tests.conftest import build_tiny_model

    loaded = MoDEModel.from_pretrained(build_tiny_model("llama"), saved)  # + its PEFT adapter
    single.eval()
    batch = _batches()[0]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, single(**inputs).logits, rtol=0, atol=1e-4)
