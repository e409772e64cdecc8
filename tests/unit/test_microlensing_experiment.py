"""Training data from observation directories, training-only normalisation, training/resume/scoring,
the model's sidecar and the CLI wiring of ``observe``, ``train`` and ``predict``.

The observation directories here are hand-built toys with the layout of ``observe_shard``
(PSPL-like bumps vs bumps with a sharp spike, 0-3 observations per step) so the tests depend
neither on the simulator nor on the observation stage.
"""

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from astrodag.cli import main
from astrodag.errors import InputDataError
from astrodag.microlensing import features
from astrodag.microlensing.dataset import (
    LightCurveDataset,
    fit_training_normalisation,
    load_shard,
    shards_digest,
)
from astrodag.microlensing.experiment import checkpoint_steps, predict_split, train_cadence_model

STEPS = 80
DURATION = 40.0
STEP_DAYS = DURATION / STEPS
TINY_MODEL = {"channels": [8, 8, 8], "dense_units": 8}
TINY_TRAINING = {"max_epochs": 2, "batch_size": 16, "eval_batch_size": 64, "tensorboard": False,
                 "early_stopping_patience": 5}
CADENCE = {"name": "toy", "period_days": 1.0, "depth_mag": 21.0}
SIMULATION = {"priors": {"u0": [0.0, 1.0]}, "split_fractions": {"train": 0.67, "validation": 0.17, "test": 0.16}}
OBSERVATION = {"delta_chi2_threshold": 160, "reference_images": 20}


