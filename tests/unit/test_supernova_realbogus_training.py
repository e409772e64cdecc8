"""Training and evaluation of the real/bogus classifier on tiny synthetic triplet datasets."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from realbogus_helpers import triplets, write_dataset

from astrodag.errors import ConfigError, InputDataError
from astrodag.evaluation.base_rate import base_rate_metrics
from astrodag.evaluation.thresholds import equal_error_threshold, threshold_for_fnr
from astrodag.supernova.realbogus import scoring
from astrodag.supernova.realbogus.training import (
    RealBogusSettings,
    TripletDataset,
    choose_threshold,
    evaluate_realbogus,
    load_splits,
    train_realbogus,
)
from astrodag.training import precision

QUICK = {"braai": {"max_epochs": 1, "batch_size": 32}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("triplets"), {"train": 128, "validation": 32, "test": 32})


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A braai model trained for a few epochs on the easy synthetic problem, and its evaluation."""
    out = tmp_path_factory.mktemp("model")
    settings = RealBogusSettings.from_config({"braai": {"max_epochs": 4, "batch_size": 32}})
    sidecar = train_realbogus(dataset, out / "model", "braai", 0, settings, threads=1, progress=False)
    metrics = evaluate_realbogus(out / "model", dataset, out / "evaluation", settings, threads=1)
    return out, sidecar, metrics


def _weights(path):
    return torch.load(path, weights_only=True)


def test_settings_defaults_and_errors_name_the_key():
    settings = RealBogusSettings.from_config({})
    assert settings.architecture("braai").max_epochs == 6 and settings.resnet18.stem_stride == 2
    assert settings.fnr_targets == (0.01, 0.02, 0.05)
    with pytest.raises(ConfigError, match="supernova.realbogus.braai.epochs"):
        RealBogusSettings.from_config({"braai": {"epochs": 3}})
    with pytest.raises(ConfigError, match="supernova.realbogus.class_balance"):
        RealBogusSettings.from_config({"class_balance": "oversample"})
    with pytest.raises(ConfigError, match="supernova.realbogus.fnr_targets"):
        RealBogusSettings.from_config({"fnr_targets": [0.01, 1.5]})
    with pytest.raises(ConfigError, match="supernova.realbogus.architecture"):
        settings.architecture("vgg")


