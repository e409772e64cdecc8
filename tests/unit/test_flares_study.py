"""Experiment, sweep, analysis and the CLI of the flare study on a small synthetic data set."""

import json

import numpy as np
import pandas as pd
import pytest

from astrodag.cli import main
from astrodag.evaluation.thresholds import select_threshold, sweep_thresholds, threshold_grid
from astrodag.flares.analysis import analyze_study
from astrodag.flares.dataset import experiment_splits, horizon_observed, prepare_dataset
from astrodag.flares.experiment import fit_normalisation, train_experiment
from astrodag.flares.sweep import sweep_experiment
from astrodag.flares.synthetic import write_synthetic_dataset

TINY_MODEL = {"embed_dim": 8, "num_heads": 2, "ff_dim": 16, "num_blocks": 1}
TINY_TRAINING = {"max_epochs": 2, "batch_size": 256, "tensorboard": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("flares")
    write_synthetic_dataset(root / "kw.csv", root / "ev.csv", n_regions=80, seed=3)
    prepare_dataset(root / "kw.csv", root / "ev.csv", root / "X.npy", root / "w.parquet", root / "summary.json",
                    window_steps=10, cadence_minutes=60, stride=3, horizons_hours=(24,), flare_classes=("C",),
                    split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2}, split_seed=1)
    return root


def train(dataset, out_dir, model="everest", seed=0, dataset_options=None):
    return train_experiment(dataset / "X.npy", dataset / "w.parquet", out_dir, "C", 24, seed, model,
                            model_options=TINY_MODEL if model == "everest" else {},
                            training_options=TINY_TRAINING, threads=1, progress=False,
                            dataset_options=dataset_options)


def seed_splits(dataset, seed):
    """The windows' index with the split of an experiment of this seed (default settings), target C 24 h."""
    index = pd.read_parquet(dataset / "w.parquet")
    index["split"] = experiment_splits(index, seed, {"train": 0.6, "validation": 0.2, "test": 0.2}, 7)
    return index[horizon_observed(index, 24)]


def test_experiment_writes_only_validation_and_test_predictions(dataset, tmp_path):
    sidecar = train(dataset, tmp_path / "e")
    predictions = pd.read_parquet(tmp_path / "e" / "predictions.parquet")
    index = seed_splits(dataset, 0)
    assert set(predictions["split"]) == {"validation", "test"}
    assert len(predictions) == (index["split"] != "train").sum()
    assert predictions["probability"].between(0, 1).all()
    for name in ("model.pt", "model.json", "history.csv", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tmp_path / "e" / name).exists(), name
    assert sidecar["data"]["windows"]["train"] == (index["split"] == "train").sum()
    assert sidecar["latency"]["per_sample_ms"] > 0


def test_normalisation_uses_the_training_split_only(dataset):
    features = np.load(dataset / "X.npy")
    index = seed_splits(dataset, 0)
    train_rows = index.loc[index["split"] == "train", "row"].to_numpy()
    before = fit_normalisation(features, train_rows)
    changed = features.copy()
    changed[index.loc[index["split"] == "test", "row"].to_numpy()] *= 1000.0
    assert fit_normalisation(changed, train_rows) == before


def test_same_seed_same_predictions(dataset, tmp_path):
    train(dataset, tmp_path / "a", seed=5)
    train(dataset, tmp_path / "b", seed=5)
    first = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    second = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    pd.testing.assert_frame_equal(first, second)


def test_each_seed_tests_on_other_regions_and_fits_its_own_normalisation(dataset, tmp_path):
    sidecars, test_regions = [], []
    for seed in (0, 1):
        sidecars.append(train(dataset, tmp_path / str(seed), model="baseline", seed=seed))
        predictions = pd.read_parquet(tmp_path / str(seed) / "predictions.parquet")
        index = seed_splits(dataset, seed)
        # The rows and splits are that seed's, and no region sits in two splits.
        expected = pd.concat([index[index["split"] == split] for split in ("validation", "test")])
        assert predictions["HARPNUM"].tolist() == expected["HARPNUM"].tolist()
        assert predictions["split"].tolist() == expected["split"].tolist()
        assert predictions.groupby("HARPNUM")["split"].nunique().max() == 1
        assert not set(predictions["HARPNUM"]) & set(index.loc[index["split"] == "train", "HARPNUM"])
        test_regions.append(set(predictions.loc[predictions["split"] == "test", "HARPNUM"]))
        assert sidecars[-1]["split"]["split_seed"] == 7 + seed
        assert sorted(test_regions[-1]) == sidecars[-1]["split"]["test_regions"]
    assert test_regions[0] != test_regions[1]
    assert sidecars[0]["normalisation"] != sidecars[1]["normalisation"]


