"""CLI stages of the imaging package: ``astrodag supernova difference|detect|triplets|build-dataset|report``.

Only argparse-level code is imported at module level so that ``astrodag --help`` stays fast;
each handler imports the numerical modules when its stage runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import add_stage, json_or_yaml

logger = logging.getLogger("astrodag.supernova.imaging")


def add_stages(stages) -> None:
    """Add this package's stages to the ``supernova`` track's subparsers."""
    difference = add_stage(stages, "difference", _difference,
                           "align, subtract (ZOGY) and inject fakes for one image pair")
    difference.add_argument("--science", type=Path, required=True, help="science (new) image, FITS")
    difference.add_argument("--reference", type=Path, required=True, help="reference image, FITS")
    difference.add_argument("--out-dir", type=Path, required=True,
                            help="pair directory: difference.fits, significance.fits, mask.fits, injections.csv, "
                                 "difference.json")
    difference.add_argument("--settings", type=json_or_yaml, default={},
                            help="supernova.difference settings (align, background, psf, subtract, inject) as "
                                 "JSON/YAML or @file")
    difference.add_argument("--seed", type=int, default=0, help="seed of the fake-source injection")

    detect = add_stage(stages, "detect", _detect, "5-sigma candidates with shape cuts on a differenced pair")
    detect.add_argument("--pair-dir", type=Path, required=True, help="directory written by the difference stage")
    detect.add_argument("--settings", type=json_or_yaml, default={},
                        help="supernova.detection settings as JSON/YAML or @file")
    detect.add_argument("--out", type=Path, help="candidates table (default PAIR_DIR/candidates.csv)")

    triplets = add_stage(stages, "triplets", _triplets,
                         "real/bogus (science, reference, difference) cut-outs of one pair")
    triplets.add_argument("--pair-dir", type=Path, required=True, help="directory of the differenced, detected pair")
    triplets.add_argument("--pairs", type=Path, required=True, help="pairs.csv (sn_name, mission, filter per pair)")
    triplets.add_argument("--pair-id", required=True, help="the pair's pair_id in pairs.csv")
    triplets.add_argument("--catalog", type=Path, required=True,
                          help="supernova catalogue CSV (sn_name, ra, dec, discovery_mjd, type, redshift, host); "
                               "no bogus example is cut at any of its positions")
    triplets.add_argument("--settings", type=json_or_yaml, default={},
                          help="supernova.triplets settings as JSON/YAML or @file")
    triplets.add_argument("--detection-settings", type=json_or_yaml, default={},
                          help="supernova.detection settings as JSON/YAML or @file (its threshold: the least "
                               "expected significance of a fake labelled real)")
    triplets.add_argument("--seed", type=int, default=0, help="seed of the random artefact positions")
    triplets.add_argument("--out", type=Path, help="output .npz (default PAIR_DIR/triplets.npz)")

    dataset = add_stage(stages, "build-dataset", _build_dataset,
                        "split, balanced, augmented triplet dataset from all pairs")
    dataset.add_argument("--triplets", type=Path, nargs="+", required=True,
                         help="triplets.npz of each pair; a directory stands for the .npz files in it")
    dataset.add_argument("--out-dir", type=Path, required=True,
                         help="writes {train,validation,test}.npy, index.parquet, summary.json, previews/")
    dataset.add_argument("--settings", type=json_or_yaml, default={},
                         help="supernova.dataset settings as JSON/YAML or @file")
    dataset.add_argument("--seed", type=int, default=0, help="seed of the split, subsampling and augmentation")
    dataset.add_argument("--pairs", type=Path,
                         help="pairs.csv of the pairing stage: pairs sharing an observation join one field")

    report = add_stage(stages, "report", _report, "the imaging track's report: pairs, recovery, candidates, triplets")
    report.add_argument("--pairs", type=Path, required=True, help="pairs.csv of the pairing stage")
    report.add_argument("--decisions", type=Path, required=True, help="decisions.csv of the pairing stage")
    report.add_argument("--yield-summary", type=Path, required=True, help="yield.csv of the pairing stage")
    report.add_argument("--catalog", type=Path, required=True, help="the SN catalogue (CSV)")
    report.add_argument("--pair-dirs", type=Path, nargs="*", default=[],
                        help="each pair's directory (difference.json, candidates.csv, injections.csv)")
    report.add_argument("--dataset-summary", type=Path, help="summary.json of the triplet dataset")
    report.add_argument("--truth", type=Path, help="truth.csv of the synthetic survey (injected SN fluxes)")
    report.add_argument("--out-dir", type=Path, required=True,
                        help="writes imaging_report.md, imaging_report.json, pairs_summary.csv")


def _pair_row(pairs: Path, pair_id: str, catalog: Path) -> dict:
    """sn_name, mission, filter of a pair, its supernova's position and every catalogue position."""
    from astrodag.errors import InputDataError
    from astrodag.io import read_table

    tables = {
        pairs: read_table(pairs, ("pair_id", "sn_name", "mission", "filter"),
                          dict.fromkeys(("pair_id", "sn_name", "mission", "filter"), str), comment="#"),
        catalog: read_table(catalog, ("sn_name", "ra", "dec"), {"sn_name": str, "ra": float, "dec": float},
                            comment="#"),
    }
    rows = tables[pairs][tables[pairs]["pair_id"] == pair_id]
    if len(rows) != 1:
        raise InputDataError(pairs, f"has {len(rows)} rows with pair_id {pair_id!r} (expected 1)")
    row = rows.iloc[0]
    sn = tables[catalog][tables[catalog]["sn_name"].str.strip() == str(row["sn_name"]).strip()]
    if len(sn) != 1:
        raise InputDataError(catalog, f"has {len(sn)} rows for {row['sn_name']!r} (expected 1)")
    return {"sn_name": str(row["sn_name"]), "mission": str(row["mission"]), "filter": str(row["filter"]),
            "sn_ra": float(sn.iloc[0]["ra"]), "sn_dec": float(sn.iloc[0]["dec"]),
            "catalog_positions": tables[catalog][["ra", "dec"]].to_numpy(float).tolist()}


