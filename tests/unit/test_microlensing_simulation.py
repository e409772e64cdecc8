"""Simulated shards: settings, noise model, the PSPL fitter (against scipy) and the shard files."""

import dataclasses
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.optimize import least_squares

from astrodag.errors import ConfigError
from astrodag.microlensing import simulation
from astrodag.microlensing.magnification import binary_magnification, pspl_magnification
from astrodag.microlensing.simulation import (
    EVENT_COLUMNS,
    NoiseModel,
    SimulationSettings,
    draw_events,
    fit_pspl,
    magnitudes_from_magnification,
    pspl_deviation,
    pspl_evidence_time,
    simulate_shard,
    time_grid,
)

# config/config.yaml's microlensing.simulation keys that simulate_shard gets (the defaults must equal them).
CONFIG = {
    key: value
    for key, value in yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text()
    )["microlensing"]["simulation"].items()
    if key in ("priors", "noise", "split_fractions", "pspl_like_max_deviation_sigma")
}
TIMES = time_grid(1500, 500.0)
SMALL_TIMES = time_grid(300, 500.0)


# --- grid and settings ------------------------------------------------------------------------


def test_time_grid_is_the_designs_grid():
    times = time_grid(1500, 500)
    assert times.shape == (1500,) and times.dtype == np.float64
    assert times[0] == 0.0 and times[-1] < 500.0
    np.testing.assert_allclose(np.diff(times), 500 / 1500)
    for epochs, duration in ((1, 500), (1500.0, 500), (1500, 0), (1500, float("nan"))):
        with pytest.raises(ConfigError):
            time_grid(epochs, duration)


def test_settings_defaults_are_the_config_values_and_round_trip():
    settings = SimulationSettings.from_config(CONFIG)
    assert settings == SimulationSettings.from_config({}) == SimulationSettings.from_config(None)
    assert SimulationSettings.from_config(settings.as_dict()) == settings
    assert settings.priors.tE_days == (10.0, 100.0)
    assert settings.split_fractions == {"train": 0.5, "validation": 0.1, "test": 0.4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pspl_like_max_deviation_sigma = 1.0  # frozen
    custom = SimulationSettings.from_config({"priors": {"u0": [0.1, 0.2]}, "pspl_like_max_deviation_sigma": 5})
    assert custom.priors.u0 == (0.1, 0.2) and custom.priors.q == (0.01, 1.0)
    assert custom.pspl_like_max_deviation_sigma == 5.0


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"prior": {}}, "microlensing.simulation.prior"),
        ({"priors": {"tE": [1, 2]}}, "microlensing.simulation.priors.tE"),
        ({"noise": {"sigma": 0.1}}, "microlensing.simulation.noise.sigma"),
        ({"split_fractions": {"train": 0.7, "validation": 0.15, "test": 0.15, "holdout": 0.0}},
         "microlensing.simulation.split_fractions.holdout"),
        ({"priors": {"q": [0.0, 1.0]}}, "microlensing.simulation.priors.q"),  # log-uniform needs > 0
        ({"priors": {"u0": [1.0, 0.5]}}, "microlensing.simulation.priors.u0"),
        ({"priors": {"u0": [0.5]}}, "microlensing.simulation.priors.u0"),
        ({"priors": {"t0_fraction": [0.2, 1.5]}}, "microlensing.simulation.priors.t0_fraction"),
        ({"priors": {"source_fraction": [0.5, "x"]}}, "microlensing.simulation.priors.source_fraction"),
        ({"noise": {"sigma_at_reference": 0}}, "microlensing.simulation.noise.sigma_at_reference"),
        ({"split_fractions": {"train": 0.8, "validation": 0.15, "test": 0.15}},
         "microlensing.simulation.split_fractions"),
        ({"split_fractions": {"train": 0.85, "test": 0.15}}, "microlensing.simulation.split_fractions"),
        ({"pspl_like_max_deviation_sigma": -1}, "microlensing.simulation.pspl_like_max_deviation_sigma"),
    ],
)
def test_bad_settings_name_the_key(mapping, key):
    with pytest.raises(ConfigError) as error:
        SimulationSettings.from_config(mapping)
    assert error.value.key == key
    assert key in str(error.value)


