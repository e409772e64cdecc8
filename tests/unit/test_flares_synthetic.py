"""The synthetic SHARP generator: determinism, file format, magnitudes and class imbalance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from astrodag.flares.dataset import build_windows
from astrodag.flares.sharp import SHARP_KEYWORDS, goes_class_to_flux, read_flare_events, read_keyword_table
from astrodag.flares.synthetic import simulate_sharp_dataset, write_synthetic_dataset


@pytest.fixture(scope="module")
def moderate():
    """400 regions of hourly data: large enough for stable class fractions."""
    return simulate_sharp_dataset(400, seed=0)


def test_same_seed_same_tables_different_seed_different():
    first = simulate_sharp_dataset(30, seed=5)
    second = simulate_sharp_dataset(30, seed=5)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    other = simulate_sharp_dataset(30, seed=6)
    assert not first[0]["USFLUX"].equals(other[0]["USFLUX"])


def test_tables_have_the_input_format(moderate):
    keywords, events = moderate
    assert list(keywords.columns) == ["timestamp", "HARPNUM", *SHARP_KEYWORDS, "LON_FWT"]
    assert str(keywords["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert keywords["HARPNUM"].dtype == np.int64
    assert list(events.columns) == ["HARPNUM", "peak_time", "goes_class"]
    assert str(events["peak_time"].dtype) == "datetime64[ns, UTC]"
    assert all(goes_class_to_flux(text) >= 1e-7 for text in events["goes_class"].unique())
    # Sorted and free of duplicates, as read_keyword_table requires.
    assert not keywords.duplicated(["HARPNUM", "timestamp"]).any()
    assert keywords.equals(keywords.sort_values(["HARPNUM", "timestamp"]).reset_index(drop=True))
    # Flares not assigned to a region are part of real event lists.
    assert 0 < events["HARPNUM"].isna().mean() < 0.1
    assert set(events["HARPNUM"].dropna()) <= set(keywords["HARPNUM"])


def test_regions_overlap_and_live_a_few_days(moderate):
    keywords, _ = moderate
    spans = keywords.groupby("HARPNUM")["timestamp"].agg(["min", "max"])
    days = (spans["max"] - spans["min"]).dt.total_seconds() / 86400
    assert days.min() >= 1.0 and days.max() <= 14.0 and days.median() > 5
    assert keywords["HARPNUM"].nunique() == 400
    on_disk = keywords.groupby("timestamp")["HARPNUM"].nunique()
    assert on_disk.median() >= 5


def test_longitude_follows_solar_rotation(moderate):
    keywords, _ = moderate
    assert keywords["LON_FWT"].between(-80, 90).all()
    first = keywords.groupby("HARPNUM").head(2)
    hours = first.groupby("HARPNUM")["timestamp"].diff().dt.total_seconds().dropna() / 3600
    degrees = first.groupby("HARPNUM")["LON_FWT"].diff().dropna()
    np.testing.assert_allclose(degrees / hours, 13.2 / 24)
    # About half the regions rotate in over the east limb.
    assert 0.3 < (keywords.groupby("HARPNUM")["LON_FWT"].first() < -70).mean() < 0.7


def test_nan_samples_and_gaps_like_real_series(moderate):
    keywords, _ = moderate
    nan_fraction = keywords[list(SHARP_KEYWORDS)].isna().any(axis=1).mean()
    assert 0.001 < nan_fraction < 0.01
    steps = keywords.groupby("HARPNUM")["timestamp"].diff().dropna()
    gaps = steps > pd.Timedelta(hours=1)
    assert 0.0005 < gaps.mean() < 0.02


SPEC_RANGES = {
    "USFLUX": (1e21, 1e23),
    "AREA_ACR": (10, 2000),
    "TOTUSJH": (10, 5000),
    "TOTUSJZ": (1e12, 1e14),
    "TOTPOT": (1e21, 1e24),
    "SAVNCPP": (1e11, 1e14),
    "ABSNJZH": (1, 1000),
}


def test_keyword_magnitudes(moderate):
    keywords, _ = moderate
    for name, (low, high) in SPEC_RANGES.items():
        values = keywords[name].dropna()
        assert (values > 0).all(), name
        p05, median, p95 = values.quantile([0.05, 0.5, 0.95])
        assert low <= median <= high, name
        assert low / 3 <= p05 and p95 <= high * 3, name
    r_value = keywords["R_VALUE"].dropna()
    assert r_value.min() == 0 and (r_value == 0).mean() > 0.05 and r_value.max() < 6.5
    alpha = keywords["MEANALP"].dropna()
    assert alpha.abs().quantile(0.99) < 0.15 and (alpha > 0).mean() > 0.2 and (alpha < 0).mean() > 0.2
    # Extensive keywords grow together with the flux.
    logs = np.log10(keywords[["USFLUX", "TOTPOT", "TOTUSJH", "AREA_ACR"]].dropna())
    assert logs.corr().to_numpy().min() > 0.8


def test_class_imbalance_like_the_sun(moderate):
    keywords, events = moderate
    assigned = events[events["HARPNUM"].notna()]
    assigned = assigned.assign(peak_flux=assigned["goes_class"].map(goes_class_to_flux))
    _, index = build_windows(keywords, assigned, horizons_hours=(24,))
    fractions = {name: index[f"label_{name}_24h"].mean() for name in ("C", "M", "M5")}
    assert 0.15 <= fractions["C"] <= 0.30, fractions
    assert 0.02 <= fractions["M"] <= 0.06, fractions
    assert 0.005 <= fractions["M5"] <= 0.015, fractions


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_written_tables_read_back_without_loss(tmp_path, suffix):
    keywords_path, events_path = tmp_path / f"keywords{suffix}", tmp_path / f"events{suffix}"
    summary = write_synthetic_dataset(keywords_path, events_path, 40, seed=3)
    keywords, events = simulate_sharp_dataset(40, seed=3)

    table, report = read_keyword_table(keywords_path)
    complete = keywords.dropna().reset_index(drop=True)
    assert report == {
        "rows_read": len(keywords),
        "rows_dropped_nan": len(keywords) - len(complete),
        "rows_kept": len(complete),
        "regions": 40,
    }
    pd.testing.assert_frame_equal(table, complete)

    flares, flare_report = read_flare_events(events_path)
    assigned = events[events["HARPNUM"].notna()]
    assert flare_report["rows_dropped_no_region"] == events["HARPNUM"].isna().sum()
    assert flare_report["rows_kept"] == len(assigned)
    assert sorted(flares["HARPNUM"].unique()) == sorted(assigned["HARPNUM"].astype("int64").unique())
    assert sorted(flares["peak_time"]) == sorted(assigned["peak_time"])

    assert summary["regions"] == 40 and summary["rows"] == len(keywords)
    assert summary["flares"] == len(events)
    assert sum(summary["flares_by_class"].values()) == len(events)
    assert 0 <= summary["fraction_regions_with_M5"] <= summary["fraction_regions_with_M"]
    assert summary["fraction_regions_with_M"] <= summary["fraction_regions_with_C"] <= 1


def test_csv_uses_iso_utc_times(tmp_path):
    write_synthetic_dataset(tmp_path / "k.csv", tmp_path / "e.csv", 3, seed=1)
    header, first = (tmp_path / "k.csv").read_text().splitlines()[:2]
    assert header == "timestamp,HARPNUM," + ",".join(SHARP_KEYWORDS) + ",LON_FWT"
    assert first.startswith("2011-01-01T00:00:00Z,")


def test_other_cadence():
    keywords, _ = simulate_sharp_dataset(5, cadence_minutes=12, seed=2)
    steps = keywords.groupby("HARPNUM")["timestamp"].diff().dropna()
    assert steps.min() == pd.Timedelta(minutes=12)


def test_regions_are_observed_for_days():
    keywords, _ = simulate_sharp_dataset(300, seed=1)
    assert len(keywords) > 300 * 100


@pytest.mark.parametrize("kwargs", [{"n_regions": 0}, {"n_regions": 3, "cadence_minutes": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        simulate_sharp_dataset(**kwargs)