def _difference(args: argparse.Namespace) -> None:
    from astrodag.supernova.imaging.pipeline import DifferenceSettings, difference_pair

    record = difference_pair(args.science, args.reference, args.out_dir, DifferenceSettings.from_config(args.settings),
                             seed=args.seed)
    logger.info("difference: %s", json.dumps(record["seconds"]))


def _detect(args: argparse.Namespace) -> None:
    from astrodag.supernova.imaging.detect import DetectSettings
    from astrodag.supernova.imaging.pipeline import detect_pair

    summary = detect_pair(args.pair_dir, DetectSettings.from_config(args.settings), out=args.out)
    logger.info("detect: %s", json.dumps(summary))


def _triplets(args: argparse.Namespace) -> None:
    from astrodag.supernova.imaging.detect import DetectSettings
    from astrodag.supernova.imaging.triplets import TripletSettings, cut_triplets

    settings = TripletSettings.from_config(args.settings)
    threshold = DetectSettings.from_config(args.detection_settings).threshold
    pair = _pair_row(args.pairs, args.pair_id, args.catalog)
    summary = cut_triplets(args.pair_dir, pair["sn_ra"], pair["sn_dec"], args.pair_id, pair["sn_name"],
                           pair["mission"], pair["filter"], settings, seed=args.seed, out=args.out,
                           catalog_positions=pair["catalog_positions"], detection_threshold=threshold)
    logger.info("triplets: %s", json.dumps(summary))


def _triplet_files(paths: list[Path]) -> list[Path]:
    """The files given, with each directory replaced by its .npz files in name order."""
    files = []
    for path in paths:
        files.extend(sorted(path.glob("*.npz")) if path.is_dir() else [path])
    return files


def _build_dataset(args: argparse.Namespace) -> None:
    from astrodag.supernova.imaging.triplets import DatasetSettings, build_dataset

    summary = build_dataset(_triplet_files(args.triplets), args.out_dir, DatasetSettings.from_config(args.settings),
                            seed=args.seed, pairs=args.pairs)
    logger.info("dataset: %s", json.dumps(summary["triplets"]))


def _report(args: argparse.Namespace) -> None:
    from astrodag.supernova.imaging.summary import summarize_imaging_track

    summarize_imaging_track(args.pairs, args.decisions, args.yield_summary, args.catalog, args.pair_dirs,
                            args.out_dir, dataset_summary=args.dataset_summary, truth=args.truth)
