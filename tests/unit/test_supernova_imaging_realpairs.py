"""Differencing on pairs made from real images (issue 16): recovery, false candidates, calibration, flux ratio.

Each pair is a real image (tests/data/imaging, see its README) and a second epoch of it with a
known rotation, shift, seeing change, flux ratio 1.1, noise and point transients cut from the
image's own stars (:mod:`astrodag.supernova.imaging.epochs`). Also tests of the epoch maker.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from photutils.centroids import centroid_2dg

from astrodag.errors import ConfigError
from astrodag.supernova.imaging.epochs import EpochSettings, Geometry, make_epochs, score_candidates, zogy_snr
from astrodag.supernova.imaging.fitsio import load_image
from astrodag.supernova.imaging.pipeline import DifferenceSettings, detect_pair, difference_pair

DATA = Path(__file__).resolve().parents[1] / "data" / "imaging"
# image -> crop (y0, y1, x0, x1) of the real image (None: all of it); the HDF is cut to 400^2 for speed.
IMAGES = {"m13_dss": None, "ukidss_k": None, "hdf_wfpc2": (236, 636, 300, 700)}
CROWDED = "m13_dss"
METHODS = ("zogy", "kernel")
SEED = 1
FLUX_SCALE = EpochSettings().flux_scale


def _settings(method: str) -> DifferenceSettings:
    try:
        return DifferenceSettings.from_config({"inject": {"count": 0}, "subtract": {"method": method}})
    except ConfigError:
        pytest.skip(f"subtraction method {method!r} not available yet")


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory):
    """``real_pair(image, method, transients)`` -> (record, kept candidates, truth, unmasked pixels), cached."""
    root = tmp_path_factory.mktemp("realpairs")
    epochs, results = {}, {}

    def run(image: str, method: str, transients: bool = True):
        settings = _settings(method)
        key = (image, transients)
        if key not in epochs:
            snr = EpochSettings().snr if transients else ()
            epochs[key] = make_epochs(DATA / f"{image}.fits.gz", root / f"{image}_{int(transients)}",
                                      EpochSettings(crop=IMAGES[image], snr=snr), seed=SEED)
        if key + (method,) not in results:
            pair = epochs[key]
            out = root / f"{image}_{int(transients)}_{method}"
            record = difference_pair(pair.science, pair.reference, out, settings, seed=SEED)
            detect_pair(out)
            candidates = pd.read_csv(out / "candidates.csv", keep_default_na=False)
            with fits.open(out / "mask.fits") as hdul:
                unmasked = int(np.count_nonzero(hdul[0].data == 0))
            results[key + (method,)] = (record, candidates[candidates["kept"]], pair.truth, unmasked)
        return results[key + (method,)]

    return run


# Open gaps (issue 16), strict: each turns into a failure the day it is fixed, so the mark goes with it.
KNOWN_GAPS = {
    ("recovered", "m13_dss", "kernel"): "kernel fit: the S/N-10 transient on a bright M13 star is not kept "
                                        "(residual of the star under it)",
    ("recovered", "hdf_wfpc2", "kernel"): "kernel fit: the S/N-8 transient on a galaxy nucleus is not kept",
    ("flux", "ukidss_k", "zogy"): "6 usable stars in a 300^2 K-band field with a 4x noisier science image: the "
                                  "template ratio's own error is 1.4 % (1.127 +- 0.015, 1.7 sigma from 1.1)",
    ("flux", "ukidss_k", "kernel"): "4 kernel stamps: ratio 1.20 +- 0.17, noise-limited",
}


def _cases(test: str) -> list:
    """(image, method) parameters of ``test``, the known gaps marked as strict expected failures."""
    return [pytest.param(image, method, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[test, image, method]))
            if (test, image, method) in KNOWN_GAPS else pytest.param(image, method)
            for image in IMAGES for method in METHODS]


@pytest.mark.parametrize(("image", "method"), _cases("recovered"))
def test_injected_sources_recovered(real_pair, image, method):
    _, kept, truth, _ = real_pair(image, method)
    score = score_candidates(kept, truth, min_snr=8.0, found_px=1.0)
    assert score["expected"] >= 3
    assert score["missed"].empty, f"{image}/{method}: S/N >= 8 transients not found within 1 px:\n{score['missed']}"


@pytest.mark.parametrize("method", METHODS)
def test_false_candidates_on_crowded_field(real_pair, method):
    _, kept, truth, unmasked = real_pair(CROWDED, method)
    false = score_candidates(kept, truth, false_px=2.0)["false"]
    rate = false / (unmasked / 1e6)
    assert rate <= 20.0, f"{method}: {false} false candidates in {unmasked} pixels = {rate:.0f} per Mpix"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("image", IMAGES)
def test_significance_calibrated_without_transients(real_pair, image, method):
    record, _, _, _ = real_pair(image, method, transients=False)
    std = record["noise"]["significance_robust_std"]
    assert abs(std - 1.0) <= 0.1, f"{image}/{method}: S_corr robust std {std:.3f}"


@pytest.mark.parametrize(("image", "method"), _cases("flux"))
def test_flux_ratio(real_pair, image, method):
    # Both epochs have the same pixel area, so the surface-brightness and flux ratios agree.
    # The kernel method scales the reference by its own fitted kernel sum, not by the pipeline's ratio.
    record, _, _, _ = real_pair(image, method, transients=False)
    fit = record["subtraction"]["kernel_fit"] if method == "kernel" else record["flux"]
    ratio = fit["ratio"]
    assert abs(ratio / FLUX_SCALE - 1.0) <= 0.02, f"{image}/{method}: flux ratio {ratio:.4f} ({fit})"


# The epoch maker itself.

def _circulant_psf(n: int, sigma: float) -> np.ndarray:
    """Unit-sum periodic Gaussian on an n x n torus, centred on pixel (0, 0)."""
    d = np.minimum(np.arange(n), n - np.arange(n))
    g = np.exp(-0.5 * (d[:, None] ** 2 + d[None, :] ** 2) / sigma ** 2)
    return g / g.sum()


def _convolution_matrix(psf: np.ndarray) -> np.ndarray:
    """Matrix of the periodic convolution with ``psf`` acting on flattened images."""
    n = psf.shape[0]
    # Column j is the PSF centred on pixel j.
    return np.array([np.roll(psf, (y, x), axis=(0, 1)).ravel() for y in range(n) for x in range(n)]).T


def test_zogy_snr_matches_least_squares_simulation():
    """Eq. 41 against the best unbiased estimate of a point source's flux with the static sky unknown.

    Pixel space, periodic 12 x 12 images: N = P_n (x) (T + a delta) + n_n, R = F_r P_r (x) T + n_r,
    T free (144 nuisance parameters). The generalised-least-squares variance of a (the inverse
    of the marginal Fisher information) and its scatter over 3000 simulated noise draws both
    give the S/N that :func:`zogy_snr` computes in Fourier space.
    """
    n, flux, sigma_new, sigma_ref, f_ref = 12, 60.0, 2.0, 1.3, 1 / 1.1
    p_new, p_ref = _circulant_psf(n, 1.6), _circulant_psf(n, 1.1)
    c_new, c_ref = _convolution_matrix(p_new), _convolution_matrix(p_ref)
    delta = np.zeros(n * n)
    delta[(n // 2) * n + n // 2] = 1.0
    design = np.block([[c_new, (c_new @ delta)[:, None]], [f_ref * c_ref, np.zeros((n * n, 1))]])
    weights = np.concatenate([np.full(n * n, sigma_new ** -2), np.full(n * n, sigma_ref ** -2)])
    covariance = np.linalg.inv(design.T @ (weights[:, None] * design))
    exact = flux / math.sqrt(covariance[-1, -1])
    centred = [np.fft.fftshift(p) for p in (p_new, p_ref)]
    predicted = zogy_snr(flux, centred[0], centred[1], sigma_new, sigma_ref, 1.0, f_ref)
    assert predicted == pytest.approx(exact, rel=0.01)

    rng = np.random.default_rng(5)
    scene = rng.uniform(0, 50, n * n)
    truth = design @ np.concatenate([scene, [flux]])
    estimator = (covariance @ (design.T * weights))[-1]
    noise = rng.standard_normal((3000, 2 * n * n)) / np.sqrt(weights)
    estimates = (truth + noise) @ estimator
    assert float(np.mean(estimates)) == pytest.approx(flux, abs=3 * flux / exact / math.sqrt(3000))
    assert flux / float(np.std(estimates)) == pytest.approx(predicted, rel=0.05)


@pytest.fixture(scope="module")
def m13_epochs(tmp_path_factory):
    root = tmp_path_factory.mktemp("epochs")
    with_transients = make_epochs(DATA / "m13_dss.fits.gz", root / "with", EpochSettings(), seed=SEED)
    without = make_epochs(DATA / "m13_dss.fits.gz", root / "without", EpochSettings(snr=()), seed=SEED)
    return with_transients, without


def test_truth_lands_where_the_science_wcs_says(m13_epochs):
    pair, empty = m13_epochs
    science, blank, reference = load_image(pair.science), load_image(empty.science), load_image(pair.reference)
    # Same seed, same noise draws: the difference is the transients (their own photon noise is 0.5 % of them).
    light = np.nan_to_num(science.data.astype(float) - blank.data)
    ys, xs = np.mgrid[0:light.shape[0], 0:light.shape[1]]
    for row in pair.truth.itertuples():
        box = (np.abs(xs - row.x) <= 12) & (np.abs(ys - row.y) <= 12)
        weights = light * box
        assert float(weights.sum()) == pytest.approx(row.flux, rel=0.02)
        # Positions are those of a 2-D Gaussian fit to the core (as for the stamp star), not light centroids.
        ix, iy, half = int(round(row.x)), int(round(row.y)), 4
        cx, cy = centroid_2dg(light[iy - half:iy + half + 1, ix - half:ix + half + 1])
        assert (ix - half + cx, iy - half + cy) == pytest.approx((row.x, row.y), abs=0.05)
        ra, dec = science.wcs.pixel_to_world_values(row.x, row.y)
        assert (float(ra), float(dec)) == pytest.approx((row.ra, row.dec), abs=0.01 / 3600)
    # A real star of the reference lands where the science WCS puts it.
    x_ref, y_ref = pair.meta["stars"][0]
    ra, dec = reference.wcs.pixel_to_world_values(x_ref, y_ref)
    x_sci, y_sci = science.wcs.world_to_pixel_values(ra, dec)
    x_geo, y_geo = pair.geometry.to_science(x_ref, y_ref)
    assert (float(x_sci), float(y_sci)) == pytest.approx((float(x_geo[0]), float(y_geo[0])), abs=1e-6)


def test_epochs_headers_truth_and_noise(m13_epochs):
    pair, empty = m13_epochs
    science = load_image(pair.science)
    assert science.gain == pytest.approx(pair.meta["gain"])
    assert len(pair.truth) == len(EpochSettings().snr) and empty.truth.empty
    assert pair.truth["on_source"].sum() == 3
    assert set(pair.truth["star"]) == set(range(min(3, len(pair.meta["stars"]))))
    # Photon noise with the stated gain dominates: the sky noise is noise_factor times the real image's.
    sky = science.data[np.isfinite(science.data)]
    sky = sky[sky < np.percentile(sky, 50)]
    assert np.isclose(pair.meta["science_sky_sigma"], EpochSettings().noise_factor * FLUX_SCALE * pair.meta["sigma_0"])
    assert float(np.sqrt(np.median(sky) / science.gain)) == pytest.approx(pair.meta["science_sky_sigma"], rel=0.05)


def test_epochs_reproducible(tmp_path, m13_epochs):
    again = make_epochs(DATA / "m13_dss.fits.gz", tmp_path, EpochSettings(), seed=SEED)
    pd.testing.assert_frame_equal(again.truth, m13_epochs[0].truth)
    np.testing.assert_array_equal(load_image(again.science).data, load_image(m13_epochs[0].science).data)


def test_geometry_wcs_composition():
    """The science WCS of a rotated, shifted grid maps science pixels to the sky of the reference pixels shown."""
    image = load_image(DATA / "ukidss_k.fits.gz")  # ZPN projection with PV terms: not just TAN
    geometry = Geometry.rotation(image.shape, 2.0, (1.3, -0.7))
    science_wcs = geometry.science_wcs(image.wcs)
    x, y = np.array([0.0, 150.0, 299.0]), np.array([10.0, 140.0, 280.0])
    xr, yr = geometry.to_reference(x, y)
    np.testing.assert_allclose(science_wcs.pixel_to_world_values(x, y), image.wcs.pixel_to_world_values(xr, yr),
                               atol=1e-9)


@pytest.mark.parametrize(("image", "shape", "scale_arcsec", "bad"), [("m13_dss", (300, 300), 1.0, 0),
                                                                    ("ukidss_k", (300, 300), 0.2006, 0),
                                                                    ("hdf_wfpc2", (872, 1000), 0.1, 538)])
def test_vendored_images_load(image, shape, scale_arcsec, bad):
    loaded = load_image(DATA / f"{image}.fits.gz")
    assert loaded.shape == shape
    assert int(loaded.mask.sum()) == bad  # the HDF's DQ extension flags JPEG-saturated pixels
    scale = 3600 * np.sqrt(abs(np.linalg.det(loaded.wcs.pixel_scale_matrix)))
    assert scale == pytest.approx(scale_arcsec, rel=0.01)


def test_score_candidates():
    truth = pd.DataFrame({"x": [10.0, 50.0, 90.0], "y": [10.0, 50.0, 90.0], "snr": [8.0, 20.0, 5.0]})
    candidates = pd.DataFrame({"x": [10.6, 51.5, 90.0, 200.0], "y": [10.0, 50.0, 91.9, 5.0]})
    score = score_candidates(candidates, truth)
    # 10.6 is found (0.6 px); 51.5 is 1.5 px off: missed but not false; the S/N-5 one is not expected.
    assert (score["recovered"], score["expected"], score["false"]) == (1, 2, 1)
    assert score["missed"]["x"].tolist() == [50.0]
