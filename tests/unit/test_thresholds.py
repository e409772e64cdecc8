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
    select_threshold,
    sweep_thresholds,
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
