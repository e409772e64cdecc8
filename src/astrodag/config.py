"""Check a workflow config at workflow start: its structure, then every settings section.

``workflow/schemas/config.schema.yaml`` declares the structure (the tracks, and the keys that the
Snakefile itself reads: paths, sources, seeds, grids, resources), checked by
:func:`validate_structure`; each section listed in :func:`sections` is declared once, by its
settings class, and checked by :func:`validate_config`. The Snakefile calls both, after
:func:`retype_overrides`, so that a typo anywhere fails before any job runs with one
``ConfigError`` naming the full dotted key (and the nearest known key). The tables that the
workflow expands into jobs (experiment grids, catalogues) are read and checked at start-up too, by
:func:`load_grid`: a table that could only fail later, in a job, fails before any job runs.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from astrodag.errors import ConfigError, InputDataError
from astrodag.settings import Settings, unknown_key

if TYPE_CHECKING:
    import pandas as pd


def retype_overrides(config: MutableMapping[str, Any], overrides: Mapping[str, Any]) -> MutableMapping[str, Any]:
    """Give the nested values of ``snakemake --config`` their YAML types, in ``config``, in place.

    Snakemake reads ``--config 'flares={"synthetic": {"regions": 1000}}'`` with YAML's base loader,
    which keeps every nested scalar a string (``'1000'``); top-level ``KEY=VALUE`` pairs are typed
    by Snakemake itself. Each nested string is read again as JSON or else YAML, so ``1000`` becomes an integer,
    ``true`` a boolean and ``null`` None, while ``abc`` (or a date) stays a string. A string that looks like a
    number cannot be passed nested on the command line (its quotes are lost before this point):
    put it in a ``--configfile``.

    Parameters
    ----------
    config : mutable mapping
        The workflow config, already holding the overrides.
    overrides : mapping
        The ``--config`` values as Snakemake parsed them (``workflow.config_settings.config``).

    Returns
    -------
    mutable mapping
        ``config``.
    """

    def retyped(value: Any) -> Any:
        if isinstance(value, str):
            try:  # JSON first: YAML 1.1 reads 3e-4 (no dot) as a string
                parsed = json.loads(value)
            except ValueError:
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        if isinstance(value, Mapping):
            return {key: retyped(item) for key, item in value.items()}
        if isinstance(value, list):
            return [retyped(item) for item in value]
        return value

    def apply(target: MutableMapping[str, Any], given: Mapping[str, Any]) -> None:
        for key, value in given.items():
            if isinstance(value, Mapping) and isinstance(target.get(key), MutableMapping):
                apply(target[key], value)
            elif key in target and target[key] == value:
                target[key] = retyped(value)

    for key, value in overrides.items():
        if isinstance(value, (Mapping, list)) and key in config:
            if isinstance(value, Mapping) and isinstance(config[key], MutableMapping):
                apply(config[key], value)
            elif config[key] == value:
                config[key] = retyped(value)
    return config


def _filling_defaults(validator_class):
    """A jsonschema validator class that also fills in each property's ``default`` (jsonschema's FAQ recipe)."""
    import jsonschema

    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, declared, instance, schema):
        if isinstance(instance, MutableMapping):
            for name, subschema in declared.items():
                if isinstance(subschema, Mapping) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, declared, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def validate_structure(config: MutableMapping[str, Any], schema_path: str | Path) -> MutableMapping[str, Any]:
    """Check ``config`` against the workflow's JSON schema and fill in its defaults, in place.

    Unlike ``snakemake.utils.validate``, a failure is one line: the dotted key and the problem
    (for an unknown key, the nearest known one), not the schema.

    Raises
    ------
    ConfigError
        For the most relevant violation (``jsonschema.exceptions.best_match``).
    """
    import jsonschema

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    validator = _filling_defaults(jsonschema.validators.validator_for(schema))(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return config
    path = [str(part) for part in error.absolute_path]
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        raise ConfigError(".".join([*path, unknown[0]]), unknown_key(unknown[0], known))
    if error.validator == "type" and isinstance(error.instance, str):
        problem = f"must be of type {error.validator_value}, got the string {error.instance!r}"
    else:
        problem = error.message
    raise ConfigError(".".join(path) or "(top level)", problem)


def sections() -> dict[str, type[Settings]]:
    """The settings class of each checked config section, by dotted key."""
    # Imported when asked for: the classes live beside the code they configure.
    from astrodag.flares.settings import (
        BaselineSettings,
        EverestSettings,
        FlareAnalysisSettings,
        FlareDatasetSettings,
        FlareTrainerSettings,
        SweepSettings,
    )
    from astrodag.microlensing.analysis import MicrolensingAnalysisSettings
    from astrodag.microlensing.experiment import MicrolensingTrainerSettings
    from astrodag.microlensing.observe import ObservationSettings
    from astrodag.microlensing.simulation import SimulationSettings, TimeGridSettings
    from astrodag.models.settings import TemporalCNNSettings
    from astrodag.supernova.archive.backends import BackendSettings, QuerySettings
    from astrodag.supernova.archive.pairing import PairSettings
    from astrodag.supernova.archive.synthetic import SurveySettings
    from astrodag.supernova.imaging.detect import DetectSettings
    from astrodag.supernova.imaging.pipeline import DifferenceSettings
    from astrodag.supernova.imaging.triplets import DatasetSettings, TripletSettings
    from astrodag.supernova.realbogus.scoring import ScoringSettings
    from astrodag.supernova.realbogus.training import RealBogusSettings

    return {
        "flares.dataset": FlareDatasetSettings,
        "flares.everest": EverestSettings,
        "flares.training": FlareTrainerSettings,
        "flares.baseline": BaselineSettings,
        "flares.sweep": SweepSettings,
        "flares.analysis": FlareAnalysisSettings,
        "microlensing.time_grid": TimeGridSettings,
        "microlensing.simulation": SimulationSettings,
        "microlensing.observation": ObservationSettings,
        "microlensing.model": TemporalCNNSettings,
        "microlensing.training": MicrolensingTrainerSettings,
        "microlensing.analysis": MicrolensingAnalysisSettings,
        "supernova.survey": SurveySettings,
        "supernova.archive": BackendSettings,
        "supernova.query": QuerySettings,
        "supernova.pairing": PairSettings,
        "supernova.difference": DifferenceSettings,
        "supernova.detection": DetectSettings,
        "supernova.triplets": TripletSettings,
        "supernova.dataset": DatasetSettings,
        "supernova.realbogus": RealBogusSettings,
        "supernova.scoring": ScoringSettings,
    }


# Lists of per-item overrides of a settings section: each entry's ``settings`` are merged over the
# section for the items whose name matches its ``match`` glob (see :func:`settings_for`).
OVERRIDES = {"supernova.difference_by_pair": "supernova.difference"}


def deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key, nested mappings merged, not replaced (new dict)."""
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def settings_for(name: str, base: Mapping[str, Any], overrides: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The settings of one item (e.g. a supernova pair): ``base`` with every matching override merged in order.

    Parameters
    ----------
    name : str
        The item's name (a pair's ``pair_id``), matched with :func:`fnmatch.fnmatchcase`.
    base : mapping
        The section's settings (e.g. ``supernova.difference``).
    overrides : sequence of mappings
        Entries ``{"match": GLOB, "settings": MAPPING}``; later matches win over earlier ones.
    """
    from fnmatch import fnmatchcase

    merged = dict(base)
    for entry in overrides or ():
        if fnmatchcase(name, entry["match"]):
            merged = deep_merge(merged, entry["settings"])
    return merged


def _check_overrides(config: MutableMapping[str, Any]) -> None:
    """Check each per-item override list: its entries' form, and each entry merged over its section."""
    for dotted, section_key in OVERRIDES.items():
        track, name = dotted.split(".")
        entries = config.get(track, {}).get(name)
        if entries is None:
            config[track][name] = []
            continue
        if not isinstance(entries, list):
            raise ConfigError(dotted, f"must be a list of {{match, settings}} entries, got {type(entries).__name__}")
        section_track, section_name = section_key.split(".")
        base = config[section_track][section_name]
        cls = sections()[section_key]
        for index, entry in enumerate(entries):
            where = f"{dotted}[{index}]"
            if not isinstance(entry, Mapping) or set(entry) != {"match", "settings"}:
                raise ConfigError(where, "must be a mapping with exactly the keys 'match' (a glob on the name) "
                                         f"and 'settings' (keys of {section_key}), got {entry!r}")
            if not isinstance(entry["match"], str) or not entry["match"]:
                raise ConfigError(f"{where}.match", f"must be a non-empty glob string, got {entry['match']!r}")
            if not isinstance(entry["settings"], Mapping):
                raise ConfigError(f"{where}.settings", f"must be a mapping, got {type(entry['settings']).__name__}")
            cls.from_config(deep_merge(base, entry["settings"]), f"{where}.settings")


