"""The ``astrodag`` command line: one subcommand per workflow stage.

Every Snakemake rule calls one of these, so each stage can also be run by
hand, e.g. ``astrodag flares train --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from astrodag import __version__
from astrodag.errors import AstrodagError, ConfigError
from astrodag.logs import configure_logging

logger = logging.getLogger("astrodag.cli")


def _json_or_yaml(text: str) -> dict[str, Any]:
    """An option given inline as JSON/YAML, or as ``@path`` to a JSON/YAML file."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.exists():
            raise argparse.ArgumentTypeError(f"options file {path} does not exist")
        text = path.read_text()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"cannot parse options: {error}") from error
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("options must be a mapping, e.g. '{\"embed_dim\": 64}'")
    return value


def _split_fractions(items: list[str]) -> dict[str, float]:
    fractions = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ("train", "validation", "test") or not value:
            raise ConfigError("split-fractions", f"expected train=F validation=F test=F, got {item!r}")
        fractions[name] = float(value)
    return fractions


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", type=Path, help="also append log messages to this file")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress bars (default: only on a terminal)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astrodag", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"astrodag {__version__}")
    tracks = parser.add_subparsers(dest="track", required=True, metavar="TRACK")

    flares = tracks.add_parser("flares", help="solar flare prediction from SHARP keyword time series")
    stages = flares.add_subparsers(dest="stage", required=True, metavar="STAGE")

    simulate = stages.add_parser("simulate", help="write a synthetic SHARP keyword table and flare list")
    simulate.add_argument("--keywords", type=Path, required=True, help="output keyword table (.csv or .parquet)")
    simulate.add_argument("--events", type=Path, required=True, help="output flare-event table (.csv or .parquet)")
    simulate.add_argument("--regions", type=int, required=True, help="number of active regions (HARPs)")
    simulate.add_argument("--cadence-minutes", type=int, default=60)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--summary", type=Path, help="write a JSON summary of what was simulated")
    _add_common(simulate)

    ingest = stages.add_parser("ingest", help="validate SHARP/flare tables and build labelled, split windows")
    ingest.add_argument("--keywords", type=Path, required=True, help="SHARP keyword table (.csv or .parquet)")
    ingest.add_argument("--events", type=Path, required=True, help="flare-event table (.csv or .parquet)")
    ingest.add_argument("--features", type=Path, required=True, help="output windows array (.npy)")
    ingest.add_argument("--index", type=Path, required=True, help="output window index with labels (.parquet)")
    ingest.add_argument("--summary", type=Path, required=True, help="output dataset summary (.json)")
    ingest.add_argument("--window-steps", type=int, default=10)
    ingest.add_argument("--cadence-minutes", type=int, default=60)
    ingest.add_argument("--stride", type=int, default=1, help="steps between consecutive window ends")
    ingest.add_argument("--horizons", type=int, nargs="+", default=[24, 48, 72], help="prediction windows in hours")
    ingest.add_argument("--classes", nargs="+", default=["C", "M", "M5"], help="flare classes (>= class)")
    ingest.add_argument("--split-fractions", nargs=3, default=["train=0.6", "validation=0.2", "test=0.2"],
                        metavar="NAME=F")
    ingest.add_argument("--split-seed", type=int, default=0)
    _add_common(ingest)

    train = stages.add_parser("train", help="train one model for one (class, window, seed) experiment")
    train.add_argument("--features", type=Path, required=True)
    train.add_argument("--index", type=Path, required=True)
    train.add_argument("--out-dir", type=Path, required=True, help="where predictions and the model go")
    train.add_argument("--flare-class", required=True, help="C, M or M5 (flare of at least this class)")
    train.add_argument("--window", type=int, required=True, help="prediction window in hours")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--model", choices=("everest", "baseline"), default="everest")
    train.add_argument("--model-options", type=_json_or_yaml, default={},
                       help="architecture options as JSON/YAML or @file")
    train.add_argument("--training-options", type=_json_or_yaml, default={},
                       help="trainer options as JSON/YAML or @file (ignored by the baseline)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--work-dir", type=Path, help="checkpoints for resuming (default OUT_DIR/checkpoints)")
    _add_common(train)

    sweep = stages.add_parser("sweep", help="choose the threshold on validation, report it on test")
    sweep.add_argument("--predictions", type=Path, required=True)
    sweep.add_argument("--model-json", type=Path, required=True)
    sweep.add_argument("--out-dir", type=Path, required=True)
    sweep.add_argument("--start", type=float, default=0.1)
    sweep.add_argument("--stop", type=float, default=0.9)
    sweep.add_argument("--num", type=int, default=81)
    sweep.add_argument("--weights", type=_json_or_yaml, default=None,
                       help="metric weights of the score, e.g. '{tss: 0.4, f1: 0.2, ...}' (EVEREST default)")
    _add_common(sweep)

    analyze = stages.add_parser("analyze", help="statistics over seeds, figures and the Markdown report")
    analyze.add_argument("--results", type=Path, nargs="+", required=True, help="results.json of each experiment")
    analyze.add_argument("--predictions", type=Path, nargs="+", required=True,
                         help="predictions.parquet of each experiment, in the same order")
    analyze.add_argument("--out-dir", type=Path, required=True)
    analyze.add_argument("--confidence", type=float, default=0.95)
    analyze.add_argument("--bootstrap-resamples", type=int, default=9999)
    analyze.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    _add_common(analyze)

    _add_microlensing_parsers(tracks)
    _add_supernova_parsers(tracks)
    return parser


