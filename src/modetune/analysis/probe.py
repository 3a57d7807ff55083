"""Router probe: could a router that reads more than y_L use the late layers' headroom?

`inspect_batches` reports the oracle (pick, per token, the late layer that gives the gold token the highest
probability). The oracle knows the answer; a router does not. The probe asks what part of that headroom a
router can reach from what it could see at inference time. On half of the examples it fits a fresh linear
softmax router g = softmax(x W + b) over the k late layers' (frozen) logits, for several inputs x, by
minimising the mixture's cross-entropy; on the other half it measures the mixture's cross-entropy, and the
other way round (2-fold cross-validation by example). Inputs:

    constant                nothing: the best fixed weighting of the layers (a bias), the baseline of the others
    final_state             y_L, what MoDE's router reads (the paper's)
    all_states              [y_1; ...; y_k], every late layer's normalized state
    confidence              per late layer its entropy and max log-prob, per non-final layer whether its
                            top-1 token is the final layer's (what --router-confidence adds)
    final_state+confidence  both

Held-out CE is exact (full vocabulary). Only the fitting uses a shortcut: each token's mixture is normalised
over the `candidates` tokens most likely under any late layer (the gold token always included), which leaves
out probability mass that is negligible for a trained model and makes a fitting step cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from modetune.analysis.lens import capture_late_states
from modetune.mode.ensemble import confidence_features

PROBE_INPUTS = ("constant", "final_state", "all_states", "confidence", "final_state+confidence")


@torch.no_grad()
def collect_late_logits(
    model: Any, batches: Sequence[dict[str, torch.Tensor]], *, max_tokens: int = 2048
) -> dict[str, torch.Tensor]:
    """Per labelled token (at most `max_tokens`, whole examples): the late layers' normalized states
    `ys` [n, k, d] and logits [n, k, V] (float32: n * k * V * 4 bytes), gold [n], example index [n] and the
    trained router's weights [n, k]."""
    k = len(model.layer_indices)
    parts: dict[str, list[torch.Tensor]] = {"ys": [], "logits": [], "gold": [], "example": [], "gates": []}
    tokens = examples = 0
    with capture_late_states(model) as states:
        for batch in batches:
            if tokens >= max_tokens:
                break
            states.clear()
            batch = {key: value.to(model.device) for key, value in batch.items()}
            labels = batch.pop("labels")
            model(**batch, skip_logits=True)
            mask = labels[:, 1:] != -100
            rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)
            ys = [states[("adapter", i)] for i in range(k - 1)] + [states["final_y"]]
            ys = torch.stack([y[:, :-1][mask].float() for y in ys], dim=1)
            parts["ys"].append(ys.cpu())
            parts["logits"].append(torch.stack([model._project(ys[:, i]).float() for i in range(k)], 1).cpu())
            parts["gold"].append(labels[:, 1:][mask].cpu())
            parts["example"].append((rows[mask] + examples).cpu())
            parts["gates"].append(states["gates"][:, :-1][mask].float().cpu())
            tokens += int(mask.sum())
            examples += labels.shape[0]
    return {name: torch.cat(values) for name, values in parts.items()}


def probe_features(collected: dict[str, torch.Tensor], inputs: Sequence[str] = PROBE_INPUTS) -> dict[str, torch.Tensor]:
    """The router inputs named in `inputs`, [n, features] each, standardised over the tokens."""
    ys, logits = collected["ys"], collected["logits"]
    n, k, _ = ys.shape
    known = {
        "constant": lambda: ys.new_zeros(n, 0),
        "final_state": lambda: ys[:, -1],
        "all_states": lambda: ys.reshape(n, -1),
        "confidence": lambda: confidence_features([logits[:, i] for i in range(k)], lambda z: z, n or 1),
    }
    known["final_state+confidence"] = lambda: torch.cat([known["final_state"](), known["confidence"]()], -1)
    out = {}
    for name in inputs:
        if name not in known:
            raise ValueError(f"unknown probe input {name!r}; allowed: {', '.join(PROBE_INPUTS)}")
        x = known[name]().float()
        out[name] = (x - x.mean(0)) / (x.std(0) + 1e-6) if n > 1 and x.shape[1] else x
    return out


