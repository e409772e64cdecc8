"""The observation stage: survey photometry at its own times, the Delta chi2 criterion, brightening, the files.

The cadence schedules are a stand-in here (``FakeSpec``, regular visits with a random phase per
event, patched in as ``cadence.observation_times``), so that these tests depend only on the
interface of ``astrodag.microlensing.cadence``.
"""

import json
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

from astrodag.errors import ConfigError
from astrodag.microlensing import cadence, observe
from astrodag.microlensing.magnification import pspl_magnification
from astrodag.microlensing.observe import (
    ARRAYS,
    OBSERVED_COLUMNS,
    ObservationSettings,
    brightening_steps,
    event_magnification,
    evidence_steps,
    fit_pspl,
    magnitudes_from_magnification,
    observe_shard,
    pspl_delta_chi2,
)
from astrodag.microlensing.simulation import EVENT_COLUMNS, SimulationSettings, draw_events, simulate_shard, time_grid

TIMES = time_grid(1500, 500.0)
STEP = TIMES[1] - TIMES[0]


@dataclass(frozen=True)
class FakeNoise:
    """The survey error model of the design, sqrt(floor^2 + (0.04 - gamma) x + gamma x^2), x = 10^(0.4 (m - depth))."""

    depth_mag: float = 21.0
    floor_mag: float = 0.005
    gamma: float = 0.039

    def sigma(self, mag):
        x = 10.0 ** (0.4 * (np.asarray(mag, dtype=np.float64) - self.depth_mag))
        return np.sqrt(self.floor_mag**2 + (0.04 - self.gamma) * x + self.gamma * x * x)


@dataclass(frozen=True)
class FakeSpec:
    """A cadence: a visit every ``interval_days`` between ``first`` and ``last`` day, random phase per event."""

    name: str
    interval_days: float
    first: float = 0.0
    last: float = 500.0
    noise: FakeNoise = FakeNoise()


def fake_observation_times(spec, event_id, seed, duration_days):
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode()), event_id])
    times = np.arange(spec.first + rng.uniform(0, spec.interval_days), min(spec.last, duration_days),
                      spec.interval_days)
    return times[(times >= 0) & (times < duration_days)]


NIGHTLY = FakeSpec("nightly", 1.0)
DENSE = FakeSpec("dense", 1.0 / 96.0, first=150.0, last=350.0)  # every 15 min for 200 days


@pytest.fixture(autouse=True)
def schedules(monkeypatch):
    monkeypatch.setattr(cadence, "observation_times", fake_observation_times, raising=False)


# --- settings ----------------------------------------------------------------------------------


def test_observation_settings_defaults_and_bad_values():
    settings = ObservationSettings.from_config({})
    assert settings.as_dict() == {"delta_chi2_threshold": 160.0, "reference_images": 20, "brightening_sigma": 3.0,
                                  "brightening_points": 3}
    for key, value in (("delta_chi2_threshold", 0), ("reference_images", 2.5), ("brightening_points", 0),
                       ("brightening_sigma", -1), ("threshold", 1)):
        with pytest.raises(ConfigError, match=f"microlensing.observation.{key}"):
            ObservationSettings.from_config({key: value})


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


def _curves(events, times):
    amp = np.vstack([event_magnification(event, times) for event in events.itertuples(index=False)])
    return magnitudes_from_magnification(amp, events["baseline_mag"].to_numpy()[:, None],
                                         events["source_fraction"].to_numpy()[:, None])


@pytest.fixture(scope="module")
def binaries():
    """Noiseless binary-lens curves on the grid from the default priors, their errors, and a sparse mask."""
    events = draw_events(120, TIMES, SimulationSettings(), np.random.default_rng(7))
    events = events[events["label"] == 1].reset_index(drop=True)
    mags = _curves(events, TIMES)
    sigma = FakeNoise().sigma(mags)
    observed = np.random.default_rng(1).uniform(size=mags.shape) < 0.5
    return events, mags, np.where(observed, sigma, np.inf)


