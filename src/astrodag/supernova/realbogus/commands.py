"""CLI stages of the real/bogus classifier: ``astrodag supernova train|evaluate|score|export-onnx|compare``.

Only argparse-level code is imported at module level so that ``astrodag --help`` stays fast;
each handler imports torch and the numerical modules when its stage runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import add_model_files, add_stage, json_or_yaml, named_dirs, sidecar_path

logger = logging.getLogger("astrodag.supernova.realbogus")


def add_stages(stages) -> None:
    """Add the real/bogus stages to the ``supernova`` track's subparsers."""
    train = add_stage(stages, "train", _train, "train the real/bogus classifier; threshold chosen on validation")
    train.add_argument("--triplets-dir", type=Path, required=True,
                       help="build-dataset stage output: {train,validation,test}.npy and index.parquet")
    train.add_argument("--out-dir", type=Path, required=True,
                       help="writes model.pt, model.json, history.csv, checkpoints/ (a rerun resumes)")
    train.add_argument("--architecture", choices=("braai", "resnet18"), default="braai", help="network (default braai)")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling, dropout and augmentation")
    train.add_argument("--settings", type=json_or_yaml, default={},
                       help="supernova.realbogus settings as JSON/YAML or @file")
    train.add_argument("--missions-train", nargs="+", metavar="MISSION",
                       help="train and validate on these missions only (cross-mission experiment)")
    train.add_argument("--missions-test", nargs="+", metavar="MISSION",
                       help="missions the evaluate stage tests on (recorded in model.json)")
    train.add_argument("--threads", type=int, help="CPU threads for torch")

    evaluate = add_stage(stages, "evaluate", _evaluate, "test-split metrics and figures of a trained real/bogus model")
    evaluate.add_argument("--model-dir", type=Path, required=True, help="directory with model.pt and model.json")
    evaluate.add_argument("--triplets-dir", type=Path, required=True, help="the dataset the model was trained on")
    evaluate.add_argument("--out-dir", type=Path, required=True,
                          help="writes metrics.json, predictions.parquet, thresholds.csv, pr.png, roc.png, "
                               "reliability.png, confusion_matrix.png")
    evaluate.add_argument("--settings", type=json_or_yaml, default={},
                          help="supernova.realbogus settings as JSON/YAML or @file")
    evaluate.add_argument("--missions-test", nargs="+", metavar="MISSION",
                          help="test on these missions (default: as recorded at training, else all)")
    evaluate.add_argument("--threads", type=int, help="CPU threads for torch")

    score = add_stage(stages, "score", _score, "score the candidates of differenced pairs with a real/bogus model")
    add_model_files(score, "model.pt of a trained real/bogus model")
    score.add_argument("--pair-dirs", type=Path, nargs="+", required=True,
                       help="pair directories (difference.fits, significance.fits, mask.fits, candidates.csv)")
    score.add_argument("--out", type=Path, required=True,
                       help="scored candidate table (.csv or .parquet); a summary goes beside it as .json")
    score.add_argument("--stamps-dir", type=Path, help="FITS and PNG stamps of the top candidates")
    score.add_argument("--settings", type=json_or_yaml, default={},
                       help="supernova.scoring settings as JSON/YAML or @file")
    score.add_argument("--threads", type=int, help="CPU threads for torch")

    export = add_stage(stages, "export-onnx", _export_onnx,
                       "export a real/bogus model to ONNX and check it with ONNX Runtime")
    add_model_files(export, "model.pt of a trained real/bogus model")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file")
    export.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the comparison with torch through ONNX Runtime")

    compare = add_stage(stages, "compare", _compare, "compare the real/bogus experiments; SN recovery end to end")
    compare.add_argument("--experiments", nargs="+", required=True, metavar="NAME=DIR",
                         help="each experiment's directory (model/ and evaluation/ inside)")
    compare.add_argument("--deployed", required=True, help="the experiment whose model scored --scored")
    compare.add_argument("--scored", type=Path, required=True, help="scored candidates of every pair (score stage)")
    compare.add_argument("--pairs-summary", type=Path, required=True, help="pairs_summary.csv of the report stage")
    compare.add_argument("--index", type=Path, required=True, help="index.parquet of the triplet dataset")
    compare.add_argument("--catalog", type=Path, required=True, help="the SN catalogue (CSV)")
    compare.add_argument("--out-dir", type=Path, required=True,
                         help="writes report.md, report.json, summary.csv, sn_recovery.csv")


def _train(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.training import RealBogusSettings, train_realbogus

    sidecar = train_realbogus(args.triplets_dir, args.out_dir, args.architecture, args.seed,
                              RealBogusSettings.from_config(args.settings), missions_train=args.missions_train,
                              missions_test=args.missions_test, threads=args.threads, progress=args.progress)
    logger.info("train: %s", json.dumps({"threshold": sidecar["threshold"],
                                         "validation_aucpr": sidecar["validation_metrics"]["aucpr"],
                                         "epochs": sidecar["epochs_run"], "seconds": sidecar["training_seconds"]}))


def _evaluate(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.training import RealBogusSettings, evaluate_realbogus

    metrics = evaluate_realbogus(args.model_dir, args.triplets_dir, args.out_dir,
                                 RealBogusSettings.from_config(args.settings), missions_test=args.missions_test,
                                 threads=args.threads)
    logger.info("evaluate: %s", json.dumps({"aucpr": metrics["aucpr"], "roc_auc": metrics["roc_auc"],
                                            "fnr": metrics["at_threshold"]["fnr"],
                                            "fpr": metrics["at_threshold"]["fpr"]}))


def _score(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.pairs import score_batch
    from astrodag.supernova.realbogus.scoring import RealBogusScorer, ScoringSettings

    settings = ScoringSettings.from_config(args.settings)
    scorer = RealBogusScorer.from_files(args.model, sidecar_path(args), device=settings.device, threads=args.threads,
                                        batch_size=settings.batch_size, channels_last=settings.channels_last,
                                        precision=settings.precision)
    summary = score_batch(args.pair_dirs, scorer, args.out, args.stamps_dir, settings, progress=args.progress)
    logger.info("score: %s", json.dumps(summary))


def _export_onnx(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.model import export_realbogus_onnx

    record = export_realbogus_onnx(args.model, sidecar_path(args), args.out, check=args.check)
    logger.info("export-onnx: %s", json.dumps(record))


def _compare(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.report import compare_realbogus

    compare_realbogus(named_dirs(args.experiments, "experiments"), args.deployed, args.scored, args.pairs_summary,
                      args.index, args.catalog, args.out_dir)
