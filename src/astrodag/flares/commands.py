"""``astrodag flares`` stages: simulate, build-dataset, train, sweep, compare.

Only argparse-level code is imported here; each handler imports its stage's modules when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import SettingDefault, add_stage, add_track, json_or_yaml, split_fractions

logger = logging.getLogger("astrodag.flares")


DATASET = "astrodag.flares.settings:FlareDatasetSettings"
SWEEP = "astrodag.flares.settings:SweepSettings"
ANALYSIS = "astrodag.flares.settings:FlareAnalysisSettings"


def register(tracks) -> None:
    """Add the ``flares`` track to the top-level subparsers."""
    add_track(tracks, "flares", "solar flare prediction from SHARP keyword time series", add_stages)


def add_stages(stages) -> None:
    """Add the flare stages to the track's subparsers."""
    simulate = add_stage(stages, "simulate", _simulate, "write a synthetic SHARP keyword table and flare list")
    simulate.add_argument("--keywords", type=Path, required=True, help="output keyword table (.csv or .parquet)")
    simulate.add_argument("--events", type=Path, required=True, help="output flare-event table (.csv or .parquet)")
    simulate.add_argument("--regions", type=int, required=True, help="number of active regions (HARPs)")
    simulate.add_argument("--cadence-minutes", type=int, default=60)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--summary", type=Path, help="write a JSON summary of what was simulated")

    dataset = add_stage(stages, "build-dataset", _build_dataset,
                        "validate SHARP/flare tables and build labelled windows")
    dataset.add_argument("--keywords", type=Path, required=True, help="SHARP keyword table (.csv or .parquet)")
    dataset.add_argument("--events", type=Path, required=True, help="flare-event table (.csv or .parquet)")
    dataset.add_argument("--features", type=Path, required=True, help="output windows array (.npy)")
    dataset.add_argument("--index", type=Path, required=True, help="output window index with labels (.parquet)")
    dataset.add_argument("--summary", type=Path, required=True, help="output dataset summary (.json)")
    dataset.add_argument("--window-steps", type=int, default=SettingDefault(DATASET, "window_steps"),
                         help="samples per window (default: %(default)s)")
    dataset.add_argument("--cadence-minutes", type=int, default=SettingDefault(DATASET, "cadence_minutes"),
                         help="SHARP samples are resampled to this cadence (default: %(default)s)")
    dataset.add_argument("--tolerance-minutes", type=float,
                         default=SettingDefault(DATASET, "resample_tolerance_minutes"),
                         help="largest distance of the record filling a grid time (default: %(default)s)")
    dataset.add_argument("--max-longitude", type=_longitude, default=SettingDefault(DATASET, "max_longitude"),
                         help="drop records at |LON_FWT| >= this many degrees; 'none' keeps all (default: %(default)s)")
    dataset.add_argument("--stride", type=int, default=SettingDefault(DATASET, "stride"),
                         help="steps between consecutive window ends (default: %(default)s)")
    dataset.add_argument("--horizons", type=int, nargs="+", default=[24, 48, 72], help="prediction windows in hours")
    dataset.add_argument("--classes", nargs="+", default=["C", "M", "M5"], help="flare classes (>= class)")
    dataset.add_argument("--drop-unobserved-horizon", action=argparse.BooleanOptionalAction,
                         default=SettingDefault(DATASET, "drop_unobserved_horizon"),
                         help="count, per split, only windows whose horizon the region's records cover")
    dataset.add_argument("--split-method", choices=("region", "time"), default=SettingDefault(DATASET, "split_method"),
                         help="how the experiments split the regions (default: %(default)s)")
    dataset.add_argument("--split-fractions", nargs=3, default=SettingDefault(DATASET, "split_fractions"),
                         metavar="NAME=F", help="shares of the active regions (default: %(default)s)")
    dataset.add_argument("--split-seed", type=int, default=SettingDefault(DATASET, "split_seed"),
                         help="experiment seed s splits with SPLIT_SEED + s (default: %(default)s)")
    dataset.add_argument("--seeds", type=int, nargs="+", default=[0],
                         help="experiment seeds whose splits the summary shows (default: 0)")

    train = add_stage(stages, "train", _train, "train one model for one (class, window, seed) experiment")
    train.add_argument("--features", type=Path, required=True)
    train.add_argument("--index", type=Path, required=True)
    train.add_argument("--out-dir", type=Path, required=True, help="where predictions and the model go")
    train.add_argument("--flare-class", required=True, help="C, M or M5 (flare of at least this class)")
    train.add_argument("--window", type=int, required=True, help="prediction window in hours")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--architecture", choices=("everest", "baseline"), default="everest")
    train.add_argument("--model-options", type=json_or_yaml, default={},
                       help="architecture options as JSON/YAML or @file")
    train.add_argument("--training-options", type=json_or_yaml, default={},
                       help="trainer options as JSON/YAML or @file (ignored by the baseline)")
    train.add_argument("--dataset-options", type=json_or_yaml, default={},
                       help="the flares.dataset section as JSON/YAML or @file: the split and horizon keys apply")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--work-dir", type=Path, help="checkpoints for resuming (default OUT_DIR/checkpoints)")

    sweep = add_stage(stages, "sweep", _sweep, "choose the threshold on validation, report it on test")
    sweep.add_argument("--predictions", type=Path, required=True)
    sweep.add_argument("--model-json", type=Path, required=True)
    sweep.add_argument("--out-dir", type=Path, required=True)
    sweep.add_argument("--start", type=float, default=SettingDefault(SWEEP, "start"), help="default: %(default)s")
    sweep.add_argument("--stop", type=float, default=SettingDefault(SWEEP, "stop"), help="default: %(default)s")
    sweep.add_argument("--num", type=int, default=SettingDefault(SWEEP, "num"),
                       help="thresholds tried (default: %(default)s)")
    sweep.add_argument("--weights", type=json_or_yaml, default=None,
                       help="metric weights of the score, e.g. '{tss: 0.4, f1: 0.2, ...}' (EVEREST default)")

    compare = add_stage(stages, "compare", _compare,
                        "compare the models: HARP-block bootstrap, tests over seeds, figures and the report")
    compare.add_argument("--results", type=Path, nargs="+", required=True, help="results.json of each experiment")
    compare.add_argument("--predictions", type=Path, nargs="+", required=True,
                         help="predictions.parquet of each experiment, in the same order")
    compare.add_argument("--out-dir", type=Path, required=True)
    compare.add_argument("--confidence", type=float, default=SettingDefault(ANALYSIS, "confidence"),
                         help="level of the intervals (default: %(default)s)")
    compare.add_argument("--bootstrap-resamples", type=int, default=SettingDefault(ANALYSIS, "bootstrap_resamples"),
                         help="default: %(default)s")
    compare.add_argument("--seed", type=int, default=SettingDefault(ANALYSIS, "seed"),
                         help="seed of the bootstrap (default: %(default)s)")
    compare.add_argument("--calibration", choices=("platt", "isotonic"),
                         default=SettingDefault(ANALYSIS, "calibration"),
                         help="recalibration fitted on validation before test calibration is reported "
                              "(default: %(default)s)")


