"""Decision-threshold sweeps and selection.

A classifier's probabilities become labels only once a threshold is fixed,
and the threshold is a fitted parameter like any other. The protocol is:

1. ``sweep = sweep_thresholds(y_val, p_val)`` on the VALIDATION split;
2. ``threshold = select_threshold(sweep)``;
3. ``binary_metrics(y_test, p_test, threshold)`` applied ONCE to the TEST split.

Choosing the threshold on the test split would leak test labels into the
model and inflate every threshold metric that is reported.

The default score is the weighted sum ``EVEREST_WEIGHTS`` of threshold
metrics (TSS-heavy, as used for solar-flare forecasting).

Operating points by rule, also chosen on validation scores: `threshold_for_fnr`
and `threshold_for_fpr` (at most a target miss or false-alarm rate),
`equal_error_threshold` (FNR = FPR) and `max_tss_threshold` (Youden's J);
`rates_at` gives the error rates, with Wilson intervals, at a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from astrodag.errors import ConfigError
from astrodag.evaluation.metrics import check_binary_inputs, confusion_counts, curve_points, rates_from_counts
from astrodag.evaluation.statistics import wilson_interval

EVEREST_WEIGHTS = {"tss": 0.4, "f1": 0.2, "precision": 0.15, "recall": 0.15, "specificity": 0.1}

WEIGHTABLE_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "tss", "hss")


def threshold_grid(start: float = 0.1, stop: float = 0.9, num: int = 81) -> np.ndarray:
    """Evenly spaced thresholds, rounded so that e.g. 0.3 is exactly ``0.3``.

    Parameters
    ----------
    start, stop : float
        First and last threshold (both included).
    num : int
        Number of thresholds.

    Returns
    -------
    ndarray of float
    """
    # Rounding removes linspace fuzz (0.30000000000000004), so a threshold
    # read back from a config or table compares equal to the grid value.
    return np.round(np.linspace(start, stop, num), 6)


def validate_weights(weights: Mapping[str, float], key: str = "weights") -> dict[str, float]:
    """Check a metric-weight mapping for the threshold score.

    Parameters
    ----------
    weights : mapping of str to float
        Metric name (one of `WEIGHTABLE_METRICS`) to a non-negative weight.
    key : str, default "weights"
        Config key the mapping came from, used in error messages.

    Returns
    -------
    dict of str to float

    Raises
    ------
    ConfigError
        On a non-mapping, an unknown metric name, a non-numeric, non-finite or
        negative weight, or when all weights are zero.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError(key, f"must be a mapping of metric name to weight, got {type(weights).__name__}")
    checked = {}
    for name, weight in weights.items():
        if name not in WEIGHTABLE_METRICS:
            raise ConfigError(f"{key}.{name}", f"unknown metric; choose from {', '.join(WEIGHTABLE_METRICS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{key}.{name}", f"weight must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{key}.{name}", f"weight must be finite and >= 0, got {weight!r}")
        checked[name] = float(weight)
    if not any(checked.values()):
        raise ConfigError(key, "at least one weight must be positive")
    return checked


def sweep_thresholds(y_true, y_prob, thresholds=None, weights=None) -> pd.DataFrame:
    """Threshold metrics and a weighted score at every threshold.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels (of the validation split).
    y_prob : array-like of shape (n,)
        Predicted probabilities of the positive class.
    thresholds : array-like of float, optional
        Thresholds to evaluate; default `threshold_grid()`. A sample is
        predicted positive when its probability is >= the threshold.
    weights : mapping of str to float, optional
        Score weights; default `EVEREST_WEIGHTS`.

    Returns
    -------
    DataFrame
        One row per threshold, in the given order, with columns threshold, tp,
        fp, tn, fn, accuracy, precision, recall, specificity, f1, tss, hss and
        score (the weighted sum of the weighted metrics).
    """
    y_true, y_prob = check_binary_inputs(y_true, y_prob)
    thresholds = threshold_grid() if thresholds is None else np.asarray(thresholds, dtype=float)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {thresholds.shape}")
    if not np.all(np.isfinite(thresholds)):
        raise ValueError("thresholds must be finite")
    weights = validate_weights(EVEREST_WEIGHTS if weights is None else weights)

    # Sort each class once; the number of samples with prob >= t is then
    # len - searchsorted(..., t, side="left"), for all thresholds at once.
    positives = np.sort(y_prob[y_true == 1])
    negatives = np.sort(y_prob[y_true == 0])
    tp = len(positives) - np.searchsorted(positives, thresholds, side="left")
    fp = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    fn = len(positives) - tp
    tn = len(negatives) - fp

    rates = rates_from_counts(tp, fp, tn, fn)
    frame = pd.DataFrame({"threshold": thresholds, "tp": tp, "fp": fp, "tn": tn, "fn": fn, **rates})
    frame["score"] = sum(weight * rates[name] for name, weight in weights.items())
    return frame


