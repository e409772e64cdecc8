"""SHARP keyword tables and flare-event lists: formats, parsing and validation.

Two input files feed the flare-prediction track; real data and the synthetic
generator (:mod:`astrodag.flares.synthetic`) both come in these formats.

Keyword table (``.csv`` or ``.parquet``)
    One row per HARP and sample time. Columns ``timestamp`` (ISO-8601 UTC such
    as ``2012-03-07T00:00:00Z``, or a datetime column in Parquet; times without
    a zone are taken as UTC), ``HARPNUM`` (integer) and the nine keywords of
    :data:`SHARP_KEYWORDS` (floats, SHARP units). Optional: ``LON_FWT``, the
    SHARP keyword for the Stonyhurst longitude (degrees) of the region's
    flux-weighted centre, which the limb cut of the dataset needs (empty cells
    are NaN). Other columns are ignored.

Flare-event table (``.csv`` or ``.parquet``)
    One row per flare. Columns ``HARPNUM`` (empty for flares that were not
    assigned to an active region), ``peak_time`` (ISO-8601 UTC) and
    ``goes_class`` (``"C1.2"``, ``"M5.0"``, ``"X10"``, ...).

The readers return cleaned tables plus a report of what was read and what was
dropped, and raise :class:`~astrodag.errors.InputDataError` (naming the file)
for anything that would otherwise give wrong windows or labels downstream.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from astrodag.errors import InputDataError

log = logging.getLogger(__name__)

SHARP_KEYWORDS: tuple[str, ...] = (
    "TOTUSJH",  # total unsigned current helicity, G^2/m
    "TOTUSJZ",  # total unsigned vertical current, A
    "USFLUX",  # total unsigned flux, Mx
    "MEANALP",  # mean twist parameter alpha, 1/Mm
    "R_VALUE",  # log10 of the flux near strong-gradient polarity inversion lines, log10 Mx
    "TOTPOT",  # total photospheric magnetic free-energy density, erg/cm^3
    "SAVNCPP",  # sum of the net current per polarity, A
    "AREA_ACR",  # area of strong-field pixels, micro-hemispheres
    "ABSNJZH",  # absolute value of the net current helicity, G^2/m
)

# GOES 1-8 Angstrom peak flux (W/m^2) at which each class starts; "class >= X" means flux >= threshold.
FLARE_CLASS_THRESHOLDS: dict[str, float] = {"C": 1e-6, "M": 1e-5, "M5": 5e-5}

KEYWORD_COLUMNS: tuple[str, ...] = ("timestamp", "HARPNUM", *SHARP_KEYWORDS)
# Stonyhurst longitude of the flux-weighted centre (SHARP keyword), degrees; optional in a keyword table.
LONGITUDE_COLUMN = "LON_FWT"
EVENT_COLUMNS: tuple[str, ...] = ("HARPNUM", "peak_time", "goes_class")

# Decimal exponent of each GOES class letter: A1.0 = 1e-8 W/m^2 ... X1.0 = 1e-4 W/m^2.
_CLASS_EXPONENTS = {"A": -8, "B": -7, "C": -6, "M": -5, "X": -4}
_CLASS_PATTERN = re.compile(r"^([ABCMX])\s*(\d+(?:\.\d*)?|\.\d+)?$", re.IGNORECASE)


def goes_class_to_flux(text: str) -> float:
    """Convert a GOES class string to its 1-8 Angstrom peak flux in W/m^2.

    Parameters
    ----------
    text : str
        A class letter (A, B, C, M or X, any case) followed by an optional
        magnitude, e.g. ``"M2.3"``, ``" c1 "``, ``"X10"``, ``"X"`` (= X1.0).

    Returns
    -------
    float
        ``magnitude * 10**exponent(letter)``, e.g. 2.3e-5 for ``"M2.3"``.

    Raises
    ------
    ValueError
        If ``text`` is not a string of that form or its magnitude is zero.
    """
    match = _CLASS_PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a GOES class: {text!r} (expected e.g. 'C1.2', 'M5', 'X10')")
    letter, magnitude = match.group(1).upper(), match.group(2) or "1"
    if float(magnitude) <= 0:
        raise ValueError(f"not a GOES class: {text!r} (magnitude must be positive)")
    # Parse "2.3e-5" as one literal so "M2.3" gives exactly the float 2.3e-5.
    return float(f"{magnitude}e{_CLASS_EXPONENTS[letter]}")


def goes_classes_from_flux(flux) -> np.ndarray:
    """Vectorised :func:`flux_to_goes_class`: an array of class strings with one decimal."""
    flux = np.asarray(flux, dtype=np.float64)
    if not np.all(np.isfinite(flux) & (flux >= 5e-10)):
        bad = flux[~(np.isfinite(flux) & (flux >= 5e-10))][0]
        raise ValueError(f"cannot express flux {bad!r} W/m^2 as a GOES class (needs >= 5e-10)")
    letters = np.array(list(_CLASS_EXPONENTS))
    exponents = np.array(list(_CLASS_EXPONENTS.values()))
    level = np.clip(np.floor(np.log10(flux)).astype(int) - exponents[0], 0, len(letters) - 1)
    magnitude = np.round(flux / 10.0 ** exponents[level], 1)
    # 9.96e-6 rounds to "C10.0": carry into the next letter (X has no upper bound).
    carry = (magnitude >= 10.0) & (level < len(letters) - 1)
    level = np.where(carry, level + 1, level)
    magnitude = np.where(carry, np.round(flux / 10.0 ** exponents[level], 1), magnitude)
    return np.char.add(letters[level], np.char.mod("%.1f", magnitude))


def flux_to_goes_class(flux: float) -> str:
    """Convert a 1-8 Angstrom peak flux in W/m^2 to a GOES class string with one decimal.

    The inverse of :func:`goes_class_to_flux` to within the rounding of the
    magnitude: 2.34e-5 -> ``"M2.3"``, 1.5e-3 -> ``"X15.0"``, 9.97e-6 -> ``"M1.0"``.

    Raises
    ------
    ValueError
        If ``flux`` is not finite or below 5e-10 (``"A0.1"`` after rounding).
    """
    return str(goes_classes_from_flux([flux])[0])


def _row_label(path: Path, position: int) -> str:
    """Where row ``position`` (0-based, data rows) sits in the file, in the file's own terms."""
    if path.suffix == ".csv":
        return f"line {position + 2}"  # line 1 is the header
    return f"row {position + 1}"


