"""Confidence intervals and paired tests against known values."""

from __future__ import annotations

import math

import pytest

from modetune.evaluation.stats import (
    accuracy_interval,
    holm_adjusted,
    mcnemar_exact,
    multi_bootstrap,
    paired_bootstrap,
    paired_mde,
    sign_flip_exact,
    wilson_interval,
)


def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    # b=2, c=8: 2 * P[X <= 2], X ~ Bin(10, .5) = 2 * 56/1024
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(8, 2) == mcnemar_exact(2, 8)
    # large counts stay finite and sensible
    p = mcnemar_exact(1500, 1600)
    assert 0 < p < 1 and math.isfinite(p)


def test_mcnemar_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 11), (20, 31), (0, 7), (40, 40)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_paired_bootstrap():
    same = paired_bootstrap([True, False] * 20, [True, False] * 20)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    better = paired_bootstrap([False] * 50, [True] * 50)
    assert better["diff"] == 1.0 and better["ci_low"] == 1.0 and better["p_value"] == 0.0
    a = [True] * 30 + [False] * 70
    b = [True] * 30 + [True] * 20 + [False] * 50
    res = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    assert res["diff"] == pytest.approx(0.2)
    assert res["ci_low"] > 0.1 and res["ci_high"] < 0.3
    assert res["p_value"] < 0.01
    assert paired_bootstrap(a, b, n_resamples=4000, seed=3) == res  # seeded
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def test_sign_flip_is_exact_mcnemar_for_questions_asked_once():
    for only_a, only_b in [(5, 18), (0, 3), (2, 14), (10, 10), (100, 130)]:
        diffs = [-1] * only_a + [1] * only_b + [0] * 9
        assert sign_flip_exact(diffs) == pytest.approx(mcnemar_exact(only_a, only_b), rel=1e-9)
    assert sign_flip_exact([0, 0]) == 1.0


def test_sign_flip_enumerates_the_signs_of_repeated_questions():
    diffs = [2, -1, 3, 0, 1]  # nets over seeds; the 16 sign patterns of (2, 1, 3, 1) by brute force
    import itertools

    observed = abs(sum(diffs))
    sizes = [abs(d) for d in diffs if d]
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, sizes, strict=True))) >= observed
        for signs in itertools.product((1, -1), repeat=len(sizes))
    )
    assert sign_flip_exact(diffs) == pytest.approx(hits / 2 ** len(sizes)) == pytest.approx(6 / 16)
    # three seeds agreeing on 6 questions is 6 pieces of evidence, not 18: p = 2/2^6, not McNemar's 2/2^18
    assert sign_flip_exact([3] * 6) == pytest.approx(2 / 2**6)
    assert mcnemar_exact(0, 18) == pytest.approx(2 / 2**18)


def test_clustered_bootstrap_counts_questions_not_answers():
    a = [True] * 30 + [False] * 70
    b = [True] * 30 + [True] * 20 + [False] * 50
    plain = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    singletons = paired_bootstrap(a, b, n_resamples=4000, seed=3, clusters=list(range(100)))
    assert singletons["diff"] == plain["diff"]
    assert singletons["ci_low"] == pytest.approx(plain["ci_low"], abs=0.03)
    assert singletons["ci_high"] == pytest.approx(plain["ci_high"], abs=0.03)
    # the same 100 answers three times over (three seeds agreeing): the CI is that of 100 questions, not 300
    tripled = paired_bootstrap(a * 3, b * 3, n_resamples=4000, seed=3, clusters=list(range(100)) * 3)
    naive = paired_bootstrap(a * 3, b * 3, n_resamples=4000, seed=3)
    assert tripled["ci_high"] - tripled["ci_low"] == pytest.approx(plain["ci_high"] - plain["ci_low"], abs=0.03)
    assert naive["ci_high"] - naive["ci_low"] < 0.7 * (tripled["ci_high"] - tripled["ci_low"])
    with pytest.raises(ValueError, match="one label per pair"):
        paired_bootstrap(a, b, clusters=[0])


