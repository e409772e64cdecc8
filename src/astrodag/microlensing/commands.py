"""``astrodag microlensing`` stages: simulate, observe, train, predict, evaluate, compare, classify.

Only argparse-level code is imported here; each handler imports its stage's modules when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import (
    SettingDefault,
    add_model_files,
    add_stage,
    add_track,
    json_or_yaml,
    named_dirs,
    sidecar_path,
)

logger = logging.getLogger("astrodag.microlensing")


TIME_GRID = "astrodag.microlensing.simulation:TimeGridSettings"
ANALYSIS = "astrodag.microlensing.analysis:MicrolensingAnalysisSettings"


def add_time_grid(parser) -> None:
    """``--epochs`` and ``--duration-days`` of the time grid (defaults: config ``microlensing.time_grid``)."""
    parser.add_argument("--epochs", type=int, default=SettingDefault(TIME_GRID, "epochs"),
                        help="epochs of the time grid (default: %(default)s)")
    parser.add_argument("--duration-days", type=float, default=SettingDefault(TIME_GRID, "duration_days"),
                        help="time span of the grid (default: %(default)s)")


def register(tracks) -> None:
    """Add the ``microlensing`` track to the top-level subparsers."""
    add_track(tracks, "microlensing", "microlensing: PSPL vs binary-lens light curves", add_stages)


def _add_observation_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--observations", type=Path, nargs="+", required=True,
                        help="one cadence's observation directory of every shard ('observe' outputs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def add_stages(stages) -> None:
    """Add the microlensing stages to the track's subparsers."""
    simulate = add_stage(stages, "simulate", _simulate, "draw one shard of PSPL and binary-lens events (parameters)")
    simulate.add_argument("--out-dir", type=Path, required=True, help="shard directory to write (events.parquet)")
    simulate.add_argument("--shard", type=int, required=True, help="shard index (event ids follow from it)")
    simulate.add_argument("--events", type=int, required=True, help="events in the shard (half of each class)")
    add_time_grid(simulate)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--settings", type=json_or_yaml, default={},
                          help="priors and split_fractions (JSON/YAML or @file)")

    observe = add_stage(stages, "observe", _observe,
                        "observe one shard's events with a cadence: noisy photometry binned on the grid")
    observe.add_argument("--events", type=Path, required=True, help="the shard's events.parquet")
    observe.add_argument("--cadences", type=Path, required=True, help="cadence table (.tsv)")
    observe.add_argument("--cadence", required=True, help="row of the cadence table to use")
    observe.add_argument("--out-dir", type=Path, required=True,
                         help="observation directory to write (arrays, events.parquet, summary.json)")
    add_time_grid(observe)
    observe.add_argument("--seed", type=int, default=0)
    observe.add_argument("--settings", type=json_or_yaml, default={},
                         help="observation settings (config microlensing.observation) as JSON/YAML or @file")

    train = add_stage(stages, "train", _train, "train the causal per-timestep CNN for one cadence")
    _add_observation_inputs(train)
    train.add_argument("--out-dir", type=Path, required=True, help="where model.pt, model.json, history.csv go")
    train.add_argument("--cadences", type=Path, required=True, help="cadence table (.tsv), for the sidecar")
    train.add_argument("--cadence", required=True, help="row of the cadence table the observations were made with")
    train.add_argument("--duration-days", type=float, default=SettingDefault(TIME_GRID, "duration_days"),
                       help="time span of the grid (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--simulation-settings", type=json_or_yaml, default={},
                       help="the simulation settings of the events (JSON/YAML or @file), for the sidecar")
    train.add_argument("--observation-settings", type=json_or_yaml, default={},
                       help="the observation settings (JSON/YAML or @file), for the sidecar")
    train.add_argument("--model-options", type=json_or_yaml, default={},
                       help="architecture options as JSON/YAML or @file")
    train.add_argument("--training-options", type=json_or_yaml, default={},
                       help="trainer options as JSON/YAML or @file")
    train.add_argument("--work-dir", type=Path, help="checkpoints for resuming (default OUT_DIR/checkpoints)")

    predict = add_stage(stages, "predict", _predict, "P(binary) at every step for every event of a split")
    _add_observation_inputs(predict)
    add_model_files(predict)
    predict.add_argument("--out-dir", type=Path, required=True)
    predict.add_argument("--split", choices=("train", "validation", "test"), default="test")
    predict.add_argument("--batch-size", type=int, default=256)

    evaluate = add_stage(stages, "evaluate", _evaluate, "metrics, early detection and detection times of one cadence")
    evaluate.add_argument("--evaluation-dir", type=Path, required=True, help="output of 'predict'")
    evaluate.add_argument("--out-dir", type=Path, required=True)
    evaluate.add_argument("--cadence", required=True)
    evaluate.add_argument("--fractions", type=float, nargs="+", default=SettingDefault(ANALYSIS, "fractions"),
                          help="fractions of the light curve seen (default: %(default)s)")
    evaluate.add_argument("--thresholds", type=float, nargs="+",
                          default=SettingDefault(ANALYSIS, "detection_thresholds"),
                          help="P(binary) thresholds for detection times (default: %(default)s)")
    evaluate.add_argument("--consecutive-epochs", type=int,
                          default=SettingDefault(ANALYSIS, "consecutive_epochs"),
                          help="observed epochs in a row above a threshold that raise an alarm (default: %(default)s)")
    evaluate.add_argument("--event-phases", type=float, nargs="+", default=SettingDefault(ANALYSIS, "event_phases_tE"),
                          help="k of the early detection at t0 + k tE (default: %(default)s)")
    evaluate.add_argument("--after-brightening", type=float, nargs="+",
                          default=SettingDefault(ANALYSIS, "after_brightening_tE"),
                          help="k of the early detection at the first brightening + k tE (default: %(default)s)")
    evaluate.add_argument("--binary-shares", type=float, nargs="+",
                          default=SettingDefault(ANALYSIS, "deployment_binary_shares"),
                          help="binary shares at which precision, NPV and alarms per true binary are given "
                               "(default: %(default)s)")

    compare = add_stage(stages, "compare", _compare, "compare cadences: one report, tables and figures")
    compare.add_argument("--cadence-dirs", nargs="+", required=True, metavar="NAME=DIR",
                         help="each cadence's 'evaluate' output directory")
    compare.add_argument("--out-dir", type=Path, required=True)

    classify = add_stage(stages, "classify", _classify,
                         "classify photometry files (magnitudes, fluxes or difference fluxes) as PSPL, binary or"
                         " out of distribution")
    classify.add_argument("files", type=Path, nargs="+", help="CSV or whitespace text; OGLE phot.dat works as is")
    add_model_files(classify, "model.pt of a trained cadence")
    values = classify.add_mutually_exclusive_group()
    values.add_argument("--flux", action="store_true", help="the value column is flux, not magnitude")
    values.add_argument("--difference-flux", action="store_true",
                        help="the value column is a difference flux Delta F (KMTNet pySIS, MOA);"
                             " needs --reference-flux")
    classify.add_argument("--reference-flux", type=float, nargs="+",
                          help="source flux on the reference image, units of Delta F (F = F_ref + Delta F); one value"
                               " for all files or one per file")
    classify.add_argument("--zeropoint", type=float,
                          help="magnitude zero point of the fluxes (default: instrumental magnitudes; the baseline"
                               " prior check is then skipped)")
    classify.add_argument("--start", type=float, help="time of the grid's first epoch (default: fit the latest data)")
    classify.add_argument("--out-dir", type=Path, help="write each file's P(binary) time series as CSV here")
    classify.add_argument("--summary", type=Path, help="write the summary table (CSV) here too")