def write_observations(directory, n_events=96, seed=0, shard=0):
    """One observation directory as ``observe_shard`` writes it (COMMON layout), from toy light curves."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    labels = np.tile([0, 1], n_events // 2)
    t0 = rng.uniform(20, 60, n_events)
    bump = 1.0 / (1.0 + ((t[None] - t0[:, None]) / 6.0) ** 2)
    spike = (labels[:, None] == 1) * 1.5 * (np.abs(t[None] - t0[:, None] - 3) < 1.5)
    baseline = rng.uniform(17, 20, n_events)
    counts = rng.choice([0, 1, 2, 3], size=(n_events, STEPS), p=[0.2, 0.4, 0.2, 0.2]).astype(np.int32)
    observed = counts > 0
    magnitudes = baseline[:, None] - bump - spike + rng.normal(0, 0.02, (n_events, STEPS))
    errors = 0.02 / np.sqrt(np.maximum(counts, 1))
    scatter = np.where(counts > 1, rng.chisquare(2, (n_events, STEPS)) / 2, 0.0)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "magnitudes.npy", np.where(observed, magnitudes, 0).astype(np.float32))
    np.save(directory / "errors.npy", np.where(observed, errors, 0).astype(np.float32))
    np.save(directory / "scatter.npy", scatter.astype(np.float32))
    np.save(directory / "counts.npy", counts)
    split = np.array((["train"] * 8 + ["validation"] * 2 + ["test"] * 2) * (n_events // 12))
    binary = labels == 1
    pd.DataFrame({
        "event_id": np.arange(n_events) + shard * n_events, "label": labels.astype(np.int8), "split": split,
        "t0": t0 * STEP_DAYS, "u0": np.full(n_events, 0.3), "tE": np.full(n_events, 3.0),
        "baseline_mag": baseline, "reference_mag": baseline + rng.normal(0, 0.005, n_events),
        "observations": counts.sum(axis=1), "delta_chi2": np.where(binary, 500.0, np.nan),
        "pspl_like": np.zeros(n_events, bool),
        "evidence_time": np.where(binary & (split == "test"), t0 * STEP_DAYS, np.nan),
        "brightening_time": (t0 - 2) * STEP_DAYS,
    }).to_parquet(directory / "events.parquet")
    (directory / "summary.json").write_text(json.dumps({"events": n_events, "seconds": 0.1}))
    return directory


@pytest.fixture
def toy(tmp_path):
    return [write_observations(tmp_path / "observations" / f"shard{i}", seed=i, shard=i) for i in range(2)]


def test_items_are_the_causal_features_of_the_observation_directory(toy, tmp_path):
    shards = [load_shard(d) for d in toy]
    normalisation = fit_training_normalisation(shards, STEP_DAYS)
    dataset = LightCurveDataset(shards, "train", normalisation, STEP_DAYS)
    inputs, label = dataset[5]
    assert inputs.shape == (features.N_CHANNELS, STEPS) and inputs.dtype == torch.float32
    number, row = dataset.index[5]
    arrays = {name: np.load(toy[number] / f"{name}.npy") for name in ("magnitudes", "errors", "counts", "scatter")}
    reference = pd.read_parquet(toy[number] / "events.parquet")["reference_mag"].iloc[row]
    expected = normalisation.apply(features.causal_features(
        arrays["magnitudes"][row], arrays["errors"][row], arrays["counts"][row], arrays["scatter"][row],
        reference, STEP_DAYS))
    np.testing.assert_array_equal(inputs.numpy(), expected)
    assert label.item() == pd.read_parquet(toy[number] / "events.parquet")["label"].iloc[row]
    np.testing.assert_array_equal(dataset.mask(5), arrays["counts"][row] > 0)

    # Causal: changing the photometry after step 50 leaves the inputs before it as they were.
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("errors", "counts", "scatter"):
        np.save(changed / f"{name}.npy", arrays[name])
    later = arrays["magnitudes"].copy()
    later[:, 50:] -= 3.0
    np.save(changed / "magnitudes.npy", later)
    (changed / "events.parquet").write_bytes((toy[number] / "events.parquet").read_bytes())
    other = LightCurveDataset([load_shard(changed)], "train", normalisation, STEP_DAYS)
    position = int(np.flatnonzero(other.index[:, 1] == row)[0])
    np.testing.assert_array_equal(other[position][0].numpy()[:, :50], inputs.numpy()[:, :50])
    assert not np.array_equal(other[position][0].numpy()[:, 50:], inputs.numpy()[:, 50:])


def test_normalisation_uses_the_training_split_only(toy):
    shards = [load_shard(d) for d in toy]
    reference = fit_training_normalisation(shards, STEP_DAYS)
    for shard in shards:
        held_out = shard.events["split"].to_numpy() != "train"
        magnitudes = np.array(shard.magnitudes)
        magnitudes[held_out] += 100.0
        shard.magnitudes = magnitudes
    assert fit_training_normalisation(shards, STEP_DAYS) == reference
    inputs = LightCurveDataset(shards, "train", reference, STEP_DAYS)[0][0]
    observed = inputs[features.OBSERVED_CHANNEL] > 0
    assert abs(float(inputs[0][observed].mean())) < 1.5


def test_distinguishable_training_drops_pspl_like_binaries_and_balances_the_classes(toy):
    shards = [load_shard(d) for d in toy]
    for shard in shards:
        events = shard.events.copy()
        events.loc[(events["label"] == 1) & (events["event_id"] % 3 != 0), "pspl_like"] = True
        shard.events = events
    normalisation = fit_training_normalisation(shards, STEP_DAYS)
    everything = LightCurveDataset(shards, "train", normalisation, STEP_DAYS)
    curated = LightCurveDataset(shards, "train", normalisation, STEP_DAYS, binaries="distinguishable", seed=3)
    table = curated.events()
    assert not table.loc[table["label"] == 1, "pspl_like"].any()
    assert (curated.labels == 1).sum() == (curated.labels == 0).sum() == (everything.labels == 0).sum()
    kept = everything.events().query("label == 1 and not pspl_like")["event_id"]
    assert set(table.loc[table["label"] == 1, "event_id"]) == set(kept)  # every one at least once
    again = LightCurveDataset(shards, "train", normalisation, STEP_DAYS, binaries="distinguishable", seed=3)
    np.testing.assert_array_equal(again.index, curated.index)
    for shard in shards:
        shard.events = shard.events.assign(pspl_like=shard.events["label"] == 1)
    with pytest.raises(ValueError, match="no binary that is distinguishable"):
        LightCurveDataset(shards, "train", normalisation, STEP_DAYS, binaries="distinguishable")


def test_bad_observation_directories_are_named(toy, tmp_path):
    directory = toy[0]
    np.save(directory / "counts.npy", np.ones((5, STEPS), np.int32))
    with pytest.raises(InputDataError, match="counts.npy.*shape"):
        load_shard(directory)
    np.save(directory / "counts.npy", np.ones((96, STEPS), np.float32))
    with pytest.raises(InputDataError, match="counts.npy.*integer"):
        load_shard(directory)
    (directory / "scatter.npy").write_bytes(b"not numpy")
    with pytest.raises(InputDataError, match="scatter.npy"):
        load_shard(directory)
    events = pd.read_parquet(toy[1] / "events.parquet")
    events.drop(columns="reference_mag").to_parquet(toy[1] / "events.parquet")
    with pytest.raises(InputDataError, match="events.parquet.*reference_mag"):
        load_shard(toy[1])


def test_the_fingerprint_follows_the_observed_data(toy):
    digest = shards_digest(toy)
    # summary.json records run times, not data.
    (toy[0] / "summary.json").write_text(json.dumps({"events": 96, "seconds": 9.9}))
    assert shards_digest(toy) == digest
    scatter = np.load(toy[1] / "scatter.npy")
    scatter[3, 7] += 1.0
    np.save(toy[1] / "scatter.npy", scatter)
    changed = shards_digest(toy)
    assert changed != digest
    events = pd.read_parquet(toy[0] / "events.parquet")
    events.loc[0, "reference_mag"] += 0.01
    events.to_parquet(toy[0] / "events.parquet")
    assert shards_digest(toy) not in (digest, changed)


def test_checkpoint_steps():
    assert checkpoint_steps(1500).tolist() == [149, 299, 449, 599, 749, 899, 1049, 1199, 1349, 1499]


def train(toy, out_dir, training=TINY_TRAINING, **kwargs):
    return train_cadence_model(
        toy, out_dir, cadence="toy", duration_days=DURATION, seed=3, cadence_spec=CADENCE, simulation=SIMULATION,
        observation=OBSERVATION, model_options=TINY_MODEL, training_options=training, threads=1, progress=False,
        **kwargs,
    )


def test_training_is_reproducible_resumable_and_scores_the_test_split(toy, tmp_path):
    first = train(toy, tmp_path / "a")
    train(toy, tmp_path / "b")
    weights_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert first["data"]["events"] == {"train": 128, "validation": 32}
    assert set(first["validation_metrics"]) >= {"loss", "accuracy", "roc_auc", "mean_checkpoint_accuracy"}
    # A finished run rerun (e.g. by Snakemake's --forcerun) trains again, to the same weights.
    again = train(toy, tmp_path / "a")
    assert again["resumed_from_epoch"] == 0 and again["epochs_run"] == first["epochs_run"]
    weights_again = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert all(torch.equal(weights_a[k], weights_again[k]) for k in weights_a)

    sidecar = json.loads((tmp_path / "a" / "model.json").read_text())
    assert sidecar["cadence"] == CADENCE
    assert sidecar["simulation"] == SIMULATION and sidecar["observation"] == OBSERVATION
    assert sidecar["time_grid"] == {"epochs": STEPS, "duration_days": DURATION}
    assert sidecar["inputs"] == features.INPUT_LAYOUT
    assert sidecar["architecture"]["in_channels"] == features.N_CHANNELS
    assert sidecar["data"]["observations"] == [str(d) for d in toy]
    assert sidecar["data"]["sha256"] == shards_digest(toy)
    assert sidecar["precision"] == "float32" == sidecar["trainer"]["cpu_precision"]

    summary = predict_split(tmp_path / "a" / "model.pt", tmp_path / "a" / "model.json", toy,
                            tmp_path / "evaluation", progress=False)
    probabilities = np.load(tmp_path / "evaluation" / "probabilities.npy")
    events = pd.read_parquet(tmp_path / "evaluation" / "events.parquet")
    assert summary["events"] == 32 == len(events) == probabilities.shape[0]
    assert probabilities.shape[1] == STEPS and np.all((probabilities >= 0) & (probabilities <= 1))
    # Every column of the observation tables, the test split's rows in shard order.
    tables = [pd.read_parquet(d / "events.parquet") for d in toy]
    expected = pd.concat([table[table["split"] == "test"] for table in tables], ignore_index=True)
    pd.testing.assert_frame_equal(events, expected)
    mask = np.load(tmp_path / "evaluation" / "mask.npy")
    counts = np.concatenate([np.load(d / "counts.npy")[table["split"] == "test"] for d, table in zip(toy, tables)])
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (counts > 0).astype(np.uint8))
    assert np.load(tmp_path / "evaluation" / "times.npy")[-1] == pytest.approx(DURATION * (STEPS - 1) / STEPS)

    # A model trained on differently built inputs (an older version) is refused by name.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({key: value for key, value in sidecar.items() if key != "inputs"}))
    with pytest.raises(InputDataError, match="model.pt.*retrain"):
        predict_split(tmp_path / "a" / "model.pt", stale, toy, tmp_path / "stale_evaluation", progress=False)


def test_bfloat16_training_is_recorded_and_still_reproducible(toy, tmp_path):
    options = {**TINY_TRAINING, "cpu_precision": "bfloat16"}
    first = train(toy, tmp_path / "a", training=options)
    train(toy, tmp_path / "b", training=options)
    assert first["precision"] == "bfloat16"
    weights_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(weights_a[k].dtype == torch.float32 and torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


class FakeSpec:
    def to_dict(self):
        return CADENCE


@pytest.fixture
def fake_cadences(monkeypatch):
    from astrodag.microlensing import cadence

    spec = FakeSpec()
    monkeypatch.setattr(cadence, "load_cadences", lambda path: {"toy": spec})
    return spec


def test_cli_observe_passes_its_arguments_to_observe_shard(fake_cadences, monkeypatch, tmp_path):
    calls = []
    module = types.ModuleType("astrodag.microlensing.observe")

    class ObservationSettings(dict):
        @classmethod
        def from_config(cls, values):
            return cls(values)

    module.ObservationSettings = ObservationSettings
    module.observe_shard = lambda *args: calls.append(args) or {"events": 0}
    monkeypatch.setitem(sys.modules, "astrodag.microlensing.observe", module)
    status = main(["microlensing", "observe", "--events", str(tmp_path / "events.parquet"), "--cadences",
                   str(tmp_path / "cadences.tsv"), "--cadence", "toy", "--out-dir", str(tmp_path / "obs"),
                   "--epochs", "30", "--duration-days", "10", "--seed", "7", "--settings",
                   json.dumps(OBSERVATION)])
    assert status == 0
    ((events, out_dir, spec, times, settings, seed),) = calls
    assert (str(events), str(out_dir), spec, seed) == (str(tmp_path / "events.parquet"), str(tmp_path / "obs"),
                                                       fake_cadences, 7)
    np.testing.assert_allclose(times, np.arange(30) * 10 / 30)
    assert isinstance(settings, ObservationSettings) and settings == OBSERVATION
    # An unknown cadence is one readable line, status 2.
    assert main(["microlensing", "observe", "--events", "e", "--cadences", "c", "--cadence", "nope",
                 "--out-dir", "o"]) == 2


def test_cli_train_and_predict_read_observation_directories(fake_cadences, monkeypatch, tmp_path):
    from astrodag.microlensing import experiment

    calls = {}
    monkeypatch.setattr(experiment, "train_cadence_model", lambda *args, **kwargs: calls.update(train=(args, kwargs)))
    monkeypatch.setattr(experiment, "predict_split", lambda *args, **kwargs: calls.update(predict=(args, kwargs)))
    dirs = [str(tmp_path / "shard000"), str(tmp_path / "shard001")]
    assert main(["microlensing", "train", "--observations", *dirs, "--out-dir", str(tmp_path / "model"),
                 "--cadences", "c.tsv", "--cadence", "toy", "--duration-days", "40", "--seed", "3",
                 "--simulation-settings", json.dumps(SIMULATION), "--observation-settings",
                 json.dumps(OBSERVATION), "--threads", "1"]) == 0
    args, kwargs = calls["train"]
    assert [str(d) for d in args[0]] == dirs and str(args[1]) == str(tmp_path / "model")
    assert kwargs["cadence"] == "toy" and kwargs["duration_days"] == 40.0 and kwargs["seed"] == 3
    assert kwargs["cadence_spec"] == CADENCE
    assert kwargs["simulation"] == SIMULATION and kwargs["observation"] == OBSERVATION
    assert main(["microlensing", "predict", "--observations", *dirs, "--model", str(tmp_path / "model.pt"),
                 "--out-dir", str(tmp_path / "evaluation")]) == 0
    args, kwargs = calls["predict"]
    assert [str(d) for d in args[2]] == dirs and str(args[1]) == str(tmp_path / "model.json")
