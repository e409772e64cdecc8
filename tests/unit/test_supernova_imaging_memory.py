"""The difference stage's memory bounds and precision, and its refusal of images without noise (issue 15)."""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from imaging_helpers import PAIR_SHAPE, TRANSIENT, make_pair
from scipy import ndimage

from astrodag.cli import main
from astrodag.errors import InputDataError
from astrodag.simulation.render import gaussian_psf
from astrodag.supernova.imaging.align import _affine_resample
from astrodag.supernova.imaging.inject import add_point_sources
from astrodag.supernova.imaging.pipeline import DifferenceSettings, detect_pair, difference_pair
from astrodag.supernova.imaging.resources import difference_mem_mb, image_pixels
from astrodag.supernova.imaging.subtract import zogy

SRC = Path(__file__).resolve().parents[2] / "src"


def _replace_data(path: Path, data: np.ndarray) -> None:
    header = fits.getheader(path)
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)


# ---- images without noise -------------------------------------------------------------------


@pytest.mark.parametrize("case, message", [("zero", r"image is constant \(every good pixel is 0\): no noise"),
                                           ("constant", r"image is constant \(every good pixel is 100\)"),
                                           ("nan", "no finite pixel")])
@pytest.mark.parametrize("which", ["science", "reference"])
def test_images_without_noise_are_refused_naming_the_file(tmp_path, case, message, which):
    science, reference, _ = make_pair(tmp_path / "pair", shape=(64, 64), n_stars=5)
    target = science if which == "science" else reference
    value = {"zero": 0.0, "constant": 100.0, "nan": np.nan}[case]
    _replace_data(target, np.full((64, 64), value, np.float32))
    with pytest.raises(InputDataError, match=message) as error:
        difference_pair(science, reference, tmp_path / "out")
    assert error.value.path == target


def test_all_zero_image_gives_one_line_and_exit_status_2(tmp_path, caplog):
    science, reference, _ = make_pair(tmp_path / "pair", shape=(64, 64), n_stars=5)
    _replace_data(science, np.zeros((64, 64), np.float64))
    status = main(["supernova", "difference", "--science", str(science), "--reference", str(reference),
                   "--out-dir", str(tmp_path / "out")])
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert status == 2 and len(errors) == 1 and "\n" not in errors[0]
    assert errors[0] == (f"astrodag supernova difference: {science}: image is constant (every good pixel is 0): "
                         "no noise to estimate")


# ---- precision --------------------------------------------------------------------------------


def test_single_precision_zogy_matches_double_precision():
    """ZOGY in complex64 against complex128 on the same pair: D and S_corr agree to 1e-3 sigma.

    Single-precision FFTs have relative errors of about eps * log2(n) ~ 1e-6 of the largest
    spectral amplitudes; here the brightest star's (flux 4e4 on a noise of 4) is ~10 sigma per
    pixel of D, so the errors are ~1e-5 sigma. 1e-3 sigma leaves room for other platforms' FFTs
    and is still 1000 times below anything the 5-sigma detection threshold could notice.
    """
    rng = np.random.default_rng(3)
    shape = (192, 192)
    new = rng.normal(0, 4.0, shape)
    ref = rng.normal(0, 2.0, shape)
    psf_new, psf_ref = gaussian_psf(3.0, 19), gaussian_psf(2.4, 19)
    stars = rng.uniform(20, 172, (2, 25))
    flux = np.exp(rng.uniform(np.log(300.0), np.log(4e4), 25))
    add_point_sources(new, psf_new, *stars, 1.15 * flux)
    add_point_sources(ref, psf_ref, *stars, flux)
    add_point_sources(new, psf_new, [96.3], [80.7], [900.0])  # a transient of ~9 sigma
    var_new, var_ref = np.full(shape, 16.0) + np.abs(new) / 50, np.full(shape, 4.0) + np.abs(ref) / 50
    kwargs = {"f_ref": 1 / 1.15, "astrometric_noise": (0.05, 0.05)}
    single = zogy(new.astype(np.float32), ref.astype(np.float32), psf_new, psf_ref, 4.0, 2.0,
                  var_new=var_new.astype(np.float32), var_ref=var_ref.astype(np.float32), **kwargs)
    double = zogy(new, ref, psf_new, psf_ref, 4.0, 2.0, var_new=var_new, var_ref=var_ref, **kwargs)
    for name in ("difference", "significance"):
        assert getattr(single, name).dtype == np.float32
        np.testing.assert_allclose(getattr(single, name), getattr(double, name), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(single.significance >= 5, double.significance >= 5)
    assert single.flux_scale == pytest.approx(double.flux_scale, rel=1e-5)


def test_single_precision_spline_prefilter_matches_scipy():
    """The reference resampled with float32 spline coefficients against scipy's float64 ones.

    The coefficients' rounding (2^-24 of values up to ~2x the data range, summed over 16 taps
    of total weight ~1.3) stays below 1e-6 of the data range; 1e-5 is the bound tested.
    """
    rng = np.random.default_rng(4)
    data = ndimage.gaussian_filter(rng.normal(100, 30, (150, 170)), 1.5).astype(np.float32)
    angle = np.radians(2.0)
    coefficients = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)], [3.3, -2.1]])
    out, inside = _affine_resample(data, coefficients, (160, 160), 3)
    (a, c), (b, d), (e, f) = coefficients
    expected = ndimage.affine_transform(data, np.array([[d, c], [b, a]]), offset=np.array([f, e]),
                                        output_shape=(160, 160), order=3, mode="nearest")
    span = float(data.max() - data.min())
    assert np.abs(out[inside] - expected[inside]).max() < 1e-5 * span
    rows, cols = np.mgrid[0:160, 0:160].astype(np.float64)
    xr, yr = a * cols + b * rows + e, c * cols + d * rows + f
    np.testing.assert_array_equal(inside, (xr >= -0.5) & (xr <= 169.5) & (yr >= -0.5) & (yr <= 149.5))


