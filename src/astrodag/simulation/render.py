"""Painting astronomical images: Sersic galaxies, Moffat and Gaussian PSFs, point sources, sky, noise, cosmic rays.

Conventions shared by every function here:

Arrays
    2-D NumPy arrays of shape ``(ny, nx)``, indexed ``image[y, x]``.
Positions
    0-based pixel coordinates, the centre of pixel ``image[j, i]`` at ``x = i, y = j`` (astropy's
    ``origin=0``, so ``WCS.all_world2pix(ra, dec, 0)`` gives them directly). A PSF stamp of odd
    side ``size`` has its middle pixel at ``size // 2``; ``center = (dx, dy)`` moves the source that
    far from it.
Sizes
    Pixels. Convert from the sky with the pixel scale: ``fwhm_px = fwhm_arcsec / pixel_scale``
    (arcsec per pixel); the same for effective radii.
Fluxes
    Totals in the image's data units (counts, electrons, count/s): PSF stamps sum to 1, a painted
    source or galaxy to its ``flux`` (less what falls beyond the image edges, lost as on the sky).
Noise
    ``gain`` is electrons per data unit, so that the Poisson variance of a pixel is ``value / gain``.

Profiles are integrated over pixels (sub-grids or exact integrals), so that a sharp core or a
sub-pixel position renders faithfully. Functions named ``add_*`` modify the image in place.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf, gamma, gammaincinv

# --------------------------------------------------------------------------------------------
# PSFs
# --------------------------------------------------------------------------------------------


def stamp_size(fwhm: float, radius_fwhm: float = 3.0) -> int:
    """Odd PSF-stamp side for a FWHM: ``2 ceil(radius_fwhm * fwhm) + 1``, within [11, 63]."""
    return int(min(63, max(11, 2 * math.ceil(radius_fwhm * fwhm) + 1)))


def gaussian_psf(fwhm: float, size: int | None = None, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Pixel-integrated circular Gaussian stamp of unit sum.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum, pixels.
    size : int, optional
        Odd side of the stamp (default :func:`stamp_size`).
    center : (float, float)
        Offset ``(dx, dy)`` of the centre from the middle pixel (for sub-pixel placement).
    """
    size = stamp_size(fwhm) if size is None else size
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    edges = np.arange(size + 1) - size / 2  # pixel edges around the middle pixel's centre at 0

    def profile(offset: float) -> np.ndarray:
        cdf = 0.5 * erf((edges - offset) / (math.sqrt(2) * sigma))
        return np.diff(cdf)

    stamp = np.outer(profile(center[1]), profile(center[0]))
    return stamp / stamp.sum()


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Core width ``alpha`` of a Moffat profile ``(1 + r^2 / alpha^2)^-beta`` with this FWHM (pixels)."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_psf(fwhm: float, beta: float, size: int | None = None,
               center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A Moffat PSF stamp of unit sum, each pixel integrated on a 3x3 sub-grid.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum, pixels.
    beta : float
        Power index (> 1; larger is closer to a Gaussian): ground-based seeing is about 3-4.5.
    size : int, optional
        Odd side of the stamp; default ``2 max(3, ceil(4 fwhm)) + 1`` (about 8 FWHM).
    center : (float, float)
        Offset ``(dx, dy)`` of the centre from the middle pixel (for sub-pixel placement).
    """
    half = max(3, int(math.ceil(4.0 * fwhm))) if size is None else size // 2
    sub = (np.arange(3) - 1.0) / 3.0
    grid = np.arange(-half, half + 1, dtype=float)
    x = (grid[None, :, None, None] + sub[None, None, None, :]) - center[0]
    y = (grid[:, None, None, None] + sub[None, None, :, None]) - center[1]
    alpha = moffat_alpha(fwhm, beta)
    profile = (1.0 + (x * x + y * y) / (alpha * alpha)) ** (-beta)
    kernel = profile.mean(axis=(2, 3))
    return kernel / kernel.sum()


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


def add_stamp(image: np.ndarray, stamp: np.ndarray, ix: int, iy: int) -> None:
    """Add an odd-sided ``stamp`` with its middle pixel on pixel ``(ix, iy)``; parts beyond the edges are dropped."""
    half_y, half_x = stamp.shape[0] // 2, stamp.shape[1] // 2
    ny, nx = image.shape
    x0, x1, y0, y1 = ix - half_x, ix + half_x + 1, iy - half_y, iy + half_y + 1
    if x1 <= 0 or y1 <= 0 or x0 >= nx or y0 >= ny:
        return
    image[max(y0, 0):min(y1, ny), max(x0, 0):min(x1, nx)] += stamp[
        max(0, -y0):stamp.shape[0] - max(0, y1 - ny), max(0, -x0):stamp.shape[1] - max(0, x1 - nx)]


def add_moffat_source(image: np.ndarray, x: float, y: float, flux: float, fwhm: float, beta: float,
                      floor: float) -> None:
    """Add a Moffat point source of total ``flux`` at pixel ``(x, y)``.

    The stamp reaches out to where the profile falls below ``floor`` (data units per pixel), at
    least 4 FWHM: the wings of a bright star do not end in a visible square, and faint stars stay
    cheap. Pass a fraction of the sky noise (a tenth, say) as ``floor``.
    """
    ix, iy = int(round(x)), int(round(y))
    alpha = moffat_alpha(fwhm, beta)
    ratio = flux * (beta - 1.0) / (math.pi * alpha * alpha * floor)  # peak over floor
    reach = alpha * math.sqrt(ratio ** (1.0 / beta) - 1.0) if ratio > 1.0 else 0.0
    half = int(min(max(math.ceil(reach), math.ceil(4.0 * fwhm), 3), max(image.shape)))
    kernel = moffat_psf(fwhm, beta, 2 * half + 1, (x - ix, y - iy))
    add_stamp(image, flux * kernel, ix, iy)


def sersic_b(n: float) -> float:
    """``b_n`` of a Sersic profile: half of the light lies within the effective radius."""
    return float(gammaincinv(2.0 * n, 0.5))


def sersic_image(shape: tuple[int, int], x0: float, y0: float, flux: float, r_eff: float, n: float,
                 axis_ratio: float, angle: float) -> np.ndarray:
    """A Sersic galaxy of total ``flux``, each pixel integrated on a 2x2 sub-grid.

    The surface brightness is ``I_e exp(-b_n ((r / r_eff)^(1/n) - 1))`` with the elliptical radius
    ``r = sqrt(u^2 + (v / axis_ratio)^2)`` along the major (``u``) and minor (``v``) axes; ``I_e``
    makes the profile integrated over the whole plane equal ``flux``. The 2x2 sub-grid misses part of
    the cusp of a high-index profile on few pixels (de Vaucouleurs, ``n = 4``: 3 % of the flux at
    ``r_eff = 4`` px, under 1 % from 10 px).

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)`` of the image.
    x0, y0 : float
        Centre, pixels.
    flux : float
        Total flux (data units); what falls beyond the image is lost.
    r_eff : float
        Effective (half-light) radius along the major axis, pixels.
    n : float
        Sersic index (1: exponential disc, 4: de Vaucouleurs).
    axis_ratio : float
        Minor over major axis, in (0, 1].
    angle : float
        Angle of the major axis from the pixel x axis towards y, radians.
    """
    b = sersic_b(n)
    total = 2.0 * math.pi * n * r_eff ** 2 * axis_ratio * math.exp(b) * b ** (-2.0 * n) * gamma(2.0 * n)
    ny, nx = shape
    sub = np.array([-0.25, 0.25])
    ys = (np.arange(ny)[:, None] + sub[None, :]).ravel() - y0
    xs = (np.arange(nx)[:, None] + sub[None, :]).ravel() - x0
    cos, sin = math.cos(angle), math.sin(angle)
    u = xs[None, :] * cos + ys[:, None] * sin
    v = -xs[None, :] * sin + ys[:, None] * cos
    # A floor on the radius keeps the cusp of a high-index profile finite at the centre.
    r = np.maximum(np.sqrt(u * u + (v / axis_ratio) ** 2), 0.05)
    surface = np.exp(-b * ((r / r_eff) ** (1.0 / n) - 1.0))
    binned = surface.reshape(ny, 2, nx, 2).mean(axis=(1, 3))
    return binned * (flux / total)


# --------------------------------------------------------------------------------------------
# sky, noise, cosmic rays
# --------------------------------------------------------------------------------------------


def sky_plane(shape: tuple[int, int], level: float, gradient_x: float = 0.0, gradient_y: float = 0.0) -> np.ndarray:
    """A sky of mean ``level`` (data units per pixel) changing linearly across the image.

    ``gradient_x`` and ``gradient_y`` are the relative changes from one edge to the other
    (``level (1 + g_x x' + g_y y')`` with ``x', y'`` running from -0.5 to 0.5).
    """
    ny, nx = shape
    yy = (np.arange(ny) / (ny - 1) - 0.5)[:, None]
    xx = (np.arange(nx) / (nx - 1) - 0.5)[None, :]
    return level * (1.0 + gradient_x * xx + gradient_y * yy)


def photon_and_read_noise(image: np.ndarray, gain: float, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    """The image observed: Poisson noise of its (clipped at 0) electrons, then Gaussian read noise.

    Parameters
    ----------
    image : numpy.ndarray
        Noiseless expectation, data units.
    gain : float
        Electrons per data unit.
    read_noise : float
        Electrons per pixel (0: none drawn).
    rng : numpy.random.Generator
        Draws the Poisson image first, then the read noise.
    """
    noisy = rng.poisson(np.clip(image, 0.0, None) * gain) / gain
    if read_noise:
        noisy = noisy + rng.normal(0.0, read_noise / gain, image.shape)
    return noisy


def add_cosmic_ray(image: np.ndarray, rng: np.random.Generator, gain: float = 1.0, exptime: float = 1.0) -> None:
    """Add one cosmic-ray track: 1-12 pixels long, 800-6000 electrons per pixel, sharp (not PSF-shaped).

    Parameters
    ----------
    image : numpy.ndarray
        Modified in place.
    rng : numpy.random.Generator
        Draws length, angle, start and the charge of each pixel, in that order.
    gain : float
        Electrons per count.
    exptime : float
        Seconds, for images in count/s (the charge is spread over the exposure); 1 for images in counts.
    """
    ny, nx = image.shape
    length = rng.uniform(1.0, 12.0)
    angle = rng.uniform(0.0, math.pi)
    x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
    steps = np.linspace(0.0, length, max(2, int(length * 2)))
    xs = np.clip(np.round(x0 + steps * math.cos(angle)).astype(int), 0, nx - 1)
    ys = np.clip(np.round(y0 + steps * math.sin(angle)).astype(int), 0, ny - 1)
    cells = np.unique(np.column_stack([ys, xs]), axis=0)
    image[cells[:, 0], cells[:, 1]] += rng.uniform(800.0, 6000.0, len(cells)) / gain / exptime