def test_fit_pspl_recovers_a_blended_pspl_from_a_wrong_start():
    t0, u0, te, fs, base = np.array([210.0, 300.0]), np.array([0.05, 0.6]), np.array([25.0, 70.0]), \
        np.array([0.3, 0.9]), np.array([19.5, 17.0])
    mags = magnitudes_from_magnification(pspl_magnification(TIMES, t0, u0, te), base[:, None], fs[:, None])
    sigma = FakeNoise().sigma(mags)
    fit = fit_pspl(TIMES, mags, sigma, base + 0.2, t0 + 4.0, u0 * 1.5, te * 0.7, np.array([0.6, 0.5]))
    np.testing.assert_allclose(fit["t0"], t0, atol=1e-4)
    np.testing.assert_allclose(fit["u0"], u0, rtol=1e-4)
    np.testing.assert_allclose(fit["tE"], te, rtol=1e-4)
    np.testing.assert_allclose(fit["source_fraction"], fs, rtol=1e-4)
    np.testing.assert_allclose(fit["baseline_mag"], base, atol=1e-6)
    assert np.all(fit["chi2"] < 1e-6)
    # Times per row (each curve at its own times) give the same fit as shared times.
    rows = fit_pspl(np.vstack([TIMES, TIMES]), mags, sigma, base + 0.2, t0 + 4.0, u0 * 1.5, te * 0.7,
                    np.array([0.6, 0.5]))
    np.testing.assert_allclose(rows["chi2"], fit["chi2"], atol=1e-12)
    np.testing.assert_allclose(rows["t0"], fit["t0"], atol=1e-9)


def test_fit_pspl_matches_scipy_least_squares(binaries):
    events, mags, sigma = binaries
    fit = fit_pspl(TIMES, mags, sigma, events["baseline_mag"], events["t0"], events["u0"], events["tE"],
                   events["source_fraction"])
    seen = np.isfinite(sigma)
    # Against scipy from the same two starts, near the threshold (where pspl_like is decided) and far from it.
    near = np.argsort(np.abs(np.log(fit["chi2"] / 160.0)))[:4]
    far = np.flatnonzero(fit["chi2"] > 1e4)[:2]
    assert np.all((fit["chi2"][near] > 20) & (fit["chi2"][near] < 1000)) and far.size == 2
    for i in np.concatenate([near, far]):
        t, data, err = TIMES[seen[i]], mags[i, seen[i]], sigma[i, seen[i]]
        start = [events["t0"][i], math.log(max(events["u0"][i], 1e-4)), math.log(events["tE"][i]), 0.0,
                 events["source_fraction"][i]]
        at_peak = list(start)
        at_peak[0] = t[np.argmin(data)]
        reference = scipy_best_chi2(t, data, err, events["baseline_mag"][i], [start, at_peak])
        tolerance = 1e-5 if i in near else 1e-3  # far from PSPL the valleys are long and flat for both
        assert fit["chi2"][i] <= reference * (1 + tolerance) + 1e-6, (i, fit["chi2"][i], reference)


# --- one Delta chi2 criterion ---------------------------------------------------------------------


def test_many_epochs_at_2_9_sigma_are_not_pspl_like():
    """The issue's example: 100 epochs 2.9 sigma off (Delta chi2 ~ 840) is a detection, not 'indistinguishable'."""
    base, fs = np.array([18.0, 18.0]), np.array([1.0, 1.0])
    events = pd.DataFrame({"t0": [250.0, 250.0], "u0": [0.3, 0.3], "tE": [20.0, 20.0], "baseline_mag": base,
                           "source_fraction": fs})
    mags = magnitudes_from_magnification(pspl_magnification(TIMES, events["t0"], events["u0"], events["tE"]),
                                         base[:, None], fs[:, None])
    sigma = np.full(mags.shape, 0.01)
    bump = (TIMES > 350.0) & (TIMES <= 350.0 + 100 * STEP)  # a companion's bump long after the peak
    assert bump.sum() == 100
    mags[0, bump] -= 2.9 * 0.01
    chi2, _ = pspl_delta_chi2(TIMES, mags, sigma, events, 160.0)
    largest = np.max(np.abs(mags[0] - mags[1]) / sigma[0])
    assert largest < 3.0  # the old single-epoch rule called it PSPL-like
    assert chi2[0] > 700.0  # ~840 minus what a PSPL absorbs
    assert chi2[1] < 1e-6  # a true PSPL is its own best fit: PSPL-like


