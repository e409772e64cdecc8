"""Binary-classification metrics, calibration and recalibration, curves and inference latency.

The positive class is 1 throughout. Labels may be given as 0/1 numbers or
booleans; probabilities are the model's estimate of P(y = 1) and must lie in
[0, 1]. Every function validates its inputs and raises ``ValueError`` with a
readable message instead of returning silently wrong numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

CALIBRATION_METHODS = ("platt", "isotonic")
# Probabilities are clipped this far from 0 and 1 before the logit, so that saturated outputs stay finite.
LOGIT_EPSILON = 1e-12


def check_binary_inputs(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities and return them as NumPy arrays.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels, 0/1 or boolean.
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class, in [0, 1].

    Returns
    -------
    y_true : ndarray of int8
        Labels as 0/1 integers.
    y_prob : ndarray of float64
        Probabilities as floats.

    Raises
    ------
    ValueError
        On empty or non-1-D input, mismatched lengths, NaN or non-binary
        labels, or non-finite probabilities or ones outside [0, 1].
    """
    labels = _check_labels(y_true, "y_true")
    prob = np.asarray(y_prob, dtype=float)
    if prob.ndim != 1:
        raise ValueError(f"y_prob must be one-dimensional, got shape {prob.shape}")
    if len(labels) != len(prob):
        raise ValueError(f"y_true and y_prob differ in length ({len(labels)} vs {len(prob)})")
    if not np.all(np.isfinite(prob)):
        raise ValueError(f"y_prob holds {int(np.sum(~np.isfinite(prob)))} NaN or infinite value(s)")
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(f"y_prob must lie in [0, 1], got values in [{prob.min():g}, {prob.max():g}]")
    return labels, prob


def _check_labels(values, name: str) -> np.ndarray:
    """Return ``values`` as a non-empty 1-D 0/1 int8 array or raise ValueError."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if array.dtype == bool:
        return array.astype(np.int8)
    try:
        numeric = array.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {array.dtype}") from None
    if np.isnan(numeric).any():
        raise ValueError(f"{name} holds {int(np.isnan(numeric).sum())} NaN label(s)")
    bad = np.setdiff1d(np.unique(numeric), [0.0, 1.0])
    if bad.size:
        raise ValueError(f"{name} must hold only 0/1 labels, also found {bad[:5].tolist()}")
    return numeric.astype(np.int8)


def _safe_divide(numerator, denominator) -> np.ndarray:
    """Element-wise division that yields 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def rates_from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts, element-wise over arrays.

    Parameters
    ----------
    tp, fp, tn, fn : int or array-like of int
        Confusion counts (arrays broadcast together, e.g. one entry per threshold).

    Returns
    -------
    dict of str to ndarray
        accuracy, precision, recall, specificity, f1, tss and hss. Ratios with
        a zero denominator are 0.0 (the sklearn ``zero_division=0`` convention).

    Notes
    -----
    TSS (true skill statistic) is recall + specificity - 1. HSS is the Heidke
    skill score, 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)),
    which equals Cohen's kappa for a 2x2 table.
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=float) for c in (tp, fp, tn, fn))
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    specificity = _safe_divide(tn, tn + fp)
    return {
        "accuracy": _safe_divide(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "tss": recall + specificity - 1.0,
        "hss": _safe_divide(2 * (tp * tn - fn * fp), (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)),
    }


def rates_from_count_array(counts) -> dict[str, np.ndarray]:
    """`rates_from_counts` over an array of confusion counts, NaN where a class is absent.

    Parameters
    ----------
    counts : array-like of shape (..., 4)
        tp, fp, tn, fn along the last axis (e.g. resampled sums of per-region counts).

    Returns
    -------
    dict of str to ndarray of shape (...)
        As `rates_from_counts`, except that every metric is NaN where there are no positives
        (tp + fn == 0) or no negatives (fp + tn == 0): no skill score means anything there.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.shape[-1:] != (4,):
        raise ValueError(f"counts must end in an axis of 4 (tp, fp, tn, fn), got shape {counts.shape}")
    tp, fp, tn, fn = np.moveaxis(counts, -1, 0)
    both_classes = (tp + fn > 0) & (fp + tn > 0)
    return {key: np.where(both_classes, value, np.nan) for key, value in rates_from_counts(tp, fp, tn, fn).items()}


def confusion_counts(y_true, y_pred) -> dict[str, int]:
    """Count true/false positives and negatives.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        True and predicted labels, 0/1 or boolean.

    Returns
    -------
    dict
        ``{"tp": int, "fp": int, "tn": int, "fn": int}``.
    """
    truth = _check_labels(y_true, "y_true").astype(bool)
    pred = _check_labels(y_pred, "y_pred").astype(bool)
    if len(truth) != len(pred):
        raise ValueError(f"y_true and y_pred differ in length ({len(truth)} vs {len(pred)})")
    return {
        "tp": int(np.sum(truth & pred)),
        "fp": int(np.sum(~truth & pred)),
        "tn": int(np.sum(~truth & ~pred)),
        "fn": int(np.sum(truth & ~pred)),
    }


def _bin_statistics(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int):
    """Per-bin edges, counts and sums of probabilities and labels.

    Bin edges and assignment copy ``sklearn.calibration.calibration_curve``
    (strategy="uniform") so that a probability lying exactly on an edge lands
    in the same bin as there: bins are (lower, upper], the first one [0, upper].
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], y_prob)
    counts = np.bincount(ids, minlength=n_bins)
    prob_sums = np.bincount(ids, weights=y_prob, minlength=n_bins)
    true_sums = np.bincount(ids, weights=y_true, minlength=n_bins)
    return edges, counts, prob_sums, true_sums


