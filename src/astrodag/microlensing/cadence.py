"""Survey schedules: when a survey observes an event, and how precise one visit is.

A cadence is one row of ``config/cadences.tsv`` (validated by ``load_cadences`` here and by
``workflow/schemas/cadences.schema.yaml`` in the workflow; the table's header names the source of
every number). ``observation_times`` draws an event's observation times from this model:

Observing season (``period_days``, ``season_days``)
    The field is observable for ``season_days`` of every ``period_days`` (the bulge from the
    ground: ~8 months a year; Roman: 72-day seasons twice a year), with a random phase per event.
    ``season_days`` 0 or equal to ``period_days``: always in season.
Sites and nights (``sites``, ``night_hours``)
    ``sites`` sites evenly spaced in longitude; each observes a window of ``night_hours`` a day
    centred on its local midnight (24: continuous, e.g. from space). The time of day of the grid's
    start is random per event.
Weather and scheduling (``night_probability``)
    Each site-night is usable with this probability, independently per site and night: losses
    come a whole night at a time, as clouds and scheduling take them.
Visits (``visit_interval_minutes``, ``visits_per_night``)
    In a usable night the site visits the field every ``visit_interval_minutes`` (on a grid with a
    random phase per site, continuous across nights, plus a jitter of up to ``JITTER`` of the
    interval either way, which stays inside the night), at most ``visits_per_night`` of them
    (0: no limit) in a run that starts at a random slot of the night.
Photometry (``depth_mag``, ``error_floor_mag``)
    The single-visit error model (``CadenceSpec.noise``, ``astrodag.microlensing.noise.SurveyNoise``),
    in the survey's own band: the simulation uses one magnitude scale for all surveys.

Every event gets at least ``MIN_OBSERVATIONS`` observations: if the schedule gives fewer (an
event inside a seasonal gap of a short grid), lost visits are restored at random, in-season
ones first. An event's times come from its own random generator, seeded by ``(seed, cadence
name, event_id)``: they do not depend on the other events, or on how events are split into shards.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrodag.errors import InputDataError
from astrodag.microlensing.noise import SurveyNoise

COLUMNS = ("cadence", "period_days", "season_days", "sites", "night_hours", "night_probability",
           "visit_interval_minutes", "visits_per_night", "depth_mag", "error_floor_mag", "description")
NUMBERS = COLUMNS[1:-1]
INTEGERS = ("sites", "visits_per_night")
MIN_OBSERVATIONS = 5
JITTER = 0.05  # half-width of the uniform timing jitter, as a fraction of the visit interval
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # used in file paths and Snakemake wildcards


@dataclass(frozen=True)
class CadenceSpec:
    """One cadence (one row of the cadence table); see the module docstring for the meanings."""

    name: str
    period_days: float
    season_days: float
    sites: int
    night_hours: float
    night_probability: float
    visit_interval_minutes: float
    visits_per_night: int
    depth_mag: float
    error_floor_mag: float
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"cadence name must be letters, digits, '_', '.', '-' (not first), got {self.name!r}")
        for key in NUMBERS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        for key in INTEGERS:
            if int(getattr(self, key)) != getattr(self, key):
                raise ValueError(f"{key} must be a whole number, got {getattr(self, key)!r}")
            object.__setattr__(self, key, int(getattr(self, key)))
        if self.period_days <= 0:
            raise ValueError(f"period_days must be > 0, got {self.period_days}")
        if not 0 <= self.season_days <= self.period_days:
            raise ValueError(f"season_days must be in [0, period_days = {self.period_days}], got {self.season_days}")
        if self.sites < 1:
            raise ValueError(f"sites must be >= 1, got {self.sites}")
        if not 0 < self.night_hours <= 24:
            raise ValueError(f"night_hours must be in (0, 24], got {self.night_hours}")
        if not 0 < self.night_probability <= 1:
            raise ValueError(f"night_probability must be in (0, 1], got {self.night_probability}")
        if self.visit_interval_minutes <= 0:
            raise ValueError(f"visit_interval_minutes must be > 0, got {self.visit_interval_minutes}")
        if self.night_hours < 24 and self.visit_interval_minutes * (1 + 2 * JITTER) > self.night_hours * 60:
            raise ValueError(
                f"visit_interval_minutes {self.visit_interval_minutes} does not fit a visit into every"
                f" {self.night_hours}-hour night (it must be <= night_hours * 60 / {1 + 2 * JITTER:g})"
            )
        if self.visits_per_night < 0:
            raise ValueError(f"visits_per_night must be >= 0 (0 = no limit), got {self.visits_per_night}")
        if self.error_floor_mag < 0:
            raise ValueError(f"error_floor_mag must be >= 0, got {self.error_floor_mag}")

    @property
    def seasonal(self) -> bool:
        """Whether the field has seasons (``0 < season_days < period_days``)."""
        return 0 < self.season_days < self.period_days

    @property
    def noise(self) -> SurveyNoise:
        """The single-visit photometric error model of this survey."""
        return SurveyNoise(self.depth_mag, self.error_floor_mag)

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict keyed by the table's column names."""
        values = asdict(self)
        return {"cadence": values.pop("name"), **values}


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
        (e.g. a season longer than its period).
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
        values: dict[str, Any] = {}
        for column in NUMBERS:
            cell = record[column].strip()
            try:
                values[column] = float(cell)
            except ValueError:
                raise InputDataError(path, f"{where}, column {column}: expected a number, got {cell!r}") from None
            if not math.isfinite(values[column]):
                raise InputDataError(path, f"{where}, column {column}: expected a finite number, got {cell!r}")
            if column in INTEGERS and not values[column].is_integer():
                raise InputDataError(path, f"{where}, column {column}: expected a whole number, got {cell!r}")
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
# observation times
# --------------------------------------------------------------------------------------------


