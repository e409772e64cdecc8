"""Tests for astrodag.evaluation.thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, precision_score, recall_score

from astrodag.errors import ConfigError
from astrodag.evaluation.metrics import binary_metrics
from astrodag.evaluation.thresholds import (
    EVEREST_WEIGHTS,
    equal_error_threshold,
    max_tss_threshold,
    rates_at,
    select_threshold,
    sweep_thresholds,
    threshold_for_fnr,
    threshold_for_fpr,
    threshold_grid,
    validate_weights,
)


@pytest.fixture
def validation():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 300)
    y_prob = np.round(np.clip(0.3 * y_true + 0.7 * rng.random(300), 0.0, 1.0), 2)  # ties and exact hits
    return y_true, y_prob


def test_threshold_grid():
    grid = threshold_grid()
    assert len(grid) == 81 and grid[0] == 0.1 and grid[-1] == 0.9
    assert 0.3 in grid and 0.7 in grid  # exact, no float fuzz
    np.testing.assert_allclose(np.diff(grid), 0.01)


def test_everest_weights_sum_to_one():
    assert sum(EVEREST_WEIGHTS.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_sweep_matches_sklearn(validation, threshold):
    y_true, y_prob = validation
    sweep = sweep_thresholds(y_true, y_prob).set_index("threshold")
    row = sweep.loc[threshold]
    y_pred = (y_prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
    recall = recall_score(y_true, y_pred, zero_division=0)
    specificity = recall_score(y_true, y_pred, pos_label=0, zero_division=0)
    precision = precision_score(y_true, y_pred, zero_division=0)
    f1 = f1_score(y_true, y_pred, zero_division=0)
    assert row["precision"] == pytest.approx(precision)
    assert row["recall"] == pytest.approx(recall)
    assert row["specificity"] == pytest.approx(specificity)
    assert row["f1"] == pytest.approx(f1)
    assert row["tss"] == pytest.approx(recall + specificity - 1)
    assert row["hss"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    expected_score = 0.4 * (recall + specificity - 1) + 0.2 * f1 + 0.15 * precision + 0.15 * recall + 0.1 * specificity
    assert row["score"] == pytest.approx(expected_score)


def test_sweep_agrees_with_binary_metrics_everywhere(validation):
    y_true, y_prob = validation
    sweep = sweep_thresholds(y_true, y_prob)
    assert list(sweep.columns) == [
        "threshold", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "specificity", "f1", "tss", "hss",
        "score",
    ]  # fmt: skip
    assert len(sweep) == 81
    for row in sweep.iloc[::8].itertuples():
        m = binary_metrics(y_true, y_prob, threshold=row.threshold)
        for key in ("tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "specificity", "f1", "tss", "hss"):
            assert getattr(row, key) == pytest.approx(m[key]), (row.threshold, key)


def test_probability_equal_to_threshold_is_positive():
    sweep = sweep_thresholds([1, 0], [0.5, 0.49], thresholds=[0.5])
    assert sweep.loc[0, "tp"] == 1 and sweep.loc[0, "fp"] == 0


def test_custom_weights_and_thresholds(validation):
    sweep = sweep_thresholds(*validation, thresholds=[0.2, 0.6], weights={"accuracy": 1})
    np.testing.assert_allclose(sweep["score"], sweep["accuracy"])
    assert sweep["threshold"].tolist() == [0.2, 0.6]


def test_sweep_rejects_bad_thresholds(validation):
    with pytest.raises(ValueError, match="finite"):
        sweep_thresholds(*validation, thresholds=[0.5, np.nan])
    with pytest.raises(ValueError, match="non-empty"):
        sweep_thresholds(*validation, thresholds=[])


@pytest.mark.parametrize(
    ("weights", "key"),
    [
        ({"auc": 1.0}, "weights.auc"),
        ({"tss": -0.1}, "weights.tss"),
        ({"tss": "high"}, "weights.tss"),
        ({"tss": True}, "weights.tss"),
        ({"tss": float("nan")}, "weights.tss"),
        ({"tss": 0.0, "f1": 0}, "weights"),
        ({}, "weights"),
        ([("tss", 1.0)], "weights"),
    ],
)
def test_validate_weights_rejects(weights, key):
    with pytest.raises(ConfigError) as caught:
        validate_weights(weights)
    assert caught.value.key == key


def test_validate_weights_names_caller_key():
    with pytest.raises(ConfigError, match="evaluation.weights.bogus"):
        validate_weights({"bogus": 1}, key="evaluation.weights")
    assert validate_weights({"tss": 1, "hss": 0}) == {"tss": 1.0, "hss": 0.0}


def test_select_threshold_takes_maximum():
    sweep = pd.DataFrame({"threshold": [0.1, 0.2, 0.3], "score": [0.1, 0.5, 0.2]})
    assert select_threshold(sweep) == 0.2


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        ([0.1, 0.3, 0.8], 0.3),  # closest to 0.5 wins
        ([0.3, 0.7, 0.9], 0.3),  # equally close: the lower one
        ([0.4, 0.6], 0.4),
        ([0.6, 0.55, 0.1], 0.55),
    ],
)
def test_select_threshold_tie_breaking(thresholds, expected):
    sweep = pd.DataFrame({"threshold": thresholds + [0.5], "score": [0.8] * len(thresholds) + [0.1]})
    assert select_threshold(sweep) == expected


def test_select_threshold_on_real_sweep_is_on_grid(validation):
    sweep = sweep_thresholds(*validation)
    chosen = select_threshold(sweep)
    assert chosen in set(sweep["threshold"])
    assert sweep.loc[sweep["threshold"] == chosen, "score"].iloc[0] == pytest.approx(sweep["score"].max())


def test_select_threshold_validates():
    with pytest.raises(ValueError, match="score"):
        select_threshold(pd.DataFrame({"threshold": [0.5]}))
    with pytest.raises(ValueError, match="finite"):
        select_threshold(pd.DataFrame({"threshold": [0.5], "score": [np.nan]}))


def test_fnr_and_equal_error_thresholds():
    labels = np.array([1] * 10 + [0] * 10)
    scores = np.concatenate([np.linspace(0.1, 1.0, 10), np.linspace(0.0, 0.45, 10)])
    assert threshold_for_fnr(labels, scores, 0.0) == pytest.approx(0.1)
    assert threshold_for_fnr(labels, scores, 0.1) == pytest.approx(0.2)  # one real example may be missed
    assert threshold_for_fnr(labels, scores, 0.05) == pytest.approx(0.1)
    threshold = equal_error_threshold(labels, scores)
    fnr = np.mean(scores[labels == 1] < threshold)
    fpr = np.mean(scores[labels == 0] >= threshold)
    assert abs(fnr - fpr) <= 0.1
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_fnr(np.zeros(3), np.ones(3), 0.1)


def test_fpr_threshold_bounds_the_false_alarm_rate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0.0, 1.0)
    negatives = np.sort(scores[labels == 0])
    for target in (0.0, 0.01, 0.05, 0.2, 1.0):
        threshold = threshold_for_fpr(labels, scores, target)
        fpr = np.mean(negatives >= threshold)
        assert fpr <= target + 1e-12
        # The lowest such threshold: a hair lower lets one more negative through, unless all are in already.
        assert np.mean(negatives >= np.nextafter(threshold, -np.inf)) > target or fpr == 1.0


def test_equal_error_and_max_tss_thresholds_follow_the_roc_curve():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = rng.uniform(size=300).astype(np.float32) ** (1.0 + labels)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)
    best = thresholds[finite][np.argmax((tpr - fpr)[finite])]
    assert max_tss_threshold(labels, scores) == float(min(best, 1.0))
    gap = np.abs(1 - tpr[finite] - fpr[finite])
    assert equal_error_threshold(labels, scores) == float(thresholds[finite][np.flatnonzero(gap == gap.min())[-1]])


def test_rates_at_counts_and_wilson_intervals():
    from statsmodels.stats.proportion import proportion_confint

    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
    rates = rates_at(labels, scores, 0.5)
    assert (rates["tp"], rates["fn"], rates["fp"], rates["tn"]) == (2, 1, 1, 3)
    assert rates["fnr"] == pytest.approx(1 / 3) and rates["fpr"] == pytest.approx(1 / 4)
    assert rates["precision"] == pytest.approx(2 / 3) and rates["accuracy"] == pytest.approx(5 / 7)
    assert rates["fnr_ci95"] == pytest.approx(list(proportion_confint(1, 3, alpha=0.05, method="wilson")))
    assert rates["fpr_ci95"] == pytest.approx(list(proportion_confint(1, 4, alpha=0.05, method="wilson")))
    no_positive = rates_at(np.zeros(3), np.array([0.1, 0.6, 0.7]), 0.5)
    assert no_positive["fnr"] is None and no_positive["fnr_ci95"] is None and no_positive["recall"] is None