def test_tiled_pipeline_matches_the_whole_image(tmp_path):
    """Per-tile masks and variance maps give the whole image's S_corr and D, and the same candidates.

    Tiles differ from the whole image through the kernels' wings beyond the overlap (64 px,
    the default). S_corr's matched-filter kernel is compact: measured 0.002 sigma at
    most, 0.01 tested. D's kernel (P_r / den) has broader wings: up to 0.09 sigma on a tile's
    edge (0.035 at the 99th percentile), 0.15 tested; the detection runs on S_corr.
    """
    science, reference, _ = make_pair(tmp_path / "pair", shape=PAIR_SHAPE, n_stars=45, transient=TRANSIENT)
    products = {}
    for name, tile in (("whole", 0), ("tiled", 140)):
        settings = DifferenceSettings.from_config({"inject": {"count": 0},
                                                   "subtract": {"tile_size": tile, "tile_overlap_px": 64}})
        difference_pair(science, reference, tmp_path / name, settings)
        detect_pair(tmp_path / name)
        with fits.open(tmp_path / name / "difference.fits") as d, fits.open(tmp_path / name / "significance.fits") as s:
            products[name] = (d[0].data.copy(), s[0].data.copy())
        candidates = pd.read_csv(tmp_path / name / "candidates.csv")
        products[name] += (candidates.loc[candidates["kept"], ["x", "y"]].round(1).to_numpy(),)
    for whole, tiled, atol in zip(products["whole"][:2], products["tiled"][:2], (0.15, 0.01)):
        np.testing.assert_array_equal(np.isnan(whole), np.isnan(tiled))
        np.testing.assert_allclose(tiled, whole, atol=atol, equal_nan=True)
    assert len(products["whole"][2]) > 0
    np.testing.assert_allclose(products["tiled"][2], products["whole"][2], atol=0.2)


# ---- memory -----------------------------------------------------------------------------------


def test_difference_peak_memory_is_a_few_images(tmp_path):
    """Traced peak of the whole stage on a 512^2 pair in 256-pixel tiles: under 12 float32 images.

    Measured 10.6 (before the bounds 17.9: filled copies, full-size variance maps, float64
    coordinate maps and spline coefficients, the sky maps kept after subtraction).
    """
    shape = (512, 512)
    science, reference, _ = make_pair(tmp_path / "pair", shape=shape, n_stars=120)
    settings = DifferenceSettings.from_config({"inject": {"count": 10}, "subtract": {"tile_size": 256}})
    tracemalloc.start()
    try:
        difference_pair(science, reference, tmp_path / "out", settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (shape[0] * shape[1] * 4) < 12


def test_declared_mem_mb_scales_with_the_images_and_covers_the_stage(tmp_path):
    science, reference, _ = make_pair(tmp_path / "pair", shape=(512, 512), n_stars=120)
    assert image_pixels(science) == 512 * 512 and image_pixels(tmp_path / "missing.fits") is None
    assert difference_mem_mb(science, tmp_path / "missing.fits", 1234) == 1234
    declared = difference_mem_mb(science, reference, 100)
    big = tmp_path / "big.fits"
    header = fits.Header([("SIMPLE", True), ("BITPIX", -64), ("NAXIS", 2), ("NAXIS1", 8192), ("NAXIS2", 8192)])
    header.tofile(big)  # the header alone sizes the job: the data part is a sparse file
    os.truncate(big, big.stat().st_size + -(-8192 ** 2 * 8 // 2880) * 2880)
    assert image_pixels(big) == 8192 ** 2
    assert difference_mem_mb(big, big, 2000) > 3000 > declared
    # The CLI stage in its own process: its peak resident memory fits what the workflow declares.
    command = [sys.executable, "-m", "astrodag", "supernova", "difference", "--science", str(science),
               "--reference", str(reference), "--out-dir", str(tmp_path / "out"),
               "--settings", json.dumps({"inject": {"count": 10}})]
    # Started from a small fresh interpreter: a child forked from this (large) test process counts the parent's
    # pages in its peak until it execs.
    probe = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:]);"
             " _, status, usage = os.wait4(child.pid, 0);"
             " print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    exit_code, peak_kib = map(int, result.stdout.split()[-2:])
    assert exit_code == 0, result.stderr[-2000:]
    assert peak_kib / 1024 <= declared
