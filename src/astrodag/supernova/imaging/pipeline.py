"""One (science, reference) pair from FITS files to a difference image and transient candidates.

:func:`difference_pair` runs, timing each step:

1. ``load``: both images (:func:`astrodag.supernova.imaging.fitsio.load_image`);
2. ``align``: the reference onto the science grid (:mod:`astrodag.supernova.imaging.align`);
3. ``background``: sky and noise maps of both (photutils ``Background2D``); the reference's
   sky noise is measured on its own grid too, because resampling correlates and so lowers the
   per-pixel noise, and ZOGY's noise model needs the independent-pixel value (times the square
   root of the reference/science pixel-area ratio for an upsampled reference: its noise at PSF
   scales, :func:`_resampled_noise_factor`);
4. ``psf``: stars, FWHM and PSF of both (:mod:`astrodag.supernova.imaging.psf`: unbiased
   stacks, neighbours subtracted, a 3x3 grid of PSFs across the image; an image with too few
   stars gets the other's PSF blurred by a fitted Gaussian); the residual offset between the two
   images is solved and every source matched (:mod:`astrodag.supernova.imaging.registration`),
   and with ``align.refine`` a significant residual shift is corrected by resampling the
   reference again (and its background is re-measured);
5. ``flux``: science/reference flux ratio (:mod:`astrodag.supernova.imaging.fluxscale`: a
   template fit around the sources of either image, then PSF photometry of matched stars, then
   the zero points and the pixel-area ratio, each fallback with a warning), before any fake;
6. ``inject``: fake point sources into the science image (:mod:`astrodag.supernova.imaging.inject`),
   shaped by a PSF model independent of the subtraction's (photutils' effective PSF of the stars);
7. ``subtract``: ZOGY, the Alard-Lupton kernel fit (:mod:`astrodag.supernova.imaging.kernel`) or
   the Gaussian baseline, with per-pixel variance maps (sky noise squared plus the photon noise
   of the sources; for ZOGY, masked and off-image pixels get the variance of unknown values), then
   the removal of D's smooth residual offset (``subtract.difference_background``) and the
   calibration of S_corr to unit noise on pixels away from sources (``subtract.significance_tolerance``);
8. ``write``: the products below.

Products in ``out_dir`` (all FITS on the science grid, with its WCS and provenance cards):

``difference.fits``
    Primary: D, the proper difference image (unit noise; ``gaussian``: science units).
    Header: ``FLUXZPD`` (F_D), ``FLUXSCL`` (F_S: transient flux = S / F_S), ``FWHM_D``,
    ``FWHMSCI``, ``FWHMREF``, ``FLXRATIO``, ``SUBMETH``, and the per-pixel noise of the three
    planes the cut-outs are scaled by: ``NOISESCI`` and ``NOISEREF`` (sky noise with one
    photo-electron added in quadrature, :func:`plane_noise`), ``NOISED`` (robust, of D),
    ``SIGCORR`` (S_corr was divided by it: the calibration, 1 when none was needed).
    Extensions: ``SCIENCE`` (science with the injected sources, background-subtracted),
    ``REFERENCE`` (aligned, background-subtracted, multiplied by the flux ratio: science units),
    ``PSF_D``, ``PSF_SCI``, ``PSF_REF`` (stamps) and ``SOURCES`` (table of the science image's
    brightest sources: ``x, y, snr``).
``significance.fits``
    Primary: S_corr (sigma); extension ``SCORE``: S.
``mask.fits``
    uint8 bit mask: 1 bad science pixel (non-finite, saturated or flagged), 2 bad reference
    pixel, 4 outside the reference footprint, 8 within ``subtract.mask_grow_px`` of those.
``injections.csv``
    The injected sources (:data:`astrodag.supernova.imaging.inject.INJECTION_COLUMNS`).
``difference.json``
    Timings per step, FWHMs, flux ratio, overlap fraction, alignment method and error,
    noise levels (also those of the ``NOISE*`` cards), the fakes' shape (``injection_psf``),
    S_corr statistics (median, robust std, the typical offset removed by
    ``subtract.difference_background``; ``significance_std_uncalibrated`` and its
    ``significance_std_error``, the robust std on noise pixels before the calibration, and
    ``significance_correction``), the reference/science pixel-area ratio, settings and seed
    (and the peak traced memory per step when run under ``tracemalloc``, as the benchmark does).

:func:`detect_pair` reads them back and writes ``candidates.csv`` and ``candidates.json`` (counts,
and whether the subtraction failed and why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area
from photutils.psf import fit_fwhm
from scipy import ndimage

from astrodag.errors import InputDataError
from astrodag.io import file_digest, write_json, write_table
from astrodag.settings import Settings, section
from astrodag.simulation.render import gaussian_psf
from astrodag.supernova.imaging.align import Alignment, AlignSettings, align_reference
from astrodag.supernova.imaging.background import (
    Background,
    BackgroundSettings,
    NoiseModel,
    estimate_background,
    noise_level,
)
from astrodag.supernova.imaging.detect import DetectSettings, assess_detection, detect_candidates
from astrodag.supernova.imaging.fitsio import Image, load_image, write_image
from astrodag.supernova.imaging.fluxscale import FluxScale, FluxScaleSettings, measure_flux_ratio
from astrodag.supernova.imaging.inject import (
    InjectSettings,
    galaxy_map,
    galaxy_peaks,
    inject_sources,
    injection_psf,
)
from astrodag.supernova.imaging.kernel import kernel_difference
from astrodag.supernova.imaging.psf import PSF, PSFSettings, estimate_psf, matched_psf
from astrodag.supernova.imaging.registration import Registration, RegistrationSettings, register
from astrodag.supernova.imaging.subtract import (
    SubtractSettings,
    ZogyResult,
    gaussian_difference,
    significance_calibration,
    zogy_tiled,
)

log = logging.getLogger(__name__)

MASK_BITS = {"science_bad": 1, "reference_bad": 2, "no_coverage": 4, "grown": 8}
MAX_SOURCES_RECORDED = 200
CALIBRATION_RADIUS_FWHM = 2.0  # S_corr calibration leaves out pixels this close to a source


@dataclass(frozen=True)
class DifferenceSettings(Settings):
    """Everything the ``difference`` stage does (config ``supernova.difference``).

    Keys
    ----
    align : mapping
        :class:`astrodag.supernova.imaging.align.AlignSettings`.
    background : mapping
        :class:`astrodag.supernova.imaging.background.BackgroundSettings`.
    psf : mapping
        :class:`astrodag.supernova.imaging.psf.PSFSettings`.
    registration : mapping
        :class:`astrodag.supernova.imaging.registration.RegistrationSettings`.
    flux : mapping
        :class:`astrodag.supernova.imaging.fluxscale.FluxScaleSettings`.
    subtract : mapping
        :class:`astrodag.supernova.imaging.subtract.SubtractSettings`.
    inject : mapping
        :class:`astrodag.supernova.imaging.inject.InjectSettings`.
    """

    PREFIX: ClassVar[str] = "supernova.difference"

    align: AlignSettings = section(AlignSettings)
    background: BackgroundSettings = section(BackgroundSettings)
    psf: PSFSettings = section(PSFSettings)
    registration: RegistrationSettings = section(RegistrationSettings)
    flux: FluxScaleSettings = section(FluxScaleSettings)
    subtract: SubtractSettings = section(SubtractSettings)
    inject: InjectSettings = section(InjectSettings)


class _Timer:
    """Wall time per named step (seconds) and, while ``tracemalloc`` traces, its peak memory (MiB)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str):
        tracing = tracemalloc.is_tracing()
        if tracing:
            tracemalloc.reset_peak()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started
            if tracing:
                peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
                self.peak_mib[step] = max(self.peak_mib.get(step, 0.0), peak)


