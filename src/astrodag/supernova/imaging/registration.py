"""Residual registration of the aligned reference: offset solving, star matching, transform and scatter.

After :mod:`astrodag.supernova.imaging.align` has put the reference on the science grid with the
two WCSs, a residual transform is left (archive WCSs between visits are typically off by
0.1-1 arcsec, sometimes with a small rotation). :func:`register` measures it from the
detections of both images (``PSF.sources``: every 5-sigma maximum, brightest first):

1. centroids: every source is re-centred by an iterative Gaussian-windowed centroid (the
   ``XWIN`` estimator of SExtractor, window sigma = FWHM / 2.355), with its error propagated
   from the sky noise map (:func:`windowed_centroids`);
2. offset: :func:`solve_offset` votes the pairwise offsets of the ``vote_sources`` brightest
   sources of each image within ``max_offset_px`` into a 2-D histogram; the smoothed peak is the
   offset (no prior needed, and robust to the crowding that defeats nearest-neighbour matching);
3. transform: starting from that offset, mutual nearest neighbours of the bright sources within a
   radius that halves each round fit an affine map (or a shift), by weighted least squares with
   sigma clipping; a small rotation, whose displacement at the image edge exceeds the match
   radius, is caught on the way;
4. matching: ALL sources are matched (mutual nearest neighbours within ``match_radius_fwhm``
   after the transform) and the transform refitted on them;
5. scatter: the registration noise per axis (ZOGY's astrometric term) is the robust standard
   deviation of the residuals of the bright matched stars (peak S/N >= ``scatter_min_snr`` in
   both images), with their centroid noise removed in quadrature.

The transform maps science pixels to the aligned reference's pixels; its displacement at the image
centre is the residual shift the pipeline corrects by resampling again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from astropy.stats import mad_std
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.settings import Settings, flag, number, setting

log = logging.getLogger(__name__)

CENTROID_FLOOR_PX = 0.01  # weight floor of a centroid in the transform fit: PSF-model errors of bright stars
MIN_PAIRS_AFFINE = 12  # fewer pairs and only a shift is fitted


@dataclass(frozen=True)
class RegistrationSettings(Settings):
    """Residual registration after alignment (config ``supernova.difference.registration``).

    Keys
    ----
    max_offset_arcsec : float, default 2.0
        Largest residual offset searched for (arcsec; at least 3 FWHMs are searched whatever the
        pixel scale). WCS offsets between visits are typically 0.1-1 arcsec.
    vote_sources : int, default 300
        Brightest sources of each image whose pairwise offsets vote for the offset.
    vote_bin_px : float, default 1.0
        Bin of the offset histogram (pixels); it is smoothed by one bin.
    match_radius_fwhm : float, default 1.0
        After the transform, detections within this many FWHMs (the broader PSF) are the same star.
    affine : bool, default true
        Fit an affine transform (shift, rotation, scale, shear); false fits a shift only.
    clip_sigma : float, default 3.0
        Sigma clipping of the transform fit's residuals (blends, moving and mismatched stars).
    scatter_min_snr : float, default 50.0
        Peak S/N in both images of the bright stars whose residuals measure the registration scatter.
    """

    PREFIX: ClassVar[str] = "supernova.difference.registration"

    max_offset_arcsec: float = setting(2.0, number(0.0, low_open=True))
    vote_sources: int = setting(300, number(10, 100_000, integer=True))
    vote_bin_px: float = setting(1.0, number(0.05, 20.0))
    match_radius_fwhm: float = setting(1.0, number(0.0, low_open=True))
    affine: bool = setting(True, flag)
    clip_sigma: float = setting(3.0, number(1.5))
    scatter_min_snr: float = setting(50.0, number(5.0))


@dataclass
class Registration:
    """Residual transform science pixel -> aligned reference pixel, from matched stars.

    Attributes
    ----------
    coefficients : numpy.ndarray
        ``(3, 2)``: ``[x_ref, y_ref] = [x, y, 1] @ coefficients``.
    shift_x, shift_y : float
        Displacement (reference - science) at the image centre.
    scatter_x, scatter_y : float
        Registration noise per axis (pixels), centroid noise removed; 0 when fewer than 5 bright stars.
    n_matched : int
        Matched stars kept by the final fit.
    n_bright : int
        Bright matched stars behind the scatter.
    method : str
        ``affine``, ``shift`` or ``none`` (no offset found: identity transform).
    pairs : pandas.DataFrame
        Matched stars: ``x, y`` (science centroid), ``x_ref, y_ref`` (reference centroid), ``snr``,
        ``snr_ref`` (peak S/N), ``sigma_x, sigma_y`` (centroid error of the pair), ``used`` (kept by
        the clipping).
    """

    coefficients: np.ndarray
    shift_x: float
    shift_y: float
    scatter_x: float
    scatter_y: float
    n_matched: int
    n_bright: int
    method: str
    pairs: pd.DataFrame

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned-reference pixel coordinates of science pixels ``(x, y)``."""
        out = _apply(self.coefficients, np.column_stack([np.ravel(x), np.ravel(y)]))
        return out[:, 0], out[:, 1]


    def inverse(self, x_ref: np.ndarray, y_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Science pixel coordinates of aligned-reference pixels ``(x_ref, y_ref)``."""
        xy = np.column_stack([np.ravel(x_ref), np.ravel(y_ref)]) - self.coefficients[2]
        out = np.linalg.solve(self.coefficients[:2].T, xy.T).T
        return out[:, 0], out[:, 1]

    def star_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n, 2)`` positions of the kept matched stars in the science and the aligned reference grids.

        Each star's position is the mean of its two centroids (the reference's mapped back), so
        that neither image's photometry is done where its own noise moved the centroid (which
        biases a faint star's fitted flux high).
        """
        kept = self.pairs[self.pairs["used"]]
        back_x, back_y = self.inverse(kept["x_ref"].to_numpy(), kept["y_ref"].to_numpy())
        science = np.column_stack([(kept["x"].to_numpy() + back_x) / 2, (kept["y"].to_numpy() + back_y) / 2])
        return science, np.column_stack(self.transform(*science.T))


def _apply(coefficients: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return np.column_stack([xy, np.ones(len(xy))]) @ coefficients


def _shift_coefficients(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0], [0.0, 1.0], [dx, dy]])


