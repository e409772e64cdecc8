"""Empirical PSF against PSFs it did not make: Moffat stars in a crowded field, a FWHM that varies across
the image, an undersampled field; a shallow image's PSF derived from a deep image of the same field."""

import logging
import math

import numpy as np
import pytest
from astropy.modeling.functional_models import Moffat2D
from photutils.psf import fit_fwhm
from scipy import ndimage
from scipy.spatial import cKDTree

from astrodag.supernova.imaging.psf import FWHM_PER_SIGMA, PSFSettings, estimate_psf, matched_psf


def _alpha(fwhm, beta):
    """Moffat core width for a FWHM (pixels)."""
    return fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))


def moffat_stamp(fwhm, beta, half, dx=0.0, dy=0.0, subsample=5):
    """Pixel-integrated Moffat (by ``subsample``^2 points a pixel), centre ``(dx, dy)`` from the middle pixel,
    scaled to the fraction of the total light that falls on the ``2 half + 1`` square."""
    alpha = _alpha(fwhm, beta)
    model = Moffat2D(amplitude=1.0, x_0=dx, y_0=dy, gamma=alpha, alpha=beta)
    step = (np.arange(subsample) + 0.5) / subsample - 0.5
    grid = (np.arange(-half, half + 1)[:, None] + step).ravel()
    values = model(grid[None, :], grid[:, None])
    n = 2 * half + 1
    binned = values.reshape(n, subsample, n, subsample).mean(axis=(1, 3))
    return binned / (math.pi * alpha ** 2 / (beta - 1))


def render_moffat(shape, x, y, flux, fwhm, beta, half, subsample=3):
    """Moffat stars (FWHM a number or a function of x) on a zero image."""
    image = np.zeros(shape)
    for xc, yc, f in zip(x, y, flux):
        ix, iy = int(round(xc)), int(round(yc))
        width = fwhm(xc) if callable(fwhm) else fwhm
        stamp = f * moffat_stamp(width, beta, half, xc - ix, yc - iy, subsample)
        y0, x0 = iy - half, ix - half
        ys = slice(max(y0, 0), min(y0 + 2 * half + 1, shape[0]))
        xs = slice(max(x0, 0), min(x0 + 2 * half + 1, shape[1]))
        image[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return image


def truth_like(psf_image, fwhm, beta, subsample=3):
    """The true PSF on the estimate's stamp: same side, same circular window, unit sum."""
    half = psf_image.shape[0] // 2
    truth = moffat_stamp(fwhm, beta, half, subsample=subsample)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    truth[xx ** 2 + yy ** 2 > (half + 0.5) ** 2] = 0.0
    return truth / truth.sum()


def beyond(stamp, radius):
    half = stamp.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return float(stamp[np.hypot(xx, yy) > radius].sum())


def assert_matches(psf_image, truth, fwhm):
    assert psf_image.shape[0] % 2 == 1 and psf_image.sum() == pytest.approx(1.0)
    assert psf_image.max() == pytest.approx(truth.max(), rel=0.02)
    assert abs(beyond(psf_image, 2 * fwhm) - beyond(truth, 2 * fwhm)) < 0.01


def residual_sigma(psf_image, fwhm, beta, rng, peak_snr=200.0, sigma=5.0, subsample=3):
    """A bright star of the true shape at a pixel centre, less the estimate scaled by least squares: |res| / sigma."""
    half = psf_image.shape[0] // 2
    truth = moffat_stamp(fwhm, beta, half, subsample=subsample)
    flux = peak_snr * sigma / truth.max()
    star = flux * truth + rng.normal(0, sigma, truth.shape)
    scale = (star * psf_image).sum() / (psf_image ** 2).sum()
    return np.abs(star - scale * psf_image) / sigma


def crowded_field(rng, shape, n, fwhm, beta, sigma, half=30):
    x, y = rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n)
    flux = 400.0 * (1 - rng.uniform(0, 1, n)) ** (-1 / 0.8)  # a steep luminosity function, most stars faint
    flux = np.minimum(flux, 4e5)
    data = render_moffat(shape, x, y, flux, fwhm, beta, half) + rng.normal(0, sigma, shape)
    return data.astype(np.float32), x, y


def test_crowded_moffat_field_gives_an_unbiased_psf():
    rng = np.random.default_rng(21)
    shape, fwhm, beta, sigma = (400, 400), 3.0, 2.5, 5.0
    data, x, y = crowded_field(rng, shape, 900, fwhm, beta, sigma)
    distance, _ = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
    assert np.mean(distance[:, 1] < 4 * fwhm) > 0.5  # most stars have a neighbour within 4 FWHM
    psf = estimate_psf(data, np.full(shape, sigma), np.zeros(shape, bool), PSFSettings(grid_cells=1))
    assert psf.method == "empirical" and psf.n_stars >= 10
    assert psf.image.shape[0] >= 2 * 4 * fwhm + 1  # Moffat wings: past 3 FWHM by the encircled energy
    truth = truth_like(psf.image, fwhm, beta)
    assert_matches(psf.image, truth, fwhm)
    residual = residual_sigma(psf.image, fwhm, beta, rng)
    assert residual.max() < 4.5 and np.sqrt(np.mean(residual ** 2)) < 1.2


