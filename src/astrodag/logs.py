"""Logging set-up shared by the CLI and the workflow's rules."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def configure_logging(log_file: str | Path | None = None, verbose: bool = False) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (its folder is created)."""
    root = logging.getLogger("astrodag")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if log_file is not None:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    return root


def progress_enabled(requested: bool | None = None) -> bool:
    """Progress bars show on a terminal unless asked otherwise."""
    if requested is not None:
        return requested
    return sys.stderr.isatty()
