"""Fake point sources: PSF-shaped transients added to the science image before subtraction.

They give the real/bogus classifier many "real" examples per pair, placed where supernovae
occur (on and near galaxies) and at random, and they work identically for synthetic and real
archive images. Each has a known position and flux, so their recovery measures the pipeline.

Brightness: ``magnitude_range`` is drawn uniformly in magnitude. With
``magnitude_reference = "limit"`` (the default) the range is relative to the image's
5-sigma point-source limiting magnitude ``m_lim = zp - 2.5 log10(5 sigma / sqrt(sum P^2))``,
so ``[-3, 0.5]`` spans S/N of about 80 down to 3 whatever the mission; with ``"absolute"``
it is in magnitudes of the image zero point (header ``ZEROPT``/``MAGZPT``, else
``zeropoint``). The table records both the flux (image units) and the magnitude.

Galaxy placement: extended sources are the connected regions of the PSF-smoothed S/N map
above 3 whose peak-to-total flux ratio is below half that of the PSF (point sources are more
concentrated); positions are drawn inside them with probability proportional to their surface
brightness, as supernova rates follow the light.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.settings import Settings, choice, flag, interval, number, setting

log = logging.getLogger(__name__)

INJECTION_COLUMNS = ("injection_id", "x", "y", "ra", "dec", "flux", "mag", "snr", "placement")


@dataclass(frozen=True)
class InjectSettings(Settings):
    """Fake-source injection (config ``supernova.difference.inject``).

    Keys
    ----
    count : int, default 20
        Sources injected per science image (0 disables injection).
    magnitude_range : [float, float], default [-3.0, 0.5]
        Magnitudes drawn uniformly in this range (see ``magnitude_reference``).
    magnitude_reference : {"limit", "absolute"}, default "limit"
        ``limit``: relative to the image's 5-sigma limiting magnitude; ``absolute``: on the
        image's zero point.
    galaxy_fraction : float, default 0.5
        Fraction placed on or near galaxies (the rest uniformly at random); all are random
        when the image has no galaxy.
    min_separation_fwhm : float, default 5.0
        Minimum distance, in PSF FWHMs, from each other, from bright sources (S/N > 50) and
        from bad pixels.
    edge_px : int, default 16
        Minimum distance from the image edges and the reference footprint edge.
    zeropoint : float, default 25.0
        Zero point (magnitude of one data unit) used when the header has none.
    poisson : bool, default true
        Add the photon noise of the injected flux (needs the header GAIN).
    """

    PREFIX: ClassVar[str] = "supernova.difference.inject"

    count: int = setting(20, number(0, 10000, integer=True))
    magnitude_range: tuple[float, float] = setting((-3.0, 0.5), interval(-40.0, 40.0))
    magnitude_reference: str = setting("limit", choice("limit", "absolute"))
    galaxy_fraction: float = setting(0.5, number(0.0, 1.0))
    min_separation_fwhm: float = setting(5.0, number(0.0))
    edge_px: int = setting(16, number(0, integer=True))
    zeropoint: float = setting(25.0, number(-50.0, 100.0))
    poisson: bool = setting(True, flag)


def shifted_psf(psf: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The PSF stamp moved by a sub-pixel ``(dx, dy)`` (cubic spline), still of unit sum."""
    padded = np.pad(psf, 2)
    moved = ndimage.shift(padded, (dy, dx), order=3, mode="constant")[2:-2, 2:-2]
    np.clip(moved, 0.0, None, out=moved)
    return moved / moved.sum()


