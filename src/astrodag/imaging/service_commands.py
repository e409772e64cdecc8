"""CLI of the real/bogus service and active learning.

``astrodag supernova review|ingest-reviews`` (stages of the supernova track, wired with
:func:`add_parsers` / :func:`run`) and the top-level ``astrodag serve`` (:func:`add_serve_parser`
/ :func:`run_serve`). Only argparse, pathlib and json are imported at module level so that
``astrodag --help`` stays fast; the service and torch are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = ("review", "ingest-reviews")


def add_parsers(stages, common) -> None:
    """Add ``review`` and ``ingest-reviews`` to the ``supernova`` track's subparsers.

    Parameters
    ----------
    stages : argparse._SubParsersAction
        The track's subparsers.
    common : callable
        Adds ``--log/--verbose/--progress`` to a parser.
    """
    review = stages.add_parser("review", help="queue the most uncertain real/bogus candidates for human review")
    review.add_argument("--predictions", type=Path, required=True,
                        help="scored candidates (.parquet/.csv: score, pair_id, x, y, optional row into --triplets), "
                             "e.g. the evaluation's predictions.parquet")
    review.add_argument("--triplets", type=Path, required=True,
                        help="their normalised cut-outs (.npy, or .npz with 'cutouts'), e.g. triplets/test.npy")
    review.add_argument("--out-dir", type=Path, required=True,
                        help="writes review_queue.csv, review_triplets.npz and stamps/")
    review.add_argument("--count", type=int, default=100, help="candidates to queue (default 100)")
    threshold = review.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--model-json", type=Path, help="the model's sidecar; its validation threshold is used")
    threshold.add_argument("--threshold", type=float, help="decision threshold on P(real)")
    review.add_argument("--pairs", type=Path,
                        help="pairs.csv, for sn_name/mission/filter when the predictions lack them")
    review.add_argument("--no-stamps", dest="stamps", action="store_false", help="skip the PNG stamps")
    common(review)

    ingest = stages.add_parser("ingest-reviews", help="reviewed labels -> triplet files for the next dataset")
    ingest.add_argument("--reviews", type=Path, required=True, help="review_queue.csv with its label column filled")
    ingest.add_argument("--out-dir", type=Path, required=True,
                        help="writes one {pair_id}.npz per pair (the triplets.npz layout) and ingested.json")
    ingest.add_argument("--triplets", type=Path,
                        help="the queue's cut-outs (default: review_triplets.npz beside --reviews)")
    common(ingest)


def add_serve_parser(tracks, common) -> None:
    """Add the top-level ``serve`` command to the ``astrodag`` subparsers.

    Parameters
    ----------
    tracks : argparse._SubParsersAction
        The top-level subparsers (``dest="track"``).
    common : callable
        Adds ``--log/--verbose/--progress`` to a parser.
    """
    serve = tracks.add_parser("serve", help="HTTP service scoring real/bogus triplets (POST /score, GET /health)")
    serve.add_argument("--model", type=Path, required=True, help="model.pt of a trained real/bogus model")
    serve.add_argument("--model-json", type=Path, help="its sidecar (default: --model with the suffix .json)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the unauthenticated service)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    # Defaults live in astrodag.imaging.service (not imported here: FastAPI is slow to import).
    serve.add_argument("--max-batch", type=int, help="most triplets per request (default 1024)")
    serve.add_argument("--max-mb", type=float, help="largest request body in MiB (default 64)")
    serve.add_argument("--max-connections", type=int, default=64,
                       help="concurrent connections before answering 503 (default 64; bounds memory with --max-mb)")
    serve.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda:0 ...")
    serve.add_argument("--threads", type=int, help="torch CPU threads")
    serve.add_argument("--forward-batch", type=int, help="triplets per forward pass (default 64 on CPU, 1024 on GPU)")
    common(serve)


def _sidecar_threshold(path: Path) -> float:
    from astrodag.errors import InputDataError

    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        threshold = json.loads(path.read_text())["threshold"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputDataError(path, f"not a real/bogus model sidecar with a 'threshold' ({error})") from error
    return float(threshold)


def run(args: argparse.Namespace) -> bool:
    """Run ``args.stage`` if it is one of this module's; return False if it is not."""
    import logging

    if getattr(args, "stage", None) not in STAGES:
        return False
    log = logging.getLogger("astrodag.imaging")
    if args.stage == "review":
        from astrodag.imaging.review import write_review_queue

        threshold = args.threshold if args.model_json is None else _sidecar_threshold(args.model_json)
        summary = write_review_queue(args.predictions, args.triplets, args.out_dir, count=args.count,
                                     threshold=threshold, pairs=args.pairs, stamps=args.stamps)
        log.info("review: %s", json.dumps(summary))
    else:
        from astrodag.imaging.review import ingest_reviews

        summary = ingest_reviews(args.reviews, args.out_dir, triplets=args.triplets)
        log.info("ingest-reviews: %s", json.dumps({k: v for k, v in summary.items() if k != "files"}))
    return True


def run_serve(args: argparse.Namespace) -> bool:
    """Run ``astrodag serve`` if ``args.track`` is ``serve``; return False if it is not."""
    if getattr(args, "track", None) != "serve":
        return False
    from astrodag.errors import ConfigError, InputDataError
    from astrodag.imaging.service import serve

    # Checked here so that a wrong path is one clear line, not a failed server start-up.
    sidecar = args.model_json or args.model.with_suffix(".json")
    for path in (args.model, sidecar):
        if not path.is_file():
            raise InputDataError(path, "missing: train a real/bogus model first (astrodag supernova train)")
    limits = {}
    if args.max_batch is not None:
        if args.max_batch < 1:
            raise ConfigError("serve.max-batch", f"must be at least 1, got {args.max_batch}")
        limits["max_batch"] = args.max_batch
    if args.forward_batch is not None:
        if args.forward_batch < 1:
            raise ConfigError("serve.forward-batch", f"must be at least 1, got {args.forward_batch}")
        limits["forward_batch"] = args.forward_batch
    if args.max_mb is not None:
        if not args.max_mb > 0:
            raise ConfigError("serve.max-mb", f"must be positive, got {args.max_mb}")
        limits["max_bytes"] = int(args.max_mb * 2 ** 20)
    if args.max_connections < 1:
        raise ConfigError("serve.max-connections", f"must be at least 1, got {args.max_connections}")
    serve(args.model, host=args.host, port=args.port, model_json=args.model_json, device=args.device,
          threads=args.threads, max_connections=args.max_connections, **limits)
    return True
