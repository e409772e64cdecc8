"""Kernel-fit (Alard-Lupton) subtraction on crowded Moffat fields the code did not make itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import fftconvolve

from astrodag.supernova.imaging.kernel import kernel_basis, kernel_difference, monomials, poly_map
from astrodag.supernova.imaging.subtract import SubtractSettings

STAMP = 41  # rendering stamp of the Moffat stars (the flux beyond 20 px is < 0.2 % at beta >= 3)
SKY_SIGMA_NEW, SKY_SIGMA_REF = 8.0, 5.0


def moffat_stamp(fwhm: float, beta: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """A Moffat profile sampled at pixel centres, unit sum over the stamp, centre offset by (dx, dy)."""
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    u = np.arange(STAMP) - STAMP // 2
    r2 = (u[None, :] - dx) ** 2 + (u[:, None] - dy) ** 2
    stamp = (1 + r2 / alpha ** 2) ** (-beta)
    return stamp / stamp.sum()


def render(shape, x, y, flux, fwhm, beta) -> np.ndarray:
    """Moffat stars; ``fwhm`` may be a function of (x, y) (a seeing gradient)."""
    image = np.zeros((shape[0] + STAMP, shape[1] + STAMP))
    half = STAMP // 2
    for xc, yc, f in zip(x, y, flux):
        ix, iy = int(round(xc)), int(round(yc))
        width = fwhm(xc, yc) if callable(fwhm) else fwhm
        image[iy:iy + STAMP, ix:ix + STAMP] += f * moffat_stamp(width, beta, xc - ix, yc - iy)
    return image[half:half + shape[0], half:half + shape[1]]


def gradient_fwhm(nx):
    """Science seeing 3.2 px on the left edge to 4.0 px on the right."""
    return lambda x, y: 3.2 + 0.8 * x / nx


def crowded_pair(shape=(1024, 1024), n_stars=4000, ratio=1.1, transients=(), ref_fwhm=2.6, ref_beta=4.5,
                 new_fwhm=None, new_beta=3.0, seed=1, gain=1.0):
    """Science and reference of one crowded field, their true variance maps, and the transients' truth.

    Stars with a power-law flux distribution (many faint, a few bright, none saturated); the
    science image is ``ratio`` times brighter, with Moffat PSFs of different FWHM and beta,
    Gaussian sky noise plus photon noise (``gain`` e-/ADU) of the sources.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x, y = rng.uniform(0, nx, n_stars), rng.uniform(0, ny, n_stars)
    flux = 300.0 * (1 - rng.uniform(0, 1, n_stars)) ** (-1 / 0.8)
    flux = np.minimum(flux, 3e5)
    new_fwhm = gradient_fwhm(nx) if new_fwhm is None else new_fwhm
    clean_new = ratio * render(shape, x, y, flux, new_fwhm, new_beta)
    clean_ref = render(shape, x, y, flux, ref_fwhm, ref_beta)
    if transients:
        tx, ty, tf = (np.asarray(c, float) for c in zip(*transients))
        clean_new += render(shape, tx, ty, tf, new_fwhm, new_beta)
    var_new = SKY_SIGMA_NEW ** 2 + np.clip(clean_new, 0, None) / gain
    var_ref = SKY_SIGMA_REF ** 2 + np.clip(clean_ref, 0, None) / gain
    new = (clean_new + rng.normal(size=shape) * np.sqrt(var_new)).astype(np.float32)
    ref = (clean_ref + rng.normal(size=shape) * np.sqrt(var_ref)).astype(np.float32)
    order = np.argsort(-flux)
    stars = np.column_stack([x, y])[order]
    return new, ref, var_new.astype(np.float32), var_ref.astype(np.float32), stars, flux[order]


