"""The synthetic survey: archive-like FITS, a WCS that puts the supernova where it is, determinism, yields."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from cli_helpers import run_stage

from astrodag.errors import ConfigError
from astrodag.supernova.archive.backends import LocalBackend
from astrodag.supernova.archive.catalog import load_catalog
from astrodag.supernova.archive.download import write_plain_fits
from astrodag.supernova.archive.pairing import REASONS, PairSettings, footprint, pair_survey
from astrodag.supernova.archive.synthetic import MISSIONS, TRUTH_COLUMNS, SurveySettings, generate_survey

CATALOG = Path(__file__).resolve().parents[2] / "resources" / "supernovae.csv"
SMALL = {"image_size": 64, "stars_per_image": [10, 20]}


def sub_catalog(path, *names):
    catalog = pd.read_csv(CATALOG)
    catalog[catalog["sn_name"].isin(names)].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    catalog = sub_catalog(root / "sne.csv", "SN 2011fe", "SN 2023ixf", "SN 2012aw", "SN 2013ej")
    summary = generate_survey(catalog, root / "archive", SurveySettings.from_config(SMALL), seed=7)
    return root, catalog, summary


def image_hdu(hdul):
    return next(h for h in hdul if h.data is not None and h.data.ndim == 2 and h.name != "DQ")


def test_files_are_archive_like_fits(survey):
    root, catalog, summary = survey
    archive = root / "archive"
    observations = pd.read_csv(archive / "observations.csv", dtype={"obsid": str})
    assert summary["files_by_format"].keys() == {"fits", "fits.gz", "fits.fz"}
    assert summary["non_image_products"] == 1
    layouts, saturated = set(), 0
    for row in observations.itertuples():
        body = (archive / row.dataURL).read_bytes()
        assert len(body) == row.size and hashlib.sha256(body).hexdigest() == row.checksum
        with fits.open(archive / row.dataURL) as hdul:
            if row.dataproduct_type != "image":
                assert hdul[1].columns.names == ["WAVE", "FLUX"]
                continue
            hdu = image_hdu(hdul)
            layouts.add((row.dataURL.rsplit(".", 1)[-1], hdu.name))
            header = hdu.header
            assert hdu.data.shape == (64, 64) and hdu.data.dtype.newbyteorder("=") == np.float32
            for key in ("EXPTIME", "FILTER", "TELESCOP", "INSTRUME", "MJD-OBS", "BUNIT", "GAIN", "SATURATE",
                        "ZEROPT", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
                assert key in header, key
            wcs = WCS(header)
            assert wcs.has_celestial and wcs.wcs.ctype[0] == "RA---TAN"
            assert header["FILTER"] == row.filters and header["MJD-OBS"] == pytest.approx(row.t_min)
            assert np.isclose(abs(np.linalg.det(wcs.pixel_scale_matrix)) ** 0.5 * 3600,
                              MISSIONS[row.obs_collection].pixel_scale)
            # Saturated pixels are clipped and flagged (to within the quantisation of .fits.fz).
            flagged = (hdul["DQ"].data & 1).astype(bool)
            saturated += flagged.sum()
            assert np.allclose(hdu.data[flagged], header["SATURATE"], rtol=1e-4)
            assert (hdu.data[~flagged] < header["SATURATE"] * (1 + 1e-4)).all()
    assert saturated > 0
    assert {name for _, name in layouts} == {"PRIMARY", "SCI"}  # images in primary and in extension HDUs


def test_truth_matches_the_wcs_and_the_footprints(survey):
    root, catalog, _ = survey
    archive = root / "archive"
    observations = pd.read_csv(archive / "observations.csv", dtype={"obsid": str}).set_index("obsid")
    truth = pd.read_csv(archive / "truth.csv", dtype={"obsid": str})
    assert list(truth.columns) == list(TRUTH_COLUMNS)
    sne = load_catalog(catalog).set_index("sn_name")
    for row in truth.itertuples():
        obs = observations.loc[row.obsid]
        with fits.open(archive / obs.dataURL) as hdul:
            x, y = WCS(image_hdu(hdul).header).world_to_pixel(SkyCoord(row.sn_ra, row.sn_dec, unit="deg"))
        assert (x, y) == pytest.approx((row.x, row.y), abs=1e-6)
        assert footprint(obs.s_region, row.sn_ra, row.sn_dec).contains(footprint(
            f"CIRCLE {row.sn_ra} {row.sn_dec} 0.00001", row.sn_ra, row.sn_dec))
        after = row.mjd > sne.loc[row.sn_name, "discovery_mjd"]
        assert row.sn_injected == after and (row.sn_flux > 0) == after and np.isfinite(row.sn_mag) == after


def test_fz_files_read_back_like_the_plain_ones(survey, tmp_path):
    root, _, _ = survey
    archive = root / "archive"
    observations = pd.read_csv(archive / "observations.csv")
    name = observations.loc[observations["dataURL"].str.endswith(".fits.fz"), "dataURL"].iloc[0]
    with fits.open(archive / name) as hdul:
        assert isinstance(hdul["SCI"], fits.CompImageHDU) and hdul["SCI"].header["ZEROPT"] > 0
        data = hdul["SCI"].data
        assert np.isfinite(data).all() and np.ptp(data) > 0
    write_plain_fits(archive / name, tmp_path / "plain.fits")
    with fits.open(tmp_path / "plain.fits") as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, data)


def aperture_rate(path, x, y, radius):
    """Background-subtracted aperture sum per second at (x, y), background from an annulus median."""
    with fits.open(path) as hdul:
        hdu = image_hdu(hdul)
        data, exptime = hdu.data.astype(float), hdu.header["EXPTIME"]
    yy, xx = np.mgrid[: data.shape[0], : data.shape[1]]
    r = np.hypot(xx - x, yy - y)
    background = np.median(data[(r > radius + 4) & (r < radius + 12)])
    inside = r <= radius
    return (data[inside] - background).sum() / exptime, np.sqrt(np.clip(data[inside], 1, None).sum()) / exptime


def test_supernova_flux_is_at_its_catalogue_position_after_discovery_only(tmp_path):
    catalog = sub_catalog(tmp_path / "sne.csv", "SN 2012aw")
    settings = SurveySettings.from_config({
        "missions": ["SWIFT"], "image_size": 96, "bands_per_mission": [1, 1], "visits_before": [2, 2],
        "visits_after": [2, 2], "reference_probability": 1.0, "sn_peak_mag": [13.0, 13.0], "host_mag": [17, 17],
        "stars_per_image": [5, 5], "saturated_stars": 0, "cosmic_rays_per_image": [0, 0],
        "poor_overlap_observations": 0, "outside_footprint_observations": 0, "non_image_products": 0})
    generate_survey(catalog, tmp_path / "archive", settings, seed=3)
    truth = pd.read_csv(tmp_path / "archive" / "truth.csv", dtype={"obsid": str}).sort_values("mjd")
    urls = pd.read_csv(tmp_path / "archive" / "observations.csv", dtype={"obsid": str}).set_index("obsid")["dataURL"]
    assert truth["sn_injected"].tolist() == [False, False, True, True]
    radius = 3 * 2.5 / 1.004  # 3 FWHM in UVOT pixels: 96 % of a beta = 3 Moffat
    rates = [aperture_rate(tmp_path / "archive" / urls[row.obsid], row.x, row.y, radius)
             for row in truth.itertuples()]
    (ref1, noise1), (ref2, noise2) = rates[:2]
    assert abs(ref2 - ref1) < 5 * np.hypot(noise1, noise2)  # nothing new before discovery
    exptime = [fits.getval(tmp_path / "archive" / urls[o], "EXPTIME", ext=image_index(tmp_path / "archive" / urls[o]))
               for o in truth["obsid"]]
    for k in (2, 3):
        injected = truth["sn_flux"].iloc[k] / exptime[k]
        assert rates[k][0] - ref2 == pytest.approx(0.96 * injected, rel=0.05)


def image_index(path):
    with fits.open(path) as hdul:
        return next(i for i, h in enumerate(hdul) if h.data is not None and h.data.ndim == 2 and h.name != "DQ")


def test_same_seed_same_bytes_other_seed_other_sky(tmp_path):
    catalog = sub_catalog(tmp_path / "sne.csv", "SN 2012aw", "SN 2017eaw")
    settings = SurveySettings.from_config({**SMALL, "image_size": 48})
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_survey(catalog, tmp_path / name, settings, seed=seed)
    table = {name: (tmp_path / name / "observations.csv").read_text() for name in "abc"}
    assert table["a"] == table["b"]
    assert (tmp_path / "a" / "truth.csv").read_text() == (tmp_path / "b" / "truth.csv").read_text()
    assert table["a"] != table["c"]


def test_settings_validation_and_round_trip():
    settings = SurveySettings.from_config({"missions": ["PS1"], "visits_after": [2, 3],
                                           "format_weights": {"fits.fz": 1}})
    assert settings.missions == ("PS1",) and settings.format_weights == {"fits": 0.0, "fits.gz": 0.0, "fits.fz": 1.0}
    assert SurveySettings.from_config(SurveySettings().as_dict()) == SurveySettings()
    assert SurveySettings.from_config({"image_size": {"PS1": 128}}).image_size == {"SWIFT": 256, "GALEX": 256,
                                                                                   "PS1": 128}
    assert set(SurveySettings.from_config({"image_size": 64}).image_size.values()) == {64}
    for config, message in [({"image_sise": 64}, "supernova.survey.image_sise': unknown key"),
                            ({"missions": ["HST"]}, "'HST' is not one of"),
                            ({"missions": []}, "non-empty list"),
                            ({"visits_after": [3, 1]}, "lower bound 3 is above the upper bound 1"),
                            ({"image_size": 10}, "must be >= 32"),
                            ({"image_size": {"HST": 64}}, "image_size.HST': unknown key"),
                            ({"format_weights": {"fits.bz2": 1}}, "format_weights.fits.bz2': unknown key"),
                            ({"format_weights": {"fits": 0}}, "at least one format")]:
        with pytest.raises(ConfigError, match=message):
            SurveySettings.from_config(config)
    with pytest.raises(ConfigError, match="'seed'"):
        generate_survey(CATALOG, "/nonexistent", SurveySettings(), seed=-1)


def test_demo_survey_through_the_local_archive_and_the_pair_rule(tmp_path):
    # The whole demo (default settings, full catalogue): the yield the workflow's demo relies on.
    summary = generate_survey(CATALOG, tmp_path / "archive", SurveySettings(), seed=1)
    assert summary["elapsed_s"] < 40
    backend = LocalBackend(tmp_path / "archive")
    paths = []
    for sn in load_catalog(CATALOG).itertuples():
        frame = backend.query(sn.ra, sn.dec, 3.0)
        frame.insert(0, "sn_name", sn.sn_name)
        paths.append(tmp_path / f"{sn.safe_name}.csv")
        frame.to_csv(paths[-1], index=False)
    # The demo's pairing (config.yaml): one pair per SN.
    result = pair_survey(paths, CATALOG, PairSettings.from_config({"max_pairs_per_sn": 1}), tmp_path / "pairs.csv",
                         tmp_path / "decisions.csv", tmp_path / "yield.csv")
    assert 18 <= result["supernovae_with_pairs"] <= 26 and result["pairs"] == result["supernovae_with_pairs"]
    assert all(result["rejections"][reason] > 0 for reason in REASONS[1:]), result["rejections"]


def test_cli_stages_simulate_query_pair_download(tmp_path):
    catalog = sub_catalog(tmp_path / "sne.csv", "SN 2012aw", "SN 2017eaw")
    archive, queries = tmp_path / "archive", []

    def run(*argv):
        run_stage("supernova", *argv)

    run("simulate", "--catalog", catalog, "--out-dir", archive, "--seed", 2, "--settings",
        '{"image_size": 48, "missions": ["SWIFT"], "reference_probability": 1.0}')
    for name in ("SN_2012aw", "SN_2017eaw"):
        queries.append(tmp_path / f"{name}.csv")
        run("query", "--catalog", catalog, "--sn", name, "--backend", "local", "--archive-dir", archive,
            "--radius-arcmin", 2, "--missions", "SWIFT", "--out", queries[-1])
    run("pair", "--observations", *queries, "--catalog", catalog, "--settings", '{"max_pairs_per_sn": 1}',
        "--pairs", tmp_path / "pairs.csv", "--decisions", tmp_path / "decisions.csv",
        "--yield-summary", tmp_path / "yield.csv")
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert sorted(pairs["sn_name"]) == ["SN 2012aw", "SN 2017eaw"]
    pair_id = pairs["pair_id"].iloc[0]
    run("download", "--pairs", tmp_path / "pairs.csv", "--pair-id", pair_id, "--backend", "local",
        "--archive-dir", archive, "--cache-dir", tmp_path / "cache", "--out-dir", tmp_path / pair_id)
    with fits.open(tmp_path / pair_id / "science.fits") as hdul:
        assert WCS(image_hdu(hdul).header).has_celestial
    with pytest.raises(ConfigError, match="supernova.pairing.max_pairs': unknown key"):
        run("pair", "--observations", *queries, "--catalog", catalog, "--settings", '{"max_pairs": 1}',
            "--pairs", tmp_path / "p.csv", "--decisions", tmp_path / "d.csv", "--yield-summary", tmp_path / "y.csv")