def _add_supernova_parsers(tracks) -> None:
    # Each package owns its stages; their modules import only argparse-level code here.
    from astrodag.supernova.archive import commands as archive_commands
    from astrodag.supernova.imaging import commands as imaging_commands
    from astrodag.supernova.realbogus import commands as realbogus_commands, service_commands

    supernova = tracks.add_parser("supernova", help="supernova detection by image differencing")
    stages = supernova.add_subparsers(dest="stage", required=True, metavar="STAGE")
    archive_commands.add_parsers(stages, _add_common)
    imaging_commands.add_parsers(stages, _add_common)
    realbogus_commands.add_parsers(stages, _add_common)
    service_commands.add_parsers(stages, _add_common)
    service_commands.add_serve_parser(tracks, _add_common)

    summarize = stages.add_parser("summarize", help="the imaging track's report: pairs, recovery, candidates, triplets")
    summarize.add_argument("--pairs", type=Path, required=True, help="pairs.csv of the pairing stage")
    summarize.add_argument("--decisions", type=Path, required=True, help="decisions.csv of the pairing stage")
    summarize.add_argument("--yield-summary", type=Path, required=True, help="yield.csv of the pairing stage")
    summarize.add_argument("--catalog", type=Path, required=True, help="the SN catalogue (CSV)")
    summarize.add_argument("--pair-dirs", type=Path, nargs="*", default=[],
                           help="each pair's directory (difference.json, candidates.csv, injections.csv)")
    summarize.add_argument("--dataset-summary", type=Path, help="summary.json of the triplet dataset")
    summarize.add_argument("--truth", type=Path, help="truth.csv of the synthetic survey (injected SN fluxes)")
    summarize.add_argument("--out-dir", type=Path, required=True,
                           help="writes imaging_report.md, imaging_report.json, pairs_summary.csv")
    _add_common(summarize)

    compare = stages.add_parser("compare", help="compare the real/bogus experiments; SN recovery end to end")
    compare.add_argument("--experiments", nargs="+", required=True, metavar="NAME=DIR",
                         help="each experiment's directory (model/ and evaluation/ inside)")
    compare.add_argument("--deployed", required=True, help="the experiment whose model scored --scored")
    compare.add_argument("--scored", type=Path, required=True, help="scored candidates of every pair (score stage)")
    compare.add_argument("--pairs-summary", type=Path, required=True, help="pairs_summary.csv of the summarize stage")
    compare.add_argument("--index", type=Path, required=True, help="index.parquet of the triplet dataset")
    compare.add_argument("--catalog", type=Path, required=True, help="the SN catalogue (CSV)")
    compare.add_argument("--out-dir", type=Path, required=True,
                         help="writes report.md, report.json, summary.csv, sn_recovery.csv")
    _add_common(compare)


