"""Triplet cut-outs per pair, the split dataset, and the four CLI stages of the package."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_stage
from imaging_helpers import DEC, RA, TRANSIENT, processed_pair  # noqa: F401

from astrodag.errors import ConfigError, InputDataError
from astrodag.supernova.imaging.triplets import (
    AUGMENTATIONS,
    INDEX_COLUMNS,
    SOURCES,
    DatasetSettings,
    TripletSettings,
    assign_splits,
    augment,
    build_dataset,
    cut_triplets,
    cutouts,
    normalise,
)

SN_NAMES = ("SN 2011fe", "SN 2014J", "SN 2023ixf", "SN 2017eaw")


def _sn_position(processed_pair):  # noqa: F811
    _, wcs, _ = processed_pair
    ra, dec = wcs.pixel_to_world_values(TRANSIENT[0], TRANSIENT[1])
    return float(ra), float(dec)


def test_normalisation():
    rng = np.random.default_rng(0)
    cutout = rng.normal(10.0, 3.0, (63, 63))
    cutout[5, 5] = np.nan
    cutout[30, 30] = 1e6
    robust = normalise(cutout)
    assert robust[5, 5] == 0 and robust[30, 30] == 30.0
    assert abs(np.median(robust)) < 0.05 and np.median(np.abs(robust)) * 1.4826 == pytest.approx(1.0, rel=0.05)
    l2 = normalise(cutout, "l2")
    assert np.sqrt(np.sum(l2 ** 2)) == pytest.approx(1.0) and l2[5, 5] == 0
    assert not normalise(np.full((9, 9), np.nan)).any()
    assert np.isfinite(normalise(np.ones((9, 9)))).all()
    # sky: the plane's noise, not the cut-out's: the sky level and the source's brightness survive.
    sky = normalise(cutout, "sky", noise=3.0)
    assert sky[5, 5] == 0 and sky[30, 30] == 30.0 and np.median(sky) == pytest.approx(10.0 / 3.0, rel=0.05)
    with pytest.raises(ValueError, match="noise"):
        normalise(cutout, "sky")
    with pytest.raises(ValueError, match="NOISE"):
        cutouts([cutout], np.zeros((63, 63), bool), np.array([31.0]), np.array([31.0]), 9, "sky", 30.0)
    stack, _ = cutouts([cutout], np.zeros((63, 63), bool), np.array([31.0]), np.array([31.0]), 9, "sky", 30.0,
                       noise=[3.0])
    np.testing.assert_allclose(stack[0, 0], normalise(cutout[27:36, 27:36], "sky", noise=3.0))


def test_cut_triplets_labels_and_file(processed_pair, tmp_path):  # noqa: F811
    pair_dir, _, _ = processed_pair
    ra, dec = _sn_position(processed_pair)
    out = tmp_path / "t.npz"
    summary = cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", TripletSettings(), seed=1, out=out)
    injections = pd.read_csv(pair_dir / "injections.csv")
    with np.load(out, allow_pickle=False) as npz:
        cutouts, label, source = npz["cutouts"], npz["label"], npz["source"]
        x, y, significance = npz["x"], npz["y"], npz["significance"]
        assert str(npz["pair_id"]) == "pair1" and str(npz["sn_name"]) == "SN 2011fe" and str(npz["filter"]) == "g"
    assert cutouts.shape == (len(label), 3, 63, 63) and cutouts.dtype == np.float32
    # Only detected fakes are real examples: a kept candidate within match_radius_px of the fake.
    kept = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False).query("kept")
    hit = [np.hypot(kept["x"] - fx, kept["y"] - fy).min() <= 3.0 for fx, fy in injections[["x", "y"]].to_numpy()]
    assert 0 < sum(hit) < len(injections)  # the faintest fakes (S/N ~3) stay below the 5-sigma threshold
    assert summary["per_source"]["sn"] == 1 and summary["per_source"]["injected"] == sum(hit)
    assert summary["undetected_injected"] == len(injections) - sum(hit)
    sn = np.flatnonzero(source == "sn")[0]
    assert x[sn] == pytest.approx(TRANSIENT[0], abs=1e-6) and label[sn] == 1 and significance[sn] > 20
    # The transient is the SN here: its detection must not come back as a bogus candidate.
    bogus = label == 0
    assert np.hypot(x[bogus] - TRANSIENT[0], y[bogus] - TRANSIENT[1]).min() > 3
    assert set(source[label == 1]) == {"sn", "injected"} and set(source[bogus]) <= {"candidate", "artefact"}
    assert summary["per_source"]["artefact"] > 0
    # The difference channel of the SN cut-out peaks at its centre.
    centre = cutouts[sn, 2, 28:35, 28:35].max()
    assert centre == cutouts[sn, 2].max() and centre > 10


def test_sn_outside_the_image_is_left_out(processed_pair, tmp_path):  # noqa: F811
    pair_dir, _, _ = processed_pair
    summary = cut_triplets(pair_dir, RA + 1.0, DEC, "pair1", "SN X", "SYN", "g", out=tmp_path / "t.npz")
    assert summary["per_source"]["sn"] == 0 and summary["per_source"]["injected"] > 0
    with pytest.raises(InputDataError, match="run the difference stage"):
        cut_triplets(tmp_path, RA, DEC, "p", "SN X", "SYN", "g")
    with pytest.raises(ConfigError, match="supernova.triplets.size"):
        TripletSettings.from_config({"size": 64})


@pytest.fixture(scope="module")
def triplet_files(processed_pair, tmp_path_factory):  # noqa: F811
    """Triplets of four 'supernovae' in four fields (the same pair cut four times, moved 1 degree apart on the sky)."""
    pair_dir, _, _ = processed_pair
    ra, dec = _sn_position(processed_pair)
    root = tmp_path_factory.mktemp("triplets")
    files = []
    for seed, name in enumerate(SN_NAMES):
        path = root / f"{seed}.npz"
        cut_triplets(pair_dir, ra, dec, f"pair{seed}", name, "SYN", "g", seed=seed, out=path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        arrays["dec"] = arrays["dec"] + seed
        np.savez(path, **arrays)
        files.append(path)
    return files


def test_dataset_records_one_normalisation_and_refuses_mixed_files(triplet_files, tmp_path):
    settings = DatasetSettings.from_config({"previews": 0, "min_fields": 1})
    assert build_dataset(triplet_files, tmp_path / "one", settings)["normalisation"] == "sky"
    with np.load(triplet_files[1], allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    np.savez(tmp_path / "robust.npz", **{**arrays, "normalisation": np.array("robust")})
    with pytest.raises(InputDataError, match="cut with different normalisations"):
        build_dataset([triplet_files[0], tmp_path / "robust.npz"], tmp_path / "mixed", settings)


def test_build_dataset(triplet_files, tmp_path):
    settings = DatasetSettings.from_config({"bogus_per_real": 1.0, "augment_copies": 1, "previews": 4,
                                            "min_fields": 1})
    summary = build_dataset(triplet_files, tmp_path, settings, seed=3)
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert tuple(index.columns) == INDEX_COLUMNS
    # Split by field (here one SN each): each in exactly one split, every split used.
    assert (index.groupby("field")["split"].nunique() == 1).all() and index["split"].nunique() == 3
    assert index["field"].nunique() == 4 and summary["field_links"] == {"shared_observation": 0, "sky_overlap": 0}
    # The base rate's counts: every cut triplet per source, before subsampling.
    table = pd.concat([pd.Series(np.load(path)["source"]) for path in triplet_files])
    assert summary["available_per_source"] == {src: int((table == src).sum()) for src in SOURCES}
    assert sum(summary["fields"][split]["n_fields"] for split in ("train", "validation", "test")) == 4
    for split in ("train", "validation", "test"):
        array = np.load(tmp_path / f"{split}.npy", mmap_mode="r")
        part = index[index["split"] == split]
        assert array.shape == (len(part), 3, 63, 63) and array.dtype == np.float32
        assert sorted(part["row"]) == list(range(len(part)))
        counts = summary["triplets"][split]
        assert counts["total"] == len(part) and counts["real"] == int((part["label"] == 1).sum())
        originals = part[part["augmentation"] == "none"]
        assert (originals["label"] == 0).sum() <= (originals["label"] == 1).sum()  # bogus_per_real = 1
        assert (tmp_path / "previews" / f"{split}.png").is_file()
    train = index[index["split"] == "train"]
    assert (train["augmentation"] != "none").sum() == (train["augmentation"] == "none").sum()
    assert (index.loc[index["split"] != "train", "augmentation"] == "none").all()
    # An augmented row is its original transformed.
    array = np.load(tmp_path / "train.npy", mmap_mode="r")
    copy = train[train["augmentation"] != "none"].iloc[0]
    original = train[(train["augmentation"] == "none") & (train["pair_id"] == copy["pair_id"])
                     & (train["x"] == copy["x"]) & (train["y"] == copy["y"])].iloc[0]
    np.testing.assert_array_equal(array[copy["row"]], augment(np.asarray(array[original["row"]]),
                                                              copy["augmentation"]))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["triplets"] == summary["triplets"] and saved["cutout_shape"] == [3, 63, 63]

    again = tmp_path / "again"
    build_dataset(triplet_files, again, settings, seed=3)
    pd.testing.assert_frame_equal(pd.read_parquet(again / "index.parquet"), index)
    np.testing.assert_array_equal(np.load(again / "test.npy"), np.load(tmp_path / "test.npy"))


def test_split_assignment_and_augmentations():
    counts = pd.Series({"a": 100, "b": 10, "c": 10, "d": 50, "e": 30})
    splits = assign_splits(counts, {"train": 0.7, "validation": 0.15, "test": 0.15}, np.random.default_rng(0))
    assert set(splits.values()) == {"train", "validation", "test"}
    only_train = assign_splits(counts, {"train": 1.0, "validation": 0.0, "test": 0.0}, np.random.default_rng(0))
    assert set(only_train.values()) == {"train"}
    cutout = np.random.default_rng(1).normal(size=(3, 9, 9))
    variants = [augment(cutout, name) for name in AUGMENTATIONS]
    assert all(not np.array_equal(a, b) for i, a in enumerate(variants) for b in variants[i + 1:])
    np.testing.assert_array_equal(variants[0], cutout)
    with pytest.raises(ConfigError, match="supernova.dataset.split_fractions"):
        DatasetSettings.from_config({"split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.2}})
    with pytest.raises(ConfigError, match="supernova.dataset.augment_splits"):
        DatasetSettings.from_config({"augment_splits": ["training"]})


# ---- CLI ---------------------------------------------------------------------------------


def test_cli_stages(processed_pair, tmp_path):  # noqa: F811
    source_dir, _, _ = processed_pair
    pair_dir = tmp_path / "SN2011fe__SYN_X_g__1_2"
    pair_dir.mkdir()
    for name in ("science.fits", "reference.fits"):
        shutil.copy(source_dir / name, pair_dir / name)
    ra, dec = _sn_position(processed_pair)
    # Two supernovae in the field: the second is never a bogus example either.
    other = [float(v) for v in processed_pair[1].pixel_to_world_values(30.0, 40.0)]
    pd.DataFrame({"sn_name": ["SN 2011fe", "SN 2099zz"], "ra": [ra, other[0]], "dec": [dec, other[1]],
                  "discovery_mjd": [55797.2, 88000.0], "type": ["Ia", "II"], "redshift": [0.0008, 0.0008],
                  "host": ["M101", "M101"]}).to_csv(tmp_path / "catalog.csv", index=False)
    pd.DataFrame({"pair_id": [pair_dir.name], "sn_name": ["SN 2011fe"], "mission": ["SYN"], "filter": ["g"]}) \
        .to_csv(tmp_path / "pairs.csv", index=False)
    runs = [
        ["difference", "--science", str(pair_dir / "science.fits"), "--reference", str(pair_dir / "reference.fits"),
         "--out-dir", str(pair_dir), "--settings", '{"inject": {"count": 4}}', "--seed", "2"],
        ["detect", "--pair-dir", str(pair_dir), "--settings", "{threshold: 5.5}", "--out",
         str(pair_dir / "candidates.csv")],
        ["triplets", "--pair-dir", str(pair_dir), "--pairs", str(tmp_path / "pairs.csv"), "--pair-id", pair_dir.name,
         "--catalog", str(tmp_path / "catalog.csv"), "--seed", "2", "--out", str(pair_dir / "triplets.npz"),
         "--detection-settings", "{threshold: 5.5}"],
        ["build-dataset", "--triplets", str(pair_dir / "triplets.npz"), "--out-dir", str(tmp_path / "dataset"),
         "--settings", '{"split_fractions": {"train": 1.0, "validation": 0.0, "test": 0.0}}'],
    ]
    for argv in runs:
        run_stage("supernova", *argv)
    with np.load(pair_dir / "triplets.npz") as npz:
        assert str(npz["sn_name"]) == "SN 2011fe" and (npz["source"] == "sn").sum() == 1
        assert json.loads(str(npz["summary"]))["catalog_supernovae_in_image"] == 2
        assert not _near(npz["x"], npz["y"], [(30.0, 40.0)]).any()
    # The imaging report's per-pair columns: how many fakes became real examples, how many were dropped and why.
    from astrodag.supernova.imaging.summary import _triplet_summary

    fates = _triplet_summary(pair_dir)
    assert fates["fakes_injected"] == 4
    assert fates["fakes_real"] + sum(v for k, v in fates.items() if k.startswith("fakes_dropped_")) == 4
    assert len(np.load(tmp_path / "dataset" / "train.npy", mmap_mode="r")) > 0
    assert len(np.load(tmp_path / "dataset" / "test.npy", mmap_mode="r")) == 0
    # A directory stands for its .npz files (the reviewed triplets of the active-learning loop).
    run_stage("supernova", "build-dataset", "--triplets", pair_dir, "--out-dir", tmp_path / "from_dir",
              "--settings", '{"split_fractions": {"train": 1.0, "validation": 0.0, "test": 0.0}}')
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "from_dir" / "index.parquet"),
                                  pd.read_parquet(tmp_path / "dataset" / "index.parquet"))

    with pytest.raises(InputDataError, match="pair_id 'nope'"):
        run_stage("supernova", "triplets", "--pair-dir", pair_dir, "--pairs", tmp_path / "pairs.csv",
                  "--pair-id", "nope", "--catalog", tmp_path / "catalog.csv")
    with pytest.raises(ConfigError, match="supernova.detection.threshhold"):
        run_stage("supernova", "detect", "--pair-dir", pair_dir, "--settings", '{"threshhold": 5}')


def test_undetected_supernova_is_not_cut_as_a_real_example(processed_pair, tmp_path):  # noqa: F811
    # A science epoch long after discovery: the SN has faded and no candidate sits at its position.
    pair_dir, _, _ = processed_pair
    faded = tmp_path / "faded"
    shutil.copytree(pair_dir, faded)
    candidates = pd.read_csv(faded / "candidates.csv", keep_default_na=False)
    near = np.hypot(candidates["x"] - TRANSIENT[0], candidates["y"] - TRANSIENT[1]) <= 3
    candidates[~near].to_csv(faded / "candidates.csv", index=False)
    ra, dec = _sn_position(processed_pair)
    summary = cut_triplets(faded, ra, dec, "pair1", "SN 2011fe", "SYN", "g", TripletSettings(), seed=1)
    assert summary["per_source"]["sn"] == 0 and summary["per_source"]["injected"] > 0


def test_a_reviewed_cutout_replaces_the_pairs_own_copy(processed_pair, tmp_path):  # noqa: F811
    pair_dir, _, _ = processed_pair
    ra, dec = _sn_position(processed_pair)
    own = tmp_path / "own.npz"
    cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", TripletSettings(), seed=1, out=own)
    with np.load(own, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    bogus = int(np.flatnonzero(arrays["label"] == 0)[0])
    # A reviewer says this "bogus" candidate is real.
    reviewed = {key: (value[bogus:bogus + 1] if value.ndim else value) for key, value in arrays.items()}
    reviewed["label"] = np.array([1], np.int8)
    reviewed["source"] = np.array(["reviewed"], dtype="<U9")
    np.savez(tmp_path / "reviewed.npz", **reviewed)
    settings = DatasetSettings.from_config({"previews": 0, "bogus_per_real": None, "augment_copies": 0,
                                            "split_fractions": {"train": 1.0, "validation": 0.0, "test": 0.0}})
    summary = build_dataset([own, tmp_path / "reviewed.npz"], tmp_path / "dataset", settings, seed=0)
    index = pd.read_parquet(tmp_path / "dataset" / "index.parquet")
    same = index[(index["x"] == arrays["x"][bogus]) & (index["y"] == arrays["y"][bogus])]
    assert len(same) == 1 and same["source"].iloc[0] == "reviewed" and same["label"].iloc[0] == 1
    assert summary["triplets"]["train"]["total"] == len(arrays["label"])
    assert summary["triplets"]["train"]["per_source"]["reviewed"] == 1


# ---- labels: catalogue supernovae and fakes --------------------------------------------------


def _copy_pair(processed_pair, directory):  # noqa: F811
    pair_dir, _, _ = processed_pair
    shutil.copytree(pair_dir, directory)
    return directory


def _near(x, y, points, radius=3.0):
    points = np.asarray(points, float).reshape(-1, 2)
    return np.hypot(x[:, None] - points[None, :, 0], y[:, None] - points[None, :, 1]).min(axis=1) <= radius


def test_no_catalogue_supernova_becomes_a_bogus_example(processed_pair, tmp_path):  # noqa: F811
    """The SN rejected by a shape cut, another catalogue SN of the field and one among the bright sources."""
    pair_dir = _copy_pair(processed_pair, tmp_path / "pair")
    _, wcs, _ = processed_pair
    ra, dec = _sn_position(processed_pair)
    # A clean subtraction leaves no bogus candidate: one is added on empty sky.
    candidates = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False)
    extra = candidates.iloc[[0]].assign(candidate_id=candidates["candidate_id"].max() + 1, x=30.0, y=112.0)
    pd.concat([candidates, extra], ignore_index=True).to_csv(pair_dir / "candidates.csv", index=False)
    # Where the bogus examples went without the other supernovae: the first candidate and the first star.
    plain = cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", seed=1, out=tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as npz:
        source, x, y = npz["source"], npz["x"], npz["y"]
    assert plain["per_source"]["sn"] == 1
    other = [(x[source == kind][0], y[source == kind][0]) for kind in ("candidate", "artefact")]
    # The SN's own candidate rejected as extended (a residual on a nucleus).
    candidates = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False)
    at_sn = np.hypot(candidates["x"] - TRANSIENT[0], candidates["y"] - TRANSIENT[1]) <= 3
    assert at_sn.sum() == 1
    candidates.loc[at_sn, ["kept", "reject_reason"]] = [False, "extended"]
    candidates.to_csv(pair_dir / "candidates.csv", index=False)

    positions = [tuple(float(v) for v in wcs.pixel_to_world_values(px, py)) for px, py in other]
    summary = cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", seed=1, out=tmp_path / "t.npz",
                           catalog_positions=[(ra, dec), *positions, (RA + 1.0, DEC)])
    with np.load(tmp_path / "t.npz") as npz:
        label, x, y = npz["label"], npz["x"], npz["y"]
    assert summary["catalog_supernovae_in_image"] == 3  # the pair's own (given twice) and two more
    assert summary["per_source"]["sn"] == 0 and summary["undetected_sn"] == 1
    bogus = label == 0
    assert not _near(x[bogus], y[bogus], [TRANSIENT[:2], *other]).any()


def test_a_fake_is_real_only_when_position_flux_and_significance_agree(processed_pair, tmp_path):  # noqa: F811
    pair_dir = _copy_pair(processed_pair, tmp_path / "pair")
    ra, dec = _sn_position(processed_pair)
    injections = pd.read_csv(pair_dir / "injections.csv")
    candidates = pd.read_csv(pair_dir / "candidates.csv", keep_default_na=False)
    kept = candidates[candidates["kept"].astype(bool)]
    distance = np.hypot(kept["x"].to_numpy()[None] - injections[["x"]].to_numpy(),
                        kept["y"].to_numpy()[None] - injections[["y"]].to_numpy())
    matched = distance.min(axis=1) <= 3.0
    assert matched.sum() >= 3 and (~matched).sum() >= 1
    # A matched fake whose measured flux is three times the injected one (a blend, a host residual) ...
    bright = int(np.flatnonzero(matched)[np.argmax(injections["snr"].to_numpy()[matched])])
    candidates.loc[kept.index[np.argmin(distance[bright])], "flux"] *= 3.0
    # ... and a fake far below the limit that a noise peak at 5.3 sigma happens to match.
    faint = int(np.flatnonzero(~matched)[0])
    fake = injections.iloc[faint]
    sigma_f = fake["flux"] / 2.0  # an expected significance of 2
    noise_peak = {**candidates.iloc[0].to_dict(), "candidate_id": 999, "x": fake["x"] + 0.5, "y": fake["y"],
                  "significance": 5.3, "flux": 5.3 * sigma_f, "kept": True, "reject_reason": ""}
    candidates = pd.concat([candidates, pd.DataFrame([noise_peak])], ignore_index=True)
    candidates.to_csv(pair_dir / "candidates.csv", index=False)

    summary = cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", seed=1, out=tmp_path / "t.npz")
    fakes = summary["fakes"]
    assert fakes["injected"] == len(injections)
    assert fakes["dropped"]["flux_mismatch"] == 1 and fakes["dropped"]["below_threshold"] == 1
    assert fakes["real"] == matched.sum() - 1 == summary["per_source"]["injected"]
    assert fakes["real"] + sum(fakes["dropped"].values()) == fakes["injected"]
    with np.load(tmp_path / "t.npz") as npz:
        x, y = npz["x"], npz["y"]
        assert json.loads(str(npz["summary"]))["fakes"] == fakes and str(npz["normalisation"]) == "sky"
    dropped = injections.iloc[[bright, faint]][["x", "y"]].to_numpy()
    # Neither a real example nor a bogus one.
    assert not _near(x, y, dropped).any()
    # A stricter detection threshold drops more: the expected significance must reach it.
    strict = cut_triplets(pair_dir, ra, dec, "pair1", "SN 2011fe", "SYN", "g", seed=1, out=tmp_path / "s.npz",
                          detection_threshold=1e4)
    assert strict["fakes"]["real"] == 0 and strict["per_source"]["sn"] == 1


# ---- normalisation on photon-counting data ----------------------------------------------------


def _photon_counting_pair(directory, sky=0.15, seed=0):
    """A GALEX-like pair: 0.15 counts a pixel of sky, Poisson noise, GAIN 1; the SN at TRANSIENT (300 counts)."""
    from imaging_helpers import make_wcs, render, sky_stars, write_fits

    rng = np.random.default_rng(seed)
    shape = (144, 144)
    ra, dec, flux = sky_stars(rng, 15, shape, flux=(300.0, 3000.0))
    wcs = make_wcs(shape)
    images = {}
    for name, fwhm, extra in (("science", 3.0, TRANSIENT[:2] + (300.0,)), ("reference", 3.0, None)):
        x, y = wcs.world_to_pixel_values(ra, dec)
        expected = sky + render(shape, x, y, flux, fwhm)
        if extra is not None:
            expected += render(shape, [extra[0]], [extra[1]], [extra[2]], fwhm)
        images[name] = write_fits(directory / f"{name}.fits", rng.poisson(expected).astype(np.float32), wcs,
                                  GAIN=1.0, EXPTIME=1000.0)
    return images["science"], images["reference"], wcs


def test_sky_normalisation_keeps_photon_counting_stamps_readable(tmp_path):
    from astrodag.supernova.imaging.pipeline import DifferenceSettings, detect_pair, difference_pair

    pair_dir = tmp_path / "SN2004dj__GALEX_FUV__1_2"
    pair_dir.mkdir()
    science, reference, wcs = _photon_counting_pair(pair_dir)
    difference_pair(science, reference, pair_dir, DifferenceSettings.from_config({"inject": {"count": 4}}))
    detect_pair(pair_dir)
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(TRANSIENT[0], TRANSIENT[1]))
    fractions = {}
    for method in ("sky", "robust"):
        summary = cut_triplets(pair_dir, ra, dec, "p", "SN 2004dj", "GALEX", "FUV",
                               TripletSettings(normalisation=method), out=tmp_path / f"{method}.npz")
        assert summary["per_source"]["sn"] == 1
        with np.load(tmp_path / f"{method}.npz") as npz:
            cut, source = npz["cutouts"], npz["source"]
        science_channel = cut[:, 0]
        fractions[method] = float(np.mean(science_channel >= 30.0))
        if method == "sky":
            sn = cut[np.flatnonzero(source == "sn")[0], 0]
            # Sky pixels hold 0 or 1 photon, about 1 (the sky noise and one photon in quadrature) apart,
            # far below the SN's core.
            assert np.percentile(science_channel, 90) < 1.5 and sn[29:34, 29:34].max() > 10.0
    # Per-stamp MAD scaling collapses on an almost empty sky: every photon clips (14 % of the sky pixels);
    # scaled by the sky noise, only the cores of the brightest stars do.
    assert fractions["robust"] > 0.1
    assert fractions["sky"] < 0.02
