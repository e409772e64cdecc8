"""The shared Trainer: reproducible, resumable, early stopping, checkpoints on disk."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from astrodag.errors import ConfigError
from astrodag.evaluation.metrics import binary_metrics
from astrodag.training.losses import BinaryFocalLoss
from astrodag.training.settings import TrainerSettings
from astrodag.training.trainer import Trainer


def make_data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 5)).astype(np.float32)
    targets = (inputs[:, 0] + 0.5 * inputs[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x).squeeze(-1)


def train(work_dir, max_epochs=4, callbacks=(), seed=3, **overrides):
    torch.manual_seed(seed)
    options = {"max_epochs": max_epochs, "batch_size": 32, "tensorboard": False,
               "early_stopping_patience": 10, "learning_rate": 1e-2, **overrides}
    settings = TrainerSettings.from_config(options, "training")
    trainer = Trainer(TinyNet(), nn.BCEWithLogitsLoss(), settings, work_dir,
                      evaluate=lambda y, p: binary_metrics(y, p), progress=False, callbacks=callbacks, seed=seed)
    result = trainer.fit(make_data(0), make_data(1, 200))
    return trainer, result


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_learns_and_writes_checkpoints_and_history(tmp_path):
    trainer, result = train(tmp_path)
    assert result.best_score > 0.9  # validation AUCPR of a nearly linear problem
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_aucpr", "val_tss", "learning_rate"} <= set(history.columns)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["epoch"] == result.best_epoch


def test_same_seed_gives_identical_weights_on_cpu(tmp_path):
    first, _ = train(tmp_path / "a")
    second, _ = train(tmp_path / "b")
    assert torch.equal(weights(first.model), weights(second.model))
    third, _ = train(tmp_path / "c", seed=4)
    assert not torch.equal(weights(first.model), weights(third.model))


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    uninterrupted, _ = train(tmp_path / "full", max_epochs=5)

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt  # a killed job

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", max_epochs=5, callbacks=[interrupt])
    resumed, result = train(tmp_path / "resumed", max_epochs=5)
    assert result.resumed_from_epoch == 2
    assert result.epochs_run == 5
    assert torch.equal(weights(uninterrupted.model), weights(resumed.model))
    history = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    train(tmp_path, max_epochs=2)
    _, result = train(tmp_path, max_epochs=3, learning_rate=5e-2)
    assert result.resumed_from_epoch == 0
    assert result.epochs_run == 3


def test_corrupt_last_checkpoint_starts_over(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    _, result = train(tmp_path, max_epochs=2)
    assert result.resumed_from_epoch == 0 and result.epochs_run == 2


def test_early_stopping_stops_when_the_monitor_stalls(tmp_path):
    # Monitoring a constant metric never improves after epoch 1.
    torch.manual_seed(0)
    config = TrainerSettings(max_epochs=20, batch_size=64, early_stopping_patience=2, monitor="constant",
                             tensorboard=False)
    trainer = Trainer(TinyNet(), nn.BCEWithLogitsLoss(), config, tmp_path,
                      evaluate=lambda y, p: {"constant": 1.0}, progress=False)
    result = trainer.fit(make_data(0), make_data(1, 100))
    assert result.epochs_run == 3 and result.best_epoch == 1 and result.stopped_early


def test_unknown_monitor_is_reported_by_name(tmp_path):
    config = TrainerSettings(max_epochs=1, monitor="nonexistent", tensorboard=False)
    trainer = Trainer(TinyNet(), nn.BCEWithLogitsLoss(), config, tmp_path,
                      evaluate=lambda y, p: binary_metrics(y, p), progress=False)
    with pytest.raises(KeyError, match="nonexistent"):
        trainer.fit(make_data(0), make_data(1, 100))


def test_tensorboard_events_are_written(tmp_path):
    train(tmp_path, max_epochs=1, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_settings_reject_unknown_options_and_bad_values():
    with pytest.raises(ConfigError, match="'training.learnin_rate': unknown key; did you mean 'learning_rate'"):
        TrainerSettings.from_config({"learnin_rate": 0.1}, "training")
    with pytest.raises(ConfigError, match="training.max_epochs"):
        TrainerSettings.from_config({"max_epochs": 0}, "training")
    with pytest.raises(ConfigError, match="training.monitor_mode"):
        TrainerSettings.from_config({"monitor_mode": "up"}, "training")
    with pytest.raises(ConfigError, match="training.warmup_fraction"):
        TrainerSettings.from_config({"warmup_fraction": 1.0}, "training")
    with pytest.raises(TypeError, match="PREFIX"):
        TrainerSettings.from_config({})


def test_focal_loss_reduces_to_cross_entropy_and_downweights_easy_examples():
    logits = torch.tensor([3.0, -2.0, 0.1, -0.3])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(BinaryFocalLoss(gamma=0.0)(logits, targets), bce)
    assert BinaryFocalLoss(gamma=2.0)(logits, targets) < bce
    with pytest.raises(ValueError):
        BinaryFocalLoss(alpha=1.5)


def test_focal_loss_positive_weight_scales_positive_examples_only():
    logits = torch.tensor([0.2, -0.4])
    plain = BinaryFocalLoss(gamma=1.0, positive_weight=1.0)
    weighted = BinaryFocalLoss(gamma=1.0, positive_weight=5.0)
    positive, negative = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    assert torch.allclose(weighted(logits, positive), 5 * plain(logits, positive))
    assert torch.allclose(weighted(logits, negative), plain(logits, negative))


@pytest.mark.parametrize("cpu_precision, native, expected", [
    ("float32", True, torch.float32),
    ("bfloat16", False, torch.bfloat16),
    ("auto", True, torch.bfloat16),
    ("auto", False, torch.float32),
])
def test_cpu_precision_sets_the_autocast_of_training_and_validation(tmp_path, monkeypatch, cpu_precision, native,
                                                                    expected):
    from astrodag.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    seen = []

    def loss(outputs, targets):
        seen.append(outputs.dtype)
        return nn.functional.binary_cross_entropy_with_logits(outputs.float(), targets)

    config = TrainerSettings(max_epochs=4, batch_size=32, learning_rate=1e-2, tensorboard=False, device="cpu",
                             early_stopping_patience=10, cpu_precision=cpu_precision)
    torch.manual_seed(3)
    trainer = Trainer(TinyNet(), loss, config, tmp_path, evaluate=lambda y, p: binary_metrics(y, p), progress=False)
    assert trainer.precision == str(expected).removeprefix("torch.")
    result = trainer.fit(make_data(0), make_data(1, 200))
    # Training batches see the autocast dtype; the validation loss is taken on float32 outputs.
    assert set(seen) == {expected, torch.float32} and result.best_score > 0.8


def test_cpu_precision_must_be_a_known_name():
    with pytest.raises(ConfigError, match="training.cpu_precision"):
        TrainerSettings.from_config({"cpu_precision": "float16"}, "training")
