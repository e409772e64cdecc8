"""Photometry on the model's time grid: per-step summaries and the network's causal input channels.

Surveys observe at their own times (every 15 min for Roman, a few times a night on the ground,
every few nights for LSST). The network runs on a fixed grid of steps (8 h in the demo); every
observation falls in one step, and a step is summarised by (``bin_observations``):

``magnitudes``
    the inverse-variance weighted mean magnitude of its observations;
``errors``
    the error of that mean, ``1 / sqrt(sum 1/sigma_i^2)``: 32 Roman points in a step give a
    sqrt(32) smaller error than one ground point, so the network sees the cadence;
``counts``
    the number of observations;
``scatter``
    the reduced chi^2 of the observations about their mean (0 with fewer than two): variability
    inside the step, such as a caustic crossing shorter than a step.

The same function bins the simulated surveys and a user's photometry file (``classify``), so the
network is fed the same kind of input in training and in use.

``causal_features`` turns these into ``N_CHANNELS`` channels; every channel at step ``t`` uses
steps ``<= t`` only:

0. magnitude minus the reference (baseline) magnitude: the brightening, independent of the zero point;
1. magnitude minus the running mean of the observed magnitudes so far;
2. log10 of the error;
3. log(1 + count);
4. log(1 + scatter);
5. log10(1 + days since the previous observed step) (the time gap; 0 before the first observation);
6. observed (1) or not (0).

``Normalisation`` standardises channels 0-5 with statistics of the training split; at steps
without observations channels 0, 1, 2 and 4 carry the last observed value forward (0 before the
first), while the count, gap and observed channels keep their own values there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

N_CHANNELS = 7
STANDARDISED = (0, 1, 2, 3, 4, 5)
CARRIED = (0, 1, 2, 4)
OBSERVED_CHANNEL = 6
# Recorded in model.json: a model is only fed inputs built the way it was trained on.
INPUT_LAYOUT = ("binned: magnitude - reference, deviation from running mean, log10 error, log1p count,"
                " log1p scatter, log10(1 + gap days), observed; standardised, last observed value carried")


def bin_observations(times, magnitudes, errors, n_steps: int, step_days: float, start: float = 0.0,
                     rows=None, n_rows: int | None = None) -> dict[str, np.ndarray | int]:
    """Per-step summaries of observations (see the module docstring).

    Parameters
    ----------
    times, magnitudes, errors : array_like, shape (N,)
        Observation times (days), magnitudes and their 1-sigma errors (> 0).
    n_steps : int
        Steps of the grid; step ``k`` covers ``[start + k step_days, start + (k+1) step_days)``.
    step_days : float
        Step length (days).
    start : float
        Time of the start of step 0.
    rows, n_rows : array_like of int, shape (N,), and int, optional
        Which light curve each observation belongs to (``0 .. n_rows-1``): bins many curves at once
        and returns arrays of shape ``(n_rows, n_steps)``. Without them, one curve, shape ``(n_steps,)``.

    Returns
    -------
    dict
        ``magnitudes``, ``errors``, ``scatter`` (float32, 0 where a step has no observation),
        ``counts`` (int32), and ``used``/``outside``: observations inside and outside the grid.
    """
    times = np.asarray(times, dtype=np.float64)
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if not (times.shape == magnitudes.shape == errors.shape) or times.ndim != 1:
        raise ValueError(f"times, magnitudes and errors must be 1-D of one length, got {times.shape},"
                         f" {magnitudes.shape}, {errors.shape}")
    if errors.size and not (np.isfinite(errors).all() and errors.min() > 0):
        raise ValueError("errors must be finite and > 0")
    if not (np.isfinite(magnitudes).all() and np.isfinite(times).all()):
        raise ValueError("times and magnitudes must be finite")
    single = rows is None
    if single:
        rows = np.zeros(times.size, dtype=np.int64)
        n_rows = 1
    else:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != times.shape or n_rows is None or (rows.size and (rows.min() < 0 or rows.max() >= n_rows)):
            raise ValueError("rows must match times and lie in [0, n_rows)")
    step = np.floor((times - start) / step_days).astype(np.int64)
    inside = (step >= 0) & (step < n_steps)
    cell = rows[inside] * n_steps + step[inside]
    size = int(n_rows) * n_steps
    weight = 1.0 / errors[inside] ** 2
    values = magnitudes[inside]
    counts = np.bincount(cell, minlength=size)
    sum_w = np.bincount(cell, weights=weight, minlength=size)
    observed = counts > 0
    safe_w = np.where(observed, sum_w, 1.0)
    mean = np.bincount(cell, weights=weight * values, minlength=size) / safe_w
    chi2 = np.bincount(cell, weights=weight * (values - mean[cell]) ** 2, minlength=size)
    scatter = np.where(counts > 1, chi2 / np.maximum(counts - 1, 1), 0.0)
    shape = (n_steps,) if single else (int(n_rows), n_steps)
    return {
        "magnitudes": np.where(observed, mean, 0.0).astype(np.float32).reshape(shape),
        "errors": np.where(observed, 1.0 / np.sqrt(safe_w), 0.0).astype(np.float32).reshape(shape),
        "counts": counts.astype(np.int32).reshape(shape),
        "scatter": scatter.astype(np.float32).reshape(shape),
        "used": int(inside.sum()),
        "outside": int((~inside).sum()),
    }


def causal_features(magnitudes, errors, counts, scatter, reference_mag, step_days: float) -> np.ndarray:
    """Raw (unstandardised) channels ``(..., N_CHANNELS, steps)`` from per-step arrays ``(..., steps)``.

    ``reference_mag`` is the baseline magnitude of each light curve (scalar or shape ``(...)``), as a
    survey knows it from its reference image or earlier seasons.
    """
    counts = np.asarray(counts)
    observed = counts > 0
    reference = np.asarray(reference_mag, dtype=np.float64)[..., None]
    relative = np.where(observed, np.asarray(magnitudes, dtype=np.float64) - reference, 0.0)
    seen = np.cumsum(observed, axis=-1)
    running_mean = np.cumsum(relative, axis=-1) / np.maximum(seen, 1)
    deviation = np.where(observed, relative - running_mean, 0.0)
    log_error = np.where(observed, np.log10(np.where(observed, errors, 1.0)), 0.0)
    log_scatter = np.where(observed, np.log1p(np.maximum(scatter, 0.0)), 0.0)
    steps = np.arange(observed.shape[-1])
    # Index of the previous observed step (strictly before t): the gap channel at t.
    last = np.maximum.accumulate(np.where(observed, steps, -1), axis=-1)
    previous = np.concatenate([np.full(last.shape[:-1] + (1,), -1), last[..., :-1]], axis=-1)
    gap_days = np.where(previous >= 0, (steps - previous) * step_days, 0.0)
    channels = [relative, deviation, log_error, np.log1p(counts), log_scatter, np.log10(1.0 + gap_days),
                observed.astype(np.float64)]
    return np.stack(np.broadcast_arrays(*channels), axis=-2).astype(np.float32)


@dataclass(frozen=True)
class Normalisation:
    """Mean and standard deviation of the standardised channels (``STANDARDISED``), training split only."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) != len(STANDARDISED) or len(self.std) != len(STANDARDISED):
            raise ValueError(f"normalisation needs {len(STANDARDISED)} means and standard deviations, got"
                             f" {len(self.mean)} and {len(self.std)} (a model trained with other inputs?)")

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Standardise; carried channels repeat their last observed value at unobserved steps (still causal)."""
        features = np.array(features, dtype=np.float32, copy=True)
        observed = features[..., OBSERVED_CHANNEL, :] > 0
        steps = np.arange(observed.shape[-1])
        last = np.maximum.accumulate(np.where(observed, steps, -1), axis=-1)
        seen = last >= 0
        source = np.maximum(last, 0)
        for position, channel in enumerate(STANDARDISED):
            values = (features[..., channel, :] - self.mean[position]) / self.std[position]
            if channel in CARRIED:
                values = np.where(seen, np.take_along_axis(values, source, axis=-1), 0.0)
            features[..., channel, :] = values
        return features

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Sequence[float]]) -> Normalisation:
        return cls(tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]))


def fit_normalisation(feature_chunks: Iterable[np.ndarray]) -> Normalisation:
    """Statistics of the standardised channels over the observed steps of raw feature chunks ``(n, C, steps)``.

    Feed it the training split only.
    """
    sums = np.zeros(len(STANDARDISED))
    squares = np.zeros(len(STANDARDISED))
    count = 0
    for features in feature_chunks:
        observed = features[:, OBSERVED_CHANNEL, :] > 0
        values = features[:, list(STANDARDISED), :].transpose(1, 0, 2)[:, observed].astype(np.float64)
        sums += values.sum(axis=1)
        squares += (values**2).sum(axis=1)
        count += values.shape[1]
    if count == 0:
        raise ValueError("the training split has no observed steps to normalise with")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)
    return Normalisation(tuple(mean.tolist()), tuple(std.tolist()))
