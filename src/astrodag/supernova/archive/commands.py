"""``astrodag supernova`` stages of the archive package: simulate, query, pair, download.

Only argparse-level code is imported here; each handler imports its stage's modules when it runs,
so that ``astrodag --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import SettingDefault, add_stage, json_or_yaml

BACKENDS = ("local", "mast")

logger = logging.getLogger("astrodag.supernova.archive")


def add_stages(stages) -> None:
    """Add the archive stages to the ``supernova`` track's subparsers."""
    simulate = add_stage(stages, "simulate", _simulate, "write a synthetic multi-mission survey as a local archive")
    simulate.add_argument("--catalog", type=Path, required=True, help="supernova catalogue CSV")
    simulate.add_argument("--out-dir", type=Path, required=True,
                          help="gets observations.csv, files/, truth.csv and summary.json")
    simulate.add_argument("--settings", type=json_or_yaml, default={},
                          help="survey settings (supernova.survey keys) as JSON/YAML or @file")
    simulate.add_argument("--seed", type=int, required=True, help="seed of everything random")

    query = add_stage(stages, "query", _query, "query one supernova's image observations")
    query.add_argument("--catalog", type=Path, required=True, help="supernova catalogue CSV")
    query.add_argument("--sn", required=True, help="the supernova (sn_name or its file-safe name)")
    _add_backend(query)
    query.add_argument("--radius-arcmin", type=float,
                       default=SettingDefault("astrodag.supernova.archive.backends:QuerySettings", "radius_arcmin"),
                       help="footprints within this distance of the supernova (default: %(default)s)")
    query.add_argument("--missions", nargs="+", metavar="M", help="only these obs_collection values")
    query.add_argument("--cache-dir", type=Path, help="keep query answers here and reuse them")
    query.add_argument("--out", type=Path, required=True, help="observation table (CSV) with sn_name")

    pair = add_stage(stages, "pair", _pair, "choose reference/science pairs for every supernova")
    pair.add_argument("--observations", type=Path, nargs="+", required=True, help="query outputs")
    pair.add_argument("--catalog", type=Path, required=True, help="supernova catalogue CSV")
    pair.add_argument("--settings", type=json_or_yaml, default={},
                      help="pair settings (supernova.pairing keys) as JSON/YAML or @file")
    pair.add_argument("--pairs", type=Path, required=True, help="accepted pairs (CSV)")
    pair.add_argument("--decisions", type=Path, required=True, help="every decision with its reason (CSV)")
    pair.add_argument("--yield-summary", type=Path, required=True, help="yield per mission (CSV)")

    download = add_stage(stages, "download", _download, "fetch one pair's images as plain FITS")
    download.add_argument("--pairs", type=Path, required=True, help="pairs.csv of the pair stage")
    download.add_argument("--pair-id", required=True, help="the pair to fetch")
    _add_backend(download)
    download.add_argument("--cache-dir", type=Path, required=True, help="download cache (originals stay here)")
    download.add_argument("--out-dir", type=Path, required=True,
                          help="gets science.fits, reference.fits and download.json")


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, required=True, help="where the observations come from")
    parser.add_argument("--archive-dir", type=Path, help="the local archive (needed with --backend local)")
    parser.add_argument("--settings", type=json_or_yaml, default={},
                        help="backend settings (supernova.archive keys: transfer, min_calib_level) as JSON/YAML")


def _simulate(args: argparse.Namespace) -> None:
    from astrodag.supernova.archive.synthetic import SurveySettings, generate_survey

    summary = generate_survey(args.catalog, args.out_dir, SurveySettings.from_config(args.settings), args.seed,
                              progress=args.progress)
    logger.info("survey %s", json.dumps({key: value for key, value in summary.items() if key != "settings"}))


def _query(args: argparse.Namespace) -> None:
    from astrodag.supernova.archive.backends import BackendSettings, query_supernova

    backend = BackendSettings.from_config(args.settings).backend(args.backend, args.archive_dir)
    query_supernova(args.catalog, args.sn, backend, args.out, radius_arcmin=args.radius_arcmin,
                    missions=args.missions, cache_dir=args.cache_dir)


def _pair(args: argparse.Namespace) -> None:
    from astrodag.supernova.archive.pairing import PairSettings, pair_survey

    summary = pair_survey(args.observations, args.catalog, PairSettings.from_config(args.settings), args.pairs,
                          args.decisions, args.yield_summary)
    logger.info("pair %s", json.dumps(summary))


def _download(args: argparse.Namespace) -> None:
    from astrodag.supernova.archive.backends import BackendSettings
    from astrodag.supernova.archive.download import download_pair

    backend = BackendSettings.from_config(args.settings).backend(args.backend, args.archive_dir)
    download_pair(args.pairs, args.pair_id, backend, args.cache_dir, args.out_dir)