def pair_rng(seed: int, name: str) -> np.random.Generator:
    """Generator of one pair: the same seed gives each pair its own, reproducible stream."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _fwhm_on_science_grid(science: Image, reference: Image) -> float | None:
    if reference.fwhm is None:
        return None
    return reference.fwhm * math.sqrt(proj_plane_pixel_area(reference.wcs) / proj_plane_pixel_area(science.wcs))


def _residual_shift(science: Image, pair: _Registered, psf_sci: PSF, psf_ref: PSF,
                    settings: DifferenceSettings) -> _Residual:
    """Residual transform (reference - science) from all matched detections, and the registration scatter."""
    pixel_arcsec = math.sqrt(proj_plane_pixel_area(science.wcs)) * 3600.0
    max_offset = max(settings.registration.max_offset_arcsec / pixel_arcsec, 3.0 * max(psf_sci.fwhm, psf_ref.fwhm))
    registration = register(pair.new, pair.ref, pair.sci_bkg.rms, pair.ref_bkg.rms, psf_sci.sources, psf_ref.sources,
                            psf_sci.fwhm, psf_ref.fwhm, max_offset, science.mask, pair.ref_bad, settings.registration)
    return _Residual(registration.shift_x, registration.shift_y, registration.scatter_x, registration.scatter_y,
                     registration.n_matched, registration)


def _source_flux(data: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """Flux of the sources per pixel, for their photon noise in the variance maps.

    The image smoothed by a 1-pixel Gaussian where that exceeds 3 times its noise, else 0:
    clipping the raw pixels at 0 instead would count the sky's own positive fluctuations
    again (+68 % variance at 0.4 photons a pixel).
    """
    smooth = ndimage.gaussian_filter(data, 1.0)
    # A 1-pixel Gaussian lowers white noise by 1 / (2 sqrt(pi)).
    return np.where(smooth > 3.0 * rms / (2 * math.sqrt(math.pi)), smooth, 0.0).astype(np.float32)


def _good_sample(image: np.ndarray, bad: np.ndarray, limit: int = 1_000_000, rows: int = 256) -> np.ndarray:
    """Every n-th finite pixel outside ``bad`` (row-major order), n chosen to keep about ``limit`` of them.

    The same values as ``image[~bad]``, its non-finite ones dropped, sliced ``[::n]``, without
    copying the whole image: it is gathered ``rows`` rows at a time.
    """
    good = ~bad & np.isfinite(image)
    step = max(1, int(np.count_nonzero(good)) // limit)
    parts, seen = [], 0
    for start in range(0, image.shape[0], rows):
        values = image[start:start + rows][good[start:start + rows]]
        parts.append(values[(-seen) % step::step])
        seen += values.size
    return np.concatenate(parts) if parts else np.array([], image.dtype)


def _robust_stats(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


@dataclass
class _Registered:
    """Both images on the science grid, without their sky: what the PSF, flux and subtraction steps share."""

    aligned: Alignment
    sci_bkg: Background
    ref_bkg: Background
    sigma_ref: float  # white-noise equivalent of the resampled reference at PSF scales (its own pixels' noise,
    # before resampling correlated them, times _resampled_noise_factor)
    new: np.ndarray  # science minus its sky
    ref: np.ndarray  # aligned reference minus its sky
    ref_bad: np.ndarray  # bad or uncovered reference pixels
    pixel_area_ratio: float = 1.0  # reference / science pixel area


@dataclass
class _Residual:
    """Offset (reference - science) at the image centre after alignment, and the registration scatter."""

    shift_x: float
    shift_y: float
    scatter_x: float
    scatter_y: float
    n_matched: int
    registration: Registration


@dataclass
class _Difference:
    """The subtraction step's products."""

    difference: np.ndarray
    score: np.ndarray
    significance: np.ndarray
    psf: np.ndarray  # P_D
    flux_zeropoint: float  # F_D
    flux_scale: float  # F_S
    fwhm: float
    astrometric_noise: tuple[float, float]
    offset_sigma: float  # typical S_corr offset removed by the difference background
    significance_std: float = float("nan")  # robust std of S_corr on noise pixels before calibration
    significance_std_error: float = float("nan")  # its standard error
    significance_correction: float = 1.0  # S_corr was divided by this
    kernel_fit: dict | None = None  # the kernel method's own flux ratio and fit statistics


