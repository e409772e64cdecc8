"""The real/bogus comparison report: field and mission coverage, survey-rate metrics, flagged bright SNe."""

import json

import pandas as pd

from astrodag.supernova.realbogus.report import compare_realbogus


def _experiment(directory, threshold_rule):
    (directory / "model").mkdir(parents=True)
    (directory / "evaluation").mkdir()
    (directory / "model" / "model.json").write_text(json.dumps({
        "architecture": "braai", "seed": 0, "training_seconds": 1.0, "epochs_run": 2,
        "threshold_rule": threshold_rule}))
    rates = {"threshold": 0.4, "fnr": 0.1, "fnr_ci95": [0.05, 0.2], "fpr": 0.05, "fpr_ci95": [0.02, 0.1],
             "precision": 0.95}
    (directory / "evaluation" / "metrics.json").write_text(json.dumps({
        "aucpr": 0.97, "roc_auc": 0.98, "ece": 0.02, "at_threshold": rates,
        "at_equal_error": {**rates, "threshold": 0.45},
        "at_base_rate": {"bogus_per_real": 3.0, "precision": 0.86, "aucpr": 0.91},
        "test": {"n": 200, "n_real": 100, "missions": ["GALEX", "SWIFT"], "n_fields": 4,
                 "fields_per_mission": {"GALEX": 2, "SWIFT": 3}},
        "validation": {"n": 150, "n_real": 75, "n_fields": 3}}))


def test_report_states_fields_missions_base_rate_and_flags_bright_sne_scored_bogus(tmp_path):
    _experiment(tmp_path / "a", {"rule": "eer", "requested_rule": "fnr", "n_fields": 3, "interval95": [0.3, 0.5],
                                 "fallback_reason": "60 validation reals allow 1.20 misses"})
    index = pd.DataFrame({
        "sn_name": ["SN 1", "SN 2", "SN 3", "SN 4", "SN 4"], "field": ["SN 1", "SN 1", "SN 3", "SN 4", "SN 4"],
        "split": ["test", "test", "train", "validation", "validation"],
        "mission": ["SWIFT", "SWIFT", "GALEX", "PS1", "SWIFT"]})
    index.to_parquet(tmp_path / "index.parquet")
    pd.DataFrame({"sn_name": ["SN 1", "SN 2", "SN 3", "SN 4"], "ra": [10.0, 10.001, 50.0, 90.0],
                  "dec": [0.0, 0.0, 10.0, 20.0]}).to_csv(tmp_path / "catalog.csv", index=False)
    pd.DataFrame({"pair_id": ["p1", "p2", "p3", "p4"], "sn_name": ["SN 1", "SN 2", "SN 3", "SN 4"],
                  "mission": ["SWIFT", "SWIFT", "GALEX", "PS1"], "sn_in_science": True,
                  "sn_recovered": [True, True, True, False], "sn_significance": [82.0, 6.0, 25.0, float("nan")]}) \
        .to_csv(tmp_path / "pairs_summary.csv", index=False)
    # SN 1 (82 sigma) and SN 2 (6 sigma) scored bogus, SN 3 (25 sigma) real.
    pd.DataFrame({"pair_id": ["p1", "p2", "p3"], "ra": [10.0, 10.001, 50.0], "dec": [0.0, 0.0, 10.0],
                  "score": [0.001, 0.2, 0.9], "is_real": [False, False, True]}).to_parquet(tmp_path / "scored.parquet")
    report = compare_realbogus({"a": tmp_path / "a"}, "a", tmp_path / "scored.parquet", tmp_path / "pairs_summary.csv",
                               tmp_path / "index.parquet", tmp_path / "catalog.csv", tmp_path / "out")
    assert [row["sn_name"] for row in report["high_significance_bogus"]] == ["SN 1"]
    assert report["splits"]["test"] == {"triplets": 2, "n_fields": 1, "missions": ["SWIFT"],
                                        "fields_per_mission": {"SWIFT": 1}}
    assert report["splits"]["validation"]["fields_per_mission"] == {"PS1": 1, "SWIFT": 1}
    assert report["sn_recovery"]["test_split"]["n_fields"] == 1
    assert report["sn_recovery"]["test_split"]["supernovae"] == 2
    row = report["experiments"][0]
    assert (row["test_fields"], row["validation_fields"], row["threshold_fields"]) == (4, 3, 3)
    assert row["aucpr_survey_rate"] == 0.91 and row["threshold_rule"] == "eer"
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**SN 1** (SWIFT, test split, `p1`): 82.0σ" in text and "SN 2**" not in text
    assert "GALEX 2, SWIFT 3" in text and "0.300, 0.500" in text and "fell back to the equal-error" in text
    assert "| test       |          2 |        1 | SWIFT 1" in text
