"""Small statistics for accuracy numbers, in plain Python (no scipy dependency).

* `wilson_interval`: 95% CI of an accuracy. Unlike the normal approximation it stays inside [0, 1]
  and behaves at 0/n and n/n, which matters for the small ``--limit`` runs people do on CPU.
* `mcnemar_exact`: paired test for two models on the *same* questions. Only the discordant pairs
  (one right, the other wrong) carry information; under H0 each is a fair coin, so the p-value is
  an exact two-sided binomial tail.
* `paired_bootstrap`: CI (and a p-value) for the accuracy difference, resampling questions.
* `sign_flip_exact`: McNemar for a question asked more than once (one answer pair per seed, say). The
  repeats of one question are not independent, so the unit is the question: under H0 its net difference
  (B-only minus A-only over its repeats) is as likely to be negative as positive. With one pair per
  question it is exact McNemar. `paired_bootstrap(..., clusters=...)` resamples those questions likewise,
  and `accuracy_interval` widens one accuracy's Wilson CI by the design effect of the repeats.
* `multi_bootstrap`: the CI of B - A when both were trained under several seeds and tested on the same
  questions: resamples seeds *and* questions (the multi-bootstrap of the MultiBERTs paper, Sellam et al.
  2022), so the interval also covers what another training run would change, not only other questions.
* `holm_adjusted`: p-values adjusted for testing several hypotheses at once (Holm's step-down method: it
  controls the chance of any false claim, like Bonferroni, and is never less powerful).
* `paired_mde`: the smallest difference a paired comparison of n questions detects at 80% power, from the
  rate at which the two models disagree (McNemar's normal approximation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_interval",
    "holm_adjusted",
    "mcnemar_exact",
    "multi_bootstrap",
    "paired_bootstrap",
    "paired_mde",
    "sign_flip_exact",
    "wilson_interval",
]

Z_975 = 1.959963984540054  # two-sided 5%
Z_80 = 0.8416212335729143  # 80% power


def wilson_interval(correct: float, n: float, z: float = Z_975) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes in ``n`` trials (default 95%); (0, 1) if n == 0.
    Both may be effective, non-integer counts (see `accuracy_interval`)."""
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


def sign_flip_exact(question_diffs: Sequence[int]) -> float:
    """Two-sided exact p-value of the sign-flip test on per-question net differences.

    ``question_diffs[k]`` is question k's count of pairs only B got right minus those only A got right,
    over its repeats. Under H0 each nonzero one is as likely to carry either sign, so
    p = P(|sum of ±|d_k|| >= |observed sum|), computed exactly by convolution. 1.0 when all are zero.
    """
    sizes = [abs(int(d)) for d in question_diffs if d]
    if not sizes:
        return 1.0
    total, observed = sum(sizes), abs(sum(int(d) for d in question_diffs))
    probs = np.zeros(2 * total + 1)  # index total + s holds P(sum = s)
    probs[total] = 1.0
    for d in sizes:
        probs = 0.5 * (np.roll(probs, d) + np.roll(probs, -d))  # no wrap-around: |sum| never exceeds total
    sums = np.abs(np.arange(-total, total + 1))
    return min(1.0, float(probs[sums >= observed].sum()))


