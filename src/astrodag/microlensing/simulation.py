"""Simulated microlensing light curves: shards of PSPL and binary-lens events with noise.

One shard is one directory (see ``simulate_shard``) holding the observed magnitudes and their
errors at every epoch of a fixed time grid, and one table row per event. Cadence masks are a
separate stage (``astrodag.microlensing.cadence``).

The observation model, per event:

* magnification ``A(t)`` from ``astrodag.microlensing.magnification`` (PSPL, or binary lens with
  a finite source);
* blending: only the fraction ``fs = F_source / (F_source + F_blend)`` of the baseline flux is
  magnified, so the noiseless magnitude is ``m = baseline_mag - 2.5 log10(fs A + 1 - fs)``;
* noise: ``sigma(m) = hypot(systematic_floor, sigma_at_reference * 10**(0.2 (m - reference_mag)))``
  (photon noise of the total flux plus a floor). The noise itself is physical, set by the true
  flux: the observed magnitude is ``m_obs = m + sigma(m) z`` with ``z`` standard normal. The
  reported error is what a photometry pipeline would report, ``sigma(m_obs)`` at the observed
  magnitude: at the noiseless one, inverting ``sigma`` would recover the noiseless curve (to
  1e-6 mag) from the error channel the model sees.

A binary event is flagged ``pspl_like`` when the best-fitting PSPL light curve (``fit_pspl``:
t0, u0, tE, source flux and blend flux all free, fitted to the noiseless binary curve with the
errors ``sigma(m)`` of the noiseless curve) stays within ``pspl_like_max_deviation_sigma`` sigma
of it at every epoch: such an event cannot be told apart from a single lens by any classifier,
which the analysis reports.
For the test split's binaries (the events the analysis reports on), ``evidence_time`` (days) is
the first epoch at which the light curve seen so far (every epoch up to then, noiseless) is
fitted by no PSPL to within chi2 = threshold**2 (9 for 3 sigma: one epoch 3 sigma off, or many
epochs less). Before it some single lens matches everything observed within the noise, and only
the populations' statistics (how typical the curve is of single and binary lenses) can tell them
apart; gaps in a cadence only remove evidence, so it is the earliest such time for any cadence.
NaN for the other events and for binaries that never get there.

Reproducibility: the event parameters, labels and splits of a shard come from one generator
seeded by ``(seed, shard_index)``; the noise of each light curve from its own generator seeded by
``(seed, shard_index, row)``. The files are therefore the same bit for bit for the same seed and
shard, whatever the other shards and whatever ``chunk_events`` (the processing chunk size).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrodag.errors import ConfigError
from astrodag.io import atomic_path, write_table
from astrodag.logs import progress_enabled
from astrodag.microlensing.magnification import binary_magnification, pspl_magnification
from astrodag.settings import Settings, fractions, interval, number, section, setting

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
EVENT_COLUMNS = ("event_id", "label", "split", "t0", "u0", "tE", "baseline_mag", "source_fraction",
                 "s", "q", "alpha", "rho", "max_deviation_sigma", "evidence_time", "pspl_like")

_MAG = 2.5 / math.log(10.0)  # dm = -_MAG df / f
_FIT_BATCH = 128  # curves per PSPL-fit batch: about 200 bytes per epoch each (40 MB at 1500 epochs)
_PREFIX_BLOCK = 250  # epochs: prefix fits of the evidence search are cut to a multiple of this
_EVIDENCE_BATCH = 4 * _FIT_BATCH  # curves per prefix fit (vectorised LM steps cost little per extra row)


# --------------------------------------------------------------------------------------------
# time grid and settings
# --------------------------------------------------------------------------------------------


def time_grid(epochs: int, duration_days: float) -> np.ndarray:
    """The fixed observing grid: ``epochs`` equally spaced epochs over ``[0, duration_days)`` (days)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 2:
        raise ConfigError("microlensing.time_grid.epochs", f"must be an integer >= 2, got {epochs!r}")
    if not (isinstance(duration_days, (int, float, np.number)) and math.isfinite(duration_days) and duration_days > 0):
        raise ConfigError("microlensing.time_grid.duration_days", f"must be a number > 0, got {duration_days!r}")
    return np.linspace(0.0, float(duration_days), int(epochs), endpoint=False)


