"""The flare study's analysis on hand-made experiments: HARP-block bootstrap, training budget, recalibration."""

import json

import numpy as np
import pandas as pd
import pytest

from astrodag.flares.analysis import analyze_study
from astrodag.flares.sweep import sweep_experiment

RESAMPLES = 999
SEEDS = (0, 1, 2)


def _harp_predictions(harps, rng, skill, weight):
    """Windows of each HARP; flaring HARPs (every third) have positive windows; probabilities reweighted by odds."""
    rows = []
    for harp in harps:
        flaring = harp % 3 == 0
        for step in range(12):
            label = int(flaring and step >= 6)
            calibrated = 1.0 / (1.0 + np.exp(-(skill * (label - 0.5) * 4 - 2.0 + rng.normal(0.0, 1.0))))
            odds = weight * calibrated / (1.0 - calibrated)  # positives weighted up in training
            rows.append({"HARPNUM": harp, "end_time": step, "label": label, "probability": odds / (1.0 + odds)})
    return pd.DataFrame(rows)


def _experiment(root, model, seed, split_by_seed, budget):
    """Write predictions, model.json and the sweep's results.json of one experiment; return its two paths."""
    out = root / f"{model}{seed}"
    out.mkdir()
    shift = 7 * seed if split_by_seed else 0
    validation = [100 + (h + shift) % 60 for h in range(0, 30)]
    test = [100 + (h + shift) % 60 for h in range(30, 60)]
    # The baseline is deterministic: the same split gives the same predictions whatever the seed.
    noise = np.random.default_rng(seed if model == "everest" else 0)
    skill = 1.0 if model == "everest" else 0.8
    frames = []
    for split, harps in (("validation", validation), ("test", test)):
        frame = _harp_predictions(harps, np.random.default_rng([noise.integers(1000), len(split)]), skill, 20.0)
        frames.append(frame.assign(split=split))
    pd.concat(frames).to_parquet(out / "predictions.parquet")
    info = {"model": model, "target": "C_24h", "flare_class": "C", "window_hours": 24, "seed": seed,
            "training_seconds": 1.0, "latency": {"per_sample_ms": 0.1 if model == "everest" else 0.01}}
    if model == "everest":
        info.update(budget, trainer={"max_epochs": 3, "early_stopping_patience": 2})
    (out / "model.json").write_text(json.dumps(info))
    sweep_experiment(out / "predictions.parquet", out / "model.json", out)
    return out / "results.json", out / "predictions.parquet"


def _study(root, split_by_seed=True, budget=None, calibration="platt"):
    budget = budget or {"epochs_run": 3, "best_epoch": 3, "stopped_early": False}
    paths = [_experiment(root, model, seed, split_by_seed, budget) for model in ("everest", "baseline")
             for seed in SEEDS]
    analyze_study([p[0] for p in paths], [p[1] for p in paths], root / "analysis", n_resamples=RESAMPLES,
                  calibration=calibration)
    return root / "analysis"


@pytest.fixture(scope="module")
def fixed_split(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("fixed"), split_by_seed=False)


def test_sweep_records_the_training_budget(fixed_split):
    results = json.loads((fixed_split.parent / "everest0" / "results.json").read_text())
    assert results["training"] == {"epochs_run": 3, "best_epoch": 3, "stopped_early": False, "max_epochs": 3,
                                   "early_stopping_patience": 2}
    baseline = json.loads((fixed_split.parent / "baseline0" / "results.json").read_text())
    assert set(baseline["training"].values()) == {None}


def test_deterministic_baseline_gets_a_harp_bootstrap_interval(fixed_split):
    summary = pd.read_csv(fixed_split / "summary_by_target.csv")
    tss = summary[summary["metric"] == "tss"].set_index("model")
    # Over seeds the deterministic baseline has no spread; over the test sample of regions it has.
    assert tss.loc["baseline", "std"] == 0.0
    assert tss.loc["baseline", "harp_ci_high"] - tss.loc["baseline", "harp_ci_low"] > 0.05
    assert (tss["harp_ci_low"] <= tss["mean"]).all() and (tss["mean"] <= tss["harp_ci_high"]).all()
    # 30 test HARPs, every third one flaring: the independent units behind the interval.
    assert (tss["harps"] == 30).all() and (tss["positive_harps"] == 10).all()


