"""Check every settings section of a workflow config through its settings class, at workflow start.

``workflow/schemas/config.schema.yaml`` declares the structure (the tracks, and the keys that the
Snakefile itself reads: paths, sources, seeds, grids, resources); each section listed in
:func:`sections` is declared once, by its settings class, and checked here. The Snakefile calls
:func:`validate_config` right after the schema, so that a typo anywhere fails before any job
runs with one ``ConfigError`` naming the full dotted key (and the nearest known key).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from astrodag.errors import ConfigError
from astrodag.settings import Settings


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
        (``Settings.as_dict``), so the rules read every key with its class's default.

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
    return config