def test_delta_chi2_depends_on_the_cadence(tmp_path):
    """One binary, two schedules: 15-minute visits give a far larger Delta chi2 than nightly ones."""
    events = pd.DataFrame({"event_id": np.array([0, 1], dtype=np.int64), "label": np.array([1, 1], dtype=np.int8),
                           "split": ["test", "test"], "t0": [250.0, 250.0], "u0": [0.2, 0.1], "tE": [20.0, 15.0],
                           "baseline_mag": [18.0, 19.0], "source_fraction": [0.8, 0.5], "s": [1.6, 0.7],
                           "q": [3e-3, 1e-3], "alpha": [0.5, 2.0], "rho": [1e-3, 2e-3]})
    events_path = tmp_path / "events.parquet"
    events.to_parquet(events_path)
    tables = {}
    for spec in (NIGHTLY, DENSE):
        observe_shard(events_path, tmp_path / spec.name, spec, TIMES, ObservationSettings(), seed=3, progress=False)
        tables[spec.name] = pd.read_parquet(tmp_path / spec.name / "events.parquet")
    nightly, dense = tables["nightly"]["delta_chi2"].to_numpy(), tables["dense"]["delta_chi2"].to_numpy()
    assert np.all(np.isfinite(nightly)) and np.all(dense > 3 * nightly)
    for table in tables.values():
        np.testing.assert_array_equal(table["pspl_like"], table["delta_chi2"] < 160.0)


def test_evidence_step_is_where_the_prefix_fit_crosses_the_threshold(binaries):
    """Against scipy: before the evidence step some PSPL fits the observed steps so far within 160, at it none does."""
    events, mags, sigma = binaries
    delta_chi2, steps = pspl_delta_chi2(TIMES, mags, sigma, events, 160.0)
    np.testing.assert_array_equal(steps < 0, delta_chi2 <= 160.0)  # consistent with Delta chi2
    assert (steps >= 0).sum() >= 8 and (steps < 0).sum() >= 8
    checked = np.flatnonzero((steps >= 0) & (steps < TIMES.size - 300))[:3]
    assert checked.size == 3
    for i in checked:
        start = [events["t0"][i], math.log(max(events["u0"][i], 1e-4)), math.log(events["tE"][i]), 0.0,
                 events["source_fraction"][i]]
        chi2 = {}
        # The last observed step before the evidence step, and the evidence step itself (observed).
        before = np.flatnonzero(np.isfinite(sigma[i, :steps[i]]))[-1]
        assert np.isfinite(sigma[i, steps[i]])
        for last in (before, steps[i]):
            seen = np.isfinite(sigma[i]) & (np.arange(TIMES.size) <= last)
            at_peak = list(start)
            at_peak[0] = TIMES[seen][np.argmin(mags[i, seen])]
            chi2[last] = scipy_best_chi2(TIMES[seen], mags[i, seen], sigma[i, seen], events["baseline_mag"][i],
                                         [start, at_peak])
        # Never late; early only where the best PSPL sits within 3 % below the threshold (a flat valley the
        # LM leaves before its floor, see _EVIDENCE_ITERATIONS).
        assert chi2[before] <= 160.0 * (1 + 1e-3) and chi2[steps[i]] > 160.0 * (1 - 0.03), (i, chi2)
    # The same steps whatever rows share the batch.
    np.testing.assert_array_equal(pspl_delta_chi2(TIMES, mags[checked], sigma[checked], events.iloc[checked],
                                                  160.0)[1], steps[checked])
    # On all steps (without moving the observed ones to the front) the same steps.
    np.testing.assert_array_equal(evidence_steps(TIMES, mags[checked], sigma[checked], events.iloc[checked], 160.0),
                                  steps[checked])


