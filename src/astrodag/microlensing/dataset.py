"""Streaming training data from one cadence's observation directories.

An observation directory (one shard seen by one cadence, written by
:func:`astrodag.microlensing.observe.observe_shard`) holds the per-step summaries of the
survey's photometry on the model's grid (:func:`astrodag.microlensing.features.bin_observations`):
``magnitudes.npy``, ``errors.npy``, ``scatter.npy`` (float32, events x steps), ``counts.npy``
(int32, events x steps) and ``events.parquet`` (the shard's events with the cadence's columns,
among them ``reference_mag``). The arrays stay on disk (memory-mapped); a dataset item is one
event's network input, built on the fly by :func:`astrodag.microlensing.features.causal_features`
and standardised by a :class:`~astrodag.microlensing.features.Normalisation` fitted on the
training split only. Every input at step ``t`` uses steps ``<= t`` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from astrodag.errors import InputDataError
from astrodag.io import file_digest, read_table
from astrodag.microlensing.features import Normalisation, causal_features, fit_normalisation

SPLITS = ("train", "validation", "test")
EVENT_COLUMNS = ("event_id", "label", "split", "reference_mag")
# The arrays of an observation directory and the kind of number each holds.
ARRAYS = {"magnitudes": np.floating, "errors": np.floating, "scatter": np.floating, "counts": np.integer}
# What the training fingerprint covers (summary.json is left out: it records run times, not data).
DATA_FILES = ("events.parquet", *(f"{name}.npy" for name in ARRAYS))


@dataclass
class Shard:
    """One observation directory: its per-step arrays (memory-mapped) and its events table."""

    directory: Path
    magnitudes: np.ndarray
    errors: np.ndarray
    counts: np.ndarray
    scatter: np.ndarray
    events: pd.DataFrame

    @property
    def n_steps(self) -> int:
        return self.magnitudes.shape[1]

    def features(self, rows, step_days: float) -> np.ndarray:
        """Raw (unstandardised) causal input channels of the events at ``rows`` (an index or an array of them)."""
        return causal_features(self.magnitudes[rows], self.errors[rows], self.counts[rows], self.scatter[rows],
                               self.events["reference_mag"].to_numpy()[rows], step_days)


def _load_array(path: Path, kind, shape: tuple[int, ...] | None) -> np.ndarray:
    if not path.exists():
        raise InputDataError(path, "file does not exist")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise InputDataError(path, f"not a readable .npy array ({error})") from error
    if array.ndim != 2 or (shape is not None and array.shape != shape):
        raise InputDataError(path, f"expected an array of shape {shape or '(events, steps)'}, found {array.shape}")
    if not np.issubdtype(array.dtype, kind):
        raise InputDataError(path, f"expected {kind.__name__} values, found dtype {array.dtype}")
    return array


def load_shard(observation_dir: str | Path) -> Shard:
    """Open one observation directory; the arrays' shapes and the events table are checked.

    Raises
    ------
    InputDataError
        Naming the file: missing or unreadable, a shape that does not match the events table
        (one row per event, one column per step, the same for every array), a missing column or a
        reference magnitude that is not finite.
    """
    directory = Path(observation_dir)
    events_path = directory / "events.parquet"
    events = read_table(events_path, EVENT_COLUMNS, not_found="file does not exist")
    if not np.isfinite(events["reference_mag"].to_numpy(dtype=np.float64)).all():
        raise InputDataError(events_path, "column 'reference_mag' has missing or infinite values")
    magnitudes = _load_array(directory / "magnitudes.npy", ARRAYS["magnitudes"], None)
    if magnitudes.shape[0] != len(events):
        raise InputDataError(directory / "magnitudes.npy",
                             f"{magnitudes.shape[0]} light curves but {len(events)} events in {events_path}")
    arrays = {name: _load_array(directory / f"{name}.npy", kind, magnitudes.shape)
              for name, kind in ARRAYS.items() if name != "magnitudes"}
    return Shard(directory, magnitudes, events=events, **arrays)


def training_features(shards: Sequence[Shard], step_days: float, chunk: int = 2000) -> Iterator[np.ndarray]:
    """Raw causal inputs of the training split, ``chunk`` events at a time (to fit the normalisation)."""
    for shard in shards:
        rows = np.flatnonzero(shard.events["split"].to_numpy() == "train")
        for start in range(0, len(rows), chunk):
            yield shard.features(rows[start:start + chunk], step_days)


def fit_training_normalisation(shards: Sequence[Shard], step_days: float, chunk: int = 2000) -> Normalisation:
    """:func:`~astrodag.microlensing.features.fit_normalisation` over the training split only."""
    return fit_normalisation(training_features(shards, step_days, chunk))


class LightCurveDataset(Dataset):
    """Items ``(inputs (N_CHANNELS, steps) float32, label int64)`` of one split, read lazily from the shards."""

    def __init__(self, shards: Sequence[Shard], split: str, normalisation: Normalisation, step_days: float,
                 binaries: str = "all", seed: int = 0):
        """``binaries="distinguishable"`` keeps only the binaries that are not ``pspl_like`` on this cadence and
        draws them again (seeded, with replacement) until there are as many as PSPL events: a PSPL-like binary
        is, by its definition, a light curve some single lens fits, so as a training example it only teaches
        the network to answer 0.5. ``"all"`` keeps every event once (what the test split always uses).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if binaries not in ("all", "distinguishable"):
            raise ValueError(f"binaries must be 'all' or 'distinguishable', got {binaries!r}")
        self.shards = list(shards)
        self.normalisation = normalisation
        self.step_days = float(step_days)
        index = [
            (number, row)
            for number, shard in enumerate(self.shards)
            for row in np.flatnonzero(shard.events["split"].to_numpy() == split)
        ]
        self.index = np.array(index, dtype=np.int64).reshape(-1, 2)
        self.labels = self._column("label").astype(np.int64)
        if binaries == "distinguishable" and len(self.index):
            self._keep_distinguishable_binaries(split, seed)

    def _column(self, name: str) -> np.ndarray:
        return np.array([self.shards[number].events[name].iat[row] for number, row in self.index])

    def _keep_distinguishable_binaries(self, split: str, seed: int) -> None:
        pspl = np.flatnonzero(self.labels == 0)
        binaries = np.flatnonzero((self.labels == 1) & ~self._column("pspl_like").astype(bool))
        if binaries.size == 0:
            raise ValueError(f"the {split} split has no binary that is distinguishable from a single lens on this"
                             " cadence (all PSPL-like); use more events or training.binaries: all")
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
        extra = rng.choice(binaries, size=max(pspl.size - binaries.size, 0), replace=True)
        order = np.sort(np.concatenate([pspl, binaries, extra]))  # by shard and row, as events() expects
        self.index = self.index[order]
        self.labels = self.labels[order]

    def __len__(self) -> int:
        return len(self.index)

    def events(self) -> pd.DataFrame:
        """The split's event rows (every column of the observation tables), in item order."""
        # The index is ordered by shard, then row.
        frames = [
            shard.events.iloc[self.index[self.index[:, 0] == number, 1]]
            for number, shard in enumerate(self.shards)
        ]
        return pd.concat(frames, ignore_index=True)

    def mask(self, item: int) -> np.ndarray:
        """Observed steps (at least one observation) of item ``item``."""
        number, row = self.index[item]
        return np.asarray(self.shards[number].counts[row]) > 0

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        number, row = self.index[item]
        features = self.normalisation.apply(self.shards[number].features(row, self.step_days))
        return torch.from_numpy(features), torch.tensor(self.labels[item])


def shards_digest(observation_dirs: Sequence[str | Path]) -> str:
    """Fingerprint of the training data: every observation directory's events table and arrays (contents).

    The events tables carry the true parameters and the per-cadence columns; the arrays the noisy
    photometry, so a change of the noise or the cadence changes the fingerprint too.
    """
    digest = hashlib.sha256()
    for directory in observation_dirs:
        for name in DATA_FILES:
            path = Path(directory) / name
            if not path.exists():
                raise InputDataError(path, "file does not exist")
            digest.update(name.encode())
            file_digest(path, digest=digest)
    return digest.hexdigest()