def test_windows_whose_horizon_outruns_the_region_are_left_out(dataset, tmp_path):
    sidecar = train(dataset, tmp_path / "drop", model="baseline")
    predictions = pd.read_parquet(tmp_path / "drop" / "predictions.parquet")
    region_end = pd.read_parquet(dataset / "w.parquet").groupby("HARPNUM")["region_end"].first()
    assert (predictions["end_time"] + pd.Timedelta(hours=24) <= predictions["HARPNUM"].map(region_end)).all()
    assert sidecar["data"]["windows_horizon_unobserved"] > 0
    kept = train(dataset, tmp_path / "keep", model="baseline", dataset_options={"drop_unobserved_horizon": False})
    assert sum(kept["data"]["windows"].values()) == sum(sidecar["data"]["windows"].values()) + sidecar["data"][
        "windows_horizon_unobserved"]


def test_time_split_is_the_same_for_every_seed(dataset, tmp_path):
    options = {"split_method": "time"}
    first = train(dataset, tmp_path / "a", model="baseline", seed=0, dataset_options=options)
    second = train(dataset, tmp_path / "b", model="baseline", seed=1, dataset_options=options)
    assert first["split"]["test_regions"] == second["split"]["test_regions"]
    assert first["split"]["split_seed"] is None
    index = pd.read_parquet(dataset / "w.parquet").groupby("HARPNUM")["region_start"].first()
    predictions = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    assert index[first["split"]["test_regions"]].min() >= index[
        predictions.loc[predictions["split"] == "validation", "HARPNUM"].unique()].max()


def test_sweep_chooses_on_validation_and_scores_test_once(dataset, tmp_path):
    train(dataset, tmp_path, model="baseline")
    results = sweep_experiment(tmp_path / "predictions.parquet", tmp_path / "model.json", tmp_path)
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    validation = predictions[predictions["split"] == "validation"]
    expected = select_threshold(sweep_thresholds(validation["label"], validation["probability"], threshold_grid()))
    assert results["threshold"] == expected
    test = predictions[predictions["split"] == "test"]
    predicted = test["probability"] >= expected
    assert results["test"]["tp"] == int((predicted & (test["label"] == 1)).sum())
    assert len(pd.read_csv(tmp_path / "thresholds.csv")) == 81


def test_analysis_reports_intervals_and_the_paired_comparison(dataset, tmp_path):
    results, predictions = [], []
    for model in ("everest", "baseline"):
        for seed in (0, 1, 2):
            out = tmp_path / f"{model}{seed}"
            train(dataset, out, model=model, seed=seed)
            sweep_experiment(out / "predictions.parquet", out / "model.json", out)
            results.append(out / "results.json")
            predictions.append(out / "predictions.parquet")
    analyze_study(results, predictions, tmp_path / "analysis", n_resamples=200)
    summary = pd.read_csv(tmp_path / "analysis" / "summary_by_target.csv")
    tss = summary[(summary["metric"] == "tss")]
    assert set(tss["model"]) == {"everest", "baseline"} and (tss["n"] == 3).all()
    assert (tss["t_ci_low"] <= tss["mean"]).all() and (tss["mean"] <= tss["t_ci_high"]).all()
    paired = pd.read_csv(tmp_path / "analysis" / "paired_tests.csv")
    assert len(paired) == 1 and paired["seeds"].iloc[0] == 3
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "EVEREST transformer" in report and "logistic baseline" in report
    assert (tmp_path / "analysis" / "tss_heatmap_everest.png").stat().st_size > 0


def test_cli_reports_bad_input_in_one_line_naming_the_file(tmp_path, caplog):
    bad = tmp_path / "keywords.csv"
    bad.write_text("timestamp,HARPNUM,USFLUX\n2012-01-01T00:00:00Z,1,1e22\n")
    events = tmp_path / "events.csv"
    events.write_text("HARPNUM,peak_time,goes_class\n")
    status = main(["flares", "build-dataset", "--keywords", str(bad), "--events", str(events),
                   "--features", str(tmp_path / "X.npy"), "--index", str(tmp_path / "w.parquet"),
                   "--summary", str(tmp_path / "s.json")])
    assert status == 2
    assert "keywords.csv" in caplog.text and "TOTUSJH" in caplog.text
    assert not (tmp_path / "X.npy").exists()


def test_cli_simulate_and_help(tmp_path, capsys):
    assert main(["flares", "simulate", "--keywords", str(tmp_path / "k.csv"), "--events", str(tmp_path / "e.csv"),
                 "--regions", "5", "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["regions"] == 5
    with pytest.raises(SystemExit):
        main(["flares", "train", "--help"])
    assert "--flare-class" in capsys.readouterr().out


def test_unknown_training_option_is_a_clear_error(dataset, tmp_path, caplog):
    status = main(["flares", "train", "--features", str(dataset / "X.npy"), "--index", str(dataset / "w.parquet"),
                   "--out-dir", str(tmp_path), "--flare-class", "C", "--window", "24", "--seed", "0",
                   "--training-options", '{"max_epoch": 3}'])
    assert status == 2 and "max_epoch" in caplog.text
