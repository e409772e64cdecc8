"""Train the causal per-timestep classifier for one cadence and score the test split.

Training uses the shared :class:`~astrodag.training.trainer.Trainer`
(checkpoints, resume, early stopping, warm-up + cosine schedule, AMP on CUDA)
with a cross-entropy over every time step: the event's class is the target at
every epoch, as in the seed system. Validation metrics are taken at the
checkpoints 10 %, 20 %, ..., 100 % of the grid; the test split is only scored
by :func:`predict_split`, after training has finished.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from astrodag import __version__
from astrodag.errors import InputDataError
from astrodag.evaluation.metrics import binary_metrics, measure_latency
from astrodag.io import atomic_path, save_npy, write_json, write_table
from astrodag.logs import progress_enabled
from astrodag.microlensing.dataset import LightCurveDataset, fit_training_normalisation, load_shard, shards_digest
from astrodag.microlensing.features import INPUT_LAYOUT, N_CHANNELS, OBSERVED_CHANNEL, Normalisation
from astrodag.models.registry import build_model
from astrodag.models.settings import TemporalCNNSettings
from astrodag.models.temporal_cnn import TimeDistributedCNN
from astrodag.settings import choice, number, setting
from astrodag.training.bundle import load_model, read_sidecar, save_model
from astrodag.training.experiment import train_model
from astrodag.training.seeding import select_device
from astrodag.training.settings import TrainerSettings

logger = logging.getLogger(__name__)

CHECKPOINT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))
N_CLASSES = 2  # PSPL, binary lens
MODEL_PREFIX = "microlensing.model"


@dataclasses.dataclass(frozen=True)
class MicrolensingTrainerSettings(TrainerSettings):
    """The shared trainer's settings with this track's defaults (config ``microlensing.training``).

    Early stopping watches the per-step validation loss (or a final-step metric: ``accuracy``,
    ``roc_auc``, ``aucpr``, ``mean_checkpoint_accuracy``); small batches keep the memory of
    1500-step activations low. ``binaries``: which binaries train and validate the network,
    ``distinguishable`` (not PSPL-like on this cadence, drawn again until the classes balance) or
    ``all`` (see ``LightCurveDataset``); the test split always has every event.
    """

    PREFIX: ClassVar[str] = "microlensing.training"

    batch_size: int = setting(64, number(1, integer=True))
    eval_batch_size: int = setting(256, number(1, integer=True))
    early_stopping_patience: int = setting(3, number(1, integer=True))
    monitor: str = setting("loss", choice("loss", "accuracy", "roc_auc", "aucpr", "mean_checkpoint_accuracy"))
    monitor_mode: str = setting("min", choice("max", "min"))
    binaries: str = setting("distinguishable", choice("all", "distinguishable"))


def checkpoint_steps(n_steps: int, fractions: Sequence[float] = CHECKPOINT_FRACTIONS) -> np.ndarray:
    """Step index at which a fraction ``f`` of the grid has been seen: ``ceil(f * n) - 1``."""
    return np.array([max(int(np.ceil(f * n_steps)) - 1, 0) for f in fractions], dtype=np.int64)


def per_step_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over events and time steps; the event's class is every step's target."""
    n_steps = logits.shape[1]
    return functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.long().repeat_interleave(n_steps)
    )


def binary_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(binary) at every step from logits ``(batch, steps, 2)``."""
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def _checkpoint_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Validation metrics from P(binary) at the checkpoint steps (last column = final step)."""
    final = binary_metrics(targets, probabilities[:, -1])
    accuracies = [np.mean((probabilities[:, k] >= 0.5) == (targets == 1)) for k in range(probabilities.shape[1])]
    return {
        "accuracy": final["accuracy"],
        "roc_auc": final["roc_auc"],
        "aucpr": final["aucpr"],
        "mean_checkpoint_accuracy": float(np.mean(accuracies)),
    }


def _open_shards(observation_dirs: Sequence[str | Path]):
    if not observation_dirs:
        raise ValueError("need at least one observation directory")
    shards = [load_shard(d) for d in observation_dirs]
    steps = {shard.n_steps for shard in shards}
    if len(steps) != 1:
        raise InputDataError(Path(observation_dirs[0]).parent,
                             f"observation directories have different numbers of steps: {sorted(steps)}")
    return shards, steps.pop()


