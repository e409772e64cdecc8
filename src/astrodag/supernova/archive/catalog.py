"""The supernova catalogue, file-safe names, and checks of config values shared by the archive settings.

The catalogue (``resources/supernovae.csv``) has one row per supernova with the columns
``sn_name, ra, dec, discovery_mjd, type, redshift, host``: ICRS degrees and the discovery date as a
Modified Julian Date. ``load_catalog`` checks every row and raises ``InputDataError`` naming the file,
the row and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from astrodag.errors import InputDataError
from astrodag.io import read_table, row_label

CATALOG_COLUMNS = ("sn_name", "ra", "dec", "discovery_mjd", "type", "redshift", "host")
NUMBER_COLUMNS = {"ra": float, "dec": float, "discovery_mjd": float, "redshift": float}

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A file-name-safe form of ``name``: each run of characters outside ``[A-Za-z0-9_.-]`` becomes ``_``.

    >>> safe_name("SN 2011fe")
    'SN_2011fe'
    """
    safe = _UNSAFE.sub("_", str(name).strip()).strip("_")
    if not safe or safe in (".", ".."):
        raise ValueError(f"{name!r} has no file-name-safe form")
    return safe


def load_catalog(path: str | Path) -> pd.DataFrame:
    """Read and check the supernova catalogue.

    Parameters
    ----------
    path : str or Path
        CSV file with the columns ``CATALOG_COLUMNS``.

    Returns
    -------
    pandas.DataFrame
        One row per supernova, in file order, with ``ra``, ``dec``, ``discovery_mjd`` and ``redshift`` as
        floats (``redshift`` may be NaN) and a ``safe_name`` column added.

    Raises
    ------
    InputDataError
        If the file is missing or unreadable, a column is missing, a value is out of range, or two
        supernovae share a name (or a safe name).
    """
    path = Path(path)
    # Text as written (blank cells stay ""), so that a bad value is reported as it stands in the file.
    frame = read_table(path, CATALOG_COLUMNS, {**{column: str for column in CATALOG_COLUMNS}, **NUMBER_COLUMNS},
                       not_found="supernova catalogue not found", keep_default_na=False)
    if frame.empty:
        raise InputDataError(path, "the catalogue has no supernovae")
    frame = frame.loc[:, list(CATALOG_COLUMNS)].copy()
    for column in ("ra", "dec", "discovery_mjd"):  # redshift may be blank
        if frame[column].isna().any():
            raise InputDataError(path, f"{row_label(path, int(frame[column].isna().to_numpy().nonzero()[0][0]))}: "
                                       f"empty {column}")
    checks = (
        ("ra", (frame["ra"] < 0) | (frame["ra"] >= 360), "must be in [0, 360) degrees"),
        ("dec", frame["dec"].abs() > 90, "must be in [-90, 90] degrees"),
        ("discovery_mjd", ~frame["discovery_mjd"].between(15000.0, 100000.0), "is not a plausible MJD"),
    )
    for column, bad, problem in checks:
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise InputDataError(path, f"{row_label(path, row)}: {column} {frame[column].iloc[row]} {problem}")
    names = frame["sn_name"].str.strip()
    if (names == "").any():
        raise InputDataError(path, f"{row_label(path, int((names == '').to_numpy().nonzero()[0][0]))}: empty sn_name")
    frame["sn_name"] = names
    try:
        frame["safe_name"] = [safe_name(name) for name in names]
    except ValueError as error:
        raise InputDataError(path, str(error)) from error
    for column in ("sn_name", "safe_name"):
        duplicated = frame[column].duplicated(keep=False)
        if duplicated.any():
            clash = sorted(set(frame.loc[duplicated, "sn_name"]))
            raise InputDataError(path, f"{column} is not unique: {', '.join(clash)}")
    return frame.reset_index(drop=True)


def catalog_entry(catalog: pd.DataFrame, name: str, path: str | Path = "catalogue") -> pd.Series:
    """The catalogue row of the supernova ``name`` (its ``sn_name`` or its ``safe_name``)."""
    match = catalog[(catalog["sn_name"] == name) | (catalog["safe_name"] == name)]
    if match.empty:
        raise InputDataError(path, f"supernova {name!r} is not in the catalogue")
    return match.iloc[0]