def _add_microlensing_parsers(tracks) -> None:
    microlensing = tracks.add_parser("microlensing", help="microlensing: PSPL vs binary-lens light curves")
    stages = microlensing.add_subparsers(dest="stage", required=True, metavar="STAGE")

    simulate = stages.add_parser("simulate", help="simulate one shard of PSPL and binary-lens light curves")
    simulate.add_argument("--out-dir", type=Path, required=True, help="shard directory to write")
    simulate.add_argument("--shard", type=int, required=True, help="shard index (event ids follow from it)")
    simulate.add_argument("--events", type=int, required=True, help="events in the shard (half of each class)")
    simulate.add_argument("--epochs", type=int, default=1500, help="epochs of the time grid")
    simulate.add_argument("--duration-days", type=float, default=500.0, help="time span of the grid")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--settings", type=_json_or_yaml, default={},
                          help="priors, noise, split_fractions, pspl_like_max_deviation_sigma (JSON/YAML or @file)")
    _add_common(simulate)

    mask = stages.add_parser("mask", help="draw a cadence's observation masks for one shard")
    mask.add_argument("--events", type=Path, required=True, help="the shard's events.parquet")
    mask.add_argument("--cadences", type=Path, required=True, help="cadence table (.tsv)")
    mask.add_argument("--cadence", required=True, help="row of the cadence table to use")
    mask.add_argument("--out", type=Path, required=True, help="output mask (.npy, uint8, 1 = observed)")
    mask.add_argument("--epochs", type=int, default=1500)
    mask.add_argument("--duration-days", type=float, default=500.0)
    mask.add_argument("--seed", type=int, default=0)
    _add_common(mask)

    shard_inputs = argparse.ArgumentParser(add_help=False)
    shard_inputs.add_argument("--shards", type=Path, nargs="+", required=True, help="shard directories")
    shard_inputs.add_argument("--masks", type=Path, nargs="+", required=True,
                              help="the cadence's mask of each shard, in the same order")
    shard_inputs.add_argument("--threads", type=int, help="torch CPU threads")

    train = stages.add_parser("train", parents=[shard_inputs],
                              help="train the causal per-timestep CNN for one cadence")
    train.add_argument("--out-dir", type=Path, required=True, help="where model.pt, model.json, history.csv go")
    train.add_argument("--cadence", required=True)
    train.add_argument("--duration-days", type=float, default=500.0, help="time span of the grid (for the sidecar)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--model-options", type=_json_or_yaml, default={},
                       help="architecture options as JSON/YAML or @file")
    train.add_argument("--training-options", type=_json_or_yaml, default={},
                       help="trainer options as JSON/YAML or @file")
    train.add_argument("--work-dir", type=Path, help="checkpoints for resuming (default OUT_DIR/checkpoints)")
    _add_common(train)

    predict = stages.add_parser("predict", parents=[shard_inputs],
                                help="P(binary) at every step for every event of a split")
    predict.add_argument("--model", type=Path, required=True, help="model.pt")
    predict.add_argument("--model-json", type=Path, required=True, help="model.json beside it")
    predict.add_argument("--out-dir", type=Path, required=True)
    predict.add_argument("--split", choices=("train", "validation", "test"), default="test")
    predict.add_argument("--batch-size", type=int, default=256)
    _add_common(predict)

    evaluate = stages.add_parser("evaluate", help="metrics, early detection and detection times of one cadence")
    evaluate.add_argument("--evaluation-dir", type=Path, required=True, help="output of 'predict'")
    evaluate.add_argument("--out-dir", type=Path, required=True)
    evaluate.add_argument("--cadence", required=True)
    evaluate.add_argument("--fractions", type=float, nargs="+", default=[round(0.1 * k, 1) for k in range(1, 11)])
    evaluate.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95],
                          help="P(binary) thresholds for detection times")
    _add_common(evaluate)

    compare = stages.add_parser("compare", help="compare cadences: one report, tables and figures")
    compare.add_argument("--cadence-dirs", nargs="+", required=True, metavar="NAME=DIR",
                         help="each cadence's 'evaluate' output directory")
    compare.add_argument("--out-dir", type=Path, required=True)
    _add_common(compare)

    classify = stages.add_parser("classify", help="classify photometry files (time, magnitude, error) as PSPL or binary")
    classify.add_argument("files", type=Path, nargs="+", help="CSV or whitespace text; OGLE phot.dat works as is")
    classify.add_argument("--model", type=Path, required=True, help="model.pt of a trained cadence")
    classify.add_argument("--model-json", type=Path, help="its model.json (default: beside --model)")
    classify.add_argument("--flux", action="store_true", help="the value column is flux, not magnitude")
    classify.add_argument("--zeropoint", type=float, default=22.0, help="magnitude zero point for flux files")
    classify.add_argument("--start", type=float, help="time of the grid's first epoch (default: fit the latest data)")
    classify.add_argument("--output-dir", type=Path, help="write each file's P(binary) time series as CSV here")
    classify.add_argument("--summary", type=Path, help="write the summary table (CSV) here too")
    _add_common(classify)