def test_accuracy_interval_uses_the_questions_as_the_sample_size():
    correct = [True] * 12 + [False] * 28
    assert accuracy_interval(correct) == wilson_interval(12, 40)
    assert accuracy_interval(correct, list(range(40))) == wilson_interval(12, 40)
    # every seed gives the same answers: 120 answers carry the information of 40 questions
    assert accuracy_interval(correct * 3, list(range(40)) * 3) == pytest.approx(wilson_interval(12, 40))
    # seeds that disagree independently carry more: the interval lies between 40 and 120 questions' widths
    import random

    rng = random.Random(0)
    noisy = [rng.random() < 0.3 for _ in range(120)]
    lo, hi = accuracy_interval(noisy, list(range(40)) * 3)
    p = sum(noisy)
    width_40, width_120 = (wilson_interval(p / 3, 40), wilson_interval(p, 120))
    assert width_120[1] - width_120[0] - 1e-12 <= hi - lo <= width_40[1] - width_40[0] + 1e-12
    # 0 of 120: no variance to measure, so the questions are the sample (not a degenerate [0, 0])
    assert accuracy_interval([False] * 120, list(range(40)) * 3) == pytest.approx(wilson_interval(0, 40))


def test_multi_bootstrap_covers_seeds_as_well_as_questions():
    rng = __import__("random").Random(0)
    base = [rng.choice((-1, 0, 0, 1)) for _ in range(200)]
    # one seed: the paired bootstrap over questions
    one = multi_bootstrap([base], n_resamples=4000, seed=3)
    plain = paired_bootstrap([d < 0 for d in base], [d > 0 for d in base], n_resamples=4000, seed=3)
    assert one["diff"] == pytest.approx(plain["diff"])
    assert one["ci_high"] - one["ci_low"] == pytest.approx(plain["ci_high"] - plain["ci_low"], abs=0.02)
    # three seeds that agree on every question: no more certain than one seed (the questions are the same)
    agree = multi_bootstrap([base] * 3, n_resamples=4000, seed=3)
    assert agree["ci_high"] - agree["ci_low"] == pytest.approx(one["ci_high"] - one["ci_low"], abs=0.02)
    # seeds that disagree as a whole (one gains on every question it changes, one loses): the interval widens
    # to cover both, where the question-only interval of the pooled answers stays narrow
    shifted = [[1 if d == 0 and i % 3 == 0 else d for i, d in enumerate(base)], base,
               [-1 if d == 0 and i % 3 == 0 else d for i, d in enumerate(base)]]  # fmt: skip
    both = multi_bootstrap(shifted, n_resamples=4000, seed=3)
    flat = [d for row in shifted for d in row]
    clustered = paired_bootstrap([d < 0 for d in flat], [d > 0 for d in flat], n_resamples=4000, seed=3,
                                 clusters=list(range(200)) * 3)  # fmt: skip
    assert both["diff"] == pytest.approx(sum(flat) / 600)
    assert both["ci_high"] - both["ci_low"] > 1.5 * (clustered["ci_high"] - clustered["ci_low"])
    assert multi_bootstrap(shifted, n_resamples=4000, seed=3) == both  # seeded
    with pytest.raises(ValueError, match="seeds x questions"):
        multi_bootstrap([[1, 0], [1]])


def test_paired_mde_follows_the_disagreement_rate():
    # 200 questions on which the models disagree 10% of the time: 2.80 * sqrt(0.1 / 200) = 6.3 points
    assert paired_mde(200, 0.10) == pytest.approx(0.0626, abs=5e-4)
    assert paired_mde(800, 0.10) == pytest.approx(paired_mde(200, 0.10) / 2)
    assert paired_mde(200, 0.0) == 0.0 and math.isnan(paired_mde(0, 0.1))
    with pytest.raises(ValueError, match="share between 0 and 1"):
        paired_mde(10, 1.5)


def test_holm_adjusted_matches_the_step_down_rule():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (kept non-decreasing), 0.5
    assert holm_adjusted([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm_adjusted([0.4, 0.9]) == [0.8, 0.9] and holm_adjusted([]) == []
    assert holm_adjusted([0.6, 0.7]) == [1.0, 1.0]
