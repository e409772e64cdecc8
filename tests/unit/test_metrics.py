"""Tests for astrodag.evaluation.metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV, calibration_curve
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from astrodag.evaluation.metrics import (
    binary_metrics,
    calibration_errors,
    confusion_counts,
    curve_points,
    fit_recalibration,
    measure_latency,
    rates_from_count_array,
    rates_from_counts,
    reliability_curve,
)


@pytest.fixture
def noisy():
    rng = np.random.default_rng(42)
    y_true = rng.integers(0, 2, 400)
    y_prob = np.clip(0.35 * y_true + 0.65 * rng.random(400), 0.0, 1.0)
    return y_true, y_prob


def test_confusion_counts_match_sklearn(noisy):
    y_true, y_prob = noisy
    y_pred = (y_prob >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    counts = confusion_counts(y_true, y_pred)
    assert counts == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert all(type(value) is int for value in counts.values())


def test_confusion_counts_accepts_booleans():
    assert confusion_counts([True, False, True], [True, True, False]) == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_binary_metrics_match_sklearn(noisy, threshold):
    y_true, y_prob = noisy
    y_pred = (y_prob >= threshold).astype(int)
    m = binary_metrics(y_true, y_prob, threshold=threshold)
    specificity = recall_score(y_true, y_pred, pos_label=0, zero_division=0)
    recall = recall_score(y_true, y_pred, zero_division=0)
    assert m["threshold"] == threshold
    assert m["n"] == 400 and m["n_positive"] == int(y_true.sum())
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0))
    assert m["recall"] == pytest.approx(recall)
    assert m["specificity"] == pytest.approx(specificity)
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0))
    assert m["tss"] == pytest.approx(recall + specificity - 1)
    # The Heidke skill score of a 2x2 table is Cohen's kappa.
    assert m["hss"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y_true, y_prob))
    assert m["aucpr"] == pytest.approx(average_precision_score(y_true, y_prob))
    assert m["brier"] == pytest.approx(brier_score_loss(y_true, y_prob))


def test_perfect_classifier():
    y_true = np.array([0, 0, 0, 1, 1])
    m = binary_metrics(y_true, [0.0, 0.1, 0.2, 0.9, 1.0])
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "tss", "hss", "roc_auc", "aucpr"):
        assert m[key] == pytest.approx(1.0), key
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 0, 3, 0)


def test_constant_probability_has_chance_auc():
    y_true = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    m = binary_metrics(y_true, np.full(8, 0.3))
    assert m["roc_auc"] == pytest.approx(0.5)
    assert m["tss"] == pytest.approx(0.0)
    # Everything predicted positive: ECE is |prevalence - 0.3| in the single bin.
    assert m["ece"] == pytest.approx(0.2) and m["mce"] == pytest.approx(0.2)


def test_zero_division_gives_zero():
    m = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)
    assert m["tp"] == 0 and m["fp"] == 0
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["hss"] == 0.0


def test_single_class_gives_nan_ranking_metrics_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.7])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["aucpr"])
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.49) / 3)


@pytest.mark.parametrize(
    ("y_true", "y_prob", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1, np.nan], [0.1, 0.2, 0.3], "NaN label"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN or infinite"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"\[0, 1\]"),
        ([0, 1, 1], [-0.1, 0.2, 0.3], r"\[0, 1\]"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "one-dimensional"),
        (["a", "b"], [0.1, 0.2], "0/1"),
    ],
)
def test_invalid_inputs_raise(y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y_true, y_prob)


def test_invalid_threshold_and_bins_raise(noisy):
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(*noisy, threshold=float("nan"))
    with pytest.raises(ValueError, match="n_bins"):
        binary_metrics(*noisy, n_bins=0)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_curve_matches_sklearn(noisy, n_bins):
    y_true, y_prob = noisy
    # Put some probabilities exactly on bin edges, where conventions differ.
    y_prob = y_prob.copy()
    y_prob[: n_bins + 1] = np.linspace(0.0, 1.0, n_bins + 1)
    curve = reliability_curve(y_true, y_prob, n_bins)
    prob_true, prob_pred = calibration_curve(y_true, y_prob, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(curve["fraction_positive"], prob_true)
    np.testing.assert_allclose(curve["mean_predicted"], prob_pred)
    assert list(curve.columns) == ["bin_lower", "bin_upper", "mean_predicted", "fraction_positive", "count"]
    assert curve["count"].sum() == len(y_true)
    assert (curve["mean_predicted"] >= curve["bin_lower"]).all()
    assert (curve["mean_predicted"] <= curve["bin_upper"]).all()


def test_calibration_errors_against_sklearn_bins(noisy):
    y_true, y_prob = noisy
    prob_true, prob_pred = calibration_curve(y_true, y_prob, n_bins=10, strategy="uniform")
    counts = reliability_curve(y_true, y_prob, 10)["count"].to_numpy()
    gaps = np.abs(prob_true - prob_pred)
    ece, mce = calibration_errors(y_true, y_prob, n_bins=10)
    assert ece == pytest.approx(np.sum(gaps * counts) / counts.sum())
    assert mce == pytest.approx(gaps.max())


def test_calibration_errors_hand_computed():
    # Bins of width 0.5: [0, 0.5] holds 0.2, 0.4 (mean 0.3, 1 positive of 2);
    # (0.5, 1] holds 0.9, 1.0 (mean 0.95, 2 positives of 2).
    ece, mce = calibration_errors([0, 1, 1, 1], [0.2, 0.4, 0.9, 1.0], n_bins=2)
    assert ece == pytest.approx(0.5 * 0.2 + 0.5 * 0.05)
    assert mce == pytest.approx(0.2)


def test_curve_points(noisy):
    y_true, y_prob = noisy
    points = curve_points(y_true, y_prob)
    roc, pr = points["roc"], points["pr"]
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert list(pr.columns) == ["recall", "precision", "threshold"]
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(y_true, y_prob))
    assert np.isnan(pr["threshold"].iloc[-1]) and pr["threshold"].iloc[:-1].notna().all()
    with pytest.raises(ValueError, match="both classes"):
        curve_points([1, 1, 1], [0.2, 0.5, 0.9])


def test_measure_latency_numpy():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return batch.sum(axis=1)

    result = measure_latency(predict, np.ones((1000, 3)), batch_size=300, repeats=2, warmup=1)
    # 3 passes (1 warm-up + 2 timed) of batches 300, 300, 300, 100.
    assert calls == [300, 300, 300, 100] * 3
    assert result["n_samples"] == 1000
    assert result["per_sample_ms"] > 0
    assert result["samples_per_second"] == pytest.approx(1000 / result["best_seconds"])
    assert result["per_sample_ms"] == pytest.approx(1000 * result["best_seconds"] / 1000)


def test_measure_latency_torch():
    torch = pytest.importorskip("torch")
    result = measure_latency(lambda batch: batch * 2, torch.ones(50, 2), batch_size=16, repeats=1, warmup=0)
    assert result["n_samples"] == 50 and result["samples_per_second"] > 0


def test_measure_latency_validates():
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(lambda batch: batch, np.ones(3), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        measure_latency(lambda batch: batch, np.ones(0))


def test_binary_metrics_accepts_pandas(noisy):
    y_true, y_prob = noisy
    from_series = binary_metrics(pd.Series(y_true), pd.Series(y_prob))
    assert from_series == pytest.approx(binary_metrics(y_true, y_prob), nan_ok=True)


def test_rates_from_count_array_matches_rates_from_counts_and_is_nan_without_a_class():
    counts = np.array([[[5, 2, 30, 3], [0, 1, 9, 0]], [[4, 0, 0, 1], [1, 1, 1, 1]]], dtype=float)
    rates = rates_from_count_array(counts)
    expected = rates_from_counts(*np.moveaxis(counts, -1, 0))
    defined = np.array([[True, False], [False, True]])
    for key, value in expected.items():
        np.testing.assert_allclose(rates[key][defined], value[defined])
        assert np.isnan(rates[key][~defined]).all()
    with pytest.raises(ValueError, match="tp, fp, tn, fn"):
        rates_from_count_array(np.zeros((3, 5)))


class _Scores(ClassifierMixin, BaseEstimator):
    """A fitted 'classifier' whose probability is its single input column (for CalibratedClassifierCV)."""

    classes_ = np.array([0, 1])

    def fit(self, X, y):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, X):
        p = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


@pytest.fixture
def reweighted():
    """Calibrated probabilities whose odds a 9:1 reweighting of positives inflated, with their labels."""
    rng = np.random.default_rng(7)
    truth = expit(rng.normal(-2.5, 1.5, 4000))
    labels = rng.random(4000) < truth
    return labels.astype(int), expit(logit(truth) + np.log(9.0))


def test_isotonic_recalibration_is_calibrated_classifier_cv(reweighted):
    labels, prob = reweighted
    fit, test = slice(0, 2000), slice(2000, None)
    ours = fit_recalibration(labels[fit], prob[fit], "isotonic")(prob[test])
    # ensemble=False: one calibrator on all the (frozen) model's predictions, not an average over folds.
    reference = CalibratedClassifierCV(FrozenEstimator(_Scores()), method="isotonic", ensemble=False)
    reference.fit(prob[fit, None], labels[fit])
    np.testing.assert_allclose(ours, reference.predict_proba(prob[test, None])[:, 1])


def test_platt_recalibration_is_the_logistic_fit_on_the_logit(reweighted):
    labels, prob = reweighted
    recalibrate = fit_recalibration(labels, prob, "platt")
    model = sm.Logit(labels, sm.add_constant(logit(prob))).fit(disp=0)
    intercept, slope = model.params
    np.testing.assert_allclose(recalibrate(prob), model.predict(sm.add_constant(logit(prob))), atol=1e-5)
    # It undoes the reweighting: slope 1, intercept -log 9 within their errors; the ECE drops.
    assert slope == pytest.approx(1.0, abs=3 * model.bse[1])
    assert intercept == pytest.approx(-np.log(9.0), abs=3 * model.bse[0])
    assert calibration_errors(labels, recalibrate(prob))[0] < 0.2 * calibration_errors(labels, prob)[0]


def test_recalibration_validates():
    with pytest.raises(ValueError, match="method"):
        fit_recalibration([0, 1], [0.2, 0.8], "beta")
    with pytest.raises(ValueError, match="both classes"):
        fit_recalibration([0, 0], [0.2, 0.8])
