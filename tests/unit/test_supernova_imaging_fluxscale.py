"""Flux ratio from many matched stars of a crowded field, its error, and the stated fallbacks."""

import logging

import numpy as np
import pytest
from crowded_helpers import crowded_field, psf_stamp, render
from scipy import ndimage

from astrodag.supernova.imaging.fluxscale import fallback_ratio, fit_ratio, measure_flux_ratio, psf_photometry
from astrodag.supernova.imaging.psf import find_sources
from astrodag.supernova.imaging.registration import register


@pytest.fixture(scope="module")
def crowded():
    # Variables (100) and blends (60) included; 1.1 flux scale; stars above 2e4 counts saturated.
    field = crowded_field(seed=0)
    bad = ndimage.binary_dilation((field.science > field.saturation) | (field.reference > field.saturation),
                                  iterations=2)
    rms = np.full(field.science.shape, field.noise, np.float32)
    registration = register(field.science, field.reference, rms, rms,
                            find_sources(field.science, rms, bad, field.fwhm_science),
                            find_sources(field.reference, rms, bad, field.fwhm_reference),
                            field.fwhm_science, field.fwhm_reference, 20.0, bad, bad)
    return field, bad, registration


def test_crowded_field_ratio_within_one_percent_with_a_sensible_error(crowded):
    field, bad, registration = crowded
    science_xy, reference_xy = registration.star_positions()
    scale = measure_flux_ratio(field.science, field.reference, field.noise, field.noise, bad, field.psf_science,
                               field.psf_reference, field.fwhm_science, field.fwhm_reference, science_xy,
                               reference_xy, pixel_area_ratio=0.25, zeropoints=(25.0, 26.0))
    assert scale.method == "stars" and scale.reason == ""
    assert scale.n_stars > 100
    assert scale.ratio == pytest.approx(1.1, rel=0.01)
    # Hundreds of stars: a few per mille, and the truth within a few errors of it.
    assert 3e-4 < scale.error < 5e-3
    assert abs(scale.ratio - 1.1) < 4 * scale.error
    # Saturated stars are not measured, and most variables are clipped.
    stars = scale.stars
    assert not bad[np.rint(stars["y"]).astype(int), np.rint(stars["x"]).astype(int)].any()
    truth = np.column_stack([field.x, field.y])
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(truth).query(stars[["x", "y"]].to_numpy())
    variable = field.variable[nearest]
    assert variable.sum() >= 5
    assert (~stars["used"][variable]).mean() > 0.7


def test_fit_ratio_without_outliers_matches_statsmodels_wls():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    ref = rng.uniform(1e3, 1e5, 300)
    err = 0.02 * ref + 30.0
    sci = 1.3 * ref + rng.normal(0, err)
    ratio, error, scatter, used = fit_ratio(sci, err, ref, np.zeros_like(ref), clip_sigma=10.0)
    assert used.all()
    fit = sm.WLS(sci, ref[:, None], weights=1.0 / (err ** 2 + (scatter * ratio * ref) ** 2)).fit()
    assert ratio == pytest.approx(fit.params[0], rel=1e-6)
    assert error == pytest.approx(fit.bse[0], rel=0.05)
    assert ratio == pytest.approx(1.3, abs=4 * error)


def test_psf_photometry_recovers_isolated_fluxes():
    rng = np.random.default_rng(5)
    y, x = np.mgrid[20:200:30, 20:200:30].reshape(2, -1) + rng.uniform(-0.5, 0.5, (2, 36))
    image = render((220, 220), x, y, np.full(36, 1e4), 3.0, 3.0, rng, 0.0, 1e30)
    flux, flux_err, ok = psf_photometry(image, 1.0, None, psf_stamp(3.0, 3.0), x, y, 4.5)
    assert ok.all()
    np.testing.assert_allclose(flux, 1e4, rtol=3e-3)


@pytest.mark.parametrize(("zeropoints", "method", "expected"),
                         [((25.0, 24.0), "zeropoints", 10 ** 0.4 * 0.25), ((25.0, None), "unity", 0.25)])
def test_fallbacks_include_the_pixel_area_ratio_and_warn(zeropoints, method, expected, caplog):
    with caplog.at_level(logging.WARNING):
        scale = fallback_ratio("testing", 0.25, zeropoints)
    assert scale.method == method
    assert scale.ratio == pytest.approx(expected)
    assert np.isnan(scale.error) and scale.n_stars == 0
    assert "NOT measured (testing)" in caplog.text


