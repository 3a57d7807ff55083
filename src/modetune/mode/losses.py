"""MoDE's training loss: ensemble cross-entropy + lambda * distillation of each late layer toward the final one.

With `distill="labels"` the students' terms are their own cross-entropies on the labels instead (no teacher).

Two implementations that give the same numbers:

* `mode_loss_reference` materialises every layer's [tokens x vocab] logits at once. It is the
  straightforward reading of the method and the reference the tests hold the fast path to.
* `mode_loss_liger` (CUDA, optional `liger-kernel`) hands the same terms to Liger-Kernel's fused linear
  cross-entropy and fused linear JSD, which never materialise the logits either. It needs an affine head
  (`LocatedModel.linear_head`) and a detached teacher, and tests hold it to the reference too.
* `mode_loss_chunked` walks over the labelled tokens in chunks. For each chunk it projects, computes the
  loss and, right away, the loss's gradient with respect to its inputs (the normalized hidden states and
  the router weights), then frees the logits. The autograd backward only scales those stored gradients.
  So no more than one chunk of logits per layer is ever alive, and the head is applied exactly as often
  as a plain forward + backward needs (the idea of Liger-Kernel's fused linear cross-entropy, written
  generically so it works for any head, including soft-capped ones). Tokens labelled -100 are dropped
  before any projection.

Conventions shared by both: position t predicts label t+1 (the causal shift), the reduction is a sum over
labelled tokens divided by their count (or by `num_items_in_batch`, as transformers does under gradient
accumulation), and every distillation term is multiplied by T^2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modetune.architectures import LinearHead, LocatedModel
from modetune.mode.config import MoDEConfig
from modetune.mode.ensemble import mix

IGNORE_INDEX = -100
Projector = Callable[[torch.Tensor], torch.Tensor]  # normalized hidden [n, d] -> logits [n, V]


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Per-token distillation term D(teacher, student) * T^2, summed over the vocabulary -> shape [n]."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return divergence_from_logprobs(s, t, kind) * temperature**2


def divergence_from_logprobs(s: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """D(teacher, student) per token from log-probabilities (student s, teacher t)."""
    if kind == "kl":  # KL(p_teacher || p_student)
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse_kl":  # KL(p_student || p_teacher)
        return (s.exp() * (s - t)).sum(-1)
    if kind == "js":
        m = torch.logsumexp(torch.stack([s, t]), dim=0) - math.log(2.0)
        return 0.5 * (s.exp() * (s - m)).sum(-1) + 0.5 * (t.exp() * (t - m)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}")


@dataclass(frozen=True)
class LossPlan:
    """What one forward computes: which layers are distilled and whether per-layer logits are needed."""

    distill: str  # "kl" | "reverse_kl" | "js" | "none"
    distill_weight: float
    temperature: float
    detach_teacher: bool
    students: tuple[int, ...]  # indices (into the k late layers) of the distilled non-final layers
    per_layer: bool  # project every layer (needed for distillation, per-layer metrics, soft-capped heads)
    layer_metrics: bool = True  # report each layer's own cross-entropy (free in the chunked pass when per_layer)


@dataclass
class LossParts:
    """Sums over labelled tokens; divide by `denominator` for means. Only `total` carries gradients."""

    total: torch.Tensor  # ce + distill_weight * sum(distill), divided by the denominator
    ce: torch.Tensor  # ensemble cross-entropy (mean)
    distill: torch.Tensor  # [k-1] per non-final layer (mean; 0 for layers not distilled this step)
    layer_ce: torch.Tensor | None  # [k] each layer's own cross-entropy (mean), when per_layer
    num_tokens: int


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with positions: position t is scored on labels[t+1]; the last position on nothing."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def _chunk_terms(
    ys: list[torch.Tensor], gates: torch.Tensor, targets: torch.Tensor, project: Projector, plan: LossPlan
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Summed losses of one chunk. ys: k tensors [n, d] (normalized hidden states), gates: [n, k], targets: [n].

    Every vocabulary-sized softmax is computed once: one per layer (shared by its own cross-entropy and
    the distillation terms) and one for the ensemble.
    """
    k, n = len(ys), targets.shape[0]
    distill = gates.new_zeros(max(k - 1, 0), dtype=torch.float32)
    if not plan.per_layer:  # affine head: mix hidden states, project once
        ce = F.cross_entropy(project(mix(ys, gates)).float(), targets, reduction="sum")
        return ce, distill, None
    logits = project(torch.cat(ys)).float().view(k, n, -1)  # one projection for all k layers
    ensemble = torch.einsum("knv,nk->nv", logits, gates.float())
    ce = F.cross_entropy(ensemble, targets, reduction="sum")
    T = plan.temperature
    logprobs = F.log_softmax(logits if T == 1.0 else logits / T, dim=-1)  # [k, n, V]
    with torch.no_grad():
        own = logprobs if T == 1.0 else F.log_softmax(logits, dim=-1)
        layer_ce = -own.gather(-1, targets.expand(k, n).unsqueeze(-1)).squeeze(-1).sum(-1)
    if plan.distill == "labels" and plan.students:  # the config holds T at 1 here
        terms = [F.cross_entropy(logits[i], targets, reduction="sum") for i in plan.students]
        distill = distill.index_put((torch.tensor(plan.students, device=distill.device),), torch.stack(terms))
    elif plan.distill != "none" and plan.students:
        teacher = logprobs[-1].detach() if plan.detach_teacher else logprobs[-1]
        terms = [divergence_from_logprobs(logprobs[i], teacher, plan.distill).sum() * T**2 for i in plan.students]
        distill = distill.index_put((torch.tensor(plan.students, device=distill.device),), torch.stack(terms))
    return ce, distill, layer_ce


