"""Fake point sources: PSF-shaped transients added to the science image before subtraction.

They give the real/bogus classifier many "real" examples per pair, placed where supernovae
occur (on galaxy nuclei, on and near galaxies) and at random, and they work identically for
synthetic and real archive images. Each has a known position and flux, so their recovery
measures the pipeline.

Shape (``psf``): the fakes are drawn from a PSF model independent of the one the subtraction
uses, so that an error in the shared PSF estimate cannot make the fakes match the subtraction
better than real transients do. ``moffat`` (the default) is a photutils ``MoffatPSF`` whose
width and index are fitted (photutils ``PSFPhotometry``, about 10 ms a star) to the image's
brightest PSF stars and medianed: an analytic profile fitted to the stars themselves, not the
stacked stamp the subtraction uses (or its Gaussian fallback). With fewer than 3 good fits it
is a Moffat of the measured FWHM and ``moffat_beta`` (recorded as ``moffat_fwhm``). ``epsf`` is
photutils' effective PSF (``EPSFBuilder``, oversampled twice, two iterations) of the same stars,
closer to a PSF that is no Moffat but 0.2-2 s an image (it falls back to ``moffat``).
``subtraction`` reuses the subtraction's PSF stamp (the former behaviour). Every stamp is
evaluated at the source's sub-pixel position and normalised to unit sum over the stamp, as the
subtraction's PSFs are, so ``flux`` is what PSF photometry measures.

Brightness: ``magnitude_range`` is drawn uniformly in magnitude. With
``magnitude_reference = "limit"`` (the default) the range is relative to the image's
5-sigma point-source limiting magnitude ``m_lim = zp - 2.5 log10(5 sigma / sqrt(sum P^2))``,
so ``[-7, 0.5]`` spans S/N of about 3000 down to 3 whatever the mission. That S/N counts the
science image's sky noise alone: the supernovae of the demo survey reach 100-5000 on that scale
(median about 800), and, with their own photon noise, the reference's noise and the registration
noise, S_corr of 20-230, which the brightest fakes match. With ``"absolute"`` the range is in
magnitudes of the image zero point (header ``ZEROPT``/``MAGZPT``, else ``zeropoint``). The table
records the flux (image units), the magnitude and that sky-only S/N (``snr``).

Placement (``placement`` column): ``nucleus``: ``nucleus_fraction`` of the fakes at the
brightest peaks of the galaxy map, brightest first, one per peak (they may sit on bright
sources, where subtraction residuals are worst; the pipeline takes the peaks of the
reference's galaxy map, so that a bright transient on its host is no "nucleus");
``galaxy``: ``galaxy_fraction`` drawn inside extended sources with probability proportional to
their surface brightness, as supernova rates follow the light; ``random``: the rest,
uniformly. Extended sources are the connected regions of the PSF-smoothed S/N map above 3
whose peak-to-total flux ratio is below half that of the PSF (point sources are more
concentrated). Places left over (too few nuclei or galaxies) go to the next kind.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from astropy.nddata import NDData
from astropy.table import Table
from photutils.detection import find_peaks
from photutils.psf import EPSFBuilder, MoffatPSF, PSFPhotometry, extract_stars
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.errors import ConfigError
from astrodag.settings import Settings, choice, flag, interval, number, setting

log = logging.getLogger(__name__)

INJECTION_COLUMNS = ("injection_id", "x", "y", "ra", "dec", "flux", "mag", "snr", "placement")
PLACEMENTS = ("nucleus", "galaxy", "random")
EPSF_OVERSAMPLING = 2
MOFFAT_STARS = 10  # brightest PSF stars the Moffat profile is fitted to
MIN_FITTED_STARS = 3
_FAILED_FIT = 2 | 4 | 8  # photutils flags: centre left the box, negative flux, not converged
EPSF_ITERATIONS = 2  # one refit of the stars' centres on the ePSF itself (0.1-0.5 s for 25 stars)


@dataclass(frozen=True)
class InjectSettings(Settings):
    """Fake-source injection (config ``supernova.difference.inject``).

    Keys
    ----
    count : int, default 20
        Sources injected per science image (0 disables injection).
    magnitude_range : [float, float], default [-7.0, 0.5]
        Magnitudes drawn uniformly in this range (see ``magnitude_reference``); with ``limit``,
        sky-only S/N of about 3000 down to 3, as bright as the brightest supernovae.
    magnitude_reference : {"limit", "absolute"}, default "limit"
        ``limit``: relative to the image's 5-sigma limiting magnitude; ``absolute``: on the
        image's zero point.
    nucleus_fraction : float, default 0.1
        Fraction placed on the brightest galaxy peaks (nuclei), one per peak, even on bright
        sources.
    galaxy_fraction : float, default 0.4
        Fraction placed on or near galaxies (the rest uniformly at random); all are random
        when the image has no galaxy. ``nucleus_fraction + galaxy_fraction`` is at most 1.
    psf : {"moffat", "epsf", "subtraction"}, default "moffat"
        Shape of the fakes (see the module notes): a Moffat profile fitted to the image's
        stars, photutils' effective PSF of those stars, or the subtraction's own PSF stamp.
    moffat_beta : float, default 3.0
        Moffat index when the image has too few stars to fit one.
    min_separation_fwhm : float, default 5.0
        Minimum distance, in PSF FWHMs, from each other, from bright sources (S/N > 50; not
        for nucleus fakes) and from bad pixels.
    edge_px : int, default 16
        Minimum distance from the image edges and the reference footprint edge.
    zeropoint : float, default 25.0
        Zero point (magnitude of one data unit) used when the header has none.
    poisson : bool, default true
        Add the photon noise of the injected flux (needs the header GAIN).
    """

    PREFIX: ClassVar[str] = "supernova.difference.inject"

    count: int = setting(20, number(0, 10000, integer=True))
    magnitude_range: tuple[float, float] = setting((-7.0, 0.5), interval(-40.0, 40.0))
    magnitude_reference: str = setting("limit", choice("limit", "absolute"))
    nucleus_fraction: float = setting(0.1, number(0.0, 1.0))
    galaxy_fraction: float = setting(0.4, number(0.0, 1.0))
    psf: str = setting("moffat", choice("moffat", "epsf", "subtraction"))
    moffat_beta: float = setting(3.0, number(1.0, 20.0, low_open=True))
    min_separation_fwhm: float = setting(5.0, number(0.0))
    edge_px: int = setting(16, number(0, integer=True))
    zeropoint: float = setting(25.0, number(-50.0, 100.0))
    poisson: bool = setting(True, flag)

    def validate(self, prefix: str) -> None:
        if self.nucleus_fraction + self.galaxy_fraction > 1.0 + 1e-9:
            raise ConfigError(f"{prefix}.nucleus_fraction",
                              f"plus galaxy_fraction must be at most 1, got {self.nucleus_fraction} + "
                              f"{self.galaxy_fraction}")


def shifted_psf(psf: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The PSF stamp moved by a sub-pixel ``(dx, dy)`` (cubic spline), still of unit sum."""
    padded = np.pad(psf, 2)
    moved = ndimage.shift(padded, (dy, dx), order=3, mode="constant")[2:-2, 2:-2]
    np.clip(moved, 0.0, None, out=moved)
    return moved / moved.sum()