def test_psf_follows_a_linearly_varying_fwhm():
    rng = np.random.default_rng(22)
    shape, beta, sigma = (450, 450), 3.0, 5.0

    def width(x):
        return 2.6 + 1.4 * x / shape[1]

    n = 500
    x, y = rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n)
    flux = rng.uniform(2e4, 2e5, n)
    data = (render_moffat(shape, x, y, flux, width, beta, 25) + rng.normal(0, sigma, shape)).astype(np.float32)
    psf = estimate_psf(data, np.full(shape, sigma), np.zeros(shape, bool), PSFSettings(grid_cells=3, max_stars=90))
    assert psf.cells.shape[:2] == (3, 3) and (psf.cell_stars >= 5).all()
    sizes = set()
    for px in (75.0, 150.0, 225.0, 300.0, 375.0):
        for py in (75.0, 225.0, 375.0):
            stamp = psf.at(px, py)
            sizes.add(stamp.shape)
            assert stamp.sum() == pytest.approx(1.0) and stamp.shape[0] % 2 == 1
            half = stamp.shape[0] // 2
            yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
            core = stamp * (np.hypot(xx, yy) <= 2 * width(px))  # the wings' noise would dominate the moments
            assert abs((core * xx).sum() / core.sum()) < 0.05 and abs((core * yy).sum() / core.sum()) < 0.05
            fit_shape = 2 * math.ceil(1.5 * width(px)) + 1
            measured = float(fit_fwhm(stamp, fit_shape=fit_shape)[0])
            expected = float(fit_fwhm(truth_like(stamp, width(px), beta), fit_shape=fit_shape)[0])
            assert measured == pytest.approx(expected, rel=0.05), (px, py)
    assert sizes == {psf.image.shape}


def test_undersampled_field_gets_an_effective_psf():
    rng = np.random.default_rng(23)
    shape, fwhm, beta, sigma = (300, 300), 1.6, 3.0, 5.0
    n = 300
    x, y = rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n)
    flux = rng.uniform(5e3, 5e4, n)
    data = (render_moffat(shape, x, y, flux, fwhm, beta, 15, subsample=7) + rng.normal(0, sigma, shape)).astype(
        np.float32)
    psf = estimate_psf(data, np.full(shape, sigma), np.zeros(shape, bool), PSFSettings(), fwhm_guess=2.0)
    assert psf.method == "epsf"
    truth = truth_like(psf.image, fwhm, beta, subsample=7)
    assert_matches(psf.image, truth, fwhm)
    residual = residual_sigma(psf.image, fwhm, beta, rng, subsample=7)
    assert residual.max() < 4.5
    assert np.array_equal(psf.at(10.0, 290.0), psf.image)  # one ePSF for the whole image


def test_fallback_order_is_logged(caplog):
    rng = np.random.default_rng(24)
    shape = (200, 200)
    # Six pairs 3.6 FWHM apart, the fainter star a quarter as bright: no PSF star by the first rule, six
    # (the brighter ones) by the relaxed one.
    x = np.repeat(np.linspace(30, 170, 6), 2) + np.tile([0.0, 10.0], 6)
    y = np.repeat(np.linspace(30, 170, 6), 2)
    data = (render_moffat(shape, x, y, np.tile([2e4, 5e3], 6), 2.8, 3.0, 20) + rng.normal(0, 3, shape)).astype(
        np.float32)
    with caplog.at_level(logging.WARNING, logger="astrodag.supernova.imaging.psf"):
        psf = estimate_psf(data, np.full(shape, 3.0), np.zeros(shape, bool), PSFSettings(grid_cells=1, min_stars=5))
    assert "trying S/N" in caplog.text
    assert psf.method == "empirical" and psf.n_stars >= 5


