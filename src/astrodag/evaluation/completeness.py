"""Completeness (recall) and how it varies with a parameter, with Wilson intervals.

Completeness is the share of true objects that a pipeline recovers: of supernovae in difference
images, of binary lenses detected, of lenses found. `recall_interval` gives it for one set of
objects, `completeness_curve` in bins of any parameter (magnitude, Einstein radius, phase...).

Intervals are Wilson score intervals (`astrodag.evaluation.statistics.wilson_interval`, which is
``statsmodels.stats.proportion.proportion_confint(method="wilson")``): unlike the normal
approximation they stay inside [0, 1] and keep their coverage for fractions near 0 or 1, where
completeness curves spend much of their range.

A bin with fewer objects than ``min_count`` keeps its bounds and counts but gets NaN for the
fraction and its interval. Bins are not merged: merged bins would move the edges from run to run,
and curves of two pipelines on the same edges could no longer be compared bin by bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from astrodag.evaluation.statistics import wilson_interval

CURVE_COLUMNS = ("bin_low", "bin_high", "n", "recovered", "fraction", "fraction_low", "fraction_high")


def _recovered_flags(recovered, name: str = "recovered") -> np.ndarray:
    flags = np.asarray(recovered)
    if flags.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {flags.shape}")
    if flags.dtype != bool:
        numeric = flags.astype(float)
        if np.setdiff1d(numeric, [0.0, 1.0]).size:
            raise ValueError(f"{name} must hold booleans or 0/1, also found {np.setdiff1d(numeric, [0.0, 1.0])[:5]}")
        flags = numeric == 1.0
    return flags


def recall_interval(recovered, confidence: float = 0.95) -> dict[str, float]:
    """The recovered share of a set of true objects and its Wilson interval.

    Parameters
    ----------
    recovered : array-like of bool or 0/1, shape (n,)
        One entry per true object: was it recovered?
    confidence : float, default 0.95
        Level of the interval.

    Returns
    -------
    dict
        n (objects, an int), recovered (an int), fraction (recovered / n) and fraction_low,
        fraction_high (the Wilson interval); the three floats are NaN when n == 0.
    """
    flags = _recovered_flags(recovered)
    n, hits = int(flags.size), int(flags.sum())
    low, high = wilson_interval(hits, n, confidence)
    return {"n": n, "recovered": hits, "fraction": hits / n if n else float("nan"),
            "fraction_low": low, "fraction_high": high}


def bin_edges(values, bins: int | Sequence[float] = 10, quantiles: bool = False) -> np.ndarray:
    """Bin edges over ``values``: given, evenly spaced, or at quantiles (equal counts).

    Parameters
    ----------
    values : array-like of float
        The parameter's finite values.
    bins : int or sequence of float, default 10
        A number of bins, or increasing edges (returned as they are).
    quantiles : bool, default False
        With a number of bins: edges at the quantiles of ``values`` (bins of about equal counts;
        repeated quantiles of discrete values collapse, so there may be fewer bins) instead of
        evenly spaced between the minimum and the maximum.

    Returns
    -------
    ndarray of float
        At least two strictly increasing edges.
    """
    if not np.isscalar(bins):
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bin edges must be at least two finite, strictly increasing numbers, got {bins!r}")
        return edges
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer or a sequence of edges, got {bins!r}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("cannot place bins over no values; give the edges")
    if quantiles:
        edges = np.unique(np.quantile(data, np.linspace(0.0, 1.0, int(bins) + 1)))
    else:
        edges = np.linspace(data.min(), data.max(), int(bins) + 1)
    if edges.size < 2 or edges[-1] == edges[0]:
        # All values equal: one bin around them.
        edges = np.array([data.min() - 0.5, data.max() + 0.5])
    return edges


def completeness_curve(values, recovered, bins: int | Sequence[float] = 10, quantiles: bool = False,
                       min_count: int = 1, confidence: float = 0.95) -> pd.DataFrame:
    """Completeness in bins of a parameter, with Wilson intervals.

    Parameters
    ----------
    values : array-like of float, shape (n,)
        The parameter of each true object (finite).
    recovered : array-like of bool or 0/1, shape (n,)
        Whether each object was recovered.
    bins : int or sequence of float, default 10
        Number of bins or their edges (see `bin_edges`). Bins are half-open ``[low, high)``
        except the last, which also holds its upper edge (``numpy.histogram``'s rule); objects
        outside the edges are left out.
    quantiles : bool, default False
        With a number of bins, place the edges at quantiles of ``values``.
    min_count : int, default 1
        Bins with fewer objects get NaN fraction and interval (their counts stay).
    confidence : float, default 0.95
        Level of the intervals.

    Returns
    -------
    DataFrame
        One row per bin, ``CURVE_COLUMNS``: bin_low, bin_high, n, recovered, fraction,
        fraction_low, fraction_high.

    Raises
    ------
    ValueError
        For values and flags of different lengths, non-finite values, flags that are not 0/1
        or invalid bins or ``min_count``.
    """
    data = np.asarray(values, dtype=float)
    flags = _recovered_flags(recovered)
    if data.ndim != 1 or data.shape != flags.shape:
        raise ValueError(f"values and recovered must be 1-D of one length, got shapes {data.shape} and {flags.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"values hold {int(np.sum(~np.isfinite(data)))} NaN or infinite value(s)")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    edges = bin_edges(data, bins, quantiles)
    counts = np.histogram(data, edges)[0]
    hits = np.histogram(data[flags], edges)[0]
    low, high = wilson_interval(hits, counts, confidence)
    fraction = np.divide(hits, counts, out=np.full(counts.shape, np.nan), where=counts > 0)
    sparse = counts < min_count
    return pd.DataFrame({
        "bin_low": edges[:-1], "bin_high": edges[1:], "n": counts, "recovered": hits,
        "fraction": np.where(sparse, np.nan, fraction),
        "fraction_low": np.where(sparse, np.nan, low), "fraction_high": np.where(sparse, np.nan, high),
    }, columns=list(CURVE_COLUMNS))
