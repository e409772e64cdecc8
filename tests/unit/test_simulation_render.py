"""Image rendering: Sersic flux against the analytic integral and astropy, PSFs against astropy, cosmic rays, noise."""

import math

import numpy as np
import pytest
from astropy.convolution import discretize_model
from astropy.modeling.models import Gaussian2D, Moffat2D, Sersic2D
from scipy.special import gammainc

from astrodag.simulation.render import (
    add_cosmic_ray,
    add_moffat_source,
    gaussian_psf,
    moffat_alpha,
    moffat_psf,
    photon_and_read_noise,
    sersic_b,
    sersic_image,
    sky_plane,
    stamp_size,
)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.5, 4.0])
def test_sersic_b_puts_half_the_light_inside_r_eff(n):
    assert gammainc(2 * n, sersic_b(n)) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("n, r_eff", [(1.0, 6.0), (2.5, 5.0), (4.0, 12.0)])
def test_sersic_flux_inside_a_radius_follows_the_analytic_integral(n, r_eff):
    # Circular galaxy: the light within R is flux * P(2n, b (R / r_eff)^(1/n)). The 2x2 sub-grid misses
    # part of a de Vaucouleurs cusp (3 % at r_eff = 4 px), under 1 % from r_eff = 10 px.
    size, flux = 301, 1e4
    image = sersic_image((size, size), 150.0, 150.0, flux, r_eff, n, 1.0, 0.0)
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(xx - 150.0, yy - 150.0)
    b = sersic_b(n)
    for r in (2 * r_eff, 5 * r_eff, 140.0):
        expected = flux * gammainc(2 * n, b * (r / r_eff) ** (1 / n))
        assert image[radius <= r].sum() == pytest.approx(expected, rel=0.01)


def test_sersic_pixels_are_astropy_sersic2d_on_the_sub_grid():
    shape, x0, y0, flux, r_eff, n, q, angle = (40, 50), 23.3, 18.6, 500.0, 6.0, 1.7, 0.55, 0.6
    image = sersic_image(shape, x0, y0, flux, r_eff, n, q, angle)
    b = sersic_b(n)
    # Surface brightness at r_eff of a profile of total `flux` (the integral over the whole plane).
    amplitude = flux / (2 * math.pi * n * r_eff ** 2 * q * math.exp(b) * b ** (-2 * n) * math.gamma(2 * n))
    model = Sersic2D(amplitude=amplitude, r_eff=r_eff, n=n, x_0=x0, y_0=y0, ellip=1 - q, theta=angle)
    sub = np.array([-0.25, 0.25])
    ys = (np.arange(shape[0])[:, None] + sub).ravel()
    xs = (np.arange(shape[1])[:, None] + sub).ravel()
    expected = model(xs[None, :], ys[:, None]).reshape(shape[0], 2, shape[1], 2).mean(axis=(1, 3))
    np.testing.assert_allclose(image, expected, rtol=1e-9)
    # The major axis lies along `angle`: brighter along it than across it at the same distance.
    d = 8.0
    along = image[round(y0 + d * math.sin(angle)), round(x0 + d * math.cos(angle))]
    across = image[round(y0 + d * math.cos(angle)), round(x0 - d * math.sin(angle))]
    assert along > 2 * across


@pytest.mark.parametrize("fwhm, beta", [(2.5, 3.0), (4.4, 2.5), (6.0, 4.5)])
def test_moffat_psf_unit_sum_with_the_fwhm_of_astropy_moffat2d(fwhm, beta):
    alpha = moffat_alpha(fwhm, beta)
    model = Moffat2D(amplitude=1.0, x_0=0.0, y_0=0.0, gamma=alpha, alpha=beta)
    assert model.fwhm == pytest.approx(fwhm, rel=1e-12)
    # The profile at half the FWHM from the centre is half its peak.
    assert model(fwhm / 2, 0.0) == pytest.approx(0.5, rel=1e-12)
    kernel = moffat_psf(fwhm, beta)
    assert kernel.shape == (2 * max(3, math.ceil(4 * fwhm)) + 1,) * 2
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    half = kernel.shape[0] // 2
    assert np.unravel_index(kernel.argmax(), kernel.shape) == (half, half)
    # Pixels are the astropy profile averaged on a 3x3 sub-grid, up to the normalisation.
    sub = (np.arange(3) - 1.0) / 3.0
    grid = np.arange(-half, half + 1, dtype=float)
    xs = (grid[:, None] + sub).ravel()
    expected = model(xs[None, :], xs[:, None]).reshape(kernel.shape[0], 3, kernel.shape[0], 3).mean(axis=(1, 3))
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-10)


