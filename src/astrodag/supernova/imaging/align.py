"""Alignment: the reference image resampled onto the science image's pixel grid.

Three methods (``AlignSettings.method``):

``affine`` (default)
    The science-pixel -> sky -> reference-pixel transform is fitted by least squares with an
    affine map on a 9x9 grid of points, and its largest position error is measured against
    the exact WCS transform on a 33x33 grid spanning the whole image (edges included). If the
    error is within ``affine_tolerance_px`` the reference is resampled with
    ``scipy.ndimage.affine_transform`` (no per-pixel WCS evaluation, about ten times faster
    than ``reproject_interp`` at 2048x2048); otherwise it falls back to ``interp``. Small
    fields in TAN projection are affine to ~1e-4 pixel; strong distortion (SIP) is not.
``interp``
    ``reproject.reproject_interp`` (``roundtrip_coords`` is configurable; False halves the WCS
    work and is safe for images whose transforms are defined everywhere).
``exact``
    ``reproject.reproject_exact`` (flux-conserving spherical-polygon overlap; slow).

Interpolation follows ``order``, the same for ``affine`` and ``interp``. The default is
``bicubic``: bilinear interpolation smooths the PSF by an amount that depends on each star's
sub-pixel phase, so with a rotation between the images no single reference PSF fits all stars
and bright stars leave residuals (measured: 63 false candidates at 1024x1024 bilinear, none
bicubic). Bad reference pixels are filled with the median before resampling (a spline would
spread NaNs) and their mask is resampled alongside: ``Alignment.mask`` marks every output
pixel that a bad pixel touched. Pixels outside the reference are outside the footprint.
Non-overlapping images (overlap below ``min_overlap_fraction``) raise ``InputDataError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from astropy.wcs import WCS
from scipy import ndimage

from astrodag.errors import InputDataError
from astrodag.settings import Settings, choice, flag, number, setting
from astrodag.supernova.imaging.fitsio import Image

log = logging.getLogger(__name__)

ORDERS = {"nearest-neighbor": 0, "bilinear": 1, "biquadratic": 2, "bicubic": 3}


@dataclass(frozen=True)
class AlignSettings(Settings):
    """Alignment of the reference onto the science grid (config ``supernova.difference.align``).

    Keys
    ----
    method : {"affine", "interp", "exact"}, default "affine"
        See the module notes; ``affine`` falls back to ``interp`` when its error is too large.
    affine_tolerance_px : float, default 0.02
        Largest position error (reference pixels) accepted from the affine approximation.
    order : {"bicubic", "bilinear", "biquadratic", "nearest-neighbor"}, default "bicubic"
        Interpolation of ``affine`` and ``interp`` (``exact`` has none); see the module notes.
    roundtrip_coords : bool, default false
        ``reproject_interp``'s check that each transformed coordinate maps back.
    min_overlap_fraction : float, default 0.05
        Below this fraction of science pixels covered by the reference the pair is refused.
    refine : bool, default true
        Measure the residual shift between the two images' PSF stars after alignment and,
        when it is significant (``refine_min_shift_px``, from at least 5 stars), resample
        again with it corrected; real archive WCSs are often off by a fraction of a pixel.
    refine_min_shift_px : float, default 0.05
        Residual shifts below this are left alone.
    """

    PREFIX: ClassVar[str] = "supernova.difference.align"

    method: str = setting("affine", choice("affine", "interp", "exact"))
    affine_tolerance_px: float = setting(0.02, number(0.0, low_open=True))
    order: str = setting("bicubic", choice(*ORDERS))
    roundtrip_coords: bool = setting(False, flag)
    min_overlap_fraction: float = setting(0.05, number(0.0, 1.0))
    refine: bool = setting(True, flag)
    refine_min_shift_px: float = setting(0.05, number(0.0))


@dataclass
class Alignment:
    """The reference on the science grid.

    Attributes
    ----------
    data : numpy.ndarray
        Resampled reference, float32; NaN outside the footprint.
    footprint : numpy.ndarray
        Bool, True where the reference covers the science pixel.
    mask : numpy.ndarray
        Bool, True inside the footprint where the resampled value touched a bad pixel.
    overlap_fraction : float
        Fraction of science pixels inside the footprint.
    method : str
        Method actually used (``affine``, ``interp`` or ``exact``).
    affine_error_px : float or None
        Largest error of the affine approximation (None when not evaluated).
    shift_px : (float, float)
        Correction ``(dx, dy)`` applied on top of the WCS (see ``refine``).
    """

    data: np.ndarray
    footprint: np.ndarray
    mask: np.ndarray
    overlap_fraction: float
    method: str
    affine_error_px: float | None
    shift_px: tuple[float, float]


def _grid(shape: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    y, x = np.meshgrid(np.linspace(-0.5, ny - 0.5, n), np.linspace(-0.5, nx - 0.5, n), indexing="ij")
    return x.ravel(), y.ravel()


def pixel_transform(science_wcs: WCS, reference_wcs: WCS, x: np.ndarray, y: np.ndarray,
                    shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Exact reference-pixel coordinates of science pixels ``(x + dx, y + dy)`` (via the sky).

    The high-level API converts between the two celestial frames if they differ (ICRS/FK5/Galactic).
    """
    sky = science_wcs.pixel_to_world(x + shift[0], y + shift[1])
    xr, yr = reference_wcs.world_to_pixel(sky)
    return np.asarray(xr, float), np.asarray(yr, float)


