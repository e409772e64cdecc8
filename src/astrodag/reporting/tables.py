"""Markdown tables and the text form of estimates with their uncertainty."""

from __future__ import annotations

import math

import pandas as pd

MISSING = "n/a"


def to_markdown(frame: pd.DataFrame, float_format: str = ".3f", index: bool = False) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown table.

    Parameters
    ----------
    frame : DataFrame
        Table to render.
    float_format : str, default ".3f"
        Format spec applied to float columns (tabulate's ``floatfmt``).
    index : bool, default False
        Whether to include the index as the first column.

    Returns
    -------
    str
        Markdown table; missing values (NaN, None) are shown as "n/a".
    """
    # tabulate prints float NaN as "nan"; only None is treated as missing.
    cleaned = frame.astype(object).where(frame.notna(), None)
    return cleaned.to_markdown(index=index, floatfmt=float_format, missingval=MISSING)


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(float(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def format_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """Format an estimate with its interval, e.g. ``"0.712 [0.650, 0.770]"``.

    Parameters
    ----------
    mean, low, high : float
        Estimate and interval bounds; NaN or None is shown as "n/a".
    digits : int, default 3
        Decimal places.

    Returns
    -------
    str
        Just "n/a" when the estimate itself is missing.
    """
    if _number(mean, digits) == MISSING:
        return MISSING
    return f"{_number(mean, digits)} [{_number(low, digits)}, {_number(high, digits)}]"


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """Format a mean and standard deviation, e.g. ``"0.712 ± 0.031"``.

    Parameters
    ----------
    mean, std : float
        NaN or None is shown as "n/a".
    digits : int, default 3
        Decimal places.

    Returns
    -------
    str
        Just "n/a" when the mean itself is missing.
    """
    if _number(mean, digits) == MISSING:
        return MISSING
    return f"{_number(mean, digits)} ± {_number(std, digits)}"


def format_pvalue(pvalue: float, min_pvalue: float) -> str:
    """Format a p-value with the smallest one its test can reach, e.g. ``"0.0312 (min 0.0001)"``.

    A test with few resamples or pairs cannot give a small p-value whatever the data: an exact test
    over 5 seeds stops at 0.0625, a bootstrap of 9999 resamples at 0.0001. Both are shown with three
    significant digits; a missing p-value gives "n/a".
    """
    if _number(pvalue, 3) == MISSING:
        return MISSING
    minimum = "n/a" if _number(min_pvalue, 3) == MISSING else f"{float(min_pvalue):.3g}"
    return f"{float(pvalue):.3g} (min {minimum})"
