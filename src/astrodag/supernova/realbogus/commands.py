"""CLI stages of the real/bogus classifier: ``astrodag supernova train|evaluate|score|export-onnx``.

Only argparse, pathlib and json are imported at module level so that ``astrodag --help``
stays fast; torch and the numerical modules are imported when a stage runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = ("train", "evaluate", "score", "export-onnx")


def add_parsers(stages, common) -> None:
    """Add the real/bogus stages to the ``supernova`` track's subparsers.

    Parameters
    ----------
    stages : argparse._SubParsersAction
        The track's subparsers.
    common : callable
        Adds ``--log/--verbose/--progress`` to a parser.
    """
    from astrodag.cli import _json_or_yaml

    train = stages.add_parser("train", help="train the real/bogus classifier; threshold chosen on validation")
    train.add_argument("--triplets-dir", type=Path, required=True,
                       help="dataset stage output: {train,validation,test}.npy and index.parquet")
    train.add_argument("--out-dir", type=Path, required=True,
                       help="writes model.pt, model.json, history.csv, checkpoints/ (a rerun resumes)")
    train.add_argument("--architecture", choices=("braai", "resnet18"), default="braai", help="network (default braai)")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling, dropout and augmentation")
    train.add_argument("--settings", type=_json_or_yaml, default={},
                       help="supernova.realbogus settings as JSON/YAML or @file")
    train.add_argument("--missions-train", nargs="+", metavar="MISSION",
                       help="train and validate on these missions only (cross-mission experiment)")
    train.add_argument("--missions-test", nargs="+", metavar="MISSION",
                       help="missions the evaluate stage tests on (recorded in model.json)")
    train.add_argument("--threads", type=int, help="CPU threads for torch")
    common(train)

    evaluate = stages.add_parser("evaluate", help="test-split metrics and figures of a trained real/bogus model")
    evaluate.add_argument("--model-dir", type=Path, required=True, help="directory with model.pt and model.json")
    evaluate.add_argument("--triplets-dir", type=Path, required=True, help="the dataset the model was trained on")
    evaluate.add_argument("--out-dir", type=Path, required=True,
                          help="writes metrics.json, predictions.parquet, thresholds.csv, pr.png, roc.png, "
                               "reliability.png, confusion_matrix.png")
    evaluate.add_argument("--settings", type=_json_or_yaml, default={},
                          help="supernova.realbogus settings as JSON/YAML or @file")
    evaluate.add_argument("--missions-test", nargs="+", metavar="MISSION",
                          help="test on these missions (default: as recorded at training, else all)")
    evaluate.add_argument("--threads", type=int, help="CPU threads for torch")
    common(evaluate)

    score = stages.add_parser("score", help="score the candidates of differenced pairs with a real/bogus model")
    score.add_argument("--model", type=Path, required=True, help="model.pt")
    score.add_argument("--model-json", type=Path, help="its sidecar (default MODEL with suffix .json)")
    score.add_argument("--pair-dirs", type=Path, nargs="+", required=True,
                       help="pair directories (difference.fits, significance.fits, mask.fits, candidates.csv)")
    score.add_argument("--out", type=Path, required=True,
                       help="scored candidate table (.csv or .parquet); a summary goes beside it as .json")
    score.add_argument("--stamps-dir", type=Path, help="FITS and PNG stamps of the top candidates")
    score.add_argument("--settings", type=_json_or_yaml, default={},
                       help="supernova.scoring settings as JSON/YAML or @file")
    score.add_argument("--threads", type=int, help="CPU threads for torch")
    common(score)

    export = stages.add_parser("export-onnx", help="export a real/bogus model to ONNX and check it with ONNX Runtime")
    export.add_argument("--model", type=Path, required=True, help="model.pt")
    export.add_argument("--model-json", type=Path, help="its sidecar (default MODEL with suffix .json)")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file")
    export.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the comparison with torch through ONNX Runtime")
    common(export)


def run(args: argparse.Namespace) -> bool:
    """Run ``args.stage`` if it is one of these stages; return False if it is not."""
    import logging

    if getattr(args, "stage", None) not in STAGES:
        return False
    log = logging.getLogger("astrodag.supernova.imaging")
    if args.stage == "train":
        from astrodag.supernova.realbogus.training import RealBogusSettings, train_realbogus

        sidecar = train_realbogus(args.triplets_dir, args.out_dir, args.architecture, args.seed,
                                  RealBogusSettings.from_config(args.settings), missions_train=args.missions_train,
                                  missions_test=args.missions_test, threads=args.threads, progress=args.progress)
        log.info("train: %s", json.dumps({"threshold": sidecar["threshold"],
                                          "validation_aucpr": sidecar["validation_metrics"]["aucpr"],
                                          "epochs": sidecar["epochs_run"], "seconds": sidecar["training_seconds"]}))
    elif args.stage == "evaluate":
        from astrodag.supernova.realbogus.training import RealBogusSettings, evaluate_realbogus

        metrics = evaluate_realbogus(args.model_dir, args.triplets_dir, args.out_dir,
                                     RealBogusSettings.from_config(args.settings), missions_test=args.missions_test,
                                     threads=args.threads)
        log.info("evaluate: %s", json.dumps({"aucpr": metrics["aucpr"], "roc_auc": metrics["roc_auc"],
                                             "fnr": metrics["at_threshold"]["fnr"],
                                             "fpr": metrics["at_threshold"]["fpr"]}))
    elif args.stage == "score":
        from astrodag.supernova.realbogus.pairs import score_batch
        from astrodag.supernova.realbogus.scoring import RealBogusScorer, ScoringSettings

        settings = ScoringSettings.from_config(args.settings)
        scorer = RealBogusScorer.from_files(args.model, args.model_json, device=settings.device, threads=args.threads,
                                            batch_size=settings.batch_size, channels_last=settings.channels_last,
                                            precision=settings.precision)
        summary = score_batch(args.pair_dirs, scorer, args.out, args.stamps_dir, settings, progress=args.progress)
        log.info("score: %s", json.dumps(summary))
    else:
        from astrodag.models.onnx_export import export_onnx

        record = export_onnx(args.model, args.model_json, args.out, check=args.check)
        log.info("export-onnx: %s", json.dumps(record))
    return True