def reliability_curve(y_true, y_prob, n_bins: int = 15) -> pd.DataFrame:
    """Reliability-diagram points over equal-width probability bins.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels.
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1].

    Returns
    -------
    DataFrame
        One row per non-empty bin with columns bin_lower, bin_upper,
        mean_predicted, fraction_positive and count. mean_predicted and
        fraction_positive equal ``prob_pred`` and ``prob_true`` of
        ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
    y_true, y_prob = check_binary_inputs(y_true, y_prob)
    edges, counts, prob_sums, true_sums = _bin_statistics(y_true, y_prob, n_bins)
    filled = counts > 0
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1][filled],
            "bin_upper": edges[1:][filled],
            "mean_predicted": prob_sums[filled] / counts[filled],
            "fraction_positive": true_sums[filled] / counts[filled],
            "count": counts[filled].astype(np.int64),
        }
    )


def calibration_errors(y_true, y_prob, n_bins: int = 15) -> tuple[float, float]:
    """Expected and maximum calibration error.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels.
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1] (same bins as `reliability_curve`).

    Returns
    -------
    ece : float
        Mean over bins of |fraction_positive - mean_predicted|, weighted by
        the share of samples in each bin.
    mce : float
        Largest such gap over the non-empty bins.
    """
    curve = reliability_curve(y_true, y_prob, n_bins)
    gaps = (curve["fraction_positive"] - curve["mean_predicted"]).abs().to_numpy()
    weights = curve["count"].to_numpy() / curve["count"].sum()
    return float(np.sum(weights * gaps)), float(gaps.max())


def fit_recalibration(y_true, y_prob, method: str = "platt") -> Callable[[Any], np.ndarray]:
    """Fit a monotone map from a model's probabilities to calibrated ones (on the validation split).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels; both classes must be present.
    y_prob : array-like of shape (n,)
        The model's probabilities on the same samples.
    method : {"platt", "isotonic"}, default "platt"
        ``platt``: a logistic regression of the label on ``logit(p)`` (two parameters, scikit-learn's
        ``LogisticRegression`` without penalty); it undoes a reweighting of the classes exactly, which
        shifts the logit by a constant. ``isotonic``: scikit-learn's ``IsotonicRegression``, a step
        function free of any shape assumption, which needs many positives not to overfit.

    Returns
    -------
    callable
        Maps probabilities (array-like) to recalibrated probabilities (ndarray).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    y_true, y_prob = check_binary_inputs(y_true, y_prob)
    if not 0 < y_true.sum() < len(y_true):
        raise ValueError("recalibration needs both classes in y_true")
    if method == "isotonic":
        isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(y_prob, y_true)
        return lambda prob: isotonic.predict(np.asarray(prob, dtype=float))

    def feature(prob) -> np.ndarray:
        return logit(np.clip(np.asarray(prob, dtype=float), LOGIT_EPSILON, 1.0 - LOGIT_EPSILON))[:, None]

    # Two parameters: converge tightly (the default tol leaves the fit ~1e-3 off its optimum).
    platt = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(feature(y_prob), y_true)
    return lambda prob: platt.predict_proba(feature(prob))[:, 1]