def robust_std(values):
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def test_basis_sums_and_poly_map():
    bases = kernel_basis(8, 3.5)
    assert len(bases) == 28 + 15 + 6 + 1
    assert bases[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(bases[1:].sum(axis=(1, 2)), 0.0, atol=1e-12)
    terms = monomials(2)
    assert terms[0] == (0, 0) and len(terms) == 6
    coefficients = {term: 0.3 * (k + 1) for k, term in enumerate(terms)}
    image = poly_map(coefficients, (5, 7))
    xs, ys = np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 5))
    expected = sum(c * xs ** a * ys ** b for (a, b), c in coefficients.items())
    np.testing.assert_allclose(image, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def crowded():
    """A crowded 1024^2 field, seeing gradient, ratio 1.1, ten transients at a peak S/N of ~ 10."""
    shape = (1024, 1024)
    rng = np.random.default_rng(7)
    positions = np.column_stack([rng.uniform(60, 964, 10), rng.uniform(60, 964, 10)])
    # Flux for a matched-filter S/N of about 12 against the sky alone: f = 12 sigma / sqrt(sum P^2).
    flux = 12 * SKY_SIGMA_NEW / math.sqrt(np.sum(moffat_stamp(3.6, 3.0) ** 2))
    transients = [(px, py, flux) for px, py in positions]
    new, ref, var_new, var_ref, stars, star_flux = crowded_pair(shape, transients=transients)
    psf_new = moffat_stamp(3.6, 3.0)[10:31, 10:31]
    psf_new /= psf_new.sum()
    result = kernel_difference(new, ref, psf_new, 3.6, 2.6, stars, var_new, var_ref)
    return result, positions, flux, stars, star_flux, psf_new


def test_crowded_field_ratio_noise_and_transients(crowded):
    result, positions, flux, stars, star_flux, psf_new = crowded
    assert result.convolved == "reference"
    assert result.n_stamps >= 100
    assert result.ratio == pytest.approx(1.1, rel=0.01)
    assert 0 < result.ratio_error < 0.01
    assert result.ratio_range == pytest.approx((result.ratio, result.ratio))
    # S_corr calibrated away from the transients.
    away = ~result.mask
    for px, py in positions:
        away[int(py) - 15:int(py) + 16, int(px) - 15:int(px) + 16] = False
    assert robust_std(result.significance[away]) == pytest.approx(1.0, abs=0.1)
    # Transients at their expected significance: S = f sum(P_true P_D) over the score noise.
    ny, nx = result.score.shape
    offsets = []
    for px, py in positions:
        ix, iy = int(round(px)), int(round(py))
        true_psf = moffat_stamp(3.2 + 0.8 * px / nx, 3.0, px - ix, py - iy)[10:31, 10:31]
        expected = flux * np.sum(true_psf * psf_new) / result.score_noise[iy, ix]
        found = result.significance[iy - 1:iy + 2, ix - 1:ix + 2].max()
        assert found == pytest.approx(expected, abs=2.5)  # unit noise, and the maximum over 3x3 pixels
        offsets.append(found - expected)
        flux_estimate = result.score[iy - 1:iy + 2, ix - 1:ix + 2].max() / result.flux_scale
        assert flux_estimate == pytest.approx(flux, rel=0.25)
    assert abs(np.mean(offsets)) < 1.0  # ten independent transients


def test_crowded_field_star_residuals_are_noise(crowded):
    result, positions, _, stars, star_flux, _ = crowded
    # Bright stars (peak S/N ~ 20-2000), away from the transients and the mask: D / sqrt(V(D)) at their cores.
    bright = stars[(star_flux > 3e3)]
    chi = []
    for sx, sy in bright:
        ix, iy = int(round(sx)), int(round(sy))
        if not (20 <= ix < 1004 and 20 <= iy < 1004) or np.min(np.hypot(*(positions - [sx, sy]).T)) < 20:
            continue
        window = (slice(iy - 2, iy + 3), slice(ix - 2, ix + 3))
        chi.append(result.difference[window] / np.sqrt(result.difference_variance[window]))
    chi = np.concatenate([c.ravel() for c in chi])
    assert len(chi) > 2000
    assert np.std(chi) == pytest.approx(1.0, abs=0.1)


def test_broader_reference_convolves_science():
    shape = (512, 512)
    new, ref, var_new, var_ref, stars, _ = crowded_pair(shape, n_stars=1000, ratio=0.9, ref_fwhm=4.0, ref_beta=3.0,
                                                        new_fwhm=2.8, new_beta=4.0, seed=3,
                                                        transients=[(256.3, 250.6, 3000.0)])
    psf_new = moffat_stamp(2.8, 4.0)[12:29, 12:29]
    result = kernel_difference(new, ref, psf_new / psf_new.sum(), 2.8, 4.0, stars, var_new, var_ref,
                               spatial_order=1)
    assert result.convolved == "science"
    assert result.ratio == pytest.approx(0.9, rel=0.01)
    assert robust_std(result.significance[~result.mask]) == pytest.approx(1.0, abs=0.1)
    # D in science units: S / F_S at the transient is its flux in the science image.
    assert result.score[249:253, 255:258].max() / result.flux_scale == pytest.approx(3000.0, rel=0.15)
    # The PSF of D is the broad (reference-like) one, so detection's concentration is 1 for a point source.
    peak = result.difference[249:253, 255:258].max() / result.score[249:253, 255:258].max()
    assert peak * result.flux_scale / result.psf.max() == pytest.approx(1.0, abs=0.2)


def test_bad_pixels_grown_by_the_kernel_half_width():
    shape = (384, 384)
    new, ref, var_new, var_ref, stars, _ = crowded_pair(shape, n_stars=500, seed=5, new_fwhm=3.4)
    bad_ref = np.zeros(shape, bool)
    bad_ref[200:204, 100:103] = True
    ref[bad_ref] = 1e6  # a hot block: it must not leak into the difference
    bad_new = np.zeros(shape, bool)
    bad_new[:, 300] = True  # a bad column in the science image
    new[bad_new] = np.nan
    psf_new = moffat_stamp(3.4, 3.0)[10:31, 10:31]
    result = kernel_difference(new, ref, psf_new / psf_new.sum(), 3.4, 2.6, stars, var_new, var_ref,
                               bad_new=bad_new, bad_ref=bad_ref, spatial_order=1)
    half = math.ceil(3.5 * 3.4)
    assert result.mask[200 - half:204 + half, 100 - half:103 + half].all()
    assert not result.mask[200 - half - 1, 100] and not result.mask[200, 100 + 3 + half]
    inner = slice(half, shape[0] - half)
    assert result.mask[:, 300].all() and not result.mask[inner, 299].any()
    # The border: the kernel would reach beyond the image.
    assert result.mask[:half].all() and not result.mask[half, 150:250].any()
    assert np.isfinite(result.significance).all()
    assert np.abs(result.significance[~result.mask]).max() < 6.5


def test_spatial_kernel_matches_a_known_varying_convolution():
    """Science = reference convolved with a Gaussian whose width grows linearly across the image."""
    shape = (512, 512)
    rng = np.random.default_rng(11)
    n = 1500
    x, y = rng.uniform(0, 512, n), rng.uniform(0, 512, n)
    flux = 300.0 * (1 - rng.uniform(0, 1, n)) ** (-1 / 0.8)
    ref_clean = render(shape, x, y, np.minimum(flux, 2e5), 2.5, 4.0)
    # Two known convolutions blended linearly in x: exactly a kernel varying to first order.
    kernels = []
    for sigma in (0.8, 1.6):
        u = np.arange(-8, 9)
        g = np.exp(-0.5 * (u / sigma) ** 2)
        kernels.append(1.1 * np.outer(g, g) / np.outer(g, g).sum())
    weight = (np.arange(shape[1]) / (shape[1] - 1))[None, :]
    new_clean = (1 - weight) * fftconvolve(ref_clean, kernels[0], mode="same") \
        + weight * fftconvolve(ref_clean, kernels[1], mode="same")
    new = (new_clean + rng.normal(0, SKY_SIGMA_NEW, shape)).astype(np.float32)
    ref = (ref_clean + rng.normal(0, SKY_SIGMA_REF, shape)).astype(np.float32)
    psf_new = fftconvolve(moffat_stamp(2.5, 4.0), kernels[0] / 1.1, mode="same")[10:31, 10:31]
    stars = np.column_stack([x, y])[np.argsort(-flux)]
    var_new = np.full(shape, SKY_SIGMA_NEW ** 2, np.float32)
    var_ref = np.full(shape, SKY_SIGMA_REF ** 2, np.float32)
    constant = kernel_difference(new, ref, psf_new / psf_new.sum(), 3.5, 2.5, stars, var_new, var_ref,
                                 spatial_order=0)
    varying = kernel_difference(new, ref, psf_new / psf_new.sum(), 3.5, 2.5, stars, var_new, var_ref,
                                spatial_order=1)
    assert varying.ratio == pytest.approx(1.1, rel=0.01)
    assert robust_std(varying.significance[~varying.mask]) == pytest.approx(1.0, abs=0.1)
    # Without the spatial terms the bright stars at the edges leave residuals.
    edges = np.abs(constant.significance[~constant.mask]).max()
    assert edges > 2 * np.abs(varying.significance[~varying.mask]).max()
    assert np.abs(varying.significance[~varying.mask]).max() < 6.0


def test_settings_accept_the_kernel_method():
    settings = SubtractSettings.from_config({"method": "kernel", "kernel_spatial_order": 1, "background_order": 0,
                                             "kernel_stamps": 100, "kernel_half_width_fwhm": 2.0})
    assert settings.method == "kernel" and settings.kernel_spatial_order == 1


def test_variable_stars_are_clipped():
    """A tenth of the brightest stars brighter by half in the science image: their stamps go, the ratio stays."""
    shape = (512, 512)
    new, ref, var_new, var_ref, stars, flux = crowded_pair(shape, n_stars=1000, seed=9, new_fwhm=3.4)
    variable = np.arange(0, 100, 10)
    new += render(shape, stars[variable, 0], stars[variable, 1], 0.5 * 1.1 * flux[variable], 3.4, 3.0).astype(
        np.float32)
    psf_new = moffat_stamp(3.4, 3.0)[10:31, 10:31]
    result = kernel_difference(new, ref, psf_new / psf_new.sum(), 3.4, 2.6, stars, var_new, var_ref,
                               spatial_order=1)
    assert result.n_rejected >= 5
    assert result.ratio == pytest.approx(1.1, rel=0.005)
    assert robust_std(result.significance[~result.mask]) == pytest.approx(1.0, abs=0.1)


def test_pipeline_kernel_method_finds_the_transient(tmp_path):
    import pandas as pd
    from imaging_helpers import TRANSIENT, process_pair

    directory, _, record = process_pair(tmp_path / "SN2011fe__SYN_X_g__1_2",
                                        settings={"subtract": {"method": "kernel"}, "inject": {"count": 8}})
    assert record["subtraction"]["method"] == "kernel"
    assert record["subtraction"]["flux_zeropoint"] == 1.0
    candidates = pd.read_csv(directory / "candidates.csv")
    kept = candidates[candidates["kept"]]
    distance = np.hypot(kept["x"] - TRANSIENT[0], kept["y"] - TRANSIENT[1])
    assert (distance < 1.5).any()
    assert record["noise"]["significance_robust_std"] == pytest.approx(1.0, abs=0.15)
