"""Classify survey photometry (OGLE, MOA, KMTNet, ...) with a trained cadence model.

A file is brought to what the model was trained on, step by step:

1. **Photometry.** Magnitudes, fluxes or difference fluxes. KMTNet (pySIS) and MOA deliver
   difference fluxes ``Delta F`` against a reference image; they need the reference flux
   ``F_ref`` of the source in the same units (``F = F_ref + Delta F``). Negative ``Delta F`` are
   ordinary baseline points and are kept; only a total flux ``F <= 0`` cannot be a magnitude.
   Without a zero point, fluxes become instrumental magnitudes ``-2.5 log10 F``.
2. **Baseline.** A blended PSPL model ``F(t) = F_s A(t; t0, u0, tE) + F_b`` is fitted by least
   squares (scipy); ``F_s + F_b`` is the baseline. The model's first channel is the magnitude
   minus this baseline, so neither the zero point nor the flux units matter.
3. **Errors.** Survey error bars are usually under-estimated; they are renormalised as in
   Skowron et al. (2016, AcA 66, 1), ``sigma' = sqrt((k sigma)^2 + eps^2)``, with ``k`` fitted on
   the baseline points (``|t - t0| > 2 tE``) of the PSPL fit (``eps = 0``, see
   :func:`renormalise_errors`).
4. **Binning.** ``features.bin_observations`` puts the observations on the model's grid of
   steps exactly as the simulated surveys were in training (the error of a step shrinks with
   its number of points, which the model sees in its count channel); a file longer than the grid
   uses its most recent part, so the probability at the last observed step is the
   classification "now".
5. **Out of distribution.** A model only knows events like its training set. A file is
   classified ``OUT_OF_DISTRIBUTION`` (with the ``reason``) when it has too few observed steps,
   shows no significant brightening (PSPL vs constant ``Delta chi^2`` below the model's
   ``observation.delta_chi2_threshold`` or no run of ``brightening_points`` steps each
   ``brightening_sigma`` sigma brighter than the baseline), its baseline, amplitude or noise lie
   outside the training priors recorded in ``model.json`` (``simulation``, ``cadence``; a check
   is skipped where its key is absent), or the event lies off the grid. P(binary) is still
   reported wherever it can be computed.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats

from astrodag.errors import InputDataError
from astrodag.io import write_table
from astrodag.microlensing.experiment import binary_probability, load_cadence_model
from astrodag.microlensing.features import Normalisation, bin_observations, causal_features
from astrodag.microlensing.magnification import pspl_magnification
from astrodag.microlensing.noise import SurveyNoise, fit_error_rescaling, rescale_errors
from astrodag.training.bundle import read_sidecar
from astrodag.training.seeding import select_device

logger = logging.getLogger(__name__)

TIME_NAMES = ("time", "hjd", "bjd", "jd", "mjd", "t")
MAGNITUDE_NAMES = ("magnitude", "mag")
MAGNITUDE_ERROR_NAMES = ("error", "err", "mag_err", "magnitude_error", "sigma", "e_mag")
FLUX_NAMES = ("flux",)
FLUX_ERROR_NAMES = ("flux_err", "flux_error", "ferr", "e_flux")
DIFFERENCE_FLUX_NAMES = ("delta_flux", "dflux", "diff_flux", "difference_flux", "delta_f", "df")
DIFFERENCE_FLUX_ERROR_NAMES = ("delta_flux_err", "dflux_err", "diff_flux_err", "difference_flux_err", "delta_f_err",
                               "df_err", "e_dflux") + FLUX_ERROR_NAMES
PRINTED_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
OUT_OF_DISTRIBUTION = "not a microlensing event / out of distribution"
# A blended PSPL has 5 parameters; fewer steps cannot tell an event from noise.
MIN_OBSERVED_STEPS = 10
# Fewer baseline points than this leave the errors as reported (k = 1, eps = 0).
MIN_RESCALING_POINTS = 10
# Points with |t - t0| > BASELINE_TAU tE (u > 2, A < 1.06) are the baseline for error renormalisation.
BASELINE_TAU = 2.0
# Used where model.json does not record the observation settings (its defaults, Penny et al. 2019).
DEFAULT_OBSERVATION = {"delta_chi2_threshold": 160.0, "brightening_sigma": 3.0, "brightening_points": 3}
# Tolerances of the prior checks: the reference image's baseline is uncertain by ~0.1 mag at most,
# and noise within a factor 3 of the trained error model is still the regime the model has seen.
BASELINE_TOLERANCE_MAG = 0.5
NOISE_TOLERANCE = 3.0
# Dimming by more than this (and 5 sigma) cannot be lensing: a lens only brightens its source.
MAX_DIMMING_MAG = 0.5
# What classify reads from model.json.
SIDECAR_KEYS = ("inputs", "architecture", "time_grid", "normalisation")


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {column.lower().strip(): column for column in columns}
    return next((lowered[name] for name in names if name in lowered), None)


def read_photometry(path: str | Path, flux: bool = False, difference_flux: bool = False,
                    reference_flux: float | None = None, zeropoint: float | None = None) -> pd.DataFrame:
    """Read a photometry file into columns ``time``, ``magnitude``, ``error`` (sorted by time).

    Parameters
    ----------
    path : str or Path
        CSV or whitespace-separated text. With a header, the columns are found by name: time
        (time/hjd/bjd/jd/mjd), then difference flux (delta_flux/dflux/diff_flux/difference_flux/
        delta_f/df + an error such as dflux_err or flux_err), flux (flux + flux_err) or magnitude
        (magnitude/mag + error/err/mag_err). Without a header, the first three columns are time,
        value, error (OGLE's ``phot.dat``: magnitudes).
    flux, difference_flux : bool
        The values are fluxes / difference fluxes (needed for files without a header).
    reference_flux : float, optional
        Flux of the source on the reference image, in the units of the difference fluxes;
        required for them (``F = F_ref + Delta F``).
    zeropoint : float, optional
        Magnitude zero point of the fluxes; without it they become instrumental magnitudes
        ``-2.5 log10 F``, which the classifier treats as uncalibrated.

    Returns
    -------
    pandas.DataFrame
        ``time``, ``magnitude``, ``error``; ``attrs["kind"]`` is "magnitude", "flux" or
        "difference flux" and ``attrs["calibrated"]`` says whether the magnitudes have a zero point.
        Rows with non-finite values or errors <= 0 are dropped (and counted in the log), as are
        total fluxes <= 0.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "file does not exist")
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip() and line[0] not in "#\\|"]
    if not lines:
        raise InputDataError(path, "no data lines")
    separator = "," if "," in lines[0] else r"\s+"
    first = pd.Series(lines[0].replace(",", " ").split())
    has_header = pd.to_numeric(first, errors="coerce").isna().any()
    try:
        table = pd.read_csv(path, sep=separator, comment="#", header=0 if has_header else None, engine="python")
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError, ValueError) as error:
        raise InputDataError(path, f"cannot parse as a table ({error})") from error
    if table.empty:
        raise InputDataError(path, "no data rows (a header only)")
    if has_header:
        columns = [str(c) for c in table.columns]
        if difference_flux or (not flux and _pick(columns, DIFFERENCE_FLUX_NAMES)):
            kind, values, errors = "difference flux", DIFFERENCE_FLUX_NAMES, DIFFERENCE_FLUX_ERROR_NAMES
        elif flux or (_pick(columns, MAGNITUDE_NAMES) is None and _pick(columns, FLUX_NAMES)):
            kind, values, errors = "flux", FLUX_NAMES, FLUX_ERROR_NAMES
        else:
            kind, values, errors = "magnitude", MAGNITUDE_NAMES, MAGNITUDE_ERROR_NAMES
        picked = [_pick(columns, TIME_NAMES), _pick(columns, values), _pick(columns, errors)]
        if None in picked:
            raise InputDataError(path, f"needs columns time, {kind}, error ({values[0]}, {errors[0]} or aliases);"
                                       f" found {', '.join(columns)}")
        data = table[picked]
    else:
        if table.shape[1] < 3:
            raise InputDataError(path, f"needs at least 3 columns (time, value, error), found {table.shape[1]}")
        data = table.iloc[:, :3]
        kind = "difference flux" if difference_flux else "flux" if flux else "magnitude"
    if kind == "difference flux" and reference_flux is None:
        raise InputDataError(path, "holds difference fluxes (Delta F): give the source's reference flux in the same"
                                   " units (--reference-flux F_ref; F = F_ref + Delta F)")
    if kind == "difference flux" and not (np.isfinite(reference_flux) and reference_flux > 0):
        raise InputDataError(path, f"the reference flux must be finite and > 0, got {reference_flux}")
    data = data.apply(pd.to_numeric, errors="coerce")
    data.columns = ["time", "value", "error"]
    valid = np.isfinite(data.to_numpy()).all(axis=1) & (data["error"] > 0).to_numpy()
    dropped = int((~valid).sum())
    data = data[valid]
    if dropped:
        logger.warning("%s: dropped %d of %d rows (non-numeric, non-finite or error <= 0)", path, dropped, len(valid))
    if kind != "magnitude":
        total = data["value"].to_numpy(float) + (reference_flux if kind == "difference flux" else 0.0)
        positive = total > 0
        if not positive.all():
            logger.warning("%s: dropped %d of %d rows with total flux <= 0%s", path, int((~positive).sum()),
                           len(positive), " (check --reference-flux)" if kind == "difference flux" else "")
        data, total = data[positive], total[positive]
        magnitude = (zeropoint or 0.0) - 2.5 * np.log10(total)
        error = 2.5 / np.log(10) * data["error"].to_numpy(float) / total
    else:
        magnitude, error = data["value"].to_numpy(float), data["error"].to_numpy(float)
    if len(data) == 0:
        raise InputDataError(path, "no valid observations left")
    frame = pd.DataFrame({"time": data["time"].to_numpy(float), "magnitude": magnitude, "error": error})
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    frame.attrs.update(kind=kind, calibrated=kind == "magnitude" or zeropoint is not None)
    return frame


