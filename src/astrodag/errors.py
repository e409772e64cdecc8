"""Project exceptions: each names the file (or config key) and the problem."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class AstrodagError(Exception):
    """Base class for errors that the CLI reports as one readable line."""


class InputDataError(AstrodagError):
    """An input file is missing, corrupt, or does not hold what it should.

    Parameters
    ----------
    path : str or Path
        The offending file.
    problem : str
        What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(AstrodagError):
    """A configuration value is missing, of the wrong type, or out of range."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


def check_keys(prefix: str, mapping: Any, known: tuple[str, ...]) -> Mapping:
    """``mapping`` (``None`` counts as empty) after checking that it is a mapping of known keys only.

    A typo in a config section fails here with the full key named, e.g.
    ``config key 'supernova.pairing.overlap_treshold': unknown key (known: ...)``.
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(prefix, f"must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(known)})")
    return mapping