def _reference_background(aligned: Alignment, settings: DifferenceSettings, noise: NoiseModel) -> Background:
    return estimate_background(aligned.data, aligned.mask, ~aligned.footprint, settings.background, noise)


def _subtract_sky(data: np.ndarray, background: Background) -> np.ndarray:
    """``data`` minus its sky, in place; the sky map is dropped (each full-size map is 256 MiB at 8192^2)."""
    data -= background.background
    background.background = None
    return data


def _check_pixels(image: Image) -> None:
    """Refuse an image whose good pixels all hold one value: it has no noise to measure."""
    good = ~image.mask
    if not good.any():
        raise InputDataError(image.path, "every pixel is bad (non-finite, saturated or flagged)")
    low = float(np.min(image.data, where=good, initial=np.inf))
    high = float(np.max(image.data, where=good, initial=-np.inf))
    if low == high:
        raise InputDataError(image.path, f"image is constant (every good pixel is {low:g}): no noise to estimate")


def _check_noise(path: Path, sigma: float) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputDataError(path, f"sky noise measures {sigma:g} (a constant sky?): no noise to estimate")


def _register(science: Image, reference: Image, aligned: Alignment, settings: DifferenceSettings) -> _Registered:
    """Sky and noise maps of both images (the ``background`` step), subtracted.

    The sky is subtracted in place: ``science.data`` and ``aligned.data`` become ``new`` and ``ref``.
    """
    sci_bkg = estimate_background(science.data, science.mask, settings=settings.background,
                                  noise=NoiseModel(science.gain, science.read_noise))
    ref_noise = NoiseModel(reference.gain, reference.read_noise)
    ref_bkg = _reference_background(aligned, settings, ref_noise)
    sigma_ref = noise_level(reference.data, reference.mask, settings.background, ref_noise)
    _check_noise(science.path, sci_bkg.rms_median)
    _check_noise(reference.path, sigma_ref)
    area_ratio = proj_plane_pixel_area(reference.wcs) / proj_plane_pixel_area(science.wcs)
    return _Registered(aligned, sci_bkg, ref_bkg, sigma_ref * _resampled_noise_factor(area_ratio, aligned.method),
                       _subtract_sky(science.data, sci_bkg), _subtract_sky(aligned.data, ref_bkg),
                       aligned.mask | ~aligned.footprint, area_ratio)


def _resampled_noise_factor(area_ratio: float, method: str) -> float:
    """Noise at PSF scales of the resampled reference over that of its own pixels.

    Interpolation keeps surface brightness: upsampled (``area_ratio`` = reference / science
    pixel area > 1), each reference pixel's noise is repeated over ``area_ratio`` science
    pixels, so a sum over a PSF has the variance of white noise of ``sigma^2 area_ratio`` per
    science pixel. Downsampled, interpolation samples one value per pixel (noise unchanged),
    while ``exact`` (flux-conserving) averages ``1 / area_ratio`` of them.
    """
    return math.sqrt(area_ratio) if area_ratio > 1 or method == "exact" else 1.0


def _psfs(science: Image, reference: Image, pair: _Registered, settings: DifferenceSettings) -> tuple[PSF, PSF]:
    """Empirical PSFs of both images (saturation levels measured above the sky); one with too few stars is
    derived from the other's (:func:`astrodag.supernova.imaging.psf.matched_psf`) where that fits."""
    sci_saturation = None if science.saturation is None else science.saturation - pair.sci_bkg.median
    ref_saturation = None if reference.saturation is None else reference.saturation - pair.ref_bkg.median
    psf_sci = estimate_psf(pair.new, pair.sci_bkg.rms, science.mask, settings.psf, science.fwhm, sci_saturation)
    psf_ref = estimate_psf(pair.ref, pair.ref_bkg.rms, pair.ref_bad, settings.psf,
                           _fwhm_on_science_grid(science, reference), ref_saturation)
    # An image with too few stars (usually the shallow science image) takes the other's empirical PSF blurred
    # to fit its own sources, rather than a Gaussian.
    if psf_sci.method == "gaussian" and psf_ref.method != "gaussian":
        psf_sci = matched_psf(pair.new, pair.sci_bkg.rms, science.mask, psf_sci, pair.ref, pair.ref_bad, psf_ref,
                              settings.psf, sci_saturation, ref_saturation) or psf_sci
    elif psf_ref.method == "gaussian" and psf_sci.method != "gaussian":
        psf_ref = matched_psf(pair.ref, pair.ref_bkg.rms, pair.ref_bad, psf_ref, pair.new, science.mask, psf_sci,
                              settings.psf, ref_saturation, sci_saturation) or psf_ref
    return psf_sci, psf_ref