def select_threshold(sweep: pd.DataFrame) -> float:
    """The threshold with the highest score in a sweep.

    Ties (scores equal to within 1e-12) go to the threshold closest to 0.5,
    and then to the lower one, so that the choice is deterministic.

    Parameters
    ----------
    sweep : DataFrame
        Output of `sweep_thresholds` (needs columns threshold and score).

    Returns
    -------
    float
    """
    missing = {"threshold", "score"} - set(sweep.columns)
    if missing:
        raise ValueError(f"sweep lacks column(s) {sorted(missing)}")
    thresholds = sweep["threshold"].to_numpy(dtype=float)
    scores = sweep["score"].to_numpy(dtype=float)
    if not np.isfinite(scores).any():
        raise ValueError("sweep has no finite score to select a threshold from")
    best = np.nanmax(scores)
    tied = np.flatnonzero(np.isclose(scores, best, rtol=0.0, atol=1e-12))
    # Rounded so that 0.3 and 0.7 are equally far from 0.5 despite float error.
    distance = np.round(np.abs(thresholds[tied] - 0.5), 9)
    # lexsort sorts by the last key first: distance to 0.5, then the threshold.
    order = np.lexsort((thresholds[tied], distance))
    return float(thresholds[tied[order[0]]])


def threshold_for_fnr(y_true, y_prob, max_fnr: float) -> float:
    """The highest threshold whose FNR on (``y_true``, ``y_prob``) is at most ``max_fnr``.

    With P positives, ``k = floor(max_fnr P)`` of them may be missed: the threshold is
    the (k+1)-th lowest positive score (scores >= threshold are called positive).

    Raises
    ------
    ValueError
        Without positive examples.
    """
    positives = np.sort(np.asarray(y_prob, float)[np.asarray(y_true) == 1])
    if positives.size == 0:
        raise ValueError("no positive examples to choose an FNR threshold on")
    allowed = int(math.floor(max_fnr * positives.size + 1e-9))
    return float(positives[min(allowed, positives.size - 1)])


def threshold_for_fpr(y_true, y_prob, max_fpr: float) -> float:
    """The lowest threshold whose FPR on (``y_true``, ``y_prob``) is at most ``max_fpr``.

    With N negatives, ``k = floor(max_fpr N)`` of them may be called positive: the threshold
    lies just above the (k+1)-th highest negative score (the next float up), so that at most
    k negatives reach it.

    Raises
    ------
    ValueError
        Without negative examples.
    """
    negatives = np.sort(np.asarray(y_prob, float)[np.asarray(y_true) == 0])[::-1]
    if negatives.size == 0:
        raise ValueError("no negative examples to choose an FPR threshold on")
    allowed = int(math.floor(max_fpr * negatives.size + 1e-9))
    if allowed >= negatives.size:
        return float(negatives[-1])
    return float(np.nextafter(negatives[allowed], np.inf))


def equal_error_threshold(y_true, y_prob) -> float:
    """The ROC threshold at which FNR and FPR are closest (the equal-error rate; the highest on ties)."""
    roc = curve_points(y_true, y_prob)["roc"]
    finite = np.isfinite(roc["threshold"].to_numpy())
    fpr, tpr, thresholds = (roc[column].to_numpy()[finite] for column in ("fpr", "tpr", "threshold"))
    gap = np.abs((1 - tpr) - fpr)
    return float(min(thresholds[np.flatnonzero(gap == gap.min())[-1]], 1.0))


def max_tss_threshold(y_true, y_prob) -> float:
    """The ROC threshold maximising TPR - FPR (Youden's J, the true skill statistic)."""
    roc = curve_points(y_true, y_prob)["roc"]
    finite = np.isfinite(roc["threshold"].to_numpy())
    fpr, tpr, thresholds = (roc[column].to_numpy()[finite] for column in ("fpr", "tpr", "threshold"))
    return float(min(thresholds[np.argmax(tpr - fpr)], 1.0))


def _ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or None (null in JSON) when it is undefined."""
    return numerator / denominator if denominator else None


def rates_at(y_true, y_prob, threshold: float, confidence: float = 0.95) -> dict[str, Any]:
    """FNR and FPR (with Wilson intervals), precision, recall, accuracy and counts at ``threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels.
    y_prob : array-like of shape (n,)
        Scores; ``score >= threshold`` is called positive.
    threshold : float
    confidence : float, default 0.95
        Level of the ``fnr_ci95`` and ``fpr_ci95`` intervals.

    Returns
    -------
    dict
        threshold, fnr, fnr_ci95, fpr, fpr_ci95, precision, recall, accuracy, tp, fp, tn, fn.
        Rates without examples to count (e.g. the FNR of a set without positives) are None.
    """
    counts = confusion_counts(y_true, np.asarray(y_prob) >= threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    intervals = {}
    for name, (errors, trials) in {"fnr": (fn, tp + fn), "fpr": (fp, fp + tn)}.items():
        low, high = wilson_interval(errors, trials, confidence)
        intervals[name] = [low, high] if trials else None
    return {
        "threshold": float(threshold),
        "fnr": _ratio(fn, tp + fn), "fnr_ci95": intervals["fnr"],
        "fpr": _ratio(fp, fp + tn), "fpr_ci95": intervals["fpr"],
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }
