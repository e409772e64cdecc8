"""Observing cadences: which epochs of the fixed time grid a survey actually observes.

A cadence is one row of ``config/cadences.tsv`` (validated by ``load_cadences`` here and by
``workflow/schemas/cadences.schema.yaml`` in the workflow), with these meanings on the grid:

``missing_fraction``
    The fraction of epochs that are masked, on average over events (exactly, in expectation).
``season_days``, ``gap_days``
    A periodic observing season: ``season_days`` observable, then ``gap_days`` with no
    observation at all, repeating with the period ``season_days + gap_days`` and a random
    phase per event. ``0`` means no gaps. The gaps alone mask ``gap_days / (season_days +
    gap_days)`` of the epochs on average; a cadence whose gaps exceed ``missing_fraction`` is
    rejected.
``clump_epochs``
    Inside the seasons the remaining epochs are dropped with the probability that brings the
    overall fraction to ``missing_fraction``. With ``clump_epochs == 1`` each epoch is dropped
    independently; with ``clump_epochs > 1`` the drops come in runs of that mean length
    (irregular visits: a stationary two-state Markov chain along the epochs whose missing runs
    are geometric with mean ``clump_epochs``; it needs ``clump_epochs >= p / (1 - p)`` for the
    in-season drop probability ``p``). Independent drops already have mean runs of ``1/(1-p)``.

Every mask keeps at least ``MIN_OBSERVED_EPOCHS`` observed epochs (more are restored at random,
in-season first, in the rare mask that has fewer), so that no light curve is empty.

Each event's mask comes from its own random generator, seeded by ``(seed, cadence name,
event_id)``: it does not depend on how the events are split into shards or chunks.
"""

from __future__ import annotations

import logging
import math
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrodag.errors import InputDataError
from astrodag.io import atomic_path
from astrodag.logs import progress_enabled

log = logging.getLogger(__name__)

COLUMNS = ("cadence", "missing_fraction", "season_days", "gap_days", "clump_epochs", "description")
MIN_OBSERVED_EPOCHS = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # used in file paths and Snakemake wildcards