def mixture_ce(gates: torch.Tensor, logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [n] of the logit mixture sum_i g_i * logits_i (MoDE's ensemble)."""
    return F.cross_entropy((gates[:, :, None] * logits).sum(1), gold, reduction="none")


def candidate_logits(logits: torch.Tensor, logp: torch.Tensor, gold: torch.Tensor, candidates: int) -> torch.Tensor:
    """[n, k, C] logits of each token's `candidates` most likely tokens under any late layer (`logp`: the
    log-softmax of `logits`), the gold token first: the fitting's shortcut vocabulary."""
    n, k, vocab = logits.shape
    score = logp.amax(1)
    score[torch.arange(n), gold] = float("inf")
    cand = score.topk(min(candidates, vocab), -1).indices  # [n, C], gold first
    return logits.gather(-1, cand[:, None, :].expand(n, k, cand.shape[-1]))


def fit_router(
    x: torch.Tensor,
    small: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    final_weight: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of softmax(x W + b) minimising the mixture CE on these tokens, over their candidate logits
    `small` [n, k, C] (gold first, see `candidate_logits`); starts from W = 0 and the final layer at
    `final_weight` (MoDE's default start)."""
    n, k, _ = small.shape
    weight = torch.zeros(x.shape[1], k, requires_grad=True)
    start = [0.0] * k
    if k > 1:
        start[-1] = float(torch.log(torch.tensor(final_weight * (k - 1) / (1 - final_weight))))
    bias = torch.tensor(start, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    target = torch.zeros(n, dtype=torch.long)
    with torch.enable_grad():
        for _ in range(steps):
            gates = F.softmax(x @ weight + bias, -1)
            loss = mixture_ce(gates, small, target).mean() + weight_decay * weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weight.detach(), bias.detach()


def _bootstrap_ci(
    delta: torch.Tensor, example: torch.Tensor, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean per-token difference and its 95% CI, resampling whole examples."""
    ids, inverse = example.unique(return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, delta.double())
    counts = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(delta).double())
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(ids), (samples, len(ids)), generator=gen)
    boots = (sums[draws].sum(1) / counts[draws].sum(1)).sort().values
    lo, hi = boots[int(0.025 * samples)], boots[int(0.975 * samples) - 1]
    return float(sums.sum() / counts.sum()), float(lo), float(hi)


def probe_router(
    collected: dict[str, torch.Tensor],
    inputs: Sequence[str] = PROBE_INPUTS,
    *,
    steps: int = 300,
    seed: int = 0,
    candidates: int = 128,
) -> dict[str, Any]:
    """Held-out CE of a router fitted on each input (2-fold by example), next to the final layer alone, the
    trained router and the oracle; each probe's per-token difference to the final layer with a bootstrap CI."""
    logits, gold, example = collected["logits"], collected["gold"], collected["example"]
    n, k, _ = logits.shape
    final_ce = F.cross_entropy(logits[:, -1], gold, reduction="none")
    logp = F.log_softmax(logits, -1)
    gold_lp = logp.gather(-1, gold[:, None, None].expand(n, k, 1))[..., 0]
    small = candidate_logits(logits, logp, gold, candidates)  # once: it does not depend on the router input
    del logp
    result: dict[str, Any] = {
        "tokens": n,
        "examples": int(example.unique().numel()),
        "final_ce": float(final_ce.mean()),
        "trained_router_ce": float(mixture_ce(collected["gates"], logits, gold).mean()),
        "oracle_ce": float(-gold_lp.max(1).values.mean()),
        "probes": {},
    }
    folds = [example % 2 == 0, example % 2 == 1]
    if not all(bool(f.any()) for f in folds):
        raise ValueError("the router probe needs at least two examples (it fits on one half, tests on the other)")
    for name, x in probe_features(collected, inputs).items():
        held_out = torch.empty(n)
        for fit_on, test_on in (folds, folds[::-1]):
            torch.manual_seed(seed)
            weight, bias = fit_router(x[fit_on], small[fit_on], steps=steps)
            gates = F.softmax(x[test_on] @ weight + bias, -1)
            held_out[test_on] = mixture_ce(gates, logits[test_on], gold[test_on])
        delta, lo, hi = _bootstrap_ci(held_out - final_ce, example, seed=seed)
        result["probes"][name] = {"ce": float(held_out.mean()), "minus_final": delta, "ci95": [lo, hi]}
    return result


def probe_markdown(result: dict[str, Any]) -> str:
    """The probe as a Markdown table (lower CE is better; a CI entirely below 0 beats the final layer)."""
    lines = [
        f"Router probe on {result['tokens']} labelled tokens of {result['examples']} examples (held-out CE in "
        "nats per token, 2-fold cross-validation by example):",
        "",
        "| router input | held-out CE | minus final layer [95% CI] |",
        "|---|---|---|",
        f"| final layer alone | {result['final_ce']:.4f} | |",
        f"| the run's trained router (not held out) | {result['trained_router_ce']:.4f} | "
        f"{result['trained_router_ce'] - result['final_ce']:+.4f} |",
    ]
    for name, probe in result["probes"].items():
        lo, hi = probe["ci95"]
        lines.append(f"| probe: {name} | {probe['ce']:.4f} | {probe['minus_final']:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    lines.append(
        f"| oracle (best late layer per token, knows the gold) | {result['oracle_ce']:.4f} | "
        f"{result['oracle_ce'] - result['final_ce']:+.4f} |"
    )
    return "\n".join(lines) + "\n"
