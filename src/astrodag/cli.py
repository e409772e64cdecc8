"""The ``astrodag`` command line: one subcommand per track, one per workflow stage below it.

Every Snakemake rule calls one of these, so each stage can also be run by hand, e.g.
``astrodag flares train --help``. Each track registers its stages from its own ``commands``
module; the shared option helpers are in :mod:`astrodag.cli_support`. ``astrodag config check``
checks workflow config files as the Snakefile does at start-up, before any job runs.

Bad input, bad options and bad config give one line on stderr naming the file, the option or the
config key, and the exit status 2; a bug gives a traceback and the exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from astrodag import __version__
from astrodag.cli_support import add_stage, add_track, end_with_parent, resolve_defaults
from astrodag.errors import AstrodagError
from astrodag.flares import commands as flares_commands
from astrodag.logs import configure_logging
from astrodag.microlensing import commands as microlensing_commands
from astrodag.supernova import commands as supernova_commands

logger = logging.getLogger("astrodag.cli")

TRACKS = (flares_commands, microlensing_commands, supernova_commands)
SCHEMA = Path("workflow", "schemas", "config.schema.yaml")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def _merge(config: MutableMapping[str, Any], update: MutableMapping[str, Any]) -> None:
    """Merge ``update`` into ``config`` key by key at every depth, as Snakemake merges config files."""
    for key, value in update.items():
        if isinstance(value, MutableMapping) and isinstance(config.get(key), MutableMapping):
            _merge(config[key], value)
        else:
            config[key] = value


def _check_config(args: argparse.Namespace) -> None:
    import yaml

    from astrodag.config import validate_config, validate_structure
    from astrodag.errors import InputDataError

    config: dict[str, Any] = {}
    for path in args.configfiles:
        if not path.is_file():
            raise InputDataError(path, "config file does not exist")
        try:
            given = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise InputDataError(path, f"not valid YAML ({error})") from error
        if not isinstance(given, (MutableMapping, type(None))):
            raise InputDataError(path, f"a config file must be a mapping of keys, got {type(given).__name__}")
        _merge(config, given or {})
    if not args.schema.is_file():
        raise InputDataError(args.schema, "config schema does not exist (run from the workflow's directory or give"
                                          " --schema)")
    validate_config(validate_structure(config, args.schema))
    logger.info("%s: valid", ", ".join(map(str, args.configfiles)))


def _add_config_stages(stages) -> None:
    check = add_stage(stages, "check", _check_config,
                      "check workflow config files (merged in order, as 'snakemake --configfile' merges them) as the"
                      " Snakefile does at start-up")
    check.add_argument("configfiles", type=Path, nargs="+", help="YAML config files, e.g. config/config.yaml")
    check.add_argument("--schema", type=Path, default=SCHEMA,
                       help="the workflow's config schema (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every track's stages and ``config check``."""
    parser = OneLineParser(prog="astrodag", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"astrodag {__version__}")
    tracks = parser.add_subparsers(dest="track", required=True, metavar="TRACK")
    for track in TRACKS:
        track.register(tracks)
    add_track(tracks, "config", "check workflow config files", _add_config_stages)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one stage; bad input or options give one readable line and the exit status 2."""
    args = resolve_defaults(build_parser().parse_args(argv))
    configure_logging(args.log, verbose=args.verbose)
    command = f"astrodag {args.track} {args.stage}"
    try:
        args.handler(args)
    except (AstrodagError, ValueError, OSError) as error:
        if isinstance(error, OSError) and error.filename is None:
            # Not about a file the user named (a socket, the disk): a fault, with its traceback.
            logger.exception("%s failed", command)
            raise
        # The traceback goes to the log only at --verbose.
        logger.debug("traceback", exc_info=True)
        logger.error("%s: %s", command, one_line(error))
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
