"""GOES class conversion and validation of the SHARP keyword and flare-event files."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from astrodag.errors import InputDataError
from astrodag.flares.sharp import (
    FLARE_CLASS_THRESHOLDS,
    SHARP_KEYWORDS,
    flux_to_goes_class,
    goes_class_to_flux,
    read_flare_events,
    read_keyword_table,
)

HEADER = "timestamp,HARPNUM," + ",".join(SHARP_KEYWORDS)


def keyword_line(time: str, harpnum, value: float = 1.0) -> str:
    return f"{time},{harpnum}," + ",".join(str(value + i) for i in range(len(SHARP_KEYWORDS)))


def write_keywords(path, lines, header=HEADER):
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


GOOD_LINES = [
    keyword_line("2012-03-07T01:00:00Z", 7),
    keyword_line("2012-03-07T00:00:00Z", 7),
    keyword_line("2012-03-07T00:00:00Z", 3),
]


@pytest.mark.parametrize(
    ("text", "flux"),
    [
        ("M2.3", 2.3e-5),
        ("C1.2", 1.2e-6),
        ("M5.0", 5e-5),
        ("X10", 1e-3),
        ("X", 1e-4),
        (" b3.4 ", 3.4e-7),
        ("A1.0", 1e-8),
        ("x2", 2e-4),
    ],
)
def test_goes_class_to_flux(text, flux):
    assert goes_class_to_flux(text) == flux


@pytest.mark.parametrize("text", ["", "Z1.0", "M-1", "M0", "M0.0", "C1.2.3", "MM", "1.2", "M 1e3", "nan"])
def test_goes_class_to_flux_rejects_bad_strings(text):
    with pytest.raises(ValueError, match=repr(text).replace(".", r"\.")):
        goes_class_to_flux(text)


def test_goes_class_to_flux_rejects_non_strings():
    with pytest.raises(ValueError, match="not a GOES class"):
        goes_class_to_flux(None)


def test_flux_round_trip():
    fluxes = np.logspace(-8, np.log10(2e-3), 400)
    for flux in fluxes:
        text = flux_to_goes_class(flux)
        assert goes_class_to_flux(text) == pytest.approx(flux, rel=0.05)
        # A formatted class survives the round trip exactly.
        assert flux_to_goes_class(goes_class_to_flux(text)) == text


@pytest.mark.parametrize(
    ("flux", "text"),
    [(2.34e-5, "M2.3"), (1.5e-3, "X15.0"), (9.97e-6, "M1.0"), (1e-6, "C1.0"), (5e-5, "M5.0")],
)
def test_flux_to_goes_class(flux, text):
    assert flux_to_goes_class(flux) == text


@pytest.mark.parametrize("flux", [0.0, -1e-6, np.nan, np.inf, 1e-12])
def test_flux_to_goes_class_rejects_bad_flux(flux):
    with pytest.raises(ValueError, match="GOES class"):
        flux_to_goes_class(flux)


def test_thresholds_are_goes_classes():
    assert FLARE_CLASS_THRESHOLDS == {"C": 1e-6, "M": 1e-5, "M5": 5e-5}
    assert goes_class_to_flux("M5.0") >= FLARE_CLASS_THRESHOLDS["M5"]
    assert goes_class_to_flux("M4.9") < FLARE_CLASS_THRESHOLDS["M5"]


def test_read_keyword_table_cleans_and_sorts(tmp_path):
    path = write_keywords(tmp_path / "keywords.csv", GOOD_LINES)
    table, report = read_keyword_table(path)
    assert list(table.columns) == ["timestamp", "HARPNUM", *SHARP_KEYWORDS]
    assert str(table["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert table["HARPNUM"].dtype == np.int64
    assert all(table[name].dtype == np.float64 for name in SHARP_KEYWORDS)
    assert table["HARPNUM"].tolist() == [3, 7, 7]
    assert table["timestamp"].iloc[1] == pd.Timestamp("2012-03-07T00:00:00Z")
    assert report == {"rows_read": 3, "rows_dropped_nan": 0, "rows_kept": 3, "regions": 2}


def test_read_keyword_table_ignores_extra_columns_and_reads_parquet(tmp_path):
    table, _ = read_keyword_table(write_keywords(tmp_path / "keywords.csv", GOOD_LINES))
    extra = table.assign(QUALITY=1, NOTE="x")
    extra.to_parquet(tmp_path / "keywords.parquet")
    again, report = read_keyword_table(tmp_path / "keywords.parquet")
    pd.testing.assert_frame_equal(again, table)
    assert report["rows_kept"] == 3
    # A naive datetime column in Parquet is taken as UTC.
    extra.assign(timestamp=extra["timestamp"].dt.tz_localize(None)).to_parquet(tmp_path / "naive.parquet")
    pd.testing.assert_frame_equal(read_keyword_table(tmp_path / "naive.parquet")[0], table)


def test_longitude_column_is_read_when_present_and_nan_keeps_the_row(tmp_path):
    lines = [line + f",{lon}" for line, lon in zip(GOOD_LINES, ["12.5", "", "-71"], strict=True)]
    path = write_keywords(tmp_path / "keywords.csv", lines, header=HEADER + ",LON_FWT")
    table, report = read_keyword_table(path)
    assert report["rows_kept"] == 3
    # Sorted by HARPNUM then time: (3, 00:00) -71, (7, 00:00) NaN, (7, 01:00) 12.5.
    np.testing.assert_array_equal(table["LON_FWT"].to_numpy(), [-71.0, np.nan, 12.5])
    assert "LON_FWT" not in read_keyword_table(write_keywords(tmp_path / "plain.csv", GOOD_LINES))[0].columns


def test_extra_csv_columns_are_never_parsed(tmp_path):
    lines = [f"{line},text;with;semicolons" for line in GOOD_LINES]
    lines[1] = lines[1].rsplit(",", 1)[0] + ",3.5"  # mixed types in an ignored column
    path = write_keywords(tmp_path / "extra.csv", lines, header=HEADER + ",COMMENT")
    table, report = read_keyword_table(path)
    assert list(table.columns) == ["timestamp", "HARPNUM", *SHARP_KEYWORDS] and report["rows_kept"] == 3


def test_text_in_a_parquet_keyword_column_names_the_row(tmp_path):
    table, _ = read_keyword_table(write_keywords(tmp_path / "keywords.csv", GOOD_LINES))
    table["USFLUX"] = table["USFLUX"].astype(str)
    table.loc[2, "USFLUX"] = "n/a?"
    table.to_parquet(tmp_path / "text.parquet")
    with pytest.raises(
        InputDataError, match=r"text\.parquet: 'USFLUX' value 'n/a\?' at row 3 is not a number"
    ):
        read_keyword_table(tmp_path / "text.parquet")


def test_nan_rows_are_dropped_and_counted(tmp_path, caplog):
    lines = [
        *GOOD_LINES,
        keyword_line("2012-03-07T02:00:00Z", 7).replace(",1.0,", ",nan,", 1),
        keyword_line("2012-03-07T03:00:00Z", 7).replace(",3.0,", ",,", 1),
        keyword_line("2012-03-07T04:00:00Z", 7).replace(",5.0,", ",inf,", 1),
    ]
    path = write_keywords(tmp_path / "keywords.csv", lines)
    with caplog.at_level(logging.WARNING, logger="astrodag.flares.sharp"):
        table, report = read_keyword_table(path)
    assert report == {"rows_read": 6, "rows_dropped_nan": 3, "rows_kept": 3, "regions": 2}
    assert np.isfinite(table[list(SHARP_KEYWORDS)].to_numpy()).all()
    assert any("dropped 3 row(s)" in record.getMessage() for record in caplog.records)


def test_missing_columns_are_all_named(tmp_path):
    header = HEADER.replace(",TOTPOT", "").replace(",R_VALUE", "")
    lines = [",".join(line.split(",")[:-2]) for line in GOOD_LINES]
    path = write_keywords(tmp_path / "no_totpot.csv", lines, header=header)
    with pytest.raises(InputDataError, match=r"no_totpot\.csv: missing column\(s\) R_VALUE, TOTPOT \(found"):
        read_keyword_table(path)


def test_duplicated_timestamps_are_rejected(tmp_path):
    lines = [*GOOD_LINES, keyword_line("2012-03-07T01:00:00Z", 7, value=9.0)]
    path = write_keywords(tmp_path / "dupes.csv", lines)
    with pytest.raises(InputDataError, match=r"dupes\.csv: 1 duplicated .*HARPNUM 7 .*line 2, line 5"):
        read_keyword_table(path)


def test_bad_timestamp_names_value_and_line(tmp_path):
    lines = [*GOOD_LINES, keyword_line("2012-13-45T00:00:00Z", 7)]
    path = write_keywords(tmp_path / "times.csv", lines)
    with pytest.raises(InputDataError, match=r"times\.csv: .*'2012-13-45T00:00:00Z' at line 5"):
        read_keyword_table(path)


def test_non_integer_harpnum_is_rejected(tmp_path):
    path = write_keywords(tmp_path / "harp.csv", [*GOOD_LINES, keyword_line("2012-03-07T05:00:00Z", "7.5")])
    with pytest.raises(InputDataError, match=r"harp\.csv: HARPNUM '7\.5' at line 5"):
        read_keyword_table(path)


def test_text_in_a_keyword_column_is_rejected(tmp_path):
    bad_line = keyword_line("2012-03-07T05:00:00Z", 7).replace(",1.0,", ",abc,", 1)
    path = write_keywords(tmp_path / "text.csv", [*GOOD_LINES, bad_line])
    with pytest.raises(InputDataError, match=r"text\.csv: cannot read as CSV.*invalid value 'abc'"):
        read_keyword_table(path)


def test_corrupt_parquet_is_rejected(tmp_path):
    path = tmp_path / "keywords.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(InputDataError, match=r"keywords\.parquet: cannot read as Parquet"):
        read_keyword_table(path)


def test_truncated_csv_is_rejected(tmp_path):
    full = write_keywords(tmp_path / "full.csv", GOOD_LINES).read_text()
    cut = full[: full.rindex(",", 0, len(full) - 30)]  # ends in the middle of the last row
    path = tmp_path / "truncated.csv"
    path.write_text(cut)
    with pytest.raises(InputDataError, match=r"truncated\.csv: cannot read as CSV.*Expected 11 columns"):
        read_keyword_table(path)


@pytest.mark.parametrize(("content", "problem"), [("", "0 bytes"), (HEADER + "\n", "no data rows")])
def test_empty_files_are_rejected(tmp_path, content, problem):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(InputDataError, match=rf"empty\.csv: .*{problem}"):
        read_keyword_table(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputDataError, match=r"absent\.csv: file not found"):
        read_keyword_table(tmp_path / "absent.csv")
    (tmp_path / "keywords.txt").write_text(HEADER)
    with pytest.raises(InputDataError, match="unsupported suffix"):
        read_keyword_table(tmp_path / "keywords.txt")


def test_all_rows_nan_is_an_error(tmp_path):
    path = write_keywords(tmp_path / "allnan.csv", [keyword_line("2012-03-07T00:00:00Z", 7, np.nan)])
    with pytest.raises(InputDataError, match="no rows left"):
        read_keyword_table(path)


EVENTS = """HARPNUM,peak_time,goes_class
7,2012-03-07T04:10:00Z,M2.3
,2012-03-07T05:00:00Z,X1.0
3,2012-03-06T23:00:00Z, c1.2
7,2012-03-07T02:00:00Z,B3.4
"""


def test_read_flare_events(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(EVENTS)
    events, report = read_flare_events(path)
    assert report == {"rows_read": 4, "rows_dropped_no_region": 1, "rows_kept": 3}
    assert list(events.columns) == ["HARPNUM", "peak_time", "goes_class", "peak_flux"]
    assert events["HARPNUM"].dtype == np.int64
    assert str(events["peak_time"].dtype) == "datetime64[ns, UTC]"
    assert events["goes_class"].tolist() == ["C1.2", "B3.4", "M2.3"]
    assert events["peak_flux"].tolist() == [1.2e-6, 3.4e-7, 2.3e-5]


def test_flare_events_from_parquet_with_nullable_harpnum(tmp_path):
    csv_path = tmp_path / "events.csv"
    csv_path.write_text(EVENTS)
    frame = pd.read_csv(csv_path, dtype={"HARPNUM": "Int64"})
    frame.to_parquet(tmp_path / "events.parquet")
    events, report = read_flare_events(tmp_path / "events.parquet")
    assert report["rows_dropped_no_region"] == 1
    pd.testing.assert_frame_equal(events, read_flare_events(csv_path)[0])


def test_unknown_flare_class_names_file_line_and_value(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(EVENTS + "3,2012-03-07T06:00:00Z,Q9.9\n")
    with pytest.raises(InputDataError, match=r"events\.csv: unknown GOES class 'Q9\.9' at line 6"):
        read_flare_events(path)


def test_flare_events_missing_column_and_bad_time(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("HARPNUM,goes_class\n7,M1.0\n")
    with pytest.raises(InputDataError, match=r"events\.csv: missing column\(s\) peak_time"):
        read_flare_events(path)
    path.write_text(EVENTS + "3,yesterday,C1.0\n")
    with pytest.raises(InputDataError, match=r"events\.csv: .*'yesterday' at line 6"):
        read_flare_events(path)


def test_header_only_flare_table_is_valid(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("HARPNUM,peak_time,goes_class\n")
    events, report = read_flare_events(path)
    assert events.empty and report["rows_kept"] == 0
