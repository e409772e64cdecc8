"""Metrics, threshold sweep and statistics, checked against scikit-learn, SciPy and statsmodels."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from astrodag.errors import ConfigError
from astrodag.evaluation.metrics import (
    binary_metrics,
    calibration_errors,
    confusion_counts,
    curve_points,
    measure_latency,
    reliability_curve,
)
from astrodag.evaluation.statistics import paired_comparison, summarize, wilson_interval
from astrodag.evaluation.thresholds import (
    EVEREST_WEIGHTS,
    select_threshold,
    sweep_thresholds,
    threshold_grid,
    validate_weights,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.2).astype(int)
    p = np.clip(0.2 + 0.5 * y + rng.normal(0, 0.2, 2000), 0, 1)
    return y, p


def test_binary_metrics_agree_with_scikit_learn(scored):
    y, p = scored
    m = binary_metrics(y, p, threshold=0.4)
    pred = (p >= 0.4).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["tss"] == pytest.approx(m["recall"] + m["specificity"] - 1)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["aucpr"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))


def test_perfect_and_uninformative_classifiers():
    y = np.array([0, 0, 1, 1])
    perfect = binary_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["tss"] == 1 and perfect["roc_auc"] == 1 and perfect["f1"] == 1
    constant = binary_metrics(y, np.full(4, 0.3))
    assert constant["roc_auc"] == 0.5 and constant["precision"] == 0.0 and constant["tss"] == 0.0


def test_single_class_gives_nan_areas_not_errors():
    m = binary_metrics(np.zeros(5), np.linspace(0, 1, 5))
    assert np.isnan(m["roc_auc"]) and np.isnan(m["aucpr"])


@pytest.mark.parametrize(
    "y, p, message",
    [([0, 1], [0.5], "length"), ([0, 2], [0.1, 0.2], "0/1 labels"), ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
     ([0, 1], [np.nan, 0.2], "NaN|finite")],
)
def test_bad_inputs_are_rejected(y, p, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(np.array(y), np.array(p))


def test_confusion_counts():
    assert confusion_counts([1, 0, 1, 0], [1, 1, 0, 0]) == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}


def test_reliability_curve_matches_scikit_learn_and_ece(scored):
    y, p = scored
    curve = reliability_curve(y, p, n_bins=15)
    fraction, mean_predicted = calibration_curve(y, p, n_bins=15, strategy="uniform")
    np.testing.assert_allclose(curve["fraction_positive"], fraction)
    np.testing.assert_allclose(curve["mean_predicted"], mean_predicted)
    gaps = np.abs(curve["fraction_positive"] - curve["mean_predicted"])
    ece, mce = calibration_errors(y, p, n_bins=15)
    assert ece == pytest.approx(np.sum(gaps * curve["count"]) / curve["count"].sum())
    assert mce == pytest.approx(gaps.max())


def test_curve_points_and_latency(scored):
    y, p = scored
    points = curve_points(y, p)
    assert {"fpr", "tpr"} <= set(points["roc"].columns) and {"precision", "recall"} <= set(points["pr"].columns)
    latency = measure_latency(lambda batch: batch * 2, np.ones((1000, 3)), batch_size=100, repeats=2)
    assert latency["per_sample_ms"] > 0 and latency["samples_per_second"] > 0


def test_sweep_matches_scikit_learn_at_several_thresholds(scored):
    y, p = scored
    sweep = sweep_thresholds(y, p)
    assert len(sweep) == 81 and sweep["threshold"].iloc[0] == 0.1 and sweep["threshold"].iloc[-1] == 0.9
    for threshold in (0.1, 0.5, 0.9):
        row = sweep[np.isclose(sweep["threshold"], threshold)].iloc[0]
        pred = (p >= threshold).astype(int)
        assert row["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y, pred))
        assert row["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
        expected = sum(weight * row[name] for name, weight in EVEREST_WEIGHTS.items())
        assert row["score"] == pytest.approx(expected)


def test_select_threshold_maximises_score_and_breaks_ties_towards_one_half():
    sweep = pd.DataFrame({"threshold": [0.2, 0.4, 0.6, 0.8], "score": [0.1, 0.7, 0.7, 0.2]})
    assert select_threshold(sweep) in (0.4, 0.6)
    tie = pd.DataFrame({"threshold": [0.3, 0.45, 0.7], "score": [0.5, 0.5, 0.5]})
    assert select_threshold(tie) == 0.45
    assert threshold_grid(0.1, 0.9, 81)[40] == 0.5


def test_weights_are_validated_by_name():
    assert validate_weights({"tss": 1.0}) == {"tss": 1.0}
    with pytest.raises(ConfigError, match="tsss"):
        validate_weights({"tsss": 1.0})
    with pytest.raises(ConfigError):
        validate_weights({"tss": -1.0})
    with pytest.raises(ConfigError):
        validate_weights({"tss": 0.0})


def test_summarize_gives_student_t_and_reproducible_bootstrap_intervals():
    values = np.array([0.61, 0.66, 0.70, 0.64, 0.68])
    first = summarize(values, n_resamples=2000, seed=3)
    low, high = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert first["mean"] == pytest.approx(values.mean()) and first["std"] == pytest.approx(values.std(ddof=1))
    assert (first["t_ci_low"], first["t_ci_high"]) == pytest.approx((low, high))
    assert first["bootstrap_ci_low"] <= first["mean"] <= first["bootstrap_ci_high"]
    assert summarize(values, n_resamples=2000, seed=3) == first


def test_summarize_edge_cases():
    assert summarize([0.5, 0.5, 0.5])["t_ci_low"] == 0.5
    single = summarize([0.4])
    assert single["n"] == 1 and np.isnan(single["std"]) and np.isnan(single["t_ci_low"])
    assert summarize([0.4, np.nan, 0.6])["n"] == 2


def test_wilson_interval_known_value_and_empty():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_paired_comparison():
    a = np.array([0.70, 0.72, 0.69, 0.75, 0.71])
    b = a - np.array([0.02, 0.03, 0.01, 0.04, 0.02])
    result = paired_comparison(a, b)
    assert result["mean_difference"] == pytest.approx(0.024)
    assert result["t_pvalue"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result["ci_low"] > 0
    same = paired_comparison(a, a)
    assert same["mean_difference"] == 0 and np.isnan(same["wilcoxon_pvalue"])
    with pytest.raises(ValueError):
        paired_comparison(a, a[:3])