def _simulate(args: argparse.Namespace) -> None:
    from astrodag.microlensing.simulation import SimulationSettings, simulate_shard, time_grid

    summary = simulate_shard(args.out_dir, args.shard, args.events, SimulationSettings.from_config(args.settings),
                             time_grid(args.epochs, args.duration_days), args.seed)
    logger.info("simulated %s", json.dumps(summary, default=str))


def _cadence(path: Path, name: str):
    from astrodag.errors import ConfigError
    from astrodag.microlensing.cadence import load_cadences

    cadences = load_cadences(path)
    if name not in cadences:
        raise ConfigError("cadence", f"{name!r} is not in {path} ({', '.join(cadences)})")
    return cadences[name]


def _observe(args: argparse.Namespace) -> None:
    from astrodag.microlensing.observe import ObservationSettings, observe_shard
    from astrodag.microlensing.simulation import time_grid

    summary = observe_shard(args.events, args.out_dir, _cadence(args.cadences, args.cadence),
                            time_grid(args.epochs, args.duration_days), ObservationSettings.from_config(args.settings),
                            args.seed)
    logger.info("observed %s", json.dumps(summary, default=str))


def _train(args: argparse.Namespace) -> None:
    from astrodag.microlensing.experiment import train_cadence_model

    spec = _cadence(args.cadences, args.cadence)
    train_cadence_model(args.observations, args.out_dir, cadence=args.cadence, duration_days=args.duration_days,
                        seed=args.seed, cadence_spec=spec.to_dict(), simulation=args.simulation_settings,
                        observation=args.observation_settings, model_options=args.model_options,
                        training_options=args.training_options, threads=args.threads, work_dir=args.work_dir,
                        progress=args.progress)


def _predict(args: argparse.Namespace) -> None:
    from astrodag.microlensing.experiment import predict_split

    predict_split(args.model, sidecar_path(args), args.observations, args.out_dir, split=args.split,
                  batch_size=args.batch_size, threads=args.threads, progress=args.progress)


def _evaluate(args: argparse.Namespace) -> None:
    from astrodag.microlensing.analysis import evaluate_cadence

    evaluate_cadence(args.evaluation_dir, args.out_dir, args.cadence, fractions=tuple(args.fractions),
                     thresholds=tuple(args.thresholds), consecutive_epochs=args.consecutive_epochs,
                     event_phases=tuple(args.event_phases), after_brightening=tuple(args.after_brightening),
                     binary_shares=tuple(args.binary_shares))


def _compare(args: argparse.Namespace) -> None:
    from astrodag.microlensing.report import compare_cadences

    compare_cadences(named_dirs(args.cadence_dirs, "cadence-dirs"), args.out_dir)


def _classify(args: argparse.Namespace) -> None:
    from astrodag.microlensing.classify import classify_files

    summary = classify_files(args.files, args.model, sidecar_path(args), flux=args.flux,
                             difference_flux=args.difference_flux, reference_flux=args.reference_flux,
                             zeropoint=args.zeropoint, start=args.start, output_dir=args.out_dir)
    if args.summary:
        from astrodag.io import write_table

        write_table(args.summary, summary)
    columns = ["file", "epochs_observed", "p_binary_at_25pct", "p_binary_at_50pct", "p_binary_at_75pct",
               "p_binary_last", "classification", "reason"]
    print(summary.reindex(columns=columns).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
