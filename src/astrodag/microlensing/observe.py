"""Observing simulated events with a survey: photometry at the survey's own times, binned onto the model's grid.

One job observes one shard of events (``simulation.simulate_shard``'s ``events.parquet``) with one
cadence (``astrodag.microlensing.cadence``) and writes one directory (``observe_shard``):
``magnitudes.npy``, ``errors.npy``, ``scatter.npy`` (float32 (n, steps)) and ``counts.npy`` (int32)
are the photometry summarised per step of the model's grid (``features.bin_observations``);
``events.parquet`` is the shard's table plus the columns of this cadence (``OBSERVED_COLUMNS``);
``summary.json`` the counts and timings.

Per event:

* the survey observes at ``cadence.observation_times(spec, event_id, seed, duration)``;
* the magnification at exactly those times (``magnification``: PSPL, or binary lens with a finite
  source), and blending: only the fraction ``fs = F_source / (F_source + F_blend)`` of the baseline
  flux is magnified, ``m = baseline_mag - 2.5 log10(fs A + 1 - fs)``;
* noise from the survey's error model ``sigma = spec.noise.sigma`` (``astrodag.microlensing.noise``):
  ``m_obs = m + sigma(m) z``, set by the true flux, and the error a photometry pipeline reports,
  ``sigma(m_obs)``, from the observed magnitude: an error computed from ``m`` would let the model
  read the noiseless curve off the error channel;
* ``reference_mag``: the baseline as the survey's reference image measures it, a stack of
  ``reference_images`` epochs (difference imaging stacks the ~20 best frames, Wozniak 2000, AcA 50,
  421): ``baseline_mag + sigma(baseline_mag) z / sqrt(reference_images)``.

The random numbers of an event (first its reference offset, then the noise of each observation)
come from a generator seeded by ``(seed, cadence name, event_id)`` only: the files do not depend on
the sharding or on ``chunk_events``.

One indistinguishability criterion, per cadence (Penny et al. 2019, ApJS 241, 3: a binary/planetary
signal is detected when ``Delta chi2 > 160`` against the best single lens): ``delta_chi2`` is the
chi2 of the best-fitting PSPL (``fit_pspl``: t0, u0, tE, source and blend flux free) to the binned
NOISELESS binary curve on the steps this cadence observed, with the binned errors, i.e. the
Delta chi2 expected from this survey's data. The noiseless curve is binned with the weights of the
true errors ``1 / sigma(m)^2``, and the PSPL is evaluated at each step's weighted mean observation
time (the binned curve equals the curve there to first order in the step length). A binary is
``pspl_like`` when ``delta_chi2 < delta_chi2_threshold``: no classifier can tell it from a single
lens with this cadence. ``evidence_time`` (test-split binaries only, where the analysis reads it)
is the grid time of the first step at which the same Delta chi2 over the steps seen so far exceeds
the threshold (``evidence_steps``); NaN for the others and for pspl_like binaries.

``brightening_time`` (every event) is what the survey itself could know in real time from the
NOISY binned data: the grid time of the last step of the first run of ``brightening_points``
consecutive observed steps (unobserved steps between them do not break the run), each at least
``brightening_sigma`` sigma brighter than ``reference_mag``, sigma being the step's error and the
reference's in quadrature; NaN if it never happens.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrodag.io import read_table, write_json, write_table
from astrodag.logs import progress_enabled
from astrodag.microlensing import cadence
from astrodag.microlensing.features import bin_observations
from astrodag.microlensing.magnification import binary_magnification, pspl_magnification
from astrodag.microlensing.simulation import EVENT_COLUMNS
from astrodag.settings import Settings, number, setting

log = logging.getLogger(__name__)

OBSERVED_COLUMNS = ("reference_mag", "observations", "delta_chi2", "pspl_like", "evidence_time", "brightening_time")
ARRAYS = {"magnitudes": np.float32, "errors": np.float32, "scatter": np.float32, "counts": np.int32}

_MAG = 2.5 / math.log(10.0)  # dm = -_MAG df / f
_FIT_BATCH = 128  # curves per PSPL-fit batch: about 250 bytes per step each (50 MB at 1500 steps)
_PREFIX_BLOCK = 250  # steps: prefix fits of the evidence search are cut to a multiple of this
_EVIDENCE_BATCH = 4 * _FIT_BATCH  # curves per prefix fit (vectorised LM steps cost little per extra row)
# Iterations per start of a prefix fit: a partial curve often leaves a long flat valley (u0, tE and blending
# degenerate) that the LM descends slowly. With 200 a fit may still stop a few % above a minimum just below the
# threshold (evidence then comes a few steps early; the tests bound it against scipy); 500 costs 2x the fits.
_EVIDENCE_ITERATIONS = 200
FAR_FIELD = 10.0  # Einstein radii: beyond, a binary lens is computed as a point lens (event_magnification)
_NOISE_STREAM = 0x6E6F6973  # in every noise generator's key: apart from other per-event streams (the cadence's)


@dataclass(frozen=True)
class ObservationSettings(Settings):
    """How surveys observe the events and what counts as distinguishable (config ``microlensing.observation``).

    Keys
    ----
    delta_chi2_threshold : float, default 160.0
        A binary is PSPL-like on a cadence when the best PSPL fits its binned noiseless curve with
        ``Delta chi2`` below this (Penny et al. 2019, ApJS 241, 3); also the level of ``evidence_time``.
    reference_images : int, default 20
        Epochs stacked into the reference image that measures the baseline (``reference_mag``).
    brightening_sigma : float, default 3.0
        Significance of a step's brightening against the reference for ``brightening_time``.
    brightening_points : int, default 3
        Consecutive observed steps that must all be that significant.
    """

    PREFIX: ClassVar[str] = "microlensing.observation"

    delta_chi2_threshold: float = setting(160.0, number(0.0, low_open=True))
    reference_images: int = setting(20, number(1, integer=True))
    brightening_sigma: float = setting(3.0, number(0.0, low_open=True))
    brightening_points: int = setting(3, number(1, integer=True))


def magnitudes_from_magnification(magnification: np.ndarray, baseline_mag, source_fraction) -> np.ndarray:
    """Noiseless blended magnitudes ``baseline - 2.5 log10(fs A + 1 - fs)``; baseline and fs broadcast against A."""
    fs = np.asarray(source_fraction, dtype=np.float64)
    return np.asarray(baseline_mag, dtype=np.float64) - _MAG * np.log(fs * magnification + (1.0 - fs))


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
    """PSPL magnitudes (and their derivatives) at ``times`` (n, T) for the fit parameters ``params`` (n, 5).

    Returns ``model`` (n, T) and ``jac`` (n, 5, T) = d model / d params (``None`` unless
    ``jacobian``). ``params`` must lie within ``_LOWER``/``_UPPER``.
    """
    t0, ln_u0, ln_te, ln_flux, g = (params[:, k:k + 1] for k in range(_N_PARAMS))
    u0sq = np.exp(2.0 * ln_u0)
    te = np.exp(ln_te)
    tau = times - t0
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
    jac = np.empty((params.shape[0], _N_PARAMS, times.shape[1]))
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
    work = {"times": times[rows], "data": data[rows], "inv_sigma": inv_sigma[rows],
            "reference": reference[rows], "jac": jac[rows] * inv_sigma[rows, None, :], "resid": resid[rows]}
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
        t_model, _ = _pspl_model(work["times"][live], trial, work["reference"][live], jacobian=False)
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
            _, t_jac = _pspl_model(work["times"][where], trial[better], work["reference"][where])
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
    (t0 there, u0 from the peak magnification). ``tests/unit/test_microlensing_observe.py``
    checks it against ``scipy.optimize.least_squares``.

    Parameters
    ----------
    times : array_like, shape (T,) or (N, T)
        The epochs' times, shared or one row per curve.
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
    data = np.asarray(magnitudes, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    times = np.broadcast_to(np.asarray(times, dtype=np.float64), data.shape)
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
    at_peak[:, 0] = times[np.arange(n), peak]
    at_peak[:, 1] = np.log(np.clip(_peak_u0((peak_flux - (1.0 - fs)) / fs), 1e-4, 3.0))

    inv_sigma = 1.0 / sigma
    with np.errstate(all="ignore"):  # rejected trial steps may overflow; they are never used
        best, best_chi2, iterations = _lm(times, data, inv_sigma, reference, truth, max_iter, rtol, stop_below)
        again = np.flatnonzero(~(best_chi2 <= stop_below))
        params, chi2, its = _lm(times[again], data[again], inv_sigma[again], reference[again], at_peak[again],
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


_START_KEYS = ("baseline_mag", "t0", "u0", "tE", "source_fraction")  # fit_pspl's starting-point arguments


def _fit_start(events: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(events[key].to_numpy(dtype=np.float64) for key in _START_KEYS)


def _last_step_within(magnitudes, model, sigma, chi2_threshold: float) -> np.ndarray:
    """Per row, the last step up to which ``model``'s running chi2 stays within the threshold (-1: none)."""
    running = np.cumsum(((magnitudes - model) / sigma) ** 2, axis=1)
    return np.sum(running <= chi2_threshold, axis=1) - 1


