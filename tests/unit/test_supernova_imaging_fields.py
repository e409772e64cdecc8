"""Fields (SNe sharing images or sky) and the leak-free, mission-stratified split of the triplet dataset."""

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from astrodag.supernova.imaging.fields import frame_footprint, group_fields, hull_footprint
from astrodag.supernova.imaging.triplets import SPLITS, DatasetSettings, assign_splits, build_dataset

SHAPE = 100  # frame side (pixels of 1")
SIZE = 15  # cut-out side: frames within half a cut-out of each other can share cut-out pixels


def _wcs(ra, dec):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(SHAPE + 1) / 2, (SHAPE + 1) / 2]
    wcs.wcs.cd = np.diag([-1.0, 1.0]) / 3600
    return wcs


def _pair(root, pair_id, sn_name, mission, ra, dec, seed, x_range=(8, 92)):
    """A pair directory: its frame (difference.fits header and blank data) and 12 triplets inside it."""
    directory = root / pair_id
    directory.mkdir(parents=True)
    wcs = _wcs(ra, dec)
    fits.PrimaryHDU(np.zeros((SHAPE, SHAPE), np.float32), header=wcs.to_header()).writeto(directory / "difference.fits")
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(*x_range, 12), rng.uniform(8, 92, 12)
    sky_ra, sky_dec = wcs.pixel_to_world_values(x, y)
    label = (np.arange(12) % 2).astype(np.int8)
    np.savez(directory / "triplets.npz", cutouts=rng.normal(size=(12, 3, SIZE, SIZE)).astype(np.float32), label=label,
             source=np.where(label == 1, "injected", "candidate").astype("<U9"), x=x, y=y, ra=sky_ra, dec=sky_dec,
             significance=np.full(12, 8.0), pair_id=np.array(pair_id), sn_name=np.array(sn_name),
             mission=np.array(mission), filter=np.array("B"))
    return directory / "triplets.npz"


