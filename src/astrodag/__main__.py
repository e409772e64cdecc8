"""``python -m astrodag``: the same command line as the ``astrodag`` script."""

import sys

from astrodag.cli import run

sys.exit(run())