def test_moffat_psf_sub_pixel_centre():
    kernel = moffat_psf(3.0, 3.0, size=31, center=(0.3, -0.2))
    yy, xx = np.mgrid[-15:16, -15:16]
    assert kernel.shape == (31, 31)
    assert (kernel * xx).sum() == pytest.approx(0.3, abs=0.01)
    assert (kernel * yy).sum() == pytest.approx(-0.2, abs=0.01)


@pytest.mark.parametrize("fwhm, center", [(2.0, (0.0, 0.0)), (3.5, (0.4, -0.25))])
def test_gaussian_psf_is_astropy_gaussian2d_integrated_over_pixels(fwhm, center):
    size = 25
    stamp = gaussian_psf(fwhm, size, center)
    assert stamp.shape == (size, size) and stamp.sum() == pytest.approx(1.0, abs=1e-12)
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    model = Gaussian2D(amplitude=1.0, x_mean=12 + center[0], y_mean=12 + center[1], x_stddev=sigma, y_stddev=sigma)
    assert model.x_fwhm == pytest.approx(fwhm)
    expected = discretize_model(model, (0, size), (0, size), mode="oversample", factor=50)
    np.testing.assert_allclose(stamp, expected / expected.sum(), rtol=1e-3, atol=1e-7)  # 50x50 midpoint rule
    assert gaussian_psf(fwhm).shape[0] == stamp_size(fwhm)


def test_moffat_source_keeps_its_flux_and_clips_at_the_edges():
    image = np.zeros((80, 80))
    add_moffat_source(image, 40.2, 39.7, 1000.0, 3.0, 3.0, floor=1e-3)
    assert image.sum() == pytest.approx(1000.0, rel=1e-9)
    assert np.unravel_index(image.argmax(), image.shape) == (40, 40)
    # The stamp reaches out to where the wings drop below the floor, beyond the default 4 FWHM.
    assert image[40, 40 + 13] > 0
    edge = np.zeros((80, 80))
    add_moffat_source(edge, 0.0, 40.0, 1000.0, 3.0, 3.0, floor=1e-3)
    wide = np.zeros((80, 160))
    add_moffat_source(wide, 80.0, 40.0, 1000.0, 3.0, 3.0, floor=1e-3)
    assert edge.sum() == pytest.approx(wide[:, 80:].sum(), rel=1e-12)  # what falls off the left edge is lost
    outside = np.zeros((20, 20))
    add_moffat_source(outside, -100.0, 10.0, 1000.0, 3.0, 3.0, floor=1.0)
    assert not outside.any()


def test_cosmic_rays_are_deterministic_under_a_seed():
    def hit(seed):
        image = np.zeros((64, 48))
        rng = np.random.default_rng(seed)
        for _ in range(5):
            add_cosmic_ray(image, rng, gain=2.0, exptime=1.0)
        return image

    first, again, other = hit(5), hit(5), hit(6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    single = np.zeros((64, 48))
    add_cosmic_ray(single, np.random.default_rng(1), gain=2.0, exptime=10.0)
    hit_pixels = single[single > 0]
    assert 1 <= hit_pixels.size <= 13  # a track of at most 12 pixels, both ends included
    assert ((hit_pixels >= 800 / 20) & (hit_pixels <= 6000 / 20)).all()  # electrons / gain / exptime


def test_sky_plane_gradient_and_mean():
    sky = sky_plane((30, 50), 100.0, 0.1, -0.04)
    assert sky.shape == (30, 50) and sky.mean() == pytest.approx(100.0)
    assert sky[0, -1] - sky[0, 0] == pytest.approx(10.0)
    assert sky[-1, 0] - sky[0, 0] == pytest.approx(-4.0)


def test_photon_and_read_noise_has_the_expected_variance():
    expected = np.full((200, 200), 50.0)
    gain, read_noise = 2.0, 6.0
    noisy = photon_and_read_noise(expected, gain, read_noise, np.random.default_rng(0))
    assert noisy.mean() == pytest.approx(50.0, rel=0.01)
    assert noisy.var() == pytest.approx(50.0 / gain + (read_noise / gain) ** 2, rel=0.03)
    again = photon_and_read_noise(expected, gain, read_noise, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, again)