def mode_loss_reference(
    ys: torch.Tensor | list[torch.Tensor],
    gates: torch.Tensor,
    labels: torch.Tensor,
    project: Projector,
    plan: LossPlan,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossParts:
    """Straightforward MoDE loss. ys: k x [B, T, d], gates: [B, T, k], labels: [B, T] (unshifted)."""
    ys = torch.stack(list(ys))
    k = ys.shape[0]
    logits = torch.stack([project(ys[i]).float() for i in range(k)])  # [k, B, T, V]
    ensemble = torch.einsum("kbtv,btk->btv", logits, gates.float())
    targets = shift_labels(labels)
    valid = targets != IGNORE_INDEX
    n = int(valid.sum())
    denom = _denominator(n, num_items_in_batch, ys.device)
    ce = F.cross_entropy(ensemble.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    layer_ce = torch.stack(
        [
            F.cross_entropy(logits[i].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            for i in range(k)
        ]
    ).detach()
    distill = ys.new_zeros(max(k - 1, 0), dtype=torch.float32)
    if plan.distill != "none" and plan.students:
        teacher = logits[-1].detach() if plan.detach_teacher else logits[-1]
        for i in plan.students:
            if plan.distill == "labels":
                per_token = F.cross_entropy(logits[i][valid], targets[valid], reduction="none")
            else:
                per_token = divergence(logits[i][valid], teacher[valid], plan.distill, plan.temperature)
            distill = distill.index_put((torch.tensor([i], device=distill.device),), per_token.sum().reshape(1))
    total = (ce + plan.distill_weight * distill.sum()) / denom
    return LossParts(total, (ce / denom).detach(), (distill / denom).detach(), layer_ce / denom, n)


class _ChunkedMoDELoss(torch.autograd.Function):
    """Forward computes loss and input gradients chunk by chunk; backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, ys, gates, targets, project, plan, chunk_size, needs_grad, slot_grads, *head_params):  # type: ignore[override]
        k, n, _ = ys.shape
        grad_ys = torch.zeros_like(ys) if needs_grad else None
        grad_gates = torch.zeros_like(gates) if needs_grad else None
        grad_params = [torch.zeros_like(p) for p in head_params] if needs_grad else []
        total = ys.new_zeros((), dtype=torch.float32)
        ce = ys.new_zeros((), dtype=torch.float32)
        distill = ys.new_zeros(max(k - 1, 0), dtype=torch.float32)
        layer_ce = ys.new_zeros(k, dtype=torch.float32) if plan.per_layer else None
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            # only slots whose hidden state needs a gradient get one (e.g. not the final layer in MoDE-only)
            y = [ys[i, sl].detach().requires_grad_(needs_grad and slot_grads[i]) for i in range(k)]
            g = gates[sl].detach().requires_grad_(needs_grad)
            with torch.enable_grad():
                c_ce, c_distill, c_layer = _chunk_terms(y, g, targets[sl], project, plan)
                c_total = c_ce + plan.distill_weight * c_distill.sum()
                if needs_grad:
                    wrt = [t for t in y if t.requires_grad] + [g, *head_params]
                    grads = list(torch.autograd.grad(c_total, wrt, allow_unused=True))
                    for i in range(k):
                        if y[i].requires_grad:
                            grad_ys[i, sl] = grads.pop(0)
                    grad_gates[sl] = grads.pop(0)
                    for acc, grad in zip(grad_params, grads, strict=True):
                        if grad is not None:
                            acc += grad
            total += c_total.detach()
            ce += c_ce.detach()
            distill += c_distill.detach()
            if layer_ce is not None:
                layer_ce += c_layer
        ctx.save_for_backward(grad_ys, grad_gates, *grad_params)
        if layer_ce is None:
            layer_ce = ys.new_full((k,), float("nan"), dtype=torch.float32)
        ctx.mark_non_differentiable(ce, distill, layer_ce)
        return total, ce, distill, layer_ce

    @staticmethod
    def backward(ctx, grad_total, *_unused):  # type: ignore[override]
        grad_ys, grad_gates, *grad_params = ctx.saved_tensors
        if grad_ys is None:
            raise RuntimeError("MoDE chunked loss was computed without gradients (no_grad or frozen inputs)")
        scale = grad_total.to(grad_ys.dtype)
        params = [g * scale.to(g.dtype) for g in grad_params]
        return grad_ys * scale, grad_gates * scale.to(grad_gates.dtype), None, None, None, None, None, None, *params


def auto_chunk_size(vocab_size: int, num_layers: int = 1, budget: int = 1 << 23) -> int:
    """Largest power of two with chunk * vocab * layers <= budget logits (at least 8 tokens), so the live
    chunk's memory does not grow with k."""
    per_token = max(1, vocab_size) * max(1, num_layers)
    return max(8, 1 << max(0, int(math.log2(max(1, budget // per_token)))))


def mode_loss_chunked(
    ys: torch.Tensor | list[torch.Tensor],
    gates: torch.Tensor,
    labels: torch.Tensor,
    project: Projector,
    plan: LossPlan,
    chunk_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    head_params: tuple[torch.nn.Parameter, ...] = (),
) -> LossParts:
    """Same numbers as `mode_loss_reference`, without ever holding more than a chunk of logits per layer.

    `head_params`: trainable parameters inside `project` (e.g. LoRA on a pre-head projection, or a head in
    PEFT's modules_to_save); their gradients are accumulated chunk by chunk like the inputs'.
    """
    slot_grads = tuple(y.requires_grad for y in ys)
    layers, gates_valid, targets_valid, n, denom = _labelled_positions(ys, gates, labels, num_items_in_batch)
    ys_valid = torch.stack(layers)  # [k, n, d]
    needs_grad = torch.is_grad_enabled() and (
        any(slot_grads) or gates_valid.requires_grad or any(p.requires_grad for p in head_params)
    )
    total, ce, distill, layer_ce = _ChunkedMoDELoss.apply(
        ys_valid, gates_valid, targets_valid, project, plan, chunk_size, needs_grad, slot_grads, *head_params
    )
    layer = None if torch.isnan(layer_ce).any() else layer_ce / denom
    return LossParts(total / denom, ce / denom, distill / denom, layer, n)


LIGER_BETA = {"kl": 0.0, "reverse_kl": 1.0, "js": 0.5}  # Liger's generalized JSD: beta 0 / 1 = forward / reverse KL


def liger_unavailable(located: LocatedModel, config: MoDEConfig, device: torch.device | None) -> str:
    """Why `mode_loss_liger` cannot run for this model and config ('' when it can); device=None: any device."""
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install 'modetune[liger]'), or use 'chunked'"
    head, reason = located.linear_head()
    if reason:
        return f"{reason}; use 'chunked' (or 'auto')"
    if not config.mix_in_hidden_space:
        return "mix_in_hidden_space=False asks for per-layer logits, while Liger mixes hidden states; use 'chunked'"
    if config.uses_teacher and not config.distill_detach_teacher:
        return "Liger's fused JSD does not send gradients to the teacher; set distill_detach_teacher=True"
    if config.uses_teacher and head.bias is not None:
        return "Liger's fused JSD takes no head bias; use 'chunked'"
    if device is not None and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"its Triton kernels need a CUDA device (this loss runs on {device.type}); use 'chunked'"
    return ""


def mode_loss_liger(
    ys: torch.Tensor | list[torch.Tensor],
    gates: torch.Tensor,
    labels: torch.Tensor,
    head: LinearHead,
    plan: LossPlan,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossParts:
    """Same numbers as `mode_loss_reference`, through Liger-Kernel's fused kernels (one Triton pass per term).

    The ensemble cross-entropy is one fused projection of the mixed hidden state; each distilled layer is one
    fused linear JSD against the (detached) final layer; per-layer metrics, when asked for, are extra
    forward-only fused cross-entropies.
    """
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy, liger_fused_linear_jsd

    if plan.distill not in ("none", "labels") and plan.students and not plan.detach_teacher:
        raise ValueError("the Liger loss distills into a detached teacher only (distill_detach_teacher=True)")
    ys_valid, gates_valid, targets_valid, n, denom = _labelled_positions(ys, gates, labels, num_items_in_batch)
    k = len(ys_valid)

    def fused_ce(x: torch.Tensor) -> torch.Tensor:
        return liger_fused_linear_cross_entropy(
            head.prepare(x), head.weight, targets_valid, bias=head.bias, reduction="sum"
        ).float()

    mixed = mix(ys_valid, gates_valid)
    ce = fused_ce(mixed) if n else mixed.sum() * 0.0
    distill = gates.new_zeros(max(k - 1, 0), dtype=torch.float32)
    if plan.distill == "labels" and plan.students and n:
        terms = [fused_ce(ys_valid[i]) for i in plan.students]
        distill = distill.index_put((torch.tensor(plan.students, device=distill.device),), torch.stack(terms))
    elif plan.distill != "none" and plan.students and n:
        T = plan.temperature
        teacher = head.prepare(ys_valid[-1]).detach()
        terms = [
            liger_fused_linear_jsd(
                head.prepare(ys_valid[i]),
                head.weight,
                teacher,
                head.weight,
                None,
                LIGER_BETA[plan.distill],
                IGNORE_INDEX,
                T,
            ).float()
            * (n * T**2)  # Liger averages over tokens and does not scale by T^2
            for i in plan.students
        ]
        distill = distill.index_put((torch.tensor(plan.students, device=distill.device),), torch.stack(terms))
    layer_ce = None
    if plan.layer_metrics and n:
        with torch.no_grad():
            layer_ce = torch.stack([fused_ce(y) for y in ys_valid]) / denom
    total = (ce + plan.distill_weight * distill.sum()) / denom
    return LossParts(total, (ce / denom).detach(), (distill / denom).detach(), layer_ce, n)


def _labelled_positions(
    ys: torch.Tensor | list[torch.Tensor],
    gates: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """k x [n, d] hidden states, [n, k] gates and [n] targets at the labelled positions only (unlabelled ones
    never reach the head), n, and the loss denominator."""
    targets = shift_labels(labels)
    valid = targets != IGNORE_INDEX
    n = int(valid.sum())
    denom = _denominator(n, num_items_in_batch, gates.device)
    return [y[valid] for y in ys], gates[valid], targets[valid], n, denom


def _denominator(n: int, num_items_in_batch: int | torch.Tensor | None, device: torch.device) -> torch.Tensor:
    value = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
    return torch.as_tensor(value, dtype=torch.float32, device=device).clamp_min(1)


def pick_students(num_layers: int, schedule: str, step: int) -> tuple[int, ...]:
    """Non-final layers to distill this step: all of them, or one in turn ('rotate')."""
    students = tuple(range(num_layers - 1))
    if schedule == "rotate" and students:
        return (students[step % len(students)],)
    return students


def summarize_gates(gates: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean routing weight per layer and mean per-token routing entropy (nats) over unmasked positions."""
    g = gates.detach().float().reshape(-1, gates.shape[-1])
    if mask is not None:
        g = g[mask.reshape(-1).bool()]
    if g.numel() == 0:
        nan = gates.new_full((gates.shape[-1],), float("nan"), dtype=torch.float32)
        return nan, nan[0]
    entropy = -(g * g.clamp_min(1e-12).log()).sum(-1).mean()
    return g.mean(0), entropy
