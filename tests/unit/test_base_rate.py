"""Precision, NPV and alarms per true positive at a deployment base rate (astrodag.evaluation.base_rate)."""

import numpy as np
import pytest
from sklearn.metrics import precision_score

from astrodag.evaluation.base_rate import base_rate_metrics, deployment_rates


def _sample(n_pos, n_neg, tpr, fpr, rng):
    """Labels and scores with exactly round(tpr n_pos) positives and round(fpr n_neg) negatives above 0.5."""
    tp, fp = round(tpr * n_pos), round(fpr * n_neg)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    scores = np.r_[np.where(np.arange(n_pos) < tp, 0.9, 0.1), np.where(np.arange(n_neg) < fp, 0.8, 0.2)]
    order = rng.permutation(len(labels))
    return labels[order], scores[order]


def test_precision_npv_and_alarms_are_bayes_rule_of_tpr_and_fpr():
    labels, scores = _sample(300, 300, 0.8, 0.1, np.random.default_rng(0))
    for share in (0.05, 0.1, 0.5):
        result = base_rate_metrics(labels, scores, 0.5, (1 - share) / share)
        assert result["positive_share"] == pytest.approx(share)
        assert result["precision"] == pytest.approx(0.8 * share / (0.8 * share + 0.1 * (1 - share)))
        assert result["npv"] == pytest.approx(0.9 * (1 - share) / (0.9 * (1 - share) + 0.2 * share))
        assert result["alarms_per_true_positive"] == pytest.approx(1 / result["precision"])
        for name in ("precision", "npv", "alarms_per_true_positive"):
            assert result[f"{name}_low"] < result[name] < result[f"{name}_high"]
    # Equal test classes at 50 %: the test set's own precision; far lower at 5 %.
    at_half = base_rate_metrics(labels, scores, 0.5, 1.0)
    at_five = base_rate_metrics(labels, scores, 0.5, 19.0)
    assert at_half["precision"] == pytest.approx(precision_score(labels, scores >= 0.5))
    assert at_five["precision"] == pytest.approx(0.04 / (0.04 + 0.095))
    assert at_five["precision_high"] < at_half["precision_low"]


def test_intervals_cover_the_true_precision_at_least_at_their_confidence():
    rng = np.random.default_rng(1)
    tpr, fpr, share = 0.7, 0.08, 0.05
    truth = deployment_rates(tpr, fpr, share)
    covered = {name: 0 for name in truth}
    draws = 400
    for _ in range(draws):
        positives = rng.random(150) < tpr
        negatives = rng.random(150) < fpr
        labels = np.r_[np.ones(150, int), np.zeros(150, int)]
        scores = np.r_[positives, negatives].astype(float)
        result = base_rate_metrics(labels, scores, 0.5, (1 - share) / share)
        for name, value in truth.items():
            low, high = result[f"{name}_low"], result[f"{name}_high"]
            covered[name] += (low is None or low <= value) and (high is None or value <= high)
    for name, count in covered.items():
        assert count / draws >= 0.93, name


def test_undefined_values_are_none():
    labels = np.r_[np.ones(10, int), np.zeros(10, int)]
    nothing_called = base_rate_metrics(labels, np.zeros(20), 0.5, 9.0)
    assert nothing_called["precision"] is None and nothing_called["alarms_per_true_positive"] is None
    assert nothing_called["npv"] == pytest.approx(0.9)
    assert base_rate_metrics(np.ones(5, int), np.ones(5), 0.5, 9.0)["precision"] is None
    assert base_rate_metrics(labels, np.ones(20), 0.5, None)["aucpr"] is None
    with pytest.raises(ValueError, match="positive_share"):
        deployment_rates(0.5, 0.1, 1.0)
