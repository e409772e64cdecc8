"""Tests for astrodag.evaluation.statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from astrodag.evaluation.metrics import rates_from_count_array
from astrodag.evaluation.statistics import (
    auc_p_value,
    block_bootstrap,
    paired_comparison,
    resolvable_auc,
    summarize,
    untied_auc_p_value,
    wilson_interval,
)

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


def test_auc_p_value_is_the_one_sided_mann_whitney_test_of_the_auc():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 200)
    for shift, expect_small in ((0.0, False), (0.8, True)):
        scores = rng.normal(size=400) + shift * labels
        scores[:20] = scores[200:220]  # ties across the classes
        p_value = auc_p_value(labels, scores)
        result = mannwhitneyu(scores[labels == 1], scores[labels == 0], alternative="greater")
        assert p_value == pytest.approx(result.pvalue)
        assert result.statistic / (200 * 200) == pytest.approx(roc_auc_score(labels, scores))
        assert (p_value < 0.001) is expect_small
    assert np.isnan(auc_p_value(np.ones(5), np.linspace(0, 1, 5)))


def test_untied_auc_p_value_is_the_mann_whitney_test_of_distinct_scores():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    for n_binary, n_pspl, shift in ((300, 250, 0.0), (300, 250, 0.2), (40, 60, 0.5)):
        labels = np.r_[np.ones(n_binary, dtype=int), np.zeros(n_pspl, dtype=int)]
        scores = rng.normal(size=labels.size) + shift * labels  # continuous: no ties
        auc = roc_auc_score(labels, scores)
        expected = mannwhitneyu(scores[labels == 1], scores[labels == 0], alternative="greater",
                                method="asymptotic").pvalue
        assert untied_auc_p_value(auc, n_binary, n_pspl) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(untied_auc_p_value(0.7, 0, 10))


def test_resolvable_auc_inverts_the_untied_p_value():
    for n_binary, n_pspl in ((716, 716), (50, 80), (75_000, 75_000)):
        auc = resolvable_auc(n_binary, n_pspl)
        assert untied_auc_p_value(auc, n_binary, n_pspl) == pytest.approx(0.05, rel=1e-9)
        assert 0.5 < auc < 0.75
    assert resolvable_auc(716, 716) == pytest.approx(0.5 + 1.645 * math.sqrt(1433 / 12) / 716, abs=1e-3)
    assert np.isnan(resolvable_auc(0, 3))


def test_paired_comparison_sign_flip_test_and_its_smallest_p_value():
    a = np.array([0.71, 0.68, 0.74, 0.70, 0.69])
    b = np.array([0.69, 0.66, 0.70, 0.66, 0.68])
    result = paired_comparison(a, b)
    # All five differences positive: only the identity and the all-flipped of the 2**5 sign patterns are as extreme.
    assert result["sign_flip_pvalue"] == pytest.approx(2 / 2**5)
    assert result["exact_min_pvalue"] == pytest.approx(0.0625)
    diff = np.array([0.02, -0.01, 0.04, 0.03])
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    by_hand = np.mean(np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12)
    assert paired_comparison(diff, np.zeros(4))["sign_flip_pvalue"] == pytest.approx(by_hand)


def _tss(sums):
    return {"tss": rates_from_count_array(sums)["tss"]}


def _harp_counts(rng, n_harps=40, skill=0.6):
    """(n_harps, 4) confusion counts (tp, fp, tn, fn): every fourth HARP flares."""
    counts = np.zeros((n_harps, 4))
    for harp in range(n_harps):
        windows = rng.integers(5, 30)
        positives = rng.binomial(windows, 0.5) if harp % 4 == 0 else 0
        caught = rng.binomial(positives, skill)
        false_alarms = rng.binomial(windows - positives, 0.1)
        counts[harp] = caught, false_alarms, windows - positives - false_alarms, positives - caught
    return counts


def test_block_bootstrap_matches_scipy_bootstrap_over_blocks():
    counts = _harp_counts(np.random.default_rng(1))
    boot = block_bootstrap({"model": counts[None]}, _tss, n_resamples=20000, seed=3)
    assert boot.estimates["model"]["tss"] == pytest.approx(_tss(counts.sum(axis=0))["tss"])
    reference = stats.bootstrap(
        tuple(counts.T), lambda *columns, axis=-1: _tss(np.stack([c.sum(axis=axis) for c in columns], -1))["tss"],
        paired=True, n_resamples=20000, method="percentile", rng=np.random.default_rng(4),
    ).confidence_interval
    low, high = boot.interval("model", "tss")
    # Two independent Monte Carlo runs of the same percentile interval.
    assert low == pytest.approx(reference.low, abs=0.01) and high == pytest.approx(reference.high, abs=0.01)
    assert high - low > 0.1


def test_block_bootstrap_pairs_models_and_runs_on_the_same_blocks():
    counts = _harp_counts(np.random.default_rng(2))
    identical = block_bootstrap({"a": counts[None], "b": counts[None]}, _tss, n_resamples=500)
    same = identical.difference("a", "b", "tss")
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["pvalue"] == 1
    # A block tested under two runs keeps one weight: two runs on the same blocks are no more precise than one.
    one = block_bootstrap({"m": counts[None]}, _tss, n_resamples=500, seed=5)
    two = block_bootstrap({"m": np.stack([counts, counts])}, _tss, n_resamples=500, seed=5)
    np.testing.assert_allclose(two.draws["m"]["tss"], one.draws["m"]["tss"])


def test_block_bootstrap_p_value_and_its_floor():
    counts = _harp_counts(np.random.default_rng(3))
    perfect = counts.copy()
    perfect[:, 0] += perfect[:, 3]
    perfect[:, 3] = 0
    perfect[:, 2] += perfect[:, 1]
    perfect[:, 1] = 0
    boot = block_bootstrap({"perfect": perfect[None], "model": counts[None]}, _tss, n_resamples=999)
    result = boot.difference("perfect", "model", "tss")
    assert result["pvalue"] == result["min_pvalue"] == pytest.approx(1 / 1000)
    assert result["resamples"] == 999 and result["ci_low"] > 0


def test_block_bootstrap_drops_resamples_without_positives():
    counts = np.array([[3.0, 1.0, 10.0, 1.0], [0.0, 2.0, 20.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boot = block_bootstrap({"m": counts[None]}, _tss, n_resamples=400)
    draws = boot.draws["m"]["tss"]
    # Drawing the flare-free HARP twice (probability 1/4) leaves no positives: TSS undefined there.
    assert 0.15 < np.isnan(draws).mean() < 0.35
    assert np.all(np.isfinite(boot.interval("m", "tss")))


def test_block_bootstrap_validates():
    with pytest.raises(ValueError, match="shape"):
        block_bootstrap({"a": np.zeros((1, 3, 4)), "b": np.zeros((1, 2, 4))}, _tss)
    with pytest.raises(ValueError, match="n_resamples"):
        block_bootstrap({"a": np.zeros((1, 3, 4))}, _tss, n_resamples=0)
