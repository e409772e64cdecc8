"""Files: atomic writes (a crash or a killed job never leaves a half-written output) and checked table reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrodag.errors import InputDataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory so that the final
    ``os.replace`` is atomic on POSIX file systems. On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_digest(path: str | Path, block: int = 1 << 20, digest=None) -> str:
    """SHA-256 of a file (streamed), to tie a model to the exact data it was trained on.

    Pass a ``hashlib`` object as ``digest`` to fold several files into one hash.
    """
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (NumPy scalars and arrays allowed)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(path: str | Path, frame) -> None:
    """Write a pandas DataFrame atomically as CSV or Parquet, chosen by the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            raise ValueError(f"{path}: unsupported table suffix {path.suffix!r} (use .csv or .parquet)")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save an array as ``.npy`` atomically (memory-mappable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def save_figure(path: str | Path, figure) -> None:
    """Save a matplotlib figure atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip("."), bbox_inches="tight", dpi=120)


TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".parquet": None}


def _kind(dtype) -> str:
    """``str``, ``float``, ``int`` or ``bool`` for a dtype given as a type, a NumPy dtype or its name."""
    if dtype is str or dtype == "str":
        return "str"
    kind = np.dtype(dtype).kind
    if kind in "fiub":
        return {"f": "float", "i": "int", "u": "int", "b": "bool"}[kind]
    raise ValueError(f"unsupported table dtype {dtype!r} (use str, float, int or bool)")


def row_label(path: str | Path, position: int) -> str:
    """Row ``position`` (0-based, data rows) in words; CSV and TSV also give the file line (header = line 1)."""
    if Path(path).suffix == ".parquet":
        return f"row {position + 1}"
    return f"row {position + 1} (line {position + 2})"


def _shown(value: Any) -> str:
    """A cell as written in a message: ``'abc'``, ``7.5``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _convert(values: pd.Series, kind: str, path: Path, column: str) -> pd.Series:
    """``values`` as ``kind``; the first value that is not one raises ``InputDataError`` naming row and column."""
    if kind == "str":
        return values if values.dtype == object else values.astype(str)
    if kind == "bool":
        if pd.api.types.is_bool_dtype(values.dtype):
            return values
        words = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
        text = values.astype(str).str.strip().str.lower()
        bad = ~text.isin(list(words))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputDataError(path, f"{row_label(path, row)}, column {column!r}: "
                                       f"{_shown(values.iloc[row])} is not true or "
                                       "false")
        return text.map(words).astype(bool)
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        text = values.astype(str).str.strip()
        blank = values.isna() | (text == "")
        numbers = pd.to_numeric(text.where(~blank), errors="coerce")
        bad = numbers.isna() & ~blank
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputDataError(path, f"{row_label(path, row)}, column {column!r}: "
                                       f"{_shown(values.iloc[row])} is not a number")
        values = numbers
    if kind == "float":
        return values.astype(float)
    whole = values.notna() & np.isfinite(values.astype(float)) & (values.astype(float) % 1 == 0)
    if not whole.all():
        row = int(np.flatnonzero(~whole.to_numpy())[0])
        value = values.iloc[row]
        problem = "is empty" if pd.isna(value) else f"{_shown(value)} is not an integer"
        raise InputDataError(path, f"{row_label(path, row)}, column {column!r}: {problem}")
    return values.astype(np.int64)


def read_table(path: str | Path, required_columns: Sequence[str] = (), dtypes: Mapping[str, Any] | None = None, *,
               only_required: bool = False, not_found: str = "file not found", **read_options) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table (by suffix) and check its columns and values.

    Every failure is an ``InputDataError`` naming the file: missing or empty file, an unreadable
    table, the missing columns (with those it has), and the first value that does not fit its
    dtype with its row and column, e.g. ``runs.csv: row 16 (line 17), column 'mjd': 'abc' is not
    a number``.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.tsv`` or ``.parquet``.
    required_columns : sequence of str
        Columns the table must have.
    dtypes : mapping, optional
        Column -> ``str``, ``float``, ``int`` or ``bool`` (types, NumPy dtypes or their names).
        Text columns are read as written (``"007"`` stays ``"007"``); numbers may be blank (NaN)
        except in ``int`` columns; ``bool`` takes true/false/1/0 in any case. Columns not in
        ``dtypes`` keep the type the reader infers; listed columns absent from the file are skipped
        (list them in ``required_columns`` too to require them).
    only_required : bool
        Read only ``required_columns`` and the ``dtypes`` columns (others are never parsed, so
        they cannot fail).
    not_found : str
        The problem when the file does not exist (say which stage writes it, say).
    **read_options
        Passed to ``pandas.read_csv`` (``comment``, ``keep_default_na``, ...) or ``pandas.read_parquet``.

    Returns
    -------
    pandas.DataFrame
    """
    path = Path(path)
    dtypes = {column: _kind(dtype) for column, dtype in (dtypes or {}).items()}
    if path.suffix not in TABLE_SEPARATORS:
        raise InputDataError(path, f"unsupported suffix {path.suffix!r} (use {', '.join(TABLE_SEPARATORS)})")
    if not path.is_file():
        raise InputDataError(path, not_found)
    if path.stat().st_size == 0:
        raise InputDataError(path, "file is empty (0 bytes)")
    wanted = list(dict.fromkeys([*required_columns, *dtypes])) if only_required else None
    if path.suffix == ".parquet":
        kind = "Parquet"
        try:
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
            missing = [column for column in required_columns if column not in columns]
            frame = None if missing else pd.read_parquet(
                path, columns=[c for c in wanted if c in columns] if wanted else None, **read_options)
        except (OSError, ValueError, ImportError) as error:
            raise InputDataError(path, f"cannot read as {kind}: {error}") from error
    else:
        kind = "CSV" if path.suffix == ".csv" else "TSV"
        sep = TABLE_SEPARATORS[path.suffix]
        header_options = {k: v for k, v in read_options.items() if k in ("comment", "encoding")}
        try:
            # The header first, so that a missing column is named before any value is parsed.
            columns = list(pd.read_csv(path, sep=sep, nrows=0, **header_options).columns)
            missing = [column for column in required_columns if column not in columns]
            text = {column: str for column, kind_ in dtypes.items() if kind_ == "str" and column in columns}
            frame = None if missing else pd.read_csv(
                path, sep=sep, usecols=[c for c in wanted if c in columns] if wanted else None, dtype=text or None,
                **read_options)
        except pd.errors.EmptyDataError as error:
            raise InputDataError(path, f"cannot read as {kind}: no header line ({error})") from error
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
            raise InputDataError(path, f"cannot read as {kind}: {error}") from error
    if missing:
        raise InputDataError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
    for column, kind_ in dtypes.items():
        if column in frame.columns:
            frame[column] = _convert(frame[column], kind_, path, column)
    return frame