@dataclass(frozen=True)
class TimeGridSettings(Settings):
    """The fixed observing grid of every light curve (config ``microlensing.time_grid``).

    Keys
    ----
    epochs : int, default 1500
        Epochs of the grid (the seed's 1500).
    duration_days : float, default 500.0
        Time span of the grid.
    """

    PREFIX: ClassVar[str] = "microlensing.time_grid"

    epochs: int = setting(1500, number(16, integer=True))
    duration_days: float = setting(500.0, number(0.0, low_open=True))

    def grid(self) -> np.ndarray:
        """The epochs' times in days (:func:`time_grid`)."""
        return time_grid(self.epochs, self.duration_days)


_log_uniform = interval(0.0, low_open=True)  # both bounds > 0: drawn log-uniformly


@dataclass(frozen=True)
class Priors(Settings):
    """``[low, high]`` of each event parameter; ``tE_days``, ``s``, ``q`` and ``rho`` are log-uniform."""

    t0_fraction: tuple[float, float] = setting((0.2, 0.8), interval(0.0, 1.0))  # t0 = times[0] + f * span
    u0: tuple[float, float] = setting((0.0, 0.5), interval(0.0))
    tE_days: tuple[float, float] = setting((10.0, 100.0), _log_uniform)
    baseline_mag: tuple[float, float] = setting((16.0, 21.0), interval())
    source_fraction: tuple[float, float] = setting((0.1, 1.0), interval(1e-6, 1.0))
    s: tuple[float, float] = setting((0.3, 3.0), _log_uniform)
    q: tuple[float, float] = setting((0.01, 1.0), _log_uniform)
    rho: tuple[float, float] = setting((0.0003, 0.01), _log_uniform)


@dataclass(frozen=True)
class NoiseModel(Settings):
    """Magnitude errors: a photon-noise term that scales with flux, plus a floor in quadrature."""

    reference_mag: float = setting(18.0, number())
    sigma_at_reference: float = setting(0.01, number(0.0, low_open=True))
    systematic_floor: float = setting(0.003, number(0.0))

    def sigma(self, magnitudes: np.ndarray) -> np.ndarray:
        """1-sigma error (mag) at the given magnitudes (true ones for the noise, observed ones for the errors)."""
        photon = self.sigma_at_reference * 10.0 ** (0.2 * (np.asarray(magnitudes) - self.reference_mag))
        return np.hypot(self.systematic_floor, photon)


@dataclass(frozen=True)
class SimulationSettings(Settings):
    """Everything that defines the simulated events except the grid, the size and the seed.

    Build it with ``SimulationSettings.from_config(mapping)`` from the config keys (all optional;
    the defaults are those of ``config/config.yaml``) of ``microlensing.simulation``:

    Keys
    ----
    priors : mapping
        :class:`Priors`.
    noise : mapping
        :class:`NoiseModel`.
    split_fractions : mapping, default {train: 0.5, validation: 0.1, test: 0.4}
        Shares of the events in each split (by event).
    pspl_like_max_deviation_sigma : float, default 3.0
        A binary is PSPL-like when no epoch deviates from its best PSPL by more than this many sigma.
    """

    PREFIX: ClassVar[str] = "microlensing.simulation"

    priors: Priors = section(Priors)
    noise: NoiseModel = section(NoiseModel)
    split_fractions: dict[str, float] = setting({"train": 0.5, "validation": 0.1, "test": 0.4}, fractions(*SPLITS))
    pspl_like_max_deviation_sigma: float = setting(3.0, number(0.0, low_open=True))


# --------------------------------------------------------------------------------------------
# event parameters and light curves
# --------------------------------------------------------------------------------------------


def draw_events(n_events: int, times: np.ndarray, settings: SimulationSettings,
                rng: np.random.Generator) -> pd.DataFrame:
    """Labels (balanced, shuffled), splits and parameters of ``n_events`` events.

    Every parameter is drawn for every event (so the random stream does not depend on the
    labels); the binary-only ones (``s``, ``q``, ``alpha``, ``rho``) are then set to NaN for PSPL.
    With an odd count the extra event is a binary.
    """
    p = settings.priors
    labels = np.zeros(n_events, dtype=np.int8)
    labels[n_events // 2:] = 1
    labels = rng.permutation(labels)
    split = tuple(settings.split_fractions[name] for name in SPLITS)
    shares = np.asarray(split) / sum(split)  # exact sum for numpy
    split_index = rng.choice(len(SPLITS), size=n_events, p=shares)
    split = np.asarray(SPLITS, dtype=object)[split_index]

    def uniform(bounds):
        return rng.uniform(bounds[0], bounds[1], n_events)

    def log_uniform(bounds):
        return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), n_events))

    span = float(times[-1] - times[0])
    frame = pd.DataFrame({
        "label": labels,
        "split": split,
        "t0": times[0] + uniform(p.t0_fraction) * span,
        "u0": uniform(p.u0),
        "tE": log_uniform(p.tE_days),
        "baseline_mag": uniform(p.baseline_mag),
        "source_fraction": uniform(p.source_fraction),
        "s": log_uniform(p.s),
        "q": log_uniform(p.q),
        "alpha": rng.uniform(0.0, 2.0 * math.pi, n_events),
        "rho": log_uniform(p.rho),
    })
    frame.loc[labels == 0, ["s", "q", "alpha", "rho"]] = np.nan
    return frame