@dataclass(frozen=True)
class CadenceSpec:
    """One cadence (one row of the cadence table); see the module docstring for the meanings."""

    name: str
    missing_fraction: float
    season_days: float = 0.0
    gap_days: float = 0.0
    clump_epochs: float = 1.0
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"cadence name must be letters, digits, '_', '.', '-' (not first), got {self.name!r}")
        for key in ("missing_fraction", "season_days", "gap_days", "clump_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        if not 0.0 <= self.missing_fraction < 1.0:
            raise ValueError(f"missing_fraction must be in [0, 1), got {self.missing_fraction}")
        if self.season_days < 0 or self.gap_days < 0:
            raise ValueError(f"season_days and gap_days must be >= 0, got {self.season_days} and {self.gap_days}")
        if self.gap_days > 0 and self.season_days == 0:
            raise ValueError(f"gap_days {self.gap_days} needs season_days > 0 (0 and 0 mean no seasons)")
        if self.clump_epochs < 1:
            raise ValueError(f"clump_epochs must be >= 1, got {self.clump_epochs}")
        if self.gap_fraction > self.missing_fraction:
            raise ValueError(
                f"the seasonal gaps alone mask gap_days / (season_days + gap_days) = {self.gap_fraction:.4g} of the"
                f" epochs, more than missing_fraction {self.missing_fraction}"
            )
        p = self.in_season_missing
        if self.clump_epochs > 1 and p > 0 and self.clump_epochs < p / (1.0 - p):
            raise ValueError(
                f"clump_epochs {self.clump_epochs} is too small for the in-season drop probability {p:.4g}:"
                f" runs of mean length {self.clump_epochs} cannot mask that many epochs (need >= {p / (1 - p):.4g})"
            )

    @property
    def gap_fraction(self) -> float:
        """Average fraction of epochs that fall in the seasonal gaps."""
        if self.season_days <= 0 or self.gap_days <= 0:
            return 0.0
        return self.gap_days / (self.season_days + self.gap_days)

    @property
    def in_season_missing(self) -> float:
        """Drop probability of an in-season epoch that gives ``missing_fraction`` overall."""
        g = self.gap_fraction
        return max(0.0, (self.missing_fraction - g) / (1.0 - g))

    def to_dict(self) -> dict[str, Any]:
        return {"cadence": self.name, "missing_fraction": self.missing_fraction, "season_days": self.season_days,
                "gap_days": self.gap_days, "clump_epochs": self.clump_epochs, "description": self.description}


# --------------------------------------------------------------------------------------------
# the cadence table
# --------------------------------------------------------------------------------------------


def load_cadences(path: str | Path) -> dict[str, CadenceSpec]:
    """Read and validate a cadence table (tab separated, ``#`` comments), in file order.

    Raises
    ------
    InputDataError
        Naming the file and the problem: missing or unknown columns, a bad cell (row, cadence,
        column and value), duplicate names, or a row whose settings contradict each other
        (e.g. seasonal gaps that alone exceed ``missing_fraction``).
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "file does not exist")
    try:
        table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(path, f"not a readable tab-separated table ({error})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(path, f"missing column(s) {', '.join(missing)} (expected: {', '.join(COLUMNS)})")
    unknown = [c for c in table.columns if c not in COLUMNS]
    if unknown:
        raise InputDataError(path, f"unknown column(s) {', '.join(unknown)} (expected: {', '.join(COLUMNS)})")
    if table.empty:
        raise InputDataError(path, "no cadences (the table has a header only)")

    cadences: dict[str, CadenceSpec] = {}
    rows: dict[str, int] = {}
    for number, record in enumerate(table.to_dict("records"), start=1):
        name = record["cadence"].strip()
        where = f"row {number} (cadence {name!r})"
        if not name:
            raise InputDataError(path, f"row {number}: empty cadence name")
        if name in cadences:
            raise InputDataError(path, f"duplicate cadence name {name!r} (rows {rows[name]} and {number})")
        values = {}
        for column in COLUMNS[1:5]:
            cell = record[column].strip()
            try:
                values[column] = float(cell)
            except ValueError:
                raise InputDataError(path, f"{where}, column {column}: expected a number, got {cell!r}") from None
            if not math.isfinite(values[column]):
                raise InputDataError(path, f"{where}, column {column}: expected a finite number, got {cell!r}")
        if not 0.0 <= values["missing_fraction"] < 1.0:
            cell = record["missing_fraction"].strip()
            raise InputDataError(path, f"{where}, column missing_fraction: must be in [0, 1), got {cell!r}")
        description = record["description"].strip()
        if not description:
            raise InputDataError(path, f"{where}, column description: empty (say what the cadence stands for)")
        try:
            cadences[name] = CadenceSpec(name=name, description=description, **values)
        except ValueError as error:
            raise InputDataError(path, f"{where}: {error}") from None
        rows[name] = number
    return cadences


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _clumped_drops(rng: np.random.Generator, p: float, mean_run: float, n: int) -> np.ndarray:
    """Missing epochs (bool, length n) from a stationary two-state Markov chain.

    Missing runs are geometric with mean ``mean_run``, observed runs geometric with mean
    ``mean_run (1 - p) / p``, so each epoch is missing with probability ``p``.
    """
    to_missing = p / (mean_run * (1.0 - p))  # P(observed -> missing)
    to_observed = 1.0 / mean_run  # P(missing -> observed)
    start_missing = rng.random() < p  # the stationary distribution; runs are memoryless
    pairs = int(n / (1.0 / to_missing + mean_run) * 1.5) + 8
    lengths = []
    total = 0
    while total < n:
        observed = rng.geometric(to_missing, pairs)
        missing = rng.geometric(to_observed, pairs)
        runs = np.column_stack([missing, observed] if start_missing else [observed, missing]).ravel()
        lengths.append(runs)
        total += int(runs.sum())
    lengths = np.concatenate(lengths)
    states = np.zeros(lengths.size, dtype=bool)
    states[0 if start_missing else 1::2] = True
    return np.repeat(states, lengths)[:n]


def _event_mask(rng: np.random.Generator, spec: CadenceSpec, offsets: np.ndarray) -> np.ndarray:
    """One event's observed epochs (bool) from its generator; ``offsets`` = times - times[0]."""
    n = offsets.size
    if spec.gap_fraction > 0:
        period = spec.season_days + spec.gap_days
        phase = rng.uniform(0.0, period)
        in_season = np.mod(offsets + phase, period) < spec.season_days
    else:
        in_season = np.ones(n, dtype=bool)
    p = spec.in_season_missing
    if p <= 0:
        observed = in_season.copy()
    elif spec.clump_epochs > 1:
        observed = in_season & ~_clumped_drops(rng, p, spec.clump_epochs, n)
    else:
        observed = in_season & (rng.random(n) >= p)
    needed = min(MIN_OBSERVED_EPOCHS, n) - int(observed.sum())
    if needed > 0:
        # Restore random masked epochs, in-season ones first (gaps stay empty when possible).
        candidates = [np.flatnonzero(in_season & ~observed), np.flatnonzero(~in_season & ~observed)]
        for pool in candidates:
            take = rng.permutation(pool)[:needed]
            observed[take] = True
            needed -= take.size
            if needed <= 0:
                break
    return observed


def cadence_masks(spec: CadenceSpec, event_ids, times, seed: int) -> np.ndarray:
    """Observation masks of the given events, uint8 (N, T), 1 = observed.

    Parameters
    ----------
    spec : CadenceSpec
    event_ids : array_like of int, shape (N,)
        Global event ids (``events.parquet``); each event's mask depends only on
        ``(seed, spec.name, event_id)`` and the grid.
    times : array_like, shape (T,)
        The observing grid (days).
    seed : int
        Base seed (>= 0).
    """
    event_ids = np.asarray(event_ids)
    integers = np.issubdtype(event_ids.dtype, np.integer)
    if event_ids.ndim != 1 or (event_ids.size and (not integers or event_ids.min() < 0)):
        raise ValueError("event_ids must be a 1-D array of integers >= 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("times must be a non-empty 1-D array")
    offsets = times - times[0]
    key = _name_key(spec.name)
    masks = np.empty((event_ids.size, times.size), dtype=np.uint8)
    for row, event_id in enumerate(event_ids.tolist()):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key, event_id)))
        masks[row] = _event_mask(rng, spec, offsets)
    return masks