def fit_affine(science_wcs: WCS, reference_wcs: WCS, shape: tuple[int, int],
               shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, float]:
    """Affine approximation of the science -> reference pixel transform and its largest error.

    Returns
    -------
    coefficients : numpy.ndarray
        ``(3, 2)``: ``[x_ref, y_ref] = [x, y, 1] @ coefficients``.
    max_error : float
        Largest distance (reference pixels) between the affine and the exact transform on a
        33x33 grid covering the image; ``inf`` if the exact transform fails somewhere.
    """
    x, y = _grid(shape, 9)
    xr, yr = pixel_transform(science_wcs, reference_wcs, x, y, shift)
    design = np.column_stack([x, y, np.ones_like(x)])
    if not (np.isfinite(xr).all() and np.isfinite(yr).all()):
        return np.full((3, 2), np.nan), float("inf")
    coefficients, *_ = np.linalg.lstsq(design, np.column_stack([xr, yr]), rcond=None)
    x, y = _grid(shape, 33)
    xr, yr = pixel_transform(science_wcs, reference_wcs, x, y, shift)
    predicted = np.column_stack([x, y, np.ones_like(x)]) @ coefficients
    error = np.hypot(predicted[:, 0] - xr, predicted[:, 1] - yr)
    return coefficients, float(np.max(error)) if np.isfinite(error).all() else float("inf")


SPLINE_PAD = 12  # what scipy.ndimage pads a 'nearest' image by before its spline prefilter


