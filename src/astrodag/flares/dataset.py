"""Windows, labels, region-wise splits and dataset files for flare prediction.

A sample is a window of ``window_steps`` consecutive SHARP keyword samples of
one region (HARP), one cadence apart. Its labels say whether that region
produces a flare of GOES class >= C, >= M or >= M5 with its peak in
``(end_time, end_time + horizon]`` for horizons of 24, 48 and 72 h.

Choices worth knowing:

* Each region's series is resampled to the cadence first
  (:func:`resample_to_cadence`): every grid time (a whole multiple of the
  cadence since 1970, e.g. every full hour) takes the keyword record nearest
  to it within a tolerance, so SHARP's native 12-min series (whose TAI
  record times sit 37 s off the UTC hour) give hourly windows. A grid time
  without a record within the tolerance is a gap.
* No window spans a gap: a missing sample, or a sample dropped on ingestion
  for a NaN keyword, ends one run of consecutive samples and starts another.
* A label's future starts at the time of the record that filled the
  window's last slot, so a flare seen by no input sample is never both
  input and label.
* With a longitude limit, records of a region farther than that from the
  central meridian (``|LON_FWT|``) are dropped before resampling: keywords
  are foreshortened and noisy towards the limb.
* Every window carries its region's first and last observed record
  (``region_start``, ``region_end``). A window whose horizon runs past
  ``region_end`` cannot know the region's later flares (it has crossed the
  west limb, or decayed); training drops such windows per horizon
  (:func:`horizon_observed`) unless told to keep them.
* Splits are by region, so windows of one region (which overlap and are
  strongly correlated) never sit in two splits. The dataset holds no split:
  each experiment draws its own (:func:`experiment_splits`), so the seeds of
  a target test on different regions. A random region split leaves train
  and test regions on the disk at the same time (their flares share solar
  conditions); the ``time`` method gives the earliest regions to training,
  then validation, then test instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrodag.errors import InputDataError
from astrodag.flares.sharp import (
    FLARE_CLASS_THRESHOLDS,
    LONGITUDE_COLUMN,
    SHARP_KEYWORDS,
    goes_class_to_flux,
    read_flare_events,
    read_keyword_table,
)
from astrodag.io import atomic_path, read_table, save_npy, write_json

log = logging.getLogger(__name__)

LABEL_COLUMN = "label_{flare_class}_{window_hours}h"
# Columns of a written window index besides the labels (``row``: the window's position in the features).
INDEX_COLUMNS = ("row", "HARPNUM", "end_time", "region_start", "region_end")
_LABEL_PATTERN = re.compile(r"^label_(?P<flare_class>.+)_(?P<window_hours>[0-9.]+)h$")
DEFAULT_SPLIT_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
SPLIT_METHODS = ("region", "time")


def label_column(flare_class: str, window_hours: float) -> str:
    """Name of the label column for flares of class >= ``flare_class`` within ``window_hours``.

    Raises
    ------
    ValueError
        If the class is not a key of ``FLARE_CLASS_THRESHOLDS`` or the hours are not positive.
    """
    if flare_class not in FLARE_CLASS_THRESHOLDS:
        raise ValueError(
            f"unknown flare class {flare_class!r} (choose from {', '.join(FLARE_CLASS_THRESHOLDS)})"
        )
    if not np.isfinite(window_hours) or window_hours <= 0:
        raise ValueError(f"window hours must be positive, got {window_hours!r}")
    return LABEL_COLUMN.format(flare_class=flare_class, window_hours=f"{window_hours:g}")


def _as_ns(times: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch of a tz-aware datetime column."""
    return pd.DatetimeIndex(times).tz_convert("UTC").as_unit("ns").asi8


def _event_fluxes(events: pd.DataFrame) -> np.ndarray:
    """Peak flux per event: the ``peak_flux`` column, else parsed from ``goes_class``."""
    if "peak_flux" in events.columns:
        return events["peak_flux"].to_numpy(np.float64)
    return np.array([goes_class_to_flux(text) for text in events["goes_class"]], dtype=np.float64)