def windowed_centroids(data: np.ndarray, rms: np.ndarray | float, bad: np.ndarray | None, x: np.ndarray,
                       y: np.ndarray, fwhm: float, iterations: int = 8) -> pd.DataFrame:
    """Gaussian-windowed centroids (SExtractor's ``XWIN``) of sources near integer pixels ``(x, y)``.

    Each iteration moves the centre by ``2 sum(w d I) / sum(w I)`` (``d``: pixel minus centre) with a
    Gaussian window ``w`` of sigma FWHM / 2.355 on the current centre, which converges to the centre
    of a Gaussian-like profile with nearly the precision of a PSF fit while damping neighbours.

    Returns
    -------
    pandas.DataFrame
        ``x, y`` (centroid), ``sigma_x, sigma_y`` (error propagated from the sky noise ``rms`` at
        the peak) and ``ok`` (inside the image, no bad pixel in the window, positive windowed flux,
        moved less than a FWHM).
    """
    sigma_w = fwhm / (2 * math.sqrt(2 * math.log(2)))
    half = max(2, int(math.ceil(3 * sigma_w)))
    ny, nx = data.shape
    x0, y0 = np.rint(np.asarray(x, float)).astype(int), np.rint(np.asarray(y, float)).astype(int)
    inside = (x0 >= half) & (x0 < nx - half) & (y0 >= half) & (y0 < ny - half)
    xi, yi = np.where(inside, x0, half), np.where(inside, y0, half)
    offsets = np.arange(-half, half + 1)
    rows = (yi[:, None] + offsets)[:, :, None]
    cols = (xi[:, None] + offsets)[:, None, :]
    stamps = np.nan_to_num(data[rows, cols].astype(float))
    ok = inside.copy()
    if bad is not None:
        ok &= ~bad[rows, cols].any(axis=(1, 2))
    noise = rms[yi, xi].astype(float) if np.ndim(rms) else np.full(len(xi), float(rms))
    gx, gy = offsets[None, None, :].astype(float), offsets[None, :, None].astype(float)
    cx, cy = np.zeros(len(xi)), np.zeros(len(xi))
    for _ in range(iterations):
        dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
        w = np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma_w ** 2))
        total = (w * stamps).sum(axis=(1, 2))
        good = total > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            step_x = np.where(good, 2 * (w * dx * stamps).sum(axis=(1, 2)) / total, 0.0)
            step_y = np.where(good, 2 * (w * dy * stamps).sum(axis=(1, 2)) / total, 0.0)
        cx, cy = np.clip(cx + step_x, -half, half), np.clip(cy + step_y, -half, half)
    dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
    w = np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma_w ** 2))
    total = (w * stamps).sum(axis=(1, 2))
    ok &= (total > 0) & (np.hypot(cx, cy) < fwhm)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_x = 2 * noise * np.sqrt((w ** 2 * dx ** 2).sum(axis=(1, 2))) / total
        sigma_y = 2 * noise * np.sqrt((w ** 2 * dy ** 2).sum(axis=(1, 2))) / total
    ok &= np.isfinite(sigma_x) & np.isfinite(sigma_y)
    return pd.DataFrame({"x": xi + cx, "y": yi + cy, "sigma_x": sigma_x, "sigma_y": sigma_y, "ok": ok})