def _realign(science: Image, reference: Image, pair: _Registered, psf_ref: PSF, residual: _Residual,
             settings: DifferenceSettings, timer: _Timer) -> _Registered:
    """Resample the reference again with the stars' residual shift; its sky, noise and star tables follow."""
    log.info("residual shift (%.3f, %.3f) px from %d stars: resampling the reference again",
             residual.shift_x, residual.shift_y, residual.n_matched)
    with timer("align"):
        aligned = align_reference(science, reference, settings.align, shift=(residual.shift_x, residual.shift_y))
    with timer("background"):
        ref_bkg = _reference_background(aligned, settings, NoiseModel(reference.gain, reference.read_noise))
    for table in ("stars", "sources"):
        frame = getattr(psf_ref, table)
        setattr(psf_ref, table, frame.assign(x=frame["x"] - residual.shift_x, y=frame["y"] - residual.shift_y))
    return dataclasses.replace(pair, aligned=aligned, ref_bkg=ref_bkg, ref=_subtract_sky(aligned.data, ref_bkg),
                               ref_bad=aligned.mask | ~aligned.footprint)


def _inject(science: Image, pair: _Registered, psf_sci: PSF, psf_ref: PSF, settings: DifferenceSettings,
            rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    """Fake point sources added to ``pair.new`` in place, clear of the bright sources of either image
    (nucleus fakes excepted); also the name of their shape (``InjectSettings.psf``, after fallbacks)."""
    if settings.inject.count == 0:
        return inject_sources(pair.new, pair.sci_bkg.rms, science.mask, psf_sci.image, psf_sci.fwhm,
                              pair.sci_bkg.rms_median, science.wcs, settings.inject, rng), "none"
    # Their residuals would be confused with the fakes.
    bright = np.vstack([psf.sources[psf.sources["snr"] > 50][["x", "y"]].to_numpy(float)
                        for psf in (psf_sci, psf_ref)])
    # A shape independent of the subtraction's PSF, built before any fake is added.
    shape = injection_psf(pair.new, science.mask, psf_sci.stars, psf_sci.fwhm, psf_sci.image, settings.inject)
    # Nuclei from the reference: a bright transient on its host would be the science image's brightest peak.
    nuclei = galaxy_peaks(galaxy_map(pair.ref, pair.ref_bkg.rms, pair.ref_bad, psf_ref.image, psf_ref.fwhm),
                          ~pair.ref_bad, psf_ref.fwhm) if settings.inject.nucleus_fraction else None
    table = inject_sources(pair.new, pair.sci_bkg.rms, science.mask | pair.ref_bad, psf_sci.image, psf_sci.fwhm,
                           pair.sci_bkg.rms_median, science.wcs, settings.inject, rng, zeropoint=science.zeropoint,
                           gain=science.gain, avoid=bright, shape=shape, nuclei=nuclei)
    return table, shape.method


def plane_noise(sky_rms: float, gain: float | None, scale: float = 1.0) -> float:
    """Noise of one pixel of a background-subtracted plane for the cut-outs' ``sky`` normalisation.

    The sky noise with the noise of one photo-electron (``1 / gain`` data units) added in quadrature,
    times ``scale`` (the flux ratio of the scaled reference): the floor keeps a nearly empty
    photon-counting sky (GALEX, 0.15 counts a pixel) from turning single photons into huge values.
    """
    quantum = 1.0 / gain if gain else 0.0
    return float(scale * math.hypot(sky_rms, quantum))


def _grown_mask(bad: np.ndarray, grow_px: int) -> np.ndarray:
    """``bad`` widened by ``grow_px`` pixels."""
    return ndimage.binary_dilation(bad, iterations=grow_px) if grow_px and bad.any() else bad.copy()


def _flux_scale(science: Image, reference: Image, pair: _Registered, psf_sci: PSF, psf_ref: PSF, residual: _Residual,
                grown: np.ndarray, settings: DifferenceSettings) -> FluxScale:
    """Science / reference flux ratio: template fit around the sources of either image (fallbacks: PSF
    photometry of the matched stars, zero points, unity)."""
    science_xy, reference_xy = residual.registration.star_positions()
    # A realignment moved the reference's stars by the shift it corrected.
    reference_xy = reference_xy - np.asarray(pair.aligned.shift_px)
    pixel_area_ratio = proj_plane_pixel_area(science.wcs) / proj_plane_pixel_area(reference.wcs)
    return measure_flux_ratio(pair.new, pair.ref, pair.sci_bkg.rms, pair.ref_bkg.rms, grown, psf_sci.image,
                              psf_ref.image, psf_sci.fwhm, psf_ref.fwhm, science_xy, reference_xy, pixel_area_ratio,
                              (science.zeropoint, reference.zeropoint), settings.flux, _stamp_centres(psf_sci, psf_ref))


def _stamp_centres(psf_sci: PSF, psf_ref: PSF) -> np.ndarray:
    """Sources of either image (the reference is usually the deeper), the most significant first."""
    sources = pd.concat([psf_sci.sources, psf_ref.sources]).sort_values("snr", ascending=False, kind="stable")
    return sources[["x", "y"]].to_numpy(float)


def _variance_maps(science: Image, reference: Image, pair: _Registered, grown: np.ndarray,
                   settings: DifferenceSettings):
    """A function of a window giving its variance maps ``(var_new, var_ref)``: sky noise squared plus photon noise."""
    ref_scale = np.float32(pair.sigma_ref / pair.ref_bkg.rms_median if pair.ref_bkg.rms_median > 0 else 1.0)

    def variance(window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        # Made per tile: full-size variance maps would be two more images in memory. The source
        # flux is smoothed by a 1-pixel Gaussian, which a tile's overlap holds many times over.
        bad = grown[window]
        sci_rms = pair.sci_bkg.rms[window].astype(np.float32, copy=False)
        ref_rms = pair.ref_bkg.rms[window] * ref_scale
        var_new, var_ref = sci_rms ** 2, ref_rms ** 2
        if settings.subtract.source_noise:
            if science.gain:
                var_new += _source_flux(np.where(bad, np.float32(0), pair.new[window]), sci_rms) \
                    / np.float32(science.gain)
            if reference.gain:
                var_ref += _source_flux(np.where(bad, np.float32(0), pair.ref[window]), ref_rms) \
                    / np.float32(reference.gain)
        return var_new, var_ref  # zogy gives the masked pixels the variance of unknown values

    return variance


def _zogy(science: Image, reference: Image, pair: _Registered, grown: np.ndarray, psf_sci: PSF, psf_ref: PSF,
          ratio: float, residual: _Residual, settings: DifferenceSettings) -> tuple[ZogyResult, tuple[float, float]]:
    """ZOGY with per-pixel variance maps: sky noise squared plus the photon noise of the sources."""
    variance = _variance_maps(science, reference, pair, grown, settings)
    if settings.subtract.astrometric_noise_px is None:
        # Measured on bright stars only (0 when fewer than 5): centroid noise is not registration noise.
        astrometric = (residual.scatter_x, residual.scatter_y)
    else:
        astrometric = (settings.subtract.astrometric_noise_px,) * 2
    result = zogy_tiled(pair.new, pair.ref, psf_sci.image, psf_ref.image, pair.sci_bkg.rms_median,
                        pair.sigma_ref, f_new=1.0, f_ref=1.0 / ratio, mask=grown, variance=variance,
                        astrometric_noise=astrometric, tile_size=settings.subtract.tile_size,
                        overlap=settings.subtract.tile_overlap_px, workers=settings.subtract.workers)
    return result, astrometric


def _remove_difference_offset(difference: np.ndarray, score: np.ndarray, flux_zeropoint: float,
                              score_noise: np.ndarray | float, grown: np.ndarray, settings: DifferenceSettings,
                              out: np.ndarray) -> tuple[np.ndarray, float]:
    """Subtract D's smooth residual offset from D and its image from S, in place.

    Returns S_corr recomputed (written into ``out``) and the typical S_corr offset removed (for the record).
    """
    # S = F_D D (x) P_D with a unit-sum P_D: an offset b of D is an offset F_D b of S. The
    # estimate's own noise is amplified the same way (by 1 / sqrt(sum P_D^2) ~ 4.5 in
    # S_corr), hence boxes twice the sky's, every pixel used.
    d_settings = dataclasses.replace(settings.background, box_size=2 * settings.background.box_size,
                                     subsample=1, estimator="median")
    offset = estimate_background(difference, grown, settings=d_settings).background
    difference -= offset
    offset *= np.float32(flux_zeropoint)
    score -= offset
    removed = np.abs(np.divide(offset, score_noise, out=offset), out=offset)
    typical = float(np.median(removed[~grown])) if (~grown).any() else 0.0
    del offset, removed
    return np.divide(score, score_noise, out=out), typical


def _subtract(science: Image, reference: Image, pair: _Registered, grown: np.ndarray, psf_sci: PSF, psf_ref: PSF,
              ratio: float, residual: _Residual, settings: DifferenceSettings) -> _Difference:
    """D, S and S_corr (ZOGY, the kernel fit or the Gaussian baseline), offset removed, NaN on the grown mask.

    The kernel fit widens ``grown`` in place by its own mask (bad pixels and the border grown by the kernel).
    """
    kernel_fit = None
    if settings.subtract.method == "zogy":
        result, astrometric = _zogy(science, reference, pair, grown, psf_sci, psf_ref, ratio, residual, settings)
        psf_d, f_d, f_s = result.psf, result.flux_zeropoint, result.flux_scale
    elif settings.subtract.method == "kernel":
        astrometric = (0.0, 0.0)
        sub = settings.subtract
        var_new, var_ref = _variance_maps(science, reference, pair, grown, settings)(
            (slice(0, grown.shape[0]), slice(0, grown.shape[1])))
        result = kernel_difference(pair.new, pair.ref, psf_sci.image, psf_sci.fwhm, psf_ref.fwhm,
                                   _stamp_centres(psf_sci, psf_ref), var_new, var_ref,
                                   bad_new=science.mask, bad_ref=pair.ref_bad, spatial_order=sub.kernel_spatial_order,
                                   half_width_fwhm=sub.kernel_half_width_fwhm, background_order=sub.background_order,
                                   stamps=sub.kernel_stamps, sum_varies=sub.kernel_sum_varies, workers=sub.workers)
        del var_new, var_ref
        grown |= result.mask  # in place: the products' mask and statistics leave out the kernel's footprint too
        psf_d, f_d, f_s = result.psf, result.flux_zeropoint, result.flux_scale
        kernel_fit = {"ratio": result.ratio, "ratio_error": result.ratio_error,
                      "ratio_range": list(result.ratio_range), "convolved": result.convolved,
                      "stamps": result.n_stamps, "rejected": result.n_rejected, "chi2": result.chi2}
    else:
        astrometric = (0.0, 0.0)
        result = gaussian_difference(np.where(grown, np.float32(0), pair.new), np.where(grown, np.float32(0), pair.ref),
                                     psf_sci.fwhm, psf_ref.fwhm, ratio, mask=grown, workers=settings.subtract.workers)
        psf_d, f_d, f_s = gaussian_psf(result.fwhm), 1.0, result.flux_scale
    # Nothing needs the noise maps again (the record quotes their medians): two image-sized
    # planes less before the offset estimate below, the stage's memory peak.
    pair.sci_bkg.rms = pair.ref_bkg.rms = None
    difference, score, significance = result.difference, result.score, result.significance
    offset_sigma = 0.0
    if settings.subtract.difference_background:
        significance, offset_sigma = _remove_difference_offset(difference, score, f_d, result.score_noise, grown,
                                                               settings, out=significance)
    fwhm_d = float(fit_fwhm(psf_d, fit_shape=psf_d.shape[0])[0])
    std, error, correction = _calibrate(significance, grown, psf_sci, psf_ref, fwhm_d, settings)
    for array in (difference, score, significance):
        array[grown] = np.nan
    return _Difference(difference, score, significance, psf_d, f_d, f_s, fwhm_d, astrometric, offset_sigma, std,
                       error, correction, kernel_fit)


def _calibrate(significance: np.ndarray, grown: np.ndarray, psf_sci: PSF, psf_ref: PSF, fwhm_d: float,
               settings: DifferenceSettings) -> tuple[float, float, float]:
    """Robust std of S_corr on noise pixels, its error, and the factor S_corr was divided by (in place).

    Pixels within ``CALIBRATION_RADIUS_FWHM`` FWHMs of the sources of either image are left out.
    S_corr is rescaled when its std is off by more than the tolerance and 3 standard errors.
    """
    positions = np.vstack([psf.sources[["x", "y"]].to_numpy(float) for psf in (psf_sci, psf_ref)])
    radius = CALIBRATION_RADIUS_FWHM * max(psf_sci.fwhm, psf_ref.fwhm)
    std, error = significance_calibration(significance, grown, positions, radius,
                                          correlation_area=2 * math.pi * (fwhm_d / 2.3548) ** 2)
    tolerance = settings.subtract.significance_tolerance
    if tolerance is None or not (std > 0) or abs(std - 1.0) <= max(tolerance, 3 * error):
        return std, error, 1.0
    log.warning("S_corr robust std %.3f on noise pixels (noise model off by more than %.0f %%): rescaled to 1",
                std, 100 * tolerance)
    significance /= np.float32(std)
    return std, error, std


def _record(science_path, reference_path, seed: int, science: Image, pair: _Registered, residual: _Residual,
            psf_sci: PSF, psf_ref: PSF, scale: FluxScale, result: _Difference, grown: np.ndarray,
            injections: pd.DataFrame, settings: DifferenceSettings) -> dict:
    """The content of ``difference.json`` (less the timings)."""
    scorr_median, scorr_std = _robust_stats(_good_sample(result.significance, grown))
    aligned = pair.aligned
    return {
        "science": str(science_path), "reference": str(reference_path), "seed": int(seed),
        "shape": list(science.shape),
        "alignment": {"method": aligned.method, "affine_error_px": aligned.affine_error_px,
                      "overlap_fraction": aligned.overlap_fraction,
                      "residual_shift_px": [residual.shift_x, residual.shift_y],
                      "shift_applied_px": list(aligned.shift_px),
                      "registration_scatter_px": [residual.scatter_x, residual.scatter_y],
                      "matched_stars": residual.n_matched,
                      "registration_method": residual.registration.method,
                      "registration_bright_stars": residual.registration.n_bright,
                      "residual_transform": residual.registration.coefficients.tolist()},
        "psf": {"science_fwhm_px": psf_sci.fwhm, "reference_fwhm_px": psf_ref.fwhm, "difference_fwhm_px": result.fwhm,
                "science_method": psf_sci.method, "reference_method": psf_ref.method,
                "science_stars": psf_sci.n_stars, "reference_stars": psf_ref.n_stars},
        "flux": {"ratio": scale.ratio, "error": scale.error, "stars": scale.n_stars, "method": scale.method,
                 "reason": scale.reason},
        "noise": {"science_sky": pair.sci_bkg.median, "science_sigma": pair.sci_bkg.rms_median,
                  "sky_estimator": [pair.sci_bkg.estimator, pair.ref_bkg.estimator],
                  "reference_sky": pair.ref_bkg.median, "reference_sigma": pair.sigma_ref,
                  "reference_sigma_resampled": pair.ref_bkg.rms_median,
                  "astrometric_noise_px": list(result.astrometric_noise),
                  "reference_pixel_area_ratio": pair.pixel_area_ratio,
                  "significance_median": scorr_median, "significance_robust_std": scorr_std,
                  "significance_std_uncalibrated": result.significance_std,
                  "significance_std_error": result.significance_std_error,
                  "significance_correction": result.significance_correction,
                  "difference_offset_sigma": result.offset_sigma},
        "subtraction": {"method": settings.subtract.method, "kernel_fit": result.kernel_fit,
                        "flux_zeropoint": result.flux_zeropoint,
                        "flux_scale": result.flux_scale, "masked_fraction": float(grown.mean())},
        "injected": int(len(injections)),
        "settings": settings.as_dict(),
    }


def _plane_noise(science: Image, reference: Image, pair: _Registered, scale: FluxScale, result: _Difference,
                 grown: np.ndarray) -> dict:
    """Per-pixel noise of the SCIENCE, REFERENCE and difference planes as written (``NOISE*`` header cards).

    D has unit noise in theory (ZOGY; the Gaussian baseline's D is in science units): its robust
    standard deviation is measured all the same, so that the cut-outs see unit noise either way.
    """
    _, d_noise = _robust_stats(_good_sample(result.difference, grown))
    return {"science_plane": plane_noise(pair.sci_bkg.rms_median, science.gain),
            "reference_plane": plane_noise(pair.ref_bkg.rms_median, reference.gain, scale.ratio),
            "difference_plane": d_noise if d_noise > 0 else 1.0}


def difference_pair(science_path: str | Path, reference_path: str | Path, out_dir: str | Path,
                    settings: DifferenceSettings | None = None, seed: int = 0) -> dict:
    """Difference one pair and write the products listed in the module notes.

    Parameters
    ----------
    science_path, reference_path : str or Path
        FITS images (the reference is resampled onto the science grid).
    out_dir : str or Path
        Where the products go (its name seeds the injections together with ``seed``).
    settings : DifferenceSettings, optional
    seed : int
        Seed of the fake-source injection.

    Returns
    -------
    dict
        The record written to ``difference.json``.
    """
    settings = settings or DifferenceSettings()
    out_dir = Path(out_dir)
    timer = _Timer()
    started = time.perf_counter()

    with timer("load"):
        science = load_image(science_path)
        _check_pixels(science)
        reference = load_image(reference_path)
        _check_pixels(reference)
    with timer("align"):
        aligned = align_reference(science, reference, settings.align)
    with timer("background"):
        pair = _register(science, reference, aligned, settings)
    with timer("psf"):
        psf_sci, psf_ref = _psfs(science, reference, pair, settings)
        residual = _residual_shift(science, pair, psf_sci, psf_ref, settings)
    if (settings.align.refine and residual.n_matched >= 5
            and math.hypot(residual.shift_x, residual.shift_y) > settings.align.refine_min_shift_px):
        pair = _realign(science, reference, pair, psf_ref, residual, settings, timer)
    grown = _grown_mask(science.mask | pair.ref_bad, settings.subtract.mask_grow_px)
    with timer("flux"):
        # Before the fakes go in: a fake in a star's stamp is a variable star to the ratio's fit.
        scale = _flux_scale(science, reference, pair, psf_sci, psf_ref, residual, grown, settings)
    with timer("inject"):
        injections, fake_psf = _inject(science, pair, psf_sci, psf_ref, settings, pair_rng(seed, out_dir.name))
    with timer("subtract"):
        result = _subtract(science, reference, pair, grown, psf_sci, psf_ref, scale.ratio, residual, settings)

    record = _record(science_path, reference_path, seed, science, pair, residual, psf_sci, psf_ref, scale, result,
                     grown, injections, settings)
    record["injection_psf"] = fake_psf
    record["noise"].update(_plane_noise(science, reference, pair, scale, result, grown))
    with timer("write"):
        # The last use of the sky-subtracted planes: they are scaled and masked in place.
        pair.ref *= np.float32(scale.ratio)
        _write_products(out_dir, science, reference, record, pair.new, pair.ref,
                        result.difference, result.score, result.significance, result.psf, psf_sci, psf_ref,
                        science.mask, pair.aligned, grown, injections)
    record["seconds"] = {**{k: round(v, 4) for k, v in timer.seconds.items()},
                         "total": round(time.perf_counter() - started, 4)}
    if timer.peak_mib:
        record["peak_mib"] = {k: round(v, 1) for k, v in timer.peak_mib.items()}
    write_json(out_dir / "difference.json", record)
    log.info("%s: %s, FWHM %.2f/%.2f px, ratio %.4g, %d injected, S_corr robust std %.3f, %.2f s", out_dir.name,
             pair.aligned.method, psf_sci.fwhm, psf_ref.fwhm, scale.ratio, len(injections),
             record["noise"]["significance_robust_std"], record["seconds"]["total"])
    return record


def _write_products(out_dir, science, reference, record, new, ref_scaled, difference, score, significance, psf_d,
                    psf_sci, psf_ref, science_bad, aligned, grown, injections) -> None:
    """Write the products; ``new`` and ``ref_scaled`` get NaN on their bad pixels in place."""
    digests = {"science": file_digest(science.path), "reference": file_digest(reference.path)}
    provenance = {"stage": "difference", "inputs": {"science": science.path, "reference": reference.path},
                  "digests": digests, "parameters": {"settings": record["settings"], "seed": record["seed"]}}
    header = fits.Header()
    header["SUBMETH"] = (record["subtraction"]["method"], "subtraction method")
    header["FLUXZPD"] = (record["subtraction"]["flux_zeropoint"], "F_D, flux zero point of D")
    header["FLUXSCL"] = (record["subtraction"]["flux_scale"], "F_S: transient flux = S / F_S")
    header["FWHM_D"] = (record["psf"]["difference_fwhm_px"], "FWHM of P_D, pixels")
    header["FWHMSCI"] = (record["psf"]["science_fwhm_px"], "science PSF FWHM, pixels")
    header["FWHMREF"] = (record["psf"]["reference_fwhm_px"], "reference PSF FWHM (science pixels)")
    header["FLXRATIO"] = (record["flux"]["ratio"], "science / reference flux ratio")
    header["ALIGNMTH"] = (record["alignment"]["method"], "alignment method")
    header["OVERLAP"] = (record["alignment"]["overlap_fraction"], "fraction of science pixels covered")
    header["NOISESCI"] = (record["noise"]["science_plane"], "pixel noise of SCIENCE, photon floor")
    header["NOISEREF"] = (record["noise"]["reference_plane"], "pixel noise of REFERENCE, photon floor")
    header["NOISED"] = (record["noise"]["difference_plane"], "robust pixel noise of D")
    header["SIGCORR"] = (record["noise"]["significance_correction"], "S_corr divided by this (calibration)")
    wcs_header = science.wcs.to_header(relax=True)

    def image(name, data):
        return fits.ImageHDU(data=np.asarray(data, np.float32), header=wcs_header if data.ndim == 2
                             and data.shape == science.shape else None, name=name)

    sources = psf_sci.sources.head(MAX_SOURCES_RECORDED)
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="x", format="D", array=sources["x"].to_numpy(float)),
        fits.Column(name="y", format="D", array=sources["y"].to_numpy(float)),
        fits.Column(name="snr", format="D", array=sources["snr"].to_numpy(float))], name="SOURCES")
    new[science_bad] = np.nan
    ref_scaled[~aligned.footprint] = np.nan
    unit = "" if record["subtraction"]["method"] == "zogy" else science.unit
    write_image(out_dir / "difference.fits", difference, science.wcs, provenance, unit=unit or None, header=header,
                extensions=[image("SCIENCE", new), image("REFERENCE", ref_scaled),
                            image("PSF_D", psf_d), image("PSF_SCI", psf_sci.image), image("PSF_REF", psf_ref.image),
                            table])
    write_image(out_dir / "significance.fits", significance, science.wcs, provenance, unit="sigma", header=header,
                extensions=[image("SCORE", score)])
    bits = (science_bad.astype(np.uint8) * MASK_BITS["science_bad"]
            | aligned.mask.astype(np.uint8) * MASK_BITS["reference_bad"]
            | (~aligned.footprint).astype(np.uint8) * MASK_BITS["no_coverage"])
    bits |= ((bits == 0) & grown).astype(np.uint8) * MASK_BITS["grown"]
    mask_header = fits.Header()
    for name, bit in MASK_BITS.items():
        mask_header[f"MASKB{bit}"] = (name, f"meaning of bit value {bit}")
    write_image(out_dir / "mask.fits", bits, science.wcs, provenance, header=mask_header)
    write_table(out_dir / "injections.csv", injections)


