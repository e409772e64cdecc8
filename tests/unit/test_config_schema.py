"""The config schema lists exactly the keys that the supernova stages' settings classes accept.

The schema rejects a typo when the workflow starts; the settings classes check each value's range
when the job runs. The two key lists must not drift apart.
"""

import dataclasses
from pathlib import Path

import pytest
import yaml

from astrodag.supernova.archive.backends import BackendSettings
from astrodag.supernova.archive.pairing import PairSettings
from astrodag.supernova.archive.synthetic import SurveySettings
from astrodag.supernova.imaging.detect import DetectSettings
from astrodag.supernova.imaging.pipeline import DifferenceSettings
from astrodag.supernova.imaging.triplets import DatasetSettings, TripletSettings
from astrodag.supernova.realbogus.scoring import ScoringSettings
from astrodag.supernova.realbogus.training import RealBogusSettings

REPO = Path(__file__).resolve().parents[2]
DEFS = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["$defs"]
CLASSES = {
    "survey_settings": SurveySettings,
    "archive_settings": BackendSettings,
    "pairing_settings": PairSettings,
    "difference_settings": DifferenceSettings,
    "detection_settings": DetectSettings,
    "triplet_settings": TripletSettings,
    "dataset_settings": DatasetSettings,
    "realbogus_settings": RealBogusSettings,
    "scoring_settings": ScoringSettings,
}


def key_tree(cls):
    """Field names of a settings class; nested settings sections as sub-trees."""
    tree = {}
    defaults = cls()
    for field in dataclasses.fields(cls):
        value = getattr(defaults, field.name)
        tree[field.name] = key_tree(type(value)) if dataclasses.is_dataclass(value) else None
    return tree


def schema_tree(schema):
    assert schema.get("additionalProperties") is False, "a settings section must reject unknown keys"
    return {
        name: schema_tree(sub) if "properties" in sub else None
        for name, sub in schema["properties"].items()
    }


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_schema_section_lists_the_settings_class_keys(name):
    assert schema_tree(DEFS[name]) == key_tree(CLASSES[name])


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_settings_class_accepts_its_own_defaults_from_an_empty_mapping(name):
    assert CLASSES[name].from_config({}) == CLASSES[name]()