def resample_to_cadence(keywords: pd.DataFrame, cadence_minutes: float, tolerance_minutes: float) -> pd.DataFrame:
    """Put each region's keyword records on a regular time grid, nearest record to each grid time.

    The grid holds the whole multiples of the cadence since 1970-01-01 UTC
    (every full hour for 60 min) from a region's first record to its last,
    each widened by the tolerance. Each grid time takes the record nearest to
    it (the earlier one on a tie) if that lies within ``tolerance_minutes``;
    grid times without one are left out, so they are gaps. As the tolerance
    is under half the cadence, no record fills two grid times.

    Parameters
    ----------
    keywords : pandas.DataFrame
        ``timestamp`` (tz-aware), ``HARPNUM`` and any value columns.
    cadence_minutes : float
        Spacing of the grid.
    tolerance_minutes : float
        Largest distance between a grid time and the record that fills it,
        at least 0 and under half the cadence.

    Returns
    -------
    pandas.DataFrame
        One row per filled grid time, sorted by HARPNUM then time:
        ``timestamp`` (the grid time, UTC), ``record_time`` (the record's own
        time), ``HARPNUM`` and the other columns of the record.

    Raises
    ------
    ValueError
        If the cadence is not positive or the tolerance is outside [0, cadence / 2).
    """
    if not cadence_minutes > 0:
        raise ValueError(f"cadence_minutes must be positive, got {cadence_minutes!r}")
    if not 0 <= 2 * tolerance_minutes < cadence_minutes:
        raise ValueError(
            f"tolerance_minutes must be at least 0 and under half the cadence ({cadence_minutes} min), "
            f"got {tolerance_minutes!r}"
        )
    cadence_ns, tolerance_ns = round(cadence_minutes * 60e9), round(tolerance_minutes * 60e9)
    records = keywords.sort_values(["HARPNUM", "timestamp"], kind="stable").rename(columns={"timestamp": "record_time"})
    records["record_time"] = pd.DatetimeIndex(records["record_time"]).tz_convert("UTC").as_unit("ns")
    record_ns = _as_ns(records["record_time"])
    regions, first, counts = np.unique(records["HARPNUM"].to_numpy(np.int64), return_index=True, return_counts=True)
    first_slot = -((tolerance_ns - record_ns[first]) // cadence_ns)  # ceil((t_first - tolerance) / cadence)
    last_slot = (record_ns[first + counts - 1] + tolerance_ns) // cadence_ns
    n_slots = np.maximum(last_slot - first_slot + 1, 0)
    offsets = np.arange(n_slots.sum()) - np.repeat(np.cumsum(n_slots) - n_slots, n_slots)
    grid = pd.DataFrame(
        {
            "timestamp": pd.to_datetime((np.repeat(first_slot, n_slots) + offsets) * cadence_ns, utc=True).as_unit(
                "ns"
            ),
            "HARPNUM": np.repeat(regions, n_slots),
        }
    )
    filled = pd.merge_asof(
        grid.sort_values("timestamp", kind="stable"),
        records.sort_values("record_time", kind="stable"),
        left_on="timestamp",
        right_on="record_time",
        by="HARPNUM",
        direction="nearest",
        tolerance=pd.Timedelta(tolerance_ns, unit="ns"),
    )
    filled = filled[filled["record_time"].notna()]
    filled = filled.sort_values(["HARPNUM", "timestamp"], kind="stable").reset_index(drop=True)
    log.info(
        "resampled %d records of %d regions to %d samples at a %g-min cadence (%d grid times within %g min "
        "of none)", len(records), len(regions), len(filled), cadence_minutes, len(grid) - len(filled),
        tolerance_minutes,
    )
    return filled


def build_windows(
    keywords: pd.DataFrame,
    events: pd.DataFrame,
    window_steps: int = 10,
    cadence_minutes: float = 60,
    stride: int = 1,
    horizons_hours=(24, 48, 72),
    flare_classes=("C", "M", "M5"),
    progress: bool = False,
    *,
    tolerance_minutes: float = 6.0,
    max_longitude: float | None = None,
    source: str | Path = "keyword table",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cut keyword series into windows and label each with the flares that follow it.

    Parameters
    ----------
    keywords : pandas.DataFrame
        A keyword table as returned by :func:`~astrodag.flares.sharp.read_keyword_table`.
        Rows with a non-finite keyword are skipped (they break windows). The
        records need not be on the cadence: they are resampled to it
        (:func:`resample_to_cadence`).
    events : pandas.DataFrame
        Flares with ``HARPNUM``, ``peak_time`` and ``peak_flux`` (or ``goes_class``),
        as returned by :func:`~astrodag.flares.sharp.read_flare_events`. Flares
        without a HARPNUM or of regions without keyword samples are ignored.
    window_steps : int
        Samples per window.
    cadence_minutes : float
        Spacing of consecutive samples in a window (of the resampling grid).
    stride : int
        Step, in samples, between consecutive window ends within a run of
        consecutive samples; the first window of each run ends at its
        ``window_steps``-th sample.
    horizons_hours : sequence of float
        Prediction horizons.
    flare_classes : sequence of str
        Keys of ``FLARE_CLASS_THRESHOLDS``.
    progress : bool
        Show a progress bar over the regions while labelling.
    tolerance_minutes : float
        Largest distance between a grid time and the record that fills it,
        in [0, cadence / 2).
    max_longitude : float, optional
        Keep only records with ``|LON_FWT|`` below this (degrees); records
        without a finite longitude are dropped too. None keeps every record.
    source : str or Path
        Named in the error when ``max_longitude`` is set but the keywords
        have no ``LON_FWT`` column.

    Returns
    -------
    features : numpy.ndarray
        float32 array (N, window_steps, 9), keywords in ``SHARP_KEYWORDS`` order.
    index : pandas.DataFrame
        One row per window: ``HARPNUM`` (int64), ``end_time`` (grid time of
        the last sample, UTC), ``region_start`` and ``region_end`` (UTC times
        of the region's first and last record with finite keywords, before
        the longitude cut) and one uint8 column per (class, horizon), named by
        :func:`label_column`, in class-major order.

    Raises
    ------
    InputDataError
        If ``max_longitude`` is set and the keywords have no ``LON_FWT`` column.

    Notes
    -----
    A label counts the flares peaking after the record that filled the
    window's last slot and at most the horizon after ``end_time``. Windows
    whose horizon runs past ``region_end`` are kept here, labelled with the
    flares that were observed; :func:`horizon_observed` tells them apart.
    """
    if int(window_steps) != window_steps or window_steps < 1:
        raise ValueError(f"window_steps must be a positive integer, got {window_steps!r}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if not cadence_minutes > 0:
        raise ValueError(f"cadence_minutes must be positive, got {cadence_minutes!r}")
    if not len(horizons_hours) or not len(flare_classes):
        raise ValueError("need at least one horizon and one flare class")
    columns = [label_column(flare_class, hours) for flare_class in flare_classes for hours in horizons_hours]
    if len(set(columns)) != len(columns):
        raise ValueError(f"repeated flare class or horizon: {flare_classes!r}, {horizons_hours!r}")

    finite = np.isfinite(keywords[list(SHARP_KEYWORDS)].to_numpy(np.float64)).all(axis=1)
    if not finite.all():
        log.info("skipping %d keyword rows with non-finite values", int((~finite).sum()))
    keywords = keywords[finite]
    observed = keywords.groupby("HARPNUM")["timestamp"].agg(["min", "max"])
    if max_longitude is not None:
        if LONGITUDE_COLUMN not in keywords.columns:
            raise InputDataError(
                source,
                f"no {LONGITUDE_COLUMN} column for the longitude cut at {max_longitude:g} deg "
                "(add the SHARP keyword LON_FWT, or set flares.dataset.max_longitude: null)",
            )
        inside = (keywords[LONGITUDE_COLUMN].abs() < max_longitude).to_numpy()
        log.info("dropping %d of %d records at |%s| >= %g deg or without one", int((~inside).sum()),
                 len(inside), LONGITUDE_COLUMN, max_longitude)
        keywords = keywords[inside]
    samples = resample_to_cadence(keywords[["timestamp", "HARPNUM", *SHARP_KEYWORDS]], cadence_minutes,
                                  tolerance_minutes)
    values = samples[list(SHARP_KEYWORDS)].to_numpy(np.float32)
    harpnum = samples["HARPNUM"].to_numpy(np.int64)
    times = _as_ns(samples["timestamp"])
    record_times = _as_ns(samples["record_time"])

    # Runs of samples exactly one cadence apart within a region; position of each sample in its run.
    n = len(values)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (harpnum[1:] != harpnum[:-1]) | (np.diff(times) != round(cadence_minutes * 60e9))
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    position = np.arange(n) - run_start
    ends = np.flatnonzero((position >= window_steps - 1) & ((position - (window_steps - 1)) % stride == 0))
    features = values[ends[:, None] + np.arange(1 - window_steps, 1)]
    end_harpnum, end_ns, label_start_ns = harpnum[ends], times[ends], record_times[ends]

    labels = np.zeros((len(ends), len(columns)), dtype=np.uint8)
    events = events[events["HARPNUM"].notna()]
    event_harpnum = events["HARPNUM"].to_numpy(np.int64)
    event_ns = _as_ns(events["peak_time"])
    event_flux = _event_fluxes(events)
    order = np.lexsort((event_ns, event_harpnum))
    event_harpnum, event_ns, event_flux = event_harpnum[order], event_ns[order], event_flux[order]

    regions, first_window = np.unique(end_harpnum, return_index=True)
    last_window = np.append(first_window[1:], len(ends))
    first_event = np.searchsorted(event_harpnum, regions, side="left")
    last_event = np.searchsorted(event_harpnum, regions, side="right")
    horizons_ns = np.array([round(hours * 3600e9) for hours in horizons_hours], dtype=np.int64)
    thresholds = [FLARE_CLASS_THRESHOLDS[flare_class] for flare_class in flare_classes]
    with_flares = np.flatnonzero(last_event > first_event)
    for r in tqdm(with_flares, desc="labelling windows", unit="region", disable=not progress):
        windows = slice(first_window[r], last_window[r])
        t_end, t_start = end_ns[windows], label_start_ns[windows]
        flare_ns = event_ns[first_event[r] : last_event[r]]
        flare_flux = event_flux[first_event[r] : last_event[r]]
        for k, threshold in enumerate(thresholds):
            peaks = flare_ns[flare_flux >= threshold]
            if len(peaks):
                # Flares with last record < peak <= end + horizon: counts of peaks <= each bound, differenced.
                after_end = np.searchsorted(peaks, t_start, side="right")
                within = np.searchsorted(peaks, t_end[:, None] + horizons_ns[None, :], side="right")
                block = slice(k * len(horizons_ns), (k + 1) * len(horizons_ns))
                labels[windows, block] = within > after_end[:, None]

    index = pd.DataFrame(
        {
            "HARPNUM": end_harpnum,
            "end_time": pd.to_datetime(end_ns, utc=True).as_unit("ns"),
            "region_start": pd.DatetimeIndex(observed["min"].reindex(end_harpnum)).as_unit("ns"),
            "region_end": pd.DatetimeIndex(observed["max"].reindex(end_harpnum)).as_unit("ns"),
        }
    )
    for j, name in enumerate(columns):
        index[name] = labels[:, j]
    if len(ends) == 0:
        log.warning("no window of %d consecutive samples at a %g-min cadence", window_steps, cadence_minutes)
    log.info("built %d windows of %d samples from %d regions", len(ends), window_steps, len(regions))
    return features, index


def _region_strata(
    index: pd.DataFrame, regions_inverse: np.ndarray, n_regions: int, stratify_column
) -> np.ndarray:
    """Per-region stratum: max of ``stratify_column`` over its windows, else its most severe positive label.

    Without a column, a window's severity is 0 (no positive label) or 1 + the
    rank of the strongest flare class among its positive labels.
    """
    if stratify_column is not None:
        if stratify_column not in index.columns:
            raise ValueError(f"stratify_column {stratify_column!r} is not a column of the index")
        per_window = index[stratify_column].to_numpy(np.float64)
        if np.isnan(per_window).any():
            raise ValueError(f"stratify_column {stratify_column!r} has missing values")
    else:
        ranked = sorted(FLARE_CLASS_THRESHOLDS, key=FLARE_CLASS_THRESHOLDS.get)
        per_window = np.zeros(len(index))
        for name in index.columns:
            match = _LABEL_PATTERN.match(str(name))
            if match and match["flare_class"] in FLARE_CLASS_THRESHOLDS:
                level = 1 + ranked.index(match["flare_class"])
                per_window = np.maximum(per_window, np.where(index[name].to_numpy() > 0, level, 0))
    strata = np.full(n_regions, -np.inf)
    np.maximum.at(strata, regions_inverse, per_window)
    return strata


def _split_counts(n: int, ideal: np.ndarray, each_at_least_one: bool) -> np.ndarray:
    """Integer counts summing to ``n`` that follow ``ideal``, optionally at least one each."""
    floor = 1 if each_at_least_one else 0
    counts = np.maximum(np.floor(ideal).astype(np.int64), floor)
    while counts.sum() < n:
        counts[np.argmax(ideal - counts)] += 1
    while counts.sum() > n:
        reducible = np.flatnonzero(counts > floor)
        counts[reducible[np.argmin((ideal - counts)[reducible])]] -= 1
    return counts


def _split_shares(fractions: dict[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Split names and their shares, checked: positive and summing to 1 (None: the default fractions)."""
    fractions = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
    shares = np.array(list(fractions.values()), dtype=np.float64)
    if not len(shares) or not np.all(np.isfinite(shares) & (shares > 0)):
        raise ValueError(f"split fractions must be positive, got {fractions!r}")
    if not np.isclose(shares.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {fractions!r} (sum {shares.sum():g})")
    return np.array(list(fractions), dtype=str), shares


def assign_splits(
    index: pd.DataFrame,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    stratify_column: str | None = None,
) -> np.ndarray:
    """Assign each window to a split, by region and stratified by each region's strongest outcome.

    Regions are grouped into strata by their strongest outcome (the max of
    ``stratify_column`` over their windows, or by default the most severe
    flare class among their positive labels), from the most severe stratum to
    the least. Within a stratum the regions are shuffled and divided in
    proportion to ``fractions``; a stratum with at least as many regions as
    splits gives every split at least one, so rare positives reach all splits.
    Rounding is carried from stratum to stratum, so the split sizes follow
    ``fractions`` by region count.

    Parameters
    ----------
    index : pandas.DataFrame
        Window index with ``HARPNUM`` (and label columns for the default strata).
    fractions : dict of str to float, optional
        Split name -> fraction of regions; positive, summing to 1. None means
        train 0.6, validation 0.2, test 0.2.
    seed : int
        Seed of the shuffle; same seed, same index -> same splits.
    stratify_column : str, optional
        A discrete column (e.g. one label) to stratify on instead.

    Returns
    -------
    numpy.ndarray
        Split name per row of ``index`` (str array).

    Raises
    ------
    ValueError
        If the fractions are empty, not positive or do not sum to 1, or the
        stratify column is missing.
    """
    names, shares = _split_shares(fractions)
    regions, inverse = np.unique(index["HARPNUM"].to_numpy(np.int64), return_inverse=True)
    strata = _region_strata(index, inverse, len(regions), stratify_column)
    rng = np.random.default_rng(seed)
    region_split = np.zeros(len(regions), dtype=np.int64)
    carry = np.zeros(len(shares))
    for stratum in np.unique(strata)[::-1]:
        members = rng.permutation(np.flatnonzero(strata == stratum))
        ideal = len(members) * shares + carry
        counts = _split_counts(len(members), ideal, each_at_least_one=len(members) >= len(shares))
        carry = ideal - counts
        region_split[members] = np.repeat(np.arange(len(shares)), counts)
    if 0 < len(regions) < len(shares):
        log.warning("only %d regions for %d splits: some splits are empty", len(regions), len(shares))
    return names[region_split[inverse]]


def assign_time_splits(index: pd.DataFrame, fractions: dict[str, float] | None = None) -> np.ndarray:
    """Assign each window to a split by its region's first observation: earliest regions first.

    Regions are ordered by ``region_start`` (then HARPNUM) and cut in that
    order into the splits of ``fractions``, in their order (train, validation,
    test), by region count; with at least as many regions as splits each split
    gets one. Every region of a later split starts no earlier than every
    region of an earlier one, so train and test regions share the disk only
    when a region outlives the whole validation period. The split ignores
    the seed and is not stratified: a rare class may miss a split.

    Parameters
    ----------
    index : pandas.DataFrame
        Window index with ``HARPNUM`` and ``region_start``.
    fractions : dict of str to float, optional
        As for :func:`assign_splits`.

    Returns
    -------
    numpy.ndarray
        Split name per row of ``index`` (str array).
    """
    names, shares = _split_shares(fractions)
    if "region_start" not in index.columns:
        raise ValueError("a time split needs the index column 'region_start'")
    starts = index.groupby("HARPNUM")["region_start"].min().sort_index()
    order = np.lexsort((starts.index.to_numpy(np.int64), _as_ns(starts)))
    counts = _split_counts(len(starts), len(starts) * shares, each_at_least_one=len(starts) >= len(shares))
    region_split = pd.Series(names[np.repeat(np.arange(len(shares)), counts)], index=starts.index[order])
    return region_split.reindex(index["HARPNUM"].to_numpy()).to_numpy(dtype=str)


def experiment_splits(
    index: pd.DataFrame,
    seed: int,
    fractions: dict[str, float] | None = None,
    split_seed: int = 7,
    method: str = "region",
) -> np.ndarray:
    """The split of one experiment: by region with shuffle seed ``split_seed + seed``, or by time.

    With ``method="region"`` (:func:`assign_splits`) the experiments of one
    target but different seeds test on different regions, so the spread over
    seeds includes the choice of test regions (Guastavino et al. 2022); with
    ``"time"`` (:func:`assign_time_splits`) every seed gets the same split.

    Returns
    -------
    numpy.ndarray
        Split name per row of ``index`` (str array).
    """
    if method == "region":
        return assign_splits(index, fractions, split_seed + seed)
    if method == "time":
        return assign_time_splits(index, fractions)
    raise ValueError(f"unknown split method {method!r} (choose from {', '.join(SPLIT_METHODS)})")


def horizon_observed(index: pd.DataFrame, window_hours: float) -> np.ndarray:
    """Whether each window's horizon ends no later than its region's last record (``region_end``).

    A window whose horizon runs past the region's last record would count as
    negative the flares of a region that has crossed the west limb (a false
    negative on real data); training drops such windows.
    """
    horizon = pd.Timedelta(hours=window_hours)
    return (index["end_time"] + horizon <= index["region_end"]).to_numpy(dtype=bool)


def _label_columns(index: pd.DataFrame) -> list[str]:
    return [name for name in index.columns if _LABEL_PATTERN.match(str(name))]


def _label_hours(column: str) -> float:
    return float(_LABEL_PATTERN.match(column)["window_hours"])


def split_summary(index: pd.DataFrame, splits: np.ndarray, drop_unobserved_horizon: bool = True) -> dict:
    """Regions, windows and, per label column, the windows used and their positives in each split.

    The windows used for a label are those an experiment on it trains or is
    scored on: all of them, or with ``drop_unobserved_horizon`` those whose
    horizon the region's records cover (:func:`horizon_observed`).
    """
    labels = _label_columns(index)
    used = {
        column: horizon_observed(index, _label_hours(column)) if drop_unobserved_horizon else np.ones(len(index), bool)
        for column in labels
    }
    known = list(DEFAULT_SPLIT_FRACTIONS)
    # The usual splits in their usual order, then any others by name.
    names = sorted(set(splits), key=lambda name: (known.index(name) if name in known else len(known), name))
    summary = {}
    for name in names:
        part = splits == name
        summary[name] = {
            "regions": int(index.loc[part, "HARPNUM"].nunique()),
            "windows": int(part.sum()),
            "windows_used": {column: int((part & used[column]).sum()) for column in labels},
            "positives": {column: int(index.loc[part & used[column], column].sum()) for column in labels},
        }
    return summary


def write_dataset(
    features_path: str | Path,
    index_path: str | Path,
    summary_path: str | Path,
    features: np.ndarray,
    index: pd.DataFrame,
    extra: dict | None = None,
) -> dict:
    """Write the windows (.npy), their index (Parquet) and a summary (JSON), each atomically.

    Parameters
    ----------
    features_path, index_path, summary_path : str or Path
        Output files. The features are saved with ``np.save`` (memory-mappable).
    features : numpy.ndarray
        (N, T, 9) windows.
    index : pandas.DataFrame
        N rows with ``HARPNUM``, ``end_time``, ``region_start``,
        ``region_end`` and the label columns; a ``row`` column (position in
        ``features``) is added on writing.
    extra : dict, optional
        More entries for the summary (e.g. ingestion reports, splits).

    Returns
    -------
    dict
        The summary: windows, regions, shape, label columns, positives per
        label column and, per label column, the windows whose horizon the
        region's records cover and their positives.
    """
    if features.ndim != 3 or features.shape[2] != len(SHARP_KEYWORDS):
        raise ValueError(f"features must have shape (N, T, {len(SHARP_KEYWORDS)}), got {features.shape}")
    if len(features) != len(index):
        raise ValueError(f"{len(features)} feature windows but {len(index)} index rows")
    missing = [name for name in INDEX_COLUMNS[1:] if name not in index.columns]
    if missing:
        raise ValueError(f"the index lacks column(s) {', '.join(missing)} (see build_windows)")
    table = index.copy()
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    save_npy(features_path, features)
    with atomic_path(index_path) as tmp:
        table.to_parquet(tmp, index=False)

    labels = _label_columns(table)
    observed = {}
    for column in labels:
        covered = horizon_observed(table, _label_hours(column))
        observed[column] = {"windows": int(covered.sum()), "positives": int(table.loc[covered, column].sum())}
    summary = {
        "windows": len(table),
        "regions": int(table["HARPNUM"].nunique()),
        "window_steps": int(features.shape[1]),
        "features": list(SHARP_KEYWORDS),
        "label_columns": labels,
        "positives": {column: int(table[column].sum()) for column in labels},
        "horizon_observed": observed,
        "features_path": str(features_path),
        "index_path": str(index_path),
        **(extra or {}),
    }
    write_json(summary_path, summary)
    return summary


def load_dataset(
    features_path: str | Path, index_path: str | Path, mmap: bool = True
) -> tuple[np.ndarray, pd.DataFrame]:
    """Load windows and index written by :func:`write_dataset`, checking that they belong together.

    Parameters
    ----------
    features_path, index_path : str or Path
        The ``.npy`` and Parquet files.
    mmap : bool
        Memory-map the features read-only instead of reading them into memory.

    Returns
    -------
    features : numpy.ndarray
        (N, T, 9) windows.
    index : pandas.DataFrame
        N rows, ``row`` i describing ``features[i]``.

    Raises
    ------
    InputDataError
        A file is missing or unreadable, the features are not (N, T, 9), the
        index lacks a column, or N differs from the number of index rows.
    """
    features_path, index_path = Path(features_path), Path(index_path)
    if not features_path.is_file():
        raise InputDataError(features_path, "file not found")
    try:
        features = np.load(features_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputDataError(features_path, f"cannot read as .npy: {exc}") from exc
    if features.ndim != 3 or features.shape[2] != len(SHARP_KEYWORDS):
        raise InputDataError(
            features_path, f"features have shape {features.shape}, expected (N, T, {len(SHARP_KEYWORDS)})"
        )
    index = read_table(index_path, INDEX_COLUMNS)
    if len(features) != len(index):
        raise InputDataError(
            features_path, f"{len(features)} windows but the index {index_path.name} has {len(index)} rows"
        )
    if not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise InputDataError(index_path, "column 'row' is not 0..N-1 in order")
    return features, index


def prepare_dataset(
    keywords_path: str | Path,
    events_path: str | Path,
    features_path: str | Path,
    index_path: str | Path,
    summary_path: str | Path,
    window_steps: int,
    cadence_minutes: float,
    stride: int,
    horizons_hours,
    flare_classes,
    split_fractions: dict[str, float],
    split_seed: int,
    progress: bool = False,
    *,
    tolerance_minutes: float = 6.0,
    max_longitude: float | None = None,
    drop_unobserved_horizon: bool = True,
    split_method: str = "region",
    seeds=(0,),
) -> dict:
    """Read the keyword and flare tables, build labelled windows and write them with a summary.

    The files hold no split: each experiment draws its own
    (:func:`experiment_splits`). The summary shows, for each of ``seeds``
    (the experiments' seeds), the split that experiment will use.

    Returns
    -------
    dict
        The summary of :func:`write_dataset` plus ``splits_by_seed`` (per
        seed: the split's shuffle seed and :func:`split_summary`),
        ``ingestion`` (the two readers' reports, with the counted drops) and
        ``parameters``.
    """
    keywords, keyword_report = read_keyword_table(keywords_path)
    events, event_report = read_flare_events(events_path)
    features, index = build_windows(
        keywords, events, window_steps, cadence_minutes, stride, horizons_hours, flare_classes, progress,
        tolerance_minutes=tolerance_minutes, max_longitude=max_longitude, source=keywords_path,
    )
    splits_by_seed = {}
    for seed in seeds:
        splits = experiment_splits(index, seed, split_fractions, split_seed, split_method)
        splits_by_seed[str(seed)] = {
            "split_seed": split_seed + seed if split_method == "region" else None,
            **split_summary(index, splits, drop_unobserved_horizon),
        }
    extra = {
        "splits_by_seed": splits_by_seed,
        "ingestion": {"keywords": keyword_report, "events": event_report},
        "parameters": {
            "window_steps": window_steps,
            "cadence_minutes": cadence_minutes,
            "resample_tolerance_minutes": tolerance_minutes,
            "max_longitude": max_longitude,
            "drop_unobserved_horizon": drop_unobserved_horizon,
            "stride": stride,
            "horizons_hours": list(horizons_hours),
            "flare_classes": list(flare_classes),
            "split_method": split_method,
            "split_fractions": dict(split_fractions),
            "split_seed": split_seed,
        },
    }
    summary = write_dataset(features_path, index_path, summary_path, features, index, extra=extra)
    log.info("wrote %d windows of %d regions", len(features), summary["regions"])
    return summary
