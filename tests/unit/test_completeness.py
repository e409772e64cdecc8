"""Tests for astrodag.evaluation.completeness against statsmodels' Wilson interval."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from astrodag.evaluation.completeness import CURVE_COLUMNS, bin_edges, completeness_curve, recall_interval


def test_recall_interval_matches_statsmodels():
    flags = np.array([True, False, True, True, False, True, True])
    result = recall_interval(flags)
    low, high = proportion_confint(5, 7, alpha=0.05, method="wilson")
    assert (result["n"], result["recovered"], result["fraction"]) == (7, 5, 5 / 7)
    assert [result["fraction_low"], result["fraction_high"]] == pytest.approx([low, high], rel=1e-12)
    ninety = recall_interval(flags.astype(int), confidence=0.9)
    assert [ninety["fraction_low"], ninety["fraction_high"]] == pytest.approx(
        list(proportion_confint(5, 7, alpha=0.1, method="wilson")))
    empty = recall_interval(np.zeros(0, bool))
    assert empty["n"] == 0 and np.isnan([empty["fraction"], empty["fraction_low"], empty["fraction_high"]]).all()
    with pytest.raises(ValueError, match="0/1"):
        recall_interval([0, 2])


def test_curve_counts_per_bin_and_wilson_intervals():
    rng = np.random.default_rng(4)
    magnitude = rng.uniform(20.0, 25.0, 500)
    recovered = rng.uniform(size=500) < np.clip(24.0 - magnitude, 0.05, 0.95)
    edges = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    curve = completeness_curve(magnitude, recovered, bins=edges)
    assert list(curve.columns) == list(CURVE_COLUMNS)
    counts, _ = np.histogram(magnitude, edges)
    hits, _ = np.histogram(magnitude[recovered], edges)
    assert curve["n"].tolist() == counts.tolist() and curve["recovered"].tolist() == hits.tolist()
    assert curve["fraction"].to_numpy() == pytest.approx(hits / counts)
    low, high = proportion_confint(hits, counts, alpha=0.05, method="wilson")
    assert curve["fraction_low"].to_numpy() == pytest.approx(low)
    assert curve["fraction_high"].to_numpy() == pytest.approx(high)
    # Completeness falls with magnitude in this simulation.
    assert curve["fraction"].iloc[0] > curve["fraction"].iloc[-1]


def test_sparse_bins_are_nan_but_keep_their_counts():
    values = np.array([0.1, 0.2, 0.3, 0.4, 1.5, 2.5, 2.6])
    recovered = np.array([1, 1, 0, 1, 1, 0, 1])
    curve = completeness_curve(values, recovered, bins=[0.0, 1.0, 2.0, 3.0], min_count=2)
    assert curve["n"].tolist() == [4, 1, 2]
    assert curve["recovered"].tolist() == [3, 1, 1]
    assert np.isnan(curve.loc[1, ["fraction", "fraction_low", "fraction_high"]].to_numpy(float)).all()
    assert curve.loc[0, "fraction"] == 0.75 and curve.loc[2, "fraction"] == 0.5
    empty_bin = completeness_curve(values, recovered, bins=[0.0, 1.0, 1.2, 3.0])
    assert empty_bin.loc[1, "n"] == 0 and np.isnan(empty_bin.loc[1, "fraction"])


def test_bins_by_number_quantiles_and_edges():
    values = np.arange(100.0)
    assert bin_edges(values, 4).tolist() == pytest.approx([0.0, 24.75, 49.5, 74.25, 99.0])
    quantile_curve = completeness_curve(values, values % 2 == 0, bins=4, quantiles=True)
    assert quantile_curve["n"].tolist() == [25, 25, 25, 25]
    # The last bin holds its upper edge; values outside the edges are left out.
    assert completeness_curve(values, np.ones(100, bool), bins=[10.0, 20.0])["n"].tolist() == [11]
    assert bin_edges(np.full(5, 3.0), 3).tolist() == [2.5, 3.5]
    for bad in ([1.0], [2.0, 1.0], 0, [0.0, np.inf]):
        with pytest.raises(ValueError):
            bin_edges(values, bad)
    with pytest.raises(ValueError, match="NaN"):
        completeness_curve([1.0, np.nan], [1, 0])
    with pytest.raises(ValueError, match="min_count"):
        completeness_curve([1.0, 2.0], [1, 0], min_count=0)