def magnitudes_from_magnification(magnification: np.ndarray, baseline_mag, source_fraction) -> np.ndarray:
    """Noiseless blended magnitudes ``baseline - 2.5 log10(fs A + 1 - fs)``, shape of ``magnification``."""
    fs = np.asarray(source_fraction, dtype=np.float64)[:, None]
    return np.asarray(baseline_mag, dtype=np.float64)[:, None] - _MAG * np.log(fs * magnification + (1.0 - fs))


# --------------------------------------------------------------------------------------------
# best-fitting PSPL (vectorised Levenberg-Marquardt)
# --------------------------------------------------------------------------------------------


# Parameters of the fit: (t0, ln u0, ln tE, ln F, g) with F the baseline flux (in units of the
# flux at the reference magnitude) and g = F_source / F the source fraction, kept in [1e-4, 1]
# (blend flux >= 0): with negative blending allowed, a binary's bump is "fitted" by a PSPL with
# u0 -> infinity and huge, nearly cancelling source and blend fluxes, and the fit never ends.
# Trial steps are projected onto the bounds, and a parameter at a bound that the step pushes
# outwards is held for that step (many binaries are best fitted without blending, g = 1, which a
# logit parametrisation would only reach after hundreds of iterations).
_N_PARAMS = 5
_LOWER = np.array([-np.inf, math.log(1e-5), math.log(0.1), -50.0, 1e-4])
_UPPER = np.array([np.inf, math.log(10.0), math.log(1e4), 50.0, 1.0])


def _pspl_model(times, params, reference, jacobian=True):
    """PSPL magnitudes (and their derivatives) for the fit parameters ``params`` (n, 5).

    Returns ``model`` (n, T) and ``jac`` (n, 5, T) = d model / d params (``None`` unless
    ``jacobian``). ``params`` must lie within ``_LOWER``/``_UPPER``.
    """
    t0, ln_u0, ln_te, ln_flux, g = (params[:, k:k + 1] for k in range(_N_PARAMS))
    u0sq = np.exp(2.0 * ln_u0)
    te = np.exp(ln_te)
    tau = times[None, :] - t0
    tau /= te
    u2 = tau * tau
    u2 += u0sq
    ratio = u2 + 4.0  # becomes (u^2 + 4) u^2, then sqrt of it: u sqrt(u^2 + 4)
    ratio *= u2
    np.sqrt(ratio, out=ratio)
    amp_m1 = u2 + 2.0
    amp_m1 /= ratio
    amp_m1 -= 1.0  # A - 1
    relative = amp_m1 * g
    relative += 1.0  # flux / F = g (A - 1) + 1
    model = np.log(relative)
    model += ln_flux
    model *= -_MAG
    model += reference[:, None]
    if not jacobian:
        return model, None
    jac = np.empty((params.shape[0], _N_PARAMS, times.size))
    # d model / d u^2 = -_MAG g (dA/du^2) / relative with dA/du^2 = -4 / (u^2 (u^2 + 4))^(3/2)
    d_u2 = ratio * ratio
    d_u2 *= ratio
    d_u2 *= relative
    np.divide(4.0 * _MAG * g, d_u2, out=d_u2)
    np.multiply(d_u2, (-2.0 / te) * tau, out=jac[:, 0])  # d u^2 / d t0 = -2 tau / tE
    np.multiply(d_u2, 2.0 * u0sq, out=jac[:, 1])  # d u^2 / d ln u0 = 2 u0^2
    np.multiply(d_u2, -2.0 * tau * tau, out=jac[:, 2])  # d u^2 / d ln tE = -2 tau^2
    jac[:, 3] = -_MAG
    np.divide(amp_m1, relative, out=jac[:, 4])
    jac[:, 4] *= -_MAG
    return model, jac