def binary_metrics(y_true, y_prob, threshold: float = 0.5, n_bins: int = 15) -> dict[str, float]:
    """Threshold, ranking and calibration metrics of one binary classifier.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels.
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class.
    threshold : float, default 0.5
        A sample is predicted positive when its probability is >= threshold.
        Choose it on the validation split (see `astrodag.evaluation.thresholds`).
    n_bins : int, default 15
        Bins for ECE and MCE.

    Returns
    -------
    dict of str to float
        threshold, n, n_positive, tp, fp, tn, fn, accuracy, precision, recall,
        specificity, f1, tss, hss, roc_auc, aucpr (average precision), brier,
        ece and mce. n, n_positive and the four counts are ints. roc_auc and
        aucpr are NaN when y_true holds a single class.
    """
    y_true, y_prob = check_binary_inputs(y_true, y_prob)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    counts = confusion_counts(y_true, (y_prob >= threshold).astype(np.int8))
    rates = rates_from_counts(**counts)
    # Ranking metrics are undefined with one class; sklearn would raise or warn.
    both_classes = 0 < y_true.sum() < len(y_true)
    ece, mce = calibration_errors(y_true, y_prob, n_bins)
    return {
        "threshold": float(threshold),
        "n": len(y_true),
        "n_positive": int(y_true.sum()),
        **counts,
        **{key: float(value) for key, value in rates.items()},
        "roc_auc": float(roc_auc_score(y_true, y_prob)) if both_classes else float("nan"),
        "aucpr": float(average_precision_score(y_true, y_prob)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y_true, y_prob, labels=[0, 1])),
        "ece": ece,
        "mce": mce,
    }


def curve_points(y_true, y_prob) -> dict[str, pd.DataFrame]:
    """ROC and precision-recall curve points from scikit-learn.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels; both classes must be present.
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class.

    Returns
    -------
    dict
        ``"roc"``: DataFrame with fpr, tpr, threshold (from ``roc_curve``; the
        first threshold is +inf, the point (0, 0)). ``"pr"``: DataFrame with
        recall, precision, threshold (from ``precision_recall_curve``; the
        final point (recall 0, precision 1) has no threshold and holds NaN).
    """
    y_true, y_prob = check_binary_inputs(y_true, y_prob)
    if not 0 < y_true.sum() < len(y_true):
        raise ValueError("ROC and precision-recall curves need both classes in y_true")
    fpr, tpr, roc_thresholds = roc_curve(y_true, y_prob)
    precision, recall, pr_thresholds = precision_recall_curve(y_true, y_prob)
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": roc_thresholds}),
        "pr": pd.DataFrame(
            {
                "recall": recall,
                "precision": precision,
                "threshold": np.append(pr_thresholds, np.nan),
            }
        ),
    }


def measure_latency(
    predict: Callable[[Any], Any],
    inputs,
    batch_size: int = 256,
    repeats: int = 3,
    warmup: int = 1,
) -> dict[str, float]:
    """Time inference over all of ``inputs`` in batches.

    Parameters
    ----------
    predict : callable
        Called as ``predict(inputs[i:i + batch_size])``. If it runs
        asynchronously (e.g. on a CUDA device) it must synchronise before it
        returns, or the timing measures only the launch.
    inputs : ndarray or torch.Tensor
        Anything with ``len`` and slicing along the first axis.
    batch_size : int, default 256
        Samples per call.
    repeats : int, default 3
        Timed passes over ``inputs``; the fastest is reported because slower
        passes measure interference from other processes, not the model.
    warmup : int, default 1
        Untimed passes first (caches, lazy initialisation, JIT).

    Returns
    -------
    dict of str to float
        per_sample_ms, samples_per_second, n_samples, batch_size, repeats and
        best_seconds (the fastest full pass).
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    n_samples = len(inputs)
    if n_samples == 0:
        raise ValueError("inputs is empty; nothing to time")

    def one_pass() -> None:
        for start in range(0, n_samples, batch_size):
            predict(inputs[start : start + batch_size])

    for _ in range(warmup):
        one_pass()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        timings.append(time.perf_counter() - start)
    best = min(timings)
    return {
        "per_sample_ms": 1000.0 * best / n_samples,
        "samples_per_second": n_samples / best if best > 0 else float("inf"),
        "n_samples": n_samples,
        "batch_size": int(batch_size),
        "repeats": int(repeats),
        "best_seconds": best,
    }