@dataclass
class PairProducts:
    """The products of :func:`difference_pair` read back for detection and cut-outs."""

    difference: np.ndarray
    significance: np.ndarray
    score: np.ndarray
    science: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    wcs: WCS
    header: fits.Header
    sources: pd.DataFrame
    noise: tuple[float, float, float] | None = None  # per-pixel noise of science, reference, D (NOISE* cards)


NOISE_CARDS = ("NOISESCI", "NOISEREF", "NOISED")


def read_products(pair_dir: str | Path) -> PairProducts:
    """Read ``difference.fits``, ``significance.fits`` and ``mask.fits`` of a pair directory.

    Raises
    ------
    InputDataError
        If one is missing or lacks an expected extension.
    """
    pair_dir = Path(pair_dir)
    arrays = {}
    for name in ("difference.fits", "significance.fits", "mask.fits"):
        path = pair_dir / name
        if not path.is_file():
            raise InputDataError(path, "missing: run the difference stage for this pair first")
        try:
            with fits.open(path, memmap=False) as hdul:
                arrays[name] = {hdu.name: (hdu.data, hdu.header) for hdu in hdul}
        except (OSError, TypeError, ValueError) as error:
            raise InputDataError(path, f"not a readable FITS file: {error}") from error
    difference = arrays["difference.fits"]
    significance = arrays["significance.fits"]
    try:
        sources = difference["SOURCES"][0]
        return PairProducts(
            difference=np.asarray(difference["PRIMARY"][0], np.float32),
            significance=np.asarray(significance["PRIMARY"][0], np.float32),
            score=np.asarray(significance["SCORE"][0], np.float32),
            science=np.asarray(difference["SCIENCE"][0], np.float32),
            reference=np.asarray(difference["REFERENCE"][0], np.float32),
            mask=np.asarray(arrays["mask.fits"]["PRIMARY"][0]) != 0,
            psf=np.asarray(difference["PSF_D"][0], float),
            wcs=WCS(difference["PRIMARY"][1]).celestial, header=difference["PRIMARY"][1],
            sources=pd.DataFrame({"x": np.asarray(sources["x"], float), "y": np.asarray(sources["y"], float),
                                  "snr": np.asarray(sources["snr"], float)}),
            noise=tuple(float(difference["PRIMARY"][1][card]) for card in NOISE_CARDS)
            if all(card in difference["PRIMARY"][1] for card in NOISE_CARDS) else None)
    except KeyError as error:
        raise InputDataError(pair_dir / "difference.fits", f"lacks the {error} extension (written by an older "
                                                           "version? rerun the difference stage)") from error


