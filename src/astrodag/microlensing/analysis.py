"""Analysis of the microlensing classifier's scores: early detection, detection times, cadences.

The causal classifier gives P(binary) at every step of the time grid (the value
at step t uses only epochs <= t). This module turns those scores into

* early-detection curves: accuracy and ROC AUC when the classifier has seen a
  fraction of the time grid (basis "time") or of the event's observed epochs
  (basis "observed"), with the median (t - t0)/tE of the binaries reached by then,
  the one-sided Mann-Whitney p-value of "ROC AUC > 0.5" (does the classifier beat
  chance there?), the share of binaries that no PSPL fitted within the noise
  by then (``evidence_time`` of the simulation), and the ROC AUC and p-value of
  an ideal classifier that ranks exactly those binaries above every other event.
  Where even that misses significance, a classifier has only how typical the
  light curve seen so far is of each simulated population to go on: a weak
  signal that needs more test events than the smallest AUC they resolve
  (``resolvable_auc``);
* early detection by the event's own clock (`phase_detection`): the same columns at
  t = t0 + k tE and t = brightening_time + k tE, each event scored with P(binary) at the
  last step complete by t; events without such a step are left out of that row and counted;
* precision, NPV and alarms per true binary at realistic binary shares (5-10 %) from the
  test recall and false-alarm rate (`deployment_metrics`);
* detection times, as a real-time system would raise them: the first observed epoch
  at which P(binary) has been at or above a threshold for ``consecutive_epochs``
  observed epochs in a row (the model is causal, so this uses only the scores up to
  that epoch; unobserved steps never raise one). Binaries give detections; on PSPL
  events every alarm is a false alarm, counted per event and per year of monitoring;
* per-cadence metrics, tables and figures (:func:`evaluate_cadence`).

The streaming pass over the scores is in :mod:`astrodag.microlensing.scan`, the figures in
:mod:`astrodag.microlensing.figures` and the comparison of cadences in
:mod:`astrodag.microlensing.report`.

The positive class is the binary lens (label 1). Decisions use a fixed
threshold (0.5 by default): classes are balanced and nothing is tuned on the
test split. Intervals are 95 % Wilson intervals over the test events, i.e. they
cover the sampling of the test set, not the training variance of the model.

Probabilities of N_test = 150 000 events x 1500 steps (900 MB of float32) are
never loaded whole: one pass over row chunks of the memory-mapped array
gathers everything the tables need (a few numbers per event).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from statsmodels.stats.rates import confint_poisson

from astrodag.errors import ConfigError, InputDataError
from astrodag.evaluation.base_rate import base_rate_metrics
from astrodag.evaluation.completeness import recall_interval
from astrodag.evaluation.metrics import binary_metrics, curve_points
from astrodag.evaluation.statistics import auc_p_value, untied_auc_p_value, wilson_interval
from astrodag.io import read_table, save_figure, write_json, write_table
from astrodag.microlensing.figures import (
    cadence_roc_figure,
    detection_times_figure,
    early_detection_figure,
    phase_detection_figure,
)
from astrodag.microlensing.scan import (
    BASES,
    CHUNK_EVENTS,
    ArrayProblem,
    as_2d,
    check_basis,
    check_consecutive,
    check_decision_threshold,
    check_event_column,
    check_fractions,
    check_labels,
    check_mask_shape,
    check_pspl_like,
    check_thresholds,
    check_times,
    scan_scores,
)
from astrodag.reporting.figures import plot_confusion_matrix
from astrodag.reporting.tables import format_interval
from astrodag.settings import Settings, number, sequence, setting

logger = logging.getLogger(__name__)

def _open_probability(key: str, value: Any) -> float:
    """A probability strictly between 0 and 1."""
    value = number(0.0, 1.0, low_open=True)(key, value)
    if value >= 1.0:
        raise ConfigError(key, f"must be < 1, got {value}")
    return value


DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.9, 0.95)
DEFAULT_EVENT_PHASES = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
DEFAULT_AFTER_BRIGHTENING = (0.0, 0.25, 0.5, 1.0)
# Binary lenses are a few to ~10 % of the bulge events surveys find (issue 14): the shares at which
# precision, NPV and alarms per true binary are reported.
DEFAULT_BINARY_SHARES = (0.05, 0.1)


@dataclasses.dataclass(frozen=True)
class MicrolensingAnalysisSettings(Settings):
    """What the per-cadence analysis reports (config ``microlensing.analysis``).

    Keys
    ----
    fractions : list of float, default [0.1, 0.2, ..., 1.0]
        Fractions of the light curve seen at which early detection is reported, in (0, 1].
    detection_thresholds : list of float, default [0.5, 0.8, 0.9, 0.95]
        P(binary) thresholds of the detection times, in (0, 1).
    consecutive_epochs : int, default 1
        Observed epochs in a row with P(binary) at or above the threshold that raise an alarm
        (a detection on a binary, a false alarm on a PSPL event); >= 1.
    event_phases_tE : list of float, default [-2, -1, -0.5, 0, 0.5, 1, 2]
        k of the early detection by the event's own clock: accuracy and ROC AUC at t0 + k tE.
    after_brightening_tE : list of float, default [0, 0.25, 0.5, 1]
        k of the early detection after the first significant brightening: at brightening_time + k tE.
    deployment_binary_shares : list of float, default [0.05, 0.1]
        Shares of binary lenses among the events a survey classifies, in (0, 1): precision, NPV and
        alarms per true binary are given at each (the test set is balanced).
    """

    PREFIX: ClassVar[str] = "microlensing.analysis"

    fractions: tuple[float, ...] = setting(DEFAULT_FRACTIONS, sequence(number(0.0, 1.0, low_open=True)))
    detection_thresholds: tuple[float, ...] = setting(DEFAULT_THRESHOLDS, sequence(_open_probability))
    consecutive_epochs: int = setting(1, number(1, integer=True))
    event_phases_tE: tuple[float, ...] = setting(DEFAULT_EVENT_PHASES, sequence(number()))
    after_brightening_tE: tuple[float, ...] = setting(DEFAULT_AFTER_BRIGHTENING, sequence(number()))
    deployment_binary_shares: tuple[float, ...] = setting(DEFAULT_BINARY_SHARES, sequence(_open_probability))


DECISION_THRESHOLD = 0.5
CONFIDENCE = 0.95
CLASS_NAMES = ("PSPL", "binary")
# At most this many ROC points go into metrics.json (compare_cadences redraws the curves from them).
MAX_ROC_POINTS = 1001

EVALUATION_FILES = {
    "probabilities": "probabilities.npy",
    "mask": "mask.npy",
    "events": "events.parquet",
    "times": "times.npy",
}
CADENCE_OUTPUTS = (
    "metrics.json",
    "early_detection.csv",
    "early_detection_phase.csv",
    "detection_times.csv",
    "detection_summary.csv",
    "roc.png",
    "confusion_matrix.png",
    "early_detection.png",
    "early_detection_phase.png",
    "detection_times.png",
)


# ---------------------------------------------------------------------------
# Metrics of one set of decisions
# ---------------------------------------------------------------------------

_NAN = float("nan")


def _classification_summary(labels: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, recall and false-alarm rate with Wilson intervals, ROC AUC and counts.

    NaN (and zero counts) for an empty subset; ROC AUC and AUCPR are NaN
    without warnings when one class is missing (binary_metrics guards it).
    """
    if len(labels) == 0:
        return {
            "n_events": 0, "n_binary": 0, "n_pspl": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0, "n_correct": 0,
            **{k: _NAN for k in ("accuracy", "accuracy_low", "accuracy_high", "recall", "recall_low", "recall_high",
                                 "false_alarm_rate", "false_alarm_low", "false_alarm_high", "roc_auc", "aucpr",
                                 "brier", "roc_auc_p_value")},
        }
    metrics = binary_metrics(labels, np.asarray(prob, dtype=np.float64), threshold=threshold)
    tp, fp, tn, fn = metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]
    n_binary, n_pspl = tp + fn, fp + tn
    correct = tp + tn
    acc_low, acc_high = wilson_interval(correct, metrics["n"], CONFIDENCE)
    rec_low, rec_high = wilson_interval(tp, n_binary, CONFIDENCE)
    fa_low, fa_high = wilson_interval(fp, n_pspl, CONFIDENCE)
    return {
        "n_events": metrics["n"],
        "n_binary": n_binary,
        "n_pspl": n_pspl,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_correct": correct,
        "accuracy": metrics["accuracy"],
        "accuracy_low": acc_low,
        "accuracy_high": acc_high,
        "recall": tp / n_binary if n_binary else _NAN,
        "recall_low": rec_low,
        "recall_high": rec_high,
        "false_alarm_rate": fp / n_pspl if n_pspl else _NAN,
        "false_alarm_low": fa_low,
        "false_alarm_high": fa_high,
        "roc_auc": metrics["roc_auc"],
        "roc_auc_p_value": auc_p_value(labels, prob),
        "aucpr": metrics["aucpr"],
        "brier": metrics["brier"],
    }


