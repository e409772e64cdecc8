"""Simulated microlensing events: shards of PSPL and binary-lens event parameters.

One shard is one table, ``events.parquet`` (see ``simulate_shard``): the parameters, label and
split of each event. Light curves are not stored here: each survey observes the events at its own
times with its own noise (``astrodag.microlensing.observe``).

The priors (``Priors``) follow what surveys of the Galactic bulge find and would classify:

* ``tE``: log-normal with a median of 20 d and 0.57 dex, truncated to [1, 300] d: the OGLE-IV
  bulge timescale distribution (Mroz et al. 2019, ApJS 244, 29: median ~20 d, ~30 % of the events
  shorter than 10 d; this log-normal puts 30 % below 10 d);
* ``u0``: uniform in [0, 1] for both classes (for binaries from the centre of mass): with
  different ranges, how high an event peaks would tell the classes apart;
* ``q``: log-uniform in [1e-4, 1], planetary companions (q < 0.01, what the Roman bulge survey is
  built to find) to equal-mass binaries; ``s`` log-uniform in [0.3, 3] (the resonant and near
  caustic topologies and the wide/close ones around them); ``rho`` log-uniform in [3e-4, 1e-2]
  (source radii of bulge dwarfs to giants in Einstein units); ``alpha`` uniform;
* ``t0`` uniform over the middle of the grid, ``baseline_mag`` and ``source_fraction`` uniform.

Reproducibility: the event parameters, labels and splits of a shard come from one generator
seeded by ``(seed, shard_index)``; the table is the same bit for bit for the same seed and shard,
whatever the other shards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.stats import truncnorm

from astrodag.errors import ConfigError
from astrodag.io import write_table
from astrodag.settings import Settings, fractions, interval, number, section, setting

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
EVENT_COLUMNS = ("event_id", "label", "split", "t0", "u0", "tE", "baseline_mag", "source_fraction",
                 "s", "q", "alpha", "rho")
BINARY_COLUMNS = ("s", "q", "alpha", "rho")


# --------------------------------------------------------------------------------------------
# time grid and settings
# --------------------------------------------------------------------------------------------


def time_grid(epochs: int, duration_days: float) -> np.ndarray:
    """The fixed observing grid: ``epochs`` equally spaced epochs over ``[0, duration_days)`` (days)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 2:
        raise ConfigError("microlensing.time_grid.epochs", f"must be an integer >= 2, got {epochs!r}")
    if not (isinstance(duration_days, (int, float, np.number)) and math.isfinite(duration_days) and duration_days > 0):
        raise ConfigError("microlensing.time_grid.duration_days", f"must be a number > 0, got {duration_days!r}")
    return np.linspace(0.0, float(duration_days), int(epochs), endpoint=False)


@dataclass(frozen=True)
class TimeGridSettings(Settings):
    """The fixed observing grid of every light curve (config ``microlensing.time_grid``).

    Keys
    ----
    epochs : int, default 1500
        Epochs of the grid (the seed's 1500).
    duration_days : float, default 500.0
        Time span of the grid.
    """

    PREFIX: ClassVar[str] = "microlensing.time_grid"

    epochs: int = setting(1500, number(16, integer=True))
    duration_days: float = setting(500.0, number(0.0, low_open=True))

    def grid(self) -> np.ndarray:
        """The epochs' times in days (:func:`time_grid`)."""
        return time_grid(self.epochs, self.duration_days)


_log_uniform = interval(0.0, low_open=True)  # both bounds > 0: drawn log-uniformly


@dataclass(frozen=True)
class Priors(Settings):
    """Distributions of the event parameters (config ``microlensing.simulation.priors``; sources: module docstring).

    Keys
    ----
    t0_fraction : [low, high], default [0.2, 0.8]
        Uniform; ``t0 = times[0] + f * span`` of the grid.
    u0 : [low, high], default [0.0, 1.0]
        Uniform, for both classes (binaries: impact parameter from the centre of mass).
    tE_median_days : float, default 20.0
        Median of the log-normal Einstein time (before truncation).
    tE_log10_sigma : float, default 0.57
        Its standard deviation in log10(tE) (dex).
    tE_days : [low, high], default [1.0, 300.0]
        The log-normal is truncated to this range (days).
    baseline_mag : [low, high], default [16.0, 21.0]
        Uniform; the blended baseline (source plus blend).
    source_fraction : [low, high], default [0.1, 1.0]
        Uniform; ``F_source / (F_source + F_blend)``.
    s : [low, high], default [0.3, 3.0]
        Log-uniform separation (Einstein radii).
    q : [low, high], default [0.0001, 1.0]
        Log-uniform mass ratio: planets to equal masses.
    rho : [low, high], default [0.0003, 0.01]
        Log-uniform source radius (Einstein radii).
    """

    t0_fraction: tuple[float, float] = setting((0.2, 0.8), interval(0.0, 1.0))
    u0: tuple[float, float] = setting((0.0, 1.0), interval(0.0))
    tE_median_days: float = setting(20.0, number(0.0, low_open=True))
    tE_log10_sigma: float = setting(0.57, number(0.0, low_open=True))
    tE_days: tuple[float, float] = setting((1.0, 300.0), _log_uniform)
    baseline_mag: tuple[float, float] = setting((16.0, 21.0), interval())
    source_fraction: tuple[float, float] = setting((0.1, 1.0), interval(1e-6, 1.0))
    s: tuple[float, float] = setting((0.3, 3.0), _log_uniform)
    q: tuple[float, float] = setting((0.0001, 1.0), _log_uniform)
    rho: tuple[float, float] = setting((0.0003, 0.01), _log_uniform)