def test_easy_problem_is_separated_and_every_output_is_written(trained):
    out, sidecar, metrics = trained
    assert list(metrics)[0] == "aucpr" and metrics["aucpr"] > 0.9
    assert sidecar["validation_metrics"]["aucpr"] > 0.9
    assert sidecar["input_shape"] == [3, 63, 63] and sidecar["architecture"] == "braai"
    assert sidecar["normalisation"] == {"method": "sky", "clip": 30.0}
    assert sidecar["threshold_rule"]["chosen_on"] == "validation" and 0 <= sidecar["threshold"] <= 1
    assert json.loads((out / "model" / "model.json").read_text())["threshold"] == sidecar["threshold"]
    for name in ("model.pt", "history.csv", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (out / "model" / name).is_file(), name
    for name in ("metrics.json", "predictions.parquet", "thresholds.csv", "pr.png", "roc.png", "reliability.png",
                 "confusion_matrix.png"):
        assert (out / "evaluation" / name).is_file(), name
    predictions = pd.read_parquet(out / "evaluation" / "predictions.parquet")
    assert len(predictions) == 32 and set(predictions["split"]) == {"test"}
    assert {"pair_id", "label", "score", "is_real"} <= set(predictions.columns)
    assert metrics["at_threshold"]["threshold"] == sidecar["threshold"]
    counts = metrics["confusion_matrix"]
    assert sum(counts.values()) == 32
    assert [t["target_fnr"] for t in metrics["fnr_targets"]] == [0.01, 0.02, 0.05]
    for target in metrics["fnr_targets"]:  # chosen on validation, so the bound holds there
        assert target["validation_fnr"] <= target["target_fnr"] + 1e-12
    # Four fields of 8 triplets in each split; the helper's survey has one bogus per real, so the base-rate
    # figures equal the subsampled ones.
    assert metrics["test"]["n_fields"] == metrics["validation"]["n_fields"] == 4
    assert metrics["test"]["fields_per_mission"] == {"PS1": 4, "SWIFT": 4}
    assert sidecar["threshold_rule"]["n_fields"] == 4 and sidecar["data"]["fields"]["train"]["n_fields"] == 16
    assert metrics["at_base_rate"]["bogus_per_real"] == 1.0
    assert metrics["at_base_rate"]["aucpr"] == pytest.approx(metrics["aucpr"])
    table = pd.read_csv(out / "evaluation" / "thresholds.csv")
    assert table["marker"].fillna("").str.split("+").map(lambda marks: "operating" in marks).sum() == 1


def test_bfloat16_scores_of_a_trained_model_agree_with_float32(trained):
    out = trained[0]
    inputs, _ = triplets(300, seed=7)  # new random normalised triplets
    exact = scoring.RealBogusScorer.from_files(out / "model" / "model.pt", device="cpu", precision="float32")
    fast = scoring.RealBogusScorer.from_files(out / "model" / "model.pt", device="cpu", precision="bfloat16")
    reference = exact.score(inputs)
    assert np.ptp(reference) > 0.2  # trained: the scores spread (an untrained net gives ~0.5 +- 0.02)
    np.testing.assert_allclose(fast.score(inputs), reference, rtol=0, atol=0.02)


def test_evaluation_scores_in_float32_where_auto_would_pick_bfloat16(trained, dataset, tmp_path, monkeypatch):
    out, _, metrics = trained
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert scoring.RealBogusScorer.from_files(out / "model" / "model.pt", device="cpu").precision == "bfloat16"
    settings = RealBogusSettings.from_config({"braai": {"max_epochs": 4, "batch_size": 32}})
    again = evaluate_realbogus(out / "model", dataset, tmp_path, settings, threads=1)
    assert metrics["scoring"]["precision"] == again["scoring"]["precision"] == "float32"
    assert again["aucpr"] == metrics["aucpr"] and again["at_threshold"] == metrics["at_threshold"]
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "predictions.parquet")["score"],
                                  pd.read_parquet(out / "evaluation" / "predictions.parquet")["score"])