class FakePSF:
    """Unit-sum stamps of the fakes' shape at any sub-pixel offset.

    Parameters
    ----------
    size : int
        Odd side of the stamps.
    method : str
        ``epsf``, ``moffat`` or ``subtraction`` (recorded in ``difference.json``).
    model : astropy model, optional
        A photutils PSF model (``flux``, ``x_0``, ``y_0`` parameters) evaluated at pixel centres.
    stamp : numpy.ndarray, optional
        A centred unit-sum stamp moved by a cubic spline (without ``model``).
    """

    def __init__(self, size: int, method: str, model=None, stamp: np.ndarray | None = None):
        if (model is None) == (stamp is None):
            raise ValueError("give exactly one of model and stamp")
        self.size, self.method, self.model, self._stamp = int(size), method, model, stamp
        half = self.size // 2
        self._grid = np.mgrid[-half:half + 1, -half:half + 1].astype(float)

    @classmethod
    def from_stamp(cls, stamp: np.ndarray, method: str = "subtraction") -> FakePSF:
        return cls(stamp.shape[0], method, stamp=np.asarray(stamp, float))

    def stamp(self, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
        """The ``size`` x ``size`` stamp of a source ``(dx, dy)`` pixels from the middle pixel, unit sum."""
        if self.model is None:
            return shifted_psf(self._stamp, dx, dy)
        yy, xx = self._grid
        values = np.clip(self.model.evaluate(xx, yy, 1.0, dx, dy, *self.model.parameters[3:]), 0.0, None)
        return values / values.sum()


def moffat_model(fwhm: float, beta: float) -> MoffatPSF:
    """photutils ``MoffatPSF`` of unit flux with this FWHM (pixels) and index."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return MoffatPSF(flux=1.0, alpha=alpha, beta=beta)


def fit_moffat(data: np.ndarray, mask: np.ndarray, stars: pd.DataFrame, fwhm: float) -> MoffatPSF | None:
    """Moffat profile fitted to the stars (photutils ``PSFPhotometry``; median width and index), None below 3 fits."""
    if len(stars) < MIN_FITTED_STARS:
        return None
    model = moffat_model(fwhm, 3.0)
    model.alpha.fixed = model.beta.fixed = False
    model.beta.bounds = (1.05, 50.0)  # beta <= 1 has no finite flux
    fit_shape = 2 * math.ceil(2 * fwhm) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-converged fits are flagged and dropped below
        result = PSFPhotometry(model, fit_shape, aperture_radius=1.5 * fwhm)(
            np.nan_to_num(data), mask=mask, init_params=Table({"x": stars["x"].to_numpy(float),
                                                               "y": stars["y"].to_numpy(float)}))
    alpha, beta = np.asarray(result["alpha_fit"], float), np.asarray(result["beta_fit"], float)
    good = ((np.asarray(result["flags"], int) & _FAILED_FIT) == 0) & np.isfinite(alpha) & np.isfinite(beta) \
        & (alpha > 0) & (beta > 1.05) & (np.asarray(result["flux_fit"], float) > 0)
    if good.sum() < MIN_FITTED_STARS:
        return None
    return MoffatPSF(flux=1.0, alpha=float(np.median(alpha[good])), beta=float(np.median(beta[good])))


def injection_psf(data: np.ndarray, mask: np.ndarray, stars: pd.DataFrame, fwhm: float, stamp: np.ndarray,
                  settings: InjectSettings) -> FakePSF:
    """The fakes' shape (see the module notes).

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted science image (before injection).
    mask : numpy.ndarray
        Its bad pixels.
    stars : pandas.DataFrame
        Its PSF stars (``x, y``: fitted centres), brightest first, as
        :func:`astrodag.supernova.imaging.psf.estimate_psf` finds them.
    fwhm : float
        Measured FWHM, pixels.
    stamp : numpy.ndarray
        The subtraction's PSF stamp (its side is the side of the fakes' stamps).
    settings : InjectSettings
    """
    size = stamp.shape[0]
    if settings.psf == "subtraction":
        return FakePSF.from_stamp(stamp)
    if settings.psf == "epsf" and len(stars) >= MIN_FITTED_STARS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stars too near an edge are dropped with a warning
            cut = extract_stars(NDData(np.nan_to_num(data), mask=mask), Table({"x": stars["x"].to_numpy(float),
                                                                            "y": stars["y"].to_numpy(float)}),
                                size=size)
            if len(cut.all_good_stars) >= MIN_FITTED_STARS:
                built = EPSFBuilder(oversampling=EPSF_OVERSAMPLING, maxiters=EPSF_ITERATIONS, progress_bar=False)(cut)
                model = built.epsf if hasattr(built, "epsf") else built[0]
                if np.isfinite(model.data).all() and model.data.sum() > 0:
                    return FakePSF(size, "epsf", model=model)
    fitted = fit_moffat(data, mask, stars.head(MOFFAT_STARS), fwhm)
    if fitted is not None:
        return FakePSF(size, "moffat", model=fitted)
    log.info("too few stars to fit the fakes' profile: a Moffat of FWHM %.2f px and beta %.2f", fwhm,
             settings.moffat_beta)
    return FakePSF(size, "moffat_fwhm", model=moffat_model(fwhm, settings.moffat_beta))


def add_point_sources(data: np.ndarray, psf: np.ndarray | FakePSF, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                      rng: np.random.Generator | None = None, gain: float | None = None) -> None:
    """Add point sources to ``data`` in place.

    Parameters
    ----------
    data : numpy.ndarray
        Image to modify.
    psf : numpy.ndarray or FakePSF
        Their shape: an odd unit-sum PSF stamp (moved by a cubic spline), or a :class:`FakePSF`.
    x, y, flux : array_like
        0-based centres and total fluxes (data units); parts falling off the image are dropped.
    rng : numpy.random.Generator, optional
        With ``gain``, draws the photon noise of each source.
    gain : float, optional
        Electrons per data unit.
    """
    shape = psf if isinstance(psf, FakePSF) else FakePSF.from_stamp(psf)
    size = shape.size
    half = size // 2
    ny, nx = data.shape
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    for xc, yc, f in zip(x, y, np.broadcast_to(flux, x.shape)):
        ix, iy = int(round(xc)), int(round(yc))
        stamp = f * shape.stamp(xc - ix, yc - iy)
        if rng is not None and gain:
            stamp = stamp + rng.normal(0.0, 1.0, stamp.shape) * np.sqrt(np.clip(stamp, 0, None) / gain)
        y0, x0 = iy - half, ix - half
        ys, xs = slice(max(y0, 0), min(y0 + size, ny)), slice(max(x0, 0), min(x0 + size, nx))
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


def galaxy_peaks(galaxies: np.ndarray, allowed: np.ndarray, fwhm: float) -> np.ndarray:
    """``(n, 2)`` pixel positions ``(x, y)`` of the galaxy map's local maxima where allowed, brightest first."""
    if not galaxies.any():
        return np.empty((0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no peaks found" is a warning in photutils
        table = find_peaks(galaxies, 0.0, box_size=max(3, 2 * int(round(fwhm)) + 1), mask=~allowed)
    if table is None:
        return np.empty((0, 2))
    order = np.argsort(-np.asarray(table["peak_value"], float), kind="stable")
    return np.column_stack([np.asarray(table["x_peak"], float), np.asarray(table["y_peak"], float)])[order]


def inject_sources(data: np.ndarray, rms: np.ndarray, mask: np.ndarray, psf: np.ndarray, fwhm: float,
                   sigma: float, wcs, settings: InjectSettings, rng: np.random.Generator,
                   zeropoint: float | None = None, gain: float | None = None,
                   avoid: np.ndarray | None = None, shape: FakePSF | None = None,
                   nuclei: np.ndarray | None = None) -> pd.DataFrame:
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
        Science PSF stamp (unit sum), for the galaxy map.
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
        ``(n, 2)`` pixel positions ``(x, y)`` to keep away from (bright sources; not for nucleus fakes).
    shape : FakePSF, optional
        The fakes' shape (:func:`injection_psf`); ``psf`` itself when None.
    nuclei : numpy.ndarray, optional
        ``(n, 2)`` positions ``(x, y)`` of galaxy nuclei, brightest first (:func:`galaxy_peaks`
        of the reference); the peaks of ``data``'s own galaxy map when None.

    Returns
    -------
    pandas.DataFrame
        One row per source, columns ``INJECTION_COLUMNS``; ``snr`` is the expected S/N of PSF
        photometry on the science image's sky noise alone.
    """
    empty = pd.DataFrame({name: [] for name in INJECTION_COLUMNS})
    if settings.count == 0:
        return empty
    shape = shape or FakePSF.from_stamp(psf)
    zp = settings.zeropoint if zeropoint is None else zeropoint
    f_lim = limiting_flux(shape.stamp(), sigma)
    low, high = settings.magnitude_range
    if settings.magnitude_reference == "limit":
        m_lim = zp - 2.5 * math.log10(f_lim)
        low, high = m_lim + low, m_lim + high
    mags = rng.uniform(low, high, settings.count)

    positions, placement = _positions(data, rms, mask, psf, fwhm, settings, rng, avoid, nuclei)
    if len(positions) < settings.count:
        log.warning("room for only %d of %d injected sources", len(positions), settings.count)
    mags = mags[:len(positions)]
    if len(positions) == 0:
        return empty
    flux = 10 ** (-0.4 * (mags - zp))
    x, y = positions[:, 0], positions[:, 1]
    add_point_sources(data, shape, x, y, flux, rng=rng, gain=gain if settings.poisson else None)
    ra, dec = wcs.pixel_to_world_values(x, y)
    return pd.DataFrame({"injection_id": np.arange(1, len(x) + 1), "x": x, "y": y, "ra": ra, "dec": dec,
                         "flux": flux, "mag": mags, "snr": 5.0 * flux / f_lim, "placement": placement})


def _positions(data, rms, mask, psf, fwhm, settings, rng, avoid, nuclei):
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

    n_nucleus = int(round(settings.nucleus_fraction * settings.count))
    n_galaxy = int(round(settings.galaxy_fraction * settings.count))
    galaxies = galaxy_map(data, rms, mask, psf, fwhm) * allowed if n_nucleus or n_galaxy else None
    n_draw = 20 * settings.count
    # Candidate positions of each kind, and how many fakes the kinds so far should hold in all:
    # places a kind cannot fill (too few nuclei or galaxies) pass to the next one.
    blocks = []
    if n_nucleus and galaxies is not None:
        peaks = galaxy_peaks(galaxies, allowed, fwhm) if nuclei is None else np.asarray(nuclei, float).reshape(-1, 2)
        blocks.append(("nucleus", peaks + rng.uniform(-0.5, 0.5, peaks.shape), n_nucleus))
    if n_galaxy and galaxies is not None and galaxies.sum() > 0:
        p = (galaxies / galaxies.sum()).ravel()
        flat = rng.choice(p.size, size=n_draw, p=p)
        blocks.append(("galaxy", np.column_stack([flat % nx, flat // nx]) + rng.uniform(-0.5, 0.5, (n_draw, 2)),
                       n_nucleus + n_galaxy))
    good = np.flatnonzero(allowed.ravel())
    flat = good[rng.integers(0, good.size, n_draw)]
    blocks.append(("random", np.column_stack([flat % nx, flat // nx]) + rng.uniform(-0.5, 0.5, (n_draw, 2)),
                   settings.count))

    avoid_tree = cKDTree(avoid) if avoid is not None and len(avoid) else None
    chosen, chosen_kind = [], []
    for kind, block, wanted in blocks:
        for point in block:
            if len(chosen) >= wanted:
                break
            ix, iy = int(round(point[0])), int(round(point[1]))
            if not (0 <= ix < nx and 0 <= iy < ny) or not allowed[iy, ix]:
                continue
            # Nuclei are bright sources themselves: the fakes there are meant to sit on them.
            if kind != "nucleus" and avoid_tree is not None and avoid_tree.query_ball_point(point, separation):
                continue
            if chosen and np.min(np.hypot(*(np.asarray(chosen) - point).T)) < separation:
                continue
            chosen.append(point)
            chosen_kind.append(kind)
    return np.asarray(chosen, float).reshape(-1, 2), np.asarray(chosen_kind, dtype=object)