# --- real-time brightening ------------------------------------------------------------------------


def test_brightening_is_causal_and_needs_consecutive_observed_steps():
    rng = np.random.default_rng(0)
    n, steps = 200, 300
    errors = np.full((n, steps), 0.01)
    counts = (rng.uniform(size=(n, steps)) < 0.4).astype(np.int32)  # gaps do not break a run
    mags = 18.0 + 0.01 * rng.standard_normal((n, steps))
    rise = rng.integers(50, 250, n)
    mags -= np.where(np.arange(steps) >= rise[:, None], 0.2, 0.0)
    reference, reference_error = np.full(n, 18.0), np.full(n, 0.002)
    found = brightening_steps(mags, errors, counts, reference, reference_error, 3.0, 3)
    # Found at the third observed step of the rise, or earlier only on a chance run of noise (none here).
    for i in range(n):
        observed_after = np.flatnonzero(counts[i, rise[i]:])
        assert found[i] == rise[i] + observed_after[2]
    # Whatever happens after it does not change it.
    changed = mags.copy()
    for i in range(n):
        changed[i, found[i] + 1:] = rng.uniform(10.0, 25.0, steps - found[i] - 1)
    np.testing.assert_array_equal(brightening_steps(changed, errors, counts, reference, reference_error, 3.0, 3),
                                  found)
    # An unobserved bright step and a faint observed one: no run of three.
    row = np.full((1, 6), 18.0)
    row[0, [0, 1, 3]] = 17.0
    assert brightening_steps(row, np.full((1, 6), 0.01), np.array([[1, 1, 1, 0, 1, 1]]), [18.0], [0.0], 3.0, 3)[0] == -1
    assert brightening_steps(row, np.full((1, 6), 0.01), np.array([[1, 1, 0, 1, 1, 1]]), [18.0], [0.0], 3.0, 3)[0] == 3


# --- one shard ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("observe")
    simulate_shard(root / "shard001", 1, 48, SimulationSettings(), TIMES, seed=5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cadence, "observation_times", fake_observation_times, raising=False)
        summary = observe_shard(root / "shard001" / "events.parquet", root / "nightly" / "shard001", NIGHTLY, TIMES,
                                ObservationSettings(), seed=11, progress=False)
    return root, root / "nightly" / "shard001", summary


def _noiseless_at_observation_times(events, spec, seed):
    """Per event: the observation times and the noiseless magnitudes there."""
    curves = []
    for event in events.itertuples(index=False):
        times = fake_observation_times(spec, int(event.event_id), seed, 500.0)
        mags = magnitudes_from_magnification(event_magnification(event, times), event.baseline_mag,
                                             event.source_fraction)
        curves.append((times, mags))
    return curves