def detect_pair(pair_dir: str | Path, settings: DetectSettings | None = None, out: str | Path | None = None) -> dict:
    """Detect candidates in a differenced pair and write ``candidates.csv`` and, beside it, ``candidates.json``.

    ``candidates.json`` is the returned summary: with the counts, whether the subtraction
    failed (too many peaks, :func:`astrodag.supernova.imaging.detect.assess_detection`) and
    why, from the pair's ``difference.json``.

    Parameters
    ----------
    pair_dir : str or Path
        Directory holding the products of :func:`difference_pair`.
    settings : DetectSettings, optional
    out : str or Path, optional
        Output table (default ``pair_dir/candidates.csv``).

    Returns
    -------
    dict
        Counts (candidates, kept, per reject reason), the failure assessment (``peaks``,
        ``peaks_per_megapixel``, ``capped``, ``failed``, ``failure_reasons``) and the time taken.
    """
    settings = settings or DetectSettings()
    started = time.perf_counter()
    products = read_products(pair_dir)
    header = products.header
    candidates = detect_candidates(products.significance, products.score, products.difference, products.mask,
                                   products.psf, float(header["FLUXSCL"]), float(header["FLUXZPD"]), products.wcs,
                                   settings, fwhm=float(header["FWHM_D"]))
    out = Path(out) if out is not None else Path(pair_dir) / "candidates.csv"
    record_path = Path(pair_dir) / "difference.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    summary = {"candidates": int(len(candidates)), "kept": int(candidates["kept"].sum()),
               "rejected": {reason: int(n) for reason, n in
                            candidates.loc[~candidates["kept"], "reject_reason"].value_counts().items()},
               **assess_detection(candidates, settings, record)}
    write_table(out, candidates)
    summary["seconds"] = round(time.perf_counter() - started, 4)
    write_json(out.with_suffix(".json"), summary)
    log.info("%s: %d candidates, %d kept", Path(pair_dir).name, summary["candidates"], summary["kept"])
    return summary
