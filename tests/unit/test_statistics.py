"""Tests for astrodag.evaluation.statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from astrodag.evaluation.statistics import paired_comparison, summarize, wilson_interval

VALUES = [0.71, 0.68, 0.74, 0.70, 0.69, 0.73, 0.72]


def test_summarize_matches_scipy():
    result = summarize(VALUES, n_resamples=999)
    data = np.array(VALUES)
    assert result["n"] == 7
    assert result["mean"] == pytest.approx(data.mean())
    assert result["std"] == pytest.approx(data.std(ddof=1))
    assert result["sem"] == pytest.approx(stats.sem(data))
    low, high = stats.t.interval(0.95, 6, loc=data.mean(), scale=stats.sem(data))
    assert (result["t_ci_low"], result["t_ci_high"]) == pytest.approx((low, high))
    assert result["bootstrap_ci_low"] < result["mean"] < result["bootstrap_ci_high"]
    expected = stats.bootstrap((data,), np.mean, n_resamples=999, rng=np.random.default_rng(0)).confidence_interval
    assert (result["bootstrap_ci_low"], result["bootstrap_ci_high"]) == pytest.approx((expected.low, expected.high))


def test_summarize_is_reproducible():
    first = summarize(VALUES, n_resamples=999, seed=3)
    assert summarize(VALUES, n_resamples=999, seed=3) == first
    assert summarize(VALUES, n_resamples=999, seed=4)["bootstrap_ci_low"] != first["bootstrap_ci_low"]


def test_summarize_drops_nan():
    result = summarize([*VALUES, np.nan, np.inf], n_resamples=999)
    assert result == summarize(VALUES, n_resamples=999)


def test_summarize_edge_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = summarize([], n_resamples=99)
        single = summarize([0.7], n_resamples=99)
        constant = summarize([0.1] * 5, n_resamples=99)
        near_constant = summarize([0.5, 0.5, 0.5, 0.5, 0.51], n_resamples=99)
    assert empty["n"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "n")
    assert single["n"] == 1 and single["mean"] == 0.7
    assert all(math.isnan(single[k]) for k in ("std", "sem", "t_ci_low", "t_ci_high", "bootstrap_ci_low"))
    assert constant["std"] == 0.0
    for key in ("t_ci_low", "t_ci_high", "bootstrap_ci_low", "bootstrap_ci_high"):
        assert constant[key] == pytest.approx(0.1)
    # BCa is undefined here; the percentile fallback still gives a finite interval.
    assert np.isfinite(near_constant["bootstrap_ci_low"]) and np.isfinite(near_constant["bootstrap_ci_high"])


def test_summarize_other_methods_and_validation():
    percentile = summarize(VALUES, n_resamples=999, method="percentile")
    assert percentile["bootstrap_ci_low"] < percentile["bootstrap_ci_high"]
    with pytest.raises(ValueError, match="method"):
        summarize(VALUES, method="bca")
    with pytest.raises(ValueError, match="confidence"):
        summarize(VALUES, confidence=95)


def test_wilson_interval_known_value():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert isinstance(low, float)


def test_wilson_interval_vectorised_and_empty():
    low, high = wilson_interval(np.array([8, 0, 3]), np.array([10, 0, 3]))
    assert low.shape == (3,)
    assert low[0] == pytest.approx(0.4902, abs=1e-4)
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert high[2] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == pytest.approx((np.nan, np.nan), nan_ok=True)


def test_wilson_interval_validates():
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="whole"):
        wilson_interval(1.5, 10)


def test_paired_comparison_matches_scipy():
    a = np.array([0.71, 0.68, 0.74, 0.70, 0.69, 0.73])
    b = np.array([0.69, 0.69, 0.70, 0.66, 0.68, 0.70])
    result = paired_comparison(a, b)
    ttest = stats.ttest_rel(a, b)
    wilcoxon = stats.wilcoxon(a, b)
    diff = a - b
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert result["n"] == 6
    assert result["mean_difference"] == pytest.approx(diff.mean())
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    assert result["t_statistic"] == pytest.approx(ttest.statistic)
    assert result["t_pvalue"] == pytest.approx(ttest.pvalue)
    assert result["wilcoxon_statistic"] == pytest.approx(wilcoxon.statistic)
    assert result["wilcoxon_pvalue"] == pytest.approx(wilcoxon.pvalue)


def test_paired_comparison_degenerate_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        identical = paired_comparison([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
        single = paired_comparison([0.7], [0.6])
        with_nan = paired_comparison([0.7, np.nan, 0.9, 0.8], [0.6, 0.5, 0.7, 0.75])
    assert identical["mean_difference"] == 0.0 and identical["ci_low"] == identical["ci_high"] == 0.0
    assert math.isnan(identical["wilcoxon_pvalue"]) and math.isnan(identical["t_pvalue"])
    assert single["n"] == 1 and single["mean_difference"] == pytest.approx(0.1)
    assert math.isnan(single["ci_low"]) and math.isnan(single["wilcoxon_pvalue"])
    assert with_nan["n"] == 3


def test_paired_comparison_requires_pairs():
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])
