"""A small, reproducible, resumable PyTorch trainer shared by every track.

What it does for a model and two datasets:

- seeds Python, NumPy and torch and shuffles with its own generator, so the
  same seed gives the same weights bit for bit on CPU;
- AdamW with a cosine learning-rate schedule after a linear warm-up, gradient
  clipping, and mixed precision on CUDA (bfloat16 where supported) and, when
  ``cpu_precision`` asks for it, bfloat16 autocast on a CPU (``"auto"``: where
  the CPU runs bfloat16 natively, see ``astrodag.training.precision``);
- evaluates on the validation set after every epoch, keeps the best epoch by a
  monitored metric and stops early after ``early_stopping_patience`` epochs
  without improvement;
- writes ``best.pt`` and ``last.pt`` atomically into its work directory, plus
  ``history.csv``/``history.json`` and TensorBoard events;
- resumes from ``last.pt`` when it is rerun after an interruption (a killed
  cluster job rerun by Snakemake continues where it stopped, with the same
  random state, so the result equals an uninterrupted run).

A checkpoint is resumed only when its fingerprint matches the run's: the trainer
settings, seed and threads, the device and forward precision, the model (class,
structure and initial weights), the loss and its options (:func:`describe`), the
validation metrics, the contents of both datasets (:func:`dataset_digest`) and
whatever the caller adds as ``run_key`` (the architecture's name and options from
:func:`~astrodag.training.experiment.train_model`, a track's data digests). Any
difference, a checkpoint that does not load, or one of a finished run (Snakemake's
``--forcerun`` deletes the outputs, not the checkpoints) starts training over,
with a log line saying why.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from astrodag.io import atomic_path, write_json, write_table
from astrodag.logs import progress_enabled
from astrodag.settings import Settings
from astrodag.training.precision import resolve_precision
from astrodag.training.seeding import seed_everything, select_device
from astrodag.training.settings import TrainerSettings

logger = logging.getLogger(__name__)

Evaluator = Callable[[np.ndarray, np.ndarray], dict[str, float]]
EpochCallback = Callable[[int, dict[str, float]], None]
# Items of a dataset other than a TensorDataset that enter its digest (evenly spaced).
DATA_SAMPLE_ITEMS = 64


@dataclasses.dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` returns."""

    best_epoch: int
    best_score: float
    epochs_run: int
    resumed_from_epoch: int
    stopped_early: bool
    history: pd.DataFrame