def _named_dirs(items: list[str], option: str = "cadence-dirs") -> dict[str, Path]:
    named = {}
    for item in items:
        name, _, directory = item.partition("=")
        if not name or not directory:
            raise ConfigError(option, f"expected NAME=DIR, got {item!r}")
        named[name] = Path(directory)
    return named


def _run_microlensing(args: argparse.Namespace) -> None:
    if args.stage == "simulate":
        from astrodag.microlensing.simulation import SimulationSettings, simulate_shard, time_grid

        summary = simulate_shard(args.out_dir, args.shard, args.events, SimulationSettings.from_config(args.settings),
                                 time_grid(args.epochs, args.duration_days), args.seed, progress=args.progress)
        logger.info("simulated %s", json.dumps(summary, default=str))
    elif args.stage == "mask":
        from astrodag.microlensing.cadence import load_cadences, write_cadence_masks
        from astrodag.microlensing.simulation import time_grid

        cadences = load_cadences(args.cadences)
        if args.cadence not in cadences:
            raise ConfigError("cadence", f"{args.cadence!r} is not in {args.cadences} ({', '.join(cadences)})")
        write_cadence_masks(args.events, args.out, cadences[args.cadence], time_grid(args.epochs, args.duration_days),
                            args.seed, progress=args.progress)
    elif args.stage == "train":
        from astrodag.microlensing.experiment import train_cadence_model

        train_cadence_model(args.shards, args.masks, args.out_dir, cadence=args.cadence,
                            duration_days=args.duration_days, seed=args.seed, model_options=args.model_options,
                            training_options=args.training_options, threads=args.threads,
                            work_dir=args.work_dir, progress=args.progress)
    elif args.stage == "predict":
        from astrodag.microlensing.experiment import predict_split

        predict_split(args.model, args.model_json, args.shards, args.masks, args.out_dir, split=args.split,
                      batch_size=args.batch_size, threads=args.threads, progress=args.progress)
    elif args.stage == "evaluate":
        from astrodag.microlensing.analysis import evaluate_cadence

        evaluate_cadence(args.evaluation_dir, args.out_dir, args.cadence, fractions=tuple(args.fractions),
                         thresholds=tuple(args.thresholds))
    elif args.stage == "compare":
        from astrodag.microlensing.report import compare_cadences

        compare_cadences(_named_dirs(args.cadence_dirs), args.out_dir)
    elif args.stage == "classify":
        from astrodag.microlensing.classify import classify_files

        sidecar = args.model_json or args.model.with_name("model.json")
        summary = classify_files(args.files, args.model, sidecar, flux=args.flux, zeropoint=args.zeropoint,
                                 start=args.start, output_dir=args.output_dir)
        if args.summary:
            from astrodag.io import write_table

            write_table(args.summary, summary)
        columns = ["file", "epochs_observed", "p_binary_at_25pct", "p_binary_at_50pct", "p_binary_at_75pct",
                   "p_binary_last", "classification"]
        print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _run_supernova(args: argparse.Namespace) -> None:
    from astrodag.supernova.archive import commands as archive_commands
    from astrodag.supernova.imaging import commands as imaging_commands
    from astrodag.supernova.realbogus import commands as realbogus_commands, service_commands

    if any(module.run(args) for module in (archive_commands, imaging_commands, realbogus_commands,
                                            service_commands)):
        return
    if args.stage == "summarize":
        from astrodag.supernova.imaging.summary import summarize_imaging_track

        summarize_imaging_track(args.pairs, args.decisions, args.yield_summary, args.catalog, args.pair_dirs,
                                args.out_dir, dataset_summary=args.dataset_summary, truth=args.truth)
    elif args.stage == "compare":
        from astrodag.supernova.realbogus.report import compare_realbogus

        compare_realbogus(_named_dirs(args.experiments, "experiments"), args.deployed, args.scored,
                          args.pairs_summary, args.index, args.catalog, args.out_dir)