def _galaxies(shape, x, y, flux, fwhm):
    """Round Gaussian blobs (extended sources), pixel-sampled."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.zeros(shape)
    sigma = fwhm / FWHM_PER_SIGMA
    for xc, yc, f in zip(x, y, flux):
        image += f / (2 * math.pi * sigma ** 2) * np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2 * sigma ** 2))
    return image


def deep_and_shallow(rng, blur_fwhm, shape=(300, 300), fwhm=3.0, beta=2.5, sigma_ref=2.0, sigma_sci=40.0):
    """A field of faint isolated Moffat stars, bright pairs of them 2.5-3.5 FWHM apart (resolved, not isolated)
    and four galaxies: a deep reference and a shallow science image (where only the pairs and galaxies stand
    out), the science's PSF the reference's convolved with a Gaussian of FWHM ``blur_fwhm`` and moved by 0.2 px;
    if ``blur_fwhm`` is negative the reference is the blurred one."""
    n_faint, n_pairs, n_gal = 40, 20, 4
    x, y = rng.uniform(25, shape[1] - 25, n_pairs), rng.uniform(25, shape[0] - 25, n_pairs)
    angle, separation = rng.uniform(0, 2 * math.pi, n_pairs), rng.uniform(2.5, 3.5, n_pairs) * fwhm
    x = np.r_[x, x + separation * np.cos(angle), rng.uniform(25, shape[1] - 25, n_faint)]
    y = np.r_[y, y + separation * np.sin(angle), rng.uniform(25, shape[0] - 25, n_faint)]
    flux = np.r_[rng.uniform(1.5e4, 5e4, 2 * n_pairs), rng.uniform(2e3, 4e3, n_faint)]
    gx, gy = rng.uniform(25, shape[1] - 25, n_gal), rng.uniform(25, shape[0] - 25, n_gal)
    galaxies = _galaxies(shape, gx, gy, rng.uniform(5e4, 2e5, n_gal), 6.0)
    ref = render_moffat(shape, x, y, flux, fwhm, beta, 25) + galaxies
    sci = 1.1 * (render_moffat(shape, x + 0.2, y - 0.2, flux, fwhm, beta, 25)
                 + ndimage.shift(galaxies, (-0.2, 0.2), order=3))
    blurred = ndimage.gaussian_filter(sci if blur_fwhm > 0 else ref, abs(blur_fwhm) / FWHM_PER_SIGMA, mode="constant")
    if blur_fwhm > 0:
        sci = blurred
    elif blur_fwhm < 0:
        ref = blurred
    ref = (ref + rng.normal(0, sigma_ref, shape)).astype(np.float32)
    sci = (sci + rng.normal(0, sigma_sci, shape)).astype(np.float32)
    return ref, sci


def blurred_truth(psf_image, fwhm, beta, blur_fwhm):
    """The true science PSF on the estimate's stamp: the Moffat, pixel-integrated, blurred as the image was."""
    half = psf_image.shape[0] // 2
    wide = ndimage.gaussian_filter(moffat_stamp(fwhm, beta, half + 10, subsample=3), blur_fwhm / FWHM_PER_SIGMA,
                                   mode="constant")[10:-10, 10:-10]
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    wide[xx ** 2 + yy ** 2 > (half + 0.5) ** 2] = 0.0
    return wide / wide.sum()


def test_shallow_image_psf_is_derived_from_the_deep_one():
    rng = np.random.default_rng(26)
    shape, fwhm, beta, blur = (300, 300), 3.0, 2.5, 2.0
    ref, sci = deep_and_shallow(rng, blur, shape, fwhm, beta)
    no_mask, settings = np.zeros(shape, bool), PSFSettings(grid_cells=1)
    good = estimate_psf(ref, np.full(shape, 2.0), no_mask, settings, fwhm_guess=3.0)
    assert good.method == "empirical"
    poor = estimate_psf(sci, np.full(shape, 40.0), no_mask, settings, fwhm_guess=3.0)
    assert poor.method == "gaussian"  # the direct estimate fails
    derived = matched_psf(sci, np.full(shape, 40.0), no_mask, poor, ref, no_mask, good, settings)
    assert derived is not None and derived.method == "matched_reference"
    truth = blurred_truth(derived.image, fwhm, beta, blur)
    fit_shape = 2 * math.ceil(1.5 * derived.fwhm) + 1
    assert derived.image.sum() == pytest.approx(1.0) and derived.image.shape[0] % 2 == 1
    assert derived.image.max() == pytest.approx(truth.max(), rel=0.03)
    assert derived.fwhm == pytest.approx(float(fit_fwhm(truth, fit_shape=fit_shape)[0]), rel=0.03)
    # The Gaussian fallback was far off.
    assert abs(poor.image.max() / truth.max() - 1) > 0.1 or abs(poor.fwhm / derived.fwhm - 1) > 0.1


def test_sharper_image_keeps_the_gaussian_fallback(caplog):
    rng = np.random.default_rng(28)
    shape = (300, 300)
    ref, sci = deep_and_shallow(rng, -2.0, shape)  # the reference is the blurred one
    no_mask, settings = np.zeros(shape, bool), PSFSettings(grid_cells=1)
    good = estimate_psf(ref, np.full(shape, 2.0), no_mask, settings, fwhm_guess=4.0)
    poor = estimate_psf(sci, np.full(shape, 40.0), no_mask, settings, fwhm_guess=3.0)  # only its sources are used
    assert good.method == "empirical"
    with caplog.at_level(logging.WARNING, logger="astrodag.supernova.imaging.psf"):
        assert matched_psf(sci, np.full(shape, 40.0), no_mask, poor, ref, no_mask, good, settings) is None
    assert "SHARPER" in caplog.text


def test_one_or_two_stars_do_not_set_the_fallback_fwhm():
    rng = np.random.default_rng(27)
    shape = (200, 200)
    # Two compact galaxies (FWHM 7 px) are the only sources: their FWHM is not the PSF's.
    data = (_galaxies(shape, [60.0, 140.0], [70.0, 130.0], [3e4, 3e4], 7.0) + rng.normal(0, 3, shape)).astype(
        np.float32)
    psf = estimate_psf(data, np.full(shape, 3.0), np.zeros(shape, bool), PSFSettings(grid_cells=1), fwhm_guess=2.5)
    assert psf.method == "gaussian" and psf.fwhm == 2.5