@dataclass(frozen=True)
class BaselineFit:
    """A blended PSPL fit in flux (``F_s A + F_b``) and the constant model it is compared with.

    ``reference_mag`` is the magnitude of ``F_s + F_b``; ``model_mag`` the PSPL model at each
    observation; ``constant_mag`` the weighted mean; ``baseline`` marks the points with
    ``|t - t0| > 2 tE`` (all points if the fit found no brightening).
    """

    reference_mag: float
    t0: float
    u0: float
    tE: float
    model_mag: np.ndarray
    constant_mag: float
    baseline: np.ndarray


def _linear_fluxes(magnification, flux, weight):
    """Weighted least-squares ``F_s, F_b`` of ``flux ~ F_s A + F_b`` (``F_s >= 0``: a lens only brightens)."""
    design = np.stack([magnification, np.ones_like(magnification)], axis=1) * weight[:, None]
    (source, blend), *_ = np.linalg.lstsq(design, flux * weight, rcond=None)
    if not source > 0:
        return 0.0, float(np.sum(flux * weight**2) / np.sum(weight**2))
    return float(source), float(blend)


def fit_baseline(times, magnitudes, errors) -> BaselineFit:
    """Fit a blended PSPL to magnitudes (in flux, where blending is linear) and return its baseline.

    ``t0``, ``u0`` and ``log10 tE`` are fitted by ``scipy.optimize.least_squares`` from a few
    starts (the brightest points, tE of 3, 20 and 100 days); ``F_s`` and ``F_b`` are solved
    linearly at every step. Fewer than 6 points give the constant model only.
    """
    times, magnitudes, errors = (np.asarray(a, dtype=np.float64) for a in (times, magnitudes, errors))
    offset = float(np.median(magnitudes))
    # Fluxes relative to the median; clipped so that nonsense magnitudes cannot overflow.
    flux = 10.0 ** (-0.4 * np.clip(magnitudes - offset, -100.0, 100.0))
    weight = 1.0 / (0.4 * np.log(10.0) * flux * errors)
    constant_flux = float(np.sum(flux * weight**2) / np.sum(weight**2))
    constant_mag = offset - 2.5 * np.log10(constant_flux)
    everywhere = np.ones(times.size, dtype=bool)
    constant = BaselineFit(constant_mag, float("nan"), float("nan"), float("nan"),
                           np.full(times.size, constant_mag), constant_mag, everywhere)
    if times.size < 6:
        return constant

    def residuals(params):
        magnification = pspl_magnification(times, params[0], params[1], 10.0 ** params[2])[0]
        source, blend = _linear_fluxes(magnification, flux, weight)
        return (flux - source * magnification - blend) * weight

    span = times[-1] - times[0]
    bounds = ([times[0] - span, 1e-4, -1.0], [times[-1] + span, 3.0, 4.0])
    brightest = times[np.argsort(magnitudes)[:3]]
    best = None
    for t0 in brightest:
        for tE in (3.0, 20.0, 100.0):
            start = np.clip([t0, 0.3, np.log10(tE)], bounds[0], bounds[1])
            fit = optimize.least_squares(residuals, start, bounds=bounds, x_scale=[max(tE, 1.0), 0.3, 0.5])
            if best is None or fit.cost < best.cost:
                best = fit
    t0, u0, tE = float(best.x[0]), float(best.x[1]), float(10.0 ** best.x[2])
    magnification = pspl_magnification(times, t0, u0, tE)[0]
    source, blend = _linear_fluxes(magnification, flux, weight)
    if source == 0.0 or source + blend <= 0:
        return constant
    model_mag = offset - 2.5 * np.log10(np.maximum(source * magnification + blend, 1e-300))
    baseline = np.abs(times - t0) > BASELINE_TAU * tE
    if baseline.sum() < MIN_RESCALING_POINTS:
        baseline = everywhere
    return BaselineFit(offset - 2.5 * np.log10(source + blend), t0, u0, tE, model_mag, constant_mag, baseline)


