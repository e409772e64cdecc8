"""Background, PSF, flux normalisation, ZOGY and the Gaussian baseline against known answers."""

import math

import numpy as np
import pytest
from astropy.stats import SigmaClip
from imaging_helpers import process_pair, render
from photutils.background import Background2D, MedianBackground, StdBackgroundRMS

from astrodag.errors import ConfigError
from astrodag.simulation.render import gaussian_psf
from astrodag.supernova.imaging.background import BackgroundSettings, NoiseModel, estimate_background, noise_level
from astrodag.supernova.imaging.inject import add_point_sources
from astrodag.supernova.imaging.psf import PSFSettings, estimate_psf
from astrodag.supernova.imaging.subtract import SubtractSettings, gaussian_difference, zogy, zogy_tiled

SHAPE = (160, 160)


def _grid_positions(rng, shape=SHAPE, step=20, margin=14):
    grid = np.arange(margin, shape[0] - margin + 1, step, dtype=float)
    gx, gy = np.meshgrid(grid, grid)
    return gx.ravel() + rng.uniform(-3, 3, gx.size), gy.ravel() + rng.uniform(-3, 3, gx.size)


# ---- background -------------------------------------------------------------------------


def test_background_maps_equal_photutils():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
    data = (50 + 0.05 * x - 0.03 * y + rng.normal(0, 2, SHAPE)).astype(np.float32)
    settings = BackgroundSettings(box_size=32, subsample=1)
    ours = estimate_background(data, settings=settings)
    reference = Background2D(data, 32, filter_size=3, sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
                             bkg_estimator=MedianBackground(), bkg_rms_estimator=StdBackgroundRMS(),
                             exclude_percentile=25.0)
    np.testing.assert_allclose(ours.background, reference.background, rtol=1e-5)
    np.testing.assert_allclose(ours.rms, reference.background_rms, rtol=1e-5)


def test_background_recovers_gradient_and_noise_with_subsampling():
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
    sky = 50 + 0.05 * x - 0.03 * y
    data = (sky + rng.normal(0, 2, SHAPE) + render(SHAPE, *_grid_positions(rng), 3000.0, 3.0)).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:, :20] = True
    # subsample 2: statistics of 16x16 pixels per box; no median filter, which flattens a gradient
    # at the edges (as photutils does).
    settings = BackgroundSettings(box_size=32, filter_size=1)
    result = estimate_background(data, coverage_mask=mask, settings=settings)
    inner = (slice(20, -20), slice(64, -20))  # away from the edges and the masked columns
    error = np.abs(result.background[inner] - sky[inner])
    assert error.max() < 0.6 and error.mean() < 0.25  # noise 2 per pixel, stars in the boxes
    # The gradient across a box adds a little to the scatter measured in it.
    assert result.rms_median == pytest.approx(2.0, rel=0.1)
    assert (result.background[mask] == 0).all() and (result.rms[mask] == 0).all()
    assert noise_level(data, mask, settings=settings) == pytest.approx(result.rms_median, rel=1e-6)
    with pytest.raises(ConfigError, match="filter_size"):
        BackgroundSettings.from_config({"filter_size": 4})


def test_background_of_sparse_photon_counts():
    rng = np.random.default_rng(12)
    exptime = 500.0
    counts = rng.poisson(0.4, SHAPE).astype(np.float32)  # a GALEX-like map: 67 % of the pixels are 0
    rate = counts / np.float32(exptime)
    noise = NoiseModel(gain=exptime)
    result = estimate_background(rate, settings=BackgroundSettings(box_size=32), noise=noise)
    assert result.estimator == "mean"
    assert result.median * exptime == pytest.approx(0.4, rel=0.1)
    assert result.rms_median * exptime == pytest.approx(math.sqrt(0.4), rel=0.1)
    assert noise_level(rate, settings=BackgroundSettings(box_size=32), noise=noise) * exptime == pytest.approx(
        math.sqrt(0.4), rel=0.1)
    # The median would put the sky at 0, below every photon.
    median = estimate_background(rate, settings=BackgroundSettings(box_size=32, estimator="median"))
    assert median.median == 0.0


