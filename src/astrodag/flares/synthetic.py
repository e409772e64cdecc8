"""Synthetic SHARP keyword series and flare events for the demo run of the flare track.

The generator writes exactly the file formats of :mod:`astrodag.flares.sharp`,
so the demo goes through the same ingestion code as real data. It emulates the
physics that makes flare prediction from SHARP keywords possible but hard:

Regions
    Active regions (HARPs) appear as a Poisson process (one every ~14 h, so
    ~15 are on the disk at once and their series overlap in time), with
    increasing, unique HARPNUMs (some numbers skipped, as in the real series).
    About half rotate in over the east limb already formed; the others emerge
    on the disk. A region is observed until it crosses the west limb (solar
    rotation of 13.2 deg/day) or decays away: from 2 to ~13 days.
Latent state
    The unsigned flux follows an emergence rise, a plateau and an exponential
    decay, scaled by a log-normal peak flux (median 7e21 Mx, 0.38 dex), so
    most regions are small and a few are large. A non-potentiality state
    (log free energy relative to that expected from the flux) is the sum of a
    per-region complexity (larger for larger regions), a slow AR(1) process
    (1.5-day memory) and a boost while new flux emerges.
Keywords
    The nine keywords are power laws of the latent flux and non-potentiality
    (so they are correlated, as in real SHARP data) with realistic magnitudes:
    USFLUX ~1e21-1e23 Mx, AREA_ACR ~10-2000 uHem, TOTUSJZ ~1e12-1e14 A,
    TOTUSJH ~10-5000 G^2/m, TOTPOT ~1e21-1e24 erg/cm^3, SAVNCPP ~1e11-1e14 A,
    ABSNJZH ~1-1000 G^2/m, R_VALUE 0-5.5 (exactly 0 for simple regions) and a
    signed MEANALP of ~0.01-0.1 1/Mm. Each sample gets multiplicative
    measurement noise that grows towards the limb, where extensive quantities
    are also slightly underestimated. Each sample also carries its region's
    Stonyhurst longitude (``LON_FWT``, -80 to 90 deg). A few samples per 1000 hold a NaN (the
    whole row or one keyword) and observation gaps of a few hours (rarely a
    day) remove samples, as in real SHARP series.
Flares
    A non-homogeneous Poisson process for flares above B1 (1e-7 W/m^2) whose
    log rate rises with the free energy (TOTPOT), R_VALUE and the growth of
    the free energy over the last 24 h, plus a hidden per-region factor
    (0.2 dex) that no keyword reveals, so the labels are predictable from a
    10-sample window but far from perfectly (a logistic regression on the
    last sample and the change over the window reaches a ROC AUC of ~0.75).
    Flares keep occurring during observation gaps. Peak fluxes follow
    dN/dF ~ F^-1.8 between 1e-7 and 3e-3 W/m^2, which gives a class imbalance
    like the real Sun's: of hourly windows of 10 samples, ~19 % have a >= C
    flare within 24 h, ~4 % a >= M flare and ~1 % a >= M5 flare. About 5 %
    more flares are not assigned to any region (empty HARPNUM), as in real
    event lists.

Everything is vectorised with NumPy over regions (in chunks of 512, which
bounds memory for thousands of regions) and deterministic for a seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from scipy.signal import lfilter
from tqdm.auto import tqdm

from astrodag.flares.sharp import (
    FLARE_CLASS_THRESHOLDS,
    LONGITUDE_COLUMN,
    SHARP_KEYWORDS,
    goes_class_to_flux,
    goes_classes_from_flux,
)
from astrodag.io import atomic_path, write_table

log = logging.getLogger(__name__)

_CHUNK_REGIONS = 512
_MEAN_ARRIVAL_HOURS = 14.0
_ROTATION_DEG_PER_HOUR = 13.2 / 24.0
_MEDIAN_LOG_FLUX = 21.85  # log10 Mx of a region's peak unsigned flux
_GROWTH_HOURS = 24.0  # free-energy growth that drives the flare rate is measured over this lag
_FLARE_FLUX_MIN, _FLARE_FLUX_MAX, _FLARE_INDEX = 1e-7, 3e-3, 1.8
# log10 rate of flares above B1 per hour = _LOG_RATE_AT_1E23 + slopes * (log10 TOTPOT - 23, R_VALUE - 3,
# 24-h growth of log10 TOTPOT) + hidden per-region factor.
_LOG_RATE_AT_1E23 = -1.3
_RATE_SLOPES = (0.65, 0.2, 1.5)
_SHEAR_SD = 0.15
_GROWTH_CAP = 0.5
_HIDDEN_SD = 0.25
_UNASSIGNED_FRACTION = 0.05
_NAN_ROW_PROBABILITY = 0.004
_GAP_STARTS_PER_HOUR = 0.002
_GAP_MEAN_HOURS = 5.0

# log10 keyword = offset + flux_slope * (log10 USFLUX - 22) + shear_slope * non-potentiality
# + a per-region offset (sd region_sd: regions differ in how currents are distributed) + noise (sd in dex).
_KEYWORD_MODEL = {
    # name: (offset, flux_slope, shear_slope, region_sd, noise_sd)
    "TOTUSJH": (2.8, 1.2, 0.5, 0.08, 0.03),
    "TOTUSJZ": (13.05, 0.9, 0.3, 0.05, 0.02),
    "AREA_ACR": (2.5, 0.95, 0.1, 0.05, 0.015),
    "SAVNCPP": (12.65, 1.0, 0.6, 0.2, 0.08),
    "ABSNJZH": (1.9, 1.2, 0.6, 0.25, 0.1),
}


def _draw_regions(rng: np.random.Generator, n_regions: int, dt_hours: float) -> dict[str, np.ndarray]:
    """Per-region parameters: identity, timing, size, complexity and hidden flare factor."""
    rotates_in = rng.random(n_regions) < 0.55
    longitude0 = np.where(rotates_in, rng.uniform(-80, -70, n_regions), rng.uniform(-65, 60, n_regions))
    hours_to_limb = (78.0 - longitude0) / _ROTATION_DEG_PER_HOUR
    hours_to_vanish = 24.0 * np.where(
        rotates_in, rng.uniform(3, 25, n_regions), rng.uniform(2, 16, n_regions)
    )
    lifetime = np.clip(np.minimum(hours_to_limb, hours_to_vanish), 48.0, None)
    log_flux_max = np.clip(rng.normal(_MEDIAN_LOG_FLUX, 0.38, n_regions), 20.9, 23.2)
    arrivals = np.cumsum(rng.exponential(_MEAN_ARRIVAL_HOURS, n_regions))
    return {
        "harpnum": np.cumsum(1 + rng.poisson(0.5, n_regions)),
        "start_step": np.round((arrivals - arrivals[0]) / dt_hours).astype(np.int64),
        "n_steps": np.maximum(np.round(lifetime / dt_hours).astype(np.int64), 1),
        "longitude0": longitude0,
        # Hours since emergence at the first sample: rotating-in regions are already formed.
        "age0": np.where(rotates_in, rng.uniform(0, 288, n_regions), rng.uniform(0, 12, n_regions)),
        "log_flux_max": log_flux_max,
        "tau_rise": rng.uniform(12, 48, n_regions) * 10 ** (0.3 * (log_flux_max - _MEDIAN_LOG_FLUX)),
        "plateau": rng.uniform(24, 96, n_regions),
        "tau_decay": rng.uniform(96, 360, n_regions),
        "complexity": rng.normal(0.0, _SHEAR_SD, n_regions) + 0.5 * (log_flux_max - _MEDIAN_LOG_FLUX),
        "hidden": rng.normal(0.0, _HIDDEN_SD, n_regions),
        "twist_sign": rng.choice([-1.0, 1.0], n_regions),
        "log_twist": rng.normal(-1.8, 0.25, n_regions),
    }


def _ar1(rng: np.random.Generator, shape: tuple[int, int], tau_hours: float, sd: float, dt_hours: float):
    """Stationary AR(1) series along axis 1: e-folding time ``tau_hours``, standard deviation ``sd``."""
    rho = np.exp(-dt_hours / tau_hours)
    shocks = rng.normal(0.0, sd * np.sqrt(1 - rho**2), shape)
    shocks[:, 0] = rng.normal(0.0, sd, shape[0])
    return lfilter([1.0], [1.0, -rho], shocks, axis=1)


def _flux_profile(age: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """log10 of the flux relative to its peak: emergence rise, plateau, decay.

    The floor of 0.2 stands for detection: a HARP is tracked once it is visible.
    """
    age = np.maximum(age, 0.0)
    rise = (1 - np.exp(-age / p["tau_rise"][:, None])) ** 2
    decay_start = 2 * p["tau_rise"][:, None] + p["plateau"][:, None]
    decay = np.exp(-np.clip(age - decay_start, 0, None) / p["tau_decay"][:, None])
    return np.log10(np.maximum(rise * decay, 0.2))


def _flare_fluxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Peak fluxes from dN/dF ~ F^-1.8 truncated to [1e-7, 3e-3] W/m^2 (inverse-CDF sampling)."""
    exponent = 1 - _FLARE_INDEX
    ratio = (_FLARE_FLUX_MAX / _FLARE_FLUX_MIN) ** exponent
    return _FLARE_FLUX_MIN * (1 - rng.random(n) * (1 - ratio)) ** (1 / exponent)