def renormalise_errors(residuals, errors) -> tuple[float, float]:
    """Skowron et al. (2016) scale ``k`` from baseline residuals (``noise.fit_error_rescaling``); ``eps = 0``.

    The floor ``eps`` describes how the error grows towards bright stars, which Skowron et al. fit
    over the stars of a field; the baseline of one star spans too little magnitude to constrain
    it, and errors computed from the observed flux would sort the points by their own residuals
    if binned by error. So one bin, ``eps = 0``: ``k^2`` is the reduced chi^2 of the baseline.
    Outliers beyond 4 sigma (``scipy.stats.sigmaclip`` of ``residual / error``) are not Gaussian
    scatter and are left out; with fewer than ``MIN_RESCALING_POINTS`` points left the errors stay
    as reported (1, 0).
    """
    normalised = residuals / errors
    _, low, high = stats.sigmaclip(normalised, 4.0, 4.0)
    kept = (normalised >= low) & (normalised <= high)
    if kept.sum() < MIN_RESCALING_POINTS:
        return 1.0, 0.0
    return fit_error_rescaling(residuals[kept], errors[kept], floor=0.0, bins=1)


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return int(np.max(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1), initial=0))


def _range(priors: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    value = priors.get(key)
    return (float(min(value)), float(max(value))) if isinstance(value, Sequence) and len(value) == 2 else None


def out_of_distribution_reasons(sidecar: Mapping[str, Any], *, observed_steps: int, calibrated: bool,
                                reference_mag: float, delta_chi2: float, bright_run: int,
                                brightening_mag: float, dimming_mag: float, baseline_error: float,
                                peak_before_grid: bool) -> list[str]:
    """Why a file is not an event the model was trained on (empty list: it is).

    ``brightening_mag`` / ``dimming_mag`` are the largest significant (> 5 sigma) excursions of
    the binned steps above / below the baseline; ``baseline_error`` the median renormalised
    error of a baseline point. Prior checks use ``sidecar["simulation"]`` (priors, optionally
    under ``"priors"``) and ``sidecar["cadence"]`` (``depth_mag``, ``error_floor_mag``) and are
    skipped where a key is absent.
    """
    observation = {**DEFAULT_OBSERVATION, **sidecar.get("observation", {})}
    simulation = sidecar.get("simulation", {})
    priors = simulation.get("priors", simulation) if isinstance(simulation, Mapping) else {}
    cadence = sidecar.get("cadence") if isinstance(sidecar.get("cadence"), Mapping) else {}
    if observed_steps < MIN_OBSERVED_STEPS:
        return [f"too few observed steps on the model's grid ({observed_steps} < {MIN_OBSERVED_STEPS})"]
    reasons = []
    points, sigma = int(observation["brightening_points"]), float(observation["brightening_sigma"])
    if delta_chi2 < observation["delta_chi2_threshold"] or bright_run < points:
        reasons.append(f"no significant brightening against a constant model (PSPL delta chi2 {delta_chi2:.1f},"
                       f" threshold {observation['delta_chi2_threshold']:g}; longest run of steps >= {sigma:g} sigma"
                       f" brighter than the baseline: {bright_run}, needed {points})")
    baseline_range = _range(priors, "baseline_mag")
    if calibrated and baseline_range and not (baseline_range[0] - BASELINE_TOLERANCE_MAG <= reference_mag
                                              <= baseline_range[1] + BASELINE_TOLERANCE_MAG):
        reasons.append(f"baseline magnitude {reference_mag:.2f} outside the training prior {list(baseline_range)}")
    rho_range = _range(priors, "rho")
    if rho_range:
        # Largest magnification of a uniform source of radius rho at u0 = 0 (Witt & Mao 1994).
        largest = 2.5 * np.log10(np.sqrt(1.0 + 4.0 / rho_range[0] ** 2))
        if brightening_mag > largest:
            reasons.append(f"brightening of {brightening_mag:.1f} mag exceeds the largest in training"
                           f" ({largest:.1f} mag for rho >= {rho_range[0]:g})")
    if dimming_mag > MAX_DIMMING_MAG:
        reasons.append(f"dims by {dimming_mag:.1f} mag below the baseline: lensing only brightens")
    if {"depth_mag", "error_floor_mag"} <= set(cadence) and baseline_range:
        noise = SurveyNoise(float(cadence["depth_mag"]), float(cadence["error_floor_mag"]))
        low, high = (float(noise.sigma(m)) for m in baseline_range)
        if not low / NOISE_TOLERANCE <= baseline_error <= high * NOISE_TOLERANCE:
            reasons.append(f"baseline errors of {baseline_error:.3g} mag outside the training noise"
                           f" ({low:.3g}-{high:.3g} mag, tolerance x{NOISE_TOLERANCE:g})")
    if peak_before_grid:
        reasons.append("the brightening peaked before the grid starts (time span off the grid; set --start)")
    return reasons


def _check_sidecar(sidecar: Any, path: Path) -> Mapping[str, Any]:
    """Refuse a model.json that is not a cadence model's (another track's, or a hand-made one) before it is used."""
    missing = [key for key in SIDECAR_KEYS if key not in sidecar] if isinstance(sidecar, Mapping) else SIDECAR_KEYS
    grid = sidecar.get("time_grid") if not missing else None
    if missing or not isinstance(grid, Mapping) or not {"epochs", "steps"} & set(grid):
        raise InputDataError(path, "not the sidecar of a microlensing cadence model (needs "
                                   f"{', '.join(SIDECAR_KEYS)}, time_grid with its epochs)")
    return sidecar


def _grid(sidecar: Mapping[str, Any]) -> tuple[int, float]:
    grid = sidecar["time_grid"]
    n_steps = int(grid.get("steps", grid.get("epochs")))
    return n_steps, float(grid.get("step_days", grid["duration_days"] / n_steps))


def classify_photometry(photometry: pd.DataFrame, sidecar: Mapping[str, Any], model: torch.nn.Module,
                        device: torch.device, start: float | None = None, name: str = "") -> tuple[dict, pd.DataFrame]:
    """Classify one light curve (a :func:`read_photometry` frame); returns its summary row and time series."""
    n_steps, step_days = _grid(sidecar)
    duration = n_steps * step_days
    times = photometry["time"].to_numpy(float)
    if start is None:
        start = max(times[0], times[-1] - duration + step_days / 2)
    on_grid = (times >= start) & (times < start + duration)
    row: dict[str, Any] = {"file": name, "observations": len(photometry), "used": int(on_grid.sum()),
                           "grid_start": float(start)}
    if not on_grid.any():
        row.update(epochs_observed=0, classification=OUT_OF_DISTRIBUTION,
                   reason=f"no observation on the model's grid [{start:g}, {start + duration:g}) (check --start)")
        return row, pd.DataFrame()
    if not on_grid.all():
        logger.warning("%s: %d observations fall outside the %.0f-day grid and are not used", name,
                       int((~on_grid).sum()), duration)
    times = times[on_grid]
    magnitudes = photometry["magnitude"].to_numpy(float)[on_grid]
    errors = photometry["error"].to_numpy(float)[on_grid]

    fit = fit_baseline(times, magnitudes, errors)
    scale, floor = renormalise_errors(magnitudes[fit.baseline] - fit.model_mag[fit.baseline], errors[fit.baseline])
    errors = rescale_errors(errors, scale, floor)
    delta_chi2 = float(np.sum(((magnitudes - fit.constant_mag) / errors) ** 2)
                       - np.sum(((magnitudes - fit.model_mag) / errors) ** 2))

    binned = bin_observations(times, magnitudes, errors, n_steps, step_days, start)
    counts = binned["counts"]
    observed = np.flatnonzero(counts > 0)
    excess = (fit.reference_mag - binned["magnitudes"]) / np.where(counts > 0, binned["errors"], np.inf)
    observation = {**DEFAULT_OBSERVATION, **sidecar.get("observation", {})}
    bright_run = _longest_run(excess[observed] >= observation["brightening_sigma"])
    significant = np.abs(excess[observed]) > 5.0
    change = (fit.reference_mag - binned["magnitudes"][observed])[significant]
    reasons = out_of_distribution_reasons(
        sidecar, observed_steps=len(observed), calibrated=bool(photometry.attrs.get("calibrated", True)),
        reference_mag=fit.reference_mag, delta_chi2=delta_chi2, bright_run=bright_run,
        brightening_mag=float(np.max(change, initial=0.0)), dimming_mag=float(np.max(-change, initial=0.0)),
        baseline_error=float(np.median(errors[fit.baseline])),
        peak_before_grid=bool(np.isfinite(fit.t0) and fit.t0 + fit.tE < start),
    )

    features = Normalisation.from_dict(sidecar["normalisation"]).apply(causal_features(
        binned["magnitudes"], binned["errors"], counts, binned["scatter"], fit.reference_mag, step_days))
    with torch.inference_mode():
        probability = binary_probability(model(torch.from_numpy(features)[None].to(device)))[0]
    probability = probability.cpu().numpy().astype(np.float64)
    last = observed[-1]
    row.update({
        "epochs_observed": len(observed),
        "last_epoch_time": float(start + step_days * last),
        "reference_mag": fit.reference_mag,
        "error_scale": float(scale),
        "error_floor": float(floor),
        "delta_chi2": delta_chi2,
        "p_binary_last": float(probability[last]),
        "p_binary_max": float(probability[: last + 1].max()),
        "classification": OUT_OF_DISTRIBUTION if reasons else
        "binary" if probability[last] >= 0.5 else "single lens (PSPL)",
        "reason": "; ".join(reasons),
    })
    for fraction in PRINTED_FRACTIONS:
        step = observed[max(int(np.ceil(fraction * len(observed))) - 1, 0)]
        row[f"p_binary_at_{int(fraction * 100)}pct"] = float(probability[step])
    seen = counts[: last + 1] > 0
    series = pd.DataFrame({
        "time": start + step_days * np.arange(last + 1),
        "observations": counts[: last + 1],
        "magnitude": np.where(seen, binned["magnitudes"][: last + 1], np.nan),
        "error": np.where(seen, binned["errors"][: last + 1], np.nan),
        "p_binary": probability[: last + 1],
    })
    return row, series


def classify_files(
    paths: Sequence[str | Path],
    model_path: str | Path,
    sidecar_path: str | Path,
    flux: bool = False,
    difference_flux: bool = False,
    reference_flux: float | Sequence[float] | None = None,
    zeropoint: float | None = None,
    start: float | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """P(binary) over time for each file; one summary row per file (see the module docstring).

    ``reference_flux`` is one value for every file or one per file. With ``output_dir`` each
    file's time series (time, observations, magnitude, error, p_binary per step) is written to
    ``<output_dir>/<file stem>.csv``.
    """
    references = list(np.atleast_1d(reference_flux)) if reference_flux is not None else [None]
    if len(references) not in (1, len(paths)):
        raise InputDataError(paths[0], f"give one reference flux or one per file ({len(paths)}), got {len(references)}")
    references = references * len(paths) if len(references) == 1 else references
    if not Path(model_path).is_file():  # named before its sidecar, which the user may not have given
        raise InputDataError(model_path, "model file does not exist: train a cadence model first (astrodag"
                                         " microlensing train)")
    sidecar = read_sidecar(sidecar_path, _check_sidecar)
    torch_device = select_device(device)
    model = load_cadence_model(model_path, sidecar, torch_device, sidecar_path)
    rows = []
    for path, reference in zip(paths, references):
        path = Path(path)
        photometry = read_photometry(path, flux=flux, difference_flux=difference_flux, reference_flux=reference,
                                     zeropoint=zeropoint)
        row, series = classify_photometry(photometry, sidecar, model, torch_device, start, str(path))
        if row["reason"]:
            logger.warning("%s: %s: %s", path, OUT_OF_DISTRIBUTION, row["reason"])
        rows.append(row)
        if output_dir is not None and not series.empty:
            write_table(Path(output_dir) / f"{path.stem}.csv", series)
    return pd.DataFrame(rows)