def test_observation_files_and_table(shard):
    root, out, summary = shard
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{name}.npy" for name in ARRAYS]
                                                           + ["events.parquet", "summary.json"])
    assert [p.name for p in out.parent.iterdir()] == ["shard001"]  # no temporary directory left
    for name, dtype in ARRAYS.items():
        array = np.load(out / f"{name}.npy")
        assert array.dtype == dtype and array.shape == (48, 1500), name
    table = pd.read_parquet(out / "events.parquet")
    assert tuple(table.columns) == EVENT_COLUMNS + OBSERVED_COLUMNS
    pd.testing.assert_frame_equal(table[list(EVENT_COLUMNS)], pd.read_parquet(root / "shard001" / "events.parquet"))
    assert table["observations"].dtype == np.int64 and table["pspl_like"].dtype == bool
    counts = np.load(out / "counts.npy")
    np.testing.assert_array_equal(counts.sum(axis=1), table["observations"])  # nightly: all inside the grid
    assert set(np.unique(counts)) <= {0, 1, 2}
    binary = (table["label"] == 1).to_numpy()
    assert table.loc[~binary, "delta_chi2"].isna().all() and table.loc[binary, "delta_chi2"].notna().all()
    assert not table.loc[~binary, "pspl_like"].any()
    np.testing.assert_array_equal(table.loc[binary, "pspl_like"], table.loc[binary, "delta_chi2"] < 160.0)
    # evidence_time: test-split binaries that are not PSPL-like, within the grid; NaN for every other event.
    evidence = table["evidence_time"]
    expected = binary & (table["split"] == "test").to_numpy() & ~table["pspl_like"].to_numpy()
    np.testing.assert_array_equal(evidence.notna(), expected)
    assert expected.sum() >= 2
    assert evidence.dropna().between(0.0, TIMES[-1]).all() and np.isin(evidence.dropna(), TIMES).all()
    # brightening_time for every class; a detected brightening lies on the grid and on an observed step.
    brightening = table["brightening_time"]
    assert brightening.notna().mean() > 0.5
    for i in np.flatnonzero(brightening.notna()):
        assert counts[i, int(np.searchsorted(TIMES, brightening[i]))] > 0
    # reference_mag: the baseline seen through a stack of 20 images.
    pulls = (table["reference_mag"] - table["baseline_mag"]) / (NIGHTLY.noise.sigma(table["baseline_mag"]) / 20**0.5)
    assert 0.0 < pulls.abs().max() < 5.0
    assert summary["events"] == 48 and summary["cadence"] == "nightly"
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["observations_median"] == pytest.approx(np.median(table["observations"]))
    assert summary["steps_observed_fraction"] == pytest.approx(np.mean(counts > 0))
    assert summary["pspl_like_fraction"] == pytest.approx(table.loc[binary, "pspl_like"].mean())


def test_photometry_follows_the_survey_noise_and_errors_hide_the_truth(shard):
    """Errors come from the observed magnitudes: inverting them gives the noisy curve, not the noiseless one."""
    _, out, _ = shard
    table = pd.read_parquet(out / "events.parquet")
    mags, errors, counts = (np.load(out / f"{name}.npy").astype(np.float64) for name in ("magnitudes", "errors",
                                                                                          "counts"))
    truth = np.zeros_like(mags)
    for i, (times, true_mag) in enumerate(_noiseless_at_observation_times(table, NIGHTLY, 11)):
        step = np.floor(times / STEP).astype(int)
        single = np.bincount(step, minlength=1500) == 1
        truth[i, step[single[step]]] = true_mag[single[step]]
        counts[i, ~single] = 0  # compare steps with one observation only
    one = counts == 1
    noise = NIGHTLY.noise
    # Invert sigma(m) (monotonic) on a fine grid of magnitudes.
    grid = np.linspace(10.0, 26.0, 200001)
    recovered = np.interp(errors[one], noise.sigma(grid), grid)
    invertible = errors[one] > 2 * noise.floor_mag
    assert invertible.mean() > 0.5
    # With errors from the noiseless curve the recovered magnitudes matched it to ~1e-6 mag.
    difference = np.abs(recovered - truth[one])[invertible]
    assert np.median(difference) > 0.3 * np.median(errors[one][invertible])
    np.testing.assert_allclose(recovered[invertible], mags[one][invertible], atol=1e-3)
    # The noise is set by the true flux: standard normal about the truth in units of sigma(m_true) ...
    pulls = (mags[one] - truth[one]) / noise.sigma(truth[one])
    assert abs(pulls.mean()) < 0.03 and pulls.std() == pytest.approx(1.0, abs=0.03)
    # ... and the reported errors still describe the scatter (not exactly: sigma(m_obs) grows with the noise).
    assert np.sqrt(np.mean(((mags[one] - truth[one]) / errors[one]) ** 2)) == pytest.approx(1.0, abs=0.05)


