"""Simulated shards: settings, priors and the event table."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from astrodag.errors import ConfigError
from astrodag.microlensing.simulation import (
    BINARY_COLUMNS,
    EVENT_COLUMNS,
    SimulationSettings,
    draw_events,
    simulate_shard,
    time_grid,
)

TIMES = time_grid(1500, 500.0)


# --- grid and settings ------------------------------------------------------------------------


def test_time_grid_is_the_designs_grid():
    times = time_grid(1500, 500)
    assert times.shape == (1500,) and times.dtype == np.float64
    assert times[0] == 0.0 and times[-1] < 500.0
    np.testing.assert_allclose(np.diff(times), 500 / 1500)
    for epochs, duration in ((1, 500), (1500.0, 500), (1500, 0), (1500, float("nan"))):
        with pytest.raises(ConfigError):
            time_grid(epochs, duration)


def test_settings_defaults_are_the_documented_priors_and_round_trip():
    settings = SimulationSettings.from_config({})
    assert settings == SimulationSettings.from_config(None)
    assert SimulationSettings.from_config(settings.as_dict()) == settings
    p = settings.priors
    assert p.u0 == (0.0, 1.0) and p.q == (1e-4, 1.0) and p.tE_days == (1.0, 300.0)
    assert (p.tE_median_days, p.tE_log10_sigma) == (20.0, 0.57)
    assert (p.t0_fraction, p.baseline_mag, p.source_fraction, p.s, p.rho) == (
        (0.2, 0.8), (16.0, 21.0), (0.1, 1.0), (0.3, 3.0), (3e-4, 1e-2))
    assert settings.split_fractions == {"train": 0.5, "validation": 0.1, "test": 0.4}
    assert set(settings.as_dict()) == {"priors", "split_fractions"}  # noise and the PSPL-like cut moved to observe
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.priors = None  # frozen
    custom = SimulationSettings.from_config({"priors": {"u0": [0.1, 0.2], "tE_median_days": 30}})
    assert custom.priors.u0 == (0.1, 0.2) and custom.priors.tE_median_days == 30.0 and custom.priors.q == (1e-4, 1.0)


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"prior": {}}, "microlensing.simulation.prior"),
        ({"priors": {"tE": [1, 2]}}, "microlensing.simulation.priors.tE"),
        ({"noise": {}}, "microlensing.simulation.noise"),
        ({"pspl_like_max_deviation_sigma": 3}, "microlensing.simulation.pspl_like_max_deviation_sigma"),
        ({"split_fractions": {"train": 0.7, "validation": 0.15, "test": 0.15, "holdout": 0.0}},
         "microlensing.simulation.split_fractions.holdout"),
        ({"priors": {"q": [0.0, 1.0]}}, "microlensing.simulation.priors.q"),  # log-uniform needs > 0
        ({"priors": {"tE_days": [0.0, 300.0]}}, "microlensing.simulation.priors.tE_days"),
        ({"priors": {"tE_log10_sigma": 0}}, "microlensing.simulation.priors.tE_log10_sigma"),
        ({"priors": {"tE_median_days": -20}}, "microlensing.simulation.priors.tE_median_days"),
        ({"priors": {"u0": [1.0, 0.5]}}, "microlensing.simulation.priors.u0"),
        ({"priors": {"u0": [0.5]}}, "microlensing.simulation.priors.u0"),
        ({"priors": {"t0_fraction": [0.2, 1.5]}}, "microlensing.simulation.priors.t0_fraction"),
        ({"priors": {"source_fraction": [0.5, "x"]}}, "microlensing.simulation.priors.source_fraction"),
        ({"split_fractions": {"train": 0.8, "validation": 0.15, "test": 0.15}},
         "microlensing.simulation.split_fractions"),
    ],
)
def test_bad_settings_name_the_key(mapping, key):
    with pytest.raises(ConfigError) as error:
        SimulationSettings.from_config(mapping)
    assert error.value.key == key
    assert key in str(error.value)


# --- priors --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawn():
    return draw_events(8001, TIMES, SimulationSettings(), np.random.default_rng(0))


def test_draw_events_are_balanced_and_split(drawn):
    events = drawn
    binary = events["label"] == 1
    assert binary.sum() == 4001  # balanced; the odd one is a binary
    assert events.loc[~binary, list(BINARY_COLUMNS)].isna().all().all()
    assert events.loc[binary, list(BINARY_COLUMNS)].notna().all().all()
    assert events["t0"].between(0.2 * TIMES[-1], 0.8 * TIMES[-1]).all()
    assert events["alpha"].dropna().between(0, 2 * np.pi).all()
    shares = events["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.5, abs=0.03) and shares["test"] == pytest.approx(0.4, abs=0.03)


def test_timescales_follow_the_ogle_distribution_short_events_included(drawn):
    """Log-normal tE (median 20 d, 0.57 dex) truncated to [1, 300] d: ~30 % of events shorter than 10 d."""
    te = drawn["tE"].to_numpy()
    assert te.min() >= 1.0 and te.max() <= 300.0
    assert np.median(te) == pytest.approx(20.0, rel=0.06)
    assert np.mean(te < 10.0) == pytest.approx(0.30, abs=0.025)  # the old log-uniform [10, 100] d had none
    assert np.mean(te < 3.0) > 0.02
    # The whole distribution against scipy's truncated normal in log10(tE).
    low, high = (np.log10([1.0, 300.0]) - np.log10(20.0)) / 0.57
    expected = stats.truncnorm(low, high, loc=np.log10(20.0), scale=0.57)
    assert stats.kstest(np.log10(te), expected.cdf).pvalue > 1e-3  # fixed seed: a deterministic check


def test_planetary_mass_ratios_are_included(drawn):
    q = drawn["q"].dropna().to_numpy()
    assert q.min() >= 1e-4 and q.max() <= 1.0
    assert np.mean(q < 1e-2) == pytest.approx(0.5, abs=0.03)  # log-uniform over four decades: half are planets
    assert np.mean(q < 1e-3) == pytest.approx(0.25, abs=0.03)


def test_impact_parameters_have_one_distribution_for_both_classes(drawn):
    """A different u0 range per class would let the peak magnification tell the classes apart."""
    binary = (drawn["label"] == 1).to_numpy()
    u0 = drawn["u0"].to_numpy()
    assert u0.min() >= 0.0 and u0.max() <= 1.0
    assert u0[binary].max() > 0.95 and u0[~binary].max() > 0.95
    assert stats.ks_2samp(u0[binary], u0[~binary]).pvalue > 0.01
    assert stats.kstest(u0, stats.uniform(0, 1).cdf).pvalue > 0.01


def test_draw_events_are_reproducible():
    settings = SimulationSettings()
    first = draw_events(500, TIMES, settings, np.random.default_rng(3))
    pd.testing.assert_frame_equal(first, draw_events(500, TIMES, settings, np.random.default_rng(3)))
    assert not first["tE"].equals(draw_events(500, TIMES, settings, np.random.default_rng(4))["tE"])


# --- shards ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard") / "shard002"
    summary = simulate_shard(out, 2, 64, SimulationSettings(), TIMES, seed=5)
    return out, summary


def test_shard_holds_the_event_table_only(shard):
    out, summary = shard
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet"]
    events = pd.read_parquet(out / "events.parquet")
    assert tuple(events.columns) == EVENT_COLUMNS
    assert events["event_id"].dtype == np.int64 and events["label"].dtype == np.int8
    for column in EVENT_COLUMNS[3:]:
        assert events[column].dtype == np.float64, column
    np.testing.assert_array_equal(events["event_id"], 2 * 64 + np.arange(64))
    assert (events["label"] == 1).sum() == 32 and not np.all(np.diff(events["label"]) >= 0)  # shuffled
    assert set(events["split"]) <= {"train", "validation", "test"}
    assert summary["events"] == 64 and summary["pspl"] == summary["binary"] == 32
    assert sum(summary["splits"].values()) == 64 and summary["seconds"] >= 0


def test_shard_is_reproducible_bit_for_bit_per_seed_and_shard(shard, tmp_path):
    out, _ = shard
    settings = SimulationSettings()
    simulate_shard(tmp_path / "again", 2, 64, settings, TIMES, seed=5)
    assert (tmp_path / "again" / "events.parquet").read_bytes() == (out / "events.parquet").read_bytes()
    simulate_shard(tmp_path / "other", 3, 64, settings, TIMES, seed=5)
    simulate_shard(tmp_path / "seed", 2, 64, settings, TIMES, seed=6)
    base = pd.read_parquet(out / "events.parquet")
    for name in ("other", "seed"):
        assert not np.array_equal(pd.read_parquet(tmp_path / name / "events.parquet")["tE"], base["tE"])
    assert pd.read_parquet(tmp_path / "other" / "events.parquet")["event_id"].iloc[0] == 3 * 64


@pytest.mark.parametrize("kwargs", [{"shard_index": -1}, {"events_per_shard": 0}, {"seed": -2}])
def test_bad_shard_arguments(tmp_path, kwargs):
    arguments = {"shard_index": 0, "events_per_shard": 4, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        simulate_shard(tmp_path, arguments["shard_index"], arguments["events_per_shard"], SimulationSettings(),
                       TIMES, arguments["seed"])
