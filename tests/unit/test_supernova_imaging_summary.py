"""The imaging report's recovery against the injected SN magnitude (astrodag.evaluation.completeness)."""

import numpy as np
import pandas as pd

from astrodag.supernova.imaging.summary import MIN_PAIRS_PER_BIN, _recovery_by_magnitude


def test_recovery_by_magnitude_counts_images_and_distinct_supernovae():
    # 12 science images of 6 SNe (two each): bright ones recovered, faint ones not.
    pairs = pd.DataFrame({
        "sn_name": [f"SN{i // 2}" for i in range(12)],
        "sn_mag": np.linspace(16.0, 21.5, 12),
        "sn_recovered": [True] * 7 + [False] * 5,
    })
    rows = _recovery_by_magnitude(pairs)
    assert len(rows) == 4  # quartiles of 12 images, 3 each
    assert [row["n"] for row in rows] == [3, 3, 3, 3]
    assert [row["recovered"] for row in rows] == [3, 3, 1, 0]
    assert [row["supernovae"] for row in rows] == [2, 2, 2, 2]
    assert rows[0]["fraction"] == 1.0 and rows[-1]["fraction"] == 0.0
    assert 0.0 < rows[2]["fraction_low"] < 1 / 3 < rows[2]["fraction_high"] < 1.0


def test_too_few_images_or_no_magnitudes_give_no_table():
    few = pd.DataFrame({"sn_name": ["a", "b"], "sn_mag": [18.0, 19.0], "sn_recovered": [True, False]})
    assert len(few) < MIN_PAIRS_PER_BIN and _recovery_by_magnitude(few) == []
    assert _recovery_by_magnitude(few.drop(columns="sn_mag")) == []


def test_rejections_by_mission_add_up_to_the_total(tmp_path):
    """yield.csv counts a two-mission combination under both missions; the report counts it once."""
    from astrodag.supernova.archive.pairing import DECISION_COLUMNS, PAIR_COLUMNS, yield_table
    from astrodag.supernova.imaging.summary import summarize_imaging_track

    observations = pd.DataFrame({"obs_collection": ["GALEX", "GALEX", "SWIFT", "SWIFT", "PS1"]})
    decisions = pd.DataFrame({
        "sn_name": ["SN A"] * 7,
        "mission": ["GALEX|SWIFT", "SWIFT|GALEX", "GALEX", "SWIFT", "GALEX|PS1", "SWIFT", "PS1"],
        "accepted": [False, False, False, False, False, True, False],
        "reason": ["different_mission", "different_mission", "different_filter", "superseded", "different_mission",
                   "accepted", "no_science"],
    }).reindex(columns=list(DECISION_COLUMNS))
    yields = yield_table(observations, decisions)
    decisions.to_csv(tmp_path / "decisions.csv", index=False)
    yields.to_csv(tmp_path / "yield.csv", index=False)
    pd.DataFrame(columns=list(PAIR_COLUMNS)).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame({"sn_name": ["SN A"], "ra": [10.0], "dec": [20.0]}).to_csv(tmp_path / "catalog.csv", index=False)

    summary = summarize_imaging_track(tmp_path / "pairs.csv", tmp_path / "decisions.csv", tmp_path / "yield.csv",
                                      tmp_path / "catalog.csv", [], tmp_path / "report")
    table = pd.DataFrame(summary["yield_by_mission"]).set_index("mission")
    total = table.loc["total"]
    parts = table.drop(index="total")
    assert total["rejected_different_mission"] == 3 == summary["rejected_by_reason"]["different_mission"]
    counted = [c for c in table.columns if c != "observations"]
    assert (parts[counted].sum() == total[counted]).all()
    assert parts["observations"].sum() == total["observations"] == 5
    assert parts.loc["GALEX|SWIFT", "rejected_different_mission"] == 2
    assert parts.loc["GALEX", "rejected_different_mission"] == 0
    assert parts.loc["GALEX", "rejected_different_filter"] == 1
    assert "`A|B`" in (tmp_path / "report" / "imaging_report.md").read_text()


def test_report_lists_failed_subtractions_with_their_reasons(tmp_path):
    import json

    from astrodag.supernova.archive.pairing import DECISION_COLUMNS, PAIR_COLUMNS
    from astrodag.supernova.imaging.summary import summarize_imaging_track

    pairs = pd.DataFrame({"pair_id": ["good", "bad"], "sn_name": ["SN A", "SN B"], "mission": ["HST", "HST"],
                          "filter": ["F555W", "F555W"], "science_obsid": ["1", "2"], "overlap_fraction": [1.0, 1.0]}
                         ).reindex(columns=list(PAIR_COLUMNS))
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame(columns=list(DECISION_COLUMNS)).to_csv(tmp_path / "decisions.csv", index=False)
    pd.DataFrame({"mission": ["total"], "observations": [2]}).to_csv(tmp_path / "yield.csv", index=False)
    pd.DataFrame({"sn_name": ["SN A", "SN B"], "ra": [10.0, 20.0], "dec": [5.0, 6.0]}).to_csv(
        tmp_path / "catalog.csv", index=False)
    verdicts = {"good": {"failed": False, "failure_reasons": [], "peaks_per_megapixel": 12.0},
                "bad": {"failed": True, "peaks_per_megapixel": 31000.0,
                        "failure_reasons": ["flux ratio 1 not measured on stars (method unity, 0 usable stars)",
                                            "S_corr robust std 1.58 before calibration (noise model off)"]}}
    for pair_id, verdict in verdicts.items():
        pair_dir = tmp_path / pair_id
        pair_dir.mkdir()
        (pair_dir / "difference.json").write_text("{}")
        pd.DataFrame({"ra": [10.0], "dec": [5.0], "significance": [7.0], "kept": [True]}).to_csv(
            pair_dir / "candidates.csv", index=False)
        (pair_dir / "candidates.json").write_text(json.dumps(verdict))
    summary = summarize_imaging_track(tmp_path / "pairs.csv", tmp_path / "decisions.csv", tmp_path / "yield.csv",
                                      tmp_path / "catalog.csv", [tmp_path / "good", tmp_path / "bad"],
                                      tmp_path / "report")
    assert summary["failed_subtractions"] == [{"pair_id": "bad", "peaks_per_megapixel": 31000.0,
                                               "reasons": "; ".join(verdicts["bad"]["failure_reasons"])}]
    table = pd.read_csv(tmp_path / "report" / "pairs_summary.csv").set_index("pair_id")
    assert not table.loc["good", "subtraction_failed"] and table.loc["bad", "subtraction_failed"]
    report = (tmp_path / "report" / "imaging_report.md").read_text()
    assert "## Failed subtractions" in report and "method unity" in report and "1 of 2 pair(s)" in report
