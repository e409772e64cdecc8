"""A (science, reference) pair with known truth made from one real image.

The reference is the real image (plus optional independent noise). The science image is the
same image seen again:

1. resampled (cubic spline) through a known rotation and sub-pixel shift, which is written into
   the science WCS, so a pipeline must undo it from the headers: science pixel ``p`` shows
   reference pixel ``A p + b`` (:class:`Geometry`);
2. convolved with a Gaussian of FWHM ``seeing_fwhm_px`` (worse seeing);
3. multiplied by ``flux_scale`` (a transparency or exposure change; both images have the same
   pixel area, so this is also the true flux ratio of the pipeline's ``flux.ratio``), and a flat
   sky pedestal added so that the sky holds ``sky_electrons`` photo-electrons a pixel;
4. given Gaussian noise of the Poisson variance ``model / GAIN`` (sky and source photon noise),
   with ``GAIN`` chosen so that the sky noise is ``noise_factor`` times the real image's own
   (scaled) sky noise ``sigma_0``.

The real image's own noise is in both epochs: a shared, correlated part of the noise that a
perfect subtraction cancels (science = r K (x) reference, so F_r P_r N - F_n P_n R holds none of
it). Its variance is ``1 / noise_factor**2`` of the science sky's (1/16 by default). A model that
counts the reference's noise as independent (ZOGY does) then overestimates the noise of D, by
about ``sqrt(1 + 1.3 / k**2)`` at low frequencies (the science's smoothed copy adds ~0.3): S_corr's
robust standard deviation of a perfect pipeline is about 0.96 for ``k = 4``, inside the 10 %
the tests allow.

Transients are copies of isolated, unsaturated real stars of the image (each local-sky
subtracted, normalised to unit sum, moved by a cubic-spline shift to the target sub-pixel
position in the reference frame), added to the reference-frame image *before* steps 1-4, so they
are resampled, blurred, scaled and given photon noise exactly as the science image is. They sit
inside the common footprint, clear of bad pixels, some on sources (star or galaxy peaks) and
some on empty sky; the flux of each gives a chosen S/N defined by :func:`zogy_snr`.

:func:`make_epochs` writes ``science.fits``, ``reference.fits``, ``truth.csv`` (x, y in science
pixels, 0-based; ra, dec; flux in science units; snr; on_source; star) and ``epochs.json``.
The same seed with ``snr=()`` gives the transient-free pair with the very same noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS
from photutils.centroids import centroid_2dg
from photutils.detection import find_peaks
from photutils.psf import fit_fwhm
from scipy import ndimage

from astrodag.io import write_json, write_table
from astrodag.supernova.imaging.background import estimate_background
from astrodag.supernova.imaging.fitsio import load_image, write_image

TRUTH_COLUMNS = ("x", "y", "ra", "dec", "flux", "snr", "on_source", "star")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class EpochSettings:
    """How the second epoch differs from the real image.

    Attributes
    ----------
    rotation_deg : float
        Rotation of the science grid relative to the reference grid.
    shift_px : (float, float)
        Shift (x, y) in reference pixels of the science grid's centre.
    seeing_fwhm_px : float
        FWHM of the Gaussian the science image is convolved with (0: none).
    flux_scale : float
        Science / reference flux ratio.
    noise_factor : float
        Science sky noise in units of the real image's sky noise (times ``flux_scale``).
    sky_electrons : float
        Photo-electrons a pixel in the science sky (sets the sky pedestal and the gain).
    reference_noise_factor : float
        Independent Gaussian noise added to the reference, in units of its own sky noise.
    snr : tuple of float
        S/N (:func:`zogy_snr`) of the transients, one each; empty for a transient-free pair.
    on_source_fraction : float
        Fraction of the transients placed on a source peak (the rest on empty sky).
    margin_px : int
        Smallest distance of a transient from the footprint's edge and from bad pixels.
    crop : (int, int, int, int) or None
        ``(y0, y1, x0, x1)`` of the real image to use (None: all of it).
    """

    rotation_deg: float = 1.5
    shift_px: tuple[float, float] = (2.37, -1.61)
    seeing_fwhm_px: float = 2.0
    flux_scale: float = 1.1
    noise_factor: float = 4.0
    sky_electrons: float = 1.0e4
    reference_noise_factor: float = 0.0
    snr: tuple[float, ...] = (8.0, 10.0, 12.0, 16.0, 25.0, 40.0)
    on_source_fraction: float = 0.5
    margin_px: int = 20
    crop: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Geometry:
    """Science pixel ``p`` (0-based x, y) shows reference pixel ``matrix @ p + offset``."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def rotation(cls, shape: tuple[int, int], rotation_deg: float, shift_px: tuple[float, float]) -> Geometry:
        """A rotation about the image centre followed by a shift."""
        angle = math.radians(rotation_deg)
        matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
        return cls(matrix, centre - matrix @ centre + np.asarray(shift_px, float))

    def to_reference(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        ref = self.matrix @ np.vstack([np.ravel(x), np.ravel(y)]) + self.offset[:, None]
        return ref[0], ref[1]

    def to_science(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        sci = np.linalg.solve(self.matrix, np.vstack([np.ravel(x), np.ravel(y)]) - self.offset[:, None])
        return sci[0], sci[1]

    def science_wcs(self, wcs: WCS) -> WCS:
        """The reference WCS composed with this map: the science pixel of a sky position.

        world = f(M (p_ref - c)) with p_ref = A p + b gives world = f(M A (p - A^-1 (c - b))),
        M the reference's pixel-scale matrix, c its 0-based reference pixel; any projection.
        """
        science = wcs.deepcopy()
        centre = np.linalg.solve(self.matrix, wcs.wcs.crpix - 1.0 - self.offset)
        linear = wcs.pixel_scale_matrix @ self.matrix
        if science.wcs.has_cd():
            science.wcs.cd = linear
        else:
            science.wcs.pc = linear
            science.wcs.cdelt = [1.0, 1.0]
        science.wcs.crpix = centre + 1.0
        science.wcs.set()
        return science


def zogy_snr(flux: float, psf_new: np.ndarray, psf_ref: np.ndarray, sigma_new: float, sigma_ref: float,
             f_new: float = 1.0, f_ref: float = 1.0) -> float:
    """Optimal S/N of a point source of ``flux`` (new-image units) in the difference of two images.

    Eq. 41 of Zackay, Ofek & Gal-Yam (2016, ApJ 830, 27), the S/N of the proper difference's
    matched filter, which is optimal for background-dominated white noise:

        (S/N)^2 = flux^2 * sum_k F_r^2 |P_n(k)|^2 |P_r(k)|^2 / (sigma_n^2 F_r^2 |P_r(k)|^2 + sigma_r^2 F_n^2 |P_n(k)|^2)

    with F the flux zero points (data units of one unit of flux), P(k) the unit-sum PSFs'
    discrete Fourier transforms and the sum over all N frequencies divided by N (Parseval).
    Only |P(k)| enters, so the PSFs need no common centre; both are zero-padded to one size.

    Parameters
    ----------
    flux : float
        Flux of the source in the new image, in units where F_n = ``f_new``.
    psf_new, psf_ref : numpy.ndarray
        PSF stamps (normalised here to unit sum).
    sigma_new, sigma_ref : float
        Per-pixel noise (1 sigma) of the new and reference images around the source.
    f_new, f_ref : float
        Flux zero points; a reference in its own units under a science/reference flux ratio r
        has ``f_ref = 1 / r`` with ``f_new = 1``.
    """
    size = 2 * max(max(psf_new.shape), max(psf_ref.shape))
    pn = np.abs(np.fft.fft2(psf_new / psf_new.sum(), (size, size))) ** 2
    pr = np.abs(np.fft.fft2(psf_ref / psf_ref.sum(), (size, size))) ** 2
    ratio = f_ref ** 2 * f_new ** 2 * pn * pr / (sigma_new ** 2 * f_ref ** 2 * pr + sigma_ref ** 2 * f_new ** 2 * pn)
    return float(flux * math.sqrt(ratio.sum() / size ** 2))


@dataclass
class Star:
    """An isolated real star: unit-sum, sky-subtracted stamp and its centroid in stamp pixels."""

    stamp: np.ndarray
    x: float
    y: float
    source_x: float
    source_y: float


@dataclass
class EpochPair:
    """What :func:`make_epochs` wrote and the truth."""

    science: Path
    reference: Path
    truth: pd.DataFrame
    geometry: Geometry
    meta: dict = field(default_factory=dict)


def _fwhms(data: np.ndarray, peaks: pd.DataFrame) -> np.ndarray:
    """Fitted Gaussian FWHM (pixels) of each peak."""
    xy = peaks[["x", "y"]].to_numpy(float)
    return np.asarray(fit_fwhm(data, xypos=xy, fit_shape=7), float)


def isolated_stars(data: np.ndarray, mask: np.ndarray, sigma: float, count: int = 5) -> tuple[list[Star], float]:
    """The ``count`` brightest isolated, unsaturated, point-like stars of a sky-subtracted image.

    Bright: peak above 15 sigma. Isolated: no other peak above 5 sigma within 1.5 stamp half-sizes, no bad pixel in the
    stamp. Unsaturated: peak below half the image's highest peak (photographic and JPEG cores
    flatten well before the maximum). Point-like: fitted FWHM within 25 % of the median FWHM of
    the sharpest third of the bright peaks (drops galaxies). Stamps are 6 FWHM + 1 wide, their
    sky the median of their outer 2-pixel ring. Returns the stars and the median FWHM.
    """
    table = find_peaks(data, 5 * sigma, box_size=5, mask=mask, border_width=4)
    if table is None or len(table) < 3:
        raise ValueError("too few sources to choose transient stamps from")
    peaks = pd.DataFrame({"x": np.asarray(table["x_peak"], float), "y": np.asarray(table["y_peak"], float),
                          "peak": np.asarray(table["peak_value"], float)}).sort_values("peak", ascending=False)
    bright = peaks[(peaks["peak"] > 15 * sigma) & (peaks["peak"] < 0.5 * peaks["peak"].max())].head(60).copy()
    if bright.empty:
        raise ValueError("no unsaturated bright star to make transient stamps from")
    bright["fwhm"] = _fwhms(data, bright)
    sharp = np.sort(bright["fwhm"].to_numpy())[: max(1, len(bright) // 3)]
    fwhm = float(np.median(sharp))
    half = int(math.ceil(3 * fwhm))
    bad = ndimage.binary_dilation(mask, iterations=half + 1) if mask.any() else mask
    stars: list[Star] = []
    all_xy = peaks[["x", "y"]].to_numpy()
    for row in bright.itertuples():
        if abs(row.fwhm - fwhm) > 0.25 * fwhm:
            continue
        ix, iy = int(row.x), int(row.y)
        if not (half + 2 <= ix < data.shape[1] - half - 2 and half + 2 <= iy < data.shape[0] - half - 2) or bad[iy, ix]:
            continue
        distance = np.hypot(all_xy[:, 0] - row.x, all_xy[:, 1] - row.y)
        if np.count_nonzero(distance < 1.5 * half) > 1:
            continue
        stamp = data[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(float)
        ring = np.ones(stamp.shape, bool)
        ring[2:-2, 2:-2] = False
        stamp = stamp - np.median(stamp[ring])
        box = int(math.ceil(fwhm)) + 1
        core = stamp[half - box:half + box + 1, half - box:half + box + 1]
        cx, cy = centroid_2dg(core)
        stars.append(Star(stamp / stamp.sum(), cx + half - box, cy + half - box, float(row.x), float(row.y)))
        if len(stars) == count:
            break
    if not stars:
        raise ValueError("no isolated point-like star to make transient stamps from")
    return stars, fwhm


def _place(star: Star, x: float, y: float, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """The star's stamp shifted (cubic spline) so that its centroid falls on (x, y); unit sum."""
    half = star.stamp.shape[0] // 2
    ix, iy = int(round(x)), int(round(y))
    shifted = ndimage.shift(star.stamp, (half + y - iy - star.y, half + x - ix - star.x), order=3, mode="constant")
    window = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
    if window[0].start < 0 or window[1].start < 0 or window[0].stop > shape[0] or window[1].stop > shape[1]:
        raise ValueError(f"transient at ({x:.1f}, {y:.1f}) too close to the edge")
    return window, shifted / shifted.sum()


def observe(image: np.ndarray, geometry: Geometry, seeing_fwhm_px: float, scale: float) -> np.ndarray:
    """``image`` (reference frame, no NaN) as the science image sees it, before sky and noise."""
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    xr, yr = geometry.to_reference(x.ravel(), y.ravel())
    resampled = ndimage.map_coordinates(image, [yr, xr], order=3, mode="constant", cval=0.0).reshape(image.shape)
    if seeing_fwhm_px > 0:
        resampled = ndimage.gaussian_filter(resampled, seeing_fwhm_px * FWHM_TO_SIGMA, mode="constant")
    return scale * resampled


def _footprint(shape: tuple[int, int], geometry: Geometry, bad: np.ndarray, margin: int) -> np.ndarray:
    """Science pixels at least ``margin`` px inside the reference and from its bad pixels."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    xr, yr = geometry.to_reference(x.ravel(), y.ravel())
    inside = (xr >= margin) & (xr <= nx - 1 - margin) & (yr >= margin) & (yr <= ny - 1 - margin)
    far = ~ndimage.binary_dilation(bad, iterations=margin) if bad.any() else np.ones(shape, bool)
    ix = np.clip(np.round(xr).astype(int), 0, nx - 1)
    iy = np.clip(np.round(yr).astype(int), 0, ny - 1)
    return (inside & far[iy, ix]).reshape(shape)


def _positions(data: np.ndarray, sigma: float, fwhm: float, geometry: Geometry, allowed: np.ndarray, stars: list[Star],
               n_on: int, n_off: int, rng: np.random.Generator) -> list[tuple[float, float, bool]]:
    """Reference-frame positions: ``n_on`` on source peaks (5 to 200 sigma), ``n_off`` on empty sky."""
    smooth = ndimage.gaussian_filter(data, fwhm * FWHM_TO_SIGMA)
    noise = sigma / (2 * math.sqrt(math.pi) * fwhm * FWHM_TO_SIGMA)  # white noise through the Gaussian
    sources = smooth > 2 * noise

    def ok(x, y):
        xs, ys = geometry.to_science(x, y)
        ix, iy = int(round(xs[0])), int(round(ys[0]))
        return 0 <= iy < allowed.shape[0] and 0 <= ix < allowed.shape[1] and allowed[iy, ix]

    taken = [(s.source_x, s.source_y) for s in stars]
    spacing = 6 * fwhm + 4

    def free(x, y):
        return all(math.hypot(x - a, y - b) > spacing for a, b in taken)

    chosen: list[tuple[float, float, bool]] = []
    table = find_peaks(smooth, 5 * noise, box_size=int(2 * fwhm) | 1)
    if table is not None:
        peaks = np.column_stack([table["x_peak"], table["y_peak"], table["peak_value"]]).astype(float)
        peaks = peaks[(peaks[:, 2] < 200 * noise)]
        for x, y, _ in peaks[rng.permutation(len(peaks))]:
            if len([c for c in chosen if c[2]]) == n_on:
                break
            # The spline-shifted stamp lands at the sub-pixel position; a nucleus peak is at most 0.5 px off.
            x, y = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            if ok(x, y) and free(x, y):
                chosen.append((x, y, True))
                taken.append((x, y))
    empty = ~ndimage.binary_dilation(sources, iterations=int(math.ceil(2 * fwhm)))
    for _ in range(20000):
        if len(chosen) == n_on + n_off:
            break
        x, y = rng.uniform(0, data.shape[1] - 1), rng.uniform(0, data.shape[0] - 1)
        if empty[int(round(y)), int(round(x))] and ok(x, y) and free(x, y):
            chosen.append((x, y, False))
            taken.append((x, y))
    if len(chosen) < n_on + n_off:
        raise ValueError(f"room for only {len(chosen)} of {n_on + n_off} transients")
    return chosen


def make_epochs(image_path: str | Path, out_dir: str | Path, settings: EpochSettings | None = None,
                seed: int = 0) -> EpochPair:
    """Write a (science, reference) pair with known truth made from the real image ``image_path``.

    See the module notes for what is done. Returns the paths, the truth table (one row per
    transient, :data:`TRUTH_COLUMNS`), the geometry and the record written to ``epochs.json``.
    """
    settings = settings or EpochSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = load_image(image_path, dtype=np.float64)
    data, mask, wcs = real.data, real.mask, real.wcs
    if settings.crop is not None:
        y0, y1, x0, x1 = settings.crop
        data, mask, wcs = data[y0:y1, x0:x1], mask[y0:y1, x0:x1], wcs[y0:y1, x0:x1]
    shape = data.shape
    # Independent streams: the noise is the same with and without transients.
    noise_rng, place_rng = (np.random.default_rng([seed, k]) for k in (1, 2))
    unit_noise = noise_rng.standard_normal(shape)
    reference_noise = noise_rng.standard_normal(shape)

    background = estimate_background(data.astype(np.float32), mask)
    sky = background.background.astype(float)
    sigma_0 = float(background.rms_median)
    filled = np.where(mask, sky, data)
    residual = filled - sky
    geometry = Geometry.rotation(shape, settings.rotation_deg, settings.shift_px)

    scale = settings.flux_scale
    sigma_sky = settings.noise_factor * scale * sigma_0
    gain = math.sqrt(settings.sky_electrons) / sigma_sky  # sky_level / gain = sigma_sky^2
    pedestal = sigma_sky ** 2 * gain - scale * float(np.median(sky))

    layer = np.zeros(shape)
    truth = []
    n = len(settings.snr)
    stars, fwhm = isolated_stars(residual, mask, sigma_0) if n else ([], float("nan"))
    static = observe(filled, geometry, settings.seeing_fwhm_px, scale) + pedestal
    if n:
        n_on = int(round(settings.on_source_fraction * n))
        allowed = _footprint(shape, geometry, mask, settings.margin_px)
        positions = _positions(residual, sigma_0, fwhm, geometry, allowed, stars, n_on, n - n_on, place_rng)
        unit = np.zeros(shape)
        windows = []
        for k, (xr, yr, on_source) in enumerate(positions):
            window, stamp = _place(stars[k % len(stars)], xr, yr, shape)
            unit[window] += stamp
            windows.append((window, stamp))
        unit_science = observe(unit, geometry, settings.seeing_fwhm_px, 1.0)
        ref_var_map = background.rms.astype(float) ** 2 + (np.clip(residual, 0, None) / real.gain if real.gain else 0)
        ref_var_map = ref_var_map * (1 + settings.reference_noise_factor ** 2)
        kernel_var = _kernel_variance(settings)
        for k, ((xr, yr, on_source), (window, stamp), snr) in enumerate(zip(positions, windows, settings.snr)):
            xs, ys = (float(v[0]) for v in geometry.to_science(xr, yr))
            half = stamp.shape[0] // 2 + int(math.ceil(2 * settings.seeing_fwhm_px))
            ix, iy = int(round(xs)), int(round(ys))
            psf_new = unit_science[iy - half:iy + half + 1, ix - half:ix + half + 1]
            # Local noise of both images at the transient, without its own photon noise.
            host = max(float(static[iy, ix]), 0.0)
            var_new = host / gain + (scale * sigma_0) ** 2 * kernel_var
            var_ref = float(ref_var_map[int(round(yr)), int(round(xr))])
            flux = snr / zogy_snr(1.0, psf_new, stamp, math.sqrt(var_new), math.sqrt(var_ref), 1.0, 1.0 / scale)
            layer[window] += stamp * flux / scale
            ra, dec = wcs.pixel_to_world_values(xr, yr)
            truth.append({"x": xs, "y": ys, "ra": float(ra), "dec": float(dec), "flux": flux, "snr": float(snr),
                          "on_source": bool(on_source), "star": k % len(stars)})
    model = static + observe(layer, geometry, settings.seeing_fwhm_px, scale) if n else static
    science = model + np.sqrt(np.clip(model, 0, None) / gain) * unit_noise
    coverage = observe(np.ones(shape), geometry, 0.0, 1.0)
    science_bad = (observe(mask.astype(float), geometry, 0.0, 1.0) > 0.01) | (coverage < 0.99)
    science[science_bad] = np.nan
    reference = data + settings.reference_noise_factor * sigma_0 * reference_noise
    reference[mask] = np.nan

    science_wcs = geometry.science_wcs(wcs)
    science_path, reference_path = out_dir / "science.fits", out_dir / "reference.fits"
    _write(science_path, science, science_wcs, {"GAIN": (gain, "e-/ADU (synthetic epoch)"),
                                                "RDNOISE": (0.0, "e- (Poisson-like noise only)")}, real.header)
    ref_cards = {key: (real.header[key], real.header.comments[key]) for key in ("GAIN", "RDNOISE", "READNOIS",
                                                                               "SATURATE") if key in real.header}
    _write(reference_path, reference, wcs, ref_cards, real.header)
    truth_table = pd.DataFrame(truth, columns=list(TRUTH_COLUMNS))
    write_table(out_dir / "truth.csv", truth_table)
    meta = {"image": str(image_path), "seed": int(seed), "settings": asdict(settings), "shape": list(shape),
            "geometry": {"matrix": geometry.matrix.tolist(), "offset": geometry.offset.tolist()},
            "flux_ratio": scale, "gain": gain, "sky_pedestal": pedestal, "sigma_0": sigma_0,
            "science_sky_sigma": sigma_sky, "reference_fwhm_px": fwhm,
            "shared_variance_fraction": 1.0 / settings.noise_factor ** 2,
            "stars": [[s.source_x, s.source_y] for s in stars]}
    write_json(out_dir / "epochs.json", meta)
    return EpochPair(science_path, reference_path, truth_table, geometry, meta)


def score_candidates(candidates: pd.DataFrame, truth: pd.DataFrame, min_snr: float = 8.0, found_px: float = 1.0,
                     false_px: float = 2.0) -> dict:
    """Compare candidates (``x``, ``y``, science pixels) with a truth table.

    Returns ``recovered`` (truth rows of S/N >= ``min_snr`` with a candidate within ``found_px``),
    ``expected`` (how many such rows), ``missed`` (their truth rows not recovered) and ``false``
    (candidates farther than ``false_px`` from every truth row).
    """
    bright = truth[truth["snr"] >= min_snr]
    if len(candidates) and len(truth):
        dx = truth["x"].to_numpy()[:, None] - candidates["x"].to_numpy()[None, :]
        dy = truth["y"].to_numpy()[:, None] - candidates["y"].to_numpy()[None, :]
        distance = np.hypot(dx, dy)
        nearest = distance.min(axis=1)[(truth["snr"] >= min_snr).to_numpy()]
        false = int(np.count_nonzero(distance.min(axis=0) > false_px))
    else:
        nearest, false = np.full(len(bright), np.inf), len(candidates)
    return {"recovered": int(np.count_nonzero(nearest <= found_px)), "expected": int(len(bright)),
            "missed": bright[nearest > found_px], "false": false}


def _kernel_variance(settings: EpochSettings) -> float:
    """Fraction of white noise's per-pixel variance left by :func:`observe` (sum of its kernel's squares)."""
    delta = np.zeros((65, 65))
    delta[32, 32] = 1.0
    geometry = Geometry.rotation(delta.shape, settings.rotation_deg, np.mod(settings.shift_px, 1.0))
    return float((observe(delta, geometry, settings.seeing_fwhm_px, 1.0) ** 2).sum())


def _write(path: Path, data: np.ndarray, wcs: WCS, cards: dict, source: fits.Header) -> None:
    header = fits.Header()
    for key in ("TELESCOP", "INSTRUME", "FILTER", "DATE-OBS"):
        if key in source:
            header[key] = source[key]
    for key, value in cards.items():
        header[key] = value
    write_image(path, data.astype(np.float32), wcs, {"stage": "epochs"}, header=header)
