"""One experiment of the flare study: train a model for one (class, window, seed) target.

Each experiment draws its own split of the regions from its seed
(:func:`~astrodag.flares.dataset.experiment_splits`), so the seeds of a
target differ in their test regions as well as in the initialisation. The
model sees windows of SHARP keywords from the training split only; its
normalisation statistics come from that split only; early stopping and,
later, the decision threshold use the validation split; the test split is
only predicted, never looked at here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrodag import __version__
from astrodag.errors import InputDataError
from astrodag.evaluation.metrics import binary_metrics, measure_latency
from astrodag.flares.dataset import experiment_splits, horizon_observed, label_column, load_dataset
from astrodag.flares.settings import BaselineSettings, EverestSettings, FlareDatasetSettings, FlareTrainerSettings
from astrodag.flares.sharp import SHARP_KEYWORDS
from astrodag.io import file_digest, write_table
from astrodag.models.registry import build_model
from astrodag.training.bundle import save_model

logger = logging.getLogger(__name__)

MODEL_NAMES = ("everest", "baseline")
SPLITS = ("train", "validation", "test")
# Extensive SHARP quantities span orders of magnitude: compress them with a signed log.
LOG_SCALED_KEYWORDS = ("TOTUSJH", "TOTUSJZ", "USFLUX", "TOTPOT", "SAVNCPP", "AREA_ACR", "ABSNJZH")
NORMALISATION_CHUNK = 65_536


def compress_dynamic_range(windows: np.ndarray) -> np.ndarray:
    """Apply ``sign(x) log10(1 + |x|)`` to the extensive keywords (last axis in SHARP order)."""
    out = np.array(windows, dtype=np.float32, copy=True)
    columns = [SHARP_KEYWORDS.index(name) for name in LOG_SCALED_KEYWORDS]
    out[..., columns] = np.sign(out[..., columns]) * np.log10(1.0 + np.abs(out[..., columns]))
    return out


def fit_normalisation(features: np.ndarray, rows: np.ndarray) -> dict[str, list[float]]:
    """Per-keyword mean and standard deviation over the given (training) rows.

    Reads the (possibly memory-mapped) features in chunks so a large dataset
    is never loaded whole.
    """
    n_features = features.shape[-1]
    total = np.zeros(n_features)
    total_sq = np.zeros(n_features)
    count = 0
    for start in range(0, len(rows), NORMALISATION_CHUNK):
        chunk = compress_dynamic_range(features[rows[start : start + NORMALISATION_CHUNK]])
        flat = chunk.reshape(-1, n_features).astype(np.float64)
        total += flat.sum(axis=0)
        total_sq += (flat**2).sum(axis=0)
        count += len(flat)
    if count == 0:
        raise ValueError("cannot fit the normalisation on an empty training split")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std[std == 0] = 1.0  # a constant keyword carries no information; avoid dividing by zero
    return {"mean": mean.tolist(), "std": std.tolist()}


def normalise(windows: np.ndarray, normalisation: dict[str, list[float]]) -> np.ndarray:
    mean = np.asarray(normalisation["mean"], dtype=np.float32)
    std = np.asarray(normalisation["std"], dtype=np.float32)
    return (compress_dynamic_range(windows) - mean) / std


def _split_rows(index: pd.DataFrame, target: str, source: Path) -> dict[str, np.ndarray]:
    rows = {}
    for split in SPLITS:
        selected = index.loc[index["split"] == split, "row"].to_numpy()
        if len(selected) == 0:
            raise InputDataError(source, f"the {split} split is empty")
        rows[split] = selected
    positives = int(index.loc[index["split"] == "train", target].sum())
    if positives == 0:
        raise InputDataError(source, f"the training split has no positive windows for {target}")
    return rows


def train_experiment(
    features_path: str | Path,
    index_path: str | Path,
    out_dir: str | Path,
    flare_class: str,
    window_hours: int,
    seed: int,
    model_name: str,
    model_options: dict[str, Any] | None = None,
    training_options: dict[str, Any] | None = None,
    threads: int | None = None,
    work_dir: str | Path | None = None,
    progress: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one model on one target and write its predictions and sidecar.

    The split comes from ``seed`` and the split keys of ``dataset_options``
    (:class:`~astrodag.flares.settings.FlareDatasetSettings`); with
    ``drop_unobserved_horizon`` the windows whose horizon runs past their
    region's last record are left out of every split.

    Writes into ``out_dir``: ``predictions.parquet`` (validation and test
    rows: HARPNUM, end_time, split, label, probability), ``model.json``
    (architecture, options, normalisation, data digest, seed, split, metrics) and,
    for the transformer, ``model.pt`` (the best ``state_dict``) and
    ``history.csv``. Checkpoints for resuming live in ``work_dir``
    (default ``out_dir/checkpoints``), which Snakemake does not delete when a
    job fails.
    """
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    out_dir = Path(out_dir)
    target = label_column(flare_class, window_hours)
    dataset = FlareDatasetSettings.from_config(dataset_options)
    features, index = load_dataset(features_path, index_path, mmap=True)
    if target not in index.columns:
        raise InputDataError(index_path, f"no label column {target!r}; was the dataset built with this window?")
    # The split is drawn over all windows, so a region's split for a seed is the same for every target.
    index["split"] = experiment_splits(index, seed, dataset.split_fractions, dataset.split_seed,
                                       dataset.split_method)
    observed = horizon_observed(index, window_hours)
    n_unobserved = int((~observed).sum())
    if dataset.drop_unobserved_horizon:
        index = index[observed]
    rows = _split_rows(index, target, Path(index_path))
    labels = np.zeros(len(features), dtype=np.float32)
    labels[index["row"].to_numpy()] = index[target].to_numpy(dtype=np.float32)
    normalisation = fit_normalisation(features, rows["train"])
    # The flare windows (at most a few million x 10 x 9 floats) fit in memory once normalised.
    inputs = {split: normalise(features[rows[split]], normalisation) for split in SPLITS}
    targets = {split: labels[rows[split]] for split in SPLITS}

    started = time.perf_counter()
    sidecar: dict[str, Any] = {
        "model": model_name,
        "target": target,
        "flare_class": flare_class,
        "window_hours": window_hours,
        "seed": seed,
        "software_version": __version__,
        "data": {
            "features": str(features_path),
            "index": str(index_path),
            "index_sha256": file_digest(index_path),
            "shape": list(features.shape),
            "windows": {split: int(len(rows[split])) for split in SPLITS},
            "positives": {split: int(targets[split].sum()) for split in SPLITS},
            "regions": {split: int(index.loc[index["split"] == split, "HARPNUM"].nunique()) for split in SPLITS},
            "windows_horizon_unobserved": n_unobserved,
            "dropped_unobserved_horizon": dataset.drop_unobserved_horizon,
        },
        "split": {
            "method": dataset.split_method,
            "fractions": dataset.split_fractions,
            "split_seed": dataset.split_seed + seed if dataset.split_method == "region" else None,
            "test_regions": sorted(int(h) for h in index.loc[index["split"] == "test", "HARPNUM"].unique()),
        },
        "normalisation": normalisation,
    }
    if model_name == "everest":
        # The Trainer hashes the normalised windows and labels of each split, the loss and the architecture;
        # these name what it cannot see (the test split, the source files) in its log when they change.
        run_key = {"target": target, "index": sidecar["data"]["index_sha256"], "split": sidecar["split"],
                   "dataset options": dataset.as_dict()}
        probabilities, details, network = _train_transformer(
            inputs, targets, out_dir, seed, EverestSettings.from_config(model_options),
            FlareTrainerSettings.from_config(training_options), threads, work_dir, progress, run_key=run_key,
        )
    else:
        probabilities, details = _train_baseline(inputs, targets, seed, BaselineSettings.from_config(model_options))
        network = None  # the baseline is its coefficients, which the sidecar holds
    sidecar.update(details)
    sidecar["training_seconds"] = time.perf_counter() - started
    sidecar["validation_metrics"] = binary_metrics(targets["validation"], probabilities["validation"])

    frames = []
    for split in ("validation", "test"):
        selected = index.set_index("row").loc[rows[split], ["HARPNUM", "end_time"]].reset_index()
        selected["split"] = split
        selected["label"] = targets[split].astype(np.int8)
        selected["probability"] = probabilities[split].astype(np.float64)
        frames.append(selected)
    write_table(out_dir / "predictions.parquet", pd.concat(frames, ignore_index=True))
    save_model(network, sidecar, out_dir)
    logger.info(
        "%s %s seed %d: validation AUCPR %.3f, TSS@0.5 %.3f in %.1f s",
        model_name, target, seed, sidecar["validation_metrics"]["aucpr"],
        sidecar["validation_metrics"]["tss"], sidecar["training_seconds"],
    )
    return sidecar


