"""Footprints and the reference/science pair rule, on hand-made and on real (recorded) MAST rows."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astrodag.errors import ConfigError, InputDataError
from astrodag.supernova.archive.pairing import (
    DECISION_COLUMNS,
    PAIR_COLUMNS,
    REASONS,
    YIELD_COLUMNS,
    PairSettings,
    check_observations,
    footprint,
    overlap_fraction,
    pair_survey,
    parse_s_region,
    select_pairs,
    tangent_plane,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "mast"
SN = {"sn_name": "SN 2011fe", "ra": 210.773796, "dec": 54.273661, "discovery_mjd": 55797.17}


def square(ra, dec, side_deg, east_deg=0.0, north_deg=0.0):
    """A MAST POLYGON of a square field of ``side_deg`` centred ``east/north`` degrees from (ra, dec)."""
    cos = math.cos(math.radians(dec))
    h = side_deg / 2
    corners = [(east_deg - h, north_deg - h), (east_deg + h, north_deg - h), (east_deg + h, north_deg + h),
               (east_deg - h, north_deg + h)]
    return "POLYGON " + " ".join(f"{ra + e / cos:.7f} {dec + n:.7f}" for e, n in corners)


def obs(obsid, mjd, *, mission="SWIFT", instrument="UVOT", band="B", east=0.0, north=0.0, kind="image",
        side=0.07):
    return {"obsid": str(obsid), "obs_id": f"o{obsid}", "obs_collection": mission, "instrument_name": instrument,
            "filters": band, "target_name": "M101", "dataproduct_type": kind, "calib_level": 2, "t_min": mjd,
            "t_max": mjd + 0.01, "t_exptime": 800.0, "s_ra": SN["ra"], "s_dec": SN["dec"],
            "s_region": square(SN["ra"], SN["dec"], side, east, north), "dataURL": f"files/{obsid}.fits",
            "em_min": 390.0, "em_max": 490.0, "size": 1000 + int(obsid), "checksum": ""}


def decide(rows, **settings):
    frame = check_observations(pd.DataFrame(rows, columns=list(obs(0, 0.0))), "test.csv")
    pairs, decisions = select_pairs(frame, SN, PairSettings(**settings))
    return pairs, pd.DataFrame(decisions, columns=list(DECISION_COLUMNS))


def reason_of(decisions, reference, science):
    row = decisions[(decisions["reference_obsid"] == str(reference)) & (decisions["science_obsid"] == str(science))]
    assert len(row) == 1, row
    return row["reason"].iloc[0]


# ---------------------------------------------------------------------------------- footprints


def test_s_region_forms_that_mast_writes():
    assert parse_s_region("POLYGON 1 2 3 4 5 6")[0][1].shape == (3, 2)
    (kind, values), = parse_s_region("POLYGON J2000 23.13 60.64 23.14 60.65 23.12 60.65")
    assert kind == "POLYGON" and values[0].tolist() == [23.13, 60.64]
    (kind, values), = parse_s_region("CIRCLE ICRS 210.90789448  54.57587474 0.625")
    assert kind == "CIRCLE" and values.tolist() == [210.90789448, 54.57587474, 0.625]
    two = parse_s_region("POLYGON 1 1 2 1 2 2 POLYGON ICRS 3 3 4 3 4 4")
    assert [k for k, _ in two] == ["POLYGON", "POLYGON"]


@pytest.mark.parametrize("text", ["", "BOX 1 2 3 4", "POLYGON 1 2 3", "CIRCLE 1 2", "CIRCLE ICRS 1 2 -1",
                                  "POLYGON 1 2 x 4 5 6"])
def test_bad_s_region_raises(text):
    with pytest.raises(ValueError):
        parse_s_region(text)


def test_footprint_area_overlap_and_ra_wrap():
    # A 0.1 deg square: 0.01 deg^2 on the tangent plane.
    shape = footprint(square(SN["ra"], SN["dec"], 0.1), SN["ra"], SN["dec"])
    assert shape.area == pytest.approx(0.01, rel=1e-3)
    shifted = footprint(square(SN["ra"], SN["dec"], 0.1, east_deg=0.03), SN["ra"], SN["dec"])
    assert overlap_fraction(shape, shifted) == pytest.approx(0.7, abs=2e-3)
    circle = footprint("CIRCLE ICRS 210.0 54.0 0.5", 210.0, 54.0)
    assert circle.area == pytest.approx(math.pi * 0.25, rel=2e-3)
    # A field across RA = 0 stays one small square.
    across = footprint("POLYGON 359.95 -0.05 0.05 -0.05 0.05 0.05 359.95 0.05", 0.0, 0.0)
    assert across.area == pytest.approx(0.01, rel=1e-3)
    xi, eta = tangent_plane(180.0, 0.0, 0.0, 0.0)
    assert np.isnan(xi) and np.isnan(eta)


# ---------------------------------------------------------------------------------- the rule


def test_cross_filter_and_cross_mission_combinations_are_rejected():
    rows = [obs(1, 55000.0, band="B"), obs(2, 55810.0, band="UVW1"),
            obs(3, 55000.5, mission="GALEX", instrument="GALEX", band="B"), obs(4, 55811.0, band="B")]
    pairs, decisions = decide(rows)
    assert reason_of(decisions, 1, 2) == "different_filter"
    assert reason_of(decisions, 3, 4) == "different_mission"
    assert reason_of(decisions, 1, 4) == "accepted"
    row = decisions[(decisions["reference_obsid"] == "3") & (decisions["science_obsid"] == "4")].iloc[0]
    assert row["mission"] == "GALEX|SWIFT" and row["filter"] == "B"
    assert [p["pair_id"] for p in pairs] == ["SN_2011fe__SWIFT_UVOT_B__1_4"]


def test_epochs_overlap_footprint_and_product_type():
    rows = [obs(1, 55000.0), obs(2, 55500.0), obs(3, 55797.168),  # the last spans the discovery
            obs(4, 55800.0), obs(5, 55805.0, east=0.025), obs(6, 55830.0),
            obs(7, 55400.0, east=0.05), obs(8, 55801.0, kind="spectrum")]
    pairs, decisions = decide(rows)
    assert reason_of(decisions, 1, 2) == "science_not_after_discovery"
    assert reason_of(decisions, 2, 3) == "science_not_after_discovery"
    assert reason_of(decisions, 3, 4) == "reference_not_before_discovery"
    assert reason_of(decisions, 4, 6) == "reference_not_before_discovery"
    # A third of a field away: the SN stays inside, the overlap falls to 0.64.
    assert reason_of(decisions, 2, 5) == "overlap_below_threshold"
    assert decisions.loc[(decisions["reference_obsid"] == "2") & (decisions["science_obsid"] == "5"),
                         "overlap_fraction"].iloc[0] == pytest.approx(0.643, abs=0.01)
    assert reason_of(decisions, 7, "") == "sn_outside_footprint"
    assert reason_of(decisions, "", 8) == "not_an_image"
    # Latest reference before, first science after; the other valid combinations are superseded.
    assert [(p["reference_obsid"], p["science_obsid"]) for p in pairs] == [("2", "4")]
    assert reason_of(decisions, 1, 4) == "superseded"
    assert reason_of(decisions, 2, 6) == "superseded"
    assert pairs[0]["overlap_fraction"] == pytest.approx(1.0)
    assert pairs[0]["reference_mjd"] == pytest.approx(55500.005)


def test_gap_margin_and_threshold_settings():
    rows = [obs(1, 55795.0), obs(2, 55800.0, east=0.025), obs(3, 55790.0)]
    _, decisions = decide(rows)
    assert reason_of(decisions, 1, 2) == "overlap_below_threshold"
    pairs, decisions = decide(rows, overlap_threshold=0.6, reference_gap_days=3.0)
    assert reason_of(decisions, 1, 2) == "reference_not_before_discovery"
    assert [(p["reference_obsid"], p["science_obsid"]) for p in pairs] == [("3", "2")]
    # The SN is 0.01 deg from the edge of the shifted field: a 40" margin throws that field out.
    _, decisions = decide(rows, overlap_threshold=0.6, edge_margin_arcsec=40.0)
    assert reason_of(decisions, "", 2) == "sn_outside_footprint"


def test_at_most_max_pairs_per_sn_closest_science_first():
    rows = [obs(1, 55000.0, band="B"), obs(2, 55000.1, band="U"), obs(3, 55000.2, band="UVW1"),
            obs(4, 55820.0, band="B"), obs(5, 55805.0, band="U"), obs(6, 55810.0, band="UVW1")]
    pairs, decisions = decide(rows)
    assert sorted(p["filter"] for p in pairs) == ["U", "UVW1"]
    assert reason_of(decisions, 1, 4) == "superseded"
    pairs, _ = decide(rows, max_pairs_per_sn=1)
    assert [p["filter"] for p in pairs] == ["U"]


def test_one_sided_groups_and_empty_supernova():
    rows = [obs(1, 55000.0, band="B"), obs(2, 55810.0, band="U"), obs(3, 55000.0, band="UVW1"),
            obs(4, 55900.0, band="UVW1")]
    pairs, decisions = decide(rows)
    assert [p["filter"] for p in pairs] == ["UVW1"]
    assert reason_of(decisions, 1, "") == "no_science"
    assert reason_of(decisions, "", 2) == "no_reference"
    _, decisions = decide([])
    assert decisions["reason"].tolist() == ["no_reference", "no_science"]


def test_rows_order_does_not_change_the_outcome():
    rows = [obs(i, mjd, band=band) for i, (mjd, band) in
            enumerate([(55000, "B"), (55100, "B"), (55810, "B"), (55900, "B"), (55010, "U"), (55820, "U")], 1)]
    first = decide(rows)
    second = decide(rows[::-1])
    assert first[0] == second[0]
    pd.testing.assert_frame_equal(first[1], second[1])


def test_settings_validation():
    assert PairSettings.from_config({"overlap_threshold": 0.9}).overlap_threshold == 0.9
    for config, message in [({"overlap": 0.9}, "supernova.pairing.overlap': unknown key"),
                            ({"overlap_threshold": 1.5}, "must be <= 1.0"),
                            ({"max_pairs_per_sn": 0}, "must be >= 1"),
                            ({"reference_gap_days": -1}, "must be >= 0.0")]:
        with pytest.raises(ConfigError, match=message):
            PairSettings.from_config(config)


# ---------------------------------------------------------------------------------- the stage


def test_pair_survey_writes_the_three_tables(tmp_path):
    catalog = tmp_path / "sne.csv"
    catalog.write_text("sn_name,ra,dec,discovery_mjd,type,redshift,host\n"
                       f"SN 2011fe,{SN['ra']},{SN['dec']},{SN['discovery_mjd']},Ia,0.0008,M101\n"
                       "SN 1993J,148.853208,69.020472,49074.90,IIb,-0.0001,M81\n")
    frame = pd.DataFrame([obs(1, 55000.0), obs(2, 55810.0), obs(3, 55812.0, mission="GALEX", instrument="GALEX"),
                          obs(4, 55801.0, kind="spectrum")])
    frame.insert(0, "sn_name", "SN 2011fe")
    query = tmp_path / "SN_2011fe.csv"
    frame.to_csv(query, index=False)
    empty = tmp_path / "SN_1993J.csv"
    frame.iloc[:0].to_csv(empty, index=False)
    summary = pair_survey([query, empty], catalog, PairSettings(), tmp_path / "pairs.csv", tmp_path / "dec.csv",
                          tmp_path / "yield.csv")
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    decisions = pd.read_csv(tmp_path / "dec.csv")
    yields = pd.read_csv(tmp_path / "yield.csv").set_index("mission")
    assert list(pairs.columns) == list(PAIR_COLUMNS) and list(decisions.columns) == list(DECISION_COLUMNS)
    assert list(yields.reset_index().columns) == list(YIELD_COLUMNS)
    assert pairs["pair_id"].tolist() == ["SN_2011fe__SWIFT_UVOT_B__1_2"]
    assert pairs["pair_id"].str.fullmatch(r"[A-Za-z0-9_.-]+").all()
    assert pairs[["reference_size", "science_size"]].iloc[0].tolist() == [1001, 1002]
    assert set(decisions["reason"]) <= set(REASONS)
    assert decisions.loc[decisions["sn_name"] == "SN 1993J", "reason"].tolist() == ["no_reference", "no_science"]
    assert yields.loc["SWIFT", "pairs_accepted"] == 1 and yields.loc["SWIFT", "observations"] == 3
    assert yields.loc["GALEX", "rejected_different_mission"] == 2  # with each of the two SWIFT images
    assert yields.loc["total", "rejected_not_an_image"] == 1
    assert summary["pairs"] == 1 and summary["supernovae"] == 2 and summary["supernovae_with_pairs"] == 1


def test_pair_survey_rejects_bad_inputs(tmp_path):
    catalog = tmp_path / "sne.csv"
    catalog.write_text("sn_name,ra,dec,discovery_mjd,type,redshift,host\nSN A,10,10,58000,Ia,,X\n")
    bad = tmp_path / "bad.csv"
    pd.DataFrame([{"sn_name": "SN A", "obsid": "1"}]).to_csv(bad, index=False)
    with pytest.raises(InputDataError, match=r"bad\.csv: missing column\(s\) obs_id, obs_collection"):
        pair_survey([bad], catalog, PairSettings(), tmp_path / "p.csv", tmp_path / "d.csv", tmp_path / "y.csv")
    other = tmp_path / "other.csv"
    frame = pd.DataFrame([obs(1, 55000.0)])
    frame.insert(0, "sn_name", "SN B")
    frame.to_csv(other, index=False)
    with pytest.raises(InputDataError, match="not in the catalogue: SN B"):
        pair_survey([other], catalog, PairSettings(), tmp_path / "p.csv", tmp_path / "d.csv", tmp_path / "y.csv")


def test_recorded_mast_galex_images_of_m101_give_no_science_for_sn_2011fe():
    # Real MAST rows (astroquery's recording of GALEX around M101): CIRCLE footprints, all before 2011.
    rows = json.loads((DATA / "advSearchPos.json").read_text())["data"]
    frame = pd.DataFrame(rows).assign(obsid=lambda f: f["obsid"].astype(str), dataURL="")
    pairs, decisions = select_pairs(check_observations(frame, "advSearchPos.json"), SN, PairSettings())
    decisions = pd.DataFrame(decisions)
    assert pairs == []
    # Both GALEX bands have references only; the fields centred more than 0.625 deg away miss the SN.
    assert sorted(decisions.loc[decisions["reason"] == "no_science", "filter"]) == ["FUV", "NUV"]
    assert (decisions["reason"] == "sn_outside_footprint").sum() == 2
    assert set(decisions["reason"]) == {"no_science", "sn_outside_footprint", "different_filter",
                                        "science_not_after_discovery"}
