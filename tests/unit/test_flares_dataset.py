"""Windows, labels, region-wise splits and the dataset files of the flare track."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from astrodag.errors import InputDataError
from astrodag.flares.dataset import (
    assign_splits,
    build_windows,
    label_column,
    load_dataset,
    prepare_dataset,
    write_dataset,
)
from astrodag.flares.sharp import SHARP_KEYWORDS, goes_class_to_flux, read_flare_events, read_keyword_table
from astrodag.flares.synthetic import simulate_sharp_dataset, write_synthetic_dataset

T0 = pd.Timestamp("2012-01-01T00:00:00Z")
SPLITS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def sample_values(harpnum: int, hour: int) -> list[float]:
    """Keyword j of a sample: 10 * hour + j, offset by region, exact in float32."""
    return [1000.0 * (harpnum == 202) + 10.0 * hour + j for j in range(len(SHARP_KEYWORDS))]


@pytest.fixture
def tiny(tmp_path):
    """Two regions read through the real file readers.

    Region 101 has hours 0-4 and 6-9 (a gap at hour 5); region 202 has hours
    0-5 with a NaN at hour 2 (dropped on reading, so a gap). Flares: M1.0 of
    101 at hour 4, B5.0 of 202 at 5:30, C2.0 of 202 at 6:30 (after its last
    sample), an unassigned X flare, and an M flare of a region without samples.
    """
    rows = []
    for hour in [0, 1, 2, 3, 4, 6, 7, 8, 9]:
        rows.append([(T0 + pd.Timedelta(hours=hour)).isoformat(), 101, *sample_values(101, hour)])
    for hour in range(6):
        values = sample_values(202, hour)
        if hour == 2:
            values[3] = np.nan
        rows.append([(T0 + pd.Timedelta(hours=hour)).isoformat(), 202, *values])
    keywords_path = tmp_path / "keywords.csv"
    pd.DataFrame(rows, columns=["timestamp", "HARPNUM", *SHARP_KEYWORDS]).to_csv(keywords_path, index=False)
    events_path = tmp_path / "events.csv"
    events_path.write_text(
        "HARPNUM,peak_time,goes_class\n"
        "101,2012-01-01T04:00:00Z,M1.0\n"
        "202,2012-01-01T05:30:00Z,B5.0\n"
        "202,2012-01-01T06:30:00Z,C2.0\n"
        ",2012-01-01T03:00:00Z,X2.0\n"
        "999,2012-01-01T03:00:00Z,M3.0\n"
    )
    keywords, _ = read_keyword_table(keywords_path)
    events, _ = read_flare_events(events_path)
    return keywords, events


def hours(index):
    return ((index["end_time"] - T0) / pd.Timedelta(hours=1)).astype(int).tolist()


def test_tiny_table_gives_the_expected_windows_and_labels(tiny):
    keywords, events = tiny
    features, index = build_windows(
        keywords, events, window_steps=3, horizons_hours=(1, 2), flare_classes=("C", "M")
    )
    assert list(index.columns) == [
        "HARPNUM",
        "end_time",
        "label_C_1h",
        "label_C_2h",
        "label_M_1h",
        "label_M_2h",
    ]
    assert index["HARPNUM"].tolist() == [101, 101, 101, 101, 101, 202]
    assert hours(index) == [2, 3, 4, 8, 9, 5]
    assert str(index["end_time"].dtype) == "datetime64[ns, UTC]"
    # The M flare at hour 4: in (2, 2 + 2h] (end + horizon is included) and in (3, 3 + 1h],
    # but not in the future of the window ending at 4 (a flare at end_time is excluded).
    assert index["label_M_1h"].tolist() == [0, 1, 0, 0, 0, 0]
    assert index["label_M_2h"].tolist() == [1, 1, 0, 0, 0, 0]
    # The C flare of 202 at 6:30 is after its last sample but within (5, 7]; the B flare never counts.
    assert index["label_C_1h"].tolist() == [0, 1, 0, 0, 0, 0]
    assert index["label_C_2h"].tolist() == [1, 1, 0, 0, 0, 1]
    assert all(index[name].dtype == np.uint8 for name in index.columns[2:])

    assert features.shape == (6, 3, 9) and features.dtype == np.float32
    for k, (harpnum, end) in enumerate(zip(index["HARPNUM"], hours(index), strict=True)):
        expected = [sample_values(harpnum, hour) for hour in range(end - 2, end + 1)]
        np.testing.assert_array_equal(features[k], np.array(expected, dtype=np.float32))


def test_stride(tiny):
    keywords, events = tiny
    _, index = build_windows(keywords, events, window_steps=3, stride=2, horizons_hours=(1,))
    # Every second end within each run of consecutive samples, starting with the first full window.
    assert list(zip(index["HARPNUM"], hours(index), strict=True)) == [(101, 2), (101, 4), (101, 8), (202, 5)]


def test_window_longer_than_every_run_gives_no_windows(tiny):
    keywords, events = tiny
    features, index = build_windows(keywords, events, window_steps=6)
    assert features.shape == (0, 6, 9) and len(index) == 0
    assert "label_M5_72h" in index.columns


def test_unsorted_input_and_events_from_goes_class(tiny):
    keywords, events = tiny
    expected = build_windows(keywords, events, window_steps=3)
    shuffled = keywords.sample(frac=1.0, random_state=1)
    got = build_windows(shuffled, events.drop(columns="peak_flux"), window_steps=3)
    np.testing.assert_array_equal(got[0], expected[0])
    pd.testing.assert_frame_equal(got[1], expected[1])


@pytest.fixture(scope="module")
def synthetic():
    keywords, events = simulate_sharp_dataset(200, seed=4)
    events = events[events["HARPNUM"].notna()]
    features, index = build_windows(keywords.dropna(), events, window_steps=10)
    return keywords.dropna().reset_index(drop=True), events, features, index


def test_no_window_crosses_a_gap(synthetic):
    keywords, _, features, index = synthetic
    rows = keywords.set_index(["HARPNUM", "timestamp"])[list(SHARP_KEYWORDS)]
    steps = pd.to_timedelta(np.arange(-9, 1), unit="h")
    sample = np.random.default_rng(0).choice(len(index), 1000, replace=False)
    for k in sample:
        times = index["end_time"].iat[k] + steps
        keys = list(zip([index["HARPNUM"].iat[k]] * 10, times, strict=True))
        # Every one of the 10 samples exists, exactly one hour apart, and they are the window.
        np.testing.assert_array_equal(features[k], rows.loc[keys].to_numpy(np.float32))
    assert keywords.groupby("HARPNUM")["timestamp"].diff().gt(pd.Timedelta(hours=1)).any()


def test_labels_match_a_brute_force_count(synthetic):
    _, events, _, index = synthetic
    events = events.assign(HARPNUM=events["HARPNUM"].astype("int64"))
    flux = events["goes_class"].map(goes_class_to_flux)
    thresholds = {"C": 1e-6, "M": 1e-5, "M5": 5e-5}
    for k in np.random.default_rng(1).choice(len(index), 300, replace=False):
        harpnum, end = index["HARPNUM"].iat[k], index["end_time"].iat[k]
        own = events["HARPNUM"] == harpnum
        for name, threshold in thresholds.items():
            for horizon in (24, 48, 72):
                future = (events["peak_time"] > end) & (
                    events["peak_time"] <= end + pd.Timedelta(hours=horizon)
                )
                expected = int((own & future & (flux >= threshold)).any())
                assert index[label_column(name, horizon)].iat[k] == expected


def test_label_column():
    assert label_column("M5", 24) == "label_M5_24h"
    assert label_column("C", 48.0) == "label_C_48h"
    with pytest.raises(ValueError, match="unknown flare class 'B'"):
        label_column("B", 24)
    with pytest.raises(ValueError, match="positive"):
        label_column("M", 0)


def test_build_windows_rejects_bad_arguments(tiny):
    keywords, events = tiny
    for kwargs in ({"window_steps": 0}, {"stride": 0}, {"cadence_minutes": 0}, {"flare_classes": ("Q",)}):
        with pytest.raises(ValueError):
            build_windows(keywords, events, **kwargs)


def test_splits_are_by_region_and_respect_fractions(synthetic):
    *_, index = synthetic
    splits = assign_splits(index, SPLITS, seed=3)
    regions = pd.DataFrame({"HARPNUM": index["HARPNUM"], "split": splits}).drop_duplicates()
    assert not regions["HARPNUM"].duplicated().any()
    counts = regions["split"].value_counts()
    for name, fraction in SPLITS.items():
        assert abs(counts[name] / len(regions) - fraction) <= 0.02
    # Rare positives reach every split.
    for name in SPLITS:
        assert index.loc[splits == name, "label_M5_24h"].sum() > 0
    np.testing.assert_array_equal(splits, assign_splits(index, SPLITS, seed=3))
    assert not np.array_equal(splits, assign_splits(index, SPLITS, seed=4))


def test_rare_positive_regions_are_spread_over_all_splits():
    # 3 of 30 regions have a positive window: each split must get one of them.
    index = pd.DataFrame({"HARPNUM": np.repeat(np.arange(30), 4), "label_M_24h": 0})
    index.loc[index["HARPNUM"].isin([4, 17, 25]), "label_M_24h"] = 1
    for seed in range(10):
        splits = assign_splits(index, SPLITS, seed=seed, stratify_column="label_M_24h")
        assert set(splits[index["label_M_24h"].to_numpy() == 1]) == set(SPLITS)
        assert (pd.Series(splits).drop_duplicates().size) == 3


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.7, "validation": 0.2, "test": 0.2},
        {"train": 1.2, "test": -0.2},
        {"train": 0.5, "test": 0.0},
        {},
    ],
)
def test_bad_split_fractions(fractions, synthetic):
    *_, index = synthetic
    with pytest.raises(ValueError, match="split fractions"):
        assign_splits(index, fractions)


def test_write_and_load_round_trip(tmp_path, tiny):
    keywords, events = tiny
    features, index = build_windows(keywords, events, window_steps=3, horizons_hours=(2,))
    index["split"] = assign_splits(index, {"train": 0.5, "test": 0.5}, seed=0)
    paths = tmp_path / "f.npy", tmp_path / "i.parquet", tmp_path / "s.json"
    summary = write_dataset(*paths, features, index)

    loaded, loaded_index = load_dataset(paths[0], paths[1])
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, features)
    assert loaded_index["row"].tolist() == list(range(len(index)))
    pd.testing.assert_frame_equal(loaded_index.drop(columns="row"), index)
    assert json.loads(paths[2].read_text()) == summary
    assert summary["windows"] == 6
    assert sum(part["windows"] for part in summary["splits"].values()) == 6
    assert summary["positives"]["label_M_2h"] == 2
    assert sum(part["positives"]["label_M_2h"] for part in summary["splits"].values()) == 2
    assert not isinstance(load_dataset(paths[0], paths[1], mmap=False)[0], np.memmap)


def test_load_rejects_mismatches(tmp_path, tiny):
    keywords, events = tiny
    features, index = build_windows(keywords, events, window_steps=3)
    index["split"] = "train"
    write_dataset(tmp_path / "f.npy", tmp_path / "i.parquet", tmp_path / "s.json", features, index)
    np.save(tmp_path / "short.npy", features[:-1])
    with pytest.raises(InputDataError, match=r"short\.npy: 5 windows but the index i\.parquet has 6 rows"):
        load_dataset(tmp_path / "short.npy", tmp_path / "i.parquet")
    np.save(tmp_path / "flat.npy", features[:, :, :5])
    with pytest.raises(InputDataError, match=r"flat\.npy: features have shape \(6, 3, 5\)"):
        load_dataset(tmp_path / "flat.npy", tmp_path / "i.parquet")
    with pytest.raises(InputDataError, match=r"absent\.npy: file not found"):
        load_dataset(tmp_path / "absent.npy", tmp_path / "i.parquet")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputDataError, match=r"junk\.npy: cannot read"):
        load_dataset(tmp_path / "junk.npy", tmp_path / "i.parquet")
    with pytest.raises(ValueError, match="5 feature windows but 6 index rows"):
        write_dataset(tmp_path / "g.npy", tmp_path / "j.parquet", tmp_path / "t.json", features[:-1], index)


def test_prepare_dataset_end_to_end(tmp_path):
    raw = write_synthetic_dataset(tmp_path / "k.csv", tmp_path / "e.csv", 60, seed=9)
    summary = prepare_dataset(
        tmp_path / "k.csv",
        tmp_path / "e.csv",
        tmp_path / "features.npy",
        tmp_path / "windows.parquet",
        tmp_path / "summary.json",
        window_steps=10,
        cadence_minutes=60,
        stride=1,
        horizons_hours=(24, 48, 72),
        flare_classes=("C", "M", "M5"),
        split_fractions=SPLITS,
        split_seed=7,
    )
    ingestion = summary["ingestion"]
    assert ingestion["keywords"]["rows_dropped_nan"] == raw["rows_with_nan"]
    assert ingestion["events"]["rows_dropped_no_region"] == raw["flares_unassigned"]
    assert list(summary["splits"]) == ["train", "validation", "test"]
    assert sum(part["regions"] for part in summary["splits"].values()) == 60
    assert len(summary["label_columns"]) == 9
    features, index = load_dataset(tmp_path / "features.npy", tmp_path / "windows.parquet")
    assert features.shape == (summary["windows"], 10, 9)
    assert index.groupby("HARPNUM")["split"].nunique().max() == 1
    assert json.loads((tmp_path / "summary.json").read_text())["ingestion"] == ingestion
