"""Detection on S_corr with shape cuts, and the difference/detect stages of one pair end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from imaging_helpers import PAIR_SHAPE, TRANSIENT, make_pair, make_wcs, process_pair, processed_pair  # noqa: F401
from photutils.psf import fit_fwhm

from astrodag.errors import ConfigError, InputDataError
from astrodag.simulation.render import gaussian_psf
from astrodag.supernova.imaging.detect import CANDIDATE_COLUMNS, DetectSettings, detect_candidates
from astrodag.supernova.imaging.inject import INJECTION_COLUMNS, add_point_sources
from astrodag.supernova.imaging.pipeline import MASK_BITS, DifferenceSettings, detect_pair, difference_pair
from astrodag.supernova.imaging.subtract import zogy

SHAPE = (160, 160)


def _scene(rng, misregistration=0.8):
    """ZOGY of a pair holding a transient, a cosmic ray and a misregistered bright star."""
    sigma = 4.0
    psf = gaussian_psf(3.0, 21)
    new = rng.normal(0, sigma, SHAPE).astype(np.float32)
    ref = rng.normal(0, sigma, SHAPE).astype(np.float32)
    add_point_sources(new, psf, [60.3], [70.6], [3000.0])  # transient
    new[40, 110] += 400.0  # cosmic ray: one hot pixel
    add_point_sources(new, psf, [40.0 + misregistration], [120.0], [4e4])  # star, shifted in the new image
    add_point_sources(ref, psf, [40.0], [120.0], [4e4])
    result = zogy(new, ref, psf, psf, sigma, sigma)
    fwhm = float(fit_fwhm(result.psf, fit_shape=result.psf.shape[0])[0])
    return result, fwhm


def _nearest(table, x, y):
    distance = np.hypot(table["x"] - x, table["y"] - y)
    return table.iloc[int(np.argmin(distance))], float(distance.min())


def test_transient_kept_cosmic_ray_and_dipole_rejected():
    result, fwhm = _scene(np.random.default_rng(0))
    wcs = make_wcs(SHAPE)
    table = detect_candidates(result.significance, result.score, result.difference, np.zeros(SHAPE, bool),
                              result.psf, result.flux_scale, result.flux_zeropoint, wcs, fwhm=fwhm)
    assert tuple(table.columns) == CANDIDATE_COLUMNS
    transient, distance = _nearest(table, 60.3, 70.6)
    assert distance < 0.3 and transient["kept"] and transient["reject_reason"] == ""
    assert transient["flux"] == pytest.approx(3000.0, rel=0.1)
    ra, dec = wcs.pixel_to_world_values(transient["x"], transient["y"])
    assert transient["ra"] == pytest.approx(float(ra)) and transient["dec"] == pytest.approx(float(dec))
    cosmic, distance = _nearest(table, 110, 40)
    assert distance < 1 and not cosmic["kept"] and cosmic["reject_reason"] == "cosmic_ray"
    dipole, distance = _nearest(table, 40.8, 120.0)
    assert distance < 2 and dipole["is_dipole"] and dipole["reject_reason"] == "dipole"
    assert table["significance"].is_monotonic_decreasing and (table["significance"] >= 5).all()


def test_masked_pixels_and_pure_noise_give_no_candidates():
    result, fwhm = _scene(np.random.default_rng(1))
    mask = np.zeros(SHAPE, bool)
    mask[50:90, 50:80] = True
    table = detect_candidates(result.significance, result.score, result.difference, mask, result.psf,
                              result.flux_scale, result.flux_zeropoint, make_wcs(SHAPE), fwhm=fwhm)
    assert np.hypot(table["x"] - 60.3, table["y"] - 70.6).min() > 10

    rng = np.random.default_rng(2)
    noise = zogy(rng.normal(0, 1, SHAPE).astype(np.float32), rng.normal(0, 1, SHAPE).astype(np.float32),
                 gaussian_psf(3.0), gaussian_psf(3.0), 1.0, 1.0)
    empty = detect_candidates(noise.significance, noise.score, noise.difference, np.zeros(SHAPE, bool), noise.psf,
                              noise.flux_scale, noise.flux_zeropoint, make_wcs(SHAPE), DetectSettings(threshold=8.0))
    assert len(empty) == 0 and tuple(empty.columns) == CANDIDATE_COLUMNS


def test_detect_settings_validation():
    assert DetectSettings.from_config({"threshold": 6, "sharpness_range": [0.1, 0.9]}).sharpness_range == (0.1, 0.9)
    with pytest.raises(ConfigError, match="supernova.detection.treshold"):
        DetectSettings.from_config({"treshold": 5})
    with pytest.raises(ConfigError, match="supernova.detection.sharpness_range"):
        DetectSettings.from_config({"sharpness_range": [1.0, 0.2]})
    with pytest.raises(ConfigError, match="supernova.difference.inject.count"):
        DifferenceSettings.from_config({"inject": {"count": -1}})
    with pytest.raises(ConfigError, match="supernova.difference.psff"):
        DifferenceSettings.from_config({"psff": {}})


# ---- the pair stages ----------------------------------------------------------------------


def test_difference_products(processed_pair):  # noqa: F811
    pair_dir, wcs, record = processed_pair
    for name in ("difference.fits", "significance.fits", "mask.fits", "injections.csv", "difference.json",
                 "candidates.csv"):
        assert (pair_dir / name).is_file()
    saved = json.loads((pair_dir / "difference.json").read_text())
    assert saved["alignment"]["method"] == "affine" and saved["alignment"]["overlap_fraction"] > 0.9
    assert saved["psf"]["science_fwhm_px"] == pytest.approx(3.0, rel=0.05)
    assert saved["psf"]["reference_fwhm_px"] == pytest.approx(2.5, rel=0.08)
    assert saved["flux"]["ratio"] == pytest.approx(1.2, rel=0.02) and saved["flux"]["method"] == "template"
    assert abs(saved["noise"]["significance_median"]) < 0.1
    assert saved["noise"]["significance_robust_std"] == pytest.approx(1.0, abs=0.15)  # a small crowded image
    assert set(saved["seconds"]) >= {"load", "align", "background", "psf", "inject", "flux", "subtract", "write",
                                     "total"}
    with fits.open(pair_dir / "difference.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCIENCE", "REFERENCE", "PSF_D", "PSF_SCI", "PSF_REF",
                                          "SOURCES"]
        header = hdul[0].header
        assert header["ADSTAGE"] == "difference" and header["ADIN1"] == "science.fits" and "ADSHA2" in header
        assert header["FLXRATIO"] == pytest.approx(saved["flux"]["ratio"])
        assert hdul["PSF_D"].data.sum() == pytest.approx(1.0, rel=1e-4)
    with fits.open(pair_dir / "mask.fits") as hdul:
        bits = hdul[0].data
        assert hdul[0].header["MASKB4"] == "no_coverage"
        # The reference is shifted by (2.3, -1.7) pixels and rotated: a rim is uncovered.
        assert (bits & MASK_BITS["no_coverage"]).any() and (bits == 0).mean() > 0.85
    injections = pd.read_csv(pair_dir / "injections.csv")
    assert tuple(injections.columns) == INJECTION_COLUMNS and 4 <= len(injections) <= 8  # room permitting


def test_candidates_recover_the_transient_and_injections(processed_pair):  # noqa: F811
    pair_dir, wcs, record = processed_pair
    candidates = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False)
    assert tuple(candidates.columns) == CANDIDATE_COLUMNS
    transient, distance = _nearest(candidates, TRANSIENT[0], TRANSIENT[1])
    assert distance < 0.5 and transient["kept"]
    assert transient["flux"] == pytest.approx(TRANSIENT[2], rel=0.1)
    injections = pd.read_csv(pair_dir / "injections.csv")
    bright = injections[injections["snr"] > 10]
    found = [_nearest(candidates, x, y)[1] < 1.5 for x, y in bright[["x", "y"]].to_numpy()]
    assert len(bright) >= 3 and np.mean(found) >= 0.9
    assert detect_pair(pair_dir, out=pair_dir / "again.csv")["candidates"] == len(candidates)


def test_same_seed_same_products_and_pairs_get_their_own_injections(tmp_path, processed_pair):  # noqa: F811
    pair_dir, _, record = processed_pair
    again = tmp_path / pair_dir.name
    again.mkdir()
    for name in ("science.fits", "reference.fits"):
        (again / name).write_bytes((pair_dir / name).read_bytes())
    difference_pair(again / "science.fits", again / "reference.fits", again,
                    DifferenceSettings.from_config({"inject": {"count": 8}}), seed=0)
    pd.testing.assert_frame_equal(pd.read_csv(again / "injections.csv"), pd.read_csv(pair_dir / "injections.csv"))
    with fits.open(again / "significance.fits") as a, fits.open(pair_dir / "significance.fits") as b:
        np.testing.assert_array_equal(a[0].data, b[0].data)
    other = tmp_path / "another_pair"
    other.mkdir()
    difference_pair(again / "science.fits", again / "reference.fits", other,
                    DifferenceSettings.from_config({"inject": {"count": 8}}), seed=0)
    assert not np.allclose(pd.read_csv(other / "injections.csv")["x"], pd.read_csv(again / "injections.csv")["x"])


def test_gaussian_baseline_method_runs_the_same_stages(tmp_path):
    pair_dir, _, record = process_pair(tmp_path / "baseline", settings={"subtract": {"method": "gaussian"},
                                                                        "inject": {"count": 0}})
    assert record["subtraction"]["method"] == "gaussian" and record["injected"] == 0
    candidates = pd.read_csv(pair_dir / "candidates.csv")
    transient, distance = _nearest(candidates, TRANSIENT[0], TRANSIENT[1])
    assert distance < 1.0 and transient["flux"] == pytest.approx(TRANSIENT[2], rel=0.2)


def test_pair_stage_input_errors(tmp_path):
    science, reference, _ = make_pair(tmp_path / "p", shape=(64, 64), n_stars=5)
    with pytest.raises(InputDataError, match="does not exist") as error:
        difference_pair(science, tmp_path / "missing.fits", tmp_path / "out")
    assert error.value.path == tmp_path / "missing.fits"
    far = make_pair(tmp_path / "far", shape=(64, 64), n_stars=5, shift=(200.0, 0.0))
    with pytest.raises(InputDataError, match="footprints do not overlap"):
        difference_pair(far[0], far[1], tmp_path / "out")
    with pytest.raises(InputDataError, match="run the difference stage"):
        detect_pair(tmp_path / "out")
    assert PAIR_SHAPE == (144, 144)


# ---- fake-source injection ----------------------------------------------------------------


def test_injection_counts_brightness_placement_and_seed():
    from astrodag.supernova.imaging.inject import InjectSettings, galaxy_map, inject_sources, limiting_flux

    rng = np.random.default_rng(5)
    shape, sigma, fwhm = (200, 200), 3.0, 3.0
    psf = gaussian_psf(fwhm, 19)
    y, x = np.mgrid[:shape[0], :shape[1]]
    galaxy = 40.0 * np.exp(-np.hypot((x - 60) / 18.0, (y - 140) / 10.0))  # an extended blob
    base = (galaxy + rng.normal(0, sigma, shape)).astype(np.float32)
    rms = np.full(shape, sigma, np.float32)
    mask = np.zeros(shape, bool)
    mask[:, 150:] = True  # no reference coverage there
    settings = InjectSettings(count=12, nucleus_fraction=0.1, galaxy_fraction=0.5, poisson=False)

    def run(seed):
        data = base.copy()
        table = inject_sources(data, rms, mask, psf, fwhm, sigma, make_wcs(shape), settings,
                               np.random.default_rng(seed), zeropoint=25.0)
        return data, table

    data, table = run(1)
    assert tuple(table.columns) == INJECTION_COLUMNS and len(table) == 12
    # Magnitudes relative to the 5-sigma limit: S/N between 5 * 10^(-0.2) and 5 * 10^2.8, as bright as the
    # brightest supernovae.
    assert table["snr"].between(5 * 10 ** -0.2, 5 * 10 ** 2.8).all() and table["snr"].max() > 300
    np.testing.assert_allclose(table["flux"], 10 ** (-0.4 * (table["mag"] - 25.0)))
    np.testing.assert_allclose(table["snr"], 5 * table["flux"] / limiting_flux(psf, sigma))
    # One fake on the galaxy's nucleus (round(0.1 * 12)), six more on the galaxy.
    nucleus = table[table["placement"] == "nucleus"]
    assert len(nucleus) == 1 and np.hypot(nucleus["x"].iloc[0] - 60, nucleus["y"].iloc[0] - 140).min() <= 1.5
    assert (table["placement"] == "galaxy").sum() == 6
    on_galaxy = galaxy_map(base, rms, mask, psf, fwhm)
    for _, row in table[table["placement"] != "random"].iterrows():
        assert on_galaxy[int(round(row["y"])), int(round(row["x"]))] > 0
    assert (table["x"] < 150 - 15).all()  # kept off the uncovered part
    separation = np.hypot(*(table[["x", "y"]].to_numpy()[:, None] - table[["x", "y"]].to_numpy()[None]).T)
    assert separation[~np.eye(12, dtype=bool)].min() >= 5 * fwhm
    assert float((data - base).sum()) == pytest.approx(table["flux"].sum(), rel=1e-4)
    again, same = run(1)
    pd.testing.assert_frame_equal(same, table)
    np.testing.assert_array_equal(again, data)
    assert not np.allclose(run(2)[1]["x"], table["x"])


def test_nucleus_fakes_go_on_bright_nuclei_that_other_fakes_avoid():
    from astrodag.supernova.imaging.inject import InjectSettings, galaxy_map, galaxy_peaks, inject_sources

    rng = np.random.default_rng(3)
    shape, sigma, fwhm = (200, 200), 3.0, 3.0
    psf = gaussian_psf(fwhm, 19)
    y, x = np.mgrid[:shape[0], :shape[1]]
    galaxy = 300.0 * np.exp(-np.hypot((x - 100) / 15.0, (y - 100) / 15.0))  # a bright nucleus (S/N 100)
    reference = (galaxy + rng.normal(0, sigma, shape)).astype(np.float32)
    data = (galaxy + rng.normal(0, sigma, shape)).astype(np.float32)
    add_point_sources(data, psf, [112.0], [104.0], [3e4])  # a supernova on its host, brighter than the nucleus
    rms, mask = np.full(shape, sigma, np.float32), np.zeros(shape, bool)
    # The pipeline takes the nuclei from the reference: the transient is no nucleus there.
    nuclei = galaxy_peaks(galaxy_map(reference, rms, mask, psf, fwhm), ~mask, fwhm)
    assert np.hypot(*(nuclei[0] - 100)) <= 1
    settings = InjectSettings(count=10, nucleus_fraction=0.1, galaxy_fraction=0.4, poisson=False)
    table = inject_sources(data, rms, mask, psf, fwhm, sigma, make_wcs(shape), settings, rng, zeropoint=25.0,
                           avoid=np.array([[100.0, 100.0], [112.0, 104.0]]), nuclei=nuclei)
    separation = np.hypot(table["x"] - 100, table["y"] - 100)
    assert (separation[table["placement"] == "nucleus"] <= 1.0).sum() == 1
    assert (separation[table["placement"] != "nucleus"] >= 5 * fwhm).all()
    from_sn = np.hypot(table["x"] - 112, table["y"] - 104)
    assert (from_sn[table["placement"] != "nucleus"] >= 5 * fwhm).all() and from_sn.min() > 10


def test_fakes_are_shaped_independently_of_the_subtraction_psf():
    """Fakes take a profile fitted to the image's stars, not the subtraction's stamp, whose error would hide."""
    from astrodag.supernova.imaging.inject import InjectSettings, injection_psf, moffat_model, shifted_psf

    rng = np.random.default_rng(4)
    shape = (160, 160)
    truth = moffat_model(4.0, 2.5)
    grid_x, grid_y = np.meshgrid(np.arange(25.0, 150.0, 30.0), np.arange(25.0, 150.0, 30.0))
    # Isolated PSF stars, as estimate_psf selects them.
    stars = pd.DataFrame({"x": grid_x.ravel() + rng.uniform(-0.5, 0.5, grid_x.size),
                          "y": grid_y.ravel() + rng.uniform(-0.5, 0.5, grid_x.size)})
    data = np.zeros(shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for sx, sy in stars[["x", "y"]].to_numpy():
        data += 2e4 * truth.evaluate(xx, yy, 1.0, sx, sy, *truth.parameters[3:])
    data += rng.normal(0, 1.0, shape)
    wrong = gaussian_psf(3.0, 25)  # a subtraction PSF estimated too narrow, and of the wrong profile
    mask = np.zeros(shape, bool)
    grid = np.mgrid[-12:13, -12:13].astype(float)
    expected = truth.evaluate(grid[1], grid[0], 1.0, 0.3, -0.2, *truth.parameters[3:])
    expected /= expected.sum()
    assert np.abs(shifted_psf(wrong, 0.3, -0.2) - expected).max() > 0.3 * expected.max()

    for method, tolerance in (("moffat", 0.02), ("epsf", 0.05)):
        fakes = injection_psf(data, mask, stars, 3.0, wrong, InjectSettings(psf=method))
        assert fakes.method == method and fakes.size == 25
        stamp = fakes.stamp(0.3, -0.2)
        assert stamp.sum() == pytest.approx(1.0) and stamp.shape == (25, 25)
        # The profile follows the stars (a Moffat of FWHM 4 px), not the subtraction's 3-px Gaussian.
        assert np.abs(stamp - expected).max() < tolerance * expected.max()

    few = injection_psf(data, mask, stars.head(2), 4.0, wrong, InjectSettings())
    assert few.method == "moffat_fwhm" and few.model.fwhm == pytest.approx(4.0) and few.model.beta == 3.0
    same = injection_psf(data, mask, stars, 3.0, wrong, InjectSettings(psf="subtraction"))
    np.testing.assert_allclose(same.stamp(), wrong / wrong.sum(), atol=1e-12)
    with pytest.raises(ConfigError, match="nucleus_fraction"):
        DifferenceSettings.from_config({"inject": {"nucleus_fraction": 0.6, "galaxy_fraction": 0.5}})


# ---- noise scaling, significance calibration, failed subtractions (issue 16) -------------------


def test_reference_with_coarser_pixels_has_its_noise_scaled_by_the_pixel_area(tmp_path):
    """A reference of 2x coarser pixels, upsampled: its noise at PSF scales is sigma_ref * 2 per science pixel."""
    from imaging_helpers import observe, sky_stars, write_fits

    rng = np.random.default_rng(5)
    shape = (160, 160)
    ra, dec, flux = sky_stars(rng, 40, shape)
    sci_wcs, ref_wcs = make_wcs(shape), make_wcs((80, 80), scale_arcsec=2.0, rotation_deg=2.0)
    science = observe(sci_wcs, shape, ra, dec, flux, 3.0, rng, noise=2.0, scale=1.2)
    reference = observe(ref_wcs, (80, 80), ra, dec, flux, 2.0, rng, noise=8.0)
    cards = {"GAIN": 1000.0, "EXPTIME": 100.0}
    record = difference_pair(write_fits(tmp_path / "science.fits", science, sci_wcs, **cards),
                             write_fits(tmp_path / "reference.fits", reference, ref_wcs, **cards), tmp_path / "out",
                             DifferenceSettings.from_config({"inject": {"count": 0},
                                                             "subtract": {"significance_tolerance": None}}))
    noise = record["noise"]
    assert noise["reference_pixel_area_ratio"] == pytest.approx(4.0, rel=1e-3)
    assert noise["reference_sigma"] == pytest.approx(2 * 8.0, rel=0.1)
    assert noise["significance_std_uncalibrated"] == pytest.approx(1.0, abs=0.1)
    assert noise["significance_correction"] == 1.0


def test_misstated_reference_noise_is_calibrated_away(tmp_path, monkeypatch, processed_pair):  # noqa: F811
    import astrodag.supernova.imaging.pipeline as pipeline

    # A correct pair needs no correction: a 144^2 image measures the std to about 5 % (its error).
    _, _, record = processed_pair
    noise = record["noise"]
    assert 0.02 < noise["significance_std_error"] < 0.08
    assert abs(noise["significance_std_uncalibrated"] - 1.0) < 3 * noise["significance_std_error"]
    assert noise["significance_correction"] == 1.0
    # The reference's noise stated 40 % low.
    measured = pipeline.noise_level
    monkeypatch.setattr(pipeline, "noise_level", lambda *args, **kwargs: 0.6 * measured(*args, **kwargs))
    pair_dir, _, record = process_pair(tmp_path / "low_noise", settings={"inject": {"count": 0}}, ref_noise=5.0)
    noise = record["noise"]
    assert noise["significance_std_uncalibrated"] > 1.1
    assert noise["significance_correction"] == pytest.approx(noise["significance_std_uncalibrated"])
    assert noise["significance_robust_std"] == pytest.approx(1.0, abs=0.1)
    assert fits.getheader(pair_dir / "difference.fits")["SIGCORR"] == pytest.approx(noise["significance_correction"])
    candidates = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False)
    transient, distance = _nearest(candidates, TRANSIENT[0], TRANSIENT[1])
    assert distance < 0.5 and transient["kept"]


def test_absurd_peak_counts_declare_a_failed_subtraction_and_say_why():
    from astrodag.supernova.imaging.detect import assess_detection, diagnose_subtraction

    rng = np.random.default_rng(3)
    noise = zogy(rng.normal(0, 1, SHAPE).astype(np.float32), rng.normal(0, 1, SHAPE).astype(np.float32),
                 gaussian_psf(3.0), gaussian_psf(3.0), 1.0, 1.0)
    settings = DetectSettings(max_candidates=50)
    # An S_corr whose noise is 2.5 times what it claims: hundreds of peaks above 5 "sigma".
    table = detect_candidates(2.5 * noise.significance, noise.score, noise.difference, np.zeros(SHAPE, bool),
                              noise.psf, noise.flux_scale, noise.flux_zeropoint, make_wcs(SHAPE), settings)
    assert len(table) == 50 and table.attrs["peaks"] > 100 and table.attrs["good_pixels"] == SHAPE[0] * SHAPE[1]
    record = {"flux": {"ratio": 1.0, "error": float("nan"), "stars": 0, "method": "unity"},
              "psf": {"science_method": "gaussian", "science_stars": 2, "reference_method": "empirical",
                      "reference_stars": 25},
              "alignment": {"matched_stars": 30, "registration_scatter_px": [0.6, 0.1]},
              "noise": {"significance_std_uncalibrated": 1.58}}
    verdict = assess_detection(table, settings, record)
    assert verdict["failed"] and verdict["capped"] and verdict["peaks"] == table.attrs["peaks"]
    assert verdict["peaks_per_megapixel"] == pytest.approx(verdict["peaks"] / (SHAPE[0] * SHAPE[1] / 1e6), rel=1e-3)
    reasons = verdict["failure_reasons"]
    assert len(reasons) == 4 and reasons == diagnose_subtraction(record)
    assert "method unity" in reasons[0] and "science PSF gaussian from 2 stars" in reasons[1]
    assert "registration scatter 0.60 px" in reasons[2] and "1.58" in reasons[3]
    assert assess_detection(table, settings, {})["failure_reasons"] == ["unknown"]
    # The same image with its true noise: a few peaks at most, not failed.
    fine = detect_candidates(noise.significance, noise.score, noise.difference, np.zeros(SHAPE, bool), noise.psf,
                             noise.flux_scale, noise.flux_zeropoint, make_wcs(SHAPE), settings)
    assert not assess_detection(fine, settings, record)["failed"]


def test_detect_pair_writes_the_failure_verdict(tmp_path, processed_pair):  # noqa: F811
    pair_dir, _, _ = processed_pair
    verdict = json.loads((pair_dir / "candidates.json").read_text())
    assert not verdict["failed"] and verdict["failure_reasons"] == [] and not verdict["capped"]
    assert verdict["candidates"] == len(pd.read_csv(pair_dir / "candidates.csv"))
    # A threshold of 1.5 sigma: peaks everywhere, as in a failed subtraction.
    summary = detect_pair(pair_dir, DetectSettings(threshold=1.5), out=tmp_path / "low.csv")
    assert summary["failed"] and summary["failure_reasons"]
    assert json.loads((tmp_path / "low.json").read_text())["failed"]