def _subset_columns(labels, prob, threshold, pspl_like) -> dict[str, Any]:
    """Columns of one early-detection row (or of the final step): all events, without and only PSPL-like."""
    everything = _classification_summary(labels, prob, threshold)
    keep = ~(pspl_like & (labels == 1))
    without = _classification_summary(labels[keep], prob[keep], threshold)
    like = ~keep
    n_like = int(like.sum())
    called_binary = int(np.sum(prob[like].astype(np.float64) >= threshold))
    like_low, like_high = wilson_interval(called_binary, n_like, CONFIDENCE)
    columns = {key: everything[key] for key in (
        "n_events", "n_binary", "n_pspl", "n_correct", "accuracy", "accuracy_low", "accuracy_high", "roc_auc",
        "roc_auc_p_value", "aucpr", "recall", "recall_low", "recall_high", "false_alarm_rate", "false_alarm_low",
        "false_alarm_high",
    )}
    columns.update({
        "n_events_without_pspl_like": without["n_events"],
        "accuracy_without_pspl_like": without["accuracy"],
        "accuracy_without_pspl_like_low": without["accuracy_low"],
        "accuracy_without_pspl_like_high": without["accuracy_high"],
        "roc_auc_without_pspl_like": without["roc_auc"],
        "n_pspl_like": n_like,
        # Share of PSPL-like binaries still called binary (their "accuracy").
        "recall_pspl_like": called_binary / n_like if n_like else _NAN,
        "recall_pspl_like_low": like_low,
        "recall_pspl_like_high": like_high,
    })
    return columns


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else _NAN


def _ideal_columns(labels: np.ndarray, evidence_time: np.ndarray | None,
                   step_times: np.ndarray | None) -> dict[str, float]:
    """Share of binaries past their evidence time, and what a classifier that knows exactly which reaches.

    The ideal classifier ranks those binaries above every other event and the rest at random:
    its ROC AUC is 0.5 + share / 2, and ``ideal_roc_auc_p_value`` is the p-value of that AUC for
    distinct scores (``untied_auc_p_value``), the test the classifier's own scores get. It is
    not a bound on every classifier: one can also learn how typical a light curve that some
    PSPL fits is of each simulated population.
    """
    binary = labels == 1
    if evidence_time is None or step_times is None or not binary.any():
        return {"distinguishable_share_binary": _NAN, "ideal_roc_auc": _NAN, "ideal_roc_auc_p_value": _NAN}
    # NaN evidence times (never told apart from a PSPL, and PSPL events) never count.
    share = float(np.mean(evidence_time[binary] <= step_times[binary]))
    ideal_auc = 0.5 + share / 2
    return {"distinguishable_share_binary": share, "ideal_roc_auc": ideal_auc,
            "ideal_roc_auc_p_value": untied_auc_p_value(ideal_auc, int(binary.sum()), int((~binary).sum()))}