def _lm(times, data, inv_sigma, reference, start, max_iter, rtol, stop_below=-np.inf):
    """Levenberg-Marquardt (Marquardt scaling) for all rows at once; returns params, chi2, iterations.

    A row also stops once its chi2 is at most ``stop_below``.
    """
    n = data.shape[0]
    params = start.copy()
    model, jac = _pspl_model(times, params, reference)
    resid = (data - model) * inv_sigma
    chi2 = np.sum(resid * resid, axis=1)
    chi2[~np.isfinite(chi2)] = np.inf
    lam = np.full(n, 1e-3)
    iterations = np.zeros(n, dtype=np.int64)
    # Working set: the rows still iterating, with their data, weighted Jacobian and residuals.
    # Converged rows are only marked; the set is compacted once a quarter of it has converged.
    rows = np.flatnonzero(np.isfinite(chi2) & (chi2 > stop_below))
    work = {"data": data[rows], "inv_sigma": inv_sigma[rows], "reference": reference[rows],
            "jac": jac[rows] * inv_sigma[rows, None, :], "resid": resid[rows]}
    del model, jac, resid
    running = np.ones(rows.size, dtype=bool)
    diagonal = np.arange(_N_PARAMS)
    for _ in range(max_iter):
        if not running.any():
            break
        if running.sum() < 0.75 * rows.size:
            rows = rows[running]
            work = {key: value[running] for key, value in work.items()}
            running = np.ones(rows.size, dtype=bool)
        live = np.flatnonzero(running)
        idx = rows[live]
        iterations[idx] += 1
        jac_w = work["jac"][live] if live.size < rows.size else work["jac"]
        normal = np.matmul(jac_w, jac_w.transpose(0, 2, 1))  # (a, 5, 5)
        gradient = np.matmul(jac_w, work["resid"][live][..., None])  # (a, 5, 1)
        diag = normal[:, diagonal, diagonal]
        # Marquardt's scaling, with a small floor so that a flat direction never makes it singular.
        normal[:, diagonal, diagonal] += lam[idx, None] * (diag + 1e-12 * (1.0 + diag.max(axis=1, keepdims=True)))
        # A parameter at a bound that the step would push outwards is held there for this step
        # (a projected step would be distorted and rejected over and over).
        current = params[idx]
        held = ((current <= _LOWER) & (gradient[..., 0] < 0)) | ((current >= _UPPER) & (gradient[..., 0] > 0))
        if held.any():
            r, c = np.nonzero(held)
            normal[r, c, :] = 0.0
            normal[r, :, c] = 0.0
            normal[r, c, c] = 1.0
            gradient[r, c, 0] = 0.0
        step = np.linalg.solve(normal, gradient)[..., 0]
        trial = np.clip(current + step, _LOWER, _UPPER)
        t_model, _ = _pspl_model(times, trial, work["reference"][live], jacobian=False)
        t_resid = work["data"][live] - t_model
        t_resid *= work["inv_sigma"][live]
        t_chi2 = np.sum(t_resid * t_resid, axis=1)
        t_chi2[~np.isfinite(t_chi2)] = np.inf
        old = chi2[idx]
        better = t_chi2 < old
        # Accepted: move and relax the damping; rejected: stay and damp harder.
        acc, rej = idx[better], idx[~better]
        params[acc] = trial[better]
        chi2[acc] = t_chi2[better]
        lam[acc] = np.maximum(lam[acc] / 10.0, 1e-9)
        lam[rej] *= 10.0
        if acc.size:
            where = live[better]
            _, t_jac = _pspl_model(times, trial[better], work["reference"][where])
            t_jac *= work["inv_sigma"][where][:, None, :]
            work["jac"][where] = t_jac
            work["resid"][where] = t_resid[better]
        converged = np.where(better, old - t_chi2 <= rtol * old + 1e-9, lam[idx] > 1e9) | (chi2[idx] <= stop_below)
        running[live[converged]] = False
    return params, chi2, iterations


def _peak_u0(amplitude: np.ndarray) -> np.ndarray:
    """Impact parameter of a PSPL with peak magnification ``amplitude`` (> 1)."""
    a = np.maximum(amplitude, 1.0 + 1e-9)
    return np.sqrt(2.0 * (a / np.sqrt(a * a - 1.0) - 1.0))


