"""Per-step binning of photometry and the causal input channels (astrodag.microlensing.features)."""

import numpy as np
import pytest

from astrodag.microlensing.features import (
    N_CHANNELS,
    Normalisation,
    bin_observations,
    causal_features,
    fit_normalisation,
)


def test_binning_matches_a_direct_weighted_mean_and_chi2():
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 10, 200))
    magnitudes = 18 + rng.normal(0, 0.02, times.size)
    errors = rng.uniform(0.01, 0.03, times.size)
    binned = bin_observations(times, magnitudes, errors, n_steps=30, step_days=1 / 3)
    for step in (0, 7, 29):
        inside = (times >= step / 3) & (times < (step + 1) / 3)
        w = errors[inside] ** -2
        mean = np.sum(w * magnitudes[inside]) / w.sum()
        assert binned["counts"][step] == inside.sum()
        assert binned["magnitudes"][step] == pytest.approx(mean, abs=1e-5)
        assert binned["errors"][step] == pytest.approx(w.sum() ** -0.5, rel=1e-5)
        chi2 = np.sum(w * (magnitudes[inside] - mean) ** 2) / (inside.sum() - 1)
        assert binned["scatter"][step] == pytest.approx(chi2, rel=1e-4)
    assert binned["used"] == 200 and binned["outside"] == 0


def test_batched_binning_equals_one_curve_at_a_time():
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 3, 300)
    times = rng.uniform(-1, 12, 300)
    magnitudes = rng.normal(19, 0.1, 300)
    errors = rng.uniform(0.01, 0.1, 300)
    batch = bin_observations(times, magnitudes, errors, 36, 1 / 3, rows=rows, n_rows=3)
    for row in range(3):
        one = bin_observations(times[rows == row], magnitudes[rows == row], errors[rows == row], 36, 1 / 3)
        for key in ("magnitudes", "errors", "counts", "scatter"):
            np.testing.assert_allclose(batch[key][row], one[key], rtol=1e-6)
    assert batch["outside"] == int(((times < 0) | (times >= 12)).sum())


def test_fifteen_minute_cadence_shows_in_the_error_and_count_channels():
    step = 1 / 3
    roman = (np.arange(30 * 96) + 0.5) * 15 / 1440  # mid-slot times: exactly 32 per 8-h step
    ground = np.arange(0.1, 30, 1.0)
    inputs = {}
    for name, times in (("roman", roman), ("ground", ground)):
        binned = bin_observations(times, np.full(times.size, 18.0), np.full(times.size, 0.01), 90, step)
        inputs[name] = causal_features(binned["magnitudes"], binned["errors"], binned["counts"],
                                       binned["scatter"], 18.0, step)
    observed = inputs["roman"][6] > 0
    assert np.allclose(10 ** inputs["roman"][2][observed], 0.01 / np.sqrt(32), rtol=1e-4)
    assert np.allclose(np.expm1(inputs["roman"][3][observed]), 32)
    assert inputs["ground"][6].sum() == 30


def test_features_are_causal_and_the_gap_channel_counts_days():
    rng = np.random.default_rng(2)
    counts = (rng.random((2, 60)) < 0.4).astype(int)
    magnitudes = rng.normal(18, 0.3, (2, 60))
    errors = rng.uniform(0.01, 0.05, (2, 60))
    scatter = rng.uniform(0, 3, (2, 60))
    features = causal_features(magnitudes, errors, counts, scatter, np.array([18.0, 17.5]), 1 / 3)
    assert features.shape == (2, N_CHANNELS, 60)
    changed = magnitudes.copy()
    changed[:, 30:] += 5
    later = causal_features(changed, errors, counts * 1, scatter, np.array([18.0, 17.5]), 1 / 3)
    assert np.array_equal(later[..., :30], features[..., :30])
    observed = np.flatnonzero(counts[0])
    gap = 10 ** features[0, 5, observed[1]] - 1
    assert gap == pytest.approx((observed[1] - observed[0]) / 3, rel=1e-5)


def test_normalisation_carries_values_and_keeps_counts_and_gaps():
    counts = np.array([[0, 2, 0, 0, 1]])
    features = causal_features(np.array([[0, 18.2, 0, 0, 18.1]]), np.full((1, 5), 0.02), counts,
                               np.zeros((1, 5)), 18.0, 1 / 3)
    normalisation = fit_normalisation([features])
    standardised = normalisation.apply(features)[0]
    assert standardised[0, 2] == standardised[0, 1] == standardised[0, 3]
    assert standardised[0, 0] == 0.0
    assert standardised[3, 2] != standardised[3, 1]  # count 0 at an unobserved step is its own value
    assert standardised[5, 3] > standardised[5, 2]  # the gap grows until the next observation
    with pytest.raises(ValueError, match="6 means"):
        Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