def _affine_resample(data: np.ndarray, coefficients: np.ndarray, shape: tuple[int, int], order: int,
                     rows_per_block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    (a, c), (b, d), (e, f) = coefficients  # x_ref = a x + b y + e ; y_ref = c x + d y + f
    # scipy works in (row, col) = (y, x) order: input = matrix @ output + offset.
    matrix = np.array([[d, c], [b, a]])
    offset = np.array([f, e])
    if order > 1:
        # scipy's own prefilter, with the spline coefficients in single precision: its are
        # float64, two more image-sized copies (1 GiB at 8192^2) for a change of float32 rounding.
        padded = np.pad(data, SPLINE_PAD, mode="edge")
        data_in = ndimage.spline_filter(padded, order, output=np.float32, mode="nearest")
        del padded
        offset = offset + SPLINE_PAD
    else:
        data_in = data
    out = ndimage.affine_transform(data_in, matrix, offset=offset, output_shape=shape, order=order, mode="nearest",
                                   prefilter=False, output=np.float32)
    del data_in
    ny, nx = data.shape
    inside = np.empty(shape, bool)
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    # Blocks of rows: full-size float64 coordinate maps would be 512 MiB each at 8192^2.
    for start in range(0, shape[0], rows_per_block):
        rows = np.arange(start, min(start + rows_per_block, shape[0]), dtype=np.float64)[:, None]
        xr = a * cols + b * rows + e
        yr = c * cols + d * rows + f
        inside[start:start + rows_per_block] = (xr >= -0.5) & (xr <= nx - 0.5) & (yr >= -0.5) & (yr <= ny - 0.5)
    return out, inside


def _reproject(reference: Image, planes: np.ndarray, wcs_out: WCS, shape: tuple[int, int], method: str,
               settings: AlignSettings) -> tuple[np.ndarray, np.ndarray]:
    """Resample one or more planes (data, bad-pixel mask) with reproject; coordinates are computed once."""
    from reproject import reproject_exact, reproject_interp

    if method == "exact":
        out, footprint = reproject_exact((planes, reference.wcs), wcs_out, shape_out=shape)
        return out.astype(np.float32), footprint[0] > 0.999
    out, footprint = reproject_interp((planes, reference.wcs), wcs_out, shape_out=shape, order=settings.order,
                                      roundtrip_coords=settings.roundtrip_coords)
    return out.astype(np.float32), footprint[0] > 0


def align_reference(science: Image, reference: Image, settings: AlignSettings | None = None,
                    shift: tuple[float, float] = (0.0, 0.0)) -> Alignment:
    """Resample the reference onto the science grid (see the module notes).

    Parameters
    ----------
    science, reference : Image
    settings : AlignSettings, optional
    shift : (float, float)
        Extra ``(dx, dy)`` in science pixels: the output pixel ``(x, y)`` samples the reference
        where the science WCS puts ``(x + dx, y + dy)`` (a measured WCS correction).

    Returns
    -------
    Alignment

    Raises
    ------
    InputDataError
        If the reference covers less than ``min_overlap_fraction`` of the science image.
    """
    settings = settings or AlignSettings()
    shape = science.shape
    bad = reference.mask
    data = reference.data.astype(np.float32, copy=False)
    if bad.any():
        data = np.where(bad, np.float32(np.median(data[~bad][::7])), data)
    method, error = settings.method, None
    if method == "affine":
        coefficients, error = fit_affine(science.wcs, reference.wcs, shape, shift)
        if error <= settings.affine_tolerance_px:
            out, footprint = _affine_resample(data, coefficients, shape, ORDERS[settings.order])
            # Linear interpolation of the 0/1 mask: positive wherever a bad pixel contributed.
            touched = _affine_resample(bad.astype(np.float32), coefficients, shape, 1)[0] > 0 \
                if bad.any() else np.zeros(shape, bool)
        else:
            log.info("affine approximation off by %.3g px (> %.3g): using reproject_interp",
                     error, settings.affine_tolerance_px)
            method = "interp"
    if method != "affine":
        wcs_out = science.wcs
        if shift != (0.0, 0.0):
            wcs_out = science.wcs.deepcopy()
            wcs_out.wcs.crpix = wcs_out.wcs.crpix - np.asarray(shift)
        planes, footprint = _reproject(reference, np.stack([data, bad.astype(np.float32)]), wcs_out, shape,
                                       method, settings)
        out = planes[0]
        # A spline rings around a lone 1: a tenth keeps the ringing out and every real contribution in.
        threshold = 1e-3 if method == "exact" else 0.5 if settings.order == "nearest-neighbor" else 0.1
        touched = planes[1] > threshold
    overlap = float(footprint.mean())
    if overlap < max(settings.min_overlap_fraction, 1e-12):
        raise InputDataError(reference.path, f"covers {overlap:.1%} of the science image {science.path.name} "
                                             f"(minimum {settings.min_overlap_fraction:.1%}): footprints do not "
                                             "overlap")
    out[~footprint] = np.nan
    mask = footprint & (touched | ~np.isfinite(out))
    return Alignment(data=out, footprint=footprint, mask=mask, overlap_fraction=overlap, method=method,
                     affine_error_px=error, shift_px=(float(shift[0]), float(shift[1])))
