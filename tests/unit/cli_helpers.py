"""Running one ``astrodag`` stage in-process, its exceptions raised (``main`` turns them into exit status 2)."""

import argparse

from astrodag.cli import build_parser


def parse(*argv) -> argparse.Namespace:
    """The arguments of ``astrodag ARGV`` (each item passed through ``str``)."""
    return build_parser().parse_args([str(item) for item in argv])


def run_stage(*argv) -> None:
    """Run ``astrodag ARGV`` by calling the stage's handler directly."""
    args = parse(*argv)
    args.handler(args)
