"""Image subtraction: ZOGY proper image subtraction and a Gaussian-convolution baseline.

ZOGY (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27), in Fourier space (hats), for a new (science)
image N and a reference R on the same grid, background-subtracted, with PSFs P_n, P_r (unit
sum), white sky noise sigma_n, sigma_r and flux zero points F_n, F_r (here F_n = 1 and
F_r = 1 / ratio, so fluxes come out in science-image units)::

    den^2  = sigma_n^2 F_r^2 |P_r|^2 + sigma_r^2 F_n^2 |P_n|^2
    D      = (F_r P_r N - F_n P_n R) / den                        (eq. 13; unit white noise)
    F_D    = F_r F_n / sqrt(sigma_n^2 F_r^2 + sigma_r^2 F_n^2)    (eq. 15)
    P_D    = F_r F_n P_r P_n / (F_D den)                          (eq. 14)
    S      = F_D D conj(P_D) = k_n N - k_r R                      (eq. 17; the matched filter)
    k_n    = F_n F_r^2 conj(P_n) |P_r|^2 / den^2,   k_r = F_r F_n^2 conj(P_r) |P_n|^2 / den^2
    V(S)   = V_n (x) k_n^2 + V_r (x) k_r^2                        (eqs. 26-29; real space)
    V_ast  = sum over S_N = k_n N, S_R = k_r R of sigma_x^2 (dS/dx)^2 + sigma_y^2 (dS/dy)^2  (eq. 30-31)
    S_corr = S / sqrt(V(S) + V_ast)                               (eq. 25)

``V_n`` and ``V_r`` are per-pixel variance maps (sky noise squared plus, optionally, the
photon noise of the sources), which is the "per-pixel variance correction" that keeps bright
stars from showing as significant; ``S_corr`` is then a significance in units of sigma. A
point source of flux f in N has expected ``S = f F_S`` with ``F_S = F_D^2 sum(P_D^2)``, so
``f = S / F_S`` (eq. 42). Both images are zero-padded by a PSF-stamp width before the FFTs
so that nothing wraps around the edges; masked pixels are 0 in both images. Zeroing and
convolving do not commute, so those 0s leave residuals wherever the kernels reach a masked
or off-image pixel (a saturated core, a star cut by the edge or the footprint): such pixels
get the variance of an unknown value in ``V_n`` and ``V_r`` (:func:`_unknown_amplitude`: from
the known pixels next to them, up to ~1e12 times the sky's), so that S_corr tends to 0 where
they carry weight. That range is beyond single precision (FFT round-off ~1e-7 of the largest value, everywhere), so the
variance's FFTs run in double precision. Images larger than ``tile_size`` are processed in
overlapping tiles to bound memory (:func:`zogy_tiled`): a whole-image ZOGY holds about ten
image-sized spectra at once (2.6 GB at 8192^2 in single precision), a 2048-pixel tile 0.2 GB.
The FFTs run in the precision of the inputs (single precision in the pipeline: complex64),
those of the variance in double precision; P_D and the squared kernels of the variance are
computed on a small grid of four PSF stamps.

The noise model is never perfect: resampling correlates the reference's noise (and ZOGY
assumes white noise), sky-noise maps are estimates, and the source term, the flux ratio and
the PSFs all enter V(S). :func:`significance_calibration` measures the robust standard
deviation of S_corr where there is only noise (away from sources, masks and edges) so that
the pipeline can rescale S_corr to unit noise and record by how much.

The baseline (:func:`gaussian_difference`) convolves the sharper image with the Gaussian
that matches the broader FWHM (an analytic FFT transfer function), scales the reference by
the flux ratio and subtracts; its significance map is the difference matched-filtered with
the broad Gaussian, divided by its robust standard deviation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.fft as sfft
from astropy.stats import mad_std, sigma_clipped_stats
from scipy import ndimage

from astrodag.settings import Settings, choice, flag, number, optional, setting

log = logging.getLogger(__name__)

# A masked or off-image pixel's value may be up to this many times the brightest good pixel
# next to it (the true core of a saturated star exceeds its unsaturated wings). Measured on a
# star saturated 13 times over its mask threshold (tests/unit/test_supernova_imaging_subtract.py):
# |S_corr| next to the core 16.8, 8.4, 5.6, 3.6 for 1, 2, 3, 5 (10: 3.6); a transient 3 FWHM
# away keeps 90 % of its significance without the star (10: 78-82 %). Stars cut by the image or
# footprint edge alone would need only 2 (|S_corr| < 3.4).
MASKED_AMPLITUDE = 5.0
# Values within this many sigma of 0 are noise (the largest |value| of ~600 noise pixels, a
# block and its neighbours, is about 3.5 sigma): only what exceeds it counts as a source.
NOISE_CLIP = 4.0


@dataclass(frozen=True)
class SubtractSettings(Settings):
    """Subtraction (config ``supernova.difference.subtract``).

    Keys
    ----
    method : {"zogy", "gaussian", "kernel"}, default "zogy"
        ZOGY proper subtraction, the Gaussian-convolution baseline (then the
        "significance" image is the baseline's matched-filter S/N), or a fitted, spatially
        varying convolution kernel (Alard-Lupton, :mod:`astrodag.supernova.imaging.kernel`;
        built for crowded fields: it fits the PSF match and the flux ratio itself).
    tile_size : int, default 2048
        Side of the tiles of a tiled subtraction; images no larger are processed whole (so are
        all images with 0). Tiles bound the memory (see the module notes); at 2048 a tile's FFTs
        are as fast per pixel as the whole image's.
    tile_overlap_px : int, default 64
        Overlap added on each side of a tile (must exceed the PSF stamp for seamless tiles).
    source_noise : bool, default true
        Add the photon noise of the sources (pixel value / GAIN) to the variance maps.
    astrometric_noise_px : float or null, default null
        Registration noise (pixels, per axis) for ZOGY's astrometric variance term; null
        measures it: the scatter of bright matched stars about the fitted registration, their
        centroid noise removed (:mod:`astrodag.supernova.imaging.registration`); 0 switches the term off.
    mask_grow_px : int, default 2
        Bad, saturated and uncovered pixels are grown by this many pixels in the output mask.
    difference_background : bool, default true
        Remove the smooth residual offset of D after subtraction (a Background2D of D in boxes
        twice the sky's, all pixels, median estimator), and the matching offset of S. A sky level off by only
        0.1 sigma per pixel shifts S_corr by about 0.1 sqrt(4 pi s^2) ~ 0.45 sigma at a PSF of
        s = 1.3 px, and the two images' skies rarely agree that well (galaxy halos, gradients,
        the median's bias on photon counts); the noise of D is symmetric, so its median is not.
    kernel_spatial_order : int, default 2
        ``kernel``: polynomial order of the kernel's variation across the image (HOTPANTS' default 2).
    kernel_half_width_fwhm : float, default 3.5
        ``kernel``: half-width of the kernel in FWHMs of the broader PSF (at least 3 pixels); also
        the half-size of the fitting stamps and the growth of bad pixels in the output mask.
    background_order : int, default 1
        ``kernel``: polynomial order of the differential background fitted with the kernel.
    kernel_stamps : int, default 250
        ``kernel``: most star stamps the kernel is fitted on (spread over a grid of cells).
    kernel_sum_varies : bool, default false
        ``kernel``: let the kernel sum (the flux ratio) follow the spatial polynomial too (a
        transparency or flat-field gradient); by default it is one number (Alard 2000).
    significance_tolerance : float or null, default 0.05
        When the robust standard deviation of S_corr away from sources, masks and edges
        (:func:`significance_calibration`) differs from 1 by more than this fraction and by more
        than 3 times its standard error (a small image measures it to a few %), S_corr is
        divided by it (recorded in difference.json ``noise`` and the ``SIGCORR`` card); null
        measures and records it without rescaling.
    workers : int, default 1
        Threads of the FFTs (``scipy.fft`` workers); the workflow runs one per job.
    """

    PREFIX: ClassVar[str] = "supernova.difference.subtract"

    method: str = setting("zogy", choice("zogy", "gaussian", "kernel"))
    tile_size: int = setting(2048, number(0, integer=True))
    tile_overlap_px: int = setting(64, number(0, integer=True))
    source_noise: bool = setting(True, flag)
    astrometric_noise_px: float | None = setting(None, optional(number(0.0, 10.0)))
    mask_grow_px: int = setting(2, number(0, 50, integer=True))
    difference_background: bool = setting(True, flag)
    kernel_spatial_order: int = setting(2, number(0, 4, integer=True))
    kernel_half_width_fwhm: float = setting(3.5, number(0.5, 10.0))
    background_order: int = setting(1, number(0, 4, integer=True))
    kernel_stamps: int = setting(250, number(10, 5000, integer=True))
    kernel_sum_varies: bool = setting(False, flag)
    significance_tolerance: float | None = setting(0.05, optional(number(0.0, 1.0)))
    workers: int = setting(1, number(1, 256, integer=True))

    def validate(self, prefix: str) -> None:
        from astrodag.errors import ConfigError

        if 0 < self.tile_size <= 2 * self.tile_overlap_px:
            raise ConfigError(f"{prefix}.tile_size", f"must exceed twice tile_overlap_px "
                                                     f"({self.tile_overlap_px}), got {self.tile_size}")


# --------------------------------------------------------------------------------------------
# ZOGY
# --------------------------------------------------------------------------------------------


@dataclass
class ZogyResult:
    """ZOGY products on the input grid.

    Attributes
    ----------
    difference : numpy.ndarray
        D, the proper difference image (unit-variance white noise).
    score : numpy.ndarray
        S, the matched-filter score (flux = S / flux_scale).
    significance : numpy.ndarray
        S_corr, S over its per-pixel standard deviation (units of sigma).
    score_noise : numpy.ndarray
        That standard deviation, sqrt(V(S) + V_ast).
    psf : numpy.ndarray
        P_D stamp (unit sum, odd, centred).
    flux_zeropoint : float
        F_D.
    flux_scale : float
        F_S = F_D^2 sum(P_D^2): a point source of flux f has S = f F_S at its centre.
    """

    difference: np.ndarray
    score: np.ndarray
    significance: np.ndarray
    score_noise: np.ndarray
    psf: np.ndarray
    flux_zeropoint: float
    flux_scale: float


def _embed(stamp: np.ndarray, shape: tuple[int, int], dtype) -> np.ndarray:
    """A stamp in a zero array of ``shape`` with its centre pixel at (0, 0) (FFT convention)."""
    out = np.zeros(shape, dtype=dtype)
    h, w = stamp.shape
    rows = (np.arange(h) - h // 2) % shape[0]
    cols = (np.arange(w) - w // 2) % shape[1]
    out[np.ix_(rows, cols)] = stamp
    return out


def _crop_stamp(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` stamp around (0, 0) of an FFT-convention kernel image."""
    offsets = np.arange(size) - size // 2
    return image[np.ix_(offsets % image.shape[0], offsets % image.shape[1])]


def _pad(array: np.ndarray, shape: tuple[int, int], pad: int, dtype, mask: np.ndarray | None = None) -> np.ndarray:
    """``array`` in a zero array of ``shape`` at offset ``pad``, with its ``mask`` pixels 0."""
    out = np.zeros(shape, dtype=dtype)
    inner = out[pad:pad + array.shape[0], pad:pad + array.shape[1]]
    inner[...] = array
    if mask is not None:
        inner[mask] = 0
    return out


def _block_index(n: int, offset: int, block: int) -> np.ndarray:
    """Block of each of ``n`` pixels, blocks aligned on multiples of ``block`` of ``pixel + offset``."""
    absolute = (np.arange(n) + offset) // block
    return absolute - absolute[0]


def _block_max(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Maximum of each block (block indices ``rows`` and ``cols`` of :func:`_block_index`)."""
    starts = [np.flatnonzero(np.diff(index, prepend=-1)) for index in (rows, cols)]
    return np.maximum.reduceat(np.maximum.reduceat(values, starts[0], axis=0), starts[1], axis=1)


@dataclass
class _Blocks:
    """The unknown pixels and the windows of known pixels their values are guessed from (both images)."""

    iy: np.ndarray  # the unknown pixels (on the padded grid)
    ix: np.ndarray
    source: np.ndarray  # each unknown pixel's window
    wy: np.ndarray  # (windows, w, 1) rows and (windows, 1, w) columns of the windows' pixels in the image
    wx: np.ndarray
    known: np.ndarray  # (windows, w, w): which of them are known

    @classmethod
    def of(cls, unknown: np.ndarray, block: int, offset: tuple[int, int], pad: int,
           image: tuple[int, int]) -> _Blocks:
        """Blocks of side ``block`` aligned on the whole image's grid (``offset``: the position of
        ``unknown[0, 0]`` in it, so that the tiles of a tiled subtraction see the same blocks); the
        image lies at ``(pad, pad)`` in ``unknown``. Each unknown pixel's window is the nearest
        block holding a known pixel and the eight around it."""
        rows, cols = (_block_index(n, o, block) for n, o in zip(unknown.shape, offset))
        ny, nx = image
        # Known: the image's good pixels (not the zeros beyond the band of unknown pixels).
        good = np.zeros(unknown.shape, bool)
        good[pad:pad + ny, pad:pad + nx] = ~unknown[pad:pad + ny, pad:pad + nx]
        known = _block_max(good.view(np.uint8), rows, cols).astype(bool)
        iy, ix = np.nonzero(unknown)
        nearest = rows[iy] * known.shape[1] + cols[ix]
        if known.any() and not known.all():
            # Feature transform on the block grid (1 / block^2 of the pixels): nearest
            # neighbours at a fraction of a full-size distance transform's time.
            fy, fx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
            nearest = (fy * known.shape[1] + fx).ravel()[nearest]
        needed, source = np.unique(nearest, return_inverse=True)
        by, bx = np.divmod(needed, known.shape[1])
        span = np.arange(-block, 2 * block)
        wy, wx = (np.clip(np.flatnonzero(np.diff(index, prepend=-1))[b][:, None] + span, 0, n - 1)
                  for index, b, n in ((rows, by, unknown.shape[0]), (cols, bx, unknown.shape[1])))
        wy, wx = wy[:, :, None], wx[:, None, :]
        good = good[wy, wx]
        return cls(iy, ix, source, np.clip(wy - pad, 0, ny - 1), np.clip(wx - pad, 0, nx - 1), good)


def _unknown_amplitude(image: np.ndarray, noise: np.ndarray | float, blocks: _Blocks) -> np.ndarray:
    """How large the value of each unknown pixel (``blocks.iy``, ``blocks.ix``) may be, float64.

    A masked or off-image pixel enters the convolutions as 0; its true value is guessed from
    the known pixels next to it: ``MASKED_AMPLITUDE`` times the largest excess of ``|image|``
    over ``NOISE_CLIP`` times its noise in its window (the nearest block holding a known pixel
    and the eight around it: about a FWHM). Beyond an edge next to empty sky that is 0 (the
    zeros are as good a guess as any); next to a saturated core, a star cut by the footprint or
    by the image edge it is large, so that S_corr tends to 0 where those pixels carry weight in
    the matched filter, and only there: a bright star a few FWHM from an edge leaves it alone.

    Parameters
    ----------
    image : numpy.ndarray
        The image (unpadded).
    noise : numpy.ndarray or float
        Its noise (1 sigma): a constant or the values at the windows' pixels.
    blocks : _Blocks
        The unknown pixels and their windows.
    """
    excess = np.abs(image[blocks.wy, blocks.wx], dtype=np.float64) - NOISE_CLIP * noise
    excess = np.where(blocks.known, excess, 0.0).max(axis=(1, 2), initial=0.0)
    return MASKED_AMPLITUDE * excess[blocks.source]


def _score_filters(pn: np.ndarray, pr: np.ndarray, sigma_new: float, sigma_ref: float, f_new: float,
                   f_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``k_n``, ``k_r`` and ``1 / den`` from the PSFs' transforms (see the module notes), in their precision."""
    real = pn.real.dtype.type
    an = pn.real ** 2 + pn.imag ** 2
    ar = pr.real ** 2 + pr.imag ** 2
    den2 = real(sigma_new ** 2 * f_ref ** 2) * ar + real(sigma_ref ** 2 * f_new ** 2) * an
    # Broad PSFs have transforms that underflow at high frequency: a floor keeps 0/0 out.
    np.maximum(den2, real(1e-12) * den2.max(), out=den2)
    inv_den2 = real(1.0) / den2
    del den2
    kn = np.conj(pn) * (real(f_new * f_ref ** 2) * ar * inv_den2)
    kr = np.conj(pr) * (real(f_ref * f_new ** 2) * an * inv_den2)
    return kn, kr, np.sqrt(inv_den2, out=inv_den2)


def _stamps(psf_new: np.ndarray, psf_ref: np.ndarray, weights: tuple, size: int) -> tuple[np.ndarray, ...]:
    """P_D (FFT convention), ``k_n^2`` and ``k_r^2`` (odd, centred stamps of two PSF stamps) in float64.

    They are as compact as the PSFs, so they are computed on a grid of four stamps, not the
    image's: three full-size FFTs fewer than on the image's grid.
    """
    grid = sfft.next_fast_len(4 * size, real=True)
    small = (grid, grid)
    pn, pr = (sfft.rfft2(_embed(psf.astype(np.float64), small, np.float64)) for psf in (psf_new, psf_ref))
    kn, kr, inv_den = _score_filters(pn, pr, *weights)
    sigma_new, sigma_ref, f_new, f_ref = weights
    p_d = sfft.irfft2(pn * pr * inv_den * math.sqrt(sigma_new ** 2 * f_ref ** 2 + sigma_ref ** 2 * f_new ** 2), s=small)
    return (p_d, *(_crop_stamp(sfft.irfft2(kernel, s=small), 2 * size + 1) ** 2 for kernel in (kn, kr)))


def zogy(new: np.ndarray, ref: np.ndarray, psf_new: np.ndarray, psf_ref: np.ndarray, sigma_new: float,
         sigma_ref: float, *, f_new: float = 1.0, f_ref: float = 1.0, var_new: np.ndarray | None = None,
         var_ref: np.ndarray | None = None, astrometric_noise: tuple[float, float] = (0.0, 0.0),
         mask: np.ndarray | None = None, workers: int = 1, origin: tuple[int, int] = (0, 0)) -> ZogyResult:
    """ZOGY subtraction of two registered, background-subtracted images (see the module notes).

    Parameters
    ----------
    new, ref : numpy.ndarray
        Science and reference on the same grid, background-subtracted. The FFTs run in their
        precision (float32: complex64; float64 if either is float64), those of the variance
        in float64 (see the module notes).
    psf_new, psf_ref : numpy.ndarray
        Odd, centred, unit-sum PSF stamps.
    sigma_new, sigma_ref : float
        Sky noise (1 sigma, per pixel) of each image, in its own units.
    f_new, f_ref : float
        Flux zero points (relative transparencies).
    var_new, var_ref : numpy.ndarray, optional
        Per-pixel variance maps; by default the constant ``sigma**2``. Without maps and mask the
        variance of S is the constant of pure sky noise (edges not treated).
    astrometric_noise : (float, float)
        Registration noise ``(sigma_x, sigma_y)`` in pixels.
    mask : numpy.ndarray, optional
        Bad pixels, taken as 0 (background) in both images (no filled copies are made), with
        the variance of unknown values (:func:`_unknown_amplitude`), as the pixels beyond the
        image edges have.
    workers : int
        FFT threads.
    origin : (int, int)
        Position of ``new[0, 0]`` in the whole image (a tile's), for :func:`_unknown_amplitude`.

    Returns
    -------
    ZogyResult
        Images in float32 whatever the working precision.
    """
    dtype = np.result_type(new.dtype, ref.dtype, np.float32)
    real = dtype.type
    ny, nx = new.shape
    size = max(psf_new.shape[0], psf_ref.shape[0])
    pad = size
    shape = (sfft.next_fast_len(ny + 2 * pad, real=True), sfft.next_fast_len(nx + 2 * pad, real=True))
    crop = (slice(pad, pad + ny), slice(pad, pad + nx))

    def rfft(a):
        return sfft.rfft2(a, workers=workers)

    def irfft(a):
        return sfft.irfft2(a, s=shape, workers=workers)

    pn, pr = rfft(_embed(psf_new, shape, dtype)), rfft(_embed(psf_ref, shape, dtype))
    weights = (sigma_new, sigma_ref, f_new, f_ref)
    kn, kr, inv_den = _score_filters(pn, pr, *weights)
    f_d = f_ref * f_new / math.sqrt(sigma_new ** 2 * f_ref ** 2 + sigma_ref ** 2 * f_new ** 2)
    dn = pr * (real(f_ref) * inv_den)
    dr = pn * (real(f_new) * inv_den)
    del pn, pr, inv_den
    p_d, kn2, kr2 = _stamps(psf_new, psf_ref, weights, size)

    n_hat, r_hat = rfft(_pad(new, shape, pad, dtype, mask)), rfft(_pad(ref, shape, pad, dtype, mask))
    difference = irfft(dn * n_hat - dr * r_hat)[crop]
    del dn, dr
    sx, sy = astrometric_noise
    if sx > 0 or sy > 0:
        s_new, s_ref = irfft(kn * n_hat)[crop], irfft(kr * r_hat)[crop]
        score = s_new - s_ref
    else:
        score = irfft(kn * n_hat - kr * r_hat)[crop]
    del n_hat, r_hat

    flux_scale = float(f_d ** 2 * np.sum(p_d ** 2))
    if var_new is None and var_ref is None and mask is None:
        variance = np.full(score.shape, flux_scale, dtype=dtype)
    else:
        # Unknown: the masked pixels and a band of half a stamp beyond the edges (further out the
        # kernels do not reach; nor, through the FFT's wrap-around, the other side of the image).
        # Their variances reach ~1e12 times the sky's: float64, since float32 FFTs spread a
        # round-off of ~1e-7 of the largest value everywhere.
        unknown = np.zeros(shape, bool)
        band = pad // 2
        unknown[pad - band:pad + ny + band, pad - band:pad + nx + band] = True
        unknown[crop] = False if mask is None else mask
        # Blocks of ~2/3 FWHM: the amplitude is the largest excess within about a FWHM.
        fwhm = max(2.3548 / math.sqrt(4 * math.pi * float(np.sum(np.square(psf, dtype=np.float64))))
                   for psf in (psf_new, psf_ref))
        blocks = _Blocks.of(unknown, max(2, round(2 * fwhm / 3)), (origin[0] - pad, origin[1] - pad), pad,
                            (ny, nx))
        del unknown
        total = None
        for image, var, sigma, kernel2 in zip((new, ref), (var_new, var_ref), (sigma_new, sigma_ref), (kn2, kr2)):
            spectrum = rfft(_embed(kernel2, shape, np.float64))
            noise = sigma if var is None else np.sqrt(var[blocks.wy, blocks.wx], dtype=np.float64)
            amplitude = _unknown_amplitude(image, noise, blocks)
            var = np.full(shape, sigma ** 2) if var is None else _pad(var, shape, pad, np.float64)
            # The zeros replace the values: not their noise but the guess's error is in S.
            var[blocks.iy, blocks.ix] = amplitude ** 2
            spectrum *= rfft(var)
            del var, amplitude
            if total is None:
                total = spectrum
            else:
                total += spectrum
            del spectrum
        variance = irfft(total)[crop].astype(dtype)
        del total
    if sx > 0 or sy > 0:
        for part in (s_new, s_ref):
            gy, gx = np.gradient(part)
            variance += real(sx ** 2) * gx ** 2 + real(sy ** 2) * gy ** 2
    score_noise = np.sqrt(np.clip(variance, 1e-30, None, out=variance), out=variance)
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = score / score_noise
    psf_d = _crop_stamp(p_d, size).astype(np.float64)
    psf_d = psf_d / psf_d.sum()
    return ZogyResult(difference=difference.astype(np.float32, copy=False), score=score.astype(np.float32, copy=False),
                      significance=significance.astype(np.float32, copy=False),
                      score_noise=score_noise.astype(np.float32, copy=False), psf=psf_d, flux_zeropoint=f_d,
                      flux_scale=flux_scale)


# Fewest noise pixels for a calibration that keeps clear of sources (else any good pixel counts).
MIN_CALIBRATION_PIXELS = 2000


def significance_calibration(significance: np.ndarray, bad: np.ndarray, positions: np.ndarray, radius: float,
                             correlation_area: float = 1.0, limit: int = 50_000) -> tuple[float, float]:
    """Robust standard deviation of S_corr where it is pure noise (1 if the noise model is right).

    Pixels are sampled (about ``limit``, regularly), and those within ``radius`` of a source
    in ``positions``, of a ``bad`` pixel or of the image edge are left out: sources leave
    residuals, and S_corr tends to 0 near unknown pixels (:func:`_unknown_amplitude`). The
    standard deviation is astropy's ``mad_std`` (50 % breakdown: transients and residuals
    left in do not bias it). A field too crowded to keep ``MIN_CALIBRATION_PIXELS`` pixels
    clear of sources uses every good pixel clear of masks and edges.

    Parameters
    ----------
    significance : numpy.ndarray
        S_corr.
    bad : numpy.ndarray
        Masked pixels.
    positions : numpy.ndarray
        ``(n, 2)`` source positions ``(x, y)``.
    radius : float
        Exclusion radius, pixels.
    correlation_area : float
        Pixels per independent noise value of S_corr (a matched filter of white noise with a
        Gaussian P_D of standard deviation s: ``2 pi s^2``), for the error.
    limit : int
        Pixels sampled.

    Returns
    -------
    (float, float)
        The standard deviation and its standard error (``mad_std``'s, 1.17 / sqrt(n) relative,
        over the independent values among the pixels used); NaN when no pixel qualifies.
    """
    from scipy.spatial import cKDTree

    ny, nx = significance.shape
    step = max(1, (ny * nx) // limit)
    index = np.arange(step // 2, ny * nx, step)
    y, x = np.divmod(index, nx)
    values = significance.ravel()[index]
    margin = int(math.ceil(radius))
    # Near a bad pixel: blocks of ``margin`` pixels holding one, widened by a block.
    block = max(1, margin)
    near_bad = ndimage.binary_dilation(
        np.maximum.reduceat(np.maximum.reduceat(bad.view(np.uint8), np.arange(0, ny, block), axis=0),
                            np.arange(0, nx, block), axis=1).astype(bool), structure=np.ones((3, 3), bool))
    keep = (np.isfinite(values) & ~near_bad[y // block, x // block] & (x >= margin) & (y >= margin)
            & (x < nx - margin) & (y < ny - margin))
    clear = keep.copy()
    if len(positions):
        distance, _ = cKDTree(np.asarray(positions, float)).query(np.column_stack([x[keep], y[keep]]),
                                                                 distance_upper_bound=radius)
        clear[keep] = ~np.isfinite(distance)
    if np.count_nonzero(clear) < MIN_CALIBRATION_PIXELS:
        log.warning("%d noise pixels clear of sources (need %d): S_corr calibrated on all %d good pixels",
                    np.count_nonzero(clear), MIN_CALIBRATION_PIXELS, np.count_nonzero(keep))
        clear = keep
    if not clear.any():
        return float("nan"), float("nan")
    std = float(mad_std(values[clear]))
    independent = np.count_nonzero(clear) * min(1.0, step / correlation_area)
    return std, 1.17 * std / math.sqrt(independent)


def tiles(shape: tuple[int, int], tile: int, overlap: int):
    """Yield ``(core, window, inner)`` slice pairs covering ``shape`` with overlapping windows.

    ``core`` is the part of the image a tile is responsible for, ``window`` the larger region
    it is computed on and ``inner`` the position of ``core`` inside ``window``.
    """
    ny, nx = shape
    for y0 in range(0, ny, tile):
        for x0 in range(0, nx, tile):
            y1, x1 = min(y0 + tile, ny), min(x0 + tile, nx)
            wy0, wx0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            wy1, wx1 = min(y1 + overlap, ny), min(x1 + overlap, nx)
            yield ((slice(y0, y1), slice(x0, x1)), (slice(wy0, wy1), slice(wx0, wx1)),
                   (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0)))


def zogy_tiled(new: np.ndarray, ref: np.ndarray, psf_new: np.ndarray, psf_ref: np.ndarray, sigma_new: float,
               sigma_ref: float, *, tile_size: int, overlap: int, mask: np.ndarray | None = None,
               variance: Callable[[tuple[slice, slice]], tuple[np.ndarray, np.ndarray]] | None = None,
               **options) -> ZogyResult:
    """:func:`zogy` over overlapping tiles (bounded memory); same arguments plus the tiling.

    With ``tile_size`` 0 or not smaller than the image, this is one :func:`zogy` call.
    ``mask`` (bad pixels, taken as 0) is cut to each tile; ``variance`` gives the per-pixel
    variance maps ``(var_new, var_ref)`` of a window of the image, so that full-size maps need
    never exist (None: the constant sky variances).
    """
    whole = (slice(0, new.shape[0]), slice(0, new.shape[1]))
    if tile_size <= 0 or (tile_size >= new.shape[0] and tile_size >= new.shape[1]):
        var_new, var_ref = variance(whole) if variance is not None else (None, None)
        return zogy(new, ref, psf_new, psf_ref, sigma_new, sigma_ref, var_new=var_new, var_ref=var_ref, mask=mask,
                    **options)
    outputs = {name: np.empty(new.shape, np.float32)
               for name in ("difference", "score", "significance", "score_noise")}
    result = None
    for core, window, inner in tiles(new.shape, tile_size, overlap):
        var_new, var_ref = variance(window) if variance is not None else (None, None)
        result = zogy(new[window], ref[window], psf_new, psf_ref, sigma_new, sigma_ref, var_new=var_new,
                      var_ref=var_ref, mask=None if mask is None else mask[window],
                      origin=(window[0].start, window[1].start), **options)
        for name, array in outputs.items():
            array[core] = getattr(result, name)[inner]
    return ZogyResult(psf=result.psf, flux_zeropoint=result.flux_zeropoint, flux_scale=result.flux_scale,
                      **outputs)


# --------------------------------------------------------------------------------------------
# Gaussian-convolution baseline
# --------------------------------------------------------------------------------------------


@dataclass
class BaselineResult:
    """Gaussian-matched difference.

    Attributes
    ----------
    difference : numpy.ndarray
        Science minus the PSF-matched, flux-scaled reference (science units).
    score : numpy.ndarray
        The difference matched-filtered with the (unit-sum) broad Gaussian.
    significance : numpy.ndarray
        Matched-filter S/N of the difference (robust global noise).
    score_noise : float
        That noise: the robust standard deviation of ``score``.
    fwhm : float
        FWHM of the matched PSF (the broader of the two).
    noise : float
        Robust standard deviation of the difference.
    flux_scale : float
        ``score`` at the centre of a point source of unit flux: sum(G^2) = 1 / (4 pi sigma^2).
    """

    difference: np.ndarray
    score: np.ndarray
    significance: np.ndarray
    score_noise: float
    fwhm: float
    noise: float
    flux_scale: float


def _gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    return np.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2)).astype(np.float32)


def gaussian_difference(new: np.ndarray, ref: np.ndarray, fwhm_new: float, fwhm_ref: float, ratio: float,
                        mask: np.ndarray | None = None, workers: int = 1) -> BaselineResult:
    """Baseline subtraction: Gaussian PSF matching by FFT, flux scaling, matched-filter S/N.

    Parameters
    ----------
    new, ref : numpy.ndarray
        Background-subtracted science and reference on the same grid (bad pixels 0).
    fwhm_new, fwhm_ref : float
        Their PSF FWHMs, pixels (Gaussian PSFs assumed).
    ratio : float
        Science / reference flux ratio.
    mask : numpy.ndarray, optional
        Pixels left out of the noise estimate.
    workers : int
        FFT threads.
    """
    to_sigma = 1 / (2 * math.sqrt(2 * math.log(2)))
    s_new, s_ref = fwhm_new * to_sigma, fwhm_ref * to_sigma
    s_kernel = math.sqrt(abs(s_new ** 2 - s_ref ** 2))
    pad = int(math.ceil(4 * max(s_new, s_ref))) + 1
    shape = (sfft.next_fast_len(new.shape[0] + 2 * pad, real=True),
             sfft.next_fast_len(new.shape[1] + 2 * pad, real=True))
    crop = (slice(pad, pad + new.shape[0]), slice(pad, pad + new.shape[1]))
    kernel = _gaussian_transfer(shape, s_kernel)
    n_hat = sfft.rfft2(_pad(new, shape, pad, np.float32), workers=workers)
    r_hat = sfft.rfft2(_pad(ref, shape, pad, np.float32), workers=workers)
    if s_new >= s_ref:
        r_hat *= kernel
    else:
        n_hat *= kernel
    d_hat = n_hat - np.float32(ratio) * r_hat
    del n_hat, r_hat
    difference = sfft.irfft2(d_hat, s=shape, workers=workers)[crop]
    broad = max(s_new, s_ref)
    matched = sfft.irfft2(d_hat * _gaussian_transfer(shape, broad), s=shape, workers=workers)[crop]
    good = np.ones(new.shape, bool) if mask is None else ~mask
    _, _, noise_matched = sigma_clipped_stats(matched[good][::7], sigma=3.0)
    _, _, noise = sigma_clipped_stats(difference[good][::7], sigma=3.0)
    return BaselineResult(difference=difference.astype(np.float32), score=matched.astype(np.float32),
                          significance=(matched / noise_matched).astype(np.float32),
                          score_noise=float(noise_matched),
                          fwhm=broad / to_sigma, noise=float(noise), flux_scale=1 / (4 * math.pi * broad ** 2))
