"""One training run, as every track runs it: seed, build the model by name, fit, write the history.

The tracks differ in their data, loss and what they predict afterwards; the sequence that turns
an architecture name and its options into trained weights is this one:

1. seed torch, then build the model from the registry, so the initial weights are a function of
   the seed;
2. fit it with the shared :class:`~astrodag.training.trainer.Trainer` (early stopping on the
   validation split, checkpoints and resuming under ``work_dir``);
3. write ``history.csv`` beside the model.

:meth:`TrainingRun.record` gives the sidecar fields every track writes (trainer settings, device,
precision, parameter count, epochs); the track adds its own and saves the model bundle
(:mod:`astrodag.training.bundle`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from astrodag.io import write_table
from astrodag.models.registry import build_model, split_options
from astrodag.settings import Settings
from astrodag.training.settings import TrainerSettings
from astrodag.training.trainer import Evaluator, Trainer, TrainingResult, sigmoid_probabilities


@dataclasses.dataclass
class TrainingRun:
    """A finished run: the trainer (holding the best weights), its result and the fit's wall time."""

    trainer: Trainer
    result: TrainingResult
    fit_seconds: float

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    def record(self) -> dict[str, Any]:
        """The sidecar fields of the run that every track writes."""
        return {
            "trainer": self.trainer.record(),
            "device": str(self.trainer.device),
            "precision": self.trainer.precision,
            "parameters": int(sum(parameter.numel() for parameter in self.model.parameters())),
            "best_epoch": self.result.best_epoch,
            "epochs_run": self.result.epochs_run,
            "resumed_from_epoch": self.result.resumed_from_epoch,
            "stopped_early": self.result.stopped_early,
        }


def train_model(
    architecture: str,
    options: Mapping[str, Any] | Settings | None,
    shapes: Mapping[str, Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: TrainerSettings,
    train_data: Dataset,
    validation_data: Dataset,
    out_dir: str | Path,
    *,
    seed: int,
    evaluate: Evaluator,
    run_key: str | Mapping[str, Any] = "",
    threads: int | None = None,
    work_dir: str | Path | None = None,
    to_probability: Callable[[torch.Tensor], torch.Tensor] = sigmoid_probabilities,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    progress: bool | None = None,
) -> TrainingRun:
    """Build ``architecture`` (:func:`astrodag.models.registry.build_model`), fit it, write ``history.csv``.

    Parameters
    ----------
    architecture, options, shapes
        The registry entry, its options and the shapes from the data.
    loss_fn, settings, evaluate, run_key, threads, to_probability, progress
        As for :class:`~astrodag.training.trainer.Trainer`; the architecture's name, options and
        shapes join ``run_key`` in the resume fingerprint.
    train_data, validation_data : Dataset
        The training and validation splits.
    out_dir : str or Path
        Receives ``history.csv``; checkpoints go to ``work_dir`` (default ``out_dir/checkpoints``).
    seed : int
        Seeds the initial weights and the Trainer.
    prepare : callable, optional
        Applied to the freshly built model before training (e.g. a channels-last memory format).
    """
    out_dir = Path(out_dir)
    architecture_settings, shape_arguments = split_options(architecture, options, **shapes)
    # The architecture enters the resume fingerprint with every option (defaults filled in); the Trainer adds the
    # loss, the data contents, its settings, seed and precision.
    key = {"architecture": {"name": architecture, "options": architecture_settings.as_dict(),
                            "shapes": shape_arguments},
           **(dict(run_key) if isinstance(run_key, Mapping) else {"run_key": run_key})}
    # The Trainer seeds again; seeding here makes the initial weights a function of the seed too.
    torch.manual_seed(seed)
    model = build_model(architecture, architecture_settings, **shape_arguments)
    if prepare is not None:
        model = prepare(model)
    trainer = Trainer(model, loss_fn, settings, work_dir=Path(work_dir) if work_dir else out_dir / "checkpoints",
                      evaluate=evaluate, run_key=key, to_probability=to_probability, progress=progress,
                      seed=seed, threads=threads)
    started = time.perf_counter()
    result = trainer.fit(train_data, validation_data)
    fit_seconds = time.perf_counter() - started
    write_table(out_dir / "history.csv", result.history)
    return TrainingRun(trainer, result, fit_seconds)
