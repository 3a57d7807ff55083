"""Confidence intervals and paired tests against known values."""

from __future__ import annotations

import math

import pytest

from modetune.evaluation.stats import mcnemar_exact, paired_bootstrap, wilson_interval


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
