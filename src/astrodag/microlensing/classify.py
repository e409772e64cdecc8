"""Classify real photometry (OGLE, MOA, KMTNet, ...) with a trained cadence model.

A photometry file is put on the model's time grid: observations are binned
onto the grid's epochs (inverse-variance weighted mean per epoch), epochs
without data are masked, exactly like a cadence mask in training. When a file
spans more time than the grid, its most recent part is used, so the
probability at the last epoch is the classification "now".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from astrodag.errors import InputDataError
from astrodag.io import write_table
from astrodag.microlensing.dataset import Normalisation, causal_features
from astrodag.microlensing.experiment import binary_probability, load_cadence_model
from astrodag.training.bundle import read_sidecar
from astrodag.training.seeding import select_device

logger = logging.getLogger(__name__)

TIME_NAMES = ("time", "hjd", "bjd", "jd", "mjd", "t")
MAGNITUDE_NAMES = ("magnitude", "mag")
MAGNITUDE_ERROR_NAMES = ("error", "err", "mag_err", "magnitude_error", "sigma", "e_mag")
FLUX_NAMES = ("flux",)
FLUX_ERROR_NAMES = ("flux_err", "flux_error", "ferr", "e_flux")
PRINTED_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {column.lower().strip(): column for column in columns}
    return next((lowered[name] for name in names if name in lowered), None)


def read_photometry(path: str | Path, flux: bool = False, zeropoint: float = 22.0) -> pd.DataFrame:
    """Read a photometry file into columns ``time``, ``magnitude``, ``error`` (sorted by time).

    Accepts CSV or whitespace-separated text, with a header naming the columns
    (time/hjd/bjd/jd/mjd; magnitude/mag + error/err/mag_err; or flux + flux_err)
    or without one (then the first three columns are time, magnitude, error as
    in OGLE's ``phot.dat``; time, flux, flux error with ``flux=True``). Fluxes
    become magnitudes with ``zeropoint``; rows with non-finite values or
    non-positive flux are dropped and counted in the log.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "file does not exist")
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip() and line[0] not in "#\\|"]
    if not lines:
        raise InputDataError(path, "no data lines")
    separator = "," if "," in lines[0] else r"\s+"
    first = pd.Series(lines[0].replace(",", " ").split())
    has_header = pd.to_numeric(first, errors="coerce").isna().any()
    try:
        table = pd.read_csv(path, sep=separator, comment="#", header=0 if has_header else None, engine="python")
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputDataError(path, f"cannot parse as a table ({error})") from error
    if has_header:
        columns = [str(c) for c in table.columns]
        time_column = _pick(columns, TIME_NAMES)
        flux_column = _pick(columns, FLUX_NAMES)
        magnitude_column = _pick(columns, MAGNITUDE_NAMES)
        use_flux = flux or (magnitude_column is None and flux_column is not None)
        value_column = flux_column if use_flux else magnitude_column
        error_column = _pick(columns, FLUX_ERROR_NAMES if use_flux else MAGNITUDE_ERROR_NAMES)
        if time_column is None or value_column is None or error_column is None:
            wanted = "time, flux, flux_err" if use_flux else "time, magnitude, error"
            raise InputDataError(path, f"needs columns {wanted} (or aliases); found {', '.join(columns)}")
        data = table[[time_column, value_column, error_column]]
    else:
        if table.shape[1] < 3:
            raise InputDataError(path, f"needs at least 3 columns (time, value, error), found {table.shape[1]}")
        data = table.iloc[:, :3]
        use_flux = flux
    data = data.apply(pd.to_numeric, errors="coerce")
    data.columns = ["time", "value", "error"]
    finite = np.isfinite(data.to_numpy()).all(axis=1) & (data["error"] > 0).to_numpy()
    if use_flux:
        finite &= (data["value"] > 0).to_numpy()
    dropped = int((~finite).sum())
    data = data[finite]
    if dropped:
        logger.warning("%s: dropped %d of %d rows (non-numeric, non-finite, error <= 0%s)", path, dropped,
                       len(finite), ", flux <= 0" if use_flux else "")
    if data.empty:
        raise InputDataError(path, "no valid observations left")
    if use_flux:
        magnitude = zeropoint - 2.5 * np.log10(data["value"].to_numpy())
        error = 2.5 / np.log(10) * data["error"].to_numpy() / data["value"].to_numpy()
    else:
        magnitude, error = data["value"].to_numpy(), data["error"].to_numpy()
    frame = pd.DataFrame({"time": data["time"].to_numpy(float), "magnitude": magnitude, "error": error})
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def resample_to_grid(
    photometry: pd.DataFrame, epochs: int, duration_days: float, start: float | None = None
) -> dict[str, Any]:
    """Bin observations onto the model's grid; returns times, magnitudes, errors, mask, counts.

    ``start`` (default: the latest start that still covers the last
    observation, or the first observation if the file is shorter than the grid)
    is the time of grid epoch 0.
    """
    step = duration_days / epochs
    times = photometry["time"].to_numpy()
    if start is None:
        start = max(times[0], times[-1] - duration_days + step / 2)
    index = np.floor((times - start) / step).astype(np.int64)
    inside = (index >= 0) & (index < epochs)
    weights = 1.0 / photometry["error"].to_numpy() ** 2
    sum_w = np.bincount(index[inside], weights=weights[inside], minlength=epochs)
    sum_wm = np.bincount(index[inside], weights=(weights * photometry["magnitude"].to_numpy())[inside],
                         minlength=epochs)
    mask = sum_w > 0
    magnitudes = np.where(mask, sum_wm / np.where(mask, sum_w, 1.0), 0.0)
    errors = np.where(mask, 1.0 / np.sqrt(np.where(mask, sum_w, 1.0)), 0.0)
    return {
        "times": start + step * np.arange(epochs),
        "magnitudes": magnitudes,
        "errors": errors,
        "mask": mask.astype(np.uint8),
        "used": int(inside.sum()),
        "outside": int((~inside).sum()),
    }


