"""Resuming only what was interrupted: each track's training entry point, killed half way through an epoch,
resumes to the weights of an uninterrupted run; a changed architecture option, loss option, data content,
seed or precision starts over (the log names what changed); a finished run trains again (``--forcerun``).
"""

import functools
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from realbogus_helpers import write_dataset
from test_microlensing_experiment import write_observations
from torch import nn
from torch.utils.data import TensorDataset

from astrodag.evaluation.metrics import binary_metrics
from astrodag.flares.dataset import prepare_dataset
from astrodag.flares.experiment import train_experiment
from astrodag.flares.synthetic import write_synthetic_dataset
from astrodag.microlensing.experiment import train_cadence_model
from astrodag.supernova.realbogus.training import RealBogusSettings, train_realbogus
from astrodag.training.losses import BinaryFocalLoss
from astrodag.training.settings import TrainerSettings
from astrodag.training.trainer import Trainer, dataset_digest, describe

TRAINER_LOG = "astrodag.training.trainer"


# -- the three tracks, each as train(data, out_dir, seed, model, loss, training) -> sidecar -----------------------

def flares_data(root):
    write_synthetic_dataset(root / "kw.csv", root / "ev.csv", n_regions=40, seed=3)
    prepare_dataset(root / "kw.csv", root / "ev.csv", root / "X.npy", root / "w.parquet", root / "summary.json",
                    window_steps=6, cadence_minutes=60, stride=6, horizons_hours=(24,), flare_classes=("C",),
                    split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2}, split_seed=1)
    return root


def flares_train(data, out_dir, seed=0, model=None, loss=None, training=None):
    options = {"embed_dim": 8, "num_heads": 2, "ff_dim": 16, "num_blocks": 1, **(model or {}), **(loss or {})}
    return train_experiment(data / "X.npy", data / "w.parquet", out_dir, "C", 24, seed, "everest",
                            model_options=options, training_options={"max_epochs": 2, "batch_size": 64,
                                                                     "tensorboard": False, **(training or {})},
                            threads=1, progress=False)


def flares_change_data(data, copy):
    shutil.copytree(data, copy)
    features = np.load(copy / "X.npy")
    features[::2] *= 1.5  # the windows' contents change, the index does not
    np.save(copy / "X.npy", features)
    return copy


def microlensing_data(root):
    return [write_observations(root / f"shard{i}", seed=i, shard=i) for i in range(2)]


def microlensing_train(data, out_dir, seed=3, model=None, loss=None, training=None):
    assert not loss, "the microlensing loss has no options"
    return train_cadence_model(data, out_dir, cadence="toy", duration_days=40.0, seed=seed,
                               model_options={"channels": [8, 8, 8], "dense_units": 8, **(model or {})},
                               training_options={"max_epochs": 2, "batch_size": 16, "eval_batch_size": 64,
                                                 "tensorboard": False, **(training or {})},
                               threads=1, progress=False)


def microlensing_change_data(data, copy):
    shutil.copytree(data[0].parent, copy)
    shards = [copy / directory.name for directory in data]
    scatter = np.load(shards[1] / "scatter.npy")
    scatter[:, ::3] += 0.5
    np.save(shards[1] / "scatter.npy", scatter)
    return shards


def supernova_data(root):
    return write_dataset(root, {"train": 64, "validation": 16, "test": 8})


def supernova_train(data, out_dir, seed=0, model=None, loss=None, training=None):
    # No bootstrap of the threshold: it follows training and would take most of the time.
    settings = RealBogusSettings.from_config({"braai": {"max_epochs": 2, "batch_size": 32, **(model or {})},
                                              "threshold_bootstrap": 0, **(loss or {}), **(training or {})})
    return train_realbogus(data, out_dir, "braai", seed, settings, threads=1, progress=False)


def supernova_change_data(data, copy):
    shutil.copytree(data, copy)
    triplets = np.load(copy / "train.npy")
    triplets[1::2] *= 0.5
    np.save(copy / "train.npy", triplets)
    return copy