def write_cadence_masks(events_path: str | Path, out_path: str | Path, spec: CadenceSpec, times, seed: int,
                        chunk_events: int = 2000, progress: bool | None = None) -> dict[str, Any]:
    """Write the masks of a shard's events (``events.parquet``, in its order) to ``out_path``.

    ``out_path`` is a uint8 ``.npy`` (N, T), 1 = observed, written chunk by chunk through a memory
    map and renamed into place when complete. Returns a summary (events, epochs, the realised
    missing fraction, seconds).
    """
    events_path = Path(events_path)
    if not events_path.exists():
        raise InputDataError(events_path, "file does not exist")
    try:
        events = pd.read_parquet(events_path, columns=["event_id"])
    except (KeyError, ValueError, OSError) as error:
        raise InputDataError(events_path, f"cannot read the event_id column ({error})") from None
    event_ids = events["event_id"].to_numpy()
    if not np.issubdtype(event_ids.dtype, np.integer):
        raise InputDataError(events_path, f"event_id must be integers, found {event_ids.dtype}")
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    times = np.asarray(times, dtype=np.float64)
    started = time.perf_counter()
    observed = 0
    with atomic_path(out_path) as tmp:
        created = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(event_ids.size, times.size))
        del created  # header written; chunks re-open it so written pages leave this process
        chunks = range(0, event_ids.size, chunk_events)
        for first in tqdm(chunks, desc=f"masks {spec.name}", unit="chunk", disable=not progress_enabled(progress)):
            masks = cadence_masks(spec, event_ids[first:first + chunk_events], times, seed)
            observed += int(masks.sum(dtype=np.int64))
            array = np.load(tmp, mmap_mode="r+")
            array[first:first + masks.shape[0]] = masks
            array.flush()
            del array
    total = event_ids.size * times.size
    summary = {
        "cadence": spec.name,
        "events": int(event_ids.size),
        "epochs": int(times.size),
        "target_missing_fraction": spec.missing_fraction,
        "missing_fraction": 1.0 - observed / total if total else float("nan"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("cadence %s: masks of %d events, %.4f missing (target %.4f), in %.1f s", spec.name,
             summary["events"], summary["missing_fraction"], spec.missing_fraction, summary["seconds"])
    return summary