def classify_files(
    paths: Sequence[str | Path],
    model_path: str | Path,
    sidecar_path: str | Path,
    flux: bool = False,
    zeropoint: float = 22.0,
    start: float | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """P(binary) over time for each file; one summary row per file.

    With ``output_dir`` each file's time series (time, observed, magnitude,
    error, p_binary) is written to ``<output_dir>/<file stem>.csv``.
    """
    sidecar = read_sidecar(sidecar_path)
    grid = sidecar["time_grid"]
    torch_device = select_device(device)
    model = load_cadence_model(model_path, sidecar, torch_device, sidecar_path)
    normalisation = Normalisation.from_dict(sidecar["normalisation"])
    rows = []
    for path in paths:
        path = Path(path)
        photometry = read_photometry(path, flux=flux, zeropoint=zeropoint)
        binned = resample_to_grid(photometry, grid["epochs"], grid["duration_days"], start)
        if binned["outside"]:
            logger.warning("%s: %d observations fall outside the %.0f-day grid and are not used", path,
                           binned["outside"], grid["duration_days"])
        if not binned["mask"].any():
            raise InputDataError(path, "no observation falls on the model's time grid (check --start)")
        features = normalisation.apply(causal_features(binned["magnitudes"], binned["errors"], binned["mask"]))
        with torch.inference_mode():
            probability = binary_probability(model(torch.from_numpy(features)[None].to(torch_device)))[0]
        probability = probability.cpu().numpy().astype(np.float64)
        observed = np.flatnonzero(binned["mask"])
        last = observed[-1]
        row = {
            "file": str(path),
            "observations": len(photometry),
            "used": binned["used"],
            "epochs_observed": len(observed),
            "grid_start": float(binned["times"][0]),
            "last_epoch_time": float(binned["times"][last]),
            "p_binary_last": float(probability[last]),
            "p_binary_max": float(probability[: last + 1].max()),
            "classification": "binary" if probability[last] >= 0.5 else "single lens (PSPL)",
        }
        for fraction in PRINTED_FRACTIONS:
            step = observed[max(int(np.ceil(fraction * len(observed))) - 1, 0)]
            row[f"p_binary_at_{int(fraction * 100)}pct"] = float(probability[step])
        rows.append(row)
        if output_dir is not None:
            series = pd.DataFrame({
                "time": binned["times"][: last + 1],
                "observed": binned["mask"][: last + 1],
                "magnitude": np.where(binned["mask"], binned["magnitudes"], np.nan)[: last + 1],
                "error": np.where(binned["mask"], binned["errors"], np.nan)[: last + 1],
                "p_binary": probability[: last + 1],
            })
            write_table(Path(output_dir) / f"{path.stem}.csv", series)
    return pd.DataFrame(rows)