def train_cadence_model(
    observation_dirs: Sequence[str | Path],
    out_dir: str | Path,
    cadence: str,
    duration_days: float,
    seed: int,
    cadence_spec: dict[str, Any] | None = None,
    simulation: dict[str, Any] | None = None,
    observation: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    training_options: dict[str, Any] | None = None,
    threads: int | None = None,
    work_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train on the training split, select on validation; write ``model.pt``, ``model.json``, ``history.csv``.

    Parameters
    ----------
    observation_dirs : sequence of path
        One cadence's observation directory of every shard (:mod:`astrodag.microlensing.dataset`).
    cadence : str
        The cadence's name (logs and the resume key).
    duration_days : float
        Span of the time grid; with the arrays' step count it gives the step length.
    cadence_spec, simulation, observation : dict, optional
        The cadence (``CadenceSpec.to_dict()``), the simulation settings (priors) and the
        observation settings the data were made with; recorded in ``model.json`` as they are.
    """
    out_dir = Path(out_dir)
    shards, n_steps = _open_shards(observation_dirs)
    step_days = float(duration_days) / n_steps
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    normalisation = fit_training_normalisation(shards, step_days)
    training = MicrolensingTrainerSettings.from_config(training_options)
    try:
        datasets = {split: LightCurveDataset(shards, split, normalisation, step_days, training.binaries, seed)
                    for split in ("train", "validation")}
    except ValueError as error:
        raise InputDataError(Path(observation_dirs[0]), str(error)) from None
    for split, dataset in datasets.items():
        if len(dataset) == 0 or len(np.unique(dataset.labels)) < 2:
            raise InputDataError(Path(observation_dirs[0]), f"the {split} split needs events of both classes")
    settings = TemporalCNNSettings.from_config(model_options, MODEL_PREFIX)
    architecture = {**settings.as_dict(), "in_channels": N_CHANNELS, "n_classes": N_CLASSES}
    steps = torch.from_numpy(checkpoint_steps(n_steps))
    data_digest = shards_digest(observation_dirs)
    run = train_model(
        "temporal_cnn", settings, {"in_channels": N_CHANNELS, "n_classes": N_CLASSES}, per_step_cross_entropy,
        training, datasets["train"], datasets["validation"], out_dir, seed=seed, evaluate=_checkpoint_metrics,
        run_key={"cadence": cadence, "observations": data_digest, "inputs": INPUT_LAYOUT,
                 "time grid": {"epochs": n_steps, "duration_days": float(duration_days)}},
        to_probability=lambda logits: binary_probability(logits)[:, steps.to(logits.device)], threads=threads,
        work_dir=work_dir, progress=progress,
    )
    result = run.result
    validation = run.trainer.validate(datasets["validation"])
    sidecar = {
        "model": "TimeDistributedCNN",
        "cadence": {"name": cadence, **(cadence_spec or {})},
        "simulation": simulation or {},
        "observation": observation or {},
        "seed": seed,
        "software_version": __version__,
        "architecture": architecture,
        "inputs": INPUT_LAYOUT,
        "receptive_field_epochs": settings.receptive_field,
        "time_grid": {"epochs": n_steps, "duration_days": float(duration_days)},
        "normalisation": normalisation.to_dict(),
        "data": {
            "observations": [str(d) for d in observation_dirs],
            "sha256": data_digest,
            "events": {split: len(dataset) for split, dataset in datasets.items()},
            "binaries": training.binaries,
            "unique_binaries": {split: int(np.unique(dataset.index[dataset.labels == 1], axis=0).shape[0])
                                         for split, dataset in datasets.items()},
        },
        **run.record(),
        "training_seconds": time.perf_counter() - started,
        "validation_metrics": validation,
    }
    save_model(run.model, sidecar, out_dir)
    logger.info(
        "cadence %s: validation loss %.4f, final-step accuracy %.3f, AUC %.3f after %d epochs in %.0f s",
        cadence, validation["loss"], validation["accuracy"], validation["roc_auc"], result.epochs_run,
        sidecar["training_seconds"],
    )
    return sidecar


def load_cadence_model(model_path: str | Path, sidecar: dict[str, Any], device: torch.device,
                       sidecar_path: str | Path | None = None) -> TimeDistributedCNN:
    """Rebuild the network from its sidecar and load the weights (:func:`astrodag.training.bundle.load_model`)."""

    def build(record: dict[str, Any]) -> TimeDistributedCNN:
        if record.get("inputs") != INPUT_LAYOUT:
            raise InputDataError(model_path, f"was trained on inputs {record.get('inputs')!r}, but this version "
                                             f"builds {INPUT_LAYOUT!r}; retrain it (astrodag microlensing train)")
        return build_model("temporal_cnn", record["architecture"])

    return load_model(model_path, build, sidecar_path, device, sidecar=sidecar)[0]


def predict_split(
    model_path: str | Path,
    sidecar_path: str | Path,
    observation_dirs: Sequence[str | Path],
    out_dir: str | Path,
    split: str = "test",
    batch_size: int = 256,
    threads: int | None = None,
    device: str = "auto",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Score every event of ``split`` at every step, streaming into memory-mapped files.

    Writes ``probabilities.npy`` (float32, events x steps), ``mask.npy`` (uint8, 1 where the step
    has at least one observation), ``events.parquet`` (the split's rows of the observation
    directories' events tables, every column), ``times.npy`` and ``scoring.json`` into
    ``out_dir``: the inputs of :func:`astrodag.microlensing.analysis.evaluate_cadence`.
    """
    out_dir = Path(out_dir)
    sidecar = read_sidecar(sidecar_path)
    if threads:
        torch.set_num_threads(threads)
    shards, n_steps = _open_shards(observation_dirs)
    if n_steps != sidecar["time_grid"]["epochs"]:
        raise InputDataError(observation_dirs[0],
                             f"{n_steps} steps, but the model was trained on {sidecar['time_grid']['epochs']}")
    torch_device = select_device(device)
    model = load_cadence_model(model_path, sidecar, torch_device, sidecar_path)
    duration = sidecar["time_grid"]["duration_days"]
    dataset = LightCurveDataset(shards, split, Normalisation.from_dict(sidecar["normalisation"]), duration / n_steps)
    if len(dataset) == 0:
        raise InputDataError(observation_dirs[0], f"the {split} split is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    started = time.perf_counter()
    with atomic_path(out_dir / "probabilities.npy") as tmp_probabilities, atomic_path(out_dir / "mask.npy") as tmp_mask:
        probabilities = np.lib.format.open_memmap(tmp_probabilities, mode="w+", dtype=np.float32,
                                                  shape=(len(dataset), n_steps))
        masks = np.lib.format.open_memmap(tmp_mask, mode="w+", dtype=np.uint8, shape=(len(dataset), n_steps))
        position = 0
        with torch.inference_mode():
            for inputs, _ in tqdm(loader, desc=f"scoring {split}", disable=not progress_enabled(progress)):
                batch = binary_probability(model(inputs.to(torch_device))).cpu().numpy()
                probabilities[position:position + len(batch)] = batch
                masks[position:position + len(batch)] = (inputs[:, OBSERVED_CHANNEL, :] > 0).numpy()
                position += len(batch)
        probabilities.flush()
        masks.flush()
        del probabilities, masks
    seconds = time.perf_counter() - started
    write_table(out_dir / "events.parquet", dataset.events())
    save_npy(out_dir / "times.npy", np.linspace(0.0, duration, n_steps, endpoint=False))
    sample = torch.stack([dataset[i][0] for i in range(min(len(dataset), 64))]).to(torch_device)
    with torch.inference_mode():
        latency = measure_latency(lambda batch: model(batch), sample, batch_size=batch_size, repeats=2)
    summary = {"split": split, "events": len(dataset), "seconds": seconds,
               "events_per_second": len(dataset) / seconds, "device": str(torch_device), "latency": latency}
    write_json(out_dir / "scoring.json", summary)
    logger.info("scored %d %s events in %.1f s (%.0f events/s)", len(dataset), split, seconds,
                summary["events_per_second"])
    return summary
