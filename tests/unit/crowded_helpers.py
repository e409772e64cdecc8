"""A crowded synthetic star field observed twice: different Moffat PSFs, a residual transform, a flux scale.

Shared by the registration and flux-scale tests. Stars are point-sampled Moffat profiles
normalised to their analytic total flux; the PSF stamps handed to the code under test are the
same profiles on a 51-pixel stamp (over 99.8 % of the flux) normalised to unit sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HALF = 25  # stamp half-size: the Moffat tails beyond hold < 0.2 % of the flux


def moffat(dx: np.ndarray, dy: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    """Moffat profile of unit total flux."""
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    return (beta - 1) / (math.pi * alpha ** 2) * (1 + (dx ** 2 + dy ** 2) / alpha ** 2) ** (-beta)


def psf_stamp(fwhm: float, beta: float) -> np.ndarray:
    grid = np.arange(-HALF, HALF + 1, dtype=float)
    stamp = moffat(grid[None, :], grid[:, None], fwhm, beta)
    return stamp / stamp.sum()


def render(shape, x, y, flux, fwhm, beta, rng, sky_noise, gain) -> np.ndarray:
    """Stars plus Gaussian sky noise and their photon noise (Gaussian, variance = counts / gain)."""
    ny, nx = shape
    pad = HALF + 20  # stars up to 20 px off the image still spill light onto it
    image = np.zeros((ny + 2 * pad, nx + 2 * pad))
    grid = np.arange(-HALF, HALF + 1, dtype=float)
    for start in range(0, len(x), 500):
        xs, ys, fs = x[start:start + 500], y[start:start + 500], flux[start:start + 500]
        ix, iy = np.rint(xs).astype(int), np.rint(ys).astype(int)
        stamps = fs[:, None, None] * moffat(grid[None, None, :] - (xs - ix)[:, None, None],
                                            grid[None, :, None] - (ys - iy)[:, None, None], fwhm, beta)
        for k in range(len(xs)):
            top, left = iy[k] + pad - HALF, ix[k] + pad - HALF
            image[top:top + 2 * HALF + 1, left:left + 2 * HALF + 1] += stamps[k]
    image = image[pad:pad + ny, pad:pad + nx]
    noise = np.sqrt(sky_noise ** 2 + np.clip(image, 0, None) / gain)
    return (image + rng.normal(size=shape) * noise).astype(np.float32)


@dataclass
class Field:
    science: np.ndarray
    reference: np.ndarray
    noise: float
    x: np.ndarray  # true science positions
    y: np.ndarray
    x_ref: np.ndarray  # true reference positions
    y_ref: np.ndarray
    coefficients: np.ndarray  # true [x_ref, y_ref] = [x, y, 1] @ coefficients
    variable: np.ndarray
    psf_science: np.ndarray
    psf_reference: np.ndarray
    fwhm_science: float
    fwhm_reference: float
    saturation: float


def crowded_field(seed=0, shape=(1024, 1024), n_stars=3000, shift=(0.7, -0.45), rotation_deg=0.3, ratio=1.1,
                  jitter_px=0.0, n_variables=100, n_blends=60, sky_noise=10.0, gain=4.0,
                  fwhm=(2.5, 3.2), beta=(3.0, 2.8)) -> Field:
    """Science and aligned reference of one crowded field (see the module notes).

    The reference sees each star at ``A (x, y)``: a rotation by ``rotation_deg`` about the image
    centre plus ``shift``, plus Gaussian ``jitter_px`` per star and axis. Science fluxes are
    ``ratio`` times the reference's, except ``n_variables`` stars that change by 0.3-3 times;
    ``n_blends`` stars get a companion of similar flux 1-2 px away. Pixels above
    ``saturation`` are bad in both images.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x, y = rng.uniform(-10, nx + 10, n_stars), rng.uniform(-10, ny + 10, n_stars)
    # Power-law luminosity function dN/df ~ f^-2 between 200 and 3e5 (peak S/N ~ 2-3000).
    u = rng.uniform(size=n_stars)
    lo, hi = 200.0, 3e5
    flux = 1.0 / (1.0 / lo - u * (1.0 / lo - 1.0 / hi))
    blends = rng.choice(n_stars, n_blends, replace=False)
    angle = rng.uniform(0, 2 * np.pi, n_blends)
    sep = rng.uniform(1.0, 2.0, n_blends)
    x = np.concatenate([x, x[blends] + sep * np.cos(angle)])
    y = np.concatenate([y, y[blends] + sep * np.sin(angle)])
    flux = np.concatenate([flux, flux[blends] * rng.uniform(0.5, 1.0, n_blends)])
    theta = math.radians(rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    matrix = np.array([[c, s], [-s, c]])  # rows: x, y coefficients of [x_ref, y_ref]
    offset = np.array([cx, cy]) - np.array([cx, cy]) @ matrix + np.asarray(shift)
    coefficients = np.vstack([matrix, offset])
    ref_xy = np.column_stack([x, y, np.ones_like(x)]) @ coefficients
    ref_xy += rng.normal(0, jitter_px, ref_xy.shape) if jitter_px else 0.0
    sci_flux = ratio * flux
    variable = np.zeros(len(x), bool)
    variable[rng.choice(len(x), n_variables, replace=False)] = True
    sci_flux[variable] *= rng.uniform(0.3, 3.0, variable.sum())
    science = render(shape, x, y, sci_flux, fwhm[0], beta[0], rng, sky_noise, gain)
    reference = render(shape, ref_xy[:, 0], ref_xy[:, 1], flux, fwhm[1], beta[1], rng, sky_noise, gain)
    return Field(science, reference, sky_noise, x, y, ref_xy[:, 0], ref_xy[:, 1], coefficients, variable,
                 psf_stamp(fwhm[0], beta[0]), psf_stamp(fwhm[1], beta[1]), fwhm[0], fwhm[1], saturation=2e4)
