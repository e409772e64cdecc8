"""Transient candidates: 5-sigma peaks of the ZOGY significance image with shape cuts.

1. Peaks: local maxima of S_corr above ``threshold`` (photutils ``find_peaks``), masked pixels
   excluded, at most ``max_candidates`` (the most significant) in the table; all of them are
   counted (:func:`assess_detection`). Positions are refined to
   sub-pixel precision by a parabola through the peak and its neighbours along each axis;
   ``npix`` is the size of the connected region above the threshold.
2. Shape, measured on the proper difference image D, whose PSF P_D is known (photutils
   ``DAOStarFinder`` with the P_D FWHM at the peak positions): ``sharpness`` and the two
   roundness statistics. In D a cosmic ray or hot pixel is much sharper than P_D
   (``sharpness`` above the range), extended residuals (galaxy cores, bad subtraction)
   flatter (below the range), trails and streaks elongated.
   Because DAOFIND's sharpness is noisy at low S/N (a hot pixel in D scores about 1.3,
   a point source 0.5 +- 0.3), cosmic rays are also caught by their *concentration*
   ``c = max(D) / max(S) * F_S / (F_D max(P_D))`` (maxima over the 3x3 pixels at the peak):
   a point source ``alpha F_D P_D`` in D has ``S = alpha F_D^2 sum(P_D^2)``, so c = 1, and a
   single hot pixel has ``c = sum(P_D^2) / max(P_D)^2`` (about 5 at FWHM 3 px), whatever
   their brightness and the per-pixel variance (S, unlike S_corr, does not depend on it).
3. Dipoles (a misregistered or PSF-mismatched star): a negative S_corr lobe within
   ``dipole_radius_fwhm`` of the peak whose depth is between ``dipole_ratio`` and
   ``1 / dipole_ratio`` times the peak, as the two lobes of one residual are. A much deeper
   trough is another object's residual next to a genuine positive source (measured on the
   synthetic survey: transients beside the negative residual of a star that is brighter in
   the reference), not a dipole.

The cuts are loose on purpose: a real transient they reject is lost, a bogus one they keep is
left to the real/bogus classifier. At S/N 6-10 the statistics of true point sources scatter
widely (measured on the benchmark pairs: sharpness 0.16-0.87 and |roundness| < 0.75 for 90 %,
extremes 1.9 and 1.2), so the defaults (sharpness in [-0.2, 1.5], |roundness| <= 1.2) keep
about 98 % of them while hot pixels (sharpness 5-15) and smeared residuals (sharpness < -0.3,
|roundness| > 1.3) go.

A failed subtraction (a wrong flux ratio, PSF or registration, a wrong noise model) shows as
far more peaks than any sky has transients: :func:`assess_detection` declares it failed above
``failure_peaks_per_megapixel`` (of unmasked pixels; at least ``failure_min_peaks``), and
:func:`diagnose_subtraction` says which of the pair's measurements in difference.json is out
of range. A good subtraction leaves a few false peaks per million pixels (about 20 is the
issue-16 target on a crowded field), so the default 1000 is far from a working pair.

Every peak (up to ``max_candidates``) is a row of ``candidates.csv``; ``kept`` is False with ``reject_reason`` one of
``dipole``, ``cosmic_ray``, ``extended``, ``elongated``, ``small`` (first failing test in that
order; empty for kept rows, which pandas reads back as NaN unless ``keep_default_na=False``).
``flux`` is the PSF-fit flux of the transient, S / F_S, in science-image units.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.settings import Settings, interval, number, setting

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("candidate_id", "x", "y", "ra", "dec", "significance", "flux", "sharpness", "roundness1",
                     "roundness2", "npix", "is_dipole", "kept", "reject_reason")
REJECT_REASONS = ("dipole", "cosmic_ray", "extended", "elongated", "small")


@dataclass(frozen=True)
class DetectSettings(Settings):
    """Candidate detection (config ``supernova.detection``).

    Keys
    ----
    threshold : float, default 5.0
        Detection threshold on S_corr (sigma).
    sharpness_range : [float, float], default [-0.2, 1.5]
        Accepted DAOFIND sharpness on D: above, a cosmic ray; below, extended.
    max_concentration : float, default 3.0
        Above this concentration (1 for a point source, ~5 for a hot pixel), a cosmic ray.
    roundness_max : float, default 1.2
        Largest accepted |roundness1| and |roundness2|.
    dipole_ratio : float, default 0.5
        A negative lobe between this fraction and its inverse times the peak makes a dipole.
    dipole_radius_fwhm : float, default 2.0
        Search radius of the negative lobe, in FWHMs of P_D.
    min_npix : int, default 1
        Smallest accepted number of connected pixels above the threshold.
    max_candidates : int, default 1000
        Most significant peaks kept in the table per image (all are counted).
    failure_peaks_per_megapixel : float, default 1000
        More peaks above the threshold than this per million unmasked pixels and the
        subtraction is declared failed (see the module notes).
    failure_min_peaks : int, default 100
        ... but never for fewer peaks than this (small images).
    """

    PREFIX: ClassVar[str] = "supernova.detection"

    threshold: float = setting(5.0, number(0.0, low_open=True))
    sharpness_range: tuple[float, float] = setting((-0.2, 1.5), interval(-10.0, 10.0))
    max_concentration: float = setting(3.0, number(1.0))
    roundness_max: float = setting(1.2, number(0.0))
    dipole_ratio: float = setting(0.5, number(0.0, 1.0, low_open=True))
    dipole_radius_fwhm: float = setting(2.0, number(0.0, low_open=True))
    min_npix: int = setting(1, number(1, integer=True))
    max_candidates: int = setting(1000, number(1, integer=True))
    failure_peaks_per_megapixel: float = setting(1000.0, number(0.0, low_open=True))
    failure_min_peaks: int = setting(100, number(1, integer=True))


def _refine(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak positions: vertex of the parabola through each peak and its two neighbours."""
    ny, nx = image.shape
    xm, xp = np.clip(x - 1, 0, nx - 1), np.clip(x + 1, 0, nx - 1)
    ym, yp = np.clip(y - 1, 0, ny - 1), np.clip(y + 1, 0, ny - 1)
    centre = image[y, x]

    def vertex(minus, plus):
        curvature = minus - 2 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        return np.clip(np.nan_to_num(step), -0.5, 0.5)

    return x + vertex(image[y, xm], image[y, xp]), y + vertex(image[ym, x], image[yp, x])


