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
* detection times: the first step after which P(binary) stays above a threshold
  until the end (binaries give detections, PSPL events false alarms);
* per-cadence metrics, tables and figures, and a comparison of the cadences.

The positive class is the binary lens (label 1). Decisions use a fixed
threshold (0.5 by default): classes are balanced and nothing is tuned on the
test split. Intervals are 95 % Wilson intervals over the test events, i.e. they
cover the sampling of the test set, not the training variance of the model.

Probabilities of N_test = 150 000 events x 1500 steps (900 MB of float32) are
never loaded whole: one pass over row chunks of the memory-mapped array
gathers everything the tables need (a few numbers per event).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from tabulate import tabulate
from tqdm.auto import tqdm

from astrodag.errors import InputDataError
from astrodag.evaluation.completeness import recall_interval
from astrodag.evaluation.metrics import binary_metrics, curve_points
from astrodag.evaluation.statistics import CHANCE_LEVEL, auc_p_value, resolvable_auc, untied_auc_p_value, wilson_interval
from astrodag.io import save_figure, write_json, write_table, write_text
from astrodag.logs import progress_enabled
from astrodag.reporting.figures import plot_confusion_matrix, plot_roc
from astrodag.reporting.tables import format_interval, to_markdown

logger = logging.getLogger(__name__)

BASES = ("time", "observed")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.9, 0.95)
DECISION_THRESHOLD = 0.5
CONFIDENCE = 0.95
CHUNK_EVENTS = 2048
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
    "detection_times.csv",
    "detection_summary.csv",
    "roc.png",
    "confusion_matrix.png",
    "early_detection.png",
    "detection_times.png",
)
COMPARISON_OUTPUTS = (
    "comparison.md",
    "comparison.txt",
    "comparison.json",
    "summary.csv",
    "early_detection_comparison.png",
    "roc_comparison.png",
    "accuracy_comparison.png",
)
BASIS_LABELS = {"time": "fraction of the time grid", "observed": "fraction of the observed epochs"}