def test_same_seed_gives_bit_identical_weights(dataset, tmp_path):
    settings = RealBogusSettings.from_config(QUICK)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_realbogus(dataset, tmp_path / name, "braai", seed, settings, threads=1, progress=False)
    a, b, c = (_weights(tmp_path / name / "model.pt") for name in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_rerun_of_a_finished_run_trains_again_to_the_same_weights(dataset, tmp_path):
    settings = RealBogusSettings.from_config(QUICK)
    first = train_realbogus(dataset, tmp_path / "m", "braai", 0, settings, threads=1, progress=False)
    before = _weights(tmp_path / "m" / "model.pt")
    again = train_realbogus(dataset, tmp_path / "m", "braai", 0, settings, threads=1, progress=False)
    assert first["resumed_from_epoch"] == again["resumed_from_epoch"] == 0 and again["epochs_run"] == 1
    after = _weights(tmp_path / "m" / "model.pt")
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_resnet_and_balanced_sampling_train(dataset, tmp_path):
    settings = RealBogusSettings.from_config({"resnet18": {"max_epochs": 1, "width": 8, "batch_size": 32},
                                              "class_balance": "balanced"})
    sidecar = train_realbogus(dataset, tmp_path / "r", "resnet18", 0, settings, threads=1, progress=False)
    assert sidecar["options"] == {"in_channels": 3, "dropout": 0.0, "stem_stride": 2, "width": 8}
    assert sidecar["loss"]["positive_weight"] == 1.0


def test_cross_mission_experiment_records_and_uses_the_missions(tmp_path):
    dataset = write_dataset(tmp_path / "data", {"train": 64, "validation": 32, "test": 32})
    index = pd.read_parquet(dataset / "index.parquet")
    # One training-split field seen by PS1 only: training never saw its sky.
    index.loc[index["field"] == "SN train 0", "mission"] = "PS1"
    index.to_parquet(dataset / "index.parquet", index=False)
    settings = RealBogusSettings.from_config(QUICK)
    sidecar = train_realbogus(dataset, tmp_path / "m", "braai", 0, settings, missions_train=["SWIFT"],
                              missions_test=["PS1"], threads=1, progress=False)
    assert sidecar["missions"] == {"train": ["SWIFT"], "test": ["PS1"]}
    assert sidecar["data"]["triplets"] == {"train": 28, "validation": 16}
    metrics = evaluate_realbogus(tmp_path / "m", dataset, tmp_path / "e", settings)
    assert metrics["test"]["missions"] == ["PS1"] and metrics["validation"]["missions"] == ["SWIFT"]
    # PS1 was held out of training: its triplets of every split are test triplets, but only in the fields
    # (sky) that training and validation did not use.
    trained_on = set(index.loc[(index["mission"] == "SWIFT") & (index["split"] != "test"), "field"])
    tested = index[(index["mission"] == "PS1") & ~index["field"].isin(trained_on)]
    assert metrics["test"]["n"] == len(tested) == 16 + 8
    assert set(metrics["test"]["fields"]) == set(tested["field"]) and not set(metrics["test"]["fields"]) & trained_on
    assert metrics["test"]["n_fields"] == 5 and metrics["per_mission"]["PS1"]["n_fields"] == 5
    assert set(metrics["per_mission"]) == {"PS1"}
    with pytest.raises(InputDataError, match=r"the train split for missions \['GALEX'\] holds no triplets"):
        train_realbogus(dataset, tmp_path / "g", "braai", 0, settings, missions_train=["GALEX"], progress=False)


def test_dataset_augments_with_square_symmetries_and_balances():
    array = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    torch.manual_seed(0)
    dataset = TripletDataset(array, np.array([0, 1]), np.array([1, 0]), augment=("flips", "rot90"))
    symmetries = [np.rot90(array[0], k, axes=(1, 2)) for k in range(4)]
    symmetries += [s[:, :, ::-1] for s in symmetries]
    seen = set()
    for _ in range(64):
        triplet, label = dataset[0]
        match = [i for i, s in enumerate(symmetries) if np.array_equal(triplet.numpy(), s)]
        assert len(match) == 1 and label.item() == 1.0
        seen.add(match[0])
    assert seen == set(range(8))
    balanced = TripletDataset(array, np.array([0, 1, 1, 1]), np.array([1, 0, 0, 0]), balanced=True)
    assert len(balanced) == 6 and sum(balanced[i][1].item() for i in range(6)) == 3


def test_dataset_errors_name_the_file(dataset, tmp_path):
    copy = write_dataset(tmp_path / "bad", {"train": 8, "validation": 4, "test": 4})
    (copy / "test.npy").unlink()
    with pytest.raises(InputDataError, match="test.npy: missing"):
        load_splits(copy)
    np.save(copy / "test.npy", np.zeros((3, 3, 63, 63), np.float32))
    with pytest.raises(InputDataError, match="holds 3 triplets but index.parquet lists 4"):
        load_splits(copy)
    np.save(copy / "test.npy", np.zeros((4, 3, 63, 63), np.float64))
    with pytest.raises(InputDataError, match="must be float32"):
        load_splits(copy)
    settings = RealBogusSettings.from_config({**QUICK, "normalisation": "robust"})
    with pytest.raises(InputDataError, match="summary.json: the triplets were cut with normalisation 'sky', but"):
        train_realbogus(dataset, tmp_path / "m", "braai", 0, settings, progress=False)
    summary = json.loads((dataset / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "normalisation": None}))
    np.save(copy / "test.npy", np.zeros((4, 3, 63, 63), np.float32))
    settings = RealBogusSettings.from_config({**QUICK, "normalisation": "l2"})
    with pytest.raises(InputDataError, match="train.npy: channels have norms above 1"):
        train_realbogus(copy, tmp_path / "m", "braai", 0, settings, progress=False)
    with pytest.raises(InputDataError, match="index.parquet: missing"):
        load_splits(tmp_path / "nowhere")


