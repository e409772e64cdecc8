"""Point-spread function of an image: PSF stars -> FWHM, an unbiased empirical PSF and its variation across the image.

:func:`estimate_psf` works on a background-subtracted image with its noise map:

1. local maxima above 5 sigma (photutils ``find_peaks`` on the S/N image) are every source;
2. PSF stars are the maxima above ``min_snr`` whose core (2 FWHM) is inside the image, without a bad or
   saturated pixel and below ``saturation_fraction`` of the saturation level, with no other source within
   2 FWHM and none within ``isolation_fwhm`` FWHMs brighter than ``neighbour_contrast`` times their peak
   (crowded fields have few isolated stars; fainter neighbours are subtracted below). The brightest are
   taken per cell of the ``grid_cells`` grid (``max_stars`` in all), so that every cell has stars;
3. each is fitted with a pixel-integrated circular Gaussian (photutils ``fit_2dgaussian``) for its centre
   and FWHM; cosmic rays, galaxies and blends are rejected as outliers of the FWHM distribution (beyond
   3 robust sigma) or by the fit flags;
4. every star's stamp loses its own local sky (the median of an annulus outside the stamp, so that the
   PSF's wings are not taken for sky), is shifted onto the middle pixel (cubic spline) and scaled to unit
   flux; a first-pass median stack of them is the model with which the neighbours inside each stamp are
   subtracted (their cores masked); a second pass gives the PSF. Negative pixels are kept (they are noise
   around zero: clipping them pushes flux into the wings). The stamp radius is the larger of
   ``radius_fwhm`` FWHMs and the radius holding ``encircled_energy`` of the light, at most ``max_radius_px``;
5. undersampled data (FWHM below ``undersampled_fwhm``) get photutils' effective PSF (``EPSFBuilder``,
   ``oversampling`` times finer than the pixels) from the same cleaned stamps, evaluated at the pixel
   centres: a spline through an undersampled star is not its profile;
6. the same stamps stacked per cell give the PSF's variation: :meth:`PSF.at` interpolates bilinearly
   between the cell centres. A cell with fewer than ``min_stars_per_cell`` stars borrows the nearest stars
   of its neighbours (and with fewer stars in all than that, every cell is the global PSF). Undersampled
   data have one ePSF for the whole image (an ePSF per cell needs more stars than a cell holds).

Fallback order when stars are few (each step logged): stars above ``min_snr`` with neighbours at most
``neighbour_contrast`` as bright; then stars above a third of ``min_snr`` (at least 10 sigma) with
neighbours up to three times that contrast; then (fewer than ``min_stars``) a Gaussian with the median FWHM
of the stars found when there are at least three (one or two "stars" are as likely a galaxy or a blend),
else the header's FWHM, else ``fallback_fwhm_px``. ``PSF.method`` says which.

A pair of images on one grid can do better than that Gaussian when one of them (usually the shallow science
image) has too few stars and the other an empirical PSF: :func:`matched_psf` fits the poor image as the good
one convolved with a Gaussian, ``poor = a_k (good * G_s)(x - d) + b_k`` on stamps around the brightest
sources seen in both (stars or galaxies alike: the image of any source is blurred the same way), with a free
scale ``a_k`` (flux ratio, per source so that a variable star does not bias the width) and sky ``b_k`` per
stamp, one Gaussian variance ``s`` and one shift ``d`` (the registration's residual, not part of the PSF).
The poor image's PSF is then ``P_good * G_s`` (method ``matched_reference``), its cells likewise. A negative
``s`` means the poor image is the sharper one: that is said and the Gaussian fallback kept.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from photutils.centroids import centroid_2dg
from photutils.detection import find_peaks
from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars, fit_2dgaussian, fit_fwhm
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from astrodag.settings import Settings, number, setting
from astrodag.simulation.render import gaussian_psf

log = logging.getLogger(__name__)

DETECTION_SNR = 5.0  # maxima above this S/N count as sources for the isolation test
CORE_FWHM = 2.0  # a PSF star's core (no neighbour, no bad pixel, inside the image) in FWHMs
NEIGHBOURS_CHECKED = 16  # nearest sources tested against a PSF star's isolation rule
RELAXED_MIN_SNR = 10.0  # the second selection tier never goes below this peak S/N
EPSF_ITERATIONS = 6  # EPSFBuilder iterations: the ePSF changes by < 0.1 % of its peak after about 5
_FAILED_FIT = 2 | 4 | 8  # photutils flags: centre left the box, negative flux, not converged
MEDIAN_FWHM_MIN_STARS = 3  # fewer stars and their median FWHM is not used for the Gaussian fallback
MATCH_MIN_SNR = 10.0  # peak S/N in the poor image of a source fitted by matched_psf
MATCH_MAX_SOURCES = 25  # brightest such sources fitted (more add time, not accuracy, in the tests)
MATCH_MIN_SOURCES = 3  # fewer and no kernel is fitted
MATCH_CLIP = 5.0  # stamps whose reduced chi^2 is this many robust sigma above the median are refitted without
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class PSFSettings(Settings):
    """PSF estimation (config ``supernova.difference.psf``).

    Keys
    ----
    min_snr : float, default 30.0
        Minimum peak S/N (peak pixel over the local sky noise) of a PSF star.
    max_stars : int, default 45
        Brightest candidate stars fitted, spread over the grid cells (the fit takes about 6 ms a star).
    min_stars : int, default 5
        Fewer good stars than this and the PSF is a Gaussian (see the module notes).
    isolation_fwhm : float, default 4.0
        Radius (FWHMs) within which a PSF star's neighbours must be fainter than ``neighbour_contrast``
        times its peak; no neighbour at all is allowed within 2 FWHM.
    neighbour_contrast : float, default 0.1
        Largest peak ratio neighbour / star inside ``isolation_fwhm`` (such neighbours are subtracted with
        a first-pass PSF). 0 asks for isolated stars.
    radius_fwhm : float, default 3.0
        Smallest half-size of the PSF stamp in FWHMs (the stamp is odd, at least 11 pixels a side).
        Extended wings reach further through ``encircled_energy``; a fixed 5 FWHM for every image
        puts the noise of a few stars' wings into ZOGY's PSFs (measured: S_corr std 1.40 instead
        of 1.06 on a pair with 11 reference stars).
    encircled_energy : float, default 0.995
        The stamp also reaches the radius holding this fraction of the light (measured on a stack 1.5
        times wider), whichever is larger.
    max_radius_px : int, default 31
        Largest half-size of the PSF stamp (pixels).
    undersampled_fwhm : float, default 2.5
        Below this FWHM (pixels) the PSF is photutils' oversampled effective PSF.
    oversampling : int, default 4
        Oversampling of that effective PSF.
    grid_cells : int, default 3
        Cells per image side for the spatially varying PSF (:meth:`PSF.at`); 1 for one PSF.
    min_stars_per_cell : int, default 5
        A cell with fewer stars borrows the nearest stars of other cells.
    saturation_fraction : float, default 0.8
        Stars whose peak exceeds this fraction of the header's saturation level are left out.
    fallback_fwhm_px : float, default 3.0
        FWHM (pixels) of the Gaussian PSF when no star and no header FWHM is available.
    """

    PREFIX: ClassVar[str] = "supernova.difference.psf"

    min_snr: float = setting(30.0, number(DETECTION_SNR))
    max_stars: int = setting(45, number(1, 1000, integer=True))
    min_stars: int = setting(5, number(1, integer=True))
    isolation_fwhm: float = setting(4.0, number(0.0))
    neighbour_contrast: float = setting(0.1, number(0.0, 1.0))
    radius_fwhm: float = setting(3.0, number(1.0, 10.0))
    encircled_energy: float = setting(0.995, number(0.5, 1.0, low_open=True))
    max_radius_px: int = setting(31, number(5, 100, integer=True))
    undersampled_fwhm: float = setting(2.5, number(0.0))
    oversampling: int = setting(4, number(1, 10, integer=True))
    grid_cells: int = setting(3, number(1, 20, integer=True))
    min_stars_per_cell: int = setting(5, number(1, integer=True))
    saturation_fraction: float = setting(0.8, number(0.0, 1.0, low_open=True))
    fallback_fwhm_px: float = setting(3.0, number(0.5, 50.0))


@dataclass
class PSF:
    """The PSF of one image.

    Attributes
    ----------
    image : numpy.ndarray
        Global PSF: odd square stamp, centred on its middle pixel, unit sum, float64.
    fwhm : float
        FWHM in pixels (fitted to ``image``, or the Gaussian's).
    method : str
        ``empirical`` (stacked stars), ``epsf`` (oversampled effective PSF), ``matched_reference`` (the other
        image's PSF blurred to fit this one, :func:`matched_psf`) or ``gaussian`` (fallback).
    stars : pandas.DataFrame
        Good PSF stars: ``x, y`` (fitted centre, 0-based), ``flux`` (Gaussian-fit flux),
        ``fwhm``, ``snr`` (peak S/N).
    sources : pandas.DataFrame
        Every maximum above 5 sigma: ``x, y`` (peak pixel), ``snr``; brightest first.
    cells : numpy.ndarray, optional
        ``(n, n, size, size)`` PSFs of the ``n x n`` grid cells (row = y cell), each like ``image``;
        None for one PSF.
    cell_stars : numpy.ndarray, optional
        ``(n, n)`` stars inside each cell (before borrowing).
    shape : tuple of int, optional
        ``(ny, nx)`` of the image the cells tile.
    """

    image: np.ndarray
    fwhm: float
    method: str
    stars: pd.DataFrame
    sources: pd.DataFrame
    cells: np.ndarray | None = None
    cell_stars: np.ndarray | None = None
    shape: tuple[int, int] | None = field(default=None)

    @property
    def n_stars(self) -> int:
        return len(self.stars) if self.method != "gaussian" else 0

    def at(self, x: float, y: float) -> np.ndarray:
        """PSF at pixel ``(x, y)`` (0-based): bilinear between the cell centres (constant beyond the
        outer ones), odd, centred, unit sum, the shape of ``image``."""
        if self.cells is None or self.shape is None:
            return self.image
        n = self.cells.shape[0]
        # Fractional cell index of (x, y), 0 at the first cell's centre.
        u = min(max(x / (self.shape[1] / n) - 0.5, 0.0), n - 1.0)
        v = min(max(y / (self.shape[0] / n) - 0.5, 0.0), n - 1.0)
        i0, j0 = min(int(u), n - 2) if n > 1 else 0, min(int(v), n - 2) if n > 1 else 0
        i1, j1 = min(i0 + 1, n - 1), min(j0 + 1, n - 1)
        a, b = u - i0, v - j0
        stamp = ((1 - a) * (1 - b) * self.cells[j0, i0] + a * (1 - b) * self.cells[j0, i1]
                 + (1 - a) * b * self.cells[j1, i0] + a * b * self.cells[j1, i1])
        return stamp / stamp.sum()


def _cutouts(data: np.ndarray, mask: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """``(n, 2 half + 1, 2 half + 1)`` float64 stamps centred on integer pixels ``(x, y)``; masked and
    off-image pixels are NaN."""
    ny, nx = data.shape
    offsets = np.arange(-half, half + 1)
    rows = np.asarray(y, int)[:, None] + offsets
    cols = np.asarray(x, int)[:, None] + offsets
    good_rows, good_cols = (rows >= 0) & (rows < ny), (cols >= 0) & (cols < nx)
    r, c = np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]
    stamps = data[r, c].astype(np.float64)
    bad = mask[r, c] | ~(good_rows[:, :, None] & good_cols[:, None, :]) | ~np.isfinite(stamps)
    stamps[bad] = np.nan
    return stamps


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


def _cell_index(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], n: int) -> np.ndarray:
    """Flat index (row-major, row = y cell) of the grid cell of each position."""
    i = np.clip((np.asarray(x, float) * n / shape[1]).astype(int), 0, n - 1)
    j = np.clip((np.asarray(y, float) * n / shape[0]).astype(int), 0, n - 1)
    return j * n + i


def _candidates(data, mask, sources, fwhm, settings, saturation, min_snr, contrast) -> pd.DataFrame:
    ny, nx = data.shape
    core = max(2, math.ceil(CORE_FWHM * fwhm))
    bright = sources[sources["snr"] >= min_snr]
    inside = (bright["x"] >= core) & (bright["x"] < nx - core) & (bright["y"] >= core) & (bright["y"] < ny - core)
    bright = bright[inside]
    if len(bright) == 0:
        return bright
    if len(sources) > 1:
        radius = max(settings.isolation_fwhm, CORE_FWHM) * fwhm
        k = min(NEIGHBOURS_CHECKED, len(sources))
        distance, index = cKDTree(sources[["x", "y"]].to_numpy(float)).query(
            bright[["x", "y"]].to_numpy(float), k=k, distance_upper_bound=radius)
        distance, index = distance[:, 1:], index[:, 1:]  # the first is the star itself
        found = np.isfinite(distance)
        snr = np.append(sources["snr"].to_numpy(), 0.0)[index]  # index len(sources) means none
        crowded = found & ((distance <= CORE_FWHM * fwhm) | (snr > contrast * bright["snr"].to_numpy()[:, None]))
        bright = bright[~crowded.any(axis=1)]
    if len(bright) == 0:
        return bright
    clean = ~np.isnan(_cutouts(data, mask, bright["x"], bright["y"], core)).any(axis=(1, 2))
    if saturation is not None:
        clean &= data[bright["y"], bright["x"]] < settings.saturation_fraction * saturation
    bright = bright[clean]
    # The brightest of each cell, so that every cell has stars to fit.
    cells = settings.grid_cells ** 2
    cell = _cell_index(bright["x"], bright["y"], data.shape, settings.grid_cells)
    per_cell = max(settings.min_stars_per_cell, math.ceil(settings.max_stars / cells)) if cells > 1 else None
    if per_cell is not None:
        bright = bright[pd.Series(cell, index=bright.index).groupby(cell).cumcount() < per_cell]
    return bright.head(settings.max_stars)


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


def _select(data, rms, mask, sources, guess, settings, saturation) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """PSF stars by the fallback order of the module notes, the FWHM measured on them and the sources."""
    tiers = [(settings.min_snr, settings.neighbour_contrast),
             (max(RELAXED_MIN_SNR, settings.min_snr / 3), min(1.0, 3 * settings.neighbour_contrast))]
    best, best_fwhm = pd.DataFrame(columns=["x", "y", "flux", "fwhm", "snr"]), guess
    for tier, (min_snr, contrast) in enumerate(tiers):
        if tier:
            log.warning("only %d PSF stars with S/N >= %.0f and neighbours <= %.2f times as bright (need %d): "
                        "trying S/N >= %.0f and neighbours <= %.2f", len(best), tiers[0][0], tiers[0][1],
                        settings.min_stars, min_snr, contrast)
        fwhm = guess
        for _ in range(2):
            candidates = _candidates(data, mask, sources, fwhm, settings, saturation, min_snr, contrast)
            stars = _fit(data, mask, candidates, fwhm) if len(candidates) else best.iloc[:0]
            if len(stars) == 0:
                break
            measured = float(np.median(stars["fwhm"]))
            converged = abs(measured - fwhm) <= 0.25 * fwhm
            fwhm = measured
            if converged:
                break
            # The isolation radius, fit box and peak box follow the FWHM: redo them once with the measured one.
            sources = find_sources(data, rms, mask, fwhm)
        if len(stars) > len(best):
            best, best_fwhm = stars, fwhm
        if len(best) >= settings.min_stars:
            break
    return best, best_fwhm, sources


def _sky_subtracted(stamps: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Stamps less the median of their annulus ``inner < r <= outer`` (pixels, NaN ignored)."""
    half = stamps.shape[1] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    ring = (np.hypot(xx, yy) > inner) & (np.hypot(xx, yy) <= outer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an annulus that is all NaN gives NaN: such a stamp is dropped
        sky = np.nanmedian(stamps[:, ring], axis=1)
    return stamps - sky[:, None, None]


def _centred(stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, crop: int) -> np.ndarray:
    """Shift each stamp by ``(-dx, -dy)`` (cubic spline, masked pixels as 0 and kept NaN) and cut
    ``crop`` pixels from each side (the spline's edge)."""
    out = np.empty((len(stamps), stamps.shape[1] - 2 * crop, stamps.shape[2] - 2 * crop))
    for k, (stamp, sx, sy) in enumerate(zip(stamps, dx, dy)):
        bad = np.isnan(stamp)
        moved = ndimage.shift(np.where(bad, 0.0, stamp), (-sy, -sx), order=3, mode="nearest")
        spread = ndimage.shift(bad.astype(float), (-sy, -sx), order=1, mode="nearest") > 0.01
        moved[spread] = np.nan
        out[k] = moved[crop:-crop, crop:-crop] if crop else moved
    return out


def _median_stack(stamps: np.ndarray, radius: int) -> np.ndarray:
    """NaN-ignoring median of unit-flux stamps, cut to ``radius``, zero outside the circle, unit sum."""
    half = stamps.shape[1] // 2
    inner = stamps[:, half - radius:half + radius + 1, half - radius:half + radius + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a pixel masked in every stamp is NaN: set to 0 below
        psf = np.nan_to_num(np.nanmedian(inner, axis=0))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    psf[(xx ** 2 + yy ** 2) > (radius + 0.5) ** 2] = 0.0
    return psf / psf.sum()


def _unit_flux(stamps: np.ndarray, model: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Stamps divided by their least-squares flux against ``model`` within ``radius`` (unmasked pixels),
    and the fluxes."""
    half, m = stamps.shape[1] // 2, model.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    template = np.zeros(stamps.shape[1:])
    template[half - m:half + m + 1, half - m:half + m + 1] = model
    template[np.hypot(xx, yy) > radius] = 0.0
    good = ~np.isnan(stamps)
    flux = np.nansum(stamps * template, axis=(1, 2)) / np.sum(np.where(good, template ** 2, 0.0), axis=(1, 2))
    return stamps / flux[:, None, None], flux


def _clean_neighbours(stamps, x0, y0, sources, fwhm, own_x, own_y, model=None):
    """Mask, in place, every source inside each stamp but the star itself: its pixels within 2 FWHM
    without ``model``; with it, ``model`` scaled to the light of its core is subtracted first and only
    its core (1 FWHM) is masked."""
    half = stamps.shape[1] // 2
    box = max(1, math.ceil(fwhm))
    if model is not None:
        m = model.shape[0] // 2
        core = model[m - box:m + box + 1, m - box:m + box + 1].sum()
    masked = max(1.5, fwhm if model is not None else CORE_FWHM * fwhm)
    tree = cKDTree(sources[["x", "y"]].to_numpy(float))
    sx, sy = sources["x"].to_numpy(), sources["y"].to_numpy()
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for k, found in enumerate(tree.query_ball_point(np.c_[x0, y0], math.sqrt(2) * (half + masked))):
        stamp = stamps[k]
        for n in found:
            if math.hypot(sx[n] - own_x[k], sy[n] - own_y[k]) < 0.5 * fwhm:
                continue  # the star itself
            cx, cy = sx[n] - x0[k] + half, sy[n] - y0[k] + half
            if model is not None and 0 <= cx < stamp.shape[1] and 0 <= cy < stamp.shape[0]:
                light = stamp[max(cy - box, 0):cy + box + 1, max(cx - box, 0):cx + box + 1]
                flux = np.nansum(light) / core
                ys = slice(max(cy - m, 0), min(cy + m + 1, stamp.shape[0]))
                xs = slice(max(cx - m, 0), min(cx + m + 1, stamp.shape[1]))
                stamp[ys, xs] -= flux * model[ys.start - cy + m:ys.stop - cy + m, xs.start - cx + m:xs.stop - cx + m]
            stamp[np.hypot(xx - (cx - half), yy - (cy - half)) <= masked] = np.nan


def _encircled_radius(psf: np.ndarray, fraction: float) -> float:
    """Smallest radius (pixels) whose circle holds ``fraction`` of the stamp's light."""
    half = psf.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    r = np.hypot(xx, yy).ravel()
    order = np.argsort(r, kind="stable")
    energy = np.cumsum(psf.ravel()[order])
    return float(r[order][np.searchsorted(energy, fraction * energy[-1])])


def _epsf(stamps: np.ndarray, stars: pd.DataFrame, x0, y0, radius: int, oversampling: int) -> np.ndarray:
    """photutils' effective PSF of the cleaned stamps, evaluated at the pixel centres around the middle pixel."""
    half = stamps.shape[1] // 2
    cut = stamps[:, half - radius:half + radius + 1, half - radius:half + radius + 1]
    dx, dy = stars["x"].to_numpy() - x0, stars["y"].to_numpy() - y0
    prepared = EPSFStars([EPSFStar(np.nan_to_num(s), weights=(~np.isnan(s)).astype(float),
                                   cutout_center=(radius + ex, radius + ey))
                          for s, ex, ey in zip(cut, dx, dy)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # masked pixels and excluded stars are reported as warnings
        built = EPSFBuilder(oversampling=oversampling, maxiters=EPSF_ITERATIONS, progress_bar=False)(prepared)
    model = built.epsf
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(float)
    psf = np.asarray(model.evaluate(xx, yy, 1.0, 0.0, 0.0), float)
    # The builder centres the ePSF on its centroid within a box; move its fitted centre onto the middle pixel.
    cx, cy = centroid_2dg(psf)
    psf = np.asarray(model.evaluate(xx, yy, 1.0, radius - cx, radius - cy), float)
    psf[(xx ** 2 + yy ** 2) > (radius + 0.5) ** 2] = 0.0  # the stacks' window: the corners are least constrained
    return psf / psf.sum()


def _cells(stamps: np.ndarray, stars: pd.DataFrame, shape, radius: int, settings: PSFSettings):
    """Per-cell median stacks (borrowing the nearest stars where a cell has too few) and the stars per cell."""
    n = settings.grid_cells
    cell = _cell_index(stars["x"], stars["y"], shape, n)
    counts = np.bincount(cell, minlength=n * n).reshape(n, n)
    xy = stars[["x", "y"]].to_numpy(float)
    need = min(settings.min_stars_per_cell, len(stars))
    psfs = np.empty((n, n, 2 * radius + 1, 2 * radius + 1))
    borrowed = 0
    for j in range(n):
        for i in range(n):
            members = np.flatnonzero(cell == j * n + i)
            if len(members) < need:
                centre = ((i + 0.5) * shape[1] / n, (j + 0.5) * shape[0] / n)
                distance = np.hypot(xy[:, 0] - centre[0], xy[:, 1] - centre[1])
                outside = np.setdiff1d(np.argsort(distance, kind="stable"), members, assume_unique=True)
                outside = outside[np.argsort(distance[outside], kind="stable")]
                members = np.concatenate([members, outside[:need - len(members)]])
                borrowed += 1
            psfs[j, i] = _median_stack(stamps[members], radius)
    if borrowed:
        log.info("%d of %d PSF cells have fewer than %d stars: they borrow the nearest stars of their neighbours",
                 borrowed, n * n, need)
    return psfs, counts


def estimate_psf(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, settings: PSFSettings | None = None,
                 fwhm_guess: float | None = None, saturation: float | None = None) -> PSF:
    """Empirical PSF, its variation across the image and the FWHM of a background-subtracted image
    (see the module notes).

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
    sources = find_sources(data, rms, mask, guess)
    stars, guess, sources = _select(data, rms, mask, sources, guess, settings, saturation)
    if len(stars) >= settings.min_stars:
        psf = _empirical(data, mask, stars, sources, guess, settings)
        if psf is not None:
            return psf
    if len(stars) >= MEDIAN_FWHM_MIN_STARS:
        fwhm, origin = float(np.median(stars["fwhm"])), f"the median of {len(stars)} stars"
    else:
        fwhm = fwhm_guess or settings.fallback_fwhm_px
        origin = "the header" if fwhm_guess else "supernova.difference.psf.fallback_fwhm_px"
    log.warning("only %d good PSF stars (need %d): Gaussian PSF, FWHM %.2f px from %s",
                len(stars), settings.min_stars, fwhm, origin)
    size = max(11, 2 * min(settings.max_radius_px, math.ceil(settings.radius_fwhm * fwhm)) + 1)
    return PSF(image=gaussian_psf(fwhm, size), fwhm=fwhm, method="gaussian", stars=stars, sources=sources)


def _empirical(data, mask, stars, sources, fwhm, settings: PSFSettings) -> PSF | None:
    """The stacked (or effective) PSF of the stars and its cells; None when the stamps leave too few stars."""
    smallest = max(5, math.ceil(settings.radius_fwhm * fwhm))
    wide = min(settings.max_radius_px, math.ceil(1.5 * smallest))  # the stack the encircled energy is read on
    sky_inner, sky_outer = wide + 1, wide + 1 + max(3, math.ceil(0.25 * wide))
    half = sky_outer + 2  # 2 pixels for the spline's edge
    x0, y0 = np.round(stars["x"].to_numpy()).astype(int), np.round(stars["y"].to_numpy()).astype(int)
    dx, dy = stars["x"].to_numpy() - x0, stars["y"].to_numpy() - y0
    raw = _cutouts(data, mask, x0, y0, half)
    own_x, own_y = stars["x"].to_numpy(), stars["y"].to_numpy()
    # First pass: neighbours masked, own sky off, centred, scaled by the Gaussian-fit flux; the median is
    # the neighbours' model.
    first = raw.copy()
    _clean_neighbours(first, x0, y0, sources, fwhm, own_x, own_y)
    first = _centred(_sky_subtracted(first, sky_inner, sky_outer), dx, dy, 2) / stars["flux"].to_numpy()[:, None, None]
    model = _median_stack(first, wide)
    # Second pass: neighbours subtracted and their cores masked, then the sky, centring and a fitted flux.
    cleaned = raw.copy()
    _clean_neighbours(cleaned, x0, y0, sources, fwhm, own_x, own_y, model)
    cleaned = _sky_subtracted(cleaned, sky_inner, sky_outer)
    keep = np.isfinite(cleaned[:, half, half])
    centred, flux = _unit_flux(_centred(cleaned, dx, dy, 2), model, CORE_FWHM * fwhm)
    keep &= np.isfinite(flux) & (flux > 0)
    if keep.sum() < settings.min_stars:
        return None
    stars, centred, cleaned, x0, y0 = stars[keep].reset_index(drop=True), centred[keep], cleaned[keep], x0[keep], \
        y0[keep]
    stacked = _median_stack(centred, wide)
    reach = math.ceil(_encircled_radius(stacked, settings.encircled_energy))
    radius = int(min(settings.max_radius_px, max(smallest, reach)))
    image = _median_stack(centred, radius)
    method, cells, counts = "empirical", None, None
    undersampled = fwhm < settings.undersampled_fwhm and settings.oversampling > 1
    if undersampled:
        image, method = _epsf(cleaned, stars, x0, y0, radius, settings.oversampling), "epsf"
    elif settings.grid_cells > 1:
        cells, counts = _cells(centred, stars, data.shape, radius, settings)
    fit_shape = min(image.shape[0], max(5, 2 * math.ceil(1.5 * fwhm) + 1))
    measured = float(fit_fwhm(image, fit_shape=fit_shape)[0])
    return PSF(image=image, fwhm=measured, method=method, stars=stars, sources=sources, cells=cells,
               cell_stars=counts, shape=data.shape if cells is not None else None)


def _transfer(n: int, s: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """``rfft2`` transfer function on an ``n x n`` grid of a unit-sum Gaussian of variance ``s`` (pixels^2,
    negative sharpens) moved by ``(dx, dy)``."""
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
    return np.exp(-2.0 * math.pi ** 2 * s * (kx ** 2 + ky ** 2) - 2j * math.pi * (kx * dx + ky * dy))


def _blurred(psf: np.ndarray, s: float, radius: int) -> np.ndarray:
    """``psf`` convolved with a Gaussian of variance ``s`` on a stamp of half-size ``radius``: circular window,
    unit sum."""
    half = psf.shape[0] // 2
    pad = max(radius, half) + math.ceil(4 * math.sqrt(s))  # room for the blurred wings before they wrap
    n = 2 * pad + 1
    big = np.zeros((n, n))
    big[pad - half:pad + half + 1, pad - half:pad + half + 1] = psf
    wide = np.fft.irfft2(np.fft.rfft2(big) * _transfer(n, s), s=(n, n))
    out = wide[pad - radius:pad + radius + 1, pad - radius:pad + radius + 1]
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    out[(xx ** 2 + yy ** 2) > (radius + 0.5) ** 2] = 0.0
    return out / out.sum()


def _match_stamps(data, rms, mask, poor, good_data, good_mask, good, half, pad, reach, saturation, good_saturation):
    """Stamps of the poor image (``half``), their weights (1 / sky noise; 0 on bad pixels and within ``reach``
    of a bad pixel of the good image) and stamps of the good image (``half + pad``, bad pixels 0) around the
    brightest sources of the poor image that the good image also has, without a saturated pixel and with at least
    half of their pixels weighted."""
    ny, nx = data.shape
    outer = half + pad
    bright = poor.sources[poor.sources["snr"] >= MATCH_MIN_SNR]
    bright = bright[(bright["x"] >= outer) & (bright["x"] < nx - outer) & (bright["y"] >= outer)
                    & (bright["y"] < ny - outer)]
    if len(bright) and len(good.sources):
        distance, _ = cKDTree(good.sources[["x", "y"]].to_numpy(float)).query(bright[["x", "y"]].to_numpy(float))
        bright = bright[distance <= max(2.0, 0.5 * good.fwhm)]
    if len(bright) == 0:
        side = 2 * half + 1
        return np.empty((0, side, side)), np.empty((0, side, side)), np.empty((0, 2 * outer + 1, 2 * outer + 1))
    x, y = bright["x"].to_numpy(), bright["y"].to_numpy()
    wide = _cutouts(good_data, good_mask, x, y, outer)
    stamps = _cutouts(data, mask, x, y, half)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.nan_to_num(1.0 / _cutouts(rms, mask | ~(rms > 0), x, y, half), nan=0.0, posinf=0.0)
    weights[np.isnan(stamps)] = 0.0
    # A bad pixel of the good image spoils the blurred model within the kernel's reach.
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    spoiled = ndimage.binary_dilation(np.isnan(wide), structure=(np.hypot(xx, yy) <= reach)[None])
    weights[spoiled[:, pad:-pad, pad:-pad]] = 0.0
    keep = (weights > 0).sum(axis=(1, 2)) > 0.5 * weights[0].size
    for values, level in ((stamps, saturation), (wide, good_saturation)):
        if level is not None:
            with warnings.catch_warnings(), np.errstate(invalid="ignore"):
                warnings.simplefilter("ignore")  # an all-NaN stamp has no maximum: it has no weight either
                keep &= ~(np.nanmax(values, axis=(1, 2)) >= level)
    chosen = np.flatnonzero(keep)[:MATCH_MAX_SOURCES]
    return stamps[chosen], weights[chosen], np.nan_to_num(wide[chosen])


class _GaussianMatch:
    """Weighted residuals of poor stamps against good stamps blurred by a Gaussian and moved, with the best
    scale and sky of each stamp solved for at every ``(s, dx, dy)``."""

    def __init__(self, stamps: np.ndarray, weights: np.ndarray, wide: np.ndarray):
        self.n, self.half = wide.shape[1], stamps.shape[1] // 2
        self.spectra = np.fft.rfft2(wide)
        self.stamps, self.weights = np.nan_to_num(stamps), weights

    def model(self, params) -> np.ndarray:
        s, dx, dy = params
        blurred = np.fft.irfft2(self.spectra * _transfer(self.n, s, dx, dy), s=(self.n, self.n))
        c, h = self.n // 2, self.half
        return blurred[:, c - h:c + h + 1, c - h:c + h + 1]

    def residuals(self, params) -> np.ndarray:
        """Per-stamp weighted residuals ``(n, side, side)``."""
        m, y, w2 = self.model(params), self.stamps, self.weights ** 2
        sw, sm, smm = w2.sum(axis=(1, 2)), (w2 * m).sum(axis=(1, 2)), (w2 * m * m).sum(axis=(1, 2))
        sy, smy = (w2 * y).sum(axis=(1, 2)), (w2 * m * y).sum(axis=(1, 2))
        det = smm * sw - sm ** 2
        det = np.where(det > 0, det, np.inf)
        scale, sky = (smy * sw - sm * sy) / det, (smm * sy - sm * smy) / det
        return self.weights * (y - scale[:, None, None] * m - sky[:, None, None])

    def fit(self, start: float, bounds: tuple[list, list]):
        return least_squares(lambda p: self.residuals(p).ravel(), [start, 0.0, 0.0], bounds=bounds,
                             x_scale=[max(start, 0.1), 0.1, 0.1], diff_step=1e-3)


def matched_psf(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, poor: PSF, good_data: np.ndarray,
                good_mask: np.ndarray, good: PSF, settings: PSFSettings | None = None, saturation: float | None = None,
                good_saturation: float | None = None) -> PSF | None:
    """PSF of an image with too few stars derived from the empirical PSF of another image on the same grid
    (see the module notes); None, with the reason logged, when the fit cannot say or the image is the sharper.

    Parameters
    ----------
    data, rms, mask : numpy.ndarray
        The poor image (background-subtracted), its sky-noise map and bad pixels.
    poor : PSF
        Its own estimate (the sources are used).
    good_data, good_mask : numpy.ndarray
        The good image (background-subtracted, on the same grid) and its bad pixels (off-footprint included).
    good : PSF
        Its empirical PSF.
    settings : PSFSettings, optional
    saturation, good_saturation : float, optional
        Saturation levels of the two images (after background subtraction).

    Returns
    -------
    PSF or None
        Method ``matched_reference``; ``stars`` and ``sources`` are the poor image's own.
    """
    settings = settings or PSFSettings()
    variance = (good.fwhm / FWHM_PER_SIGMA) ** 2
    widest = max(2.0, good.fwhm)  # largest Gaussian sigma fitted (pixels): a poor FWHM up to ~2.5 times the good
    half = math.ceil(CORE_FWHM * good.fwhm + widest)
    pad = math.ceil(3 * widest)
    start = min(max((poor.fwhm ** 2 - good.fwhm ** 2) / FWHM_PER_SIGMA ** 2, 0.5), 0.9 * widest ** 2)
    stamps, weights, wide = _match_stamps(data, rms, mask | ~np.isfinite(data), poor, good_data, good_mask, good,
                                          half, pad, math.ceil(3 * math.sqrt(start)),
                                 None if saturation is None else settings.saturation_fraction * saturation,
                                 None if good_saturation is None else settings.saturation_fraction * good_saturation)
    if len(stamps) < MATCH_MIN_SOURCES:
        log.warning("PSF from the other image: only %d bright sources seen in both (need %d)", len(stamps),
                    MATCH_MIN_SOURCES)
        return None
    bounds = ([-0.5 * variance, -2.0, -2.0], [widest ** 2, 2.0, 2.0])
    match = _GaussianMatch(stamps, weights, wide)
    result = match.fit(start, bounds)
    chi2 = (match.residuals(result.x) ** 2).sum(axis=(1, 2)) / np.maximum((weights > 0).sum(axis=(1, 2)), 1)
    spread = 1.4826 * float(np.median(np.abs(chi2 - np.median(chi2))))
    outliers = chi2 > np.median(chi2) + MATCH_CLIP * max(spread, 1e-12)
    if outliers.any() and (~outliers).sum() >= MATCH_MIN_SOURCES:
        match = _GaussianMatch(stamps[~outliers], weights[~outliers], wide[~outliers])
        result = match.fit(float(result.x[0]), bounds)
    s, dx, dy = (float(v) for v in result.x)
    if not result.success or s >= 0.99 * widest ** 2:
        log.warning("PSF from the other image: the Gaussian fit did not converge within its bounds (variance %.2f "
                    "px^2, largest %.2f)", s, widest ** 2)
        return None
    if s < 0:
        log.warning("PSF from the other image: this image is SHARPER than the other (blurring variance %.2f px^2 "
                    "< 0): keeping the Gaussian fallback", s)
        return None
    guess = math.sqrt(good.fwhm ** 2 + FWHM_PER_SIGMA ** 2 * s)
    radius = int(min(settings.max_radius_px, max(good.image.shape[0] // 2, math.ceil(settings.radius_fwhm * guess))))
    image = _blurred(good.image, s, radius)
    cells = None if good.cells is None else np.array([[_blurred(c, s, radius) for c in row] for row in good.cells])
    fit_shape = min(image.shape[0], max(5, 2 * math.ceil(1.5 * guess) + 1))
    fwhm = float(fit_fwhm(image, fit_shape=fit_shape)[0])
    log.warning("PSF from the other image's %s PSF blurred by a Gaussian of FWHM %.2f px (fitted on %d sources, "
                "shift %.2f, %.2f px): FWHM %.2f px", good.method, FWHM_PER_SIGMA * math.sqrt(s), len(match.stamps),
                dx, dy, fwhm)
    return PSF(image=image, fwhm=fwhm, method="matched_reference", stars=poor.stars, sources=poor.sources,
               cells=cells, cell_stars=good.cell_stars, shape=good.shape)