# ---- PSF -------------------------------------------------------------------------------


def test_empirical_psf_of_gaussian_stars():
    rng = np.random.default_rng(2)
    fwhm = 3.4
    x, y = _grid_positions(rng)
    data = render(SHAPE, x, y, rng.uniform(2e4, 6e4, x.size), fwhm) + rng.normal(0, 3, SHAPE)
    rms = np.full(SHAPE, 3.0)
    psf = estimate_psf(data.astype(np.float32), rms, np.zeros(SHAPE, bool))
    assert psf.method == "empirical" and psf.n_stars >= 20
    assert psf.fwhm == pytest.approx(fwhm, rel=0.03)
    assert psf.image.sum() == pytest.approx(1.0) and psf.image.shape[0] % 2 == 1
    truth = gaussian_psf(fwhm, psf.image.shape[0])
    assert np.abs(psf.image - truth).max() < 0.03 * truth.max()
    yy, xx = np.mgrid[:psf.image.shape[0], :psf.image.shape[1]] - psf.image.shape[0] // 2
    assert abs((psf.image * xx).sum()) < 0.03 and abs((psf.image * yy).sum()) < 0.03
    np.testing.assert_allclose(np.median(psf.stars["fwhm"]), fwhm, rtol=0.03)


def test_psf_rejects_cosmic_rays_and_saturated_stars():
    rng = np.random.default_rng(3)
    x, y = _grid_positions(rng)
    data = render(SHAPE, x, y, 3e4, 3.0) + rng.normal(0, 3, SHAPE)
    mask = np.zeros(SHAPE, bool)
    for xc, yc in zip(x[:6], y[:6]):  # six stars saturated and flagged
        mask[int(yc) - 1:int(yc) + 2, int(xc) - 1:int(xc) + 2] = True
    cosmic = rng.integers(10, 150, (8, 2))
    data[cosmic[:, 1], cosmic[:, 0]] += 5000.0
    psf = estimate_psf(data.astype(np.float32), np.full(SHAPE, 3.0), mask)
    assert psf.fwhm == pytest.approx(3.0, rel=0.03)
    used = psf.stars[["x", "y"]].to_numpy()
    for xc, yc in zip(x[:6], y[:6]):
        assert np.hypot(used[:, 0] - xc, used[:, 1] - yc).min() > 2
    for xc, yc in cosmic:
        assert np.hypot(used[:, 0] - xc, used[:, 1] - yc).min() > 1


def test_gaussian_fallback_with_too_few_stars():
    rng = np.random.default_rng(4)
    data = (render(SHAPE, [80.0], [80.0], [2e4], 2.8) + rng.normal(0, 3, SHAPE)).astype(np.float32)
    rms, mask = np.full(SHAPE, 3.0), np.zeros(SHAPE, bool)
    psf = estimate_psf(data, rms, mask, fwhm_guess=2.5)
    assert psf.method == "gaussian" and psf.fwhm == 2.5  # one "star" may be a galaxy: the header's FWHM
    three = (render(SHAPE, [40.0, 80.0, 120.0], [40.0, 80.0, 120.0], [2e4] * 3, 2.8)
             + rng.normal(0, 3, SHAPE)).astype(np.float32)
    psf = estimate_psf(three, rms, mask, fwhm_guess=2.5)
    assert psf.method == "gaussian" and psf.fwhm == pytest.approx(2.8, rel=0.05)  # the median of three stars
    empty = estimate_psf(rng.normal(0, 3, SHAPE).astype(np.float32), rms, mask, fwhm_guess=4.2)
    assert empty.method == "gaussian" and empty.fwhm == 4.2  # the header's
    default = estimate_psf(rng.normal(0, 3, SHAPE).astype(np.float32), rms, mask, PSFSettings(fallback_fwhm_px=3.3))
    assert default.fwhm == 3.3 and default.image.sum() == pytest.approx(1.0)