def test_too_few_stars_fall_back_with_the_reason(crowded, caplog):
    field, bad, registration = crowded
    science_xy, reference_xy = registration.star_positions()
    with caplog.at_level(logging.WARNING):
        scale = measure_flux_ratio(field.science, field.reference, field.noise, field.noise, bad, field.psf_science,
                                   field.psf_reference, field.fwhm_science, field.fwhm_reference, science_xy[:3],
                                   reference_xy[:3], pixel_area_ratio=4.0)
    assert scale.method == "unity" and scale.ratio == 4.0
    assert "need 5" in scale.reason and "NOT measured" in caplog.text
    empty = measure_flux_ratio(field.science, field.reference, field.noise, field.noise, bad, field.psf_science,
                               field.psf_reference, 2.5, 3.2, np.empty((0, 2)), np.empty((0, 2)),
                               zeropoints=(25.0, 25.0))
    assert empty.method == "zeropoints" and empty.reason == "no matched stars"


def _moffat_pair(n_stars, seed=3, shape=(256, 256), ratio=1.1):
    """Same grid, Moffat PSFs the code did not make (science broader with heavier wings), science 4x noisier."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(15, shape[1] - 15, n_stars), rng.uniform(15, shape[0] - 15, n_stars)
    flux = 10 ** rng.uniform(3.5, 5.0, n_stars)
    # A few blends: companions 1.5-3 px away at similar flux.
    x = np.concatenate([x, x[:4] + rng.uniform(1.5, 3.0, 4)])
    y, flux = np.concatenate([y, y[:4]]), np.concatenate([flux, flux[:4] * rng.uniform(0.5, 1.0, 4)])
    reference = render(shape, x, y, flux, 3.0, 3.0, rng, 5.0, 1e30)
    science = render(shape, x, y, ratio * flux, 4.2, 2.6, rng, 20.0, 1e30)
    sources = np.column_stack([x, y])[np.argsort(-flux)]
    return science, reference, sources


@pytest.mark.xfail(reason="known limitation: a Gaussian seeing change cannot match Moffat wings of another beta "
                          "(template fit 0.954 here); needs a zero-sum wing basis term", strict=True)
def test_template_ratio_with_moffat_psfs_and_blends_ignores_the_psf_models():
    science, reference, sources = _moffat_pair(30)
    # Gaussian PSF models of the wrong widths: the PSF-fit slope is off, the template fit is not.
    wrong_sci, wrong_ref = psf_stamp(3.6, 50.0), psf_stamp(3.0, 50.0)
    scale = measure_flux_ratio(science, reference, 20.0, 5.0, None, wrong_sci, wrong_ref, 3.6, 3.0, sources,
                               sources, settings=None, sources=sources)
    assert scale.method == "template" and scale.n_stars >= 20
    assert scale.ratio == pytest.approx(1.1, rel=0.02)
    assert 0 < scale.error < 0.01 and abs(scale.ratio - 1.1) < 4 * scale.error
    psf_fit = measure_flux_ratio(science, reference, 20.0, 5.0, None, wrong_sci, wrong_ref, 3.6, 3.0, sources,
                                 sources)
    assert psf_fit.method == "stars" and abs(psf_fit.ratio / 1.1 - 1) > 0.03


def test_template_ratio_few_stars_falls_back_loudly(caplog):
    science, reference, sources = _moffat_pair(6)
    with caplog.at_level(logging.WARNING):
        scale = measure_flux_ratio(science, reference, 20.0, 5.0, None, psf_stamp(4.2, 3.5), psf_stamp(3.0, 2.8),
                                   4.2, 3.0, sources[:3], sources[:3], sources=sources[:3])
    assert scale.method == "unity"
    assert "template flux ratio NOT measured" in caplog.text and "flux ratio NOT measured" in caplog.text


def test_an_imprecise_template_ratio_is_not_a_measurement(crowded, monkeypatch, caplog):
    """A template ratio with a large error (faint photon-counting stamps) gives way to the stars' photometry."""
    import astrodag.supernova.imaging.fluxscale as fluxscale

    field, bad, registration = crowded
    science_xy, reference_xy = registration.star_positions()
    monkeypatch.setattr(fluxscale, "template_ratio", lambda *args, **kwargs: (0.015, 0.027, 27, 1.3))
    with caplog.at_level(logging.WARNING, logger="astrodag.supernova.imaging.fluxscale"):
        scale = measure_flux_ratio(field.science, field.reference, field.noise, field.noise, bad, field.psf_science,
                                   field.psf_reference, field.fwhm_science, field.fwhm_reference, science_xy,
                                   reference_xy, pixel_area_ratio=1.0, sources=science_xy)
    assert scale.method == "stars" and scale.ratio == pytest.approx(1.1, rel=0.01)
    assert "template flux ratio NOT measured (ratio 0.015 +- 0.027, relative error above 0.05)" in caplog.text
