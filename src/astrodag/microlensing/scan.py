"""Input checks of the scorer's arrays, the steps of the two bases, and one streaming pass over the scores.

The bases say how much of a light curve the classifier has seen: a fraction of the time grid
("time", the same step for every event) or of the event's observed epochs ("observed").
:func:`scan_scores` reads the memory-mapped (events x steps) probabilities once, in row chunks,
and gathers everything the analysis tables need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrodag.logs import progress_enabled

BASES = ("time", "observed")
CHUNK_EVENTS = 2048


class ArrayProblem(ValueError):
    """A ValueError that remembers which input ("probabilities", "mask", "events", "times") is wrong.

    `evaluate_cadence` turns it into an InputDataError naming the matching file.
    """

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(message)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def check_fractions(fractions) -> np.ndarray:
    values = np.asarray(fractions, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got {fractions!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0) or np.any(values > 1.0):
        raise ValueError(f"fractions must lie in (0, 1], got {values.tolist()}")
    return values


def check_thresholds(thresholds) -> np.ndarray:
    values = np.asarray(thresholds, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got {thresholds!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0) or np.any(values > 1.0):
        raise ValueError(f"thresholds must lie in (0, 1], got {values.tolist()}")
    return values


def check_decision_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def check_basis(basis: str) -> str:
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    return basis


def as_2d(array, name: str):
    """Return a 2-D array-like (memmaps are kept as they are, never copied)."""
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.ndim != 2:
        raise ArrayProblem(name, f"{name} must be 2-D (events x steps), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ArrayProblem(name, f"{name} is empty (shape {array.shape})")
    return array


def check_mask_shape(mask, shape: tuple[int, int]):
    mask = as_2d(mask, "mask")
    if mask.shape != shape:
        raise ArrayProblem("mask", f"mask has shape {mask.shape} but probabilities have shape {shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ArrayProblem("mask", f"mask must hold 0/1 values, got dtype {mask.dtype}")
    return mask


def check_labels(labels, n_events: int) -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1:
        raise ArrayProblem("events", f"labels must be 1-D, got shape {values.shape}")
    if len(values) != n_events:
        raise ArrayProblem("events", f"{len(values)} labels for {n_events} events (rows of probabilities)")
    try:
        numeric = values.astype(float)
    except (TypeError, ValueError):
        raise ArrayProblem("events", f"labels must be 0 (PSPL) or 1 (binary), got dtype {values.dtype}") from None
    bad = ~np.isin(numeric, (0.0, 1.0))
    if bad.any():
        shown = pd.unique(values[bad])[:5].tolist()
        raise ArrayProblem("events", f"labels must be 0 (PSPL) or 1 (binary); {int(bad.sum())} are not, e.g. {shown}")
    return numeric.astype(np.int8)


def check_pspl_like(pspl_like, n_events: int) -> np.ndarray:
    if pspl_like is None:
        return np.zeros(n_events, dtype=bool)
    values = pd.Series(np.asarray(pspl_like) if not isinstance(pspl_like, pd.Series) else pspl_like.to_numpy())
    if len(values) != n_events:
        raise ArrayProblem("events", f"{len(values)} pspl_like flags for {n_events} events")
    if values.isna().any():
        raise ArrayProblem("events", f"pspl_like has {int(values.isna().sum())} missing value(s)")
    if not values.isin([True, False, 0, 1]).all():
        raise ArrayProblem("events", "pspl_like must hold booleans")
    return values.to_numpy().astype(bool)


def check_event_column(values, name: str, n_events: int, positive: bool = False) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ArrayProblem("events", f"column {name!r} must be numeric") from None
    if array.shape != (n_events,):
        raise ArrayProblem("events", f"column {name!r} has shape {array.shape}, expected ({n_events},)")
    bad = ~np.isfinite(array) | ((array <= 0) if positive else False)
    if np.any(bad):
        need = "finite and > 0" if positive else "finite"
        raise ArrayProblem(
            "events", f"column {name!r} must be {need}; {int(np.sum(bad))} value(s) are not (first at row "
            f"{int(np.argmax(bad))})"
        )
    return array


def check_times(times, n_steps: int) -> np.ndarray:
    values = np.asarray(times, dtype=float)
    if values.shape != (n_steps,):
        raise ArrayProblem("times", f"times has shape {values.shape}, expected ({n_steps},) to match the steps")
    if not np.all(np.isfinite(values)):
        raise ArrayProblem("times", "times holds NaN or infinite values")
    if n_steps > 1 and np.any(np.diff(values) <= 0):
        raise ArrayProblem("times", "times must be strictly increasing")
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
    raise ArrayProblem(
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
        raise ArrayProblem("mask", f"mask must hold only 0/1; {int(bad.sum())} other value(s) (first at row {row})")
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
    return _needed_counts(check_fractions(fractions), np.array([n_steps]))[0] - 1


def _observed_steps_chunk(mask_chunk: np.ndarray, fractions: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the step at which the observed count first reaches ceil(f * total observed).

    Returns (steps of shape (n, F), total observed per event).
    """
    n_rows, n_steps = mask_chunk.shape
    totals = np.count_nonzero(mask_chunk, axis=1)
    empty = totals == 0
    if empty.any():
        first = start + int(np.argmax(empty))
        raise ArrayProblem(
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
    fractions = check_fractions(fractions)
    mask = as_2d(mask, "mask")
    out = np.empty((mask.shape[0], len(fractions)), dtype=np.int64)
    for start in range(0, mask.shape[0], chunk_events):
        chunk = _check_chunk_mask(np.asarray(mask[start:start + chunk_events]), start)
        out[start:start + len(chunk)] = _observed_steps_chunk(chunk, fractions, start)[0]
    return out


# ---------------------------------------------------------------------------
# The single streaming pass
# ---------------------------------------------------------------------------


def check_consecutive(consecutive) -> int:
    if isinstance(consecutive, bool) or not isinstance(consecutive, (int, np.integer)) or consecutive < 1:
        raise ValueError(f"consecutive_epochs must be a positive integer, got {consecutive!r}")
    return int(consecutive)


def alarms(chunk: np.ndarray, observed: np.ndarray | None, threshold: float,
           consecutive: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-time alarms: when P(binary) is at or above a threshold at ``consecutive`` observed epochs in a row.

    Only observed epochs count: an unobserved step neither raises an alarm nor breaks a run.
    An alarm fires at the observed epoch that completes a run; a new one needs an observed
    epoch below the threshold first. Each alarm uses only the scores up to its epoch.

    Parameters
    ----------
    chunk : ndarray of shape (n, T)
        P(binary) at every step.
    observed : ndarray of shape (n, T) or None
        True (or 1) at observed epochs; None: every step is observed.
    threshold : float
        Compared in float64 (as binary_metrics compares), so float32 scores agree with it.
    consecutive : int
        Observed epochs in a row at or above the threshold that make an alarm.

    Returns
    -------
    first : ndarray of int64, shape (n,)
        Step of the first alarm, T when none.
    count : ndarray of int64, shape (n,)
        Number of alarms (separate up-crossings).
    """
    n_rows, n_steps = chunk.shape
    high = chunk >= np.float64(threshold)
    if observed is None:
        above, below = high, ~high
    else:
        seen = observed.astype(bool, copy=False)
        above, below = seen & high, seen & ~high
    # Length of the current run of observed epochs above the threshold: the observed-above
    # epochs counted since the last observed epoch below it.
    counted = np.cumsum(above, axis=1, dtype=np.int32)
    steps = np.arange(n_steps, dtype=np.int32)
    last_below = np.maximum.accumulate(np.where(below, steps, -1), axis=1)
    at_last_below = np.take_along_axis(counted, np.maximum(last_below, 0), axis=1)
    run = counted - np.where(last_below >= 0, at_last_below, 0)
    fire = above & (run == consecutive)
    count = np.count_nonzero(fire, axis=1).astype(np.int64)
    first = np.where(count > 0, np.argmax(fire, axis=1), n_steps).astype(np.int64)
    return first, count


def scan_scores(
    probabilities,
    mask,
    fractions: np.ndarray,
    bases: Sequence[str],
    thresholds: np.ndarray | None,
    chunk_events: int,
    progress: bool | None,
    consecutive: int = 1,
    event_steps: np.ndarray | None = None,
) -> dict[str, Any]:
    """One pass over row chunks gathering everything the tables need.

    Returns a dict with "final" (N,) probabilities at the last step, "at_steps" ((N, P)
    probabilities at the per-event steps ``event_steps`` (N, P) of int, or None without them),
    "gathered"/"steps" per basis ((N, F) probabilities and step indices),
    "detection" ((N, K) step of the first alarm per threshold, see `alarms`; T
    when none; every step counts as observed without a mask), "alarms" ((N, K)
    number of alarms) and "n_observed" ((N,) or None).
    """
    consecutive = check_consecutive(consecutive)
    if isinstance(chunk_events, bool) or not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1:
        raise ValueError(f"chunk_events must be a positive integer, got {chunk_events!r}")
    if not (probabilities.dtype == bool or np.issubdtype(probabilities.dtype, np.number)):
        raise ArrayProblem("probabilities", f"probabilities must be numeric, got dtype {probabilities.dtype}")
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
    detection = None if thresholds is None else np.empty((n_events, len(thresholds)), dtype=np.int64)
    alarm_counts = None if thresholds is None else np.empty((n_events, len(thresholds)), dtype=np.int64)
    n_observed = None if mask is None else np.empty(n_events, dtype=np.int64)
    picks = None if event_steps is None else np.asarray(event_steps, dtype=np.int64)
    if picks is not None:
        outside = np.any((picks < 0) | (picks >= n_steps))
        if picks.ndim != 2 or len(picks) != n_events or outside:
            raise ValueError(f"event_steps must be ({n_events}, P) step indices in [0, {n_steps})")
    at_steps = None if picks is None else np.empty(picks.shape, dtype=dtype)

    starts = range(0, n_events, chunk_events)
    for start in tqdm(starts, desc="scanning scores", unit="chunk", disable=not progress_enabled(progress)):
        stop = min(start + chunk_events, n_events)
        chunk = np.asarray(probabilities[start:stop])
        if chunk.dtype != dtype:
            chunk = chunk.astype(dtype)
        _check_chunk_probabilities(chunk, start)
        final[start:stop] = chunk[:, -1]
        if at_steps is not None:
            at_steps[start:stop] = np.take_along_axis(chunk, picks[start:stop], axis=1)
        if "time" in bases:
            gathered["time"][start:stop] = chunk[:, fixed_steps]
        mask_chunk = None
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
            for j, threshold in enumerate(thresholds):
                detection[start:stop, j], alarm_counts[start:stop, j] = alarms(chunk, mask_chunk, threshold,
                                                                               consecutive)
    return {
        "final": final,
        "at_steps": at_steps,
        "gathered": gathered,
        "steps": steps,
        "detection": detection,
        "alarms": alarm_counts,
        "n_observed": n_observed,
        "n_steps": n_steps,
    }