def solve_offset(science_xy: np.ndarray, reference_xy: np.ndarray, max_offset_px: float,
                 bin_px: float = 1.0) -> tuple[float, float, int] | None:
    """Offset (reference - science) voted by the pairwise offsets of two source lists.

    Every pair closer than ``max_offset_px`` votes in a 2-D histogram of bin ``bin_px``, smoothed by
    one bin; the offset is the mean of the votes within 1.5 bins of its peak. Chance pairs spread
    evenly over the histogram, the true ones pile up, so no prior offset and no isolation is needed.

    Returns
    -------
    (dx, dy, votes) or None
        None when fewer than 5 pairs vote for the peak.
    """
    if len(science_xy) == 0 or len(reference_xy) == 0:
        return None
    neighbours = cKDTree(reference_xy).query_ball_point(science_xy, max_offset_px)
    i = np.repeat(np.arange(len(science_xy)), [len(n) for n in neighbours])
    j = np.fromiter((k for n in neighbours for k in n), int, count=len(i))
    if len(i) < 5:
        return None
    offsets = reference_xy[j] - science_xy[i]
    n_bins = max(3, 2 * int(math.ceil(max_offset_px / bin_px)) + 1)
    edges = (np.arange(n_bins + 1) - n_bins / 2) * bin_px
    histogram, _, _ = np.histogram2d(offsets[:, 0], offsets[:, 1], bins=[edges, edges])
    smooth = ndimage.gaussian_filter(histogram, 1.0, mode="constant")
    ix, iy = np.unravel_index(np.argmax(smooth), smooth.shape)
    peak = np.array([edges[ix] + bin_px / 2, edges[iy] + bin_px / 2])
    near = np.hypot(*(offsets - peak).T) <= 1.5 * bin_px
    if near.sum() < 5:
        return None
    dx, dy = offsets[near].mean(axis=0)
    return float(dx), float(dy), int(near.sum())


