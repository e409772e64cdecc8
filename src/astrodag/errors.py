"""Project exceptions: each names the file (or config key) and the problem."""

from __future__ import annotations

from pathlib import Path


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


class ConfigError(AstrodagError, ValueError):
    """A configuration key is unknown, or its value is missing, of the wrong type, or out of range."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")