def test_noise_model_scales_with_flux_plus_floor():
    noise = NoiseModel(reference_mag=18.0, sigma_at_reference=0.01, systematic_floor=0.003)
    assert noise.sigma(np.array(18.0)) == pytest.approx(math.hypot(0.003, 0.01))
    # 5 mag fainter: 100x less flux, photon-noise error 10x larger; the floor dominates when bright
    assert noise.sigma(np.array(23.0)) == pytest.approx(math.hypot(0.003, 0.1))
    assert noise.sigma(np.array(8.0)) == pytest.approx(0.003, rel=1e-3)


def test_draw_events_follow_the_priors():
    settings = SimulationSettings.from_config(CONFIG)
    events = draw_events(4001, TIMES, settings, np.random.default_rng(0))
    assert (events["label"] == 1).sum() == 2001  # balanced; the odd one is a binary
    binary = events["label"] == 1
    assert events.loc[~binary, ["s", "q", "alpha", "rho"]].isna().all().all()
    assert events.loc[binary, ["s", "q", "alpha", "rho"]].notna().all().all()
    assert events["t0"].between(0.2 * TIMES[-1], 0.8 * TIMES[-1]).all()
    assert events["tE"].between(10, 100).all() and events["q"].dropna().between(1e-3, 1).all()
    # log-uniform: the median of tE is the geometric mean of the bounds
    assert np.median(events["tE"]) == pytest.approx(math.sqrt(10 * 100), rel=0.08)
    assert events["alpha"].dropna().between(0, 2 * np.pi).all()
    shares = events["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.5, abs=0.03) and shares["test"] == pytest.approx(0.4, abs=0.03)


# --- the PSPL fitter ----------------------------------------------------------------------------


def independent_pspl(times, t0, ln_u0, ln_te, ln_flux, g, reference):
    """The fitted PSPL model written out separately (Paczynski 1986 + blending) for scipy."""
    u2 = ((times - t0) / math.exp(ln_te)) ** 2 + math.exp(2 * ln_u0)
    amp = (u2 + 2) / np.sqrt(u2 * (u2 + 4))
    return reference - 2.5 * np.log10(math.exp(ln_flux) * (g * amp + 1 - g))


def scipy_best_chi2(times, data, sigma, reference, starts):
    lower = [-np.inf, math.log(1e-5), math.log(0.1), -50, 1e-4]
    upper = [np.inf, math.log(10.0), math.log(1e4), 50, 1.0]
    best = np.inf
    for x0 in starts:
        result = least_squares(lambda p: (data - independent_pspl(times, *p, reference)) / sigma, x0,
                               bounds=(lower, upper), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12,
                               gtol=1e-12, max_nfev=3000)
        best = min(best, 2 * result.cost)
    return best


@pytest.fixture(scope="module")
def binaries():
    """Noiseless binary-lens magnitude curves drawn from the default priors."""
    settings = SimulationSettings.from_config(CONFIG)
    events = draw_events(160, TIMES, settings, np.random.default_rng(7))
    events = events[events["label"] == 1].reset_index(drop=True)
    amp = binary_magnification(TIMES, *(events[k].to_numpy() for k in ("t0", "u0", "tE", "s", "q", "alpha", "rho")))
    mags = magnitudes_from_magnification(amp, events["baseline_mag"].to_numpy(), events["source_fraction"].to_numpy())
    return events, mags, settings.noise.sigma(mags)


def test_fit_pspl_recovers_a_blended_pspl_from_a_wrong_start():
    t0, u0, te, fs, base = np.array([210.0, 300.0]), np.array([0.05, 0.6]), np.array([25.0, 70.0]), \
        np.array([0.3, 0.9]), np.array([19.5, 17.0])
    mags = magnitudes_from_magnification(pspl_magnification(TIMES, t0, u0, te), base, fs)
    sigma = NoiseModel().sigma(mags)
    fit = fit_pspl(TIMES, mags, sigma, base + 0.2, t0 + 4.0, u0 * 1.5, te * 0.7, np.array([0.6, 0.5]))
    np.testing.assert_allclose(fit["t0"], t0, atol=1e-4)
    np.testing.assert_allclose(fit["u0"], u0, rtol=1e-4)
    np.testing.assert_allclose(fit["tE"], te, rtol=1e-4)
    np.testing.assert_allclose(fit["source_fraction"], fs, rtol=1e-4)
    np.testing.assert_allclose(fit["baseline_mag"], base, atol=1e-6)
    assert np.all(fit["chi2"] < 1e-6)
    assert np.max(np.abs(fit["model"] - mags) / sigma) < 1e-3


def test_fit_pspl_matches_scipy_least_squares(binaries):
    events, mags, sigma = binaries
    fit = fit_pspl(TIMES, mags, sigma, events["baseline_mag"], events["t0"], events["u0"], events["tE"],
                   events["source_fraction"])
    deviation = np.max(np.abs(mags - fit["model"]) / sigma, axis=1)
    # The model returned is the model of the parameters returned.
    for i in range(3):
        expected = independent_pspl(TIMES, fit["t0"][i], math.log(fit["u0"][i]), math.log(fit["tE"][i]),
                                    0.0, fit["source_fraction"][i], fit["baseline_mag"][i])
        np.testing.assert_allclose(fit["model"][i], expected, atol=1e-9)
    # Against scipy from the same two starts, on the events near the PSPL-like threshold (where
    # the flag is decided) and a few clearly non-PSPL ones.
    near = np.argsort(np.abs(np.log(deviation / 3.0)))[:5]
    far = np.flatnonzero(deviation >= 20)[:3]
    assert np.all((deviation[near] > 1) & (deviation[near] < 10)) and far.size >= 2
    for i in np.concatenate([near, far]):
        fs = events["source_fraction"][i]
        start = [events["t0"][i], math.log(max(events["u0"][i], 1e-4)), math.log(events["tE"][i]), 0.0, fs]
        at_peak = list(start)
        at_peak[0] = TIMES[np.argmin(mags[i])]
        reference = scipy_best_chi2(TIMES, mags[i], sigma[i], events["baseline_mag"][i], [start, at_peak])
        tolerance = 1e-5 if i in near else 1e-3  # far from PSPL the valleys are long and flat for both
        assert fit["chi2"][i] <= reference * (1 + tolerance) + 1e-6, (i, fit["chi2"][i], reference)


def test_pspl_deviation_separates_pspl_like_from_caustic_crossing_binaries():
    base, fs = np.array([18.0, 18.0, 18.0]), np.array([1.0, 1.0, 0.5])
    events = pd.DataFrame({"t0": [250.0, 250.0, 250.0], "u0": [0.3, 0.05, 0.4], "tE": [40.0, 40.0, 30.0],
                           "baseline_mag": base, "source_fraction": fs})
    # a distant low-mass companion (s = 5, q = 1e-4) barely perturbs the curve; an equal-mass binary
    # at s = 1 with a source crossing its central caustic does.
    amp = binary_magnification(TIMES, events["t0"][:2], events["u0"][:2], events["tE"][:2], [5.0, 1.0], [1e-4, 1.0],
                               [0.8, 0.3], [1e-3, 1e-3])
    amp = np.vstack([amp, pspl_magnification(TIMES, 250.0, 0.4, 30.0)])
    mags = magnitudes_from_magnification(amp, base, fs)
    sigma = NoiseModel().sigma(mags)
    deviation, evidence_time = pspl_deviation(TIMES, mags, sigma, events, threshold=3.0)
    assert deviation[0] < 3.0
    assert deviation[1] > 100.0
    assert deviation[2] < 1e-3  # a PSPL is its own best PSPL
    assert np.isnan(evidence_time[2])
    # The caustic crossing gives the binary away while it happens, not before the event has begun.
    assert 250.0 - 40.0 < evidence_time[1] < 250.0 + 40.0
    _, again = pspl_deviation(TIMES, mags[1:2], sigma[1:2], events.iloc[1:2], threshold=10.0)
    assert again[0] >= evidence_time[1]  # a higher threshold is crossed no earlier


def test_evidence_time_is_where_the_prefix_fit_crosses_the_threshold(binaries):
    """Against scipy: just before the evidence epoch some PSPL fits the curve seen so far, at it none does."""
    events, mags, sigma = binaries
    evidence = pspl_evidence_time(TIMES, mags, sigma, events, 9.0)
    full = fit_pspl(TIMES, mags, sigma, events["baseline_mag"], events["t0"], events["u0"], events["tE"],
                    events["source_fraction"])
    np.testing.assert_array_equal(np.isnan(evidence), full["chi2"] <= 9.0)
    assert np.isfinite(evidence).sum() >= 40 and np.isnan(evidence).sum() >= 1
    # A few events with their evidence well before the end of the grid (bisection at work).
    checked = np.flatnonzero(evidence < TIMES[-1] - 100.0)[:4]
    assert checked.size == 4
    for i in checked:
        epoch = int(np.searchsorted(TIMES, evidence[i]))
        fs = events["source_fraction"][i]
        start = [events["t0"][i], math.log(max(events["u0"][i], 1e-4)), math.log(events["tE"][i]), 0.0, fs]
        chi2 = {}
        for last in (epoch - 1, epoch):
            seen = slice(0, last + 1)
            at_peak = list(start)
            at_peak[0] = TIMES[seen][np.argmin(mags[i, seen])]
            chi2[last] = scipy_best_chi2(TIMES[seen], mags[i, seen], sigma[i, seen], events["baseline_mag"][i],
                                         [start, at_peak])
        assert chi2[epoch - 1] <= 9.0 * (1 + 1e-3) and chi2[epoch] > 9.0 * (1 - 1e-3), (i, chi2)
    # The same times whatever rows share the batch.
    np.testing.assert_array_equal(pspl_evidence_time(TIMES, mags[checked], sigma[checked], events.iloc[checked], 9.0),
                                  evidence[checked])


# --- shards ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard") / "shard002"
    summary = simulate_shard(out, 2, 64, SimulationSettings.from_config(CONFIG), SMALL_TIMES, seed=5, progress=False)
    return out, summary


def test_shard_files_and_table(shard):
    out, summary = shard
    assert sorted(p.name for p in out.iterdir()) == ["errors.npy", "events.parquet", "magnitudes.npy"]
    mags = np.load(out / "magnitudes.npy", mmap_mode="r")
    errors = np.load(out / "errors.npy", mmap_mode="r")
    assert mags.dtype == errors.dtype == np.float32 and mags.shape == errors.shape == (64, 300)
    events = pd.read_parquet(out / "events.parquet")
    assert tuple(events.columns) == EVENT_COLUMNS
    assert events["event_id"].dtype == np.int64 and events["label"].dtype == np.int8
    assert events["pspl_like"].dtype == bool
    np.testing.assert_array_equal(events["event_id"], 2 * 64 + np.arange(64))
    assert (events["label"] == 1).sum() == 32 and not np.all(np.diff(events["label"]) >= 0)  # shuffled
    assert set(events["split"]) <= {"train", "validation", "test"}
    pspl = events["label"] == 0
    assert events.loc[pspl, ["s", "q", "alpha", "rho", "max_deviation_sigma"]].isna().all().all()
    assert not events.loc[pspl, "pspl_like"].any()
    binary = events[~pspl]
    assert binary["max_deviation_sigma"].notna().all()
    np.testing.assert_array_equal(binary["pspl_like"], binary["max_deviation_sigma"] < 3.0)
    # Evidence times for the test split's binaries only (what the analysis reads); a 3-sigma epoch is evidence too.
    told_apart = binary["evidence_time"].notna()
    assert binary.loc[told_apart, "evidence_time"].between(SMALL_TIMES[0], SMALL_TIMES[-1]).all()
    assert (binary.loc[told_apart, "split"] == "test").all()
    assert told_apart.sum() >= (~binary["pspl_like"] & (binary["split"] == "test")).sum() > 0
    assert events.loc[pspl, "evidence_time"].isna().all()
    assert summary["events"] == 64 and summary["pspl"] == summary["binary"] == 32
    assert summary["pspl_like"] == binary["pspl_like"].sum()
    assert summary["pspl_like_fraction"] == pytest.approx(binary["pspl_like"].mean())
    assert sum(summary["splits"].values()) == 64
    assert summary["binary_curves_per_second"] > 0 and summary["seconds"] > 0


def _shard_and_truth(out):
    """A shard's events, magnitudes and errors, and the noiseless magnitudes of its events."""
    events = pd.read_parquet(out / "events.parquet")
    mags = np.load(out / "magnitudes.npy").astype(np.float64)
    errors = np.load(out / "errors.npy").astype(np.float64)
    amp = np.empty(mags.shape)
    pspl = (events["label"] == 0).to_numpy()
    e = events[pspl]
    amp[pspl] = pspl_magnification(SMALL_TIMES, e["t0"], e["u0"], e["tE"])
    e = events[~pspl]
    amp[~pspl] = binary_magnification(SMALL_TIMES, *(e[k] for k in ("t0", "u0", "tE", "s", "q", "alpha", "rho")))
    truth = magnitudes_from_magnification(amp, events["baseline_mag"], events["source_fraction"])
    return events, mags, errors, truth


def test_shard_magnitudes_follow_the_observation_model(shard):
    out, _ = shard
    events, mags, errors, truth = _shard_and_truth(out)
    pspl = (events["label"] == 0).to_numpy()
    np.testing.assert_allclose(errors, NoiseModel().sigma(mags), rtol=1e-6)  # the pipeline's error at m_obs
    pulls = (mags - truth) / errors
    assert abs(pulls.mean()) < 0.02 and pulls.std() == pytest.approx(1.0, abs=0.02)
    # the event is in the curve: brightest epoch near t0 for bright, strongly magnified PSPL
    strong = pspl & (events["u0"] < 0.3).to_numpy() & (events["baseline_mag"] < 19).to_numpy()
    for i in np.flatnonzero(strong):
        assert abs(SMALL_TIMES[np.argmin(mags[i])] - events["t0"][i]) < events["tE"][i]


def test_errors_do_not_reveal_the_noiseless_curve(shard):
    """Inverting the error model on errors.npy gives the observed magnitudes, not the noiseless ones."""
    out, _ = shard
    events, mags, errors, truth = _shard_and_truth(out)
    noise = NoiseModel()
    # sigma(m) is invertible where the photon term stands clear of the floor (m >~ 17 here).
    photon_sq = errors**2 - noise.systematic_floor**2
    invertible = photon_sq > (2 * noise.systematic_floor) ** 2
    assert invertible.mean() > 0.5
    recovered = noise.reference_mag + 5.0 * np.log10(np.sqrt(photon_sq[invertible]) / noise.sigma_at_reference)
    # With errors from the noiseless curve the recovered magnitudes matched it to ~1e-6 mag.
    difference = np.abs(recovered - truth[invertible])
    assert np.median(difference) > 0.3 * np.median(errors[invertible])
    # The errors are a function of the observed magnitudes: they add nothing the model does not already see.
    np.testing.assert_allclose(recovered, mags[invertible], atol=1e-4)
    # ... and still describe the scatter about the truth.
    pulls = (mags - truth) / errors
    assert np.mean(pulls**2) == pytest.approx(1.0, abs=0.05)


def test_shard_is_reproducible_bit_for_bit_whatever_the_chunks(shard, tmp_path):
    out, _ = shard
    settings = SimulationSettings.from_config(CONFIG)
    again = tmp_path / "again"
    simulate_shard(again, 2, 64, settings, SMALL_TIMES, seed=5, progress=False, chunk_events=7)
    for name in ("magnitudes.npy", "errors.npy", "events.parquet"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    other_shard = tmp_path / "other"
    simulate_shard(other_shard, 3, 64, settings, SMALL_TIMES, seed=5, progress=False)
    other_seed = tmp_path / "seed"
    simulate_shard(other_seed, 2, 64, settings, SMALL_TIMES, seed=6, progress=False)
    base = np.load(out / "magnitudes.npy")
    for directory in (other_shard, other_seed):
        assert not np.array_equal(np.load(directory / "magnitudes.npy"), base)
    assert pd.read_parquet(other_shard / "events.parquet")["event_id"].iloc[0] == 3 * 64


def test_small_chunks_bound_the_memory(tmp_path, monkeypatch):
    """The memory-bounded path: with small chunks the peak stays far below one (N, T) array.

    The physics is stubbed out (fast stand-ins for the binary curves and the PSPL fits, whose
    memory is bounded by their own batch size) so that only the chunked writing is measured.
    """
    def fake_binary(times, t0, u0, tE, s, q, alpha, rho):
        return pspl_magnification(times, t0, u0, tE) * (1.0 + 0.01 * np.asarray(q)[:, None])

    monkeypatch.setattr(simulation, "binary_magnification", fake_binary)
    monkeypatch.setattr(simulation, "pspl_deviation",
                        lambda times, mags, sigma, events, threshold, evidence_rows: (np.zeros(len(mags)),
                                                                                      np.full(len(mags), np.nan)))
    settings = SimulationSettings.from_config(CONFIG)
    n, times = 2000, time_grid(300, 500.0)
    simulate_shard(tmp_path / "warm-up", 0, 20, settings, times, seed=1, progress=False)  # first-use caches
    peaks = {}
    for chunk in (20, n):
        tracemalloc.start()
        simulate_shard(tmp_path / str(chunk), 0, n, settings, times, seed=1, progress=False, chunk_events=chunk)
        peaks[chunk] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    one_array = n * times.size * 8
    assert peaks[20] < one_array / 4, peaks
    assert peaks[n] > 3 * one_array, peaks  # in one chunk it really holds several (N, T) arrays
    for name in ("magnitudes.npy", "errors.npy", "events.parquet"):
        assert (tmp_path / "20" / name).read_bytes() == (tmp_path / str(n) / name).read_bytes()


def test_a_failed_shard_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return binary_magnification(*args, **kwargs)

    monkeypatch.setattr(simulation, "binary_magnification", failing)
    with pytest.raises(RuntimeError, match="killed"):
        simulate_shard(tmp_path / "shard", 0, 40, SimulationSettings(), SMALL_TIMES, seed=0, progress=False,
                       chunk_events=10)
    assert list((tmp_path / "shard").iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"shard_index": -1}, {"events_per_shard": 0}, {"seed": -2}, {"chunk_events": 0}])
def test_bad_shard_arguments(tmp_path, kwargs):
    arguments = {"shard_index": 0, "events_per_shard": 4, "seed": 0} | kwargs
    chunk = arguments.pop("chunk_events", 1000)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        simulate_shard(tmp_path, arguments["shard_index"], arguments["events_per_shard"], SimulationSettings(),
                       SMALL_TIMES, arguments["seed"], progress=False, chunk_events=chunk)
