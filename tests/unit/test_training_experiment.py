"""The shared training run (astrodag.training.experiment): seed, build by name, fit, history."""

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from astrodag.evaluation.metrics import binary_metrics
from astrodag.models.registry import build_model
from astrodag.training.experiment import train_model
from astrodag.training.settings import TrainerSettings

SETTINGS = TrainerSettings.from_config({"max_epochs": 2, "batch_size": 16, "tensorboard": False}, "training")
OPTIONS = {"embed_dim": 8, "num_heads": 2, "ff_dim": 16, "num_blocks": 1}
SHAPES = {"n_features": 3, "n_steps": 4}


def windows(seed, n=96):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 4, 3)).astype(np.float32)
    targets = (inputs[:, -1, 0] > 0).astype(np.float32)
    return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))


def run(out_dir, seed=5, **options):
    return train_model("everest", OPTIONS, SHAPES, nn.BCEWithLogitsLoss(), SETTINGS, windows(0), windows(1), out_dir,
                       seed=seed, evaluate=binary_metrics, progress=False, **options)


def test_a_run_writes_its_history_and_the_common_sidecar_fields(tmp_path):
    result = run(tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    record = result.record()
    assert record["epochs_run"] == 2 and record["precision"] == "float32" and record["device"] == "cpu"
    assert record["parameters"] == sum(p.numel() for p in result.model.parameters())
    assert record["trainer"]["seed"] == 5 and record["trainer"]["max_epochs"] == 2


def test_the_initial_weights_are_the_registrys_under_the_seed(tmp_path):
    # What train_model builds before fitting is what build_model gives after torch.manual_seed(seed).
    built = []
    run(tmp_path / "a", prepare=lambda model: built.append({k: v.clone() for k, v in model.state_dict().items()})
        or model)
    torch.manual_seed(5)
    direct = build_model("everest", OPTIONS, **SHAPES).state_dict()
    assert all(torch.equal(built[0][key], direct[key]) for key in direct)


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path):
    first, second, other = run(tmp_path / "a"), run(tmp_path / "b"), run(tmp_path / "c", seed=6)
    weights = [torch.cat([p.detach().flatten() for p in r.model.parameters()]) for r in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
