"""Point-spread function of an image: bright isolated stars -> FWHM and an empirical stacked PSF.

:func:`estimate_psf` works on a background-subtracted image with its noise map:

1. local maxima above 5 sigma (photutils ``find_peaks`` on the S/N image) are every source;
2. PSF stars are the maxima above ``min_snr`` that are isolated (no other maximum within
   ``isolation_fwhm`` FWHMs), away from the edges, without a bad or saturated pixel in their
   stamp and below ``saturation_fraction`` of the saturation level;
3. each is fitted with a pixel-integrated circular Gaussian (photutils ``fit_2dgaussian``)
   for its centre, flux and FWHM; cosmic rays, galaxies and blends are rejected as outliers of
   the FWHM distribution (beyond 3 robust sigma) or by the fit flags;
4. the stamps of the survivors are shifted onto a common sub-pixel centre (cubic spline),
   normalised to unit sum and median-stacked; the stack is windowed to a circle, negative
   (noise) pixels are zeroed and it is renormalised to unit sum. Its FWHM is fitted the same way.

With fewer than ``min_stars`` stars the PSF is a Gaussian with the median FWHM of the stars
found, else the header's FWHM, else ``fallback_fwhm_px``; ``PSF.method`` says which.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from photutils.detection import find_peaks
from photutils.psf import fit_2dgaussian, fit_fwhm
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.settings import Settings, number, setting
from astrodag.simulation.render import gaussian_psf, stamp_size

log = logging.getLogger(__name__)

DETECTION_SNR = 5.0  # maxima above this S/N count as sources for the isolation test
_FAILED_FIT = 2 | 4 | 8  # photutils flags: centre left the box, negative flux, not converged


@dataclass(frozen=True)
class PSFSettings(Settings):
    """PSF estimation (config ``supernova.difference.psf``).

    Keys
    ----
    min_snr : float, default 30.0
        Minimum peak S/N (peak pixel over the local sky noise) of a PSF star.
    max_stars : int, default 30
        Brightest candidate stars fitted (the fit time grows with it: about 6 ms a star).
    min_stars : int, default 5
        Fewer good stars than this and the PSF is a Gaussian (see the module notes).
    isolation_fwhm : float, default 4.0
        A PSF star has no other source within this many FWHMs.
    radius_fwhm : float, default 3.0
        Half-size of the PSF stamp in FWHMs (the stamp is odd, 11 to 63 pixels a side).
    saturation_fraction : float, default 0.8
        Stars whose peak exceeds this fraction of the header's saturation level are left out.
    fallback_fwhm_px : float, default 3.0
        FWHM (pixels) of the Gaussian PSF when no star and no header FWHM is available.
    """

    PREFIX: ClassVar[str] = "supernova.difference.psf"

    min_snr: float = setting(30.0, number(DETECTION_SNR))
    max_stars: int = setting(30, number(1, 1000, integer=True))
    min_stars: int = setting(5, number(1, integer=True))
    isolation_fwhm: float = setting(4.0, number(0.0))
    radius_fwhm: float = setting(3.0, number(1.0, 10.0))
    saturation_fraction: float = setting(0.8, number(0.0, 1.0, low_open=True))
    fallback_fwhm_px: float = setting(3.0, number(0.5, 50.0))


@dataclass
class PSF:
    """The PSF of one image.

    Attributes
    ----------
    image : numpy.ndarray
        Odd square stamp, centred on its middle pixel, unit sum, float64.
    fwhm : float
        FWHM in pixels (fitted to ``image``, or the Gaussian's).
    method : str
        ``empirical`` (stacked stars) or ``gaussian`` (fallback).
    stars : pandas.DataFrame
        Good PSF stars: ``x, y`` (fitted centre, 0-based), ``flux`` (Gaussian-fit flux),
        ``fwhm``, ``snr`` (peak S/N).
    sources : pandas.DataFrame
        Every maximum above 5 sigma: ``x, y`` (peak pixel), ``snr``; brightest first.
    """

    image: np.ndarray
    fwhm: float
    method: str
    stars: pd.DataFrame
    sources: pd.DataFrame

    @property
    def n_stars(self) -> int:
        return len(self.stars) if self.method == "empirical" else 0


def _stamps(data: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """``(n, size, size)`` stamps centred on integer pixels ``(x, y)`` (all inside the image)."""
    half = size // 2
    offsets = np.arange(-half, half + 1)
    rows = (np.asarray(y, int)[:, None] + offsets)[:, :, None]
    cols = (np.asarray(x, int)[:, None] + offsets)[:, None, :]
    return data[rows, cols]


def find_sources(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, fwhm: float) -> pd.DataFrame:
    """Local maxima above 5 sigma: ``x, y`` (peak pixel) and ``snr``, brightest first."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(mask | ~(rms > 0), 0.0, data / rms).astype(np.float32, copy=False)
    np.nan_to_num(snr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    box = max(3, 2 * int(round(0.75 * fwhm)) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no peaks found" is a warning in photutils
        table = find_peaks(snr, DETECTION_SNR, box_size=box)
    if table is None:
        return pd.DataFrame({"x": np.array([], int), "y": np.array([], int), "snr": np.array([], float)})
    frame = pd.DataFrame({"x": np.asarray(table["x_peak"], int), "y": np.asarray(table["y_peak"], int),
                          "snr": np.asarray(table["peak_value"], float)})
    return frame.sort_values("snr", ascending=False, kind="stable").reset_index(drop=True)


def _candidates(data, mask, sources, fwhm, size, settings, saturation) -> pd.DataFrame:
    ny, nx = data.shape
    half = size // 2 + 2
    bright = sources[sources["snr"] >= settings.min_snr]
    inside = (bright["x"] >= half) & (bright["x"] < nx - half) & (bright["y"] >= half) & (bright["y"] < ny - half)
    bright = bright[inside]
    if len(bright) == 0:
        return bright
    if len(sources) > 1 and settings.isolation_fwhm > 0:
        tree = cKDTree(sources[["x", "y"]].to_numpy(float))
        distance, _ = tree.query(bright[["x", "y"]].to_numpy(float), k=2)
        bright = bright[distance[:, 1] > settings.isolation_fwhm * fwhm]
    if len(bright) == 0:
        return bright
    clean = ~_stamps(mask, bright["x"], bright["y"], size).any(axis=(1, 2))
    if saturation is not None:
        clean &= data[bright["y"], bright["x"]] < settings.saturation_fraction * saturation
    return bright[clean].head(settings.max_stars)


def _fit(data, mask, candidates, fwhm) -> pd.DataFrame:
    fit_shape = max(5, 2 * math.ceil(1.2 * fwhm) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-converged fits are flagged and dropped below
        phot = fit_2dgaussian(data, xypos=candidates[["x", "y"]].to_numpy(float), fwhm=fwhm,
                              fix_fwhm=False, fit_shape=fit_shape, mask=mask)
    result = phot.results
    stars = pd.DataFrame({"x": np.asarray(result["x_fit"], float), "y": np.asarray(result["y_fit"], float),
                          "flux": np.asarray(result["flux_fit"], float),
                          "fwhm": np.asarray(result["fwhm_fit"], float),
                          "snr": candidates["snr"].to_numpy(float)})
    flags = np.asarray(result["flags"], int)
    offset = np.hypot(stars["x"].to_numpy() - candidates["x"].to_numpy(),
                      stars["y"].to_numpy() - candidates["y"].to_numpy())
    good = ((flags & _FAILED_FIT) == 0) & np.isfinite(stars.to_numpy()).all(axis=1) \
        & (stars["flux"].to_numpy() > 0) & (stars["fwhm"].to_numpy() > 0.5) & (offset < fwhm)
    stars = stars[good]
    if len(stars) >= 3:
        median = float(np.median(stars["fwhm"]))
        spread = max(1.4826 * float(np.median(np.abs(stars["fwhm"] - median))), 0.05 * median)
        stars = stars[np.abs(stars["fwhm"] - median) <= 3 * spread]
    return stars.reset_index(drop=True)


def _stack(data: np.ndarray, stars: pd.DataFrame, size: int) -> np.ndarray:
    big = size + 4
    x0, y0 = np.round(stars["x"].to_numpy()).astype(int), np.round(stars["y"].to_numpy()).astype(int)
    stamps = np.nan_to_num(_stamps(data, x0, y0, big).astype(np.float64))
    shifted = np.empty((len(stars), size, size))
    for i, (stamp, dx, dy) in enumerate(zip(stamps, stars["x"].to_numpy() - x0, stars["y"].to_numpy() - y0)):
        # Move the fitted centre onto the middle pixel; the 2-pixel margin absorbs the spline's edge.
        moved = ndimage.shift(stamp, (-dy, -dx), order=3, mode="nearest")[2:-2, 2:-2]
        shifted[i] = moved / moved.sum()
    psf = np.median(shifted, axis=0)
    half = size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    psf[(xx ** 2 + yy ** 2) > half ** 2] = 0.0
    np.clip(psf, 0.0, None, out=psf)
    return psf / psf.sum()


def estimate_psf(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, settings: PSFSettings | None = None,
                 fwhm_guess: float | None = None, saturation: float | None = None) -> PSF:
    """Empirical PSF and FWHM of a background-subtracted image (see the module notes).

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted image.
    rms : numpy.ndarray
        Its sky-noise map (1 sigma).
    mask : numpy.ndarray
        True for bad or saturated pixels.
    settings : PSFSettings, optional
    fwhm_guess : float, optional
        Starting FWHM (pixels), e.g. from the header; ``settings.fallback_fwhm_px`` if None.
    saturation : float, optional
        Saturation level of ``data`` (after background subtraction).

    Returns
    -------
    PSF
    """
    settings = settings or PSFSettings()
    mask = mask | ~np.isfinite(data)
    guess = fwhm_guess or settings.fallback_fwhm_px
    stars = pd.DataFrame(columns=["x", "y", "flux", "fwhm", "snr"])
    sources = find_sources(data, rms, mask, guess)
    for _ in range(2):
        size = stamp_size(guess, settings.radius_fwhm)
        candidates = _candidates(data, mask, sources, guess, size, settings, saturation)
        if len(candidates) == 0:
            break
        stars = _fit(data, mask, candidates, guess)
        if len(stars) == 0:
            break
        measured = float(np.median(stars["fwhm"]))
        if abs(measured - guess) <= 0.25 * guess:
            guess = measured
            break
        # The isolation radius, fit box and stamp follow the FWHM: redo them once with the measured one.
        guess = measured
        sources = find_sources(data, rms, mask, guess)
    size = stamp_size(guess, settings.radius_fwhm)
    # The final stamp follows the measured FWHM: keep the stars whose padded stamp fits in the image.
    margin = size // 2 + 3
    ny, nx = data.shape
    stars = stars[(stars["x"] >= margin) & (stars["x"] < nx - margin) & (stars["y"] >= margin)
                  & (stars["y"] < ny - margin)].reset_index(drop=True)
    if len(stars) >= settings.min_stars:
        image = _stack(data, stars, size)
        fwhm = float(fit_fwhm(image, fit_shape=min(size, max(5, 2 * math.ceil(1.5 * guess) + 1)))[0])
        return PSF(image=image, fwhm=fwhm, method="empirical", stars=stars, sources=sources)
    if len(stars):
        fwhm, origin = float(np.median(stars["fwhm"])), f"the median of {len(stars)} stars"
    else:
        fwhm = fwhm_guess or settings.fallback_fwhm_px
        origin = "the header" if fwhm_guess else "supernova.difference.psf.fallback_fwhm_px"
    log.warning("only %d good PSF stars (need %d): Gaussian PSF, FWHM %.2f px from %s",
                len(stars), settings.min_stars, fwhm, origin)
    return PSF(image=gaussian_psf(fwhm, stamp_size(fwhm, settings.radius_fwhm)), fwhm=fwhm, method="gaussian",
               stars=stars, sources=sources)