def add_point_sources(data: np.ndarray, psf: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                      rng: np.random.Generator | None = None, gain: float | None = None) -> None:
    """Add PSF-shaped sources to ``data`` in place.

    Parameters
    ----------
    data : numpy.ndarray
        Image to modify.
    psf : numpy.ndarray
        Odd unit-sum PSF stamp.
    x, y, flux : array_like
        0-based centres and total fluxes (data units); parts falling off the image are dropped.
    rng : numpy.random.Generator, optional
        With ``gain``, draws the photon noise of each source.
    gain : float, optional
        Electrons per data unit.
    """
    half = psf.shape[0] // 2
    ny, nx = data.shape
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    for xc, yc, f in zip(x, y, np.broadcast_to(flux, x.shape)):
        ix, iy = int(round(xc)), int(round(yc))
        stamp = f * shifted_psf(psf, xc - ix, yc - iy)
        if rng is not None and gain:
            stamp = stamp + rng.normal(0.0, 1.0, stamp.shape) * np.sqrt(np.clip(stamp, 0, None) / gain)
        y0, x0 = iy - half, ix - half
        ys, xs = slice(max(y0, 0), min(y0 + psf.shape[0], ny)), slice(max(x0, 0), min(x0 + psf.shape[1], nx))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        data[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0].astype(data.dtype)


def limiting_flux(psf: np.ndarray, sigma: float, snr: float = 5.0) -> float:
    """Flux of a point source detected at ``snr`` by PSF fitting on sky noise ``sigma``."""
    return snr * sigma / math.sqrt(float(np.sum(psf ** 2)))


