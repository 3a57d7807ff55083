"""Small statistics for accuracy numbers, in plain Python (no scipy dependency).

* `wilson_interval`: 95% CI of an accuracy. Unlike the normal approximation it stays inside [0, 1]
  and behaves at 0/n and n/n, which matters for the small ``--limit`` runs people do on CPU.
* `mcnemar_exact`: paired test for two models on the *same* questions. Only the discordant pairs
  (one right, the other wrong) carry information; under H0 each is a fair coin, so the p-value is
  an exact two-sided binomial tail.
* `paired_bootstrap`: CI (and a p-value) for the accuracy difference, resampling questions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mcnemar_exact", "paired_bootstrap", "wilson_interval"]


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes in ``n`` trials (default 95%); (0, 1) if n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} must be between 0 and n={n}")
    p = correct / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return (lo, hi)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (A right/B wrong, B right/A wrong).

    p = min(1, 2 * P[X <= min(b, c)]) with X ~ Binomial(b + c, 1/2); 1.0 when there are no
    discordant pairs. Exact integer arithmetic, so it is accurate for thousands of pairs.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Bootstrap over questions of ``acc(B) - acc(A)``: the observed difference, a percentile CI, and
    a two-sided p-value (twice the share of resamples on the other side of zero, capped at 1)."""
    if len(correct_a) != len(correct_b):
        raise ValueError("paired samples must have the same length")
    n = len(correct_a)
    if n == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    diffs = [int(bool(b)) - int(bool(a)) for a, b in zip(correct_a, correct_b, strict=True)]
    observed = sum(diffs) / n
    # a question's difference is -1, 0 or +1, so resampling n questions with replacement is one
    # multinomial draw over those three outcomes: exact, and O(n_resamples) whatever n is
    probs = [diffs.count(-1) / n, diffs.count(0) / n, diffs.count(1) / n]
    counts = np.random.default_rng(seed).multinomial(n, probs, size=n_resamples)
    stats = np.sort((counts[:, 2] - counts[:, 0]) / n)
    alpha = (1 - confidence) / 2
    lo = float(np.quantile(stats, alpha))
    hi = float(np.quantile(stats, 1 - alpha))
    if observed > 0:
        p = 2 * float(np.mean(stats <= 0))
    elif observed < 0:
        p = 2 * float(np.mean(stats >= 0))
    else:
        p = 1.0
    return {"diff": observed, "ci_low": lo, "ci_high": hi, "p_value": min(1.0, p)}
