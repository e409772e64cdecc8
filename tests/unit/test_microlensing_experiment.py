"""Causal inputs, training-only normalisation, training/resume/scoring and classifying real files.

The shards here are hand-built toys (PSPL-like bumps vs bumps with a sharp
spike) so the tests do not depend on the simulator.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from astrodag.errors import InputDataError
from astrodag.microlensing.dataset import (
    INPUT_LAYOUT,
    LightCurveDataset,
    Normalisation,
    causal_features,
    fit_normalisation,
    load_shard,
)
from astrodag.microlensing.experiment import checkpoint_steps, predict_split, train_cadence_model

STEPS = 80
DURATION = 40.0
TINY_MODEL = {"channels": [8, 8, 8], "dense_units": 8}
TINY_TRAINING = {"max_epochs": 2, "batch_size": 16, "eval_batch_size": 64, "tensorboard": False,
                 "early_stopping_patience": 5}


def write_toy_shard(directory, n_events=96, seed=0, shard=0):
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    labels = np.tile([0, 1], n_events // 2)
    t0 = rng.uniform(20, 60, n_events)
    bump = 1.0 / (1.0 + ((t[None] - t0[:, None]) / 6.0) ** 2)
    spike = (labels[:, None] == 1) * 1.5 * (np.abs(t[None] - t0[:, None] - 3) < 1.5)
    baseline = rng.uniform(17, 20, n_events)[:, None]
    magnitudes = baseline - bump - spike + rng.normal(0, 0.02, (n_events, STEPS))
    errors = np.full((n_events, STEPS), 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "magnitudes.npy", magnitudes.astype(np.float32))
    np.save(directory / "errors.npy", errors.astype(np.float32))
    split = np.array((["train"] * 8 + ["validation"] * 2 + ["test"] * 2) * (n_events // 12))
    pd.DataFrame({
        "event_id": np.arange(n_events) + shard * n_events, "label": labels.astype(np.int8), "split": split,
        "t0": t0 * DURATION / STEPS, "tE": np.full(n_events, 3.0), "u0": np.full(n_events, 0.3),
        "pspl_like": np.zeros(n_events, bool),
    }).to_parquet(directory / "events.parquet")
    mask = (rng.random((n_events, STEPS)) > 0.2).astype(np.uint8)
    np.save(directory / "mask.npy", mask)
    return directory, directory / "mask.npy"


@pytest.fixture
def toy(tmp_path):
    return [write_toy_shard(tmp_path / f"shard{i}", seed=i, shard=i) for i in range(2)]


def test_causal_features_depend_only_on_the_past():
    rng = np.random.default_rng(3)
    magnitudes, errors = rng.normal(18, 1, (2, 50)), rng.uniform(0.01, 0.1, (2, 50))
    mask = (rng.random((2, 50)) > 0.3).astype(np.uint8)
    features = causal_features(magnitudes, errors, mask)
    changed = magnitudes.copy()
    changed[:, 30:] += 5
    assert np.array_equal(causal_features(changed, errors, mask)[..., :30], features[..., :30])
    # Running mean over observed epochs only; masked epochs are zero in every value channel.
    observed = np.flatnonzero(mask[0][:10])
    last = observed[-1]
    expected = magnitudes[0, last] - magnitudes[0, observed].mean()
    assert features[0, 1, last] == pytest.approx(expected, abs=1e-4)
    assert np.all(features[:, :3][np.broadcast_to(mask[:, None] == 0, features[:, :3].shape)] == 0)


def test_normalised_inputs_carry_the_last_observed_value_and_stay_causal():
    normalisation = Normalisation(mean=(18.0, 0.0, 0.05), std=(2.0, 0.5, 0.01))
    magnitudes = np.array([[19.0, 99.0, 20.0, 99.0, 99.0, 21.0]])  # the masked values are never seen
    errors = np.full((1, 6), 0.05)
    mask = np.array([[0, 0, 1, 0, 0, 1]], np.uint8)
    features = normalisation.apply(causal_features(magnitudes, errors, mask))
    # Before the first observation: 0; then the value of the last observed epoch until the next one.
    assert features[0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0, 1.0, 1.5])
    assert features[0, 3].tolist() == [0, 0, 1, 0, 0, 1]
    # Deviation from the running mean: 0 at the first observation, +0.5 mag at the second (mean 20.5).
    assert features[0, 1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    # A single event (4, steps) gives the same as the batch, and the future does not leak backwards.
    single = normalisation.apply(causal_features(magnitudes[0], errors[0], mask[0]))
    np.testing.assert_array_equal(single, features[0])
    changed = magnitudes.copy()
    changed[0, 5] = 10.0
    later = normalisation.apply(causal_features(changed, errors, mask))
    np.testing.assert_array_equal(later[..., :5], features[..., :5])


def test_normalisation_uses_the_training_split_only(toy, tmp_path):
    shards = [load_shard(d, m) for d, m in toy]
    reference = fit_normalisation(shards)
    for shard in shards:
        held_out = shard.events["split"].to_numpy() != "train"
        magnitudes = np.array(shard.magnitudes)
        magnitudes[held_out] += 100.0
        shard.magnitudes = magnitudes
    assert fit_normalisation(shards) == reference
    dataset = LightCurveDataset(shards, "train", reference)
    inputs, label = dataset[0]
    assert inputs.shape == (4, STEPS) and inputs.dtype == torch.float32 and label.item() in (0, 1)
    observed = inputs[3] > 0
    assert abs(float(inputs[0][observed].mean())) < 1.5


def test_bad_shards_are_named(toy, tmp_path):
    shard_dir, mask = toy[0]
    np.save(tmp_path / "short_mask.npy", np.ones((5, STEPS), np.uint8))
    with pytest.raises(InputDataError, match="short_mask.npy.*shape"):
        load_shard(shard_dir, tmp_path / "short_mask.npy")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(InputDataError, match="broken.npy"):
        load_shard(shard_dir, tmp_path / "broken.npy")


def test_checkpoint_steps():
    assert checkpoint_steps(1500).tolist() == [149, 299, 449, 599, 749, 899, 1049, 1199, 1349, 1499]


def train(toy, out_dir, training=TINY_TRAINING, **kwargs):
    return train_cadence_model(
        [d for d, _ in toy], [m for _, m in toy], out_dir, cadence="toy", duration_days=DURATION, seed=3,
        model_options=TINY_MODEL, training_options=training, threads=1, progress=False, **kwargs,
    )


def test_training_is_reproducible_resumable_and_scores_the_test_split(toy, tmp_path):
    first = train(toy, tmp_path / "a")
    train(toy, tmp_path / "b")
    weights_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert first["data"]["events"] == {"train": 128, "validation": 32}
    assert set(first["validation_metrics"]) >= {"loss", "accuracy", "roc_auc", "mean_checkpoint_accuracy"}
    # A finished run rerun (e.g. by Snakemake after a lost output) resumes instead of starting over.
    again = train(toy, tmp_path / "a")
    assert again["resumed_from_epoch"] == first["epochs_run"]

    summary = predict_split(tmp_path / "a" / "model.pt", tmp_path / "a" / "model.json",
                            [d for d, _ in toy], [m for _, m in toy], tmp_path / "evaluation", progress=False)
    probabilities = np.load(tmp_path / "evaluation" / "probabilities.npy")
    events = pd.read_parquet(tmp_path / "evaluation" / "events.parquet")
    assert summary["events"] == 32 == len(events) == probabilities.shape[0]
    assert set(events["split"]) == {"test"}
    assert probabilities.shape[1] == STEPS and np.all((probabilities >= 0) & (probabilities <= 1))
    mask = np.load(tmp_path / "evaluation" / "mask.npy")
    first_test = np.flatnonzero(pd.read_parquet(toy[0][0] / "events.parquet")["split"] == "test")[0]
    expected_first = np.load(toy[0][1])[first_test]
    assert np.array_equal(mask[0], expected_first)
    assert np.load(tmp_path / "evaluation" / "times.npy")[-1] == pytest.approx(DURATION * (STEPS - 1) / STEPS)

    # A model trained on differently built inputs (an older version) is refused by name.
    sidecar = json.loads((tmp_path / "a" / "model.json").read_text())
    assert sidecar["inputs"] == INPUT_LAYOUT
    assert sidecar["precision"] == "float32" == sidecar["trainer"]["cpu_precision"]
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({key: value for key, value in sidecar.items() if key != "inputs"}))
    with pytest.raises(InputDataError, match="model.pt.*retrain"):
        predict_split(tmp_path / "a" / "model.pt", stale, [d for d, _ in toy], [m for _, m in toy],
                      tmp_path / "stale_evaluation", progress=False)


def test_bfloat16_training_is_recorded_and_still_reproducible(toy, tmp_path):
    options = {**TINY_TRAINING, "cpu_precision": "bfloat16"}
    first = train(toy, tmp_path / "a", training=options)
    train(toy, tmp_path / "b", training=options)
    assert first["precision"] == "bfloat16"
    weights_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(weights_a[k].dtype == torch.float32 and torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
