"""How well each late layer predicts on held-out text: its own cross-entropy, and the ensemble's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modetune.data.sft import build_sft_dataset, make_collator


@torch.no_grad()
def layer_losses(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    template: str = "alpaca",
    cutoff_len: int = 256,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Token-weighted mean cross-entropy on the responses of `examples`, per late layer and for the ensemble.

    `model` is a `MoDEModel` (an untrained one shows the logit lens of each late layer through its norm).
    Returns {"ensemble": float, "layers": {layer_index: float}, "router_mean": {layer_index: float}, "tokens": int}.
    """
    dataset = build_sft_dataset(list(examples), tokenizer, template, cutoff_len, train_on_inputs=False)
    collate = make_collator(tokenizer)
    modes = [(module, module.training) for module in model.modules()]  # restored exactly afterwards
    model.eval()
    device = model.device
    k = len(model.layer_indices)
    ens_sum, layer_sum, router_sum, tokens = 0.0, torch.zeros(k), torch.zeros(k), 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {key: value.to(device) for key, value in batch.items()}
        out = model(**batch, skip_logits=True)
        n = int((batch["labels"][:, 1:] != -100).sum())
        ens_sum += float(out.ce_loss) * n
        layer_sum += out.layer_ce.float().cpu() * n
        router_sum += out.router_mean.float().cpu() * n
        tokens += n
    for module, training in modes:
        module.training = training
    layers = model.layer_indices
    return {
        "ensemble": ens_sum / max(tokens, 1),
        "layers": {layers[i]: float(layer_sum[i]) / max(tokens, 1) for i in range(k)},
        "router_mean": {layers[i]: float(router_sum[i]) / max(tokens, 1) for i in range(k)},
        "tokens": tokens,
    }
