"""Windows, labels, region-wise splits and the dataset files of the flare track."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from astrodag.errors import ConfigError, InputDataError
from astrodag.flares.dataset import (
    assign_splits,
    assign_time_splits,
    build_windows,
    experiment_splits,
    horizon_observed,
    label_column,
    load_dataset,
    prepare_dataset,
    resample_to_cadence,
    write_dataset,
)
from astrodag.flares.settings import FlareDatasetSettings
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
        "region_start",
        "region_end",
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
    assert all(index[name].dtype == np.uint8 for name in index.columns[4:])
    # First and last record of each region with finite keywords.
    assert hours(index.assign(end_time=index["region_start"])) == [0] * 6
    assert hours(index.assign(end_time=index["region_end"])) == [9] * 5 + [5]

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
    paths = tmp_path / "f.npy", tmp_path / "i.parquet", tmp_path / "s.json"
    summary = write_dataset(*paths, features, index)

    loaded, loaded_index = load_dataset(paths[0], paths[1])
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, features)
    assert loaded_index["row"].tolist() == list(range(len(index)))
    pd.testing.assert_frame_equal(loaded_index.drop(columns="row"), index)
    assert json.loads(paths[2].read_text()) == summary
    assert summary["windows"] == 6
    assert summary["positives"]["label_M_2h"] == 2
    # Ends 2, 3, 4, 8, 9 of region 101 (last record at 9) and 5 of 202 (last at 5): 2 h covered for 3.
    assert summary["horizon_observed"]["label_M_2h"] == {"windows": 3, "positives": 2}
    assert not isinstance(load_dataset(paths[0], paths[1], mmap=False)[0], np.memmap)


def test_load_rejects_mismatches(tmp_path, tiny):
    keywords, events = tiny
    features, index = build_windows(keywords, events, window_steps=3)
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
    with pytest.raises(ValueError, match="lacks column.*region_end"):
        write_dataset(tmp_path / "g.npy", tmp_path / "j.parquet", tmp_path / "t.json", features,
                      index.drop(columns="region_end"))


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
        max_longitude=70,
        seeds=(0, 1),
    )
    ingestion = summary["ingestion"]
    assert ingestion["keywords"]["rows_dropped_nan"] == raw["rows_with_nan"]
    assert ingestion["events"]["rows_dropped_no_region"] == raw["flares_unassigned"]
    assert list(summary["splits_by_seed"]) == ["0", "1"]
    features, index = load_dataset(tmp_path / "features.npy", tmp_path / "windows.parquet")
    for seed, split in summary["splits_by_seed"].items():
        assert split["split_seed"] == 7 + int(seed)
        assert list(split)[1:] == ["train", "validation", "test"]
        assert sum(split[name]["regions"] for name in SPLITS) == index["HARPNUM"].nunique()
        assert sum(split[name]["windows"] for name in SPLITS) == len(index)
        # The summary counts what the experiment of that seed uses: windows whose horizon is covered.
        splits = experiment_splits(index, int(seed), SPLITS, 7)
        used = horizon_observed(index, 72) & (splits == "test")
        assert split["test"]["windows_used"]["label_C_72h"] == used.sum()
        assert split["test"]["positives"]["label_C_72h"] == index.loc[used, "label_C_72h"].sum()
    assert len(summary["label_columns"]) == 9
    assert features.shape == (summary["windows"], 10, 9)
    assert "split" not in index.columns
    assert json.loads((tmp_path / "summary.json").read_text())["ingestion"] == ingestion


# Real SHARP cadence: 12-min records, not on the hour, with gaps.


def twelve_minute_records(rng, harpnum, hours, skip=(), jitter_seconds=90, offset_seconds=-37):
    """12-min records of one region over ``hours`` hours, each moved by a TAI-like offset and a random jitter.

    Records at the whole hours listed in ``skip`` are missing. Keyword j of a record is
    100 * (minutes since T0) + j, so the record behind each sample can be read off its values.
    """
    rows = []
    for minute in range(0, 60 * hours, 12):
        if minute % 60 == 0 and minute // 60 in skip:
            continue
        moved = minute * 60 + offset_seconds + rng.uniform(-jitter_seconds, jitter_seconds)
        values = [100.0 * minute + j for j in range(len(SHARP_KEYWORDS))]
        rows.append([T0 + pd.Timedelta(seconds=moved), harpnum, *values])
    return pd.DataFrame(rows, columns=["timestamp", "HARPNUM", *SHARP_KEYWORDS])


NO_EVENTS = pd.DataFrame({"HARPNUM": pd.Series([], dtype="int64"),
                          "peak_time": pd.Series([], dtype="datetime64[ns, UTC]"),
                          "peak_flux": pd.Series([], dtype="float64")})


def test_twelve_minute_records_with_gaps_and_jitter_give_hourly_windows():
    rng = np.random.default_rng(0)
    keywords = pd.concat([twelve_minute_records(rng, 1, 14, skip=(5,)),
                          twelve_minute_records(rng, 2, 6, skip=(2, 3))], ignore_index=True)
    features, index = build_windows(keywords, NO_EVENTS, window_steps=3, horizons_hours=(1,))
    # Region 1: hours 0-4 and 6-13 (hour 5's record is missing, its neighbours are 12 min away);
    # region 2: hours 0-1 and 4-5, no run of 3.
    assert index["HARPNUM"].tolist() == [1] * 9
    assert hours(index) == [2, 3, 4, 8, 9, 10, 11, 12, 13]
    # Each sample is the record taken nearest the whole hour.
    for window, end in zip(features, hours(index), strict=True):
        np.testing.assert_array_equal(window[:, 0], [6000.0 * hour for hour in range(end - 2, end + 1)])


def test_resampling_takes_the_nearest_record_within_the_tolerance():
    times = ["00:01", "00:50", "01:07", "02:00", "02:30", "03:30", "04:05", "04:55"]
    keywords = pd.DataFrame({"timestamp": pd.to_datetime([f"2012-01-01T{t}Z" for t in times]), "HARPNUM": 5,
                             "value": np.arange(len(times), dtype=float)})
    samples = resample_to_cadence(keywords, cadence_minutes=60, tolerance_minutes=10)
    # 01:00 takes 01:07 over 00:50; 03:00 has none within 10 min; 05:00 takes 04:55 (04:05 went to 04:00).
    assert samples["timestamp"].dt.strftime("%H:%M").tolist() == ["00:00", "01:00", "02:00", "04:00", "05:00"]
    assert samples["value"].tolist() == [0, 2, 3, 6, 7]
    assert (samples["record_time"] - samples["timestamp"]).abs().max() <= pd.Timedelta(minutes=10)
    # A tie goes to the earlier record, which cannot look ahead: 00:50 and 01:10 around 01:00.
    pair = pd.DataFrame({"timestamp": pd.to_datetime(["2012-01-01T00:50Z", "2012-01-01T01:10Z"]), "HARPNUM": 5,
                         "value": [1.0, 2.0]})
    tie = resample_to_cadence(pair, cadence_minutes=60, tolerance_minutes=15)
    assert tie["value"].tolist() == [1.0]
    for tolerance in (30, -1):
        with pytest.raises(ValueError, match="half the cadence"):
            resample_to_cadence(keywords, cadence_minutes=60, tolerance_minutes=tolerance)


def test_a_label_starts_after_the_record_of_the_last_sample():
    # Hour 2's slot is filled by a record at 02:04; an M flare at 02:02 precedes it, one at 02:06 follows it.
    keywords = pd.DataFrame({"timestamp": pd.to_datetime(["2012-01-01T00:00Z", "2012-01-01T01:00Z",
                                                          "2012-01-01T02:04Z"]), "HARPNUM": 1,
                             **{name: 1.0 for name in SHARP_KEYWORDS}})
    for minute, expected in ((2, 0), (6, 1)):
        events = pd.DataFrame({"HARPNUM": [1], "peak_time": [pd.Timestamp(f"2012-01-01T02:0{minute}Z")],
                               "peak_flux": [2e-5]})
        _, index = build_windows(keywords, events, window_steps=3, horizons_hours=(1,), flare_classes=("M",))
        assert index["label_M_1h"].tolist() == [expected]


def test_hourly_synthetic_data_is_unchanged_by_resampling(synthetic):
    keywords, *_ = synthetic
    samples = resample_to_cadence(keywords, cadence_minutes=60, tolerance_minutes=6)
    assert (samples["record_time"] == samples["timestamp"]).all()
    pd.testing.assert_frame_equal(samples.drop(columns="record_time")[keywords.columns], keywords)


# The limb: horizons past a region's last record, and the longitude cut.


def test_horizon_observed_marks_windows_whose_horizon_outruns_the_region(tiny):
    keywords, events = tiny
    _, index = build_windows(keywords, events, window_steps=3, horizons_hours=(1, 2))
    # Region 101 ends at hour 9, 202 at hour 5; ends 2, 3, 4, 8, 9 and 5.
    assert horizon_observed(index, 1).tolist() == [True, True, True, True, False, False]
    assert horizon_observed(index, 2).tolist() == [True, True, True, False, False, False]


def test_longitude_cut_drops_limb_records_and_needs_the_column(tiny, tmp_path):
    keywords, events = tiny
    # Region 101 crosses 70 deg at hour 8: hours 8 and 9 are dropped, leaving ends 2, 3, 4.
    longitude = np.where(keywords["HARPNUM"] == 101, 50.0 + 2.5 * (keywords["timestamp"] - T0).dt.seconds / 3600, 0)
    _, index = build_windows(keywords.assign(LON_FWT=longitude), events, window_steps=3, max_longitude=70)
    assert list(zip(index["HARPNUM"], hours(index), strict=True)) == [(101, 2), (101, 3), (101, 4), (202, 5)]
    # The region's last record (hour 9) still bounds the observed horizon.
    assert hours(index.assign(end_time=index["region_end"]))[0] == 9
    with pytest.raises(InputDataError, match=r"keywords\.csv: no LON_FWT column.*max_longitude: null"):
        build_windows(keywords, events, window_steps=3, max_longitude=70, source=tmp_path / "keywords.csv")


def test_synthetic_windows_stay_inside_the_longitude_limit():
    keywords, events = simulate_sharp_dataset(40, seed=2)
    keywords = keywords.dropna()
    _, index = build_windows(keywords, events.dropna(), window_steps=10, max_longitude=70)
    longitude = keywords.set_index(["HARPNUM", "timestamp"])["LON_FWT"]
    for step in range(10):
        keys = pd.MultiIndex.from_arrays([index["HARPNUM"], index["end_time"] - pd.Timedelta(hours=step)])
        assert (longitude.loc[keys].abs() < 70).all()
    assert len(index) < len(build_windows(keywords, events.dropna(), window_steps=10)[1])


# Splits that vary with the seed, and the time-separated split.


def test_each_seed_splits_other_regions(synthetic):
    *_, index = synthetic
    test_regions = []
    for seed in range(5):
        splits = experiment_splits(index, seed, SPLITS, split_seed=7)
        regions = pd.DataFrame({"HARPNUM": index["HARPNUM"], "split": splits}).drop_duplicates()
        assert not regions["HARPNUM"].duplicated().any()
        np.testing.assert_array_equal(splits, assign_splits(index, SPLITS, seed=7 + seed))
        test_regions.append(frozenset(regions.loc[regions["split"] == "test", "HARPNUM"]))
    assert len(set(test_regions)) == 5
    # Different, not disjoint: about a fifth of the test regions of one seed are test regions of another.
    assert len(test_regions[0] & test_regions[1]) < 0.5 * len(test_regions[0])


def test_time_split_orders_regions_by_their_first_record(synthetic):
    *_, index = synthetic
    splits = assign_time_splits(index, SPLITS)
    regions = index.assign(split=splits).groupby("HARPNUM").agg(
        split=("split", "first"), start=("region_start", "first"), end=("region_end", "first"),
        splits=("split", "nunique"))
    assert (regions["splits"] == 1).all()
    counts = regions["split"].value_counts()
    for name, fraction in SPLITS.items():
        assert abs(counts[name] / len(regions) - fraction) <= 0.01
    by_split = regions.groupby("split")
    assert by_split["start"].max()["train"] <= by_split["start"].min()["validation"]
    assert by_split["start"].max()["validation"] <= by_split["start"].min()["test"]
    # Here the validation period outlasts every region: no training region is on the disk with a test region.
    assert by_split["end"].max()["train"] < by_split["start"].min()["test"]
    # The same split for every seed.
    np.testing.assert_array_equal(experiment_splits(index, 3, SPLITS, 7, method="time"), splits)
    with pytest.raises(ValueError, match="unknown split method"):
        experiment_splits(index, 0, SPLITS, 7, method="random")


def test_dataset_settings_check_the_new_keys():
    settings = FlareDatasetSettings.from_config({})
    assert (settings.resample_tolerance_minutes, settings.max_longitude, settings.drop_unobserved_horizon,
            settings.split_method) == (6.0, 70.0, True, "region")
    assert FlareDatasetSettings.from_config({"max_longitude": None}).max_longitude is None
    for options, key in (({"resample_tolerance_minutes": 30}, "resample_tolerance_minutes"),
                         ({"cadence_minutes": 12, "resample_tolerance_minutes": 6}, "resample_tolerance_minutes"),
                         ({"split_method": "random"}, "split_method"), ({"max_longitude": 95}, "max_longitude")):
        with pytest.raises(ConfigError, match=f"flares.dataset.{key}"):
            FlareDatasetSettings.from_config(options)
