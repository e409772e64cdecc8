"""The ``astrodag`` command line: one subcommand per track, one per workflow stage below it.

Every Snakemake rule calls one of these, so each stage can also be run by hand, e.g.
``astrodag flares train --help``. Each track registers its stages from its own ``commands``
module; the shared option helpers are in :mod:`astrodag.cli_support`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from astrodag import __version__
from astrodag.cli_support import end_with_parent, resolve_defaults
from astrodag.errors import AstrodagError
from astrodag.flares import commands as flares_commands
from astrodag.logs import configure_logging
from astrodag.microlensing import commands as microlensing_commands
from astrodag.supernova import commands as supernova_commands

logger = logging.getLogger("astrodag.cli")

TRACKS = (flares_commands, microlensing_commands, supernova_commands)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every track's stages."""
    parser = argparse.ArgumentParser(prog="astrodag", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"astrodag {__version__}")
    tracks = parser.add_subparsers(dest="track", required=True, metavar="TRACK")
    for track in TRACKS:
        track.register(tracks)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one stage; bad input or options give one readable line and the exit status 2."""
    args = resolve_defaults(build_parser().parse_args(argv))
    configure_logging(args.log, verbose=args.verbose)
    command = f"astrodag {args.track} {args.stage}"
    try:
        args.handler(args)
    except (AstrodagError, ValueError) as error:
        # The traceback goes to the log only at --verbose.
        logger.debug("traceback", exc_info=True)
        logger.error("%s: %s", command, error)
        return 2
    except Exception:
        logger.exception("%s failed", command)
        raise
    return 0


def run() -> int:
    """The ``astrodag`` command and ``python -m astrodag``: :func:`main` in a process that ends with its parent."""
    end_with_parent()
    return main()


if __name__ == "__main__":
    sys.exit(run())
