"""Residual registration on a crowded field: offset voting, matching, affine fit, registration scatter."""

import logging

import numpy as np
import pytest
from crowded_helpers import crowded_field
from photutils.centroids import centroid_2dg

from astrodag.supernova.imaging.psf import find_sources
from astrodag.supernova.imaging.registration import (
    RegistrationSettings,
    register,
    solve_offset,
    windowed_centroids,
)


def _register(field, **options):
    bad = (field.science > field.saturation) | (field.reference > field.saturation)
    rms = np.full(field.science.shape, field.noise, np.float32)
    sci = find_sources(field.science, rms, bad, field.fwhm_science)
    ref = find_sources(field.reference, rms, bad, field.fwhm_reference)
    return register(field.science, field.reference, rms, rms, sci, ref, field.fwhm_science, field.fwhm_reference,
                    max_offset_px=20.0, science_bad=bad, reference_bad=bad,
                    settings=RegistrationSettings(**options))


def _max_error(field, registration):
    y, x = np.mgrid[0:1024:32, 0:1024:32].reshape(2, -1)
    xr, yr = registration.transform(x, y)
    truth = np.column_stack([x, y, np.ones_like(x)]) @ field.coefficients
    return float(np.hypot(xr - truth[:, 0], yr - truth[:, 1]).max())


@pytest.fixture(scope="module")
def crowded():
    # ~3000 stars on 1024^2 (1/3 detected at 5 sigma), Moffat FWHM 2.5 / 3.2 px, 0.7 px and 0.3 deg left.
    return crowded_field(seed=0)


def test_crowded_field_offset_and_rotation_are_solved_from_many_stars(crowded):
    registration = _register(crowded)
    assert registration.method == "affine"
    assert registration.n_matched > 100
    # The transform everywhere on the image, not just its centre (0.3 deg moves the corners by 3.8 px).
    assert _max_error(crowded, registration) < 0.05
    assert registration.shift_x == pytest.approx(0.7, abs=0.05)
    assert registration.shift_y == pytest.approx(-0.45, abs=0.05)
    # A perfect registration: the bright stars' residuals are centroid noise only.
    assert max(registration.scatter_x, registration.scatter_y) < 0.015
    back = registration.inverse(*registration.transform(np.array([10.0, 900.0]), np.array([20.0, 500.0])))
    np.testing.assert_allclose(np.column_stack(back), [[10.0, 20.0], [900.0, 500.0]], atol=1e-9)


def test_shift_only_fit_without_rotation():
    field = crowded_field(seed=2, n_stars=1500, rotation_deg=0.0)
    registration = _register(field, affine=False)
    assert registration.method == "shift"
    assert registration.shift_x == pytest.approx(0.7, abs=0.05)
    assert registration.shift_y == pytest.approx(-0.45, abs=0.05)


def test_registration_scatter_measures_the_injected_jitter():
    jitter = 0.08
    field = crowded_field(seed=1, n_stars=2000, jitter_px=jitter)
    # At peak S/N 30 the centroid noise of a pair is ~0.03 px: removed in quadrature.
    registration = _register(field, scatter_min_snr=30.0)
    assert registration.n_bright >= 30
    # n_bright stars per axis: the relative error of a robust std is ~ 0.8 / sqrt(n).
    tolerance = 3 * 0.8 / np.sqrt(registration.n_bright) * jitter + 0.01
    assert registration.scatter_x == pytest.approx(jitter, abs=tolerance)
    assert registration.scatter_y == pytest.approx(jitter, abs=tolerance)
    assert _max_error(field, registration) < 0.05


def test_offset_vote_finds_a_large_offset_among_chance_pairs():
    rng = np.random.default_rng(3)
    science = rng.uniform(0, 1000, (300, 2))
    reference = np.vstack([science[:200] + [7.3, -4.1] + rng.normal(0, 0.1, (200, 2)),
                           rng.uniform(0, 1000, (300, 2))])
    dx, dy, votes = solve_offset(science, reference, max_offset_px=15.0)
    assert (dx, dy) == (pytest.approx(7.3, abs=0.05), pytest.approx(-4.1, abs=0.05))
    assert votes >= 150
    assert solve_offset(science, rng.uniform(0, 1000, (3, 2)), max_offset_px=15.0) is None


def test_windowed_centroids_agree_with_photutils_2d_gaussian_fit(crowded):
    # Isolated bright Gaussian stars: the XWIN centroid and photutils' 2-D Gaussian fit agree.
    from crowded_helpers import render

    rng = np.random.default_rng(4)
    y, x = (np.mgrid[20:200:30, 20:200:30].reshape(2, -1) + rng.uniform(-0.5, 0.5, (2, 36)))
    image = render((220, 220), x, y, np.full(36, 2e4), 3.0, 50.0, rng, 5.0, 1e30)
    cent = windowed_centroids(image, 5.0, None, x, y, 3.0)
    assert cent["ok"].all()
    for k in range(0, 36, 7):
        iy, ix = int(round(y[k])), int(round(x[k]))
        fx, fy = centroid_2dg(image[iy - 6:iy + 7, ix - 6:ix + 7])
        assert cent["x"][k] == pytest.approx(ix - 6 + fx, abs=0.01)
        assert cent["y"][k] == pytest.approx(iy - 6 + fy, abs=0.01)
    # The propagated error matches the scatter about the truth.
    scatter = np.std(np.concatenate([cent["x"] - x, cent["y"] - y]))
    assert scatter == pytest.approx(np.median(cent["sigma_x"]), rel=0.5)


def test_no_common_sources_leaves_the_alignment_and_warns(crowded, caplog):
    rms = np.full(crowded.science.shape, crowded.noise, np.float32)
    sci = find_sources(crowded.science, rms, np.zeros(crowded.science.shape, bool), crowded.fwhm_science)
    with caplog.at_level(logging.WARNING):
        registration = register(crowded.science, crowded.reference, rms, rms, sci, sci.iloc[:0], 2.5, 3.2, 20.0)
    assert registration.method == "none" and registration.n_matched == 0
    assert (registration.shift_x, registration.scatter_x) == (0.0, 0.0)
    assert "no offset found" in caplog.text
