"""Survey error model (anchor points, the CCD equation) and Skowron-style error rescaling."""

import numpy as np
import pytest

from astrodag.microlensing.noise import MAG_PER_FLUX, SurveyNoise, fit_error_rescaling, rescale_errors

OGLE = SurveyNoise(21.0, 0.005)
ROMAN = SurveyNoise(24.67, 0.001)


def test_anchor_points_of_the_surveys():
    # OGLE-IV: ~0.2 mag at I = 21 (Udalski et al. 2015); Roman: 0.01 mag at W149 = 21.15 (Penny et al. 2019)
    assert OGLE.sigma(21.0) == pytest.approx(0.2, abs=0.002)
    assert ROMAN.sigma(21.15) == pytest.approx(0.01, rel=0.01)
    # bright stars reach the systematic floor
    assert OGLE.sigma(10.0) == pytest.approx(0.005, rel=0.01)
    assert ROMAN.sigma(12.0) == pytest.approx(0.001, rel=0.01)
    mags = np.linspace(12, 23, 50)
    assert np.all(np.diff(OGLE.sigma(mags)) > 0)
    assert OGLE.sigma(mags).dtype == np.float64 and np.ndim(OGLE.sigma(17.0)) == 0


def test_sigma_is_the_ccd_equation_sqrt_f_plus_b_over_f():
    mags = np.linspace(14.0, 22.0, 9)
    for noise in (OGLE, ROMAN, SurveyNoise(22.5, 0.0, gamma=0.02)):
        flux = noise.depth_counts * 10 ** (-0.4 * (mags - noise.depth_mag))
        ccd = MAG_PER_FLUX * np.sqrt(flux + noise.background_counts) / flux
        np.testing.assert_allclose(noise.sigma(mags), np.sqrt(noise.floor_mag**2 + ccd**2), rtol=1e-12)
    # the background dominates faint stars: sigma grows as 10^(0.4 m) there, as 10^(0.2 m) for bright ones
    faint, bright = SurveyNoise(20.0, 0.0), SurveyNoise(30.0, 0.0)
    assert faint.sigma(24.0) / faint.sigma(23.0) == pytest.approx(10**0.4, rel=0.02)
    assert bright.sigma(16.0) / bright.sigma(15.0) == pytest.approx(10**0.2, rel=0.02)


def test_sigma_matches_the_scatter_of_poisson_photometry():
    rng = np.random.default_rng(0)
    noise = SurveyNoise(21.0, 0.0)
    for mag in (16.0, 18.0, 19.5):
        flux = noise.depth_counts * 10 ** (-0.4 * (mag - noise.depth_mag))
        counts = rng.poisson(flux + noise.background_counts, 200_000)
        measured = noise.depth_mag - 2.5 * np.log10((counts - noise.background_counts) / noise.depth_counts)
        assert measured.std() == pytest.approx(float(noise.sigma(mag)), rel=0.03)


def test_bad_parameters():
    with pytest.raises(ValueError, match="floor_mag"):
        SurveyNoise(21.0, -0.1)
    with pytest.raises(ValueError, match="gamma"):
        SurveyNoise(21.0, 0.0, gamma=0.05)
    with pytest.raises(ValueError, match="depth_mag"):
        SurveyNoise(float("nan"), 0.0)


def simulated_baseline(scale, floor, n=20_000, seed=1):
    """Reported errors over 12-21 mag and residuals with the true scatter sqrt((scale e)^2 + floor^2)."""
    rng = np.random.default_rng(seed)
    errors = OGLE.sigma(rng.uniform(12.0, 21.0, n))
    return rng.normal(0.0, rescale_errors(errors, scale, floor)), errors


def test_fit_error_rescaling_recovers_scale_and_floor():
    residuals, errors = simulated_baseline(1.4, 0.008)
    scale, floor = fit_error_rescaling(residuals, errors)
    assert scale == pytest.approx(1.4, rel=0.03) and floor == pytest.approx(0.008, rel=0.1)
    # the rescaled errors give chi2 / dof = 1 at every magnitude (error decile)
    normalised = residuals / rescale_errors(errors, scale, floor)
    for group in np.array_split(np.argsort(errors), 10):
        assert np.mean(normalised[group] ** 2) == pytest.approx(1.0, abs=0.1)
    # the reported errors alone do not: too small at the bright end
    assert np.mean((residuals / errors)[errors < 0.006] ** 2) > 2.0
    # a fixed floor: only the scale is fitted
    scale_only, kept = fit_error_rescaling(residuals, errors, floor=0.008)
    assert kept == 0.008 and scale_only == pytest.approx(1.4, rel=0.03)


def test_fit_error_rescaling_leaves_correct_errors_alone():
    residuals, errors = simulated_baseline(1.0, 0.0, seed=2)
    scale, floor = fit_error_rescaling(residuals, errors)
    assert scale == pytest.approx(1.0, rel=0.03) and floor < 0.002


def test_rescale_errors_formula():
    np.testing.assert_allclose(rescale_errors([0.03, 0.004], 2.0, 0.01), np.hypot([0.06, 0.008], 0.01))


def test_fit_error_rescaling_input_checks():
    residuals, errors = simulated_baseline(1.0, 0.0, n=100)
    with pytest.raises(ValueError, match="same length"):
        fit_error_rescaling(residuals, errors[:-1])
    with pytest.raises(ValueError, match="> 0"):
        fit_error_rescaling(residuals, -errors)
    with pytest.raises(ValueError, match="5 points per bin"):
        fit_error_rescaling(residuals[:20], errors[:20])
    with pytest.raises(ValueError, match="floor"):
        fit_error_rescaling(residuals, errors, floor=-1.0)
    with pytest.raises(ValueError, match="bins"):
        fit_error_rescaling(residuals, errors, bins=1)