def fit_pspl(times, magnitudes, sigma, baseline_mag, t0, u0, tE, source_fraction, *,
             max_iter: int = 100, rtol: float = 1e-8, stop_below: float = -np.inf) -> dict[str, np.ndarray]:
    """Best-fitting PSPL light curve (weighted least squares in magnitudes) for each row.

    Free parameters: ``t0``, ``u0``, ``tE``, the baseline flux and the source fraction
    ``g = F_source / (F_source + F_blend)`` in [1e-4, 1] (blend flux >= 0), i.e. blending and
    baseline are free. It is a vectorised Levenberg-Marquardt over all rows at once, in
    ``(t0, ln u0, ln tE, ln F, g)`` with ``1e-5 <= u0 <= 10`` and ``0.1 <= tE <= 1e4`` (trial
    steps projected onto the bounds),
    started twice per row and the better end kept: from the given ``t0, u0, tE,
    source_fraction`` (the truth of a simulated binary), and from the curve's brightest epoch
    (t0 there, u0 from the peak magnification). ``tests/unit/test_microlensing_simulation.py``
    checks it against ``scipy.optimize.least_squares``.

    Parameters
    ----------
    times : array_like, shape (T,)
    magnitudes, sigma : array_like, shape (N, T)
        The curves to fit and their 1-sigma errors; an ``inf`` error leaves that epoch out.
    baseline_mag : array_like, shape (N,)
        Starting baseline magnitude (also the reference of the flux unit).
    t0, u0, tE, source_fraction : array_like, shape (N,)
        The first starting point.
    max_iter, rtol : int, float
        Iterations per start; a row stops when an accepted step lowers chi2 by less than
        ``rtol * chi2`` (or the damping grows beyond 1e9).
    stop_below : float
        A row also stops, and skips its second start, once its chi2 is at most this: enough when
        the question is only whether some PSPL fits within a given chi2.

    Returns
    -------
    dict with ``t0``, ``u0``, ``tE``, ``baseline_mag``, ``source_fraction``, ``chi2`` (N,),
    ``model`` (N, T) and ``iterations`` (N, both starts together).
    """
    times = np.asarray(times, dtype=np.float64)
    data = np.asarray(magnitudes, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    reference = np.asarray(baseline_mag, dtype=np.float64)
    fs = np.clip(np.asarray(source_fraction, dtype=np.float64), _LOWER[4], 1.0)
    n = data.shape[0]
    truth = np.column_stack([np.asarray(t0, dtype=np.float64) + np.zeros(n),
                             np.log(np.clip(np.abs(u0), 1e-4, 3.0)), np.log(tE) + np.zeros(n),
                             np.zeros(n), fs])
    truth = np.clip(truth, _LOWER, _UPPER)

    # Second start: centred on the brightest epoch, with the u0 that reproduces its brightness.
    peak = np.argmin(np.where(np.isfinite(sigma), data, np.inf), axis=1)  # among the fitted epochs
    peak_flux = np.exp(-(data[np.arange(n), peak] - reference) / _MAG)
    at_peak = truth.copy()
    at_peak[:, 0] = times[peak]
    at_peak[:, 1] = np.log(np.clip(_peak_u0((peak_flux - (1.0 - fs)) / fs), 1e-4, 3.0))

    inv_sigma = 1.0 / sigma
    with np.errstate(all="ignore"):  # rejected trial steps may overflow; they are never used
        best, best_chi2, iterations = _lm(times, data, inv_sigma, reference, truth, max_iter, rtol, stop_below)
        again = np.flatnonzero(~(best_chi2 <= stop_below))
        params, chi2, its = _lm(times, data[again], inv_sigma[again], reference[again], at_peak[again],
                                max_iter, rtol, stop_below)
        iterations[again] += its
        better = chi2 < best_chi2[again]
        best[again[better]], best_chi2[again[better]] = params[better], chi2[better]
        model, _ = _pspl_model(times, best, reference, jacobian=False)
    return {
        "t0": best[:, 0], "u0": np.exp(best[:, 1]), "tE": np.exp(best[:, 2]),
        "baseline_mag": reference - _MAG * best[:, 3], "source_fraction": best[:, 4],
        "chi2": best_chi2, "model": model, "iterations": iterations,
    }


def pspl_deviation(times, magnitudes, sigma, events: pd.DataFrame, threshold: float, *,
                   evidence_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Departure of each row from its best-fitting PSPL (``fit_pspl``), in batches.

    Returns ``max_t |m - m_PSPL| / sigma`` and the ``evidence_time`` (``pspl_evidence_time``
    with ``chi2 > threshold**2``; NaN when never) of the rows selected by the boolean
    ``evidence_rows`` (default: all; NaN for the others).
    """
    n = magnitudes.shape[0]
    largest = np.empty(n)
    full_fit = {key: np.empty(n) for key in _START_KEYS + ("chi2",)}
    full_fit["model"] = np.empty(magnitudes.shape)
    for start in range(0, n, _FIT_BATCH):
        rows = slice(start, start + _FIT_BATCH)
        fit = fit_pspl(times, magnitudes[rows], sigma[rows], *_fit_start(events.iloc[rows]))
        largest[rows] = np.max(np.abs(magnitudes[rows] - fit["model"]) / sigma[rows], axis=1)
        for key, values in full_fit.items():
            values[rows] = fit[key]
    evidence = np.full(n, np.nan)
    selected = np.flatnonzero(np.ones(n, dtype=bool) if evidence_rows is None else evidence_rows)
    if selected.size:
        evidence[selected] = pspl_evidence_time(times, magnitudes[selected], sigma[selected], events.iloc[selected],
                                                threshold**2,
                                                full_fit={key: values[selected] for key, values in full_fit.items()})
    return largest, evidence


_START_KEYS = ("baseline_mag", "t0", "u0", "tE", "source_fraction")  # fit_pspl's starting-point arguments


def _fit_start(events: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(events[key].to_numpy() for key in _START_KEYS)


def _last_epoch_within(magnitudes, model, sigma, chi2_threshold: float) -> np.ndarray:
    """Per row, the last epoch up to which ``model``'s running chi2 stays within the threshold (-1: none)."""
    running = np.cumsum(((magnitudes - model) / sigma) ** 2, axis=1)
    return np.sum(running <= chi2_threshold, axis=1) - 1


def pspl_evidence_time(times, magnitudes, sigma, events: pd.DataFrame, chi2_threshold: float, *,
                       full_fit: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """First epoch at which no PSPL fits the curve seen so far within ``chi2_threshold``.

    For each row, the smallest ``t`` such that the best-fitting PSPL (``fit_pspl``, every
    parameter free) to the epochs ``<= t`` has chi2 above the threshold; NaN when even the whole
    curve is fitted within it. Before that time an ideal observer holding the noiseless curve
    could not rule out a single lens.

    The best chi2 over a prefix of the epochs never decreases as the prefix grows, so the epoch
    is found by bisection (about log2(T) prefix fits a row, each stopped as soon as a PSPL within
    the threshold is found). The whole-curve fit (``full_fit``, ``fit_pspl``'s output, computed
    when not given) brackets it from below: its chi2 summed over a prefix bounds that prefix's
    best chi2 from above, and so does every prefix fit for the prefixes around it. Each prefix fit
    starts from the last PSPL found within the threshold on a shorter prefix (at first the
    whole-curve fit) and, where that ends above the threshold, again from the truth, each time
    also from the brightest epoch seen (``fit_pspl``'s second start). Fewer starts leave about 1 %
    of the rows in a local minimum above the threshold: false evidence.
    Prefix fits are cut to a multiple of ``_PREFIX_BLOCK`` epochs, fixed per row, so the result
    does not depend on which rows share a batch.
    """
    times = np.asarray(times, dtype=np.float64)
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if full_fit is None:
        full_fit = fit_pspl(times, magnitudes, sigma, *_fit_start(events))
    # ``truth`` and ``start`` are (baseline_mag, t0, u0, tE, source_fraction) per row.
    truth = _fit_start(events)
    start = [np.array(full_fit[key], dtype=np.float64) for key in _START_KEYS]
    n, n_times = magnitudes.shape
    reached = full_fit["chi2"] > chi2_threshold
    # Bracket per row: no evidence with the epochs up to ``low``, evidence with those up to ``high``.
    low = np.where(reached, _last_epoch_within(magnitudes, full_fit["model"], sigma, chi2_threshold), -1)
    high = np.full(n, n_times - 1)
    epochs = np.arange(n_times)
    while True:
        active = np.flatnonzero(reached & (high - low > 1))
        if active.size == 0:
            break
        middle = (low[active] + high[active]) // 2
        width = np.minimum((middle // _PREFIX_BLOCK + 1) * _PREFIX_BLOCK, n_times)
        for cut in np.unique(width):
            group = np.flatnonzero(width == cut)
            for first in range(0, group.size, _EVIDENCE_BATCH):
                rows, last = active[group[first:first + _EVIDENCE_BATCH]], middle[group[first:first + _EVIDENCE_BATCH]]
                prefix_sigma = np.where(epochs[None, :cut] <= last[:, None], sigma[rows, :cut], np.inf)
                fit = fit_pspl(times[:cut], magnitudes[rows, :cut], prefix_sigma, *(values[rows] for values in start),
                               stop_below=chi2_threshold)
                again = np.flatnonzero(fit["chi2"] > chi2_threshold)
                if again.size:  # the evidence must hold from the truth too
                    retry = fit_pspl(times[:cut], magnitudes[rows[again], :cut], prefix_sigma[again],
                                     *(values[rows[again]] for values in truth), stop_below=chi2_threshold)
                    better = retry["chi2"] < fit["chi2"][again]
                    for key in _START_KEYS + ("chi2", "model"):
                        fit[key][again[better]] = retry[key][better]
                found = fit["chi2"] > chi2_threshold
                high[rows[found]] = last[found]
                # The fitted PSPL also bounds the best chi2 of every other prefix within the cut: where its
                # running chi2 is still within the threshold there is no evidence yet (often well past ``last``).
                low[rows] = np.maximum(low[rows], _last_epoch_within(magnitudes[rows, :cut], fit["model"],
                                                                     sigma[rows, :cut], chi2_threshold))
                for values, key in zip(start, _START_KEYS):
                    values[rows[~found]] = fit[key][~found]
        # A PSPL within the threshold past ``high`` shows that evidence there was a fit's local minimum.
        wrong = reached & (low >= high)
        reached[wrong & (low >= n_times - 1)] = False
        high[wrong] = n_times - 1
    return np.where(reached, times[high], np.nan)


# --------------------------------------------------------------------------------------------
# one shard
# --------------------------------------------------------------------------------------------


def _noise_rng(seed: int, shard_index: int, row: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard_index, 1, row)))


def simulate_shard(out_dir: str | Path, shard_index: int, events_per_shard: int, settings: SimulationSettings,
                   times: np.ndarray, seed: int, progress: bool | None = None, *,
                   chunk_events: int = 1000) -> dict[str, Any]:
    """Simulate one shard of events and write ``magnitudes.npy``, ``errors.npy`` and ``events.parquet``.

    Parameters
    ----------
    out_dir : path
        The shard directory (created).
    shard_index : int
        Index of the shard: ``event_id = shard_index * events_per_shard + row``.
    events_per_shard : int
        Events in the shard, half PSPL and half binary (an odd extra one is a binary), shuffled.
    settings : SimulationSettings
    times : ndarray, shape (T,)
        The observing grid (``time_grid``).
    seed : int
        Base seed; the same seed and shard give the same files bit for bit.
    progress : bool, optional
        Progress bar over chunks (default: on a terminal).
    chunk_events : int
        Events computed and written at a time. Peak memory grows with it (measured: about
        300 MB peak RSS for 1000 events at 1500 epochs, whatever the shard size); the files
        do not depend on it.

    Returns
    -------
    dict
        Counts (events, per class, per split, PSPL-like binaries), the PSPL-like fraction of
        the binaries, seconds, and curves per second of each class (magnification only) and
        of the PSPL fits.

    Notes
    -----
    ``magnitudes.npy`` and ``errors.npy`` are float32 (N, T) written chunk by chunk through a
    memory map of a temporary file (re-opened for every chunk, so written pages leave the
    process), then renamed into place with the table: a shard of 50 000 x 1500 needs a few
    hundred MB at most.
    """
    for name, value, minimum in (("shard_index", shard_index, 0), ("events_per_shard", events_per_shard, 1),
                                 ("seed", seed, 0), ("chunk_events", chunk_events, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 2 or not np.all(np.diff(times) > 0):
        raise ValueError("times must be a 1-D increasing array of at least 2 epochs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    n, n_times = int(events_per_shard), times.size

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard_index, 0)))
    events = draw_events(n, times, settings, rng)
    events.insert(0, "event_id", np.int64(shard_index) * np.int64(n) + np.arange(n, dtype=np.int64))
    deviation = np.full(n, np.nan)
    evidence_time = np.full(n, np.nan)
    labels = events["label"].to_numpy()
    timing = {"pspl": 0.0, "binary": 0.0, "fit": 0.0}

    chunks = range(0, n, chunk_events)
    with contextlib.ExitStack() as stack:
        mag_tmp = stack.enter_context(atomic_path(out_dir / "magnitudes.npy"))
        err_tmp = stack.enter_context(atomic_path(out_dir / "errors.npy"))
        for tmp in (mag_tmp, err_tmp):
            created = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, n_times))
            del created  # header written; chunks re-open it so written pages leave this process
        bar = stack.enter_context(tqdm(chunks, desc=f"shard {shard_index}", unit="chunk",
                                       disable=not progress_enabled(progress)))
        for first in bar:
            rows = np.arange(first, min(n, first + chunk_events))
            ev = events.iloc[rows]
            amp = np.empty((rows.size, n_times))
            pspl = labels[rows] == 0
            clock = time.perf_counter()
            if pspl.any():
                e = ev[pspl]
                amp[pspl] = pspl_magnification(times, e["t0"].to_numpy(), e["u0"].to_numpy(), e["tE"].to_numpy())
            timing["pspl"] += time.perf_counter() - clock
            clock = time.perf_counter()
            if (~pspl).any():
                e = ev[~pspl]
                amp[~pspl] = binary_magnification(times, *(e[k].to_numpy() for k in ("t0", "u0", "tE", "s", "q",
                                                                                      "alpha", "rho")))
            timing["binary"] += time.perf_counter() - clock

            true_mag = magnitudes_from_magnification(amp, ev["baseline_mag"].to_numpy(),
                                                     ev["source_fraction"].to_numpy())
            del amp
            true_sigma = settings.noise.sigma(true_mag)
            noise = np.empty_like(true_mag)
            for i, row in enumerate(rows):
                noise[i] = _noise_rng(seed, shard_index, int(row)).standard_normal(n_times)
            clock = time.perf_counter()
            if (~pspl).any():
                # PSPL-likeness and evidence are properties of the truth (what an ideal observer with this noise
                # level could tell apart), not model inputs: the noiseless curve with its true errors.
                # The evidence search (about 4x the fit) only where the analysis reads it: the test split.
                deviation[rows[~pspl]], evidence_time[rows[~pspl]] = pspl_deviation(
                    times, true_mag[~pspl], true_sigma[~pspl], ev[~pspl], settings.pspl_like_max_deviation_sigma,
                    evidence_rows=(ev["split"] == "test").to_numpy()[~pspl])
            timing["fit"] += time.perf_counter() - clock

            observed = true_mag + true_sigma * noise
            # Reported errors as a pipeline measures them, from the observed flux: they then carry nothing
            # about the noiseless curve that the observed magnitudes do not.
            errors = settings.noise.sigma(observed)
            for tmp, values in ((mag_tmp, observed), (err_tmp, errors)):
                array = np.load(tmp, mmap_mode="r+")
                array[rows[0]:rows[-1] + 1] = values.astype(np.float32)
                array.flush()
                del array

        events["max_deviation_sigma"] = deviation
        events["pspl_like"] = (labels == 1) & (deviation < settings.pspl_like_max_deviation_sigma)
        events["evidence_time"] = evidence_time
        events = events[list(EVENT_COLUMNS)]
        write_table(out_dir / "events.parquet", events)

    n_binary = int(labels.sum())
    n_pspl = n - n_binary
    n_like = int(events["pspl_like"].sum())
    seconds = time.perf_counter() - started
    summary = {
        "shard": int(shard_index),
        "events": n,
        "epochs": n_times,
        "pspl": n_pspl,
        "binary": n_binary,
        "splits": {name: int((events["split"] == name).sum()) for name in SPLITS},
        "pspl_like": n_like,
        "pspl_like_fraction": n_like / n_binary if n_binary else float("nan"),
        "seconds": round(seconds, 3),
        "pspl_curves_per_second": n_pspl / timing["pspl"] if timing["pspl"] > 0 else float("nan"),
        "binary_curves_per_second": n_binary / timing["binary"] if timing["binary"] > 0 else float("nan"),
        "pspl_fits_per_second": n_binary / timing["fit"] if timing["fit"] > 0 else float("nan"),
    }
    log.info("shard %d: %d events (%d PSPL, %d binary, %.1f%% of binaries PSPL-like) in %.1f s",
             shard_index, n, n_pspl, n_binary, 100 * summary["pspl_like_fraction"] if n_binary else 0.0, seconds)
    return summary