def _generator(spec: CadenceSpec, event_id: int, seed: int) -> np.random.Generator:
    key = zlib.crc32(spec.name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key, int(event_id))))


def observation_times(spec: CadenceSpec, event_id: int, seed: int, duration_days: float) -> np.ndarray:
    """One event's observation times under a cadence (see the module docstring).

    Parameters
    ----------
    spec : CadenceSpec
    event_id : int
        Global event id (>= 0); the times depend only on ``(seed, spec.name, event_id)``, the
        schedule and ``duration_days``.
    seed : int
        Base seed (>= 0).
    duration_days : float
        Length of the light curve (days, > 0).

    Returns
    -------
    numpy.ndarray
        Sorted float64 times (days) in ``[0, duration_days)``, at least ``MIN_OBSERVATIONS``.
    """
    for key, value in (("event_id", event_id), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    if not (isinstance(duration_days, (int, float, np.number)) and math.isfinite(duration_days)
            and duration_days > 0):
        raise ValueError(f"duration_days must be a finite number > 0, got {duration_days!r}")
    rng = _generator(spec, event_id, seed)
    step = spec.visit_interval_minutes / 1440.0
    window = spec.night_hours / 24.0
    continuous = window >= 1.0
    half_jitter = JITTER * step
    nights = np.arange(-1, math.ceil(duration_days) + 1)  # every night whose window can reach [0, duration)

    # All draws up front, in a fixed order and number, so the stream never depends on earlier outcomes.
    midnight = rng.random()  # time of day of site 0's local midnight at the grid's start (days)
    lattice_phase = rng.random(spec.sites) * step
    usable = rng.random((spec.sites, nights.size)) < spec.night_probability
    first_slot_draw = rng.random((spec.sites, nights.size))
    season_phase = rng.uniform(0.0, spec.period_days)

    # Slots of each site-night: visit grid points inside the night, shrunk by the jitter so jittered
    # visits stay inside it. A continuous window is split into days whose slots meet exactly.
    opens = (nights[None, :] + midnight + np.arange(spec.sites)[:, None] / spec.sites - window / 2.0)
    site_phase = lattice_phase[:, None]
    if continuous:
        edges = np.ceil((np.concatenate([opens, opens[:, -1:] + 1.0], axis=1) - site_phase) / step).astype(np.int64)
        first, end = edges[:, :-1], edges[:, 1:]
    else:
        first = np.ceil((opens + half_jitter - site_phase) / step).astype(np.int64)
        end = np.ceil((opens + window - half_jitter - site_phase) / step).astype(np.int64)
    counts = np.maximum(end - first, 0).ravel()
    first = first.ravel()
    phase = np.repeat(lattice_phase, nights.size)  # per site-night

    # The slots visited: usable nights, and there a run of at most visits_per_night slots from a random slot.
    start = np.zeros(counts.size, dtype=np.int64)
    visited = np.where(usable.ravel(), counts, 0)
    if spec.visits_per_night > 0:
        start = np.floor(first_slot_draw.ravel() * np.maximum(counts - spec.visits_per_night + 1, 1)).astype(np.int64)
        visited = np.minimum(visited, spec.visits_per_night)
    if spec.seasonal:
        # Skip whole nights in a seasonal gap before expanding them (most of Roman's year).
        opening = phase + first * step
        offset = np.mod(opening + season_phase, spec.period_days)
        in_gap = (offset >= spec.season_days) & (offset + counts * step <= spec.period_days)
        visited = np.where(in_gap, 0, visited)
    slots = _slots(phase, first + start, visited, step)[2]
    times = slots + rng.uniform(-half_jitter, half_jitter, slots.size)
    keep = (times >= 0.0) & (times < duration_days)
    if spec.seasonal:
        keep &= _in_season(spec, slots, season_phase)
    times = times[keep]
    # One site's visits come in time order; several sites' runs are merged (a stable sort merges sorted runs fast).
    ordered = spec.sites == 1

    needed = MIN_OBSERVATIONS - times.size
    if needed > 0:
        # Restore lost visits at random, in-season first; if the grid holds too few slots at all, add random times.
        night, rank, all_slots = _slots(phase, first, counts, step)
        all_times = all_slots + rng.uniform(-half_jitter, half_jitter, all_slots.size)
        in_season = _in_season(spec, all_slots, season_phase)
        visited_slot = (rank >= start[night]) & (rank < start[night] + visited[night])
        lost = (all_times >= 0.0) & (all_times < duration_days) & ~(visited_slot & in_season)
        chosen = [times]
        for pool in (np.flatnonzero(lost & in_season), np.flatnonzero(lost & ~in_season)):
            take = rng.permutation(pool)[:needed]
            chosen.append(all_times[take])
            needed -= take.size
        if needed > 0:
            chosen.append(rng.uniform(0.0, duration_days, needed))
        times = np.concatenate(chosen)
        ordered = False
    return times if ordered else np.sort(times, kind="stable")


def _in_season(spec: CadenceSpec, times: np.ndarray, season_phase: float) -> np.ndarray:
    if not spec.seasonal:
        return np.ones(times.size, dtype=bool)
    return np.mod(times + season_phase, spec.period_days) < spec.season_days


def _slots(phase: np.ndarray, first: np.ndarray, counts: np.ndarray,
           step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand site-nights into slots: ``counts[i]`` grid times ``phase[i] + (first[i] + r) step``, r = 0, 1, ...

    Returns the site-night index ``i`` of every slot, its number ``r`` and its time (days), site-night by site-night.
    """
    night = np.repeat(np.arange(counts.size), counts)
    rank = np.arange(night.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return night, rank, phase[night] + (first[night] + rank) * step
