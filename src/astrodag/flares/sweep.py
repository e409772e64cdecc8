"""Threshold sweep of one experiment: tune on validation, apply once to test."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from astrodag.errors import InputDataError
from astrodag.evaluation.metrics import binary_metrics
from astrodag.evaluation.thresholds import select_threshold, sweep_thresholds, threshold_grid, validate_weights
from astrodag.io import read_table, write_json, write_table

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("split", "label", "probability")
TRAINING_BUDGET_KEYS = ("epochs_run", "best_epoch", "stopped_early", "max_epochs", "early_stopping_patience")


def read_predictions(path: str | Path, extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read an experiment's predictions and check the columns the sweep needs, and ``extra_columns``."""
    path = Path(path)
    frame = read_table(path, (*PREDICTION_COLUMNS, *extra_columns), not_found="predictions file does not exist")
    for split in ("validation", "test"):
        if not (frame["split"] == split).any():
            raise InputDataError(path, f"no {split} predictions")
    return frame


def training_budget(model_info: dict[str, Any]) -> dict[str, Any]:
    """Epochs run, best epoch and early stopping of a trained network against its budget, from its sidecar.

    Every value is None for a model without epochs (the logistic baseline, fitted to its optimum).
    """
    trainer = model_info.get("trainer", {})
    return {key: model_info.get(key, trainer.get(key)) for key in TRAINING_BUDGET_KEYS}


def sweep_experiment(
    predictions_path: str | Path,
    model_json_path: str | Path,
    out_dir: str | Path,
    start: float = 0.1,
    stop: float = 0.9,
    num: int = 81,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Choose the decision threshold on validation and report it on both splits.

    Writes ``thresholds.csv`` (the validation sweep), ``metrics.csv`` (one row
    per split at the chosen threshold) and ``results.json`` (the experiment's
    identity from ``model.json``, the threshold and both splits' metrics).
    """
    out_dir = Path(out_dir)
    weights = validate_weights(weights) if weights is not None else None
    predictions = read_predictions(predictions_path)
    model_info = json.loads(Path(model_json_path).read_text())
    validation = predictions[predictions["split"] == "validation"]
    test = predictions[predictions["split"] == "test"]

    sweep = sweep_thresholds(
        validation["label"].to_numpy(), validation["probability"].to_numpy(),
        thresholds=threshold_grid(start, stop, num), weights=weights,
    )
    threshold = select_threshold(sweep)
    # The test split is scored once, at the threshold fixed on validation.
    metrics = {
        split: binary_metrics(frame["label"].to_numpy(), frame["probability"].to_numpy(), threshold=threshold)
        for split, frame in (("validation", validation), ("test", test))
    }
    write_table(out_dir / "thresholds.csv", sweep)
    write_table(
        out_dir / "metrics.csv",
        pd.DataFrame([{"split": split, **values} for split, values in metrics.items()]),
    )
    results = {
        key: model_info[key]
        for key in ("model", "target", "flare_class", "window_hours", "seed", "training_seconds", "parameters")
        if key in model_info
    }
    results.update(
        {
            "latency_ms_per_sample": model_info.get("latency", {}).get("per_sample_ms"),
            "training": training_budget(model_info),
            "threshold": threshold,
            "threshold_selected_on": "validation",
            "validation": metrics["validation"],
            "test": metrics["test"],
        }
    )
    write_json(out_dir / "results.json", results)
    logger.info(
        "%s %s seed %s: threshold %.3f, test TSS %.3f, F1 %.3f",
        results.get("model"), results.get("target"), results.get("seed"), threshold,
        metrics["test"]["tss"], metrics["test"]["f1"],
    )
    return results