def _simulate_chunk(rng: np.random.Generator, p: dict[str, np.ndarray], dt_hours: float):
    """Keyword samples and flares of one chunk of regions on a padded (region, step) grid.

    Returns the keyword array (n_samples, 9) with the longitude, region index and
    step of each kept sample, and the region index, step and peak flux of each flare.
    """
    n, width = len(p["n_steps"]), int(p["n_steps"].max())
    lag = max(1, round(_GROWTH_HOURS / dt_hours))
    # Simulate `lag` extra steps before the first sample so the 24-h growth is defined from the start.
    steps = np.arange(-lag, width)
    age = p["age0"][:, None] + steps * dt_hours
    profile = _flux_profile(age, p)
    log_flux = p["log_flux_max"][:, None] + profile + _ar1(rng, (n, width + lag), 24.0, 0.03, dt_hours)
    emergence = np.clip(profile - _flux_profile(age - _GROWTH_HOURS, p), 0, None)
    shear = (
        p["complexity"][:, None] + _ar1(rng, (n, width + lag), 36.0, _SHEAR_SD, dt_hours) + 0.8 * emergence
    )
    log_energy = 23.0 + 1.5 * (log_flux - 22) + shear
    growth = np.clip(log_energy[:, lag:] - log_energy[:, :-lag], 0.0, _GROWTH_CAP)
    log_flux, shear, log_energy = log_flux[:, lag:], shear[:, lag:], log_energy[:, lag:]
    r_value = np.clip(2.8 + 2.4 * (log_flux - 22) + 1.2 * shear, 0.0, 5.8)

    observed = np.arange(width)[None, :] < p["n_steps"][:, None]
    energy_slope, r_slope, growth_slope = _RATE_SLOPES
    log_rate = (
        _LOG_RATE_AT_1E23
        + energy_slope * (log_energy - 23)
        + r_slope * (r_value - 3)
        + growth_slope * growth
        + p["hidden"][:, None]
    )
    counts = rng.poisson(np.where(observed, 10**log_rate * dt_hours, 0.0))
    flare_cells = np.repeat(np.flatnonzero(counts), counts.ravel()[counts.ravel() > 0])
    flare_flux = _flare_fluxes(rng, len(flare_cells))

    # Measurement: noise grows towards the limb, where extensive quantities are also underestimated.
    longitude = p["longitude0"][:, None] + np.arange(width) * dt_hours * _ROTATION_DEG_PER_HOUR
    mu = np.cos(np.radians(np.clip(longitude, -89, 89)))
    noise_scale = 1 + 1.5 * (1 - mu)
    log_limb = np.log10(0.85 + 0.15 * mu)
    x = log_flux - 22

    def measured(log_value, sd):
        return 10 ** (log_value + log_limb + rng.normal(0.0, sd, log_value.shape) * noise_scale)

    columns = {
        "USFLUX": measured(log_flux, 0.01),
        "TOTPOT": measured(log_energy, 0.04),
        **{
            name: measured(
                offset + flux_slope * x + shear_slope * shear + rng.normal(0, region_sd, (n, 1)), sd
            )
            for name, (offset, flux_slope, shear_slope, region_sd, sd) in _KEYWORD_MODEL.items()
        },
        "MEANALP": p["twist_sign"][:, None] * 10 ** (p["log_twist"][:, None] + 0.3 * shear)
        + rng.normal(0.0, 0.005, x.shape) * noise_scale,
        # Real R_VALUE is exactly 0 without a strong-gradient polarity inversion line.
        "R_VALUE": np.where(
            r_value > 0, np.clip(r_value + rng.normal(0.0, 0.08, x.shape) * noise_scale, 0, None), 0
        ),
    }
    values = np.stack([columns[name] for name in SHARP_KEYWORDS], axis=-1)

    # Observation gaps: runs of missing samples, clipped at the end of each region's row.
    starts = np.flatnonzero(observed & (rng.random((n, width)) < _GAP_STARTS_PER_HOUR * dt_hours))
    lengths = np.ceil(rng.exponential(_GAP_MEAN_HOURS, len(starts)) / dt_hours).astype(np.int64)
    ends = np.minimum(starts + lengths, (starts // width + 1) * width)
    marks = np.zeros(n * width + 1, dtype=np.int64)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    kept = (observed.ravel() & (np.cumsum(marks[:-1]) == 0)).reshape(n, width)

    # A few NaN samples: half lose the whole row, half a single keyword.
    nan_cells = np.flatnonzero(kept & (rng.random((n, width)) < _NAN_ROW_PROBABILITY))
    whole_row = rng.random(len(nan_cells)) < 0.5
    values = values.reshape(n * width, len(SHARP_KEYWORDS))
    values[nan_cells[whole_row]] = np.nan
    values[nan_cells[~whole_row], rng.integers(0, len(SHARP_KEYWORDS), int((~whole_row).sum()))] = np.nan

    kept_cells = np.flatnonzero(kept)
    return (
        values[kept_cells],
        longitude.ravel()[kept_cells],
        kept_cells // width,
        kept_cells % width,
        flare_cells // width,
        flare_cells % width,
        flare_flux,
    )


def simulate_sharp_dataset(
    n_regions: int,
    cadence_minutes: int = 60,
    seed: int = 0,
    start: str = "2011-01-01T00:00:00Z",
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate SHARP keyword series and a flare-event list (physics in the module docstring).

    Parameters
    ----------
    n_regions : int
        Number of active regions (HARPs), at least 1.
    cadence_minutes : int
        Sampling interval of the keyword series (SHARP's native cadence is 12 min).
    seed : int
        Seed of the random generator; the same seed gives identical tables.
    start : str
        ISO-8601 time of the first sample of the first region (UTC if no zone is given).
    progress : bool
        Show a progress bar over chunks of regions.

    Returns
    -------
    keywords : pandas.DataFrame
        ``timestamp`` (datetime64[ns, UTC]), ``HARPNUM`` (int64), the nine
        :data:`~astrodag.flares.sharp.SHARP_KEYWORDS` (float64, some NaN) and
        ``LON_FWT`` (float64, degrees), sorted by HARPNUM then timestamp, with gaps.
    events : pandas.DataFrame
        ``HARPNUM`` (nullable Int64, empty for unassigned flares),
        ``peak_time`` (datetime64[ns, UTC], whole minutes) and ``goes_class``
        (str), sorted by peak time.

    Raises
    ------
    ValueError
        If ``n_regions`` < 1 or ``cadence_minutes`` is not a positive integer.
    """
    if int(n_regions) != n_regions or n_regions < 1:
        raise ValueError(f"n_regions must be a positive integer, got {n_regions!r}")
    if int(cadence_minutes) != cadence_minutes or cadence_minutes < 1:
        raise ValueError(f"cadence_minutes must be a positive integer, got {cadence_minutes!r}")
    n_regions, cadence_minutes = int(n_regions), int(cadence_minutes)
    dt_hours = cadence_minutes / 60.0
    origin = pd.Timestamp(start)
    origin = (origin.tz_localize("UTC") if origin.tz is None else origin.tz_convert("UTC")).as_unit("ns")

    n_chunks = -(-n_regions // _CHUNK_REGIONS)
    region_seed, event_seed, *chunk_seeds = np.random.SeedSequence(seed).spawn(2 + n_chunks)
    regions = _draw_regions(np.random.default_rng(region_seed), n_regions, dt_hours)

    samples, longitudes, sample_region, sample_step, flare_region, flare_step, flare_flux = ([] for _ in range(7))
    chunks = tqdm(chunk_seeds, desc="simulating regions", unit="chunk", disable=not progress)
    for chunk, chunk_seed in enumerate(chunks):
        first = chunk * _CHUNK_REGIONS
        part = {name: column[first : first + _CHUNK_REGIONS] for name, column in regions.items()}
        values, longitude, s_region, s_step, f_region, f_step, f_flux = _simulate_chunk(
            np.random.default_rng(chunk_seed), part, dt_hours
        )
        samples.append(values)
        longitudes.append(longitude)
        sample_region.append(s_region + first)
        sample_step.append(s_step)
        flare_region.append(f_region + first)
        flare_step.append(f_step)
        flare_flux.append(f_flux)
    sample_region, flare_region = np.concatenate(sample_region), np.concatenate(flare_region)
    cadence_ns = cadence_minutes * 60 * 10**9
    sample_ns = (
        origin.value + (regions["start_step"][sample_region] + np.concatenate(sample_step)) * cadence_ns
    )

    keywords = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(sample_ns, utc=True).as_unit("ns"),
            "HARPNUM": regions["harpnum"][sample_region].astype(np.int64),
            **dict(zip(SHARP_KEYWORDS, np.concatenate(samples).T, strict=True)),
            LONGITUDE_COLUMN: np.concatenate(longitudes),
        }
    )

    rng = np.random.default_rng(event_seed)
    flux = np.concatenate(flare_flux)
    # A flare peaks in the interval after the sample whose state drove it: (t, t + cadence], whole minutes.
    offset_minutes = 1 + rng.integers(0, cadence_minutes, len(flux))
    peak_ns = (
        origin.value
        + (regions["start_step"][flare_region] + np.concatenate(flare_step)) * cadence_ns
        + offset_minutes * 60 * 10**9
    )
    # Flares from regions without a HARP: same size distribution, any minute of the period.
    n_unassigned = rng.poisson(_UNASSIGNED_FRACTION * len(flux))
    period_minutes = max(1, int((sample_ns.max() - origin.value) // (60 * 10**9)))
    unassigned_ns = origin.value + rng.integers(0, period_minutes, n_unassigned) * 60 * 10**9
    harpnum = np.concatenate([regions["harpnum"][flare_region].astype(float), np.full(n_unassigned, np.nan)])
    events = pd.DataFrame(
        {
            "HARPNUM": pd.array(harpnum, dtype="Int64"),
            "peak_time": pd.to_datetime(np.concatenate([peak_ns, unassigned_ns]), utc=True).as_unit("ns"),
            "goes_class": pd.array(
                goes_classes_from_flux(np.concatenate([flux, _flare_fluxes(rng, n_unassigned)])), dtype="str"
            ),
        }
    )
    events = events.sort_values(["peak_time", "HARPNUM"], kind="stable").reset_index(drop=True)
    log.info(
        "simulated %d regions, %d keyword samples, %d flares (%d unassigned)",
        n_regions,
        len(keywords),
        len(events),
        n_unassigned,
    )
    return keywords, events


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a table in the input format: CSV with ISO "...Z" times (via pyarrow, fast) or Parquet."""
    if path.suffix != ".csv":
        write_table(path, frame)
        return
    text_times = {
        name: np.datetime_as_string(frame[name].dt.tz_convert(None).to_numpy(), unit="s", timezone="UTC")
        for name in frame.columns
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype)
    }
    table = pa.Table.from_pandas(frame.assign(**text_times), preserve_index=False)
    # Unquoted like real exports (pyarrow quotes header names, so the header is written here).
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write((",".join(table.column_names) + "\n").encode())
        pa_csv.write_csv(table, handle, pa_csv.WriteOptions(include_header=False, quoting_style="none"))


def write_synthetic_dataset(
    keywords_path: str | Path,
    events_path: str | Path,
    n_regions: int,
    cadence_minutes: int = 60,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Simulate a data set and write the keyword and flare-event tables atomically.

    Parameters
    ----------
    keywords_path, events_path : str or Path
        Output files; ``.csv`` (times as ISO "...Z") or ``.parquet`` by suffix.
    n_regions, cadence_minutes, seed, progress
        As for :func:`simulate_sharp_dataset`.

    Returns
    -------
    dict
        Summary: regions, rows, rows_with_nan, period start and end, flares
        (total, unassigned, per class letter) and the fraction of regions with
        at least one >= C, >= M and >= M5 flare.
    """
    keywords_path, events_path = Path(keywords_path), Path(events_path)
    for path in (keywords_path, events_path):
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"{path}: unsupported table suffix {path.suffix!r} (use .csv or .parquet)")
    keywords, events = simulate_sharp_dataset(n_regions, cadence_minutes, seed, progress=progress)
    _write_table(keywords_path, keywords)
    _write_table(events_path, events)

    assigned = events[events["HARPNUM"].notna()]
    flux = assigned["goes_class"].map(goes_class_to_flux).to_numpy()
    summary = {
        "regions": int(keywords["HARPNUM"].nunique()),
        "rows": len(keywords),
        "rows_with_nan": int(keywords[list(SHARP_KEYWORDS)].isna().any(axis=1).sum()),
        "period_start": keywords["timestamp"].min().isoformat(),
        "period_end": keywords["timestamp"].max().isoformat(),
        "cadence_minutes": cadence_minutes,
        "seed": seed,
        "flares": len(events),
        "flares_unassigned": int(events["HARPNUM"].isna().sum()),
        "flares_by_class": {letter: int((events["goes_class"].str[0] == letter).sum()) for letter in "ABCMX"},
        **{
            f"fraction_regions_with_{name}": float(
                assigned.loc[flux >= threshold, "HARPNUM"].nunique() / max(n_regions, 1)
            )
            for name, threshold in FLARE_CLASS_THRESHOLDS.items()
        },
        "keywords_path": str(keywords_path),
        "events_path": str(events_path),
    }
    log.info("wrote synthetic SHARP data set: %s", summary)
    return summary