def _run_flares(args: argparse.Namespace) -> None:
    # Imported here so that `astrodag --help` stays fast and light.
    if args.stage == "simulate":
        from astrodag.flares.synthetic import write_synthetic_dataset

        summary = write_synthetic_dataset(args.keywords, args.events, n_regions=args.regions,
                                          cadence_minutes=args.cadence_minutes, seed=args.seed,
                                          progress=args.progress)
        if args.summary:
            from astrodag.io import write_json

            write_json(args.summary, summary)
        logger.info("simulated %s", json.dumps(summary, default=str))
    elif args.stage == "ingest":
        from astrodag.flares.dataset import prepare_dataset

        prepare_dataset(
            args.keywords, args.events, args.features, args.index, args.summary,
            window_steps=args.window_steps, cadence_minutes=args.cadence_minutes, stride=args.stride,
            horizons_hours=tuple(args.horizons), flare_classes=tuple(args.classes),
            split_fractions=_split_fractions(args.split_fractions), split_seed=args.split_seed,
            progress=args.progress,
        )
    elif args.stage == "train":
        from astrodag.flares.experiment import train_experiment

        train_experiment(
            args.features, args.index, args.out_dir, flare_class=args.flare_class, window_hours=args.window,
            seed=args.seed, model_name=args.model, model_options=args.model_options,
            training_options=args.training_options, threads=args.threads, work_dir=args.work_dir,
            progress=args.progress,
        )
    elif args.stage == "sweep":
        from astrodag.flares.sweep import sweep_experiment

        sweep_experiment(args.predictions, args.model_json, args.out_dir, start=args.start, stop=args.stop,
                         num=args.num, weights=args.weights)
    elif args.stage == "analyze":
        from astrodag.flares.analysis import analyze_study

        analyze_study(args.results, args.predictions, args.out_dir, confidence=args.confidence,
                      n_resamples=args.bootstrap_resamples, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log, verbose=args.verbose)
    try:
        if args.track == "flares":
            _run_flares(args)
        elif args.track == "microlensing":
            _run_microlensing(args)
        elif args.track == "supernova":
            _run_supernova(args)
        elif args.track == "serve":
            from astrodag.supernova.realbogus.service_commands import run_serve

            run_serve(args)
    except (AstrodagError, ValueError) as error:
        # Bad input or options: one readable line (the traceback goes to the log file only at --verbose).
        logger.debug("traceback", exc_info=True)
        logger.error("astrodag %s: %s", " ".join(filter(None, (args.track, getattr(args, "stage", None)))), error)
        return 2
    except Exception:
        logger.exception("astrodag %s failed", " ".join(filter(None, (args.track, getattr(args, "stage", None)))))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