def _early_rows(
    basis: str,
    fractions: np.ndarray,
    gathered: np.ndarray,
    steps: np.ndarray,
    labels: np.ndarray,
    pspl_like: np.ndarray,
    threshold: float,
    times: np.ndarray | None,
    t0: np.ndarray | None,
    tE: np.ndarray | None,
    evidence_time: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    binary = labels == 1
    rows = []
    for j, fraction in enumerate(fractions):
        step = steps[:, j]
        row: dict[str, Any] = {"basis": basis, "fraction": float(fraction), "median_step": float(np.median(step))}
        if times is not None:
            step_times = times[step]
            row["median_time_days"] = float(np.median(step_times))
            if t0 is not None and tE is not None:
                phase = (step_times[binary] - t0[binary]) / tE[binary]
                row["median_phase_binary"] = _median(phase)
            else:
                row["median_phase_binary"] = _NAN
            row.update(_ideal_columns(labels, evidence_time, step_times))
        else:
            row["median_time_days"] = _NAN
            row["median_phase_binary"] = _NAN
            row.update(_ideal_columns(labels, None, None))
        row.update(_subset_columns(labels, gathered[:, j], threshold, pspl_like))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Public pure functions
# ---------------------------------------------------------------------------


def early_detection(
    probabilities,
    labels,
    mask,
    fractions,
    basis: str,
    threshold: float = DECISION_THRESHOLD,
    pspl_like=None,
    *,
    times=None,
    t0=None,
    tE=None,
    evidence_time=None,
    chunk_events: int = CHUNK_EVENTS,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Classification quality after a fraction of the light curve.

    Parameters
    ----------
    probabilities : array-like of shape (N, T)
        P(binary) at every step (memory-mapped arrays are streamed in chunks).
    labels : array-like of shape (N,)
        0 = PSPL, 1 = binary.
    mask : array-like of shape (N, T) or None
        1 = observed epoch. Needed for basis "observed" (every event must have
        at least one observed epoch); checked for shape when given otherwise.
    fractions : sequence of float
        Fractions in (0, 1].
    basis : {"time", "observed"}
        "time": the step ceil(f * T) - 1, the same for every event.
        "observed": per event, the step at which the cumulative number of
        observed epochs first reaches ceil(f * total observed).
    threshold : float, default 0.5
        An event is called binary when P(binary) >= threshold.
    pspl_like : array-like of bool, optional
        Binaries indistinguishable from PSPL; ``*_without_pspl_like`` columns
        drop them, ``recall_pspl_like`` is the share of them still called binary.
    times, t0, tE : array-like, optional (keyword only)
        Time grid (T,), peak times and Einstein times (N,), in days. With all
        three, ``median_phase_binary`` is the median (t_step - t0)/tE over the
        binaries (how much of the event had been seen); otherwise NaN.
    evidence_time : array-like of shape (N,), optional (keyword only)
        Per binary, the first time (days) at which no PSPL fits its light curve
        seen so far (NaN: never, and for PSPL events). With ``times``,
        ``distinguishable_share_binary`` is the share of binaries past it at each
        fraction, and ``ideal_roc_auc`` / ``ideal_roc_auc_p_value`` those of a
        classifier that ranks exactly them above everything else; otherwise NaN.
    chunk_events : int
        Rows per chunk.
    progress : bool, optional
        Progress bar (default: on a terminal).

    Returns
    -------
    DataFrame
        One row per fraction: basis, fraction, median_step, median_time_days,
        median_phase_binary, n_events, n_binary, n_pspl, n_correct, accuracy,
        accuracy_low, accuracy_high (95 % Wilson), roc_auc (NaN with one
        class), roc_auc_p_value (one-sided Mann-Whitney, AUC > 0.5),
        distinguishable_share_binary, ideal_roc_auc, ideal_roc_auc_p_value, aucpr,
        recall(+_low/_high), false_alarm_rate(+_low/_high),
        n_events_without_pspl_like, accuracy_without_pspl_like(+_low/_high),
        roc_auc_without_pspl_like, n_pspl_like, recall_pspl_like(+_low/_high).

    Raises
    ------
    ValueError
        On inconsistent shapes, probabilities outside [0, 1] or not finite,
        non-binary labels, a mask that is not 0/1, or (basis "observed") an
        event without observed epochs.
    """
    basis = check_basis(basis)
    fractions = check_fractions(fractions)
    threshold = check_decision_threshold(threshold)
    probabilities = as_2d(probabilities, "probabilities")
    n_events, n_steps = probabilities.shape
    labels = check_labels(labels, n_events)
    pspl_like = check_pspl_like(pspl_like, n_events)
    if mask is None:
        if basis == "observed":
            raise ValueError("basis 'observed' needs the observation mask")
    else:
        mask = check_mask_shape(mask, probabilities.shape)
    times, t0, tE = _check_phase_inputs(times, t0, tE, n_events, n_steps)
    if evidence_time is not None:
        evidence_time = _check_evidence_time(evidence_time, n_events)
    scan = scan_scores(probabilities, mask, fractions, (basis,), None, chunk_events, progress)
    rows = _early_rows(basis, fractions, scan["gathered"][basis], scan["steps"][basis], labels, pspl_like,
                       threshold, times, t0, tE, evidence_time)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Early detection by the event's own clock
# ---------------------------------------------------------------------------

# Reference time of each clock: "peak" t0 + k tE, "brightening" brightening_time + k tE.
PHASE_REFERENCES = {"peak": "t0", "brightening": "brightening_time"}


def known_steps(times: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last step complete at each time of ``at``, and whether there is one on the grid.

    Step i summarises the observations in [times[i], times[i + 1]) (the last one a median step
    long), so its score is known at the step's end: the score of an event at time t is that of
    the last step ending at or before t, what a real-time system knew then. Times before the
    first step ends, after the grid ends or NaN have none (``inside`` False; their step is 0).
    """
    times = np.asarray(times, dtype=float)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    ends = np.append(times[1:], times[-1] + step)
    at = np.asarray(at, dtype=float)
    with np.errstate(invalid="ignore"):
        steps = np.searchsorted(ends, np.nan_to_num(at, nan=-np.inf), side="right") - 1
        inside = np.isfinite(at) & (steps >= 0) & (at <= ends[-1])
    return np.where(inside, steps, 0).astype(np.int64), inside


def _phase_points(arrays: dict[str, np.ndarray], event_phases: np.ndarray,
                  after_brightening: np.ndarray) -> tuple[list[tuple[str, float]], np.ndarray]:
    """The (clock, k) of every phase row and the (N, P) times t = reference + k tE (NaN without a reference)."""
    points = [("peak", float(k)) for k in event_phases] + [("brightening", float(k)) for k in after_brightening]
    at = np.stack([arrays[PHASE_REFERENCES[clock]] + k * arrays["tE"] for clock, k in points], axis=1)
    return points, at


def _phase_rows(points, at, inside, scores, labels, pspl_like, threshold, evidence_time) -> list[dict[str, Any]]:
    rows = []
    for j, (clock, k) in enumerate(points):
        keep = inside[:, j]
        no_reference = np.isnan(at[:, j])
        excluded = ~keep
        row: dict[str, Any] = {
            "clock": clock,
            "k_tE": k,
            "n_excluded": int(excluded.sum()),
            "n_excluded_binary": int(np.sum(excluded & (labels == 1))),
            "n_excluded_pspl": int(np.sum(excluded & (labels == 0))),
            "n_no_reference": int(no_reference.sum()),
            "n_outside_grid": int(np.sum(excluded & ~no_reference)),
            "median_time_days": _median(at[keep, j]),
        }
        row.update(_ideal_columns(labels[keep], None if evidence_time is None else evidence_time[keep], at[keep, j]))
        row.update(_subset_columns(labels[keep], scores[keep, j], threshold, pspl_like[keep]))
        rows.append(row)
    return rows


def _check_phases(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {values!r}")
    return array


def phase_detection(
    probabilities,
    events: pd.DataFrame,
    times,
    threshold: float = DECISION_THRESHOLD,
    event_phases=DEFAULT_EVENT_PHASES,
    after_brightening=DEFAULT_AFTER_BRIGHTENING,
    *,
    chunk_events: int = CHUNK_EVENTS,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Classification quality by the event's own clock: at t0 + k tE and at brightening_time + k tE.

    With t0 spread over much of the grid, "a fraction of the grid" mostly says where the t0 prior
    put the peaks; these rows ask what was known a given number of Einstein times before or after
    the peak, or after the first significant brightening (what a survey's alert sees).

    Parameters
    ----------
    probabilities : array-like of shape (N, T)
        P(binary) at every step (memory-mapped arrays are streamed in chunks).
    events : DataFrame
        N rows in the same order with label, t0, tE, brightening_time (days; NaN: the event never
        brightened significantly) and optionally pspl_like and evidence_time.
    times : array-like of shape (T,)
        Start of each step (days).
    threshold : float, default 0.5
        Decision threshold for accuracy, recall and false alarms.
    event_phases, after_brightening : sequence of float
        The k of the two clocks.

    Returns
    -------
    DataFrame
        One row per (clock, k): clock ("peak" or "brightening"), k_tE, n_excluded (events without a
        score then: ``n_excluded_binary`` + ``n_excluded_pspl``; ``n_no_reference`` never brightened,
        ``n_outside_grid`` fall before the first step ends or after the grid), median_time_days,
        distinguishable_share_binary, ideal_roc_auc(+_p_value) and the columns of `early_detection`
        (n_events, n_binary, n_pspl behind the row, accuracy with its Wilson interval, roc_auc and its
        one-sided Mann-Whitney p-value, recall, false alarms, PSPL-like columns). Each event's score
        at time t is its P(binary) at the last step complete by t (`known_steps`). Events outside the
        grid at a k are left out of that row only, so rows differ in their events; conditioning on a
        brightening also selects events (those that never brightened are left out of those rows).
    """
    threshold = check_decision_threshold(threshold)
    probabilities = as_2d(probabilities, "probabilities")
    n_events, n_steps = probabilities.shape
    arrays = _events_arrays(events, n_events, need_brightening=True)
    times = check_times(times, n_steps)
    points, at = _phase_points(arrays, _check_phases(event_phases, "event_phases"),
                               _check_phases(after_brightening, "after_brightening"))
    steps, inside = known_steps(times, at)
    scan = scan_scores(probabilities, None, check_fractions([1.0]), (), None, chunk_events, progress,
                       event_steps=steps)
    return pd.DataFrame(_phase_rows(points, at, inside, scan["at_steps"], arrays["label"], arrays["pspl_like"],
                                    threshold, arrays.get("evidence_time")))


def _check_phase_inputs(times, t0, tE, n_events: int, n_steps: int):
    if times is not None:
        times = check_times(times, n_steps)
    if (t0 is None) != (tE is None):
        raise ValueError("give both t0 and tE, or neither")
    if t0 is not None:
        t0 = check_event_column(t0, "t0", n_events)
        tE = check_event_column(tE, "tE", n_events, positive=True)
    return times, t0, tE


def _check_evidence_time(values, n_events: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n_events,):
        raise ArrayProblem("events", f"evidence_time has shape {array.shape}, expected ({n_events},)")
    if np.isinf(array).any():
        raise ArrayProblem("events", "evidence_time must be finite or NaN (never told apart from a PSPL)")
    return array


def _events_arrays(events: pd.DataFrame, n_events: int, need_phase: bool = True,
                   need_brightening: bool = False) -> dict[str, np.ndarray]:
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    required = ["label", "t0", "tE"] if need_phase else ["label"]
    required += ["brightening_time"] if need_brightening else []
    missing = [c for c in required if c not in events.columns]
    if missing:
        raise ArrayProblem("events", f"events lack column(s) {missing}; they have {list(events.columns)}")
    if len(events) != n_events:
        raise ArrayProblem("events", f"{len(events)} event rows for {n_events} rows of probabilities")
    arrays = {
        "label": check_labels(events["label"].to_numpy(), n_events),
        "pspl_like": check_pspl_like(events["pspl_like"] if "pspl_like" in events.columns else None, n_events),
        "event_id": (events["event_id"].to_numpy(dtype=np.int64) if "event_id" in events.columns
                     else np.arange(n_events, dtype=np.int64)),
    }
    if "evidence_time" in events.columns:
        arrays["evidence_time"] = _check_evidence_time(events["evidence_time"].to_numpy(), n_events)
    if need_phase:
        arrays["t0"] = check_event_column(events["t0"].to_numpy(), "t0", n_events)
        arrays["tE"] = check_event_column(events["tE"].to_numpy(), "tE", n_events, positive=True)
    if need_brightening:
        brightening = np.asarray(events["brightening_time"].to_numpy(), dtype=np.float64)
        if np.isinf(brightening).any():
            raise ArrayProblem("events", "brightening_time must be finite or NaN (never brightened)")
        arrays["brightening_time"] = brightening
    return arrays


def grid_days(times: np.ndarray) -> float:
    """Duration of the time grid: its span plus one (median) step, each step standing for its interval.

    The monitoring time of every event: the survey watches the field over the whole grid,
    gaps included, and an alarm can be raised at any observed epoch of it. NaN for one step.
    """
    if len(times) < 2:
        return _NAN
    return float(times[-1] - times[0] + np.median(np.diff(times)))


def _detection_frame(scan: dict, thresholds: np.ndarray, arrays: dict, times: np.ndarray,
                     consecutive: int) -> pd.DataFrame:
    detection, alarm_counts = scan["detection"], scan["alarms"]
    n_events, n_thresholds = detection.shape
    n_steps = len(times)
    never = detection >= n_steps
    days = np.where(never, np.nan, times[np.minimum(detection, n_steps - 1)])
    phase = (days - arrays["t0"][:, None]) / arrays["tE"][:, None]
    return pd.DataFrame({
        "event_id": np.repeat(arrays["event_id"], n_thresholds),
        "label": np.repeat(arrays["label"], n_thresholds),
        "pspl_like": np.repeat(arrays["pspl_like"], n_thresholds),
        "threshold": np.tile(thresholds, n_events),
        "consecutive_epochs": consecutive,
        "detected": ~never.ravel(),
        "detection_step": pd.arrays.IntegerArray(detection.ravel().astype(np.int64), never.ravel()),
        "detection_day": days.ravel(),
        "detection_phase": phase.ravel(),
        "n_alarms": alarm_counts.ravel(),
        "monitoring_days": grid_days(times),
    })


def detection_times(
    probabilities,
    events: pd.DataFrame,
    times,
    thresholds=DEFAULT_THRESHOLDS,
    *,
    mask=None,
    consecutive_epochs: int = 1,
    chunk_events: int = CHUNK_EVENTS,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Real-time alarms: the first observed epoch at which P(binary) >= threshold held k observed epochs in a row.

    Parameters
    ----------
    probabilities : array-like of shape (N, T)
        P(binary) at every step.
    events : DataFrame
        N rows in the same order, with columns label, t0, tE (days) and
        optionally event_id (default: row number) and pspl_like.
    times : array-like of shape (T,)
        The time grid in days.
    thresholds : sequence of float
        Thresholds in (0, 1].
    mask : array-like of shape (N, T), optional (keyword only)
        1 = observed epoch; only observed epochs raise or break a run. None: every step is observed.
    consecutive_epochs : int, default 1 (keyword only)
        k: observed epochs in a row at or above the threshold that raise an alarm.
    chunk_events : int
        Rows per chunk.
    progress : bool, optional
        Progress bar.

    Returns
    -------
    DataFrame
        One row per event and threshold (event-major): event_id, label,
        pspl_like, threshold, consecutive_epochs, detected (at least one alarm), detection_step
        (nullable Int64: the step of the first alarm, <NA> when none),
        detection_day, detection_phase = (detection_day - t0)/tE (NaN if
        none), n_alarms (separate alarms: after one, P(binary) must fall below
        the threshold at an observed epoch before the next) and monitoring_days
        (the grid's duration, see `grid_days`). The model is causal, so an alarm
        uses only the scores up to its epoch; what follows never undoes it. For
        binaries the first alarm is the detection, on PSPL events every alarm is
        a false alarm.
    """
    thresholds = check_thresholds(thresholds)
    probabilities = as_2d(probabilities, "probabilities")
    n_events, n_steps = probabilities.shape
    arrays = _events_arrays(events, n_events)
    times = check_times(times, n_steps)
    if mask is not None:
        mask = check_mask_shape(mask, probabilities.shape)
    consecutive_epochs = check_consecutive(consecutive_epochs)
    scan = scan_scores(probabilities, mask, check_fractions([1.0]), (), thresholds, chunk_events, progress,
                       consecutive_epochs)
    return _detection_frame(scan, thresholds, arrays, times, consecutive_epochs)


DAYS_PER_YEAR = 365.25


def _alarm_rate(n_alarms: int, exposure: float) -> tuple[float, float, float]:
    """Alarms per unit of exposure with the exact (Garwood) Poisson interval; NaN without exposure."""
    if not exposure > 0:
        return _NAN, _NAN, _NAN
    low, high = confint_poisson(n_alarms, exposure, method="exact-c", alpha=1 - CONFIDENCE)
    return n_alarms / exposure, float(low), float(high)


def detection_summary(detections: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: share of binaries detected, how early, and false alarms on PSPL events.

    Parameters
    ----------
    detections : DataFrame
        Output of `detection_times` (or the CSV it is written to).

    Returns
    -------
    DataFrame
        One row per threshold: threshold, consecutive_epochs, n_binary, n_detected,
        detected_fraction, detected_low, detected_high (95 % Wilson),
        median_phase, phase_q25, phase_q75 ((t_det - t0)/tE at the first alarm of the
        detected binaries), median_detection_day, n_binary_without_pspl_like,
        detected_fraction_without_pspl_like(+_low/_high), n_pspl,
        n_false_alarms (PSPL events with at least one alarm), false_alarm_fraction,
        false_alarm_low, false_alarm_high (Wilson over the PSPL events: false alarms
        per PSPL event, counted once), n_pspl_alarms (every alarm on a PSPL event:
        separate up-crossings), alarms_per_pspl_event(+_low/_high), monitoring_days
        (per event: the grid's duration, gaps included), alarms_per_year(+_low/_high)
        (per year of monitoring one PSPL event). The alarm-count intervals are exact
        Poisson intervals: they treat alarms as independent, which repeated crossings
        on one event are not, so they are too narrow when events alarm repeatedly;
        the Wilson interval over events is the robust one.
    """
    missing = {"threshold", "label", "pspl_like", "detected", "detection_phase", "detection_day", "n_alarms",
               "monitoring_days", "consecutive_epochs"} - set(detections)
    if missing:
        raise ValueError(f"detections lack column(s) {sorted(missing)}")
    rows = []
    for threshold, group in detections.groupby("threshold", sort=True):
        label = group["label"].to_numpy()
        detected = group["detected"].to_numpy(dtype=bool)
        like = group["pspl_like"].to_numpy(dtype=bool)
        binary = label == 1
        pspl = label == 0
        hits = binary & detected
        phase = group["detection_phase"].to_numpy(dtype=float)[hits]
        found = recall_interval(detected[binary], CONFIDENCE)
        kept = recall_interval(detected[binary & ~like], CONFIDENCE)
        alarms = recall_interval(detected[pspl], CONFIDENCE)
        n_detected = found["recovered"]
        quartiles = np.percentile(phase, [25, 50, 75]) if n_detected else [_NAN] * 3
        n_pspl_alarms = int(group["n_alarms"].to_numpy()[pspl].sum())
        days = group["monitoring_days"].to_numpy(dtype=float)[pspl]
        monitoring_days = _median(days)
        per_event = _alarm_rate(n_pspl_alarms, float(pspl.sum()))
        per_year = _alarm_rate(n_pspl_alarms, float(days.sum()) / DAYS_PER_YEAR)
        rows.append({
            "threshold": float(threshold),
            "consecutive_epochs": int(group["consecutive_epochs"].iloc[0]),
            "n_binary": found["n"],
            "n_detected": n_detected,
            "detected_fraction": found["fraction"],
            "detected_low": found["fraction_low"],
            "detected_high": found["fraction_high"],
            "median_phase": float(quartiles[1]),
            "phase_q25": float(quartiles[0]),
            "phase_q75": float(quartiles[2]),
            "median_detection_day": _median(group["detection_day"].to_numpy(dtype=float)[hits]),
            "n_binary_without_pspl_like": kept["n"],
            "detected_fraction_without_pspl_like": kept["fraction"],
            "detected_without_pspl_like_low": kept["fraction_low"],
            "detected_without_pspl_like_high": kept["fraction_high"],
            "n_pspl": alarms["n"],
            "n_false_alarms": alarms["recovered"],
            "false_alarm_fraction": alarms["fraction"],
            "false_alarm_low": alarms["fraction_low"],
            "false_alarm_high": alarms["fraction_high"],
            "n_pspl_alarms": n_pspl_alarms,
            "alarms_per_pspl_event": per_event[0],
            "alarms_per_pspl_event_low": per_event[1],
            "alarms_per_pspl_event_high": per_event[2],
            "monitoring_days": monitoring_days,
            "alarms_per_year": per_year[0],
            "alarms_per_year_low": per_year[1],
            "alarms_per_year_high": per_year[2],
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Deployment at a realistic binary share
# ---------------------------------------------------------------------------


def _check_shares(shares) -> np.ndarray:
    array = np.asarray(shares, dtype=float).ravel()
    if not np.all((array > 0) & (array < 1)):
        raise ValueError(f"binary shares must lie in (0, 1), got {shares!r}")
    return array


def deployment_metrics(labels, final, threshold: float, binary_share: float) -> dict[str, Any]:
    """What the final-step decisions give where binaries are ``binary_share`` of the events.

    The test set is balanced; a survey's events are not (binary lenses are a few to ~10 %).
    The test recall (TPR) and false-alarm rate (FPR) at ``threshold`` carry over; precision, NPV
    and alarms per true binary (alarms raised per binary found, 1 / precision) follow from them
    by Bayes' rule, with intervals from the test counts (`base_rate_metrics`, joint 95 %).

    Returns
    -------
    dict
        binary_share, n_binary, n_pspl, tpr, fpr, precision, npv, alarms_per_true_binary (each with
        _low/_high), aucpr (PSPL events weighted to the share); None where undefined.
    """
    metrics = base_rate_metrics(labels, final, threshold, (1 - binary_share) / binary_share, CONFIDENCE)
    result = {"binary_share": float(binary_share), "n_binary": metrics["n_positive"], "n_pspl": metrics["n_negative"]}
    for name in ("tpr", "fpr", "precision", "npv", "alarms_per_true_positive"):
        for end in ("", "_low", "_high"):
            result[name.replace("positive", "binary") + end] = metrics[name + end]
    result["aucpr"] = metrics["aucpr"]
    return result


# ---------------------------------------------------------------------------
# One cadence: read the evaluation inputs, write tables and figures
# ---------------------------------------------------------------------------


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null (recursively)."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise InputDataError(path, "file is missing; the scoring step writes it")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputDataError(path, f"cannot read it as a .npy array ({error})") from error


def _load_evaluation(evaluation_dir: Path) -> dict[str, Any]:
    paths = {name: evaluation_dir / file for name, file in EVALUATION_FILES.items()}
    probabilities = _load_npy(paths["probabilities"], mmap=True)
    mask = _load_npy(paths["mask"], mmap=True)
    times = _load_npy(paths["times"], mmap=False)
    events = read_table(paths["events"], ("label", "t0", "tE", "pspl_like"),
                        not_found="file is missing; the scoring step writes it")
    if "brightening_time" not in events.columns:
        raise InputDataError(paths["events"], "lacks the column 'brightening_time' (the early detection after the "
                             "first significant brightening needs it); the observe stage writes it: rerun "
                             "observe_cadence and predict_microlensing_test")
    if probabilities.ndim == 2 and not np.issubdtype(probabilities.dtype, np.floating):
        raise InputDataError(paths["probabilities"], f"expected float probabilities, got dtype {probabilities.dtype}")
    return {"probabilities": probabilities, "mask": mask, "times": times, "events": events, "paths": paths}


def _roc_points(labels: np.ndarray, prob: np.ndarray) -> dict[str, list[float]] | None:
    """ROC points for metrics.json, thinned to a staircase on a uniform FPR grid when long."""
    if not 0 < labels.sum() < len(labels):
        return None
    roc = curve_points(labels, prob.astype(np.float64))["roc"]
    fpr, tpr = roc["fpr"].to_numpy(), roc["tpr"].to_numpy()
    if len(fpr) > MAX_ROC_POINTS:
        grid = np.linspace(0.0, 1.0, MAX_ROC_POINTS)
        # Best TPR reachable at FPR <= g: the curve itself, read at the grid.
        best = np.maximum.accumulate(tpr)
        tpr = best[np.searchsorted(fpr, grid, side="right") - 1]
        fpr = grid
    return {"fpr": [float(x) for x in fpr], "tpr": [float(y) for y in tpr]}


def evaluate_cadence(
    evaluation_dir: str | Path,
    out_dir: str | Path,
    cadence: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    threshold: float = DECISION_THRESHOLD,
    chunk_events: int = CHUNK_EVENTS,
    progress: bool | None = None,
    consecutive_epochs: int = 1,
    event_phases: Sequence[float] = DEFAULT_EVENT_PHASES,
    after_brightening: Sequence[float] = DEFAULT_AFTER_BRIGHTENING,
    binary_shares: Sequence[float] = DEFAULT_BINARY_SHARES,
) -> dict[str, Any]:
    """Metrics, early detection and detection times of one cadence, as tables and figures.

    Parameters
    ----------
    evaluation_dir : path
        Holds ``probabilities.npy`` (float, N x T), ``mask.npy`` (0/1, N x T),
        ``events.parquet`` (N rows with label, t0, tE, pspl_like, brightening_time, event_id and,
        optionally, evidence_time) and
        ``times.npy`` (T,). The arrays are memory-mapped and read in chunks.
    out_dir : path
        Receives metrics.json, early_detection.csv, early_detection_phase.csv (`phase_detection`),
        detection_times.csv, detection_summary.csv, roc.png, confusion_matrix.png,
        early_detection.png, early_detection_phase.png and detection_times.png.
    cadence : str
        Name used in titles and in metrics.json.
    fractions : sequence of float
        Fractions in (0, 1] for the early-detection curves (both bases).
    thresholds : sequence of float
        Thresholds for the detection times.
    threshold : float, default 0.5
        Decision threshold for accuracy and the confusion matrix (fixed, not tuned on test).
    chunk_events : int
        Events per chunk of the streaming pass.
    progress : bool, optional
        Progress bar.
    consecutive_epochs : int, default 1
        Observed epochs in a row at or above a threshold that raise an alarm (`detection_times`).
    event_phases, after_brightening : sequence of float
        k of the early detection at t0 + k tE and at brightening_time + k tE (`phase_detection`).
    binary_shares : sequence of float
        Binary shares in (0, 1) of a survey's events: metrics.json's "deployment" gives precision, NPV
        and alarms per true binary at each from the test TPR and FPR at ``threshold``
        (:func:`astrodag.evaluation.base_rate.base_rate_metrics`).

    Returns
    -------
    dict
        The content of metrics.json.

    Raises
    ------
    InputDataError
        Naming the input file and the problem: missing or unreadable files,
        inconsistent shapes, probabilities not finite or outside [0, 1], a mask
        that is not 0/1, an event without any observed epoch, bad event columns.
    """
    evaluation_dir, out_dir = Path(evaluation_dir), Path(out_dir)
    fractions = check_fractions(fractions)
    thresholds = check_thresholds(thresholds)
    threshold = check_decision_threshold(threshold)
    consecutive_epochs = check_consecutive(consecutive_epochs)
    event_phases = _check_phases(event_phases, "event_phases")
    after_brightening = _check_phases(after_brightening, "after_brightening")
    binary_shares = _check_shares(binary_shares)
    inputs = _load_evaluation(evaluation_dir)
    paths = inputs["paths"]
    try:
        probabilities = as_2d(inputs["probabilities"], "probabilities")
        n_events, n_steps = probabilities.shape
        mask = check_mask_shape(inputs["mask"], probabilities.shape)
        arrays = _events_arrays(inputs["events"], n_events, need_brightening=True)
        times = check_times(inputs["times"], n_steps)
        points, at = _phase_points(arrays, event_phases, after_brightening)
        phase_steps, inside = known_steps(times, at)
        logger.info("%s: scanning %d events x %d steps", cadence, n_events, n_steps)
        scan = scan_scores(probabilities, mask, fractions, BASES, thresholds, chunk_events, progress,
                           consecutive_epochs, event_steps=phase_steps)
    except ArrayProblem as problem:
        raise InputDataError(paths[problem.source], str(problem)) from problem

    labels, pspl_like = arrays["label"], arrays["pspl_like"]
    early = pd.DataFrame([
        row
        for basis in BASES
        for row in _early_rows(basis, fractions, scan["gathered"][basis], scan["steps"][basis], labels, pspl_like,
                               threshold, times, arrays["t0"], arrays["tE"], arrays.get("evidence_time"))
    ])
    phase = pd.DataFrame(_phase_rows(points, at, inside, scan["at_steps"], labels, pspl_like, threshold,
                                     arrays.get("evidence_time")))
    detections = _detection_frame(scan, thresholds, arrays, times, consecutive_epochs)
    summary = detection_summary(detections)

    final = scan["final"]
    final_columns = _subset_columns(labels, final, threshold, pspl_like)
    counts = _classification_summary(labels, final, threshold)
    n_binary = int(np.sum(labels == 1))
    n_like = int(np.sum(pspl_like & (labels == 1)))
    metrics = {
        "cadence": cadence,
        "threshold": threshold,
        "confidence": CONFIDENCE,
        "n_events": n_events,
        "n_steps": n_steps,
        "n_binary": n_binary,
        "n_pspl": n_events - n_binary,
        "n_pspl_like": n_like,
        "pspl_like_fraction": n_like / n_binary if n_binary else _NAN,
        "mean_observed_fraction": float(np.mean(scan["n_observed"]) / n_steps),
        "final_step": {key: final_columns[key] for key in (
            "accuracy", "accuracy_low", "accuracy_high", "roc_auc", "aucpr", "recall", "recall_low", "recall_high",
            "false_alarm_rate", "false_alarm_low", "false_alarm_high",
        )} | {"brier": counts["brier"]},
        "confusion_matrix": {key: counts[key] for key in ("tp", "fp", "tn", "fn")},
        "without_pspl_like": {
            "n_events": final_columns["n_events_without_pspl_like"],
            "accuracy": final_columns["accuracy_without_pspl_like"],
            "accuracy_low": final_columns["accuracy_without_pspl_like_low"],
            "accuracy_high": final_columns["accuracy_without_pspl_like_high"],
            "roc_auc": final_columns["roc_auc_without_pspl_like"],
        },
        "pspl_like_binaries": {
            "n": n_like,
            "called_binary_fraction": final_columns["recall_pspl_like"],
            "called_binary_low": final_columns["recall_pspl_like_low"],
            "called_binary_high": final_columns["recall_pspl_like_high"],
        },
        "fractions": fractions.tolist(),
        "thresholds": thresholds.tolist(),
        "consecutive_epochs": consecutive_epochs,
        "monitoring_days": grid_days(times),
        "roc_curve": _roc_points(labels, final),
        "event_phases_tE": event_phases.tolist(),
        "after_brightening_tE": after_brightening.tolist(),
        "deployment": [deployment_metrics(labels, final, threshold, share) for share in binary_shares],
    }
    metrics = finite_or_none(metrics)

    write_table(out_dir / "early_detection.csv", early)
    write_table(out_dir / "early_detection_phase.csv", phase)
    write_table(out_dir / "detection_times.csv", detections)
    write_table(out_dir / "detection_summary.csv", summary)
    write_json(out_dir / "metrics.json", metrics)
    save_figure(out_dir / "roc.png", cadence_roc_figure(cadence, labels, final, scan, fractions))
    save_figure(out_dir / "confusion_matrix.png",
          plot_confusion_matrix(metrics["confusion_matrix"], labels=CLASS_NAMES,
                                title=f"{cadence}: final step, threshold {threshold:g}"))
    save_figure(out_dir / "early_detection.png",
          early_detection_figure({cadence: early}, title=f"{cadence}: early detection", show_without=True))
    save_figure(out_dir / "early_detection_phase.png",
                phase_detection_figure({cadence: phase}, title=f"{cadence}: early detection by the event's clock"))
    save_figure(out_dir / "detection_times.png", detection_times_figure(cadence, detections, summary))
    logger.info("%s: final-step accuracy %s, ROC AUC %.3f; wrote %s", cadence,
                format_interval(final_columns["accuracy"], final_columns["accuracy_low"],
                                final_columns["accuracy_high"]), final_columns["roc_auc"], out_dir)
    return metrics