def sigmoid_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Default mapping from model outputs (binary logits) to probabilities."""
    return torch.sigmoid(outputs.float())


class Trainer:
    """Train ``model`` with ``loss_fn`` on (inputs, target) datasets.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits; ``to_probability`` turns them into probabilities.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar tensor``.
    settings : TrainerSettings
    work_dir : path
        Where ``best.pt``, ``last.pt``, history and TensorBoard events go.
    evaluate : callable
        ``evaluate(targets, probabilities) -> dict`` of validation metrics; it
        must contain ``settings.monitor`` (or ``"loss"`` may be monitored).
    run_key : str or mapping
        Anything else that decides the weights (architecture options, data
        digests); a mapping's entries are compared one by one, so the log names
        the one that changed. The trainer adds its own parts (see the module
        docstring); a ``last.pt`` of another fingerprint is not resumed from.
    seed : int
        Seeds Python, NumPy and torch and the shuffling generator.
    threads : int, optional
        CPU threads for torch.
    to_probability : callable
        Maps a batch of model outputs to probabilities.
    progress : bool or None
        Show a progress bar (default: only on a terminal).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        settings: TrainerSettings,
        work_dir: str | Path,
        evaluate: Evaluator,
        run_key: str | Mapping[str, Any] = "",
        to_probability: Callable[[torch.Tensor], torch.Tensor] = sigmoid_probabilities,
        progress: bool | None = None,
        callbacks: Sequence[EpochCallback] = (),
        seed: int = 0,
        threads: int | None = None,
    ):
        self.settings = settings
        self.seed = seed
        self.threads = threads
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.evaluate = evaluate
        self.to_probability = to_probability
        self.progress = progress_enabled(progress)
        self.callbacks = list(callbacks)
        if threads:
            torch.set_num_threads(threads)
        self.generator = seed_everything(seed)
        self.device = select_device(settings.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.use_amp = settings.mixed_precision and self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        if self.device.type == "cpu" and resolve_precision(settings.cpu_precision, self.device) == "bfloat16":
            self.use_amp, self.amp_dtype = True, torch.bfloat16
        # What the forward passes run in, for the model's sidecar.
        self.precision = str(self.amp_dtype).removeprefix("torch.") if self.use_amp else "float32"
        self.scaler = self._new_scaler()
        self.run_key = dict(run_key) if isinstance(run_key, Mapping) else {"run_key": run_key}
        # Taken before training: with the model's structure it identifies the architecture and its initialisation.
        self.initial_weights = state_digest(self.model.state_dict())
        self.fingerprint = ""
        self.fingerprint_parts: dict[str, str] = {}

    def record(self) -> dict[str, Any]:
        """The settings, seed and threads of this run, for the model's sidecar."""
        return {**self.settings.as_dict(), "seed": self.seed, "threads": self.threads}

    def _new_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def fingerprint_of(self, train_data: Dataset, val_data: Dataset) -> dict[str, str]:
        """A digest of each part of the run that shapes the weights (see the module docstring)."""
        parts: dict[str, Any] = {
            "trainer settings": self.record(),
            "precision": {"device": self.device.type, "forward": self.precision},
            "model": {"class": qualified_name(type(self.model)), "structure": repr(self.model),
                      "initial_weights": self.initial_weights},
            "loss": describe(self.loss_fn),
            "validation metrics": {"evaluate": describe(self.evaluate), "probability": describe(self.to_probability)},
            "training data": dataset_digest(train_data),
            "validation data": dataset_digest(val_data),
        }
        clash = sorted(set(parts) & set(self.run_key))
        if clash:
            raise ValueError(f"run_key must not name the trainer's own fingerprint parts: {', '.join(clash)}")
        parts.update(self.run_key)
        return {name: _digest(value) for name, value in parts.items()}

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.pt"

    # -- data -----------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        batch_size = self.settings.batch_size if shuffle else self.settings.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=self.generator if shuffle else None,
            pin_memory=self.device.type == "cuda",
        )

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    # -- checkpoints ------------------------------------------------------------
    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _load_resume_state(self, optimizer, scheduler) -> dict[str, Any] | None:
        """Restore ``last.pt`` into the model, optimizer, scheduler and generators; None: start over."""
        if not self.last_path.exists():
            return None
        try:
            state = torch.load(self.last_path, map_location=self.device, weights_only=True)
        except Exception as error:  # a corrupt checkpoint must not block a fresh start
            logger.warning("ignoring unreadable checkpoint %s (%s); starting over", self.last_path, error)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            recorded = state.get("fingerprint_parts") if isinstance(state, dict) else None
            if isinstance(recorded, dict):
                changed = sorted(name for name in set(recorded) | set(self.fingerprint_parts)
                                 if recorded.get(name) != self.fingerprint_parts.get(name))
                why = f"changed: {', '.join(changed)}"
            else:
                why = "written by an older version"
            logger.info("checkpoint %s belongs to another run (%s); starting over", self.last_path, why)
            return None
        if state.get("completed"):
            logger.info("previous run finished (checkpoint %s); training again", self.last_path)
            return None
        try:
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            self.generator.set_state(state["generator_rng"].cpu())
            if torch.cuda.is_available() and "cuda_rng" in state:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
            missing = [key for key in ("epoch", "best_score", "best_epoch", "stale_epochs", "history")
                       if key not in state]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
        except Exception as error:  # a checkpoint that does not fit must not block a fresh start
            logger.warning("checkpoint %s does not load into this run (%s: %s); starting over", self.last_path,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            return None
        return state

    # -- training ----------------------------------------------------------------
    def fit(self, train_data: Dataset, val_data: Dataset) -> TrainingResult:
        """Train until ``max_epochs`` or early stopping; leave the best weights in the model."""
        settings = self.settings
        train_loader = self._loader(train_data, shuffle=True)
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError("the training set is empty")
        total_steps = steps_per_epoch * settings.max_epochs
        warmup_steps = int(settings.warmup_fraction * total_steps)

        def optimizer_and_schedule():
            optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
            return optimizer, torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: _warmup_cosine(step, warmup_steps, total_steps)
            )

        self.fingerprint_parts = self.fingerprint_of(train_data, val_data)
        self.fingerprint = _digest(self.fingerprint_parts)
        optimizer, scheduler = optimizer_and_schedule()
        # What a fresh start begins from, should a checkpoint fail to load half way.
        fresh = None
        if self.last_path.exists():
            fresh = {"model": {key: value.clone() for key, value in self.model.state_dict().items()},
                     "torch_rng": torch.get_rng_state(), "generator_rng": self.generator.get_state(),
                     **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}
        state = self._load_resume_state(optimizer, scheduler)
        if state is None and fresh is not None:
            self.model.load_state_dict(fresh["model"])
            torch.set_rng_state(fresh["torch_rng"])
            self.generator.set_state(fresh["generator_rng"])
            if "cuda_rng" in fresh:
                torch.cuda.set_rng_state_all(fresh["cuda_rng"])
            self.scaler = self._new_scaler()
            optimizer, scheduler = optimizer_and_schedule()
        history: list[dict[str, float]] = state["history"] if state else []
        start_epoch = state["epoch"] if state else 0
        best_score = state["best_score"] if state else math.nan
        best_epoch = state["best_epoch"] if state else 0
        stale_epochs = state["stale_epochs"] if state else 0
        completed = False
        if state:
            logger.info("resuming from %s after epoch %d", self.last_path, start_epoch)
        logger.info(
            "training on %s (CUDA_VISIBLE_DEVICES=%s, %d CPU threads, autocast %s)",
            self.device, os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), torch.get_num_threads(),
            self.amp_dtype if self.use_amp else "off",
        )

        writer = self._tensorboard_writer()
        epoch = start_epoch
        bar = tqdm(
            total=settings.max_epochs, initial=start_epoch, desc="epochs", disable=not self.progress, leave=False
        )
        try:
            while not completed and epoch < settings.max_epochs:
                epoch += 1
                started = time.perf_counter()
                train_loss = self._train_epoch(train_loader, optimizer, scheduler)
                metrics = self.validate(val_data)
                row = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                    **{f"val_{name}": value for name, value in metrics.items()},
                }
                history.append(row)
                if settings.monitor not in metrics:
                    raise KeyError(
                        f"monitored metric {settings.monitor!r} is not among the validation metrics "
                        f"({', '.join(sorted(metrics))})"
                    )
                score = metrics[settings.monitor]
                if _improved(score, best_score, settings.monitor_mode) or best_epoch == 0:
                    best_score, best_epoch, stale_epochs = score, epoch, 0
                    self._save(self.best_path, {"model": self.model.state_dict(), "epoch": epoch, "score": score})
                else:
                    stale_epochs += 1
                completed = stale_epochs >= settings.early_stopping_patience or epoch >= settings.max_epochs
                self._save(
                    self.last_path,
                    {
                        "fingerprint": self.fingerprint,
                        "fingerprint_parts": self.fingerprint_parts,
                        "model": self.model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "generator_rng": self.generator.get_state(),
                        **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                        "epoch": epoch,
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "stale_epochs": stale_epochs,
                        "completed": completed,
                        "history": history,
                    },
                )
                self._write_history(history)
                if writer is not None:
                    for name, value in row.items():
                        if name != "epoch" and np.isfinite(value):
                            writer.add_scalar(name, value, epoch)
                    writer.flush()
                logger.info(
                    "epoch %d/%d train_loss=%.4f val_loss=%.4f val_%s=%.4f (best %.4f at epoch %d)",
                    epoch, settings.max_epochs, train_loss, metrics["loss"], settings.monitor, score,
                    best_score, best_epoch,
                )
                bar.update(1)
                bar.set_postfix(train_loss=f"{train_loss:.4f}", **{f"val_{settings.monitor}": f"{score:.4f}"})
                for callback in self.callbacks:
                    callback(epoch, row)
        finally:
            bar.close()
            if writer is not None:
                writer.close()

        best = torch.load(self.best_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(best["model"])
        self._write_history(history)
        return TrainingResult(
            best_epoch=best_epoch,
            best_score=float(best_score),
            epochs_run=len(history),
            resumed_from_epoch=start_epoch,
            stopped_early=len(history) < settings.max_epochs,
            history=pd.DataFrame(history),
        )

    def _train_epoch(self, loader: DataLoader, optimizer, scheduler) -> float:
        self.model.train()
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss_fn(self.model(inputs), targets)
            self.scaler.scale(loss).backward()
            if self.settings.grad_clip_norm:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            scheduler.step()
            total += loss.item() * len(targets)
            count += len(targets)
        return total / count

    @torch.inference_mode()
    def _outputs(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, float]:
        self.model.eval()
        probabilities, targets_all = [], []
        total_loss, count = 0.0, 0
        for inputs, targets in self._loader(dataset, shuffle=False):
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self._autocast():
                outputs = self.model(inputs)
            total_loss += self.loss_fn(outputs.float(), targets).item() * len(targets)
            count += len(targets)
            probabilities.append(self.to_probability(outputs).cpu().numpy())
            targets_all.append(targets.cpu().numpy())
        return np.concatenate(targets_all), np.concatenate(probabilities), total_loss / max(count, 1)

    def validate(self, dataset: Dataset) -> dict[str, float]:
        """Metrics of the current model on ``dataset`` (``loss`` included)."""
        targets, probabilities, loss = self._outputs(dataset)
        return {"loss": loss, **self.evaluate(targets, probabilities)}

    def predict(self, dataset: Dataset) -> np.ndarray:
        """Probabilities of the current model for every item of ``dataset``, in order."""
        return self._outputs(dataset)[1]

    def _write_history(self, history: list[dict[str, float]]) -> None:
        frame = pd.DataFrame(history)
        write_table(self.work_dir / "history.csv", frame)
        write_json(self.work_dir / "history.json", history)

    def _tensorboard_writer(self):
        if not self.settings.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        return SummaryWriter(log_dir=str(self.work_dir / "tensorboard"))


def qualified_name(thing: Any) -> str:
    """``module.qualname`` of a class or function."""
    return f"{getattr(thing, '__module__', None)}.{getattr(thing, '__qualname__', type(thing).__qualname__)}"


def tensor_digest(tensor: torch.Tensor | np.ndarray, digest=None) -> str:
    """SHA-256 of an array's dtype, shape and bytes (any dtype, any device); fold into ``digest`` if given."""
    digest = digest if digest is not None else hashlib.sha256()
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a ``state_dict``: every entry's name and contents."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        tensor_digest(state[name], digest)
    return digest.hexdigest()


def describe(function: Any) -> Any:
    """What decides the results of a loss (or another callable), as plain values for the fingerprint.

    A module: its class, public attributes (e.g. a focal loss's ``gamma``), ``repr`` and
    ``state_dict``; a ``functools.partial``: its function, arguments and keywords; a function:
    its qualified name and the values it closes over; another callable object: its class and
    public attributes.
    """
    if isinstance(function, functools.partial):
        return {"partial": describe(function.func), "args": list(function.args), "keywords": dict(function.keywords)}
    if isinstance(function, nn.Module):
        options = {name: value for name, value in vars(function).items()
                   if not name.startswith("_") and name != "training"}
        return {"class": qualified_name(type(function)), "options": options, "repr": repr(function),
                "state": state_digest(function.state_dict())}
    if isinstance(function, types.FunctionType):
        cells = []
        for cell in function.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # a closure cell not yet filled
                cells.append(None)
        return {"function": qualified_name(function), "closure": cells}
    if isinstance(function, (types.BuiltinFunctionType, type)):
        return {"function": qualified_name(function)}
    return {"class": qualified_name(type(function)),
            "options": {name: value for name, value in getattr(function, "__dict__", {}).items()
                        if not name.startswith("_")}}


def dataset_digest(dataset: Dataset) -> str:
    """SHA-256 of a dataset's contents.

    A ``TensorDataset`` is hashed whole. Any other dataset by its class, length and
    ``DATA_SAMPLE_ITEMS`` evenly spaced items, read with Python's, NumPy's and torch's random
    states restored afterwards (an augmenting dataset draws from them), so the digest does not
    change the training; such a dataset's caller should add a digest of its source files to
    ``run_key``.
    """
    digest = hashlib.sha256(f"{qualified_name(type(dataset))}:{len(dataset)}".encode())
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            tensor_digest(tensor, digest)
        return digest.hexdigest()
    positions = np.unique(np.linspace(0, len(dataset) - 1, min(DATA_SAMPLE_ITEMS, len(dataset))).astype(int))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            for position in positions:
                _fold_item(dataset[int(position)], digest)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return digest.hexdigest()


def _fold_item(item: Any, digest) -> None:
    if isinstance(item, (torch.Tensor, np.ndarray)):
        tensor_digest(item, digest)
    elif isinstance(item, (tuple, list)):
        for part in item:
            _fold_item(part, digest)
    else:
        digest.update(repr(item).encode())


def _plain(value: Any) -> Any:
    """JSON stand-ins for what ``describe`` and ``run_key`` may hold; never a memory address."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return {"array": tensor_digest(value)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Settings):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return qualified_name(value)  # by name: a closure may hold itself
    if callable(value):
        return describe(value)
    text = repr(value)
    return qualified_name(type(value)) if " at 0x" in text else text


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_plain).encode()).hexdigest()


def _warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _improved(score: float, best: float, mode: str) -> bool:
    if not np.isfinite(score):
        return False
    if not np.isfinite(best):
        return True
    return score > best if mode == "max" else score < best