def test_observation_is_deterministic_rerun_safe_and_per_event(shard, tmp_path):
    root, out, summary = shard
    events_path = root / "shard001" / "events.parquet"
    # Again, in chunks of 5 events, over an existing (stale) directory.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "stale.npy").write_bytes(b"old")
    observe_shard(events_path, tmp_path / "again", NIGHTLY, TIMES, ObservationSettings(), seed=11, progress=False,
                  chunk_events=5)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(p.name for p in out.iterdir())
    for name in list(ARRAYS) + ["events"]:
        suffix = ".parquet" if name == "events" else ".npy"
        assert (tmp_path / "again" / f"{name}{suffix}").read_bytes() == (out / f"{name}{suffix}").read_bytes(), name
    # An event's photometry depends on (seed, cadence, event_id) only, not on the other events of the shard.
    events = pd.read_parquet(events_path)
    subset = events.iloc[[7, 3, 30]].reset_index(drop=True)
    subset.to_parquet(tmp_path / "subset.parquet")
    observe_shard(tmp_path / "subset.parquet", tmp_path / "subset", NIGHTLY, TIMES, ObservationSettings(), seed=11,
                  progress=False)
    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(tmp_path / "subset" / f"{name}.npy"),
                                      np.load(out / f"{name}.npy")[[7, 3, 30]])
    # Another seed or cadence name: other noise.
    observe_shard(events_path, tmp_path / "seed", NIGHTLY, TIMES, ObservationSettings(), seed=12, progress=False)
    assert not np.array_equal(np.load(tmp_path / "seed" / "magnitudes.npy"), np.load(out / "magnitudes.npy"))


def test_a_failed_observation_leaves_the_old_directory(shard, tmp_path, monkeypatch):
    root, out, _ = shard
    target = tmp_path / "obs"
    observe_shard(root / "shard001" / "events.parquet", target, NIGHTLY, TIMES, ObservationSettings(), seed=11,
                  progress=False)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def failing(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(observe, "binary_magnification", failing)
    with pytest.raises(RuntimeError, match="killed"):
        observe_shard(root / "shard001" / "events.parquet", target, NIGHTLY, TIMES, ObservationSettings(), seed=11,
                      progress=False)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["obs"]


def test_observe_checks_its_arguments(shard, tmp_path):
    root, _, _ = shard
    events_path = root / "shard001" / "events.parquet"
    for kwargs, match in (({"seed": -1}, "seed"), ({"chunk_events": 0}, "chunk_events"),
                          ({"times": np.array([0.0, 1.0, 3.0])}, "regular")):
        arguments = {"seed": 1, "times": TIMES} | kwargs
        with pytest.raises(ValueError, match=match):
            observe_shard(events_path, tmp_path / "x", NIGHTLY, arguments.pop("times"), ObservationSettings(),
                          progress=False, **arguments)
    assert not (tmp_path / "x").exists()


def test_far_field_binaries_match_the_exact_light_curve():
    """Beyond FAR_FIELD Einstein radii a binary is computed as a point lens: < 1e-4 mag from the exact curve."""
    from types import SimpleNamespace

    from astrodag.microlensing.magnification import binary_magnification
    from astrodag.microlensing.observe import FAR_FIELD, event_magnification

    rng = np.random.default_rng(4)
    times = np.linspace(0.0, 500.0, 3000)
    far_points = 0
    for _ in range(12):
        event = SimpleNamespace(label=1, t0=rng.uniform(100, 400), u0=rng.uniform(0, 1), tE=rng.uniform(3, 30),
                                s=float(np.exp(rng.uniform(np.log(0.3), np.log(3.0)))),
                                q=float(np.exp(rng.uniform(np.log(1e-4), 0.0))), alpha=rng.uniform(0, 2 * np.pi),
                                rho=1e-3)
        exact = binary_magnification(times, event.t0, event.u0, event.tE, event.s, event.q, event.alpha, event.rho)[0]
        fast = event_magnification(event, times)
        far = np.hypot((times - event.t0) / event.tE, event.u0) >= max(FAR_FIELD, 3 * event.s)
        far_points += far.sum()
        assert np.max(np.abs(2.5 * np.log10(fast / exact))) < 1e-4  # Roman's floor is 1e-3
    assert far_points > 5000