def _offset(ra, dec, east_arcsec):
    return ra + east_arcsec / 3600 / np.cos(np.radians(dec)), dec


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Eleven fields: three of two SNe each (one image shared, overlapping frames, frames 2 px apart) and eight
    single ones; GALEX and PS1 in three fields each."""
    root = tmp_path_factory.mktemp("pairs")
    rows, files = [], []

    def add(sn, mission, ra, dec, reference, science, seed, **options):
        pair_id = f"{sn.replace(' ', '_')}__{mission}__{reference}_{science}"
        files.append(_pair(root, pair_id, sn, mission, ra, dec, seed, **options))
        rows.append({"pair_id": pair_id, "sn_name": sn, "mission": mission, "reference_obsid": reference,
                     "science_obsid": science, "reference_checksum": f"sha{reference}",
                     "science_checksum": f"sha{science}"})

    # M100: two SNe 20" apart, differenced on the same two images (as SN 2019ehk and SN 2020oi): the same
    # candidates and stars are cut from both.
    add("SN A1", "SWIFT", 185.73, 15.82, 1, 2, 1)
    add("SN A2", "SWIFT", 185.73, 15.82, 1, 2, 1)
    # M101: two SNe on different images whose frames overlap.
    add("SN B1", "SWIFT", 210.77, 54.27, 3, 4, 3)
    add("SN B2", "PS1", *_offset(210.77, 54.27, 60.0), 5, 6, 4)
    # Frames 2 px apart, cut-outs near the facing edges: within a few pixels of each other across the gap.
    add("SN C1", "GALEX", 30.0, -10.0, 7, 8, 5, x_range=(96, 99))
    add("SN C2", "GALEX", *_offset(30.0, -10.0, SHAPE + 2.0), 9, 10, 6, x_range=(0, 3))
    singles = ["SWIFT"] * 4 + ["GALEX", "GALEX", "PS1", "PS1"]
    for k, mission in enumerate(singles):
        add(f"SN S{k}", mission, 40.0 + 15 * k, 5.0 * k - 20, 100 + 2 * k, 101 + 2 * k, 10 + k)
    pairs = pd.DataFrame(rows)
    pairs.to_csv(root / "pairs.csv", index=False)
    return files, root / "pairs.csv", pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_image_and_no_sky_position_in_two_splits(survey, tmp_path, seed):
    files, pairs_path, pairs = survey
    settings = DatasetSettings.from_config({"previews": 0, "augment_copies": 0, "min_fields": 3,
                                            "split_fractions": {"train": 0.6, "validation": 0.2, "test": 0.2}})
    summary = build_dataset(files, tmp_path, settings, seed=seed, pairs=pairs_path)
    index = pd.read_parquet(tmp_path / "index.parquet")
    split_of_pair = index.drop_duplicates("pair_id").set_index("pair_id")["split"]
    # No image (obsid or checksum, either role) in two splits.
    for role in ("reference", "science"):
        for column in ("obsid", "checksum"):
            used = pd.concat([pairs[["pair_id", f"reference_{column}"]].set_axis(["pair_id", "key"], axis=1),
                              pairs[["pair_id", f"science_{column}"]].set_axis(["pair_id", "key"], axis=1)])
            used["split"] = used["pair_id"].map(split_of_pair)
            assert used.groupby("key")["split"].nunique().max() == 1, (role, column)
    # No two triplets of different splits within 5 px (5") on the sky.
    sky = SkyCoord(index["ra"].to_numpy() * u.deg, index["dec"].to_numpy() * u.deg)
    first, second, _, _ = sky.search_around_sky(sky, 5 * u.arcsec)
    splits = index["split"].to_numpy()
    assert (splits[first] == splits[second]).all()
    assert summary["field_members"]["SN A1"] == ["SN A1", "SN A2"]
    assert summary["field_members"]["SN B1"] == ["SN B1", "SN B2"]
    assert summary["field_members"]["SN C1"] == ["SN C1", "SN C2"]
    assert summary["field_links"]["shared_observation"] > 0 and summary["field_links"]["sky_overlap"] >= 3
    # Several fields and every mission in each split.
    for split in SPLITS:
        part = summary["fields"][split]
        assert part["missions"] == ["GALEX", "PS1", "SWIFT"], split
        assert part["n_fields"] >= 3 and part["n_fields"] == index.loc[index["split"] == split, "field"].nunique()


def test_fields_from_shared_observations_and_footprints():
    pairs = pd.DataFrame({"pair_id": ["a", "b", "c", "d", "e"], "sn_name": ["SN 1", "SN 2", "SN 3", "SN 4", "SN 4"]})
    # b and c share a reference product (no footprints known); d's frame overlaps a's; e is d's own second pair.
    identities = pd.DataFrame({"pair_id": ["a", "b", "c", "d", "e"], "reference_obsid": [1, 2, 3, 4, 5],
                               "science_obsid": [10, 11, 12, 13, 14],
                               "reference_checksum": ["", "x", "x", "", None]})
    footprints = {"a": np.array([[10.0, 0.0], [10.01, 0.0], [10.01, 0.01], [10.0, 0.01]]),
                  "d": np.array([[10.005, 0.005], [10.02, 0.005], [10.02, 0.02], [10.005, 0.02]]),
                  "b": None, "c": None, "e": np.array([[50.0, 50.0]])}
    field, links = group_fields(pairs, footprints, identities)
    assert field == {"a": "SN 1", "b": "SN 2", "c": "SN 2", "d": "SN 1", "e": "SN 1"}
    assert links == {"shared_observation": 1, "sky_overlap": 1}
    # A science image used as another pair's reference is one product.
    identities.loc[identities["pair_id"] == "e", "reference_obsid"] = 12
    field, _ = group_fields(pairs, {}, identities)
    assert field["e"] == field["c"] == field["d"]


def test_footprints_of_a_frame_and_of_cutout_centres(tmp_path):
    wcs = _wcs(150.0, 2.0)
    fits.PrimaryHDU(np.zeros((SHAPE, SHAPE), np.float32), header=wcs.to_header()).writeto(tmp_path / "difference.fits")
    corners = frame_footprint(tmp_path, margin_px=7)
    sky = SkyCoord(corners[:, 0] * u.deg, corners[:, 1] * u.deg)
    side = sky[0].separation(sky[1]).arcsec
    assert side == pytest.approx(SHAPE + 14, rel=1e-4)
    assert frame_footprint(tmp_path / "none", 7) is None
    x, y = np.array([10.0, 60.0, 30.0]), np.array([10.0, 10.0, 50.0])
    ra, dec = wcs.pixel_to_world_values(x, y)
    outline = hull_footprint(x, y, ra, dec, margin_px=7)
    # Every point of the outline lies 7 px (7") outside the triangle of centres or more, never much further.
    distance = SkyCoord(outline[:, 0] * u.deg, outline[:, 1] * u.deg).separation(
        SkyCoord(ra * u.deg, dec * u.deg)[:, None]).arcsec.min(axis=0)
    assert distance.min() > 6.9 and distance.max() < 7.1 * np.sqrt(2)


def test_split_assignment_puts_every_mission_and_several_fields_in_each_split():
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(14)]
    counts = pd.Series(rng.integers(20, 200, len(names)), index=names)
    missions = {name: {"SWIFT"} for name in names}
    for name in names[:3]:
        missions[name] = {"GALEX"}
    for name in names[3:6]:
        missions[name] = {"PS1", "SWIFT"}
    fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
    for seed in range(5):
        split = assign_splits(counts, fractions, np.random.default_rng(seed), missions, min_fields=3)
        for name in SPLITS:
            fields = [f for f, s in split.items() if s == name]
            assert len(fields) >= 3 and set().union(*(missions[f] for f in fields)) == {"GALEX", "PS1", "SWIFT"}
    # A mission seen in two fields is trained and tested on; in one, trained on only.
    missions[names[2]] = {"SWIFT"}
    split = assign_splits(counts, fractions, np.random.default_rng(0), missions, min_fields=3)
    assert sorted(split[f] for f in names[:2]) == ["test", "train"]
    missions[names[1]] = {"SWIFT"}
    assert assign_splits(counts, fractions, np.random.default_rng(0), missions, min_fields=3)[names[0]] == "train"
    # Four fields of two missions: mission coverage never leaves a split empty.
    two = {name: {"PS1" if i % 2 else "SWIFT"} for i, name in enumerate(names[:4])}
    for seed in range(5):
        split = assign_splits(counts[:4], fractions, np.random.default_rng(seed), two, min_fields=3)
        assert sorted(set(split.values())) == sorted(SPLITS)
        assert {m for f, s in split.items() if s == "test" for m in two[f]} | {
            m for f, s in split.items() if s == "train" for m in two[f]} == {"PS1", "SWIFT"}
    # Too few fields: train keeps one, then test before validation.
    small = assign_splits(counts[:2], fractions, np.random.default_rng(0), min_fields=3)
    assert sorted(small.values()) == ["test", "train"]