def mutual_matches(first: np.ndarray, second: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of mutual nearest neighbours within ``radius`` of two ``(n, 2)`` position arrays."""
    if len(first) == 0 or len(second) == 0:
        return np.array([], int), np.array([], int)
    d_ab, j = cKDTree(second).query(first, distance_upper_bound=radius)
    _, i_back = cKDTree(first).query(second, distance_upper_bound=radius)
    i = np.arange(len(first))
    good = np.isfinite(d_ab)
    good[good] &= i_back[j[good]] == i[good]
    return i[good], j[good]


def fit_transform(source: np.ndarray, target: np.ndarray, sigma: np.ndarray, affine: bool = True,
                  clip_sigma: float = 3.0, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares map ``source -> target`` with sigma clipping.

    A point's position variance is ``sigma^2 + s^2 + 0.01^2`` (``sigma``: its centroid error; ``s``:
    the registration scatter, solved for so that the standardised residuals have unit robust
    standard deviation; the 0.01 px floor stands for PSF-model errors of bright stars). Without
    ``s`` the bright stars, whose residuals are all registration scatter, would be clipped first.
    Points beyond ``clip_sigma`` on either axis are dropped and the fit repeated until nothing
    changes. Affine with at least ``MIN_PAIRS_AFFINE`` points (and ``affine``), else a shift.

    Returns
    -------
    coefficients : numpy.ndarray
        ``(3, 2)`` as in :class:`Registration`.
    used : numpy.ndarray
        Bool, the points kept.
    """
    from scipy.optimize import brentq

    variance = np.asarray(sigma, float) ** 2 + CENTROID_FLOOR_PX ** 2
    used = np.ones(len(source), bool)
    extra = 0.0
    coefficients = _shift_coefficients(0.0, 0.0)
    for _ in range(iterations):
        w = 1.0 / (variance[used] + extra ** 2)
        if affine and used.sum() >= MIN_PAIRS_AFFINE:
            centre = source[used].mean(axis=0)
            design = np.column_stack([source[used] - centre, np.ones(used.sum())]) * np.sqrt(w)[:, None]
            solution, *_ = np.linalg.lstsq(design, target[used] * np.sqrt(w)[:, None], rcond=None)
            coefficients = solution.copy()
            coefficients[2] = solution[2] - centre @ solution[:2]
        else:
            shift = np.average(target[used] - source[used], axis=0, weights=w)
            coefficients = _shift_coefficients(*shift)
        residual = target - _apply(coefficients, source)

        def excess(s, kept=used):
            return mad_std(residual[kept] / np.sqrt(variance[kept] + s ** 2)[:, None]) - 1.0

        extra = brentq(excess, 0.0, 100.0) if excess(0.0) > 0 else 0.0
        z = residual / np.sqrt(variance + extra ** 2)[:, None]
        keep = np.all(np.abs(z) <= clip_sigma, axis=1)
        if np.array_equal(keep, used) or keep.sum() < 3:
            break
        used = keep
    return coefficients, used


def _registration_scatter(residual: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-axis registration noise: robust std of the residuals, mean centroid variance removed in quadrature."""
    excess = mad_std(residual, axis=0) ** 2 - np.mean(sigma ** 2, axis=0)
    return np.sqrt(np.clip(excess, 0.0, None))


def register(science: np.ndarray, reference: np.ndarray, science_rms: np.ndarray | float,
             reference_rms: np.ndarray | float, science_sources: pd.DataFrame, reference_sources: pd.DataFrame,
             fwhm_science: float, fwhm_reference: float, max_offset_px: float, science_bad: np.ndarray | None = None,
             reference_bad: np.ndarray | None = None, settings: RegistrationSettings | None = None) -> Registration:
    """Residual transform between the science image and the aligned reference (see the module notes).

    Parameters
    ----------
    science, reference : numpy.ndarray
        Background-subtracted images on the same grid.
    science_rms, reference_rms : numpy.ndarray or float
        Their sky noise (maps or scalars).
    science_sources, reference_sources : pandas.DataFrame
        Detections ``x, y, snr`` (``PSF.sources``).
    fwhm_science, fwhm_reference : float
        PSF FWHMs (pixels of the science grid).
    max_offset_px : float
        Largest offset searched for.
    science_bad, reference_bad : numpy.ndarray, optional
        Bad pixels; a source with one in its centroid window is not used.
    settings : RegistrationSettings, optional

    Returns
    -------
    Registration
    """
    settings = settings or RegistrationSettings()
    fwhm = max(fwhm_science, fwhm_reference)
    ny, nx = science.shape
    centre = np.array([(nx - 1) / 2, (ny - 1) / 2])
    sci = _centroided(science, science_rms, science_bad, science_sources, fwhm_science)
    ref = _centroided(reference, reference_rms, reference_bad, reference_sources, fwhm_reference)
    n_vote = settings.vote_sources
    sci_xy, ref_xy = sci[["x", "y"]].to_numpy(), ref[["x", "y"]].to_numpy()
    solved = solve_offset(sci_xy[:n_vote], ref_xy[:n_vote], max_offset_px, settings.vote_bin_px)
    if solved is None:
        log.warning("registration: no offset found among the %d / %d brightest sources within %.1f px; "
                    "the alignment's WCS is taken as exact", min(n_vote, len(sci)), min(n_vote, len(ref)),
                    max_offset_px)
        return Registration(_shift_coefficients(0.0, 0.0), 0.0, 0.0, 0.0, 0.0, 0, 0, "none", _pairs_frame())
    coefficients = _shift_coefficients(solved[0], solved[1])
    # Bright sources first (few chance neighbours), with a radius that halves down to the final one;
    # then every source at the final radius.
    final_radius = settings.match_radius_fwhm * fwhm
    radius = max(2 * settings.vote_bin_px + fwhm, final_radius)
    stages = []
    while True:
        stages.append((sci.iloc[:n_vote], ref.iloc[:n_vote], radius))
        if radius <= final_radius:
            break
        radius = max(radius / 2, final_radius)
    stages.append((sci, ref, final_radius))
    i = j = used = np.array([], int)
    for first, second, radius in stages:
        a, b = first[["x", "y"]].to_numpy(), second[["x", "y"]].to_numpy()
        i, j = mutual_matches(_apply(coefficients, a), b, radius)
        if len(i) < 3:
            break
        sigma = np.hypot(first[["sigma_x", "sigma_y"]].to_numpy()[i], second[["sigma_x", "sigma_y"]].to_numpy()[j])
        coefficients, used = fit_transform(a[i], b[j], np.hypot(*sigma.T) / math.sqrt(2), settings.affine,
                                           settings.clip_sigma)
    if len(i) < 3:
        log.warning("registration: %d stars matched after the offset (%.2f, %.2f) px; shift alone applied",
                    len(i), solved[0], solved[1])
        shift = _apply(coefficients, centre[None])[0] - centre
        return Registration(coefficients, float(shift[0]), float(shift[1]), 0.0, 0.0, 0, 0, "shift", _pairs_frame())
    pairs = _pairs_frame(sci.iloc[i], ref.iloc[j], used)
    residual = pairs[["x_ref", "y_ref"]].to_numpy() - _apply(coefficients, pairs[["x", "y"]].to_numpy())
    bright = pairs["used"].to_numpy() & (pairs["snr"] >= settings.scatter_min_snr).to_numpy() \
        & (pairs["snr_ref"] >= settings.scatter_min_snr).to_numpy()
    scatter = np.zeros(2)
    if bright.sum() >= 5:
        scatter = _registration_scatter(residual[bright], pairs[["sigma_x", "sigma_y"]].to_numpy()[bright])
    else:
        log.warning("registration: %d bright matched stars (S/N >= %g, need 5): registration scatter taken as 0",
                    int(bright.sum()), settings.scatter_min_snr)
    shift = _apply(coefficients, centre[None])[0] - centre
    method = "affine" if settings.affine and used.sum() >= MIN_PAIRS_AFFINE else "shift"
    log.info("registration: offset (%.3f, %.3f) px voted by %d pairs; %s fit on %d of %d matched stars, "
             "scatter (%.3f, %.3f) px from %d bright ones", solved[0], solved[1], solved[2], method, int(used.sum()),
             len(pairs), scatter[0], scatter[1], int(bright.sum()))
    return Registration(coefficients, float(shift[0]), float(shift[1]), float(scatter[0]), float(scatter[1]),
                        int(used.sum()), int(bright.sum()), method, pairs)


def _centroided(data, rms, bad, sources: pd.DataFrame, fwhm: float) -> pd.DataFrame:
    """The sources re-centred (:func:`windowed_centroids`), those that failed dropped, brightest first."""
    cols = ["x", "y", "snr", "sigma_x", "sigma_y"]
    if len(sources) == 0:
        return pd.DataFrame({c: np.array([], float) for c in cols})
    cent = windowed_centroids(data, rms, bad, sources["x"].to_numpy(), sources["y"].to_numpy(), fwhm)
    cent["snr"] = sources["snr"].to_numpy(float)
    return cent.loc[cent["ok"], cols].reset_index(drop=True)


def _pairs_frame(sci: pd.DataFrame | None = None, ref: pd.DataFrame | None = None,
                 used: np.ndarray | None = None) -> pd.DataFrame:
    if sci is None:
        return pd.DataFrame({c: np.array([], float) for c in
                             ("x", "y", "x_ref", "y_ref", "snr", "snr_ref", "sigma_x", "sigma_y")}
                            ).assign(used=np.array([], bool))
    return pd.DataFrame({"x": sci["x"].to_numpy(), "y": sci["y"].to_numpy(), "x_ref": ref["x"].to_numpy(),
                         "y_ref": ref["y"].to_numpy(), "snr": sci["snr"].to_numpy(), "snr_ref": ref["snr"].to_numpy(),
                         "sigma_x": np.hypot(sci["sigma_x"].to_numpy(), ref["sigma_x"].to_numpy()),
                         "sigma_y": np.hypot(sci["sigma_y"].to_numpy(), ref["sigma_y"].to_numpy()),
                         "used": np.asarray(used, bool)})