def _longitude(text: str) -> float | None:
    """A longitude limit in degrees, or None for 'none'/'null' (an argparse ``type``)."""
    return None if text.lower() in ("none", "null") else float(text)


def _simulate(args: argparse.Namespace) -> None:
    from astrodag.flares.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(args.keywords, args.events, n_regions=args.regions,
                                      cadence_minutes=args.cadence_minutes, seed=args.seed, progress=args.progress)
    if args.summary:
        from astrodag.io import write_json

        write_json(args.summary, summary)
    logger.info("simulated %s", json.dumps(summary, default=str))


def _build_dataset(args: argparse.Namespace) -> None:
    from astrodag.flares.dataset import prepare_dataset

    prepare_dataset(
        args.keywords, args.events, args.features, args.index, args.summary,
        window_steps=args.window_steps, cadence_minutes=args.cadence_minutes, stride=args.stride,
        horizons_hours=tuple(args.horizons), flare_classes=tuple(args.classes),
        split_fractions=split_fractions(args.split_fractions), split_seed=args.split_seed, progress=args.progress,
        tolerance_minutes=args.tolerance_minutes, max_longitude=args.max_longitude,
        drop_unobserved_horizon=args.drop_unobserved_horizon, split_method=args.split_method, seeds=tuple(args.seeds),
    )


def _train(args: argparse.Namespace) -> None:
    from astrodag.flares.experiment import train_experiment

    train_experiment(
        args.features, args.index, args.out_dir, flare_class=args.flare_class, window_hours=args.window,
        seed=args.seed, model_name=args.architecture, model_options=args.model_options,
        training_options=args.training_options, threads=args.threads, work_dir=args.work_dir,
        progress=args.progress, dataset_options=args.dataset_options,
    )


def _sweep(args: argparse.Namespace) -> None:
    from astrodag.flares.sweep import sweep_experiment

    sweep_experiment(args.predictions, args.model_json, args.out_dir, start=args.start, stop=args.stop,
                     num=args.num, weights=args.weights)


def _compare(args: argparse.Namespace) -> None:
    from astrodag.flares.analysis import analyze_study

    analyze_study(args.results, args.predictions, args.out_dir, confidence=args.confidence,
                  n_resamples=args.bootstrap_resamples, seed=args.seed, calibration=args.calibration)