@dataclass(frozen=True)
class SimulationSettings(Settings):
    """Everything that defines the simulated events except the grid, the size and the seed.

    Build it with ``SimulationSettings.from_config(mapping)`` from the config keys (all optional;
    the defaults are those of ``config/config.yaml``) of ``microlensing.simulation``:

    Keys
    ----
    priors : mapping
        :class:`Priors`.
    split_fractions : mapping, default {train: 0.5, validation: 0.1, test: 0.4}
        Shares of the events in each split (by event).
    """

    PREFIX: ClassVar[str] = "microlensing.simulation"

    priors: Priors = section(Priors)
    split_fractions: dict[str, float] = setting({"train": 0.5, "validation": 0.1, "test": 0.4}, fractions(*SPLITS))


# --------------------------------------------------------------------------------------------
# event parameters
# --------------------------------------------------------------------------------------------


def draw_events(n_events: int, times: np.ndarray, settings: SimulationSettings,
                rng: np.random.Generator) -> pd.DataFrame:
    """Labels (balanced, shuffled), splits and parameters of ``n_events`` events.

    Every parameter is drawn for every event (so the random stream does not depend on the
    labels); the binary-only ones (``s``, ``q``, ``alpha``, ``rho``) are then set to NaN for PSPL.
    With an odd count the extra event is a binary.
    """
    p = settings.priors
    labels = np.zeros(n_events, dtype=np.int8)
    labels[n_events // 2:] = 1
    labels = rng.permutation(labels)
    split = tuple(settings.split_fractions[name] for name in SPLITS)
    shares = np.asarray(split) / sum(split)  # exact sum for numpy
    split_index = rng.choice(len(SPLITS), size=n_events, p=shares)
    split = np.asarray(SPLITS, dtype=object)[split_index]

    def uniform(bounds):
        return rng.uniform(bounds[0], bounds[1], n_events)

    def log_uniform(bounds):
        return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), n_events))

    # Truncated log-normal by inverting scipy's CDF at uniform draws: the stream is one uniform per event.
    centre, width = math.log10(p.tE_median_days), p.tE_log10_sigma
    low, high = ((math.log10(bound) - centre) / width for bound in p.tE_days)
    log_te = truncnorm.ppf(rng.uniform(0.0, 1.0, n_events), low, high, loc=centre, scale=width)

    span = float(times[-1] - times[0])
    frame = pd.DataFrame({
        "label": labels,
        "split": split,
        "t0": times[0] + uniform(p.t0_fraction) * span,
        "u0": uniform(p.u0),
        "tE": np.clip(10.0**log_te, *p.tE_days),  # the clip only removes rounding outside the bounds
        "baseline_mag": uniform(p.baseline_mag),
        "source_fraction": uniform(p.source_fraction),
        "s": log_uniform(p.s),
        "q": log_uniform(p.q),
        "alpha": rng.uniform(0.0, 2.0 * math.pi, n_events),
        "rho": log_uniform(p.rho),
    })
    frame.loc[labels == 0, list(BINARY_COLUMNS)] = np.nan
    return frame


# --------------------------------------------------------------------------------------------
# one shard
# --------------------------------------------------------------------------------------------


def simulate_shard(out_dir: str | Path, shard_index: int, events_per_shard: int, settings: SimulationSettings,
                   times: np.ndarray, seed: int) -> dict[str, Any]:
    """Draw one shard of events and write its ``events.parquet`` (columns ``EVENT_COLUMNS``).

    Parameters
    ----------
    out_dir : path
        The shard directory (created).
    shard_index : int
        Index of the shard: ``event_id = shard_index * events_per_shard + row``.
    events_per_shard : int
        Events in the shard, half PSPL and half binary (an odd extra one is a binary), shuffled.
    settings : SimulationSettings
    times : ndarray, shape (T,)
        The model's time grid (``time_grid``): ``t0`` is drawn over its span.
    seed : int
        Base seed; the same seed and shard give the same table bit for bit.

    Returns
    -------
    dict
        Counts (events, per class, per split) and seconds.
    """
    for name, value, minimum in (("shard_index", shard_index, 0), ("events_per_shard", events_per_shard, 1),
                                 ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 2 or not np.all(np.diff(times) > 0):
        raise ValueError("times must be a 1-D increasing array of at least 2 epochs")
    started = time.perf_counter()
    n = int(events_per_shard)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard_index, 0)))
    events = draw_events(n, times, settings, rng)
    events.insert(0, "event_id", np.int64(shard_index) * np.int64(n) + np.arange(n, dtype=np.int64))
    events = events[list(EVENT_COLUMNS)]
    write_table(Path(out_dir) / "events.parquet", events)
    n_binary = int(events["label"].sum())
    seconds = time.perf_counter() - started
    summary = {
        "shard": int(shard_index),
        "events": n,
        "pspl": n - n_binary,
        "binary": n_binary,
        "splits": {name: int((events["split"] == name).sum()) for name in SPLITS},
        "seconds": round(seconds, 3),
    }
    log.info("shard %d: %d events (%d PSPL, %d binary) in %.2f s", shard_index, n, n - n_binary, n_binary, seconds)
    return summary
