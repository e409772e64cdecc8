"""What a classifier delivers at a deployment base rate other than that of its test set.

A test set is often balanced (or subsampled) while the stream a deployed classifier sees is
not: binary lenses are 5-10 % of microlensing events, bogus candidates outnumber real
supernovae many times over. Recall (TPR) and the false-positive rate (FPR) at a threshold do
not depend on the class shares, so the test set measures them; precision, the negative
predictive value (NPV) and the number of alarms per true positive follow from them at the
deployment share pi of positives (Bayes' rule):

    precision = TPR pi / (TPR pi + FPR (1 - pi))
    NPV       = (1 - FPR)(1 - pi) / ((1 - FPR)(1 - pi) + (1 - TPR) pi)
    alarms per true positive = 1 / precision.

Intervals propagate the test counts: TPR and FPR come from disjoint sets of events (the
positives and the negatives), and each gets a Wilson interval at confidence sqrt(c), so that
both hold together with probability c. The three quantities are monotone in TPR and FPR, so
their values at the corners of that box bound them with confidence >= c (conservative).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from astrodag.evaluation.statistics import wilson_interval


def deployment_rates(tpr, fpr, positive_share) -> dict[str, np.ndarray]:
    """Precision, NPV and alarms per true positive at ``positive_share`` from TPR and FPR (broadcast).

    NaN where undefined: precision when nothing is called positive (TPR = FPR = 0), NPV when
    nothing is called negative, alarms per true positive when no positive is found.
    """
    tpr, fpr, share = (np.asarray(x, dtype=float) for x in (tpr, fpr, positive_share))
    if np.any((share <= 0) | (share >= 1)):
        raise ValueError(f"positive_share must lie in (0, 1), got {positive_share!r}")
    true_alarms, false_alarms = tpr * share, fpr * (1 - share)
    true_rejections, misses = (1 - fpr) * (1 - share), (1 - tpr) * share
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_alarms / (true_alarms + false_alarms)
        npv = true_rejections / (true_rejections + misses)
        alarms = (true_alarms + false_alarms) / true_alarms
    return {"precision": precision, "npv": npv, "alarms_per_true_positive": np.where(true_alarms > 0, alarms, np.nan)}


def _number_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def base_rate_metrics(y_true, y_prob, threshold: float, negatives_per_positive: float | None,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Precision, NPV, alarms per true positive and AUCPR at ``negatives_per_positive`` negatives per positive.

    Parameters
    ----------
    y_true : array-like of 0/1
        Test labels (1 = positive).
    y_prob : array-like of float
        Scores; called positive at ``>= threshold``.
    threshold : float
        The decision threshold (chosen before the test split is seen).
    negatives_per_positive : float or None
        The deployment ratio (1 - pi) / pi; None: unknown, every metric is None.
    confidence : float, default 0.95
        Joint confidence of the intervals (see the module docstring).

    Returns
    -------
    dict
        negatives_per_positive, positive_share (pi), weight_of_negatives (the weight of each test
        negative that brings the test set to the deployment ratio), n_positive, n_negative, tpr, fpr,
        precision, npv, alarms_per_true_positive (each with ``_low`` / ``_high``) and aucpr (average
        precision with the negatives weighted). Undefined values (one class missing, nothing called
        positive) are None.
    """
    from sklearn.metrics import average_precision_score

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    positive = y_true == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    names = ("precision", "npv", "alarms_per_true_positive")
    result: dict[str, Any] = {
        "negatives_per_positive": None if negatives_per_positive is None else float(negatives_per_positive),
        "positive_share": None, "weight_of_negatives": None, "n_positive": n_pos, "n_negative": n_neg,
        **{f"{name}{end}": None for name in ("tpr", "fpr", *names) for end in ("", "_low", "_high")},
        "aucpr": None,
    }
    if negatives_per_positive is None or not n_pos or not n_neg:
        return result
    if not (math.isfinite(negatives_per_positive) and negatives_per_positive > 0):
        raise ValueError(f"negatives_per_positive must be a finite number > 0, got {negatives_per_positive!r}")
    share = 1.0 / (1.0 + negatives_per_positive)
    weight = negatives_per_positive * n_pos / n_neg
    called = y_prob >= threshold
    tp, fp = int(np.sum(called & positive)), int(np.sum(called & ~positive))
    tpr, fpr = tp / n_pos, fp / n_neg
    # Each rate at sqrt(confidence): both intervals hold together with probability `confidence`.
    tpr_low, tpr_high = wilson_interval(tp, n_pos, math.sqrt(confidence))
    fpr_low, fpr_high = wilson_interval(fp, n_neg, math.sqrt(confidence))
    point = deployment_rates(tpr, fpr, share)
    # Precision and NPV rise with TPR and fall with FPR; alarms per true positive is 1 / precision.
    worst = deployment_rates(tpr_low, fpr_high, share)
    best = deployment_rates(tpr_high, fpr_low, share)
    result.update({
        "positive_share": share, "weight_of_negatives": weight,
        "tpr": tpr, "tpr_low": float(tpr_low), "tpr_high": float(tpr_high),
        "fpr": fpr, "fpr_low": float(fpr_low), "fpr_high": float(fpr_high),
        "aucpr": float(average_precision_score(y_true, y_prob, sample_weight=np.where(positive, 1.0, weight))),
    })
    for name in names:
        low, high = (best, worst) if name == "alarms_per_true_positive" else (worst, best)
        result[name] = _number_or_none(point[name])
        result[f"{name}_low"] = _number_or_none(low[name])
        result[f"{name}_high"] = _number_or_none(high[name])
    return result