def _validation_scores(n_real, n_bogus, unlearnable, seed=0):
    """Scores of a decent model: reals near 0.8, bogus near 0.2, and ``unlearnable`` reals scored ~0.01."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_real, int), np.zeros(n_bogus, int)]
    scores = np.r_[rng.uniform(0.5, 1.0, n_real), rng.uniform(0.0, 0.5, n_bogus)]
    scores[:unlearnable] = rng.uniform(0.005, 0.015, unlearnable)
    return labels, scores


def test_fnr_threshold_needs_enough_validation_reals_else_equal_error():
    settings = RealBogusSettings.from_config({"target_fnr": 0.02, "fnr_min_misses": 5, "threshold_bootstrap": 200})
    labels, scores = _validation_scores(60, 60, unlearnable=3)
    fields = np.r_[np.arange(60) % 6, np.arange(60) % 6]
    record = choose_threshold(labels, scores, settings, fields=fields, seed=1)
    # 60 reals allow 1.2 misses at 2 %: three unlearnable reals would drag the FNR threshold to ~0.01.
    assert threshold_for_fnr(labels, scores, 0.02) < 0.02
    assert record["rule"] == "eer" and record["requested_rule"] == "fnr" and "fnr_min_misses=5" in \
        record["fallback_reason"]
    assert record["value"] == equal_error_threshold(labels, scores) > 0.3
    assert record["n_real"] == 60 and record["n_fields"] == 6
    low, high = record["interval95"]
    assert low <= record["value"] <= high and "6 validation fields" in record["interval_method"]
    assert record["validation_fnr_ci95"][0] <= record["validation_fnr"] <= record["validation_fnr_ci95"][1]
    assert choose_threshold(labels, scores, settings, fields=fields, seed=1) == record

    labels, scores = _validation_scores(300, 300, unlearnable=3)
    record = choose_threshold(labels, scores, settings, fields=np.arange(600) % 10)
    assert record["rule"] == "fnr" and record["fallback_reason"] is None
    assert record["value"] == threshold_for_fnr(labels, scores, 0.02)


def test_base_rate_metrics_equal_those_of_explicitly_replicated_bogus():
    from sklearn.metrics import average_precision_score, precision_score

    labels, scores = _validation_scores(40, 40, unlearnable=2, seed=3)
    scores[40:45] = 0.9  # a few confident bogus: precision depends on the base rate
    result = base_rate_metrics(labels, scores, 0.5, negatives_per_positive=4.0)
    replicated = np.r_[np.flatnonzero(labels == 1), np.repeat(np.flatnonzero(labels == 0), 4)]
    y, p = labels[replicated], scores[replicated]
    assert result["weight_of_negatives"] == 4.0
    assert result["aucpr"] == pytest.approx(average_precision_score(y, p))
    assert result["precision"] == pytest.approx(precision_score(y, p >= 0.5))
    assert result["precision"] < precision_score(labels, scores >= 0.5)
    # Unequal split sizes: the weight brings the split to the survey's ratio.
    half = np.r_[np.arange(40), np.arange(40, 80, 2)]
    assert base_rate_metrics(labels[half], scores[half], 0.5, 4.0)["weight_of_negatives"] == 8.0
    assert base_rate_metrics(labels, scores, 0.5, None)["aucpr"] is None
