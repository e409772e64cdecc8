"""CLI of the real/bogus service and active learning: ``astrodag supernova review|ingest-reviews|serve``.

Only argparse-level code is imported at module level so that ``astrodag --help`` stays fast;
the service and torch are imported when a stage runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from astrodag.cli_support import add_model_files, add_stage, sidecar_path

logger = logging.getLogger("astrodag.supernova.realbogus")


def add_stages(stages) -> None:
    """Add ``review``, ``ingest-reviews`` and ``serve`` to the ``supernova`` track's subparsers."""
    review = add_stage(stages, "review", _review, "queue the most uncertain newly scored candidates for human review")
    review.add_argument("--scored", type=Path, required=True,
                        help="the score stage's candidate table (.parquet/.csv: pair_id, x, y, score, ...)")
    review.add_argument("--pair-dirs", type=Path, nargs="+", required=True,
                        help="the scored pair directories; the queued candidates are cut again from their images")
    review.add_argument("--model-json", type=Path, required=True,
                        help="sidecar of the model that scored them (threshold, normalisation, cut-out size)")
    review.add_argument("--out-dir", type=Path, required=True,
                        help="writes review_queue.csv, review_triplets.npz and stamps/")
    review.add_argument("--count", type=int, default=100, help="candidates to queue (default 100)")
    review.add_argument("--pairs", type=Path,
                        help="pairs.csv, for sn_name/mission/filter (needed to ingest the reviews)")
    review.add_argument("--no-stamps", dest="stamps", action="store_false", help="skip the PNG stamps")

    ingest = add_stage(stages, "ingest-reviews", _ingest_reviews,
                       "reviewed labels -> triplet files for the next dataset")
    ingest.add_argument("--reviews", type=Path, required=True, help="review_queue.csv with its label column filled")
    ingest.add_argument("--out-dir", type=Path, required=True,
                        help="writes one {pair_id}.npz per pair (the triplets.npz layout) and ingested.json")
    ingest.add_argument("--triplets", type=Path,
                        help="the queue's cut-outs (default: review_triplets.npz beside --reviews)")

    serve = add_stage(stages, "serve", _serve, "HTTP service scoring real/bogus triplets (POST /score, GET /health)")
    add_model_files(serve, "model.pt of a trained real/bogus model")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the unauthenticated service)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    # Defaults live in astrodag.supernova.realbogus.service (not imported here: FastAPI is slow to import).
    serve.add_argument("--max-batch", type=int, help="most triplets per request (default 1024)")
    serve.add_argument("--max-mb", type=float,
                       help="largest request body in MiB (default 64; less when --max-batch triplets need less)")
    serve.add_argument("--max-json-mb", type=float, help="largest JSON request body in MiB (default 16)")
    serve.add_argument("--max-heavy", type=int,
                       help="requests over 1 MiB handled at once per worker; more get 503 after 2 s (default 2)")
    serve.add_argument("--max-connections", type=int, default=64,
                       help="concurrent connections before answering 503 (default 64)")
    serve.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda:0 ...")
    serve.add_argument("--threads", type=int,
                       help="torch CPU threads per worker (default: torch's; with --workers, the cores divided "
                            "among them)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes on the port, each with the model (default 1; on a CPU, 2 workers of "
                            "1 thread score about 15 %% more than 1 of 2 threads on 2 cores)")
    serve.add_argument("--forward-batch", type=int, help="triplets per forward pass (default 64 on CPU, 1024 on GPU)")
    serve.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                       help="auto (default): bfloat16 on a CPU with AVX512-BF16/AMX-BF16, else float32 (GPUs too); "
                            "GET /health reports the one in use")


def _review(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.review import write_review_queue

    summary = write_review_queue(args.scored, args.pair_dirs, args.model_json, args.out_dir, count=args.count,
                                 pairs=args.pairs, stamps=args.stamps)
    logger.info("review: %s", json.dumps(summary))


def _ingest_reviews(args: argparse.Namespace) -> None:
    from astrodag.supernova.realbogus.review import ingest_reviews

    summary = ingest_reviews(args.reviews, args.out_dir, triplets=args.triplets)
    logger.info("ingest-reviews: %s", json.dumps({k: v for k, v in summary.items() if k != "files"}))


def _serve(args: argparse.Namespace) -> None:
    """Check the options, then serve until interrupted."""
    from astrodag.errors import ConfigError, InputDataError
    from astrodag.supernova.realbogus.service import serve

    # Checked here so that a wrong path is one clear line, not a failed server start-up.
    sidecar = sidecar_path(args)
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
    if args.max_json_mb is not None:
        if not args.max_json_mb > 0:
            raise ConfigError("serve.max-json-mb", f"must be positive, got {args.max_json_mb}")
        limits["max_json_bytes"] = int(args.max_json_mb * 2 ** 20)
    if args.max_heavy is not None:
        if args.max_heavy < 1:
            raise ConfigError("serve.max-heavy", f"must be at least 1, got {args.max_heavy}")
        limits["max_heavy"] = args.max_heavy
    if args.max_connections < 1:
        raise ConfigError("serve.max-connections", f"must be at least 1, got {args.max_connections}")
    if args.workers < 1:
        raise ConfigError("serve.workers", f"must be at least 1, got {args.workers}")
    serve(args.model, host=args.host, port=args.port, model_json=args.model_json, device=args.device,
          threads=args.threads, max_connections=args.max_connections, precision=args.precision,
          workers=args.workers, **limits)
