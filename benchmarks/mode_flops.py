"""Matmul FLOP counts for a decoder-only LM, to predict the cost ratios `benchmarks/run.py` measures.

Only matrix products are counted (2 FLOPs per multiply-add); norms, activations, softmaxes and the
optimizer are left out. Per token, the forward of the L decoder layers costs W (every `nn.Linear` in them:
2·in·out summed) plus attention L·4·T·a (per layer, scores QKᵀ 2·T·a and the weighted sum 2·T·a;
a = heads × head_dim, T = the sequence length, no causal discount). The LM head costs H = 2·d·V per
projected position.

Backward of a matmul with a frozen weight needs only the input gradient (1× its forward); a trainable
weight (LoRA A and B, the router) needs the weight gradient too (2×). Attention has no weights; its
backward is 2× its forward. So, with N tokens, n labelled positions, R = LoRA forward per token
(2·r·(in+out) per adapted linear), P = head projections per labelled position (k when the step projects
every late layer: distillation or per-layer metrics; 1 when the ensemble is mixed in hidden space):

    LoRA (HF loss, logits at every position)   N·(2W + 3·R + 3·L·4Ta) + 2·N·H
    LoRA + MoDE(k)                             N·(2W + 3·R + 3·L·4Ta) + 2·n·P·H + 6·N·d·k
    MoDE-only(k) (frozen base)                 N·(W + L·4Ta) + n·P·H + n·B·H + 4·N·d·k

where B, the head projections whose input gradient MoDE-only needs, is the k-1 adapted layers when every
layer is projected (the final layer's normalized state carries no gradient: backward stops at the adapters,
before any decoder layer) or 1 when the mix is projected once. `implemented=True` counts what modetune's
chunked loss computes instead (an input gradient for all P projections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelShape:
    """The sizes the FLOP count needs, read off a live model (so any architecture in the table works)."""

    num_layers: int
    hidden: int
    vocab: int
    attn_width: int  # heads × head_dim: width of the queries and of the attention output
    linear_flops: int  # forward FLOPs per token of every nn.Linear in all decoder layers
    lora_flops: int  # forward FLOPs per token of the LoRA branches (rank `lora_r`) on all those linears
    lora_r: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_shape(causal_lm: nn.Module, lora_r: int = 8) -> ModelShape:
    """Count the decoder layers' linear layers of a plain (not yet PEFT-wrapped) `*ForCausalLM`."""
    from modetune.architectures import locate

    located = locate(causal_lm)
    linear = lora = 0
    for layer in located.layers:
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                linear += 2 * module.in_features * module.out_features
                lora += 2 * lora_r * (module.in_features + module.out_features)
    cfg = causal_lm.config.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return ModelShape(
        num_layers=len(located.layers),
        hidden=cfg.hidden_size,
        vocab=int(located.head.weight.shape[0]),
        attn_width=heads * head_dim,
        linear_flops=linear,
        lora_flops=lora,
        lora_r=lora_r,
    )


def head_flops(shape: ModelShape) -> int:
    """H: one vocabulary projection of one position."""
    return 2 * shape.hidden * shape.vocab


def attention_flops(shape: ModelShape, context: int) -> int:
    """Attention of one token over `context` positions, summed over the layers (forward)."""
    return shape.num_layers * 4 * context * shape.attn_width


def train_step_flops(
    shape: ModelShape,
    method: str,
    *,
    batch: int,
    seq: int,
    labelled: int,
    k: int = 3,
    per_layer: bool = True,
    implemented: bool = False,
) -> dict[str, float]:
    """Matmul FLOPs of one forward + backward, split into parts; `method` is lora, lora+mode or mode-only."""
    n_tok = batch * seq
    attn = attention_flops(shape, seq)
    head = head_flops(shape)
    projections = k if (per_layer and k > 1) else 1
    parts: dict[str, float] = {}
    if method == "lora":
        parts["backbone_fwd"] = n_tok * (shape.linear_flops + attn)
        parts["backbone_bwd"] = n_tok * (shape.linear_flops + 2 * attn)
        parts["lora"] = 3 * n_tok * shape.lora_flops
        parts["head_fwd"] = n_tok * head
        parts["head_bwd"] = n_tok * head
    elif method == "lora+mode":
        parts["backbone_fwd"] = n_tok * (shape.linear_flops + attn)
        parts["backbone_bwd"] = n_tok * (shape.linear_flops + 2 * attn)
        parts["lora"] = 3 * n_tok * shape.lora_flops
        parts["head_fwd"] = labelled * projections * head
        parts["head_bwd"] = labelled * projections * head
        parts["router"] = 6 * n_tok * shape.hidden * k
    elif method == "mode-only":
        parts["backbone_fwd"] = n_tok * (shape.linear_flops + attn)
        parts["backbone_bwd"] = 0
        parts["head_fwd"] = labelled * projections * head
        # minimal: only the adapted (non-final) layers' states carry gradients
        minimal = (k - 1) if projections > 1 else (1 if k > 1 else 0)
        needed = projections if implemented else minimal
        parts["head_bwd"] = labelled * needed * head
        parts["router"] = 4 * n_tok * shape.hidden * k
    else:
        raise ValueError(f"unknown method {method!r}")
    parts["total"] = float(sum(parts.values()))
    return parts


def inference_flops(shape: ModelShape, *, tokens: int, context: int, projected: int, mode_k: int | None) -> float:
    """Forward FLOPs of `tokens` positions attending over `context` positions on average, `projected` of
    them through the head; `mode_k` adds MoDE's router and hidden-space mixing (2·d·k each per token)."""
    total = tokens * (shape.linear_flops + attention_flops(shape, context)) + projected * head_flops(shape)
    if mode_k is not None:
        total += tokens * 4 * shape.hidden * mode_k
    return float(total)


def generation_flops(shape: ModelShape, *, batch: int, prompt: int, new_tokens: int, mode_k: int | None) -> float:
    """Greedy decoding with a KV cache: the prompt once (head on its last position), then one token a step."""
    total = inference_flops(shape, tokens=batch * prompt, context=prompt, projected=batch, mode_k=mode_k)
    for step in range(1, new_tokens):
        total += inference_flops(shape, tokens=batch, context=prompt + step, projected=batch, mode_k=mode_k)
    return total