def _read_table(
    path: Path, required: tuple[str, ...], string_columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read the ``required`` columns (and those of ``optional`` present) of a CSV or Parquet file.

    Every failure names the file. ``string_columns`` are read from CSV as text
    so that their own parsers can report the first bad value and its line.
    """
    if not path.is_file():
        raise InputDataError(path, "file not found")
    if path.suffix not in (".csv", ".parquet"):
        raise InputDataError(path, f"unsupported suffix {path.suffix!r} (use .csv or .parquet)")
    if path.stat().st_size == 0:
        raise InputDataError(path, "file is empty (0 bytes)")
    kind = "CSV" if path.suffix == ".csv" else "Parquet"
    try:
        # Check the header first, so extra columns are never parsed (nor can fail).
        if kind == "CSV":
            with open(path, newline="", encoding="utf-8-sig") as handle:
                columns = next(csv.reader(handle), [])
        else:
            columns = pq.read_schema(path).names
        missing = [name for name in required if name not in columns]
        wanted = [*required, *(name for name in optional if name in columns)]
        if not missing:
            if kind == "CSV":
                # pyarrow's reader is strict: a row with too few fields (a truncated file) is an error.
                types = {name: pa.string() if name in string_columns else pa.float64() for name in wanted}
                options = pa_csv.ConvertOptions(column_types=types, include_columns=wanted)
                table = pa_csv.read_csv(path, convert_options=options)
            else:
                table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError, ValueError, csv.Error) as exc:
        raise InputDataError(path, f"cannot read as {kind}: {exc}") from exc
    if missing:
        found = ", ".join(columns) or "none"
        raise InputDataError(path, f"missing column(s) {', '.join(missing)} (found: {found})")
    return table.to_pandas()


def _parse_times(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Parse a timestamp column to tz-aware UTC (ns); naive times are taken as UTC."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC")
    else:
        text = values.astype("str").str.strip()
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            first = bad[0]
            raise InputDataError(
                path,
                f"{len(bad)} unparseable '{column}' value(s); first {values.iloc[first]!r} "
                f"at {_row_label(path, first)} (expected ISO-8601 UTC such as 2012-03-07T00:00:00Z)",
            )
    missing = np.flatnonzero(parsed.isna().to_numpy())
    if len(missing):
        raise InputDataError(path, f"empty '{column}' at {_row_label(path, missing[0])}")
    return parsed.dt.as_unit("ns")


def _parse_harpnums(values: pd.Series, path: Path) -> pd.Series:
    """Parse HARPNUM to float64 (NaN where empty); anything but a whole number is an error."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.astype("float64")
        blank = numbers.isna()
    else:
        text = values.astype("str").str.strip()
        blank = text.isna() | (text == "")
        numbers = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    bad = np.flatnonzero(((numbers.isna() | (numbers % 1 != 0)) & ~blank).to_numpy())
    if len(bad):
        raise InputDataError(
            path, f"HARPNUM {values.iloc[bad[0]]!r} at {_row_label(path, bad[0])} is not an integer"
        )
    return numbers


def _parse_floats(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Parse a keyword column to float64; empty cells become NaN, text is an error."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    text = values.astype("str").str.strip()
    blank = text.isna() | (text == "")
    numbers = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    bad = np.flatnonzero(
        (numbers.isna() & ~blank & ~text.str.lower().isin(["nan", "inf", "-inf"])).to_numpy()
    )
    if len(bad):
        raise InputDataError(
            path, f"'{column}' value {values.iloc[bad[0]]!r} at {_row_label(path, bad[0])} is not a number"
        )
    return numbers


def read_keyword_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read and validate a SHARP keyword table.

    Rows with a NaN or infinite value in any keyword are dropped (real SHARP
    series have such samples); the drop is counted in the report and logged at
    WARNING. A NaN ``LON_FWT`` does not drop a row. Everything else that is
    wrong is an error.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` or ``.parquet`` file in the keyword-table format (module docstring).

    Returns
    -------
    table : pandas.DataFrame
        Columns ``timestamp`` (datetime64[ns, UTC]), ``HARPNUM`` (int64), the
        keywords (float64) and, when the file has it, ``LON_FWT`` (float64),
        sorted by HARPNUM then timestamp, with a fresh index.
    report : dict
        ``rows_read``, ``rows_dropped_nan``, ``rows_kept``, ``regions``.

    Raises
    ------
    InputDataError
        File missing, unreadable or corrupt, columns missing (all are named),
        timestamps or HARPNUMs unparseable or empty (first bad value and its
        line), duplicated (HARPNUM, timestamp) pairs (count and first example),
        or no rows (before or after the NaN drop).
    """
    path = Path(path)
    raw = _read_table(path, KEYWORD_COLUMNS, string_columns=("timestamp", "HARPNUM"), optional=(LONGITUDE_COLUMN,))
    if raw.empty:
        raise InputDataError(path, "table has no data rows")
    harpnum = _parse_harpnums(raw["HARPNUM"], path)
    empty = np.flatnonzero(harpnum.isna().to_numpy())
    if len(empty):
        raise InputDataError(path, f"empty HARPNUM at {_row_label(path, empty[0])}")
    table = pd.DataFrame(
        {
            "timestamp": _parse_times(raw["timestamp"], path, "timestamp"),
            "HARPNUM": harpnum.astype("int64"),
            **{name: _parse_floats(raw[name], path, name) for name in SHARP_KEYWORDS},
        }
    )
    if LONGITUDE_COLUMN in raw.columns:
        table[LONGITUDE_COLUMN] = _parse_floats(raw[LONGITUDE_COLUMN], path, LONGITUDE_COLUMN)
    extra = table.duplicated(["HARPNUM", "timestamp"], keep="first").to_numpy()
    if extra.any():
        first = np.flatnonzero(extra)[0]
        harp, time = table["HARPNUM"].iat[first], table["timestamp"].iat[first]
        same = np.flatnonzero(((table["HARPNUM"] == harp) & (table["timestamp"] == time)).to_numpy())
        raise InputDataError(
            path,
            f"{int(extra.sum())} duplicated (HARPNUM, timestamp) row(s); first: HARPNUM {harp} at "
            f"{time.isoformat()} ({', '.join(_row_label(path, i) for i in same)})",
        )
    finite = np.isfinite(table[list(SHARP_KEYWORDS)].to_numpy()).all(axis=1)
    n_dropped = int((~finite).sum())
    if n_dropped:
        log.warning("%s: dropped %d row(s) with a NaN or infinite keyword value", path, n_dropped)
        table = table[finite]
    if table.empty:
        raise InputDataError(path, "no rows left after dropping rows with NaN or infinite keywords")
    table = table.sort_values(["HARPNUM", "timestamp"], kind="stable").reset_index(drop=True)
    report = {
        "rows_read": len(raw),
        "rows_dropped_nan": n_dropped,
        "rows_kept": len(table),
        "regions": int(table["HARPNUM"].nunique()),
    }
    log.info(
        "%s: %d rows of %d regions (%d dropped for NaN/inf)", path, len(table), report["regions"], n_dropped
    )
    return table, report


def read_flare_events(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read and validate a flare-event table.

    Flares whose HARPNUM is empty (not assigned to an active region) are
    counted and dropped: they cannot label any region's windows. A file with a
    header and no rows is valid (a quiet period) and gives an empty table.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` or ``.parquet`` file in the flare-event format (module docstring).

    Returns
    -------
    events : pandas.DataFrame
        Columns ``HARPNUM`` (int64), ``peak_time`` (datetime64[ns, UTC]),
        ``goes_class`` (str, upper case, stripped) and ``peak_flux`` (float64,
        W/m^2), sorted by HARPNUM then peak_time.
    report : dict
        ``rows_read``, ``rows_dropped_no_region``, ``rows_kept``.

    Raises
    ------
    InputDataError
        File missing, unreadable or corrupt, columns missing, a peak time
        unparseable, a HARPNUM not an integer, or a class string that is not a
        GOES class (line and value named).
    """
    path = Path(path)
    raw = _read_table(path, EVENT_COLUMNS, string_columns=EVENT_COLUMNS)
    harpnum = _parse_harpnums(raw["HARPNUM"], path)
    assigned = harpnum.notna().to_numpy()
    classes = raw["goes_class"].astype("str").str.strip().str.upper().fillna("")
    unique_flux = {}
    for text in classes[assigned].unique():
        try:
            unique_flux[text] = goes_class_to_flux(text)
        except ValueError:
            first = int(np.flatnonzero((classes == text).to_numpy() & assigned)[0])
            raise InputDataError(
                path, f"unknown GOES class {raw['goes_class'].iloc[first]!r} at {_row_label(path, first)}"
            ) from None
    events = pd.DataFrame(
        {
            "HARPNUM": harpnum[assigned].astype("int64"),
            "peak_time": _parse_times(raw["peak_time"], path, "peak_time")[assigned],
            "goes_class": classes[assigned].astype("str"),
        }
    )
    events["peak_flux"] = events["goes_class"].map(unique_flux).astype("float64")
    events = events.sort_values(["HARPNUM", "peak_time"], kind="stable").reset_index(drop=True)
    n_dropped = int((~assigned).sum())
    if n_dropped:
        log.info("%s: dropped %d flare(s) not assigned to a region", path, n_dropped)
    if events.empty:
        log.warning("%s: no flares assigned to a region; every label will be 0", path)
    report = {"rows_read": len(raw), "rows_dropped_no_region": n_dropped, "rows_kept": len(events)}
    return events, report