def evidence_steps(times, magnitudes, sigma, events: pd.DataFrame, chi2_threshold: float, *,
                   full_fit: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """First step at which no PSPL fits the curve seen so far within ``chi2_threshold`` (-1: never).

    For each row, the smallest step ``k`` such that the best-fitting PSPL (``fit_pspl``, every
    parameter free) to the steps ``<= k`` has chi2 above the threshold; -1 when even the whole
    curve is fitted within it. Steps with an ``inf`` error (not observed) count for nothing.

    The best chi2 over a prefix never decreases as the prefix grows, so the step is found by
    bisection (about log2(T) prefix fits a row, each stopped as soon as a PSPL within the
    threshold is found). The whole-curve fit (``full_fit``, ``fit_pspl``'s output, computed when
    not given) brackets it from below: its chi2 summed over a prefix bounds that prefix's best
    chi2 from above, and so does every prefix fit for the prefixes around it. Each prefix fit
    starts from the last PSPL found within the threshold on a shorter prefix (at first the
    whole-curve fit) and, where that ends above the threshold, again from the truth (``events``),
    each time also from the brightest step seen (``fit_pspl``'s second start). Fewer starts leave
    about 1 % of the rows in a local minimum above the threshold: false evidence.
    Prefix fits are cut to a multiple of ``_PREFIX_BLOCK`` steps, fixed per row, so the result
    does not depend on which rows share a batch.

    Parameters
    ----------
    times : array_like, shape (T,) or (N, T)
        Times at which the PSPL is evaluated for each step.
    magnitudes, sigma : array_like, shape (N, T)
    events : DataFrame
        One row per curve with the true ``baseline_mag, t0, u0, tE, source_fraction`` (a start).
    chi2_threshold : float
    """
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    times = np.broadcast_to(np.asarray(times, dtype=np.float64), magnitudes.shape)
    if full_fit is None:
        full_fit = fit_pspl(times, magnitudes, sigma, *_fit_start(events))
    # ``truth`` and ``start`` are (baseline_mag, t0, u0, tE, source_fraction) per row.
    truth = _fit_start(events)
    start = [np.array(full_fit[key], dtype=np.float64) for key in _START_KEYS]
    n, n_times = magnitudes.shape
    reached = full_fit["chi2"] > chi2_threshold
    # Bracket per row: no evidence with the steps up to ``low``, evidence with those up to ``high``.
    low = np.where(reached, _last_step_within(magnitudes, full_fit["model"], sigma, chi2_threshold), -1)
    high = np.full(n, n_times - 1)
    steps = np.arange(n_times)
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
                prefix_sigma = np.where(steps[None, :cut] <= last[:, None], sigma[rows, :cut], np.inf)
                fit = fit_pspl(times[rows, :cut], magnitudes[rows, :cut], prefix_sigma,
                               *(values[rows] for values in start), stop_below=chi2_threshold,
                               max_iter=_EVIDENCE_ITERATIONS)
                again = np.flatnonzero(fit["chi2"] > chi2_threshold)
                if again.size:  # the evidence must hold from the truth too
                    retry = fit_pspl(times[rows[again], :cut], magnitudes[rows[again], :cut], prefix_sigma[again],
                                     *(values[rows[again]] for values in truth), stop_below=chi2_threshold,
                                     max_iter=_EVIDENCE_ITERATIONS)
                    better = retry["chi2"] < fit["chi2"][again]
                    for key in _START_KEYS + ("chi2", "model"):
                        fit[key][again[better]] = retry[key][better]
                found = fit["chi2"] > chi2_threshold
                high[rows[found]] = last[found]
                # The fitted PSPL also bounds the best chi2 of every other prefix within the cut: where its
                # running chi2 is still within the threshold there is no evidence yet (often well past ``last``).
                low[rows] = np.maximum(low[rows], _last_step_within(magnitudes[rows, :cut], fit["model"],
                                                                    sigma[rows, :cut], chi2_threshold))
                for values, key in zip(start, _START_KEYS):
                    values[rows[~found]] = fit[key][~found]
        # A PSPL within the threshold past ``high`` shows that evidence there was a fit's local minimum.
        wrong = reached & (low >= high)
        reached[wrong & (low >= n_times - 1)] = False
        high[wrong] = n_times - 1
    return np.where(reached, high, -1)


def pspl_delta_chi2(times, magnitudes, sigma, events: pd.DataFrame, chi2_threshold: float, *,
                    evidence_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Delta chi2 of each row against its best-fitting PSPL, and its evidence step, in batches.

    Returns ``chi2`` of the best PSPL (``fit_pspl``) per row and the ``evidence_steps`` (with
    ``chi2_threshold``; -1 when never) of the rows selected by the boolean ``evidence_rows``
    (default: all; -1 for the others). Arguments as ``evidence_steps``; the fits run on each row's
    observed (finite-error) steps only, moved to the front, which changes nothing but the cost.
    """
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    times = np.broadcast_to(np.asarray(times, dtype=np.float64), magnitudes.shape)
    n = magnitudes.shape[0]
    seen = np.isfinite(sigma)
    width = max(1, int(seen.sum(axis=1).max(initial=0)))
    columns = np.argsort(~seen, axis=1, kind="stable")[:, :width]  # observed steps first, in order
    times, magnitudes, sigma = (np.take_along_axis(values, columns, axis=1) for values in (times, magnitudes, sigma))
    full_fit = {key: np.empty(n) for key in _START_KEYS + ("chi2",)}
    full_fit["model"] = np.empty(magnitudes.shape)
    for start in range(0, n, _FIT_BATCH):
        rows = slice(start, start + _FIT_BATCH)
        fit = fit_pspl(times[rows], magnitudes[rows], sigma[rows], *_fit_start(events.iloc[rows]))
        for key, values in full_fit.items():
            values[rows] = fit[key]
    steps = np.full(n, -1, dtype=np.int64)
    selected = np.flatnonzero(np.ones(n, dtype=bool) if evidence_rows is None else evidence_rows)
    if selected.size:
        found = evidence_steps(times[selected], magnitudes[selected], sigma[selected], events.iloc[selected],
                               chi2_threshold, full_fit={key: values[selected] for key, values in full_fit.items()})
        steps[selected] = np.where(found >= 0, columns[selected, np.maximum(found, 0)], -1)
    return full_fit["chi2"], steps


# --------------------------------------------------------------------------------------------
# real-time brightening
# --------------------------------------------------------------------------------------------


def brightening_steps(magnitudes, errors, counts, reference_mag, reference_error, n_sigma: float,
                      points: int) -> np.ndarray:
    """Per row, the step that completes the first run of ``points`` significantly bright observed steps (-1: none).

    A step is significant when observed (``counts > 0``) and ``reference_mag - magnitude >= n_sigma
    * hypot(error, reference_error)``; the run counts observed steps only (an unobserved step
    neither breaks nor extends it). Causal: the result at step ``k`` uses steps ``<= k`` only.
    """
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    observed = np.asarray(counts) > 0
    reference = np.asarray(reference_mag, dtype=np.float64)[:, None]
    noise = np.hypot(np.asarray(errors, dtype=np.float64), np.asarray(reference_error, dtype=np.float64)[:, None])
    significant = observed & (reference - magnitudes >= n_sigma * noise)
    run = np.zeros(magnitudes.shape[0], dtype=np.int64)
    found = np.full(magnitudes.shape[0], -1, dtype=np.int64)
    for step in range(magnitudes.shape[1]):
        run = np.where(observed[:, step], np.where(significant[:, step], run + 1, 0), run)
        found[(found < 0) & (run >= points)] = step
    return found


# --------------------------------------------------------------------------------------------
# one shard on one cadence
# --------------------------------------------------------------------------------------------


def _event_rng(seed: int, cadence_name: str, event_id: int) -> np.random.Generator:
    key = zlib.crc32(cadence_name.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_NOISE_STREAM, key, int(event_id))))


def event_magnification(event, times: np.ndarray) -> np.ndarray:
    """Magnification of one event (a row of the events table, as ``itertuples`` gives) at ``times``.

    A binary lens is solved exactly (VBMicrolensing) where the source is within ``FAR_FIELD``
    Einstein radii (and 3 s) of the centre of mass; farther out it is a point lens of the total
    mass: A - 1 < 2e-4 there and the two differ by < 1e-4 mag (tested), ten times below the smallest
    survey error floor (Roman's 1 mmag); it saves a third of the cost of the 15-minute cadences.
    """
    if times.size == 0:
        return np.ones(0)
    magnification = pspl_magnification(times, event.t0, event.u0, event.tE)[0]
    if event.label == 1:
        near = np.hypot((times - event.t0) / event.tE, event.u0) < max(FAR_FIELD, 3.0 * event.s)
        if near.any():
            magnification[near] = binary_magnification(times[near], event.t0, event.u0, event.tE, event.s, event.q,
                                                        event.alpha, event.rho)[0]
    return magnification


def observe_shard(events_path: str | Path, out_dir: str | Path, spec, times: np.ndarray,
                  settings: ObservationSettings, seed: int, progress: bool | None = None, *,
                  chunk_events: int = 64) -> dict[str, Any]:
    """Observe one shard's events with one cadence and write the observation directory.

    Parameters
    ----------
    events_path : path
        The shard's ``events.parquet`` (``simulation.simulate_shard``).
    out_dir : path
        The directory written (see the module docstring); built beside it under a temporary name
        and renamed into place, replacing an earlier one, so a failed job leaves nothing behind.
    spec : cadence.CadenceSpec
        The cadence: ``name``, ``noise`` (``.sigma(mag)``) and ``observation_times``'s schedule.
    times : ndarray, shape (steps,)
        The model's grid (``simulation.time_grid``): step ``k`` covers ``[times[k], times[k] + step)``.
    settings : ObservationSettings
    seed : int
        Observation seed (``microlensing.observation_seed``): times and noise of each event.
    progress : bool, optional
        Progress bar over chunks (default: on a terminal).
    chunk_events : int
        Events observed at a time (bounds memory: about 100 bytes per observation, 130 MB for 64
        events of a 15-minute cadence); the files do not depend on it.

    Returns
    -------
    dict
        The ``summary.json`` contents.
    """
    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(chunk_events, bool) or not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1:
        raise ValueError(f"chunk_events must be an integer >= 1, got {chunk_events!r}")
    times = np.asarray(times, dtype=np.float64)
    regular = times.ndim == 1 and times.size >= 2 and np.allclose(np.diff(times), times[1] - times[0])
    if not (regular and times[1] > times[0]):
        raise ValueError("times must be a regular increasing grid of at least 2 steps")
    events = read_table(events_path, EVENT_COLUMNS, not_found="file does not exist (written by simulate)")
    out_dir = Path(out_dir)
    n, n_steps = len(events), times.size
    step_days = float(times[1] - times[0])
    duration = float(times[-1] + step_days)
    binned = {name: np.zeros((n, n_steps), dtype=dtype) for name, dtype in ARRAYS.items()}
    truth = {name: np.zeros((n, n_steps), dtype=np.float32) for name in ("magnitudes", "errors", "times")}
    # The reference image's error: the baseline's, averaged over the stacked epochs.
    reference_error = spec.noise.sigma(events["baseline_mag"].to_numpy(dtype=np.float64)) / math.sqrt(
        settings.reference_images)
    reference_mag = np.empty(n)
    observations = np.zeros(n, dtype=np.int64)
    outside = 0
    clock = {"observe": 0.0, "fit": 0.0}

    chunks = range(0, n, chunk_events)
    for first in tqdm(chunks, desc=f"observe {spec.name}", unit="chunk", disable=not progress_enabled(progress)):
        tick = time.perf_counter()
        rows = np.arange(first, min(n, first + chunk_events))
        parts = {"times": [], "true": [], "sigma": [], "observed": [], "errors": [], "rows": []}
        for offset, event in enumerate(events.iloc[rows].itertuples(index=False)):
            at = np.asarray(cadence.observation_times(spec, int(event.event_id), int(seed), duration), dtype=np.float64)
            true_mag = magnitudes_from_magnification(event_magnification(event, at), event.baseline_mag,
                                                     event.source_fraction)
            sigma = spec.noise.sigma(true_mag)
            rng = _event_rng(int(seed), spec.name, int(event.event_id))
            reference_mag[first + offset] = event.baseline_mag + reference_error[first + offset] * rng.standard_normal()
            observed = true_mag + sigma * rng.standard_normal(at.size)
            # Reported errors as a pipeline measures them, from the observed flux (never the truth).
            for key, values in (("times", at), ("true", true_mag), ("sigma", sigma), ("observed", observed),
                                ("errors", spec.noise.sigma(observed)), ("rows", np.full(at.size, offset))):
                parts[key].append(values)
            observations[first + offset] = at.size
        merged = {key: np.concatenate(values) for key, values in parts.items()}
        where = {"n_steps": n_steps, "step_days": step_days, "start": float(times[0]), "rows": merged["rows"],
                 "n_rows": rows.size}
        noisy = bin_observations(merged["times"], merged["observed"], merged["errors"], **where)
        for name in ARRAYS:
            binned[name][rows] = noisy[name]
        outside += noisy["outside"]
        # The noiseless curve and the observation times, weighted by the true errors (the criterion's inputs).
        clean = bin_observations(merged["times"], merged["true"], merged["sigma"], **where)
        truth["magnitudes"][rows], truth["errors"][rows] = clean["magnitudes"], clean["errors"]
        mean_times = bin_observations(merged["times"], merged["times"], merged["sigma"], **where)
        truth["times"][rows] = mean_times["magnitudes"]
        clock["observe"] += time.perf_counter() - tick

    tick = time.perf_counter()
    labels = events["label"].to_numpy()
    binary = np.flatnonzero(labels == 1)
    seen = binned["counts"][binary] > 0
    # Unobserved steps get an infinite error (no weight) and harmless finite values.
    fit_times = np.where(seen, truth["times"][binary], times[None, :] + 0.5 * step_days)
    fit_mags = np.where(seen, truth["magnitudes"][binary], events["baseline_mag"].to_numpy()[binary, None])
    fit_sigma = np.where(seen, truth["errors"][binary], np.inf)
    threshold = settings.delta_chi2_threshold
    chi2, evidence = pspl_delta_chi2(fit_times, fit_mags, fit_sigma, events.iloc[binary], threshold,
                                     evidence_rows=(events["split"].to_numpy()[binary] == "test"))
    clock["fit"] = time.perf_counter() - tick
    delta_chi2 = np.full(n, np.nan)
    delta_chi2[binary] = chi2
    evidence_time = np.full(n, np.nan)
    evidence_time[binary] = np.where(evidence >= 0, times[np.maximum(evidence, 0)], np.nan)
    brightening = brightening_steps(binned["magnitudes"], binned["errors"], binned["counts"], reference_mag,
                                    reference_error, settings.brightening_sigma, settings.brightening_points)

    table = events.copy()
    table["reference_mag"] = reference_mag
    table["observations"] = observations
    table["delta_chi2"] = delta_chi2
    table["pspl_like"] = (labels == 1) & (delta_chi2 < threshold)
    table["evidence_time"] = evidence_time
    table["brightening_time"] = np.where(brightening >= 0, times[np.maximum(brightening, 0)], np.nan)

    n_binary = int(binary.size)
    n_like = int(table["pspl_like"].sum())
    summary = {
        "cadence": spec.name,
        "events": n,
        "binary": n_binary,
        "observations_median": float(np.median(observations)) if n else float("nan"),
        "observations_outside_grid": int(outside),
        "steps_observed_fraction": float(np.mean(binned["counts"] > 0)) if n else float("nan"),
        "pspl_like": n_like,
        "pspl_like_fraction": n_like / n_binary if n_binary else float("nan"),
        "brightening_fraction": float(np.mean(brightening >= 0)) if n else float("nan"),
        "seconds_observe": round(clock["observe"], 3),
        "seconds_fit": round(clock["fit"], 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_directory(out_dir, binned, table, summary)
    log.info("observed %d events with cadence %s: median %d observations, %.1f%% of steps observed, %.1f%% of "
             "binaries PSPL-like (Delta chi2 < %g), %.1f s", n, spec.name, summary["observations_median"],
             100 * summary["steps_observed_fraction"], 100 * summary["pspl_like_fraction"], threshold,
             summary["seconds"])
    return summary


def _write_directory(out_dir: Path, arrays: dict[str, np.ndarray], table: pd.DataFrame,
                     summary: dict[str, Any]) -> None:
    """Write the files into a temporary directory beside ``out_dir``, then swap it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, values in arrays.items():
            np.save(work / f"{name}.npy", values)
        write_table(work / "events.parquet", table)
        write_json(work / "summary.json", summary)
        os.chmod(work, 0o777 & ~_umask())
        if out_dir.exists():  # a rerun (or the directory Snakemake made for the outputs)
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