# data, train, changed data, an architecture option, a loss option, the fingerprint part that names the data
TRACKS = {
    "flares": (flares_data, flares_train, flares_change_data, {"dropout": 0.5}, {"focal_gamma": 0.0},
               "training data"),
    "microlensing": (microlensing_data, microlensing_train, microlensing_change_data, {"dense_units": 4}, None,
                     "observations"),
    "supernova": (supernova_data, supernova_train, supernova_change_data, {"dropout": 0.2}, {"focal_gamma": 1.0},
                  "training data"),
}


# -- helpers ----------------------------------------------------------------------------------------------------

def killed_in_epoch(monkeypatch, epoch, batch=2):
    """Make the next training die (as a killed job) at its ``batch``-th training batch of ``epoch``."""
    original = Trainer._train_epoch
    epochs = []

    def train_epoch(self, loader, optimizer, scheduler):
        epochs.append(1)
        if len(epochs) == epoch:
            loss_fn, calls = self.loss_fn, []

            def dying(outputs, targets):
                calls.append(1)
                if len(calls) == batch:
                    raise KeyboardInterrupt
                return loss_fn(outputs, targets)

            self.loss_fn = dying
        return original(self, loader, optimizer, scheduler)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)


def weights(out_dir):
    return torch.load(out_dir / "model.pt", weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def changed_parts(caplog):
    found = [re.search(r"another run \(changed: ([^)]*)\)", record.getMessage()) for record in caplog.records
             if record.name == TRAINER_LOG]
    found = [match.group(1).split(", ") for match in found if match]
    assert len(found) == 1, [record.getMessage() for record in caplog.records]
    return found[0]


@pytest.fixture(scope="module", params=sorted(TRACKS))
def track(request, tmp_path_factory):
    """A track's data, its uninterrupted run and a run killed in its second epoch (checkpoint of epoch 1)."""
    make_data, train, change_data, architecture_option, loss_option, data_part = TRACKS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    (root / "data").mkdir()
    data = make_data(root / "data")
    reference = train(data, root / "reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        killed_in_epoch(monkeypatch, epoch=2)
        with pytest.raises(KeyboardInterrupt):
            train(data, root / "killed")
    return {"name": request.param, "data": data, "train": train, "change_data": change_data, "root": root,
            "reference": reference, "architecture": architecture_option, "loss": loss_option,
            "data part": data_part}


# -- each track ---------------------------------------------------------------------------------------------------

def test_a_job_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(track, tmp_path):
    assert track["reference"]["epochs_run"] == 2
    shutil.copytree(track["root"] / "killed", tmp_path / "run")
    resumed = track["train"](track["data"], tmp_path / "run")
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run"] == 2
    assert same_weights(weights(tmp_path / "run"), weights(track["root"] / "reference"))


def test_a_finished_run_rerun_trains_again(track, tmp_path, caplog):
    # Snakemake's --forcerun deletes the outputs but not the checkpoints.
    shutil.copytree(track["root"] / "reference", tmp_path / "run")
    (tmp_path / "run" / "model.pt").unlink()
    with caplog.at_level(logging.INFO, logger=TRAINER_LOG):
        again = track["train"](track["data"], tmp_path / "run")
    assert "previous run finished" in caplog.text and "training again" in caplog.text
    assert again["resumed_from_epoch"] == 0 and again["epochs_run"] == 2
    assert same_weights(weights(tmp_path / "run"), weights(track["root"] / "reference"))


@pytest.mark.parametrize("kind", ["architecture", "loss", "data", "seed", "precision"])
def test_a_changed_option_starts_over(track, kind, tmp_path, caplog):
    if kind == "loss" and track["loss"] is None:
        pytest.skip(f"the {track['name']} loss has no options")
    data, options = track["data"], {}
    if kind == "architecture":
        options["model"] = track["architecture"]
    elif kind == "loss":
        options["loss"] = track["loss"]
    elif kind == "data":
        data = track["change_data"](data, tmp_path / "data")
    elif kind == "seed":
        options["seed"] = 11
    else:
        options["training"] = {"cpu_precision": "bfloat16"}
    shutil.copytree(track["root"] / "killed", tmp_path / "run")
    with caplog.at_level(logging.INFO, logger=TRAINER_LOG):
        rerun = track["train"](data, tmp_path / "run", **options)
    assert rerun["resumed_from_epoch"] == 0 and rerun["epochs_run"] == 2
    expected = {"architecture": "architecture", "loss": "loss", "data": track["data part"],
                "seed": "trainer settings", "precision": "precision"}[kind]
    assert expected in changed_parts(caplog)
    if kind == "precision":
        return  # bfloat16 is emulated on most CPUs, and slow: the log and the epochs show the fresh start
    # What a fresh run with the new option gives, not a continuation of the old one.
    fresh = track["train"](data, tmp_path / "fresh", **options)
    assert fresh["resumed_from_epoch"] == 0
    assert same_weights(weights(tmp_path / "run"), weights(tmp_path / "fresh"))


def test_flares_a_changed_embedding_width_starts_over_instead_of_failing_to_load(tmp_path_factory, tmp_path, caplog):
    data = flares_data(tmp_path_factory.mktemp("flares_embed"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        killed_in_epoch(monkeypatch, epoch=2)
        with pytest.raises(KeyboardInterrupt):
            flares_train(data, tmp_path)
    with caplog.at_level(logging.INFO, logger=TRAINER_LOG):
        rerun = flares_train(data, tmp_path, model={"embed_dim": 16, "ff_dim": 32})
    assert rerun["resumed_from_epoch"] == 0 and rerun["architecture"]["embed_dim"] == 16
    assert {"architecture", "model"} <= set(changed_parts(caplog))


# -- the Trainer itself ---------------------------------------------------------------------------------------------

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.layers(x).squeeze(-1)


def tiny_data(seed, n=128):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 5)).astype(np.float32)
    return TensorDataset(torch.from_numpy(inputs), torch.from_numpy((inputs[:, 0] > 0).astype(np.float32)))


def tiny_fit(work_dir, loss=None):
    torch.manual_seed(0)
    settings = TrainerSettings(max_epochs=3, batch_size=32, tensorboard=False, early_stopping_patience=10)
    trainer = Trainer(TinyNet(), loss or nn.BCEWithLogitsLoss(), settings, work_dir, evaluate=binary_metrics,
                      progress=False)
    return trainer, trainer.fit(tiny_data(0), tiny_data(1, 64))


def test_a_checkpoint_of_this_run_that_does_not_load_starts_over_with_a_warning(tmp_path, monkeypatch, caplog):
    reference, _ = tiny_fit(tmp_path / "reference")
    with monkeypatch.context() as patch:
        killed_in_epoch(patch, epoch=2)
        with pytest.raises(KeyboardInterrupt):
            tiny_fit(tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    last["model"].pop("layers.0.bias")  # a checkpoint damaged (or written by other code) under the same fingerprint
    torch.save(last, tmp_path / "run" / "last.pt")
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOG):
        trainer, result = tiny_fit(tmp_path / "run")
    assert "does not load into this run" in caplog.text and result.resumed_from_epoch == 0
    assert same_weights(trainer.model.state_dict(), reference.model.state_dict())


def test_the_loss_description_holds_its_options():
    assert describe(BinaryFocalLoss(gamma=2.0)) != describe(BinaryFocalLoss(gamma=0.0))
    assert describe(BinaryFocalLoss(positive_weight=3.0)) != describe(BinaryFocalLoss(positive_weight=2.0))
    assert describe(nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0))) != describe(
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0)))
    focal = functools.partial(torch.nn.functional.binary_cross_entropy_with_logits, reduction="mean")
    assert describe(focal) != describe(functools.partial(torch.nn.functional.binary_cross_entropy_with_logits,
                                                         reduction="sum"))
    steps = torch.tensor([1, 2])
    assert describe(lambda logits: logits[:, steps])["closure"][0] is steps
    assert describe(BinaryFocalLoss(gamma=2.0)) == describe(BinaryFocalLoss(gamma=2.0))


def test_a_dataset_digest_follows_the_contents_and_leaves_the_random_state_alone():
    assert dataset_digest(tiny_data(0)) == dataset_digest(tiny_data(0)) != dataset_digest(tiny_data(2))

    class Augmenting(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, item):
            return torch.full((2,), float(item)) + torch.rand(2), torch.tensor(0.0)

    torch.manual_seed(4)
    before = torch.get_rng_state()
    first = dataset_digest(Augmenting())
    assert torch.equal(torch.get_rng_state(), before) and dataset_digest(Augmenting()) == first