def _local_max(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Maximum over the 3x3 pixels around each ``(x, y)`` (clipped at the edges)."""
    ny, nx = image.shape
    return np.max([image[np.clip(y + dy, 0, ny - 1), np.clip(x + dx, 0, nx - 1)]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def detect_candidates(significance: np.ndarray, score: np.ndarray, difference: np.ndarray, mask: np.ndarray,
                      psf: np.ndarray, flux_scale: float, flux_zeropoint: float, wcs,
                      settings: DetectSettings | None = None, fwhm: float | None = None) -> pd.DataFrame:
    """Candidates of one difference image (see the module notes).

    Parameters
    ----------
    significance : numpy.ndarray
        S_corr.
    score : numpy.ndarray
        S (for the flux).
    difference : numpy.ndarray
        D (for the shape statistics).
    mask : numpy.ndarray
        True where the difference is not valid.
    psf : numpy.ndarray
        P_D stamp (unit sum).
    flux_scale : float
        F_S (flux = S / F_S).
    flux_zeropoint : float
        F_D, the flux zero point of D (1 for the Gaussian baseline, whose D is in flux units).
    wcs : astropy.wcs.WCS
        Science WCS, for ``ra, dec``.
    settings : DetectSettings, optional
    fwhm : float, optional
        FWHM of P_D in pixels (fitted to ``psf`` when not given).

    Returns
    -------
    pandas.DataFrame
        Columns ``CANDIDATE_COLUMNS``, most significant first; ``attrs`` holds ``peaks`` (all
        the peaks above the threshold, the table holding at most ``max_candidates``) and
        ``good_pixels`` (unmasked pixels searched), for :func:`assess_detection`.
    """
    from photutils.detection import DAOStarFinder, find_peaks
    from photutils.psf import fit_fwhm

    settings = settings or DetectSettings()
    if fwhm is None:
        fwhm = float(fit_fwhm(psf, fit_shape=psf.shape[0])[0])
    bad = mask | ~np.isfinite(significance)
    sig = np.where(bad, 0.0, significance).astype(np.float32)
    box = max(3, 2 * int(round(0.5 * fwhm)) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no peaks found"
        peaks = find_peaks(sig, settings.threshold, box_size=box)
    counts = {"peaks": 0 if peaks is None else len(peaks), "good_pixels": int(np.count_nonzero(~bad))}
    if peaks is None or len(peaks) == 0:
        empty = pd.DataFrame({name: pd.Series(dtype=_dtype(name)) for name in CANDIDATE_COLUMNS})
        empty.attrs.update(counts)
        return empty
    order = np.argsort(-np.asarray(peaks["peak_value"]), kind="stable")[:settings.max_candidates]
    ix = np.asarray(peaks["x_peak"], int)[order]
    iy = np.asarray(peaks["y_peak"], int)[order]
    if len(peaks) > settings.max_candidates:
        log.warning("%d peaks above %.1f sigma: the table keeps the %d most significant", len(peaks),
                    settings.threshold, settings.max_candidates)
    peak = sig[iy, ix]
    x, y = _refine(sig, ix, iy)

    labels, _ = ndimage.label(sig > settings.threshold)
    sizes = np.bincount(labels.ravel())
    npix = sizes[labels[iy, ix]]

    radius = max(1, int(round(settings.dipole_radius_fwhm * fwhm)))
    trough = ndimage.minimum_filter(np.where(bad, 0.0, significance).astype(np.float32), size=2 * radius + 1)
    depth = -trough[iy, ix]
    is_dipole = (depth > settings.dipole_ratio * peak) & (depth < peak / settings.dipole_ratio)

    clean = np.where(bad, 0.0, difference).astype(np.float32)
    clean_score = np.where(bad, 0.0, score).astype(np.float32)
    top_d, top_s = (_local_max(image, ix, iy) for image in (clean, clean_score))
    with np.errstate(divide="ignore", invalid="ignore"):
        concentration = top_d / top_s * flux_scale / (flux_zeropoint * float(psf.max()))
    finder = DAOStarFinder(threshold=0.0, fwhm=fwhm, xycoords=np.column_stack([ix, iy]), sharpness_range=None,
                           roundness_range=None, min_separation=0, exclude_border=False)
    sharpness, round1, round2 = (np.full(len(ix), np.nan) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = finder.find_stars(clean)
    if table is not None:
        # Rows come back in the order of xycoords, minus any it could not measure: match by position.
        measured = np.column_stack([np.asarray(table["x_centroid"]), np.asarray(table["y_centroid"])])
        distance, index = cKDTree(measured).query(np.column_stack([ix, iy]), distance_upper_bound=1.5)
        found = np.isfinite(distance)
        for target, column in ((sharpness, "sharpness"), (round1, "roundness1"), (round2, "roundness2")):
            target[found] = np.asarray(table[column], float)[index[found]]

    low, high = settings.sharpness_range
    reasons = np.full(len(ix), "", dtype=object)
    tests = (("small", npix < settings.min_npix),
             ("elongated", (np.abs(round1) > settings.roundness_max) | (np.abs(round2) > settings.roundness_max)),
             ("extended", sharpness < low),
             ("cosmic_ray", (sharpness > high) | (concentration > settings.max_concentration)),
             ("dipole", is_dipole))
    for reason, failed in tests:  # the last assignment wins: the order of REJECT_REASONS
        reasons[np.asarray(failed, bool)] = reason
    ra, dec = wcs.pixel_to_world_values(x, y)
    table = pd.DataFrame({
        "candidate_id": np.arange(1, len(ix) + 1), "x": x, "y": y, "ra": ra, "dec": dec,
        "significance": peak.astype(float), "flux": score[iy, ix].astype(float) / flux_scale,
        "sharpness": sharpness, "roundness1": round1, "roundness2": round2, "npix": npix.astype(int),
        "is_dipole": is_dipole.astype(bool), "kept": reasons == "", "reject_reason": reasons.astype(str),
    })
    table.attrs.update(counts)
    return table


# What diagnose_subtraction calls out of range (the failure modes of issue 16: too few stars for
# the flux ratio or the PSF, a registration that did not converge, a noise model far off).
MIN_PSF_STARS = 10
MIN_MATCHED_STARS = 5
MAX_REGISTRATION_SCATTER_PX = 0.3
MAX_NOISE_MISMATCH = 0.2  # |S_corr robust std - 1| before calibration


def diagnose_subtraction(record: dict) -> list[str]:
    """Why a subtraction may have failed: the measurements of ``difference.json`` out of range.

    Parameters
    ----------
    record : dict
        The pair's ``difference.json``.

    Returns
    -------
    list of str
        One sentence per problem (flux ratio, PSF, registration, noise model), in that order.
    """
    reasons = []
    flux = record.get("flux", {})
    if flux.get("method") in ("unity", "zeropoints"):
        reasons.append(f"flux ratio {flux.get('ratio', float('nan')):.4g} not measured on stars "
                       f"(method {flux['method']}, {flux.get('stars', 0)} usable stars)")
    psf = record.get("psf", {})
    for image in ("science", "reference"):
        method, stars = psf.get(f"{image}_method"), psf.get(f"{image}_stars")
        if method == "gaussian" or (stars is not None and stars < MIN_PSF_STARS):
            reasons.append(f"{image} PSF {method} from {stars} stars")
    alignment = record.get("alignment", {})
    matched = alignment.get("matched_stars")
    scatter = max(alignment.get("registration_scatter_px") or [0.0])
    if matched is not None and matched < MIN_MATCHED_STARS:
        reasons.append(f"registration checked on {matched} matched stars")
    elif scatter > MAX_REGISTRATION_SCATTER_PX:
        reasons.append(f"registration scatter {scatter:.2f} px")
    noise = record.get("noise", {})
    std = noise.get("significance_std_uncalibrated", noise.get("significance_robust_std"))
    if std is not None and abs(std - 1.0) > MAX_NOISE_MISMATCH:
        reasons.append(f"S_corr robust std {std:.2f} before calibration (noise model off)")
    return reasons


def assess_detection(candidates: pd.DataFrame, settings: DetectSettings | None = None,
                     record: dict | None = None) -> dict:
    """Whether the subtraction failed, judged by the number of peaks above the threshold.

    Parameters
    ----------
    candidates : pandas.DataFrame
        :func:`detect_candidates`' table (its ``attrs`` hold the counts).
    settings : DetectSettings, optional
    record : dict, optional
        The pair's ``difference.json``, for the reasons of a failure.

    Returns
    -------
    dict
        ``peaks`` (all above the threshold), ``peaks_per_megapixel`` (of unmasked pixels),
        ``capped`` (the table holds fewer), ``failed`` and ``failure_reasons`` (empty unless
        failed; ``unknown`` when nothing in ``record`` is out of range).
    """
    settings = settings or DetectSettings()
    peaks = int(candidates.attrs.get("peaks", len(candidates)))
    megapixels = candidates.attrs.get("good_pixels", 0) / 1e6
    density = peaks / megapixels if megapixels > 0 else 0.0
    failed = peaks > max(settings.failure_min_peaks, settings.failure_peaks_per_megapixel * megapixels)
    reasons = (diagnose_subtraction(record or {}) or ["unknown"]) if failed else []
    if failed:
        log.warning("subtraction failed: %d peaks above %.1f sigma (%.0f per million pixels); %s", peaks,
                    settings.threshold, density, "; ".join(reasons))
    return {"peaks": peaks, "peaks_per_megapixel": round(density, 1), "capped": peaks > len(candidates),
            "failed": bool(failed), "failure_reasons": reasons}


def _dtype(name: str) -> str:
    if name in ("candidate_id", "npix"):
        return "int64"
    if name in ("is_dipole", "kept"):
        return "bool"
    if name == "reject_reason":
        return "object"
    return "float64"