# ---- ZOGY --------------------------------------------------------------------------------


def _noise_pair(rng, shape, sigma_new, sigma_ref):
    return (rng.normal(0, sigma_new, shape).astype(np.float32), rng.normal(0, sigma_ref, shape).astype(np.float32))


def test_zogy_on_pure_noise_has_unit_significance():
    rng = np.random.default_rng(6)
    shape = (256, 256)
    new, ref = _noise_pair(rng, shape, 5.0, 3.0)
    psf_new, psf_ref = gaussian_psf(3.5), gaussian_psf(2.5)
    result = zogy(new, ref, psf_new, psf_ref, 5.0, 3.0, f_ref=1 / 1.3)
    for image in (result.significance, result.difference):
        assert abs(float(image.mean())) < 0.03 and float(image.std()) == pytest.approx(1.0, abs=0.03)
    # With variance maps equal to the constants the per-pixel correction changes nothing.
    maps = zogy(new, ref, psf_new, psf_ref, 5.0, 3.0, f_ref=1 / 1.3, var_new=np.full(shape, 25.0, np.float32),
                var_ref=np.full(shape, 9.0, np.float32))
    inner = (slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(maps.significance[inner], result.significance[inner], atol=2e-3)
    assert result.psf.sum() == pytest.approx(1.0)


def test_zogy_recovers_injected_point_sources_at_the_expected_significance():
    rng = np.random.default_rng(7)
    shape, sigma, fwhm = (256, 256), 4.0, 3.0
    psf = gaussian_psf(fwhm, 21)
    # Same PSF and noise in both: expected S/N = f sqrt(sum P^2) / (sigma sqrt 2).
    target = 20.0
    flux = target * sigma * math.sqrt(2) / math.sqrt(float((psf ** 2).sum()))
    x, y = _grid_positions(rng, shape, step=40, margin=24)
    new, ref = _noise_pair(rng, shape, sigma, sigma)
    add_point_sources(new, psf, x, y, np.full(x.size, flux))
    result = zogy(new, ref, psf, psf, sigma, sigma)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    peaks = np.array([result.significance[b - 1:b + 2, a - 1:a + 2].max() for a, b in zip(ix, iy)])
    assert np.mean(peaks) == pytest.approx(target, rel=0.05)
    assert np.std(peaks) < 2.0
    fluxes = np.array([result.score[b - 1:b + 2, a - 1:a + 2].max() for a, b in zip(ix, iy)]) / result.flux_scale
    assert np.mean(fluxes) == pytest.approx(flux, rel=0.05)


def test_zogy_with_different_psfs_noise_and_transparency():
    rng = np.random.default_rng(8)
    shape = (192, 192)
    sigma_new, sigma_ref, ratio = 5.0, 2.0, 1.6
    psf_new, psf_ref = gaussian_psf(3.8, 25), gaussian_psf(2.6, 25)
    x, y = _grid_positions(rng, shape, step=36, margin=24)
    stars = rng.uniform(2e3, 1e4, x.size)
    new, ref = _noise_pair(rng, shape, sigma_new, sigma_ref)
    add_point_sources(new, psf_new, x, y, ratio * stars)
    add_point_sources(ref, psf_ref, x, y, stars)
    transient = 400.0
    add_point_sources(new, psf_new, [100.3], [96.6], [transient])
    result = zogy(new, ref, psf_new, psf_ref, sigma_new, sigma_ref, f_ref=1 / ratio)
    # Expected S/N of the transient: f sqrt(sum_k |Pn|^2 |Pr|^2 Fr^2 / den^2) (eq. 41 with F_n = 1).
    pad = [(0, shape[0] - 25), (0, shape[1] - 25)]
    pn = np.fft.fft2(np.roll(np.pad(psf_new, pad), (-12, -12), (0, 1)))
    pr = np.fft.fft2(np.roll(np.pad(psf_ref, pad), (-12, -12), (0, 1)))
    fr = 1 / ratio
    den2 = sigma_new ** 2 * fr ** 2 * abs(pr) ** 2 + sigma_ref ** 2 * abs(pn) ** 2
    expected = transient * math.sqrt(float((fr ** 2 * abs(pn) ** 2 * abs(pr) ** 2 / den2).sum()) / pn.size)
    peak = result.significance[95:99, 99:103].max()
    assert peak == pytest.approx(expected, rel=0.15)
    assert result.score[95:99, 99:103].max() / result.flux_scale == pytest.approx(transient, rel=0.15)
    # The static stars subtract away.
    stars_peak = max(abs(result.significance[int(b) - 2:int(b) + 3, int(a) - 2:int(a) + 3]).max()
                     for a, b in zip(x, y))
    assert stars_peak < 5.0


def test_per_pixel_variance_keeps_bright_stars_insignificant():
    rng = np.random.default_rng(9)
    shape, gain, sigma = (128, 128), 1.0, 3.0
    psf = gaussian_psf(3.0, 21)
    x, y = _grid_positions(rng, shape, step=32, margin=20)
    model = np.zeros(shape, np.float32)
    add_point_sources(model, psf, x, y, np.full(x.size, 2e5))
    new = rng.poisson(model / gain).astype(np.float32) * gain + rng.normal(0, sigma, shape).astype(np.float32)
    ref = rng.poisson(model / gain).astype(np.float32) * gain + rng.normal(0, sigma, shape).astype(np.float32)
    variance = (sigma ** 2 + model / gain).astype(np.float32)
    corrected = zogy(new, ref, psf, psf, sigma, sigma, var_new=variance, var_ref=variance)
    naive = zogy(new, ref, psf, psf, sigma, sigma)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    near = np.array([abs(corrected.significance[b - 3:b + 4, a - 3:a + 4]).max() for a, b in zip(ix, iy)])
    near_naive = np.array([abs(naive.significance[b - 3:b + 4, a - 3:a + 4]).max() for a, b in zip(ix, iy)])
    assert near.max() < 5.0 and near_naive.max() > 10.0


def test_tiled_zogy_matches_the_whole_image():
    rng = np.random.default_rng(10)
    shape = (200, 200)
    new, ref = _noise_pair(rng, shape, 4.0, 2.0)
    psf_new, psf_ref = gaussian_psf(3.0, 19), gaussian_psf(2.5, 19)
    add_point_sources(new, psf_new, [57.0, 150.2], [143.5, 66.1], [3000.0, 800.0])
    whole = zogy(new, ref, psf_new, psf_ref, 4.0, 2.0)
    tiled = zogy_tiled(new, ref, psf_new, psf_ref, 4.0, 2.0, tile_size=96, overlap=48)
    np.testing.assert_allclose(tiled.significance, whole.significance, atol=0.05)
    np.testing.assert_allclose(tiled.difference, whole.difference, atol=0.05)
    assert tiled.flux_scale == pytest.approx(whole.flux_scale, rel=1e-3)
    with pytest.raises(ConfigError, match="tile_size"):
        SubtractSettings.from_config({"tile_size": 100, "tile_overlap_px": 64})


# ---- baseline ----------------------------------------------------------------------------


def test_gaussian_baseline_subtracts_stars_and_finds_the_transient():
    rng = np.random.default_rng(11)
    shape = (160, 160)
    x, y = _grid_positions(rng, shape, step=32, margin=20)
    stars = rng.uniform(2e3, 1e4, x.size)
    new = render(shape, x, y, 1.2 * stars, 3.5) + rng.normal(0, 4, shape)
    ref = render(shape, x, y, stars, 2.5) + rng.normal(0, 2, shape)
    new += render(shape, [81.0], [79.0], [600.0], 3.5)
    result = gaussian_difference(new.astype(np.float32), ref.astype(np.float32), 3.5, 2.5, 1.2)
    assert result.fwhm == pytest.approx(3.5)
    assert result.significance[77:82, 79:84].max() > 8
    quiet = np.ones(shape, bool)
    quiet[70:90, 70:90] = False
    assert float(np.std(result.significance[quiet])) == pytest.approx(1.0, abs=0.15)
    assert result.score[77:82, 79:84].max() / result.flux_scale == pytest.approx(600.0, rel=0.15)


def _saturated_scene(rng, transient=None, stars=True):
    """A saturated star (core masked), a bright star cut by a masked footprint edge and one cut by the image edge."""
    shape, sigma_new, sigma_ref, ratio, fwhm = (192, 192), 5.0, 3.0, 1.2, 3.5
    psf_new, psf_ref = gaussian_psf(fwhm, 25), gaussian_psf(2.6, 25)
    new, ref = _noise_pair(rng, shape, sigma_new, sigma_ref)
    if stars:
        positions, fluxes = ([96.2, 41.0, 1.5], [95.7, 150.3, 60.4]), np.array([3e6, 5e5, 3e5])
        add_point_sources(new, psf_new, *positions, ratio * fluxes)
        add_point_sources(ref, psf_ref, *positions, fluxes)
    mask = (new > 2e4) | (ref > 2e4)  # the saturated core
    mask[120:, :40] = True  # outside the reference footprint
    if transient is not None:
        add_point_sources(new, psf_new, [96.2 + 3 * fwhm], [95.7], [transient])
    variance = [(s ** 2 + np.clip(image, 0, None) / 100).astype(np.float32)  # sky and photon noise (gain 100)
                for image, s in ((new, sigma_new), (ref, sigma_ref))]
    return zogy(new, ref, psf_new, psf_ref, sigma_new, sigma_ref, f_ref=1 / ratio, var_new=variance[0],
                var_ref=variance[1], mask=mask), mask


@pytest.mark.parametrize("seed", [13, 21])
def test_masked_and_off_image_pixels_leave_no_residual_and_keep_transients(seed):
    result, mask = _saturated_scene(np.random.default_rng(seed))
    significance = np.where(mask, 0.0, result.significance)
    assert np.abs(significance).max() < 5.0
    # Away from them (and from the image edges, beyond which nothing is known) S_corr keeps unit noise.
    assert float(significance[12:60, 60:-12].std()) == pytest.approx(1.0, abs=0.05)
    # A transient 3 FWHM from the saturated core keeps most of the significance it has without the
    # star (same noise): the core's unknown pixels weigh little in its matched filter.
    window = (slice(94, 98), slice(104, 109))
    near, _ = _saturated_scene(np.random.default_rng(seed), transient=600.0)
    alone, _ = _saturated_scene(np.random.default_rng(seed), transient=600.0, stars=False)
    assert near.significance[window].max() == pytest.approx(float(alone.significance[window].max()), rel=0.2)



def test_crowded_pair_with_a_footprint_edge_has_unit_significance_before_calibration(tmp_path):
    """The pipeline's small crowded pair (45 stars, a rotated reference: footprint edges) before calibration.

    Unknown pixels (off-image, outside the footprint) take their variance from the known pixels
    next to them, so bright stars elsewhere do not spread it over the matched filter's whole
    footprint (a guess from 30-pixel neighbourhoods gave a robust std of 0.73 here).
    """
    _, _, record = process_pair(tmp_path / "SN2011fe__SYN_X_g__1_2", settings={"inject": {"count": 0}})
    noise = record["noise"]
    assert noise["significance_std_error"] < 0.05
    # Within 10 %: the PSF estimates' noise and the resampled reference's correlated noise leave a
    # few per cent (the calibration's job); the guess from wide neighbourhoods was 30 % off.
    assert noise["significance_std_uncalibrated"] == pytest.approx(1.0, abs=0.1)