def _train_transformer(inputs, targets, out_dir, seed, settings, training, threads, work_dir, progress, run_key):
    # torch is imported here so that the baseline's jobs do not pay for it.
    import torch
    from torch.utils.data import TensorDataset

    from astrodag.training.experiment import train_model
    from astrodag.training.losses import BinaryFocalLoss

    if threads:
        torch.set_num_threads(threads)
    focal_gamma, focal_alpha = settings.focal_gamma, settings.focal_alpha
    positives = float(targets["train"].sum())
    # Weigh the rare class up to parity, as the baseline's balanced class weights do.
    positive_weight = 1.0
    if settings.balance_classes:
        positive_weight = (len(targets["train"]) - positives) / positives
    architecture = settings.architecture()
    n_features, n_steps = inputs["train"].shape[-1], inputs["train"].shape[1]
    datasets = {
        split: TensorDataset(torch.from_numpy(inputs[split]), torch.from_numpy(targets[split]))
        for split in ("train", "validation", "test")
    }
    run = train_model(
        "everest", architecture, {"n_features": n_features, "n_steps": n_steps},
        BinaryFocalLoss(gamma=focal_gamma, alpha=focal_alpha, positive_weight=positive_weight), training,
        datasets["train"], datasets["validation"], out_dir, seed=seed, evaluate=binary_metrics, run_key=run_key,
        threads=threads, work_dir=work_dir, progress=progress,
    )
    trainer, model = run.trainer, run.model
    probabilities = {split: trainer.predict(datasets[split]) for split in ("validation", "test")}

    model.eval()
    test_tensor = torch.from_numpy(inputs["test"]).to(trainer.device)
    with torch.inference_mode():
        latency = measure_latency(lambda batch: model(batch), test_tensor, batch_size=256)
    return probabilities, {
        "architecture": {"name": "EverestTransformer", "n_features": n_features, "n_steps": n_steps,
                         **architecture.as_dict()},
        "loss": {"name": "BinaryFocalLoss", "gamma": focal_gamma, "alpha": focal_alpha,
                 "positive_weight": positive_weight},
        **run.record(),
        "latency": latency,
    }, model


def _train_baseline(inputs, targets, seed, settings):
    baseline = build_model("baseline", settings, seed=seed).fit(inputs["train"], targets["train"])
    probabilities = {split: baseline.predict_proba(inputs[split]) for split in ("validation", "test")}
    latency = measure_latency(baseline.predict_proba, inputs["test"], batch_size=256)
    return probabilities, {
        "architecture": baseline.to_dict(),
        "device": "cpu",
        "parameters": int(baseline.coefficients.size + 1),
        "latency": latency,
    }