def test_comparison_prints_bootstrap_and_exact_tests_with_their_smallest_p_values(fixed_split):
    paired = pd.read_csv(fixed_split / "paired_tests.csv")
    assert len(paired) == 1
    row = paired.iloc[0]
    assert row["bootstrap_min_pvalue"] == pytest.approx(1 / (RESAMPLES + 1))
    assert row["bootstrap_min_pvalue"] <= row["bootstrap_pvalue"] <= 1
    assert row["harp_ci_low"] <= row["difference"] <= row["harp_ci_high"]
    assert row["exact_min_pvalue"] == pytest.approx(2 / 2**3)
    report = (fixed_split / "report.md").read_text()
    assert "(min 0.001)" in report and "(min 0.25)" in report
    assert "30 (10)" in report


def test_report_states_the_training_budget_and_whether_the_comparison_is_fair(fixed_split, tmp_path):
    report = (fixed_split / "report.md").read_text()
    assert "## Training budget" in report
    assert "not a fair comparison of architectures" in report and "budget of 3 epochs" in report
    fair = _study(tmp_path, budget={"epochs_run": 2, "best_epoch": 1, "stopped_early": True})
    assert "not a fair comparison" not in (fair / "report.md").read_text()


def test_threshold_stability_next_to_each_comparison(fixed_split):
    paired = pd.read_csv(fixed_split / "paired_tests.csv").iloc[0]
    results = pd.read_csv(fixed_split / "all_results.csv")
    baseline = results[results["model"] == "baseline"]
    assert paired["baseline_validation_tss"] == pytest.approx(baseline["validation_tss"].mean())
    assert paired["baseline_test_tss"] == pytest.approx(baseline["tss"].mean())
    assert paired["baseline_validation_positives"] == 10 * 6 and paired["baseline_validation_positive_harps"] == 10
    report = (fixed_split / "report.md").read_text()
    cell = f"{paired['baseline_threshold']:.2f}: {paired['baseline_validation_tss']:.3f} -> "
    assert cell in report and "(60, 10)" in report


def test_calibration_is_reported_after_recalibration_on_validation(fixed_split):
    summary = pd.read_csv(fixed_split / "summary_by_target.csv").set_index(["model", "metric"])
    for model in ("everest", "baseline"):
        # Positives weighted 20:1 inflate the raw probabilities; the validation fit removes most of it.
        assert summary.loc[(model, "ece_recalibrated"), "mean"] < 0.5 * summary.loc[(model, "ece"), "mean"]
        assert summary.loc[(model, "brier_recalibrated"), "mean"] < summary.loc[(model, "brier"), "mean"]
    report = (fixed_split / "report.md").read_text()
    assert "ECE recalibrated" in report and "ECE raw" in report and "platt" in report


def test_splits_that_vary_with_the_seed_pool_their_harps(tmp_path):
    analysis = _study(tmp_path, split_by_seed=True, calibration="isotonic")
    summary = pd.read_csv(analysis / "summary_by_target.csv")
    tss = summary[summary["metric"] == "tss"]
    # Test HARPs of seeds 0, 1, 2 (shifted by 7): the union of three overlapping sets of 30.
    union = set()
    for seed in SEEDS:
        union |= {100 + (h + 7 * seed) % 60 for h in range(30, 60)}
    assert (tss["harps"] == len(union)).all()
    baseline = tss.set_index("model").loc["baseline"]
    assert baseline["std"] > 0  # the split now differs between seeds
    report = (analysis / "report.md").read_text()
    assert "3 distinct test splits" in report and "isotonic" in report
