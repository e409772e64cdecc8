"""Science / reference flux ratio from many sources, with stated fallbacks.

:func:`template_ratio` needs no PSF model: around each source detected in either image (the
reference is usually the deeper) the noisier image's stamp is fitted as ``r G_s (x) T + c``, ``T``
the other image's own pixels (the template, not a model), ``G_s`` a Gaussian of width ``s``
fitted jointly for all stamps (the seeing change), ``c`` a constant per stamp (local sky and
background-subtraction errors) and ``r`` the ratio. A PSF-fit ratio is only as right as the two
PSF models' normalisations: on real pairs (issue 16) it was off by 3 to 20 % with PSFs estimated
from few or crowded stars, while this fit was within 0.3 % noise-free. Its error is the larger
of a delete-one jackknife over the stamps (independent sources) and the formal one scaled by the
reduced chi-square (the jackknife alone is unstable for a handful of stamps). A seeing change
that is not Gaussian leaves a residual the per-stamp chi-square shows and biases ``r`` through the
weighting only.

:func:`measure_flux_ratio` also measures each matched star in both images by PSF-fit photometry at a
fixed position (:func:`psf_photometry`: amplitude of the image's own unit-sum PSF stamp plus a
local constant, fitted by least squares within ``fit_radius_fwhm``), so that the fluxes carry
exactly the normalisation the subtraction's PSF models assume, and a star's neighbours beyond
the small fit window do not enter. The ratio is the slope through the origin of science flux
against reference flux (:func:`fit_ratio`), weighted by both flux errors and a fractional
scatter fitted to the data (photon noise, PSF-model and crowding errors), with blends, variables
and mismatches removed by sigma clipping; its standard error is the weighted least-squares one.

Fallbacks, in this order, each with a ``log.warning`` giving the reason:

1. ``template``: at least ``min_stars`` stamps kept by the template fit;
2. ``stars``: at least ``min_stars`` stars kept by the PSF-fit slope;
3. ``zeropoints``: ``10**(0.4 (ZP_sci - ZP_ref)) * A_sci / A_ref``;
4. ``unity``: ``A_sci / A_ref``.

``A_sci / A_ref`` is the pixel-area ratio: resampling keeps surface brightness (the value per
pixel), so a reference of pixel area ``A_ref`` resampled onto science pixels of area ``A_sci``
holds ``A_ref / A_sci`` times its native total flux per source.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from astropy.stats import mad_std, sigma_clip
from scipy import ndimage, optimize

from astrodag.settings import Settings, number, setting
from astrodag.supernova.imaging.kernel import cutouts, select_stamps

log = logging.getLogger(__name__)

STAR_COLUMNS = ("x", "y", "x_ref", "y_ref", "flux", "flux_err", "flux_ref", "flux_ref_err", "used")
TEMPLATE_RADIUS_FWHM = 2.5  # template-fit stamp half-size, in FWHMs of the broader image (as fitted)
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class FluxScaleSettings(Settings):
    """Flux ratio of the pair (config ``supernova.difference.flux``).

    Keys
    ----
    fit_radius_fwhm : float, default 1.5
        Radius (FWHMs of each image's PSF) of the pixels of the PSF fit.
    min_snr : float, default 20.0
        Stars with a flux S/N below this in either image are not used.
    min_stars : int, default 5
        Fewer stars kept by the fit and the ratio falls back (see the module notes).
    max_stars : int, default 3000
        Brightest matched stars measured (bounds the time: about 20 us a star).
    clip_sigma : float, default 3.0
        Stars whose normalised residual from the fitted slope exceeds this many robust standard
        deviations are dropped (blends, variables, mismatches) and the slope refitted.
    max_template_error : float, default 0.05
        The template fit's ratio is used only when its relative standard error is below this;
        else it is not a measurement (faint photon-counting stamps: measured 0.015 +- 0.027 on a
        pair whose stars give 2.62) and the PSF photometry of the stars is next.
    """

    PREFIX: ClassVar[str] = "supernova.difference.flux"

    fit_radius_fwhm: float = setting(1.5, number(0.5, 10.0))
    min_snr: float = setting(20.0, number(0.0))
    min_stars: int = setting(5, number(3, integer=True))
    max_stars: int = setting(3000, number(1, integer=True))
    clip_sigma: float = setting(3.0, number(1.5))
    max_template_error: float = setting(0.05, number(0.0, low_open=True))


@dataclass
class FluxScale:
    """Science / reference flux ratio of the same sources.

    Attributes
    ----------
    ratio : float
        Multiply the (resampled) reference by it to put it in science-image units.
    error : float
        Standard error of ``ratio`` (NaN when not measured from stars).
    n_stars : int
        Stamps or stars behind the ratio (kept by the clipping; 0 for a fallback).
    method : str
        ``template``, ``stars``, ``zeropoints`` or ``unity``.
    reason : str
        Why the ratio was not measured ("" when it was).
    stars : pandas.DataFrame
        The stars measured (:data:`STAR_COLUMNS`; ``used``: kept by the fit).
    """

    ratio: float
    error: float
    n_stars: int
    method: str
    reason: str = ""
    stars: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(STAR_COLUMNS)))


def psf_photometry(data: np.ndarray, rms: np.ndarray | float, bad: np.ndarray | None, psf: np.ndarray,
                   x: np.ndarray, y: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-position PSF-fit fluxes: ``data ~ flux * psf(. - (x, y)) + background`` within ``radius``.

    The unit-sum PSF stamp is shifted to each star's sub-pixel position (cubic spline) and the two
    amplitudes are solved by unweighted least squares over the pixels within ``radius`` (the sky
    noise is flat on that scale); the flux error is propagated from ``rms`` at the star.

    Returns
    -------
    flux, flux_err : numpy.ndarray
    ok : numpy.ndarray
        Bool: the window is inside the image and free of ``bad`` pixels.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    reach = int(math.ceil(radius))
    ny, nx = data.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix >= reach) & (ix < nx - reach) & (iy >= reach) & (iy < ny - reach)
    ix, iy = np.where(inside, ix, reach), np.where(inside, iy, reach)
    offsets = np.arange(-reach, reach + 1)
    rows = (iy[:, None] + offsets)[:, :, None]
    cols = (ix[:, None] + offsets)[:, None, :]
    stamps = data[rows, cols].astype(float)
    ok = inside & np.isfinite(stamps).all(axis=(1, 2))
    if bad is not None:
        ok &= ~bad[rows, cols].any(axis=(1, 2))
    fx, fy = x - ix, y - iy
    window = (offsets[None, :, None] - fy[:, None, None]) ** 2 + (offsets[None, None, :] - fx[:, None, None]) ** 2 \
        <= radius ** 2
    models = np.zeros_like(stamps)
    # The stamp's core, with a margin for the spline, is all the fit window sees.
    half, keep = psf.shape[0] // 2, reach + 3
    padded = np.pad(psf, max(0, keep - half))
    mid = padded.shape[0] // 2
    padded = padded[mid - keep:mid + keep + 1, mid - keep:mid + keep + 1]
    mid = keep
    for k in np.flatnonzero(ok):
        shifted = ndimage.shift(padded, (fy[k], fx[k]), order=3, mode="constant")
        models[k] = shifted[mid - reach:mid + reach + 1, mid - reach:mid + reach + 1]
    w = window.astype(float)
    n = w.sum(axis=(1, 2))
    sp, spp = (w * models).sum(axis=(1, 2)), (w * models ** 2).sum(axis=(1, 2))
    si, sip = (w * np.nan_to_num(stamps)).sum(axis=(1, 2)), (w * models * np.nan_to_num(stamps)).sum(axis=(1, 2))
    det = n * spp - sp ** 2
    noise = rms[iy, ix].astype(float) if np.ndim(rms) else np.full(len(ix), float(rms))
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = (n * sip - sp * si) / det
        flux_err = noise * np.sqrt(n / det)
    ok &= np.isfinite(flux) & (det > 0)
    return np.where(ok, flux, np.nan), np.where(ok, flux_err, np.nan), ok


def fit_ratio(flux: np.ndarray, flux_err: np.ndarray, flux_ref: np.ndarray, flux_ref_err: np.ndarray,
              clip_sigma: float = 3.0, iterations: int = 10) -> tuple[float, float, float, np.ndarray]:
    """Slope ``k`` of ``flux = k flux_ref`` by weighted least squares through the origin, sigma-clipped.

    The variance of a star's residual is ``flux_err^2 + k^2 flux_ref_err^2 + (s k flux_ref)^2``: both
    fluxes are noisy, and a fractional scatter ``s`` (photon noise, PSF-model and crowding errors,
    which the sky-noise errors lack) is solved for so that the reduced chi-square of the kept stars is
    1; without it the brightest stars, the most informative, would be clipped first. Stars whose
    normalised residual exceeds ``clip_sigma`` (robust standard deviations) are dropped, and the
    slope, ``s`` and weights iterated. The error is the WLS standard error of the slope.

    Returns
    -------
    ratio, error : float
    scatter : float
        The fractional scatter ``s``.
    used : numpy.ndarray
        Bool, the stars kept.
    """
    from scipy.optimize import brentq

    used = np.isfinite(flux) & np.isfinite(flux_ref) & (flux_ref > 0) & np.isfinite(flux_err) \
        & np.isfinite(flux_ref_err)
    if used.sum() < 3:
        return float("nan"), float("nan"), float("nan"), used
    ratio = float(np.median(flux[used] / flux_ref[used]))
    scatter, error = 0.0, float("nan")

    def slope(weight, keep):
        w, s, r = weight[keep], flux[keep], flux_ref[keep]
        return float(np.sum(w * s * r) / np.sum(w * r ** 2)), float(np.sum(w * r ** 2))

    def variance(k, frac):
        return flux_err ** 2 + k ** 2 * flux_ref_err ** 2 + (frac * k * flux_ref) ** 2

    for _ in range(iterations):
        def excess_chi2(frac, keep=used):
            k, _ = slope(1.0 / variance(ratio, frac), keep)
            return np.sum((flux[keep] - k * flux_ref[keep]) ** 2 / variance(k, frac)[keep]) / (keep.sum() - 1) - 1

        scatter = brentq(excess_chi2, 0.0, 10.0) if excess_chi2(0.0) > 0 else 0.0
        weight = 1.0 / variance(ratio, scatter)
        ratio, information = slope(weight, used)
        error = 1.0 / math.sqrt(information)
        z = (flux - ratio * flux_ref) / np.sqrt(variance(ratio, scatter))
        keep = used & (np.abs(z) <= clip_sigma * mad_std(z[used]))
        if np.array_equal(keep, used) or keep.sum() < 3:
            break
        used = keep
    return ratio, error, float(scatter), used


def _template_fit(template: np.ndarray, target: np.ndarray, var_template: np.ndarray, var_target: np.ndarray,
                  bad: np.ndarray, positions: np.ndarray, half: int, sigma_max: float, max_stamps: int,
                  clip_sigma: float) -> tuple[float, float, float, int, int] | None:
    """One template fit (see the module notes): ratio, error, Gaussian sigma, stamps kept and stamps fitted.

    ``target ~ r G_s (x) template + c_k`` on stamps of half-size ``half`` around ``positions``;
    ``s`` in ``[0, sigma_max]`` by a bounded 1-D search, ``r`` and the ``c_k`` linear. Stamps whose
    reduced chi-square is an upper outlier (transients, variables, blends that moved) are dropped
    and the fit repeated. None when fewer than 3 stamps are usable.
    """
    margin = int(math.ceil(4.0 * sigma_max)) + 1
    centres = select_stamps(positions, bad, half + margin, max_stamps)
    if len(centres) < 3:
        return None
    n = len(centres)
    regions = cutouts(template, centres, half + margin).astype(float)
    stamp = slice(margin, margin + 2 * half + 1)
    y = cutouts(target, centres, half).reshape(n, -1).astype(float)
    # The template's noise enters through G_s, whose sum of squares is 1 / (4 pi s^2) (at most ~0.3).
    power = 1.0 / (4.0 * math.pi * max(sigma_max / 2.0, 0.5) ** 2)
    w = 1.0 / (cutouts(var_target, centres, half) + power * cutouts(var_template, centres, half)).reshape(n, -1)
    # A constant per stamp: fit the weighted-mean-subtracted pixels (Frisch-Waugh).
    y = y - (np.sum(w * y, axis=1) / np.sum(w, axis=1))[:, None]

    def terms(sigma):
        smooth = ndimage.gaussian_filter(regions, (0.0, sigma, sigma), mode="constant") if sigma > 0.05 else regions
        a = smooth[:, stamp, stamp].reshape(n, -1)
        a = a - (np.sum(w * a, axis=1) / np.sum(w, axis=1))[:, None]
        return np.sum(w * a * y, axis=1), np.sum(w * a * a, axis=1), a

    def chi2(sigma, keep):
        num, den, a = terms(sigma)
        ratio = num[keep].sum() / den[keep].sum()
        return np.sum(w * (y - ratio * a) ** 2, axis=1)

    keep = np.ones(n, bool)
    for _ in range(5):
        sigma = optimize.minimize_scalar(lambda s: chi2(s, keep)[keep].sum(), bounds=(0.0, sigma_max),
                                         method="bounded", options={"xatol": 0.01}).x
        per_stamp = chi2(sigma, keep) / y.shape[1]
        if keep.sum() <= 3:
            break
        clipped = sigma_clip(np.log(per_stamp[keep]), sigma_lower=np.inf, sigma_upper=clip_sigma, maxiters=1,
                             cenfunc="median", stdfunc="mad_std").mask
        if not clipped.any() or keep.sum() - clipped.sum() < 3:
            break
        keep[np.flatnonzero(keep)[clipped]] = False
    num, den, _ = terms(sigma)
    num, den = num[keep], den[keep]
    ratio = float(num.sum() / den.sum())
    dof = keep.sum() * (y.shape[1] - 1) - 2
    formal = math.sqrt(max(float(per_stamp[keep].sum() * y.shape[1] / dof), 1.0) / den.sum())
    jack = (num.sum() - num) / (den.sum() - den)
    jackknife = math.sqrt((len(jack) - 1) / len(jack) * np.sum((jack - jack.mean()) ** 2))
    return ratio, max(formal, jackknife), float(sigma), int(keep.sum()), n


def template_ratio(science: np.ndarray, reference: np.ndarray, science_rms: np.ndarray | float,
                   reference_rms: np.ndarray | float, bad: np.ndarray | None, fwhm_science: float,
                   fwhm_reference: float, positions: np.ndarray, max_stamps: int = 3000,
                   clip_sigma: float = 3.0) -> tuple[float, float, int, float] | None:
    """Science / reference flux ratio by the PSF-model-free template fit (see the module notes).

    The sharper image is the template. The seeing-change Gaussian is searched up to 1.5 times
    the width the two FWHMs imply (at least 1 px, at most the template's FWHM: an estimated FWHM
    may be far off); the stamps are then sized by the fitted width and the fit repeated.

    Parameters
    ----------
    science, reference, science_rms, reference_rms, bad, fwhm_science, fwhm_reference
        As for :func:`measure_flux_ratio`.
    positions : numpy.ndarray
        ``(n, 2)`` centres (x, y) of sources detected in either image, the most significant first.
    max_stamps : int
    clip_sigma : float
        Upper clipping of the stamps' log chi-square (robust standard deviations).

    Returns
    -------
    (ratio, error, n_stamps, sigma) or None
        ``sigma``: the fitted seeing-change Gaussian (pixels; the template is convolved with it).
        None when fewer than 3 stamps are usable.
    """
    shape = science.shape
    bad = np.zeros(shape, bool) if bad is None else bad
    bad = bad | ~np.isfinite(science) | ~np.isfinite(reference)
    var_sci = np.broadcast_to(np.asarray(science_rms, float) ** 2, shape)
    var_ref = np.broadcast_to(np.asarray(reference_rms, float) ** 2, shape)
    # The sharper image is the template (a Gaussian can broaden, not sharpen: a broader template
    # collapses the Gaussian to 0 and leaves the PSF difference in the ratio, measured 60x off).
    ref_is_template = fwhm_reference <= fwhm_science
    if ref_is_template:
        images, fwhms = (reference, np.nan_to_num(science), var_ref, var_sci), (fwhm_reference, fwhm_science)
    else:
        images, fwhms = (science, np.nan_to_num(reference), var_sci, var_ref), (fwhm_science, fwhm_reference)
    template = np.nan_to_num(images[0])
    guess = math.sqrt(max(fwhms[1] ** 2 - fwhms[0] ** 2, 0.0)) * FWHM_TO_SIGMA
    sigma_max = min(max(1.0, 1.5 * guess), fwhms[0])
    fit = None
    for _ in range(2):
        broad = math.hypot(fwhms[0], sigma_max / FWHM_TO_SIGMA / 1.5)
        half = max(3, int(math.ceil(TEMPLATE_RADIUS_FWHM * broad)))
        fit = _template_fit(template, images[1], images[2], images[3], bad, positions, half, sigma_max, max_stamps,
                            clip_sigma) or fit
        if fit is None:
            return None
        sigma_max = min(max(1.0, 1.5 * fit[2]), fwhms[0])
    ratio, error, sigma, kept, _ = fit
    if sigma < 0.05:
        log.warning("template flux ratio: the %s image looks sharper than the less noisy one (Gaussian width 0): "
                    "the ratio may be biased by the PSF difference", "science" if ref_is_template else "reference")
    if not ref_is_template:
        ratio, error = 1.0 / ratio, error / ratio ** 2
    return ratio, error, kept, sigma


def fallback_ratio(reason: str, pixel_area_ratio: float, zeropoints: tuple | None = None,
                   stars: pd.DataFrame | None = None) -> FluxScale:
    """The zero-point ratio (else unity) times the pixel-area ratio, with a warning giving ``reason``."""
    stars = stars if stars is not None else FluxScale(1.0, 0.0, 0, "").stars
    if zeropoints is not None and None not in zeropoints:
        ratio = 10 ** (0.4 * (zeropoints[0] - zeropoints[1])) * pixel_area_ratio
        log.warning("flux ratio NOT measured (%s): %.4g from the zero points %.3f / %.3f and the pixel-area "
                    "ratio %.4g", reason, ratio, zeropoints[0], zeropoints[1], pixel_area_ratio)
        return FluxScale(float(ratio), float("nan"), 0, "zeropoints", reason, stars)
    log.warning("flux ratio NOT measured (%s) and no zero points: the pixel-area ratio %.4g is used as the flux "
                "ratio", reason, pixel_area_ratio)
    return FluxScale(float(pixel_area_ratio), float("nan"), 0, "unity", reason, stars)


def measure_flux_ratio(science: np.ndarray, reference: np.ndarray, science_rms: np.ndarray | float,
                       reference_rms: np.ndarray | float, bad: np.ndarray | None, psf_science: np.ndarray,
                       psf_reference: np.ndarray, fwhm_science: float, fwhm_reference: float,
                       science_xy: np.ndarray, reference_xy: np.ndarray, pixel_area_ratio: float = 1.0,
                       zeropoints: tuple | None = None, settings: FluxScaleSettings | None = None,
                       sources: np.ndarray | None = None) -> FluxScale:
    """Science / reference flux ratio: template fit, else PSF photometry of matched stars (see the module notes).

    Parameters
    ----------
    science, reference : numpy.ndarray
        Background-subtracted images on the same grid.
    science_rms, reference_rms : numpy.ndarray or float
        Their sky noise.
    bad : numpy.ndarray, optional
        Bad pixels of either image (saturated, flagged, uncovered); a star with one in its fit window
        is not used.
    psf_science, psf_reference : numpy.ndarray
        Unit-sum PSF stamps (odd, centred) of the two images.
    fwhm_science, fwhm_reference : float
        Their FWHMs (pixels).
    science_xy, reference_xy : numpy.ndarray
        ``(n, 2)`` positions of the same stars in each image, brightest first.
    pixel_area_ratio : float
        Science / native reference pixel area, for the fallbacks.
    zeropoints : (float or None, float or None), optional
        Science and native reference zero points, for the fallback.
    settings : FluxScaleSettings, optional
    sources : numpy.ndarray, optional
        ``(n, 2)`` positions of the sources detected in either image, the most significant first:
        the template fit's stamp centres (None: no template fit).

    Returns
    -------
    FluxScale
    """
    settings = settings or FluxScaleSettings()
    if sources is not None:
        fit = template_ratio(science, reference, science_rms, reference_rms, bad, fwhm_science, fwhm_reference,
                             np.asarray(sources, float).reshape(-1, 2), settings.max_stars, settings.clip_sigma)
        if fit is not None and fit[2] >= settings.min_stars and fit[0] > 0 \
                and fit[1] < settings.max_template_error * fit[0]:
            log.info("flux ratio %.4f +- %.4f from the template fit of %d stamps (seeing Gaussian %.2f px)", *fit)
            return FluxScale(fit[0], fit[1], fit[2], "template")
        reason = ("fewer than 3 usable stamps" if fit is None
                  else f"{fit[2]} stamps kept, need {settings.min_stars}" if fit[2] < settings.min_stars
                  else f"ratio {fit[0]:.4g} +- {fit[1]:.2g}, relative error above {settings.max_template_error:g}")
        log.warning("template flux ratio NOT measured (%s): trying PSF photometry of the matched stars", reason)
    science_xy = np.asarray(science_xy, float).reshape(-1, 2)[:settings.max_stars]
    reference_xy = np.asarray(reference_xy, float).reshape(-1, 2)[:settings.max_stars]
    if len(science_xy) == 0:
        return fallback_ratio("no matched stars", pixel_area_ratio, zeropoints)
    flux, flux_err, ok = psf_photometry(science, science_rms, bad, psf_science, *science_xy.T,
                                        settings.fit_radius_fwhm * fwhm_science)
    flux_ref, flux_ref_err, ok_ref = psf_photometry(reference, reference_rms, bad, psf_reference, *reference_xy.T,
                                                    settings.fit_radius_fwhm * fwhm_reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = ok & ok_ref & (flux / flux_err >= settings.min_snr) & (flux_ref / flux_ref_err >= settings.min_snr)
    stars = pd.DataFrame({"x": science_xy[:, 0], "y": science_xy[:, 1], "x_ref": reference_xy[:, 0],
                          "y_ref": reference_xy[:, 1], "flux": flux, "flux_err": flux_err, "flux_ref": flux_ref,
                          "flux_ref_err": flux_ref_err}).loc[good].reset_index(drop=True)
    if len(stars) < settings.min_stars:
        return fallback_ratio(f"{len(stars)} of {len(science_xy)} matched stars measurable (unmasked, S/N >= "
                              f"{settings.min_snr:g} in both images; need {settings.min_stars})",
                              pixel_area_ratio, zeropoints, stars.assign(used=False))
    columns = ("flux", "flux_err", "flux_ref", "flux_ref_err")
    ratio, error, scatter, used = fit_ratio(*(stars[c].to_numpy() for c in columns), clip_sigma=settings.clip_sigma)
    stars["used"] = used
    if not (used.sum() >= settings.min_stars and math.isfinite(ratio) and ratio > 0):
        return fallback_ratio(f"{int(used.sum())} stars kept by the clipped fit (need {settings.min_stars}), "
                              f"slope {ratio:.4g}", pixel_area_ratio, zeropoints, stars)
    log.info("flux ratio %.4f +- %.4f from %d of %d stars (fractional scatter %.3g)", ratio, error,
             int(used.sum()), len(stars), scatter)
    return FluxScale(ratio, error, int(used.sum()), "stars", "", stars)