class _ArrayProblem(ValueError):
    """A ValueError that remembers which input ("probabilities", "mask", "events", "times") is wrong.

    `evaluate_cadence` turns it into an InputDataError naming the matching file.
    """

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(message)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_fractions(fractions) -> np.ndarray:
    values = np.asarray(fractions, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got {fractions!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0) or np.any(values > 1.0):
        raise ValueError(f"fractions must lie in (0, 1], got {values.tolist()}")
    return values


def _check_thresholds(thresholds) -> np.ndarray:
    values = np.asarray(thresholds, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got {thresholds!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0) or np.any(values > 1.0):
        raise ValueError(f"thresholds must lie in (0, 1], got {values.tolist()}")
    return values


def _check_decision_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def _check_basis(basis: str) -> str:
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    return basis


def _as_2d(array, name: str):
    """Return a 2-D array-like (memmaps are kept as they are, never copied)."""
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.ndim != 2:
        raise _ArrayProblem(name, f"{name} must be 2-D (events x steps), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise _ArrayProblem(name, f"{name} is empty (shape {array.shape})")
    return array


def _check_mask_shape(mask, shape: tuple[int, int]):
    mask = _as_2d(mask, "mask")
    if mask.shape != shape:
        raise _ArrayProblem("mask", f"mask has shape {mask.shape} but probabilities have shape {shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise _ArrayProblem("mask", f"mask must hold 0/1 values, got dtype {mask.dtype}")
    return mask


def _check_labels(labels, n_events: int) -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1:
        raise _ArrayProblem("events", f"labels must be 1-D, got shape {values.shape}")
    if len(values) != n_events:
        raise _ArrayProblem("events", f"{len(values)} labels for {n_events} events (rows of probabilities)")
    try:
        numeric = values.astype(float)
    except (TypeError, ValueError):
        raise _ArrayProblem("events", f"labels must be 0 (PSPL) or 1 (binary), got dtype {values.dtype}") from None
    bad = ~np.isin(numeric, (0.0, 1.0))
    if bad.any():
        shown = pd.unique(values[bad])[:5].tolist()
        raise _ArrayProblem("events", f"labels must be 0 (PSPL) or 1 (binary); {int(bad.sum())} are not, e.g. {shown}")
    return numeric.astype(np.int8)


def _check_pspl_like(pspl_like, n_events: int) -> np.ndarray:
    if pspl_like is None:
        return np.zeros(n_events, dtype=bool)
    values = pd.Series(np.asarray(pspl_like) if not isinstance(pspl_like, pd.Series) else pspl_like.to_numpy())
    if len(values) != n_events:
        raise _ArrayProblem("events", f"{len(values)} pspl_like flags for {n_events} events")
    if values.isna().any():
        raise _ArrayProblem("events", f"pspl_like has {int(values.isna().sum())} missing value(s)")
    if not values.isin([True, False, 0, 1]).all():
        raise _ArrayProblem("events", "pspl_like must hold booleans")
    return values.to_numpy().astype(bool)


def _check_event_column(values, name: str, n_events: int, positive: bool = False) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise _ArrayProblem("events", f"column {name!r} must be numeric") from None
    if array.shape != (n_events,):
        raise _ArrayProblem("events", f"column {name!r} has shape {array.shape}, expected ({n_events},)")
    bad = ~np.isfinite(array) | ((array <= 0) if positive else False)
    if np.any(bad):
        need = "finite and > 0" if positive else "finite"
        raise _ArrayProblem(
            "events", f"column {name!r} must be {need}; {int(np.sum(bad))} value(s) are not (first at row "
            f"{int(np.argmax(bad))})"
        )
    return array


def _check_times(times, n_steps: int) -> np.ndarray:
    values = np.asarray(times, dtype=float)
    if values.shape != (n_steps,):
        raise _ArrayProblem("times", f"times has shape {values.shape}, expected ({n_steps},) to match the steps")
    if not np.all(np.isfinite(values)):
        raise _ArrayProblem("times", "times holds NaN or infinite values")
    if n_steps > 1 and np.any(np.diff(values) <= 0):
        raise _ArrayProblem("times", "times must be strictly increasing")
    return values


def _check_chunk_probabilities(chunk: np.ndarray, start: int) -> None:
    """Raise if a chunk holds NaN, infinities or values outside [0, 1]."""
    low, high = chunk.min(), chunk.max()
    # NaN fails both comparisons, so this one test covers NaN, inf and the range.
    if low >= 0.0 and high <= 1.0:
        return
    finite = np.isfinite(chunk)
    bad = ~finite | (np.where(finite, chunk, 0.5) < 0.0) | (np.where(finite, chunk, 0.5) > 1.0)
    row = start + int(np.argmax(bad.any(axis=1)))
    n_nonfinite = int(np.sum(~finite))
    n_outside = int(np.sum(bad)) - n_nonfinite
    problems = []
    if n_nonfinite:
        problems.append(f"{n_nonfinite} NaN or infinite value(s)")
    if n_outside:
        problems.append(f"{n_outside} value(s) outside [0, 1]")
    raise _ArrayProblem(
        "probabilities", f"probabilities must be finite and in [0, 1]; found {' and '.join(problems)} "
        f"(first bad event at row {row})"
    )


def _check_chunk_mask(chunk: np.ndarray, start: int) -> np.ndarray:
    if chunk.dtype == bool:
        return chunk
    if np.issubdtype(chunk.dtype, np.unsignedinteger):
        good = chunk.max() <= 1
    else:
        good = bool(np.all((chunk == 0) | (chunk == 1)))
    if not good:
        bad = (chunk != 0) & (chunk != 1)
        row = start + int(np.argmax(bad.any(axis=1)))
        raise _ArrayProblem("mask", f"mask must hold only 0/1; {int(bad.sum())} other value(s) (first at row {row})")
    return chunk


# ---------------------------------------------------------------------------
# Steps of the two bases
# ---------------------------------------------------------------------------


def _needed_counts(fractions: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """ceil(f * total) for every (total, fraction), at least 1.

    The product is rounded to 9 decimals first so that e.g. 0.55 * 100 =
    55.00000000000001 counts as 55, as it does on paper (and fractions built
    as 0.1 * k, such as 0.30000000000000004, behave).
    """
    products = np.round(np.multiply.outer(np.asarray(totals, dtype=float), fractions), 9)
    return np.maximum(np.ceil(products).astype(np.int64), 1)


def time_steps(n_steps: int, fractions) -> np.ndarray:
    """Step index reached after a fraction of the time grid: ceil(f * T) - 1.

    Parameters
    ----------
    n_steps : int
        Number of steps T of the grid.
    fractions : sequence of float
        Fractions in (0, 1].

    Returns
    -------
    ndarray of int64, shape (len(fractions),)
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    return _needed_counts(_check_fractions(fractions), np.array([n_steps]))[0] - 1


def _observed_steps_chunk(mask_chunk: np.ndarray, fractions: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the step at which the observed count first reaches ceil(f * total observed).

    Returns (steps of shape (n, F), total observed per event).
    """
    n_rows, n_steps = mask_chunk.shape
    totals = np.count_nonzero(mask_chunk, axis=1)
    empty = totals == 0
    if empty.any():
        first = start + int(np.argmax(empty))
        raise _ArrayProblem(
            "mask", f"{int(empty.sum())} event(s) have no observed epoch (first at row {first}); "
            "the 'observed' basis needs at least one per event"
        )
    # Flat positions of the observed epochs, row by row in increasing step order:
    # the k-th observed epoch of row i sits at offset[i] + k - 1.
    flat = np.flatnonzero(mask_chunk)
    offsets = np.cumsum(totals) - totals
    needed = _needed_counts(fractions, totals)
    steps = flat[offsets[:, None] + needed - 1] - (np.arange(n_rows, dtype=np.int64) * n_steps)[:, None]
    return steps, totals


def observed_steps(mask, fractions, chunk_events: int = CHUNK_EVENTS) -> np.ndarray:
    """Per event and fraction, the step at which ceil(f * total observed) epochs have been observed.

    Parameters
    ----------
    mask : array-like of shape (N, T)
        1 (or True) where the epoch was observed. Memory-mapped arrays are read
        in chunks of ``chunk_events`` rows.
    fractions : sequence of float
        Fractions in (0, 1].
    chunk_events : int
        Rows per chunk.

    Returns
    -------
    ndarray of int64, shape (N, len(fractions))

    Raises
    ------
    ValueError
        If an event has no observed epoch or the mask holds values other than 0/1.
    """
    fractions = _check_fractions(fractions)
    mask = _as_2d(mask, "mask")
    out = np.empty((mask.shape[0], len(fractions)), dtype=np.int64)
    for start in range(0, mask.shape[0], chunk_events):
        chunk = _check_chunk_mask(np.asarray(mask[start:start + chunk_events]), start)
        out[start:start + len(chunk)] = _observed_steps_chunk(chunk, fractions, start)[0]
    return out


# ---------------------------------------------------------------------------
# The single streaming pass
# ---------------------------------------------------------------------------


def _scan(
    probabilities,
    mask,
    fractions: np.ndarray,
    bases: Sequence[str],
    thresholds: np.ndarray | None,
    chunk_events: int,
    progress: bool | None,
) -> dict[str, Any]:
    """One pass over row chunks gathering everything the tables need.

    Returns a dict with "final" (N,) probabilities at the last step,
    "gathered"/"steps" per basis ((N, F) probabilities and step indices),
    "detection" ((N, K) first step after which P stays >= each threshold; T
    when never) and "n_observed" ((N,) or None).
    """
    if isinstance(chunk_events, bool) or not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1:
        raise ValueError(f"chunk_events must be a positive integer, got {chunk_events!r}")
    if not (probabilities.dtype == bool or np.issubdtype(probabilities.dtype, np.number)):
        raise _ArrayProblem("probabilities", f"probabilities must be numeric, got dtype {probabilities.dtype}")
    n_events, n_steps = probabilities.shape
    # Chunks keep the stored dtype (float32 from the scorer): no float64 copy of
    # the scores is made; only the gathered (N, F) values are converted later.
    dtype = probabilities.dtype if np.issubdtype(probabilities.dtype, np.floating) else np.float64
    final = np.empty(n_events, dtype=dtype)
    gathered = {basis: np.empty((n_events, len(fractions)), dtype=dtype) for basis in bases}
    steps = {basis: np.empty((n_events, len(fractions)), dtype=np.int64) for basis in bases}
    fixed_steps = _needed_counts(fractions, np.array([n_steps]))[0] - 1
    if "time" in bases:
        steps["time"][:] = fixed_steps
    thresholds64 = None if thresholds is None else [np.float64(t) for t in thresholds]
    detection = None if thresholds is None else np.empty((n_events, len(thresholds)), dtype=np.int64)
    n_observed = None if mask is None else np.empty(n_events, dtype=np.int64)

    starts = range(0, n_events, chunk_events)
    for start in tqdm(starts, desc="scanning scores", unit="chunk", disable=not progress_enabled(progress)):
        stop = min(start + chunk_events, n_events)
        chunk = np.asarray(probabilities[start:stop])
        if chunk.dtype != dtype:
            chunk = chunk.astype(dtype)
        _check_chunk_probabilities(chunk, start)
        final[start:stop] = chunk[:, -1]
        if "time" in bases:
            gathered["time"][start:stop] = chunk[:, fixed_steps]
        if mask is not None:
            mask_chunk = _check_chunk_mask(np.asarray(mask[start:stop]), start)
            if "observed" in bases:
                event_steps, totals = _observed_steps_chunk(mask_chunk, fractions, start)
                steps["observed"][start:stop] = event_steps
                gathered["observed"][start:stop] = np.take_along_axis(chunk, event_steps, axis=1)
            else:
                totals = np.count_nonzero(mask_chunk, axis=1)
            n_observed[start:stop] = totals
        if detection is not None:
            # Suffix minimum, read from the end: min(p[t:]) is non-decreasing in t,
            # so the first step after which p stays >= thr is the number of
            # suffixes whose minimum is below thr (T when even the last step is).
            suffix_min = np.minimum.accumulate(chunk[:, ::-1], axis=1)
            for j, thr in enumerate(thresholds64):
                # thr is a float64 scalar, so float32 scores are compared in
                # float64, exactly as binary_metrics compares them.
                detection[start:stop, j] = np.count_nonzero(suffix_min < thr, axis=1)
    return {
        "final": final,
        "gathered": gathered,
        "steps": steps,
        "detection": detection,
        "n_observed": n_observed,
        "n_steps": n_steps,
    }


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
        "roc_auc_p_value", "aucpr", "recall", "recall_low", "recall_high", "false_alarm_rate", "false_alarm_low", "false_alarm_high",
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
    basis = _check_basis(basis)
    fractions = _check_fractions(fractions)
    threshold = _check_decision_threshold(threshold)
    probabilities = _as_2d(probabilities, "probabilities")
    n_events, n_steps = probabilities.shape
    labels = _check_labels(labels, n_events)
    pspl_like = _check_pspl_like(pspl_like, n_events)
    if mask is None:
        if basis == "observed":
            raise ValueError("basis 'observed' needs the observation mask")
    else:
        mask = _check_mask_shape(mask, probabilities.shape)
    times, t0, tE = _check_phase_inputs(times, t0, tE, n_events, n_steps)
    if evidence_time is not None:
        evidence_time = _check_evidence_time(evidence_time, n_events)
    scan = _scan(probabilities, mask, fractions, (basis,), None, chunk_events, progress)
    rows = _early_rows(basis, fractions, scan["gathered"][basis], scan["steps"][basis], labels, pspl_like,
                       threshold, times, t0, tE, evidence_time)
    return pd.DataFrame(rows)


def _check_phase_inputs(times, t0, tE, n_events: int, n_steps: int):
    if times is not None:
        times = _check_times(times, n_steps)
    if (t0 is None) != (tE is None):
        raise ValueError("give both t0 and tE, or neither")
    if t0 is not None:
        t0 = _check_event_column(t0, "t0", n_events)
        tE = _check_event_column(tE, "tE", n_events, positive=True)
    return times, t0, tE


def _check_evidence_time(values, n_events: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n_events,):
        raise _ArrayProblem("events", f"evidence_time has shape {array.shape}, expected ({n_events},)")
    if np.isinf(array).any():
        raise _ArrayProblem("events", "evidence_time must be finite or NaN (never told apart from a PSPL)")
    return array


def _events_arrays(events: pd.DataFrame, n_events: int, need_phase: bool = True) -> dict[str, np.ndarray]:
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    required = ["label", "t0", "tE"] if need_phase else ["label"]
    missing = [c for c in required if c not in events.columns]
    if missing:
        raise _ArrayProblem("events", f"events lack column(s) {missing}; they have {list(events.columns)}")
    if len(events) != n_events:
        raise _ArrayProblem("events", f"{len(events)} event rows for {n_events} rows of probabilities")
    arrays = {
        "label": _check_labels(events["label"].to_numpy(), n_events),
        "pspl_like": _check_pspl_like(events["pspl_like"] if "pspl_like" in events.columns else None, n_events),
        "event_id": (events["event_id"].to_numpy(dtype=np.int64) if "event_id" in events.columns
                     else np.arange(n_events, dtype=np.int64)),
    }
    if "evidence_time" in events.columns:
        arrays["evidence_time"] = _check_evidence_time(events["evidence_time"].to_numpy(), n_events)
    if need_phase:
        arrays["t0"] = _check_event_column(events["t0"].to_numpy(), "t0", n_events)
        arrays["tE"] = _check_event_column(events["tE"].to_numpy(), "tE", n_events, positive=True)
    return arrays


def _detection_frame(detection: np.ndarray, thresholds: np.ndarray, arrays: dict, times: np.ndarray) -> pd.DataFrame:
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
        "detected": ~never.ravel(),
        "detection_step": pd.arrays.IntegerArray(detection.ravel().astype(np.int64), never.ravel()),
        "detection_day": days.ravel(),
        "detection_phase": phase.ravel(),
    })


def detection_times(
    probabilities,
    events: pd.DataFrame,
    times,
    thresholds=DEFAULT_THRESHOLDS,
    *,
    chunk_events: int = CHUNK_EVENTS,
    progress: bool | None = None,
) -> pd.DataFrame:
    """When the classifier commits: the first step after which P(binary) stays >= threshold.

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
    chunk_events : int
        Rows per chunk.
    progress : bool, optional
        Progress bar.

    Returns
    -------
    DataFrame
        One row per event and threshold (event-major): event_id, label,
        pspl_like, threshold, detected, detection_step (nullable Int64; <NA>
        when P(binary) is below the threshold at the last step, i.e. never),
        detection_day, detection_phase = (detection_day - t0)/tE (NaN if
        never). A dip below the threshold resets the detection. For binaries
        this is a detection, for PSPL events a false alarm.
    """
    thresholds = _check_thresholds(thresholds)
    probabilities = _as_2d(probabilities, "probabilities")
    n_events, n_steps = probabilities.shape
    arrays = _events_arrays(events, n_events)
    times = _check_times(times, n_steps)
    scan = _scan(probabilities, None, _check_fractions([1.0]), (), thresholds, chunk_events, progress)
    return _detection_frame(scan["detection"], thresholds, arrays, times)


def detection_summary(detections: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: share of binaries detected, how early, and false alarms among PSPL events.

    Parameters
    ----------
    detections : DataFrame
        Output of `detection_times` (or the CSV it is written to).

    Returns
    -------
    DataFrame
        One row per threshold: threshold, n_binary, n_detected,
        detected_fraction, detected_low, detected_high (95 % Wilson),
        median_phase, phase_q25, phase_q75 ((t_det - t0)/tE of the detected
        binaries), median_detection_day, n_binary_without_pspl_like,
        detected_fraction_without_pspl_like(+_low/_high), n_pspl,
        n_false_alarms, false_alarm_fraction, false_alarm_low, false_alarm_high.
    """
    missing = {"threshold", "label", "pspl_like", "detected", "detection_phase", "detection_day"} - set(detections)
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
        rows.append({
            "threshold": float(threshold),
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
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# One cadence: read the evaluation inputs, write tables and figures
# ---------------------------------------------------------------------------


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null (recursively)."""
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return _finite_or_none(value.tolist())
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
    if not paths["events"].is_file():
        raise InputDataError(paths["events"], "file is missing; the scoring step writes it")
    try:
        events = pd.read_parquet(paths["events"])
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise InputDataError(paths["events"], f"cannot read it as Parquet ({error})") from error
    if probabilities.ndim == 2 and not np.issubdtype(probabilities.dtype, np.floating):
        raise InputDataError(paths["probabilities"], f"expected float probabilities, got dtype {probabilities.dtype}")
    missing = [c for c in ("label", "t0", "tE", "pspl_like") if c not in events.columns]
    if missing:
        raise InputDataError(paths["events"], f"lacks column(s) {missing}; it has {list(events.columns)}")
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
) -> dict[str, Any]:
    """Metrics, early detection and detection times of one cadence, as tables and figures.

    Parameters
    ----------
    evaluation_dir : path
        Holds ``probabilities.npy`` (float, N x T), ``mask.npy`` (0/1, N x T),
        ``events.parquet`` (N rows with label, t0, tE, pspl_like, event_id and, optionally,
        evidence_time) and
        ``times.npy`` (T,). The arrays are memory-mapped and read in chunks.
    out_dir : path
        Receives metrics.json, early_detection.csv, detection_times.csv,
        detection_summary.csv, roc.png, confusion_matrix.png,
        early_detection.png and detection_times.png.
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
    fractions = _check_fractions(fractions)
    thresholds = _check_thresholds(thresholds)
    threshold = _check_decision_threshold(threshold)
    inputs = _load_evaluation(evaluation_dir)
    paths = inputs["paths"]
    try:
        probabilities = _as_2d(inputs["probabilities"], "probabilities")
        n_events, n_steps = probabilities.shape
        mask = _check_mask_shape(inputs["mask"], probabilities.shape)
        arrays = _events_arrays(inputs["events"], n_events)
        times = _check_times(inputs["times"], n_steps)
        logger.info("%s: scanning %d events x %d steps", cadence, n_events, n_steps)
        scan = _scan(probabilities, mask, fractions, BASES, thresholds, chunk_events, progress)
    except _ArrayProblem as problem:
        raise InputDataError(paths[problem.source], str(problem)) from problem

    labels, pspl_like = arrays["label"], arrays["pspl_like"]
    early = pd.DataFrame([
        row
        for basis in BASES
        for row in _early_rows(basis, fractions, scan["gathered"][basis], scan["steps"][basis], labels, pspl_like,
                               threshold, times, arrays["t0"], arrays["tE"], arrays.get("evidence_time"))
    ])
    detections = _detection_frame(scan["detection"], thresholds, arrays, times)
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
        "roc_curve": _roc_points(labels, final),
    }
    metrics = _finite_or_none(metrics)

    write_table(out_dir / "early_detection.csv", early)
    write_table(out_dir / "detection_times.csv", detections)
    write_table(out_dir / "detection_summary.csv", summary)
    write_json(out_dir / "metrics.json", metrics)
    _save(out_dir / "roc.png", _cadence_roc_figure(cadence, labels, final, scan, fractions))
    _save(out_dir / "confusion_matrix.png",
          plot_confusion_matrix(metrics["confusion_matrix"], labels=CLASS_NAMES,
                                title=f"{cadence}: final step, threshold {threshold:g}"))
    _save(out_dir / "early_detection.png",
          _early_detection_figure({cadence: early}, title=f"{cadence}: early detection", show_without=True))
    _save(out_dir / "detection_times.png", _detection_times_figure(cadence, detections, summary))
    logger.info("%s: final-step accuracy %s, ROC AUC %.3f; wrote %s", cadence,
                format_interval(final_columns["accuracy"], final_columns["accuracy_low"],
                                final_columns["accuracy_high"]), final_columns["roc_auc"], out_dir)
    return metrics


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def _save(path: Path, figure: Figure) -> None:
    # Figures are built on matplotlib.figure.Figure, which renders with Agg and keeps no pyplot state.
    save_figure(path, figure)


def _message_figure(text: str, title: str = "") -> Figure:
    figure = Figure(figsize=(5, 4), layout="constrained")
    ax = figure.subplots()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    ax.set_title(title)
    return figure


def _cadence_roc_figure(cadence: str, labels, final, scan, fractions) -> Figure:
    if not 0 < labels.sum() < len(labels):
        return _message_figure("ROC undefined: the test events hold a single class", f"{cadence}: ROC")
    curves = {"final step": (labels, final.astype(np.float64))}
    # Two early snapshots show how the ranking builds up (half of the time grid / observed epochs).
    half = int(np.argmin(np.abs(fractions - 0.5)))
    if fractions[half] < 1.0:
        for basis in BASES:
            seen = BASIS_LABELS[basis].removeprefix("fraction of the ")
            curves[f"after {fractions[half]:.0%} of the {seen}"] = (
                labels, scan["gathered"][basis][:, half].astype(np.float64))
    return plot_roc(curves, title=f"{cadence}: ROC, test events")


def _error_bars(errors: np.ndarray) -> np.ndarray:
    """Matplotlib error bars: no NaN, and no -1e-17 where a bound equals the estimate up to rounding."""
    return np.clip(np.nan_to_num(errors), 0.0, None)


def _colors(n: int) -> list:
    palette = colormaps["tab10"].colors
    return [palette[i % len(palette)] for i in range(n)]


def _early_detection_figure(early_by_name: Mapping[str, pd.DataFrame], title: str, show_without: bool) -> Figure:
    """Accuracy (Wilson band) against the fraction seen, one panel per basis, one colour per name.

    With ``show_without`` a dashed line adds the accuracy without PSPL-like
    binaries, and a third panel the median (t - t0)/tE the binaries had reached.
    """
    n_panels = 3 if show_without else 2
    figure = Figure(figsize=(4.6 * n_panels, 4), layout="constrained")
    axes = figure.subplots(1, n_panels, sharey=False)
    for color, (name, early) in zip(_colors(len(early_by_name)), early_by_name.items(), strict=True):
        for ax, basis in zip(axes[:2], BASES, strict=True):
            rows = early[early["basis"] == basis].sort_values("fraction")
            if rows.empty:
                continue
            ax.plot(rows["fraction"], rows["accuracy"], marker="o", color=color, label=name)
            ax.fill_between(rows["fraction"], rows["accuracy_low"], rows["accuracy_high"], color=color, alpha=0.2,
                            linewidth=0)
            if show_without:
                ax.plot(rows["fraction"], rows["accuracy_without_pspl_like"], linestyle="--", color=color,
                        label=f"{name}, without PSPL-like")
        if show_without:
            for basis, style in zip(BASES, ("-", ":"), strict=True):
                rows = early[early["basis"] == basis].sort_values("fraction")
                axes[2].plot(rows["fraction"], rows["median_phase_binary"], linestyle=style, marker="o", color=color,
                             label=f"{basis} basis")
    for ax, basis in zip(axes[:2], BASES, strict=True):
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel=BASIS_LABELS[basis].capitalize(), ylabel="Accuracy (95 % Wilson band)", xlim=(0, 1.02),
               title=f"{basis} basis")
        ax.legend(fontsize="small", loc="lower right")
    if show_without:
        axes[2].axhline(0.0, color="grey", linestyle=":", linewidth=1)
        axes[2].set(xlabel="Fraction seen", ylabel="Median (t - t0) / tE of binaries", xlim=(0, 1.02),
                    title="How much of the event was seen")
        axes[2].legend(fontsize="small")
    figure.suptitle(title)
    return figure


def _detection_times_figure(cadence: str, detections: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    colors = _colors(len(summary))
    binaries = detections[detections["label"] == 1]
    phases = binaries["detection_phase"].to_numpy(dtype=float)
    finite = phases[np.isfinite(phases)]
    low, high = (np.percentile(finite, [1, 99]) if finite.size else (-1.0, 1.0))
    low, high = min(low, -1.0), max(high, 1.0)
    for color, (_, row) in zip(colors, summary.iterrows(), strict=True):
        group = binaries[binaries["threshold"] == row["threshold"]]
        values = np.sort(group["detection_phase"].dropna().to_numpy(dtype=float))
        n_binary = max(len(group), 1)
        # Cumulative share of ALL binaries detected by a given phase: it levels off at the detected fraction.
        xs = np.concatenate(([low], values, [high]))
        ys = np.concatenate(([0.0], np.arange(1, len(values) + 1) / n_binary, [len(values) / n_binary]))
        left.step(xs, ys, where="post", color=color, label=f"P >= {row['threshold']:g}")
    left.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    left.set(xlim=(low, high), ylim=(0, 1.02), xlabel="Detection time (t - t0) / tE",
             ylabel="Share of binaries detected", title="Binaries: when P(binary) stays above threshold")
    left.legend(fontsize="small", loc="lower right")
    positions = np.arange(len(summary))
    width = 0.38
    for offset, column, name, color in (
        (-width / 2, "detected", "binaries detected", "tab:blue"),
        (width / 2, "false_alarm", "PSPL false alarms", "tab:red"),
    ):
        value_column = "detected_fraction" if column == "detected" else "false_alarm_fraction"
        values = summary[value_column].to_numpy(dtype=float)
        errors = np.vstack([values - summary[f"{column}_low"].to_numpy(dtype=float),
                            summary[f"{column}_high"].to_numpy(dtype=float) - values])
        right.bar(positions + offset, values, width, yerr=_error_bars(errors), capsize=3, color=color, label=name)
    right.set_xticks(positions, labels=[f"{t:g}" for t in summary["threshold"]])
    right.set(xlabel="Threshold", ylabel="Fraction (95 % Wilson)", ylim=(0, 1.05), title="Detections vs false alarms")
    right.legend(fontsize="small")
    figure.suptitle(f"{cadence}: detection times")
    return figure


def _roc_comparison_figure(rocs: Mapping[str, tuple[dict | None, float]]) -> Figure:
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.subplots()
    for color, (name, (points, auc)) in zip(_colors(len(rocs)), rocs.items(), strict=True):
        if points is None:
            continue
        ax.plot(points["fpr"], points["tpr"], color=color, label=f"{name} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate",
           title="ROC at the final step, by cadence")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def _accuracy_comparison_figure(summary: pd.DataFrame, threshold_text: str) -> Figure:
    figure = Figure(figsize=(max(5.0, 1.3 * len(summary) + 2), 4), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(summary))
    width = 0.38
    for offset, prefix, name, color in (
        (-width / 2, "accuracy", "all test events", "tab:blue"),
        (width / 2, "accuracy_without_pspl_like", "without PSPL-like binaries", "tab:orange"),
    ):
        values = summary[prefix].to_numpy(dtype=float)
        errors = np.vstack([values - summary[f"{prefix}_low"].to_numpy(dtype=float),
                            summary[f"{prefix}_high"].to_numpy(dtype=float) - values])
        bars = ax.bar(positions + offset, values, width, yerr=_error_bars(errors), capsize=3, color=color,
                      label=name)
        ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in values], fontsize="x-small",
                     padding=2)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(positions, labels=summary["cadence"].tolist())
    ax.set(ylabel="Accuracy (95 % Wilson)", ylim=(0, 1.2), xlabel="Cadence",
           title=f"Final-step accuracy by cadence (threshold {threshold_text})")
    ax.legend(fontsize="small", loc="upper center", ncols=2)
    return figure


# ---------------------------------------------------------------------------
# Comparison of cadences
# ---------------------------------------------------------------------------


def _read_cadence_outputs(name: str, directory: Path) -> dict[str, Any]:
    files = {key: directory / key for key in ("metrics.json", "early_detection.csv", "detection_summary.csv")}
    for path in files.values():
        if not path.is_file():
            raise InputDataError(path, f"file is missing; run evaluate_cadence for cadence {name!r} first")
    try:
        metrics = json.loads(files["metrics.json"].read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(files["metrics.json"], f"cannot read it as JSON ({error})") from error
    for key in ("final_step", "without_pspl_like", "pspl_like_binaries", "n_events", "threshold"):
        if key not in metrics:
            raise InputDataError(files["metrics.json"], f"lacks the key {key!r}; was it written by evaluate_cadence?")
    frames = {}
    for key, columns in (("early_detection.csv", ("basis", "fraction", "accuracy", "accuracy_low", "accuracy_high")),
                         ("detection_summary.csv", ("threshold", "detected_fraction", "false_alarm_fraction"))):
        try:
            frame = pd.read_csv(files[key])
        except (OSError, ValueError) as error:
            raise InputDataError(files[key], f"cannot read it as CSV ({error})") from error
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputDataError(files[key], f"lacks column(s) {missing}")
        frames[key] = frame
    return {"metrics": metrics, "early": frames["early_detection.csv"], "detection": frames["detection_summary.csv"]}


def _nan(value) -> float:
    return _NAN if value is None else float(value)


def _summary_row(name: str, metrics: dict) -> dict[str, Any]:
    final, without, like = metrics["final_step"], metrics["without_pspl_like"], metrics["pspl_like_binaries"]
    return {
        "cadence": name,
        "n_events": metrics["n_events"],
        "n_binary": metrics.get("n_binary"),
        "n_pspl": metrics.get("n_pspl"),
        "n_pspl_like": like["n"],
        "pspl_like_fraction": _nan(metrics.get("pspl_like_fraction")),
        "mean_observed_fraction": _nan(metrics.get("mean_observed_fraction")),
        "threshold": metrics["threshold"],
        **{key: _nan(final.get(key)) for key in (
            "accuracy", "accuracy_low", "accuracy_high", "roc_auc", "aucpr", "recall", "recall_low", "recall_high",
            "false_alarm_rate", "false_alarm_low", "false_alarm_high")},
        "accuracy_without_pspl_like": _nan(without["accuracy"]),
        "accuracy_without_pspl_like_low": _nan(without["accuracy_low"]),
        "accuracy_without_pspl_like_high": _nan(without["accuracy_high"]),
        "roc_auc_without_pspl_like": _nan(without.get("roc_auc")),
        "pspl_like_called_binary": _nan(like["called_binary_fraction"]),
        "pspl_like_called_binary_low": _nan(like["called_binary_low"]),
        "pspl_like_called_binary_high": _nan(like["called_binary_high"]),
    }


def _interval(frame: pd.DataFrame, value: str, low: str, high: str) -> list[str]:
    return [format_interval(v, lo, hi) for v, lo, hi in zip(frame[value], frame[low], frame[high], strict=True)]


def _display_tables(summary: pd.DataFrame, early: pd.DataFrame, detection: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Human-readable tables (estimates with their intervals as text) shared by the .md and .txt reports."""
    final = pd.DataFrame({
        "cadence": summary["cadence"],
        "events": summary["n_events"],
        "observed epochs": [f"{v:.0%}" if np.isfinite(v) else "n/a" for v in summary["mean_observed_fraction"]],
        "accuracy": _interval(summary, "accuracy", "accuracy_low", "accuracy_high"),
        "ROC AUC": summary["roc_auc"],
        "AUCPR": summary["aucpr"],
        "binaries called binary": _interval(summary, "recall", "recall_low", "recall_high"),
        "PSPL called binary": _interval(summary, "false_alarm_rate", "false_alarm_low", "false_alarm_high"),
        "PSPL-like share of binaries": [f"{v:.1%}" if np.isfinite(v) else "n/a" for v in summary["pspl_like_fraction"]],
        "accuracy without PSPL-like": _interval(summary, "accuracy_without_pspl_like",
                                                "accuracy_without_pspl_like_low", "accuracy_without_pspl_like_high"),
        "PSPL-like called binary": _interval(summary, "pspl_like_called_binary", "pspl_like_called_binary_low",
                                             "pspl_like_called_binary_high"),
    })
    tables = {"final": final}
    for basis in BASES:
        rows = early[early["basis"] == basis]
        text = rows.assign(cell=_interval(rows, "accuracy", "accuracy_low", "accuracy_high"))
        accuracy = text.pivot(index="fraction", columns="cadence", values="cell")
        accuracy = accuracy[[c for c in summary["cadence"] if c in accuracy.columns]].reset_index()
        tables[f"early_{basis}"] = accuracy
        if "median_phase_binary" in rows.columns and rows["median_phase_binary"].notna().any():
            values = rows.pivot(index="fraction", columns="cadence", values="median_phase_binary")
            tables[f"phase_{basis}"] = values[[c for c in summary["cadence"] if c in values.columns]].reset_index()
        if "distinguishable_share_binary" in rows.columns and rows["distinguishable_share_binary"].notna().any():
            text = rows.assign(cell=[f"{share:.3f}: {_auc_cell(auc, p)}" for share, auc, p in zip(
                rows["distinguishable_share_binary"], rows["ideal_roc_auc"], rows["ideal_roc_auc_p_value"])])
            ideal = text.pivot(index="fraction", columns="cadence", values="cell")
            tables[f"ideal_{basis}"] = ideal[[c for c in summary["cadence"] if c in ideal.columns]].reset_index()
        if "roc_auc_p_value" in rows.columns:
            text = rows.assign(cell=[_auc_cell(auc, p) for auc, p in zip(rows["roc_auc"], rows["roc_auc_p_value"])])
            auc = text.pivot(index="fraction", columns="cadence", values="cell")
            tables[f"auc_{basis}"] = auc[[c for c in summary["cadence"] if c in auc.columns]].reset_index()
    has_quartiles = {"median_phase", "phase_q25", "phase_q75"} <= set(detection.columns)
    tables["detection"] = pd.DataFrame({
        "cadence": detection["cadence"],
        "threshold": detection["threshold"],
        "binaries detected": _interval(detection, "detected_fraction", "detected_low", "detected_high"),
        "median (t_det - t0)/tE [q25, q75]": (
            _interval(detection, "median_phase", "phase_q25", "phase_q75") if has_quartiles else "n/a"),
        "PSPL false alarms": _interval(detection, "false_alarm_fraction", "false_alarm_low", "false_alarm_high"),
    })
    return tables


def _auc_cell(auc: float, p_value: float) -> str:
    """ROC AUC with its one-sided p-value against chance; * marks p < CHANCE_LEVEL."""
    if not (np.isfinite(auc) and np.isfinite(p_value)):
        return "n/a"
    p_text = "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"
    return f"{auc:.3f} ({p_text}){' *' if p_value < CHANCE_LEVEL else ''}"


def _chance_note(early: pd.DataFrame, basis: str) -> str:
    """Where the classifier does not beat chance, what the test events resolve, and what the light curves held."""
    rows = early[early["basis"] == basis]
    if "roc_auc_p_value" not in rows.columns:
        return ""
    failing = rows[~(rows["roc_auc_p_value"] < CHANCE_LEVEL)]
    if failing.empty:
        return f"The ROC AUC beats chance (one-sided p < {CHANCE_LEVEL:g}) at every fraction for every cadence."
    sentences = [f"The ROC AUC does not beat chance (one-sided p >= {CHANCE_LEVEL:g}) for "
                 + "; ".join(f"{cadence} at {_fraction_list(group)}"
                             for cadence, group in failing.groupby("cadence", sort=False)) + "."]
    smallest = min(resolvable_auc(int(b), int(p)) for b, p in zip(failing["n_binary"], failing["n_pspl"]))
    sentences.append(f"These test events resolve an AUC of {smallest:.3f} or more from chance (distinct scores, "
                     f"one-sided p < {CHANCE_LEVEL:g}).")
    if "ideal_roc_auc_p_value" not in failing.columns or failing["ideal_roc_auc_p_value"].isna().all():
        return " ".join(sentences)
    beyond_reach = failing["ideal_roc_auc_p_value"] >= CHANCE_LEVEL
    if beyond_reach.any():
        weak = failing[beyond_reach]
        sentences.append(
            "At " + _cadence_fractions(weak)
            + f" at most {weak['distinguishable_share_binary'].max():.1%} of the binaries were fitted by no PSPL "
            "within the noise: a classifier ranking exactly those above every other event would reach AUC "
            f"{weak['ideal_roc_auc'].max():.3f} at most, below {smallest:.3f}. Beyond those, a classifier has only how "
            "typical the light curve seen so far is of each simulated population to go on, a weak signal that "
            "needs more test events to show.")
    if (~beyond_reach).any():
        short = failing[~beyond_reach]
        sentences.append(
            "At " + _cadence_fractions(short)
            + " a classifier knowing which binaries no PSPL fits (every epoch observed) would have beaten chance: "
            "there the classifier, or the evidence lost in the cadence's gaps, fell short.")
    return " ".join(sentences)


def _fraction_list(group: pd.DataFrame) -> str:
    return ", ".join(f"{f:g}" for f in group["fraction"])


def _cadence_fractions(rows: pd.DataFrame) -> str:
    """``"sparse 0.1, 0.2; lsst 0.1"``: each cadence with its fractions."""
    return "; ".join(f"{cadence} {_fraction_list(group)}" for cadence, group in rows.groupby("cadence", sort=False))


def _overlap_note(summary: pd.DataFrame, column: str, what: str) -> str:
    """Name the best cadence and those whose interval overlaps it (a rough, not a formal, comparison)."""
    values = summary[column].to_numpy(dtype=float)
    if len(summary) < 2 or not np.any(np.isfinite(values)):
        return ""
    best = int(np.nanargmax(values))
    best_low = summary[f"{column}_low"].iloc[best]
    overlapping = [
        name for i, name in enumerate(summary["cadence"])
        if i != best and summary[f"{column}_high"].iloc[i] >= best_low
    ]
    name = summary["cadence"].iloc[best]
    text = f"Highest {what}: {name} ({format_interval(values[best], best_low, summary[f'{column}_high'].iloc[best])})."
    if overlapping:
        text += (f" Its 95 % interval overlaps that of {', '.join(overlapping)}, so the test set does not "
                 "separate these cadences on this metric.")
    else:
        text += " Its 95 % interval overlaps no other cadence's."
    return text


def _report(summary, tables, thresholds_used, plain: bool, chance_notes: Mapping[str, str]) -> str:
    """comparison.md (plain=False) or comparison.txt (plain=True)."""

    def table(frame: pd.DataFrame) -> str:
        if plain:
            return tabulate(frame.astype(object).where(frame.notna(), "n/a"), headers="keys", tablefmt="simple",
                            showindex=False, floatfmt=".3f")
        return to_markdown(frame)

    def heading(text: str, level: int) -> list[str]:
        if plain:
            return [text, ("=" if level == 1 else "-") * len(text), ""]
        return [f"{'#' * level} {text}", ""]

    thresholds_text = ", ".join(f"{t:g}" for t in thresholds_used)
    counts_text = ", ".join(f"{c} {n}" for c, n in zip(summary["cadence"], summary["n_events"], strict=True))
    lines = heading("Microlensing classification by cadence", 1)
    lines += [
        (f"Test events per cadence: {counts_text}. "
        f"An event is called binary when P(binary) >= {thresholds_text} (fixed in advance; nothing is tuned on the "
        "test split). Intervals are 95 % Wilson intervals over the test events: they cover the sampling of the "
        "test set only, not the variation between training runs (one model per cadence)."),
        "",
        ("PSPL-like binaries are binary-lens events whose noiseless light curve never departs from the best PSPL "
        "fit by more than the configured number of sigma: no classifier can be expected to find them, so accuracy "
        "is also given without them, together with the share of them that is still called binary."),
        "",
    ]
    notes = [_overlap_note(summary, "accuracy", "final-step accuracy"),
             _overlap_note(summary, "accuracy_without_pspl_like", "accuracy without PSPL-like binaries")]
    lines += heading("Final step (all epochs)", 2) + [table(tables["final"]), ""]
    lines += [note for note in notes if note] + [""]
    for basis in BASES:
        lines += heading(f"Early detection: accuracy against the {BASIS_LABELS[basis]}", 2)
        lines += [table(tables[f"early_{basis}"]), ""]
        if f"phase_{basis}" in tables:
            lines += ["Median (t - t0)/tE the binaries had reached at that point (negative: before the peak):", "",
                      table(tables[f"phase_{basis}"]), ""]
        if f"auc_{basis}" in tables:
            lines += [(f"ROC AUC at that point, with the one-sided Mann-Whitney p-value of AUC > 0.5 "
                       f"(* beats chance at p < {CHANCE_LEVEL:g}):"), "", table(tables[f"auc_{basis}"]), ""]
        if f"ideal_{basis}" in tables:
            lines += [("Share of the binaries whose light curve seen so far no PSPL fitted within the noise "
                       "(chi2 above the PSPL-like threshold squared, on the noiseless curve at every epoch), and the "
                       "ROC AUC and p-value (distinct scores) of an ideal classifier ranking exactly those binaries "
                       "above every other event. It ignores how typical a light curve is of each simulated "
                       "population, which a classifier can also learn:"), "",
                      table(tables[f"ideal_{basis}"]), ""]
        if chance_notes.get(basis):
            lines += [chance_notes[basis], ""]
    lines += heading("Detection times", 2)
    lines += [
        ("A binary is detected at the first step after which P(binary) stays at or above the threshold until the "
        "end of the grid (a dip resets it); for PSPL events the same is a false alarm. Times are (t_det - t0)/tE "
        "of the detected binaries: median and quartiles."),
        "",
        table(tables["detection"]),
        "",
    ]
    lines += heading("Figures", 2)
    for name, caption in (("early_detection_comparison.png", "early detection, both bases"),
                          ("roc_comparison.png", "ROC at the final step"),
                          ("accuracy_comparison.png", "final-step accuracy with and without PSPL-like binaries")):
        lines.append(f"- {caption}: {name}" if plain else f"- [{caption}]({name})")
    lines.append("")
    return "\n".join(lines)


def compare_cadences(cadence_dirs: Mapping[str, str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Compare cadences from the outputs of `evaluate_cadence`.

    Parameters
    ----------
    cadence_dirs : mapping of str to path
        Cadence name to the ``out_dir`` given to `evaluate_cadence` (its
        metrics.json, early_detection.csv and detection_summary.csv are read).
        The mapping's order is the order of tables and legends.
    out_dir : path
        Receives comparison.md, comparison.txt, comparison.json, summary.csv,
        early_detection_comparison.png, roc_comparison.png and
        accuracy_comparison.png.

    Returns
    -------
    dict
        The content of comparison.json: cadences, thresholds, confidence,
        summary (one record per cadence, as in summary.csv), early_detection
        and detection (long records with a cadence column) and notes.
    """
    if not cadence_dirs:
        raise ValueError("cadence_dirs is empty; nothing to compare")
    out_dir = Path(out_dir)
    outputs = {name: _read_cadence_outputs(name, Path(directory)) for name, directory in cadence_dirs.items()}
    summary = pd.DataFrame([_summary_row(name, out["metrics"]) for name, out in outputs.items()])
    early = pd.concat([out["early"].assign(cadence=name) for name, out in outputs.items()], ignore_index=True)
    detection = pd.concat([out["detection"].assign(cadence=name) for name, out in outputs.items()],
                          ignore_index=True)
    early = early[["cadence", *[c for c in early.columns if c != "cadence"]]]
    detection = detection[["cadence", *[c for c in detection.columns if c != "cadence"]]]
    thresholds_used = sorted({float(out["metrics"]["threshold"]) for out in outputs.values()})

    tables = _display_tables(summary, early, detection)
    threshold_text = ", ".join(f"{t:g}" for t in thresholds_used)
    notes = [note for note in (_overlap_note(summary, "accuracy", "final-step accuracy"),
                               _overlap_note(summary, "accuracy_without_pspl_like",
                                             "accuracy without PSPL-like binaries")) if note]
    chance_notes = {basis: _chance_note(early, basis) for basis in BASES}
    notes += [note for note in chance_notes.values() if note]
    result = _finite_or_none({
        "cadences": list(outputs),
        "decision_thresholds": thresholds_used,
        "confidence": CONFIDENCE,
        "summary": summary.to_dict(orient="records"),
        "early_detection": early.to_dict(orient="records"),
        "detection": detection.to_dict(orient="records"),
        "notes": notes,
    })
    write_table(out_dir / "summary.csv", summary)
    write_json(out_dir / "comparison.json", result)
    write_text(out_dir / "comparison.md", _report(summary, tables, thresholds_used, plain=False, chance_notes=chance_notes))
    write_text(out_dir / "comparison.txt", _report(summary, tables, thresholds_used, plain=True, chance_notes=chance_notes))
    _save(out_dir / "early_detection_comparison.png",
          _early_detection_figure({name: out["early"] for name, out in outputs.items()},
                                  title=f"Early detection by cadence (threshold {threshold_text})",
                                  show_without=False))
    rocs = {name: (out["metrics"].get("roc_curve"), _nan(out["metrics"]["final_step"].get("roc_auc")))
            for name, out in outputs.items()}
    _save(out_dir / "roc_comparison.png", _roc_comparison_figure(rocs))
    _save(out_dir / "accuracy_comparison.png", _accuracy_comparison_figure(summary, threshold_text))
    logger.info("compared %d cadences in %s", len(outputs), out_dir)
    return result
