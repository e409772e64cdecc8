"""Building blocks of the ``astrodag`` command line shared by every track's ``commands`` module.

A track registers itself with :func:`add_track`: it adds one subcommand per stage with
:func:`add_stage`, whose handler runs the stage and imports the numerical modules only then,
so that ``astrodag --help`` stays fast. Only the standard library, PyYAML and the project
errors are imported here.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from astrodag.errors import ConfigError

Handler = Callable[[argparse.Namespace], None]

# prctl(2) option: the signal this process gets when the thread that started it exits (Linux).
PR_SET_PDEATHSIG = 1


def _exit_on_signal(signum: int, frame: Any) -> None:
    """Leave through ``SystemExit`` (status 128 + the signal), so that atomic writes remove their temporary files."""
    raise SystemExit(128 + signum)


def end_with_parent() -> None:
    """Make this process end when the process that started it ends, and end cleanly on SIGTERM or SIGHUP.

    A workflow job is ``python -m astrodag ...`` started by Snakemake through bash, which runs the
    rule's single command in its own place (exec): Snakemake is this process's parent. On Linux
    the kernel sends SIGTERM here when the parent dies (``PR_SET_PDEATHSIG``), so that a killed
    Snakemake does not leave a training job running, orphaned, writing into the results while a
    rerun starts another. SIGTERM and SIGHUP exit through ``SystemExit``; a job killed this way
    resumes from its last checkpoint when rerun. A process started with SIGHUP ignored (``nohup``)
    is meant to outlive its parent and is left as it is. Call it once, from the main thread,
    before the stage runs.
    """
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _exit_on_signal)
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was in place
        raise SystemExit(128 + signal.SIGTERM)


class SettingDefault:
    """An option's default taken from a field of a settings class, read only when it is needed.

    The CLI and the workflow config then share one default (the class's), and building the
    parser imports no numerical module: the class is imported when ``--help`` shows the default
    or when the stage runs without the option (:func:`resolve_defaults`).

    Parameters
    ----------
    reference : str
        ``"module:Class"`` of a :class:`astrodag.settings.Settings` subclass.
    name : str
        The field.
    """

    def __init__(self, reference: str, name: str):
        self.reference, self.name = reference, name

    def resolve(self) -> Any:
        """The field's default value."""
        module, cls = self.reference.split(":")
        field = {field.name: field for field in dataclasses.fields(getattr(importlib.import_module(module), cls))}[
            self.name]
        return field.default_factory() if field.default is dataclasses.MISSING else field.default

    def __str__(self) -> str:
        value = self.resolve()
        if isinstance(value, dict):
            return " ".join(f"{key}={item}" for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return " ".join(map(str, value))
        return str(value)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Replace every option left at a :class:`SettingDefault` by the settings class's value, in place."""
    for key, value in vars(args).items():
        if isinstance(value, SettingDefault):
            setattr(args, key, value.resolve())
    return args


def json_or_yaml(text: str) -> dict[str, Any]:
    """An option given inline as JSON/YAML, or as ``@path`` to a JSON/YAML file (an argparse ``type``)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.exists():
            raise argparse.ArgumentTypeError(f"options file {path} does not exist")
        text = path.read_text()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"cannot parse options: {error}") from error
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("options must be a mapping, e.g. '{\"embed_dim\": 64}'")
    return value


def split_fractions(items: list[str] | dict[str, float]) -> dict[str, float]:
    """``["train=0.6", "validation=0.2", "test=0.2"]`` as a mapping of split name to fraction (a mapping as is)."""
    if isinstance(items, dict):
        return dict(items)
    fractions = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ("train", "validation", "test") or not value:
            raise ConfigError("split-fractions", f"expected train=F validation=F test=F, got {item!r}")
        fractions[name] = float(value)
    return fractions


def named_dirs(items: list[str], option: str) -> dict[str, Path]:
    """``NAME=DIR`` items of the option ``--<option>`` as a mapping, in the order given."""
    named = {}
    for item in items:
        name, _, directory = item.partition("=")
        if not name or not directory:
            raise ConfigError(option, f"expected NAME=DIR, got {item!r}")
        named[name] = Path(directory)
    return named


def add_model_files(parser: argparse.ArgumentParser, model_help: str = "model.pt of a trained model") -> None:
    """``--model`` (the weights, a path) and ``--model-json`` (its sidecar, by default beside it)."""
    parser.add_argument("--model", type=Path, required=True, help=model_help)
    parser.add_argument("--model-json", type=Path, help="its sidecar (default: --model with the suffix .json)")


def sidecar_path(args: argparse.Namespace) -> Path:
    """``--model-json``, or ``--model`` with the suffix ``.json``."""
    return args.model_json or args.model.with_suffix(".json")


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--log``, ``--verbose`` and ``--progress``: every stage has them."""
    parser.add_argument("--log", type=Path, help="also append log messages to this file")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress bars (default: only on a terminal)")


def add_stage(stages, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    """A stage's parser; ``handler(args)`` runs the stage when it is chosen."""
    parser = stages.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def add_track(tracks, name: str, help: str, add_stages: Callable[[Any], None]) -> argparse.ArgumentParser:
    """The track ``name`` with the stages ``add_stages(stages)`` adds, each with the common options.

    Parameters
    ----------
    tracks : argparse._SubParsersAction
        The top-level subparsers (``dest="track"``).
    name, help : str
        The track's subcommand and its one-line help.
    add_stages : callable
        Adds the stages with :func:`add_stage` to the subparsers it is given.

    Returns
    -------
    argparse.ArgumentParser
        The track's parser.
    """
    track = tracks.add_parser(name, help=help, description=help)
    stages = track.add_subparsers(dest="stage", required=True, metavar="STAGE")
    add_stages(stages)
    for parser in stages.choices.values():
        add_common(parser)
    return track