def paired_bootstrap(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    *,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Bootstrap over questions of ``acc(B) - acc(A)``: the observed difference, a percentile CI, and
    a two-sided p-value (twice the share of resamples on the other side of zero, capped at 1).

    ``clusters`` (one label per pair, e.g. the question of each (seed, question) pair) resamples whole
    clusters, so a question's repeats count together, as they vary together."""
    if len(correct_a) != len(correct_b):
        raise ValueError("paired samples must have the same length")
    if clusters is not None and len(clusters) != len(correct_a):
        raise ValueError("clusters must give one label per pair")
    n = len(correct_a)
    if n == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    diffs = [int(bool(b)) - int(bool(a)) for a, b in zip(correct_a, correct_b, strict=True)]
    observed = sum(diffs) / n
    rng = np.random.default_rng(seed)
    if clusters is None:
        # a question's difference is -1, 0 or +1, so resampling n questions with replacement is one
        # multinomial draw over those three outcomes: exact, and O(n_resamples) whatever n is
        probs = [diffs.count(-1) / n, diffs.count(0) / n, diffs.count(1) / n]
        counts = rng.multinomial(n, probs, size=n_resamples)
        stats = np.sort((counts[:, 2] - counts[:, 0]) / n)
    else:
        stats = _cluster_means(diffs, clusters, n_resamples, rng)
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


def _cluster_totals(clusters: Sequence[Any], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, in order of first appearance: the sum of its values and its size."""
    index: dict[Any, int] = {}
    sums: list[float] = []
    sizes: list[int] = []
    for label, v in zip(clusters, values, strict=True):
        k = index.setdefault(label, len(index))
        if k == len(sums):
            sums.append(0.0)
            sizes.append(0)
        sums[k] += v
        sizes[k] += 1
    return np.asarray(sums), np.asarray(sizes, dtype=float)


def _cluster_means(values: Sequence[float], clusters: Sequence[Any], n_resamples: int, rng) -> np.ndarray:
    """Sorted bootstrap means of ``values`` resampling whole clusters (all of a cluster's values together)."""
    sums, sizes = _cluster_totals(clusters, values)
    c = len(sums)
    parts = []
    for start in range(0, n_resamples, 1000):  # bounded memory: 1000 x clusters counts at a time
        draws = rng.multinomial(c, np.full(c, 1 / c), size=min(1000, n_resamples - start))
        parts.append((draws @ sums) / (draws @ sizes))
    return np.sort(np.concatenate(parts))


def accuracy_interval(correct: Sequence[bool], clusters: Sequence[Any] | None = None) -> tuple[float, float]:
    """95% CI of an accuracy. Wilson when every answer is its own question. When questions repeat (one test
    set under several seeds, the question of each answer in ``clusters``), a question's answers are not
    independent, so Wilson is taken at the effective sample size n / design effect, the design effect from
    the between-question variance of the ratio estimator (Kish), kept between the number of questions and n;
    at 0% or 100% the variance says nothing and n is the number of questions."""
    n = len(correct)
    if clusters is None or n == 0:
        return wilson_interval(sum(bool(c) for c in correct), n)
    if len(clusters) != n:
        raise ValueError("clusters must give one label per answer")
    sums, sizes = _cluster_totals(clusters, [float(bool(c)) for c in correct])
    k = len(sums)
    if k == n:
        return wilson_interval(sum(bool(c) for c in correct), n)
    p = float(sums.sum()) / n
    if p in (0.0, 1.0) or k < 2:
        n_eff = float(k)
    else:
        variance = k / (k - 1) * float(((sums - p * sizes) ** 2).sum()) / n**2
        n_eff = min(float(n), max(float(k), p * (1 - p) / variance)) if variance > 0 else float(n)
    return wilson_interval(p * n_eff, n_eff)


def multi_bootstrap(
    diffs: Sequence[Sequence[int]], *, n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """B - A over seeds and questions: ``diffs[s][q]`` is +1 (only B right), -1 (only A right) or 0 for seed s's
    pair of runs on question q, the same questions in every seed. Each resample draws seeds and questions
    with replacement, independently, and takes the mean over the drawn grid; with one seed it is the paired
    bootstrap over questions. Returns the observed mean difference and the percentile CI."""
    if len({len(row) for row in diffs}) > 1:
        raise ValueError("diffs must be a seeds x questions grid: every seed needs the same questions")
    grid = np.asarray(diffs, dtype=float)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError("diffs must be a non-empty seeds x questions grid (the same questions in every seed)")
    seeds, questions = grid.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # bounded memory: 1000 resamples at a time
        size = min(1000, n_resamples - start)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=size)  # [size, seeds]
        question_counts = rng.multinomial(questions, np.full(questions, 1 / questions), size=size)  # [size, q]
        totals = np.einsum("rs,sq,rq->r", seed_counts, grid, question_counts)
        stats[start : start + size] = totals / (seeds * questions)
    alpha = (1 - confidence) / 2
    return {
        "diff": float(grid.mean()),
        "ci_low": float(np.quantile(stats, alpha)),
        "ci_high": float(np.quantile(stats, 1 - alpha)),
    }


def paired_mde(n: int, disagreement: float) -> float:
    """Minimum detectable difference of a paired comparison of ``n`` answers (80% power, two-sided 5%) when
    the two models disagree on a share ``disagreement`` of them: (z_.975 + z_.8) * sqrt(disagreement / n),
    McNemar's normal approximation at a small difference. nan when n is 0."""
    if n <= 0:
        return math.nan
    if not 0 <= disagreement <= 1:
        raise ValueError(f"disagreement must be a share between 0 and 1, got {disagreement}")
    return (Z_975 + Z_80) * math.sqrt(disagreement / n)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order: the k-th smallest of m is multiplied by (m - k + 1), made
    non-decreasing in that order, capped at 1. Reject where the adjusted p is below the level."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