def galaxy_map(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, psf: np.ndarray, fwhm: float) -> np.ndarray:
    """Surface brightness of extended sources (0 elsewhere), for placing fakes on galaxies."""
    sigma = fwhm / 2.355
    clean = np.where(mask, 0.0, np.nan_to_num(data)).astype(np.float32)
    smooth = ndimage.gaussian_filter(clean, sigma)
    # Smoothing by the PSF lowers the noise by about 1 / (2 sqrt(pi) sigma).
    noise = np.where(rms > 0, rms, np.inf) / (2 * math.sqrt(math.pi) * max(sigma, 0.5))
    labels, n = ndimage.label(smooth > 3 * noise)
    if n == 0:
        return np.zeros_like(clean)
    # Per-region statistics with bincount / maximum.at: ndimage's labelled statistics sort the image.
    inside = labels > 0
    region = labels[inside]
    values = clean[inside]
    area = np.bincount(region, minlength=n + 1)[1:]
    total = np.bincount(region, weights=values, minlength=n + 1)[1:]
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, region, values)
    peak = peak[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        concentration = np.where(total > 0, peak / total, np.inf)
    extended = (area >= 4 * math.pi * fwhm ** 2) & (concentration < 0.5 * psf.max())
    keep = np.zeros(n + 1, bool)
    keep[1:] = extended
    return np.where(keep[labels], np.clip(smooth, 0, None), 0.0)


def inject_sources(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, psf: np.ndarray, fwhm: float,
                   sigma: float, wcs, settings: InjectSettings, rng: np.random.Generator,
                   zeropoint: float | None = None, gain: float | None = None,
                   avoid: np.ndarray | None = None) -> pd.DataFrame:
    """Inject fake point sources into a background-subtracted science image (in place).

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted science image; modified in place.
    rms : numpy.ndarray
        Its sky-noise map.
    mask : numpy.ndarray
        True where no source may go (bad pixels, no reference coverage).
    psf : numpy.ndarray
        Science PSF stamp (unit sum).
    fwhm : float
        Its FWHM, pixels.
    sigma : float
        Typical sky noise (for the limiting magnitude).
    wcs : astropy.wcs.WCS
        Science WCS (for ``ra, dec``).
    settings : InjectSettings
    rng : numpy.random.Generator
    zeropoint : float, optional
        Header zero point; ``settings.zeropoint`` when None.
    gain : float, optional
        Electrons per data unit for the photon noise.
    avoid : numpy.ndarray, optional
        ``(n, 2)`` pixel positions ``(x, y)`` to keep away from (bright sources).

    Returns
    -------
    pandas.DataFrame
        One row per source, columns ``INJECTION_COLUMNS``; ``snr`` is the expected S/N of PSF
        photometry on the science image alone.
    """
    empty = pd.DataFrame({name: [] for name in INJECTION_COLUMNS})
    if settings.count == 0:
        return empty
    zp = settings.zeropoint if zeropoint is None else zeropoint
    f_lim = limiting_flux(psf, sigma)
    low, high = settings.magnitude_range
    if settings.magnitude_reference == "limit":
        m_lim = zp - 2.5 * math.log10(f_lim)
        low, high = m_lim + low, m_lim + high
    mags = rng.uniform(low, high, settings.count)

    positions, placement = _positions(data, rms, mask, psf, fwhm, settings, rng, avoid)
    if len(positions) < settings.count:
        log.warning("room for only %d of %d injected sources", len(positions), settings.count)
    mags = mags[:len(positions)]
    if len(positions) == 0:
        return empty
    flux = 10 ** (-0.4 * (mags - zp))
    x, y = positions[:, 0], positions[:, 1]
    add_point_sources(data, psf, x, y, flux, rng=rng, gain=gain if settings.poisson else None)
    ra, dec = wcs.pixel_to_world_values(x, y)
    return pd.DataFrame({"injection_id": np.arange(1, len(x) + 1), "x": x, "y": y, "ra": ra, "dec": dec,
                         "flux": flux, "mag": mags, "snr": 5.0 * flux / f_lim, "placement": placement})


def _positions(data, rms, mask, psf, fwhm, settings, rng, avoid):
    ny, nx = data.shape
    separation = settings.min_separation_fwhm * fwhm
    edge = settings.edge_px
    # Forbidden: bad/uncovered pixels grown by the separation (this also keeps the footprint edge away).
    grow = max(int(math.ceil(separation)), edge)
    # A square maximum filter grows the mask in one separable pass (binary_dilation iterates).
    forbidden = ndimage.maximum_filter(mask, size=2 * grow + 1) if mask.any() else np.zeros_like(mask)
    forbidden[:edge, :] = forbidden[-edge or ny:, :] = True
    forbidden[:, :edge] = forbidden[:, -edge or nx:] = True
    allowed = ~forbidden
    if not allowed.any():
        return np.empty((0, 2)), np.array([], dtype=object)

    n_galaxy = int(round(settings.galaxy_fraction * settings.count))
    weights = galaxy_map(data, rms, mask, psf, fwhm) * allowed if n_galaxy else None
    n_draw = 20 * settings.count
    draws, kinds = [], []
    if weights is not None and weights.sum() > 0:
        p = (weights / weights.sum()).ravel()
        flat = rng.choice(p.size, size=n_draw, p=p)
        draws.append(np.column_stack([flat % nx, flat // nx]) + rng.uniform(-0.5, 0.5, (n_draw, 2)))
        kinds.append(np.full(n_draw, "galaxy", dtype=object))
    else:
        n_galaxy = 0
    good = np.flatnonzero(allowed.ravel())
    flat = good[rng.integers(0, good.size, n_draw)]
    draws.append(np.column_stack([flat % nx, flat // nx]) + rng.uniform(-0.5, 0.5, (n_draw, 2)))
    kinds.append(np.full(n_draw, "random", dtype=object))

    avoid_tree = cKDTree(avoid) if avoid is not None and len(avoid) else None
    chosen, chosen_kind = [], []
    for block, kind, wanted in zip(draws, kinds, ([n_galaxy] if len(draws) == 2 else []) + [settings.count]):
        for point, label in zip(block, kind):
            if len(chosen) >= wanted:
                break
            ix, iy = int(round(point[0])), int(round(point[1]))
            if not (0 <= ix < nx and 0 <= iy < ny) or not allowed[iy, ix]:
                continue
            if avoid_tree is not None and avoid_tree.query_ball_point(point, separation):
                continue
            if chosen and np.min(np.hypot(*(np.asarray(chosen) - point).T)) < separation:
                continue
            chosen.append(point)
            chosen_kind.append(label)
    return np.asarray(chosen, float).reshape(-1, 2), np.asarray(chosen_kind, dtype=object)