# Keys of microlensing.simulation that the Snakefile reads (the size and seed of the shards);
# the rest of that section is the simulator's settings.
_WORKFLOW_KEYS = {"microlensing.simulation": ("shards", "events_per_shard", "seed")}


def validate_config(config: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Check each settings section of ``config`` and fill in its defaults, in place.

    Parameters
    ----------
    config : mutable mapping
        The workflow config (after the schema's validation).

    Returns
    -------
    mutable mapping
        ``config``, each settings section replaced by its checked, complete values
        (``Settings.as_dict``), so the rules read every key with its class's default; each list of
        :data:`OVERRIDES` is checked entry by entry, merged over its section.

    Raises
    ------
    ConfigError
        For the first unknown key or invalid value, naming the full dotted key.
    """
    for dotted, cls in sections().items():
        track, name = dotted.split(".")
        parent = config.setdefault(track, {})
        if not isinstance(parent, MutableMapping):
            raise ConfigError(track, f"must be a mapping, got {type(parent).__name__}")
        given = parent.get(name)
        if given is None:
            given = {}
        if not isinstance(given, MutableMapping):
            raise ConfigError(dotted, f"must be a mapping, got {type(given).__name__}")
        workflow_keys = {key: given[key] for key in _WORKFLOW_KEYS.get(dotted, ()) if key in given}
        settings = cls.from_config({key: value for key, value in given.items() if key not in workflow_keys}, dotted)
        parent[name] = {**workflow_keys, **settings.as_dict()}
    _check_overrides(config)
    return config


def load_grid(path: str | Path, schema_path: str | Path, what: str, dtypes: Mapping[str, Any],
              unique: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a table that the workflow expands into jobs (a grid of experiments, a catalogue) and check it.

    The Snakefile calls this at start-up, so that a table that would only fail in a job (no rows, a
    bad cell, a duplicate) stops the workflow before any job runs, and before Snakemake removes the
    outputs of the jobs it would rerun.

    Parameters
    ----------
    path : str or Path
        ``.tsv`` or ``.csv`` (``#`` starts a comment line).
    schema_path : str or Path
        JSON schema (YAML) of one row; its ``required`` columns must be in the header.
    what : str
        The table in words, for the messages (``"flare experiment grid"``).
    dtypes : mapping
        Column -> type, as :func:`astrodag.io.read_table` takes them; blank cells of float columns
        count as absent (the schema decides whether the column is required).
    unique : sequence of str, optional
        Columns whose values together must be unique (default: the whole row).

    Returns
    -------
    pandas.DataFrame
        The table, in file order.

    Raises
    ------
    InputDataError
        Naming the file and the problem: missing or unreadable, missing columns, no rows, the first
        row that breaks the schema (row, line and the problem), or the duplicated rows.
    """
    import jsonschema

    from astrodag.io import read_table, row_label

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    frame = read_table(path, schema.get("required", ()), dtypes, not_found=f"the {what} does not exist",
                       comment="#", keep_default_na=False)
    if frame.empty:
        raise InputDataError(path, f"the {what} has no rows (a header only): there is nothing to run")
    validator = jsonschema.validators.validator_for(schema)(schema)
    for position, record in enumerate(frame.to_dict("records")):
        given = {key: value for key, value in record.items() if not (isinstance(value, float) and math.isnan(value))}
        error = jsonschema.exceptions.best_match(validator.iter_errors(given))
        if error is not None:
            column = f", column {error.absolute_path[0]!r}" if error.absolute_path else ""
            raise InputDataError(path, f"{row_label(path, position)}{column}: {error.message}")
    duplicated = frame.duplicated(subset=list(unique) if unique else None, keep=False)
    if duplicated.any():
        columns = list(unique) if unique else list(frame.columns)
        rows = [row_label(path, int(position)) for position in duplicated.to_numpy().nonzero()[0][:4]]
        raise InputDataError(path, f"duplicated {', '.join(columns)}: {'; '.join(rows)}")
    return frame


def _snakemake_processes(directory: Path) -> list[int]:
    """Ids of the Snakemake processes working in ``directory``, other than this process and its ancestors (Linux)."""
    ancestors, pid = set(), os.getpid()
    while pid > 1 and pid not in ancestors:
        ancestors.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ancestors:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:3]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or another user's
            continue
        # `snakemake ...`, `python .../bin/snakemake ...` or `python -m snakemake ...`
        if cwd == directory and any(Path(os.fsdecode(arg)).name == "snakemake" for arg in argv):
            found.append(int(entry.name))
    return sorted(found)


def lock_advice(directory: str | Path = ".") -> str | None:
    """What to do about the Snakemake locks in ``directory``, or None when it holds none.

    Snakemake checks its locks only after it has built the job graph, so that a second instance in a
    directory first fails on the first one's jobs in progress (``IncompleteFilesException``, with
    advice to rerun them that would clash with the running instance), and a rerun after a killed
    instance fails on its stale locks. The Snakefile calls this at start-up and shows the advice
    before either: on Linux it tells a running instance (from ``/proc``) from stale locks.
    """
    directory = Path(directory).resolve()
    locks = directory / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return None
    recovery = "run `snakemake --unlock`, then rerun with `--rerun-incomplete`"
    if not Path("/proc/self").is_dir():
        return f"{locks} holds locks: if no other Snakemake instance runs in {directory}, {recovery}"
    running = _snakemake_processes(directory)
    if running:
        return (f"another Snakemake instance (process {', '.join(map(str, running))}) is running in {directory}:"
                " files of its jobs in progress count as incomplete or locked here; wait for it to finish or stop it,"
                " do not rerun them")
    return f"{locks} holds the locks of a Snakemake run that is no longer running (killed?): {recovery}"
