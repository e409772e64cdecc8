"""The settings base: defaults, checks, nested sections, unknown keys with the nearest known key."""

import dataclasses
from typing import ClassVar

import pytest

from astrodag.errors import ConfigError
from astrodag.settings import (
    Settings,
    choice,
    fractions,
    interval,
    number,
    optional,
    section,
    sequence,
    setting,
    unknown_key,
)


@dataclasses.dataclass(frozen=True)
class Inner(Settings):
    max_epochs: int = setting(3, number(1, integer=True))
    rate: float | None = setting(None, optional(number(0.0, low_open=True)))


@dataclasses.dataclass(frozen=True)
class Outer(Settings):
    PREFIX: ClassVar[str] = "track.stage"

    inner: Inner = section(Inner)
    mode: str = setting("fast", choice("fast", "slow"))
    bounds: tuple[float, float] = setting((0.0, 1.0), interval(0.0, 10.0))
    sizes: tuple[int, ...] = setting((8, 8), sequence(number(1, integer=True)))
    split: dict[str, float] = setting({"train": 0.5, "test": 0.5}, fractions("train", "test"))

    def validate(self, prefix):
        if self.mode == "slow" and self.inner.max_epochs < 2:
            raise ConfigError(f"{prefix}.mode", "slow needs at least 2 epochs")


def test_missing_keys_take_the_defaults_and_values_are_converted():
    assert Outer.from_config({}) == Outer.from_config(None) == Outer()
    settings = Outer.from_config({"inner": {"max_epochs": 5.0}, "bounds": [1, 2], "sizes": [4]})
    assert settings.inner.max_epochs == 5 and isinstance(settings.inner.max_epochs, int)
    assert settings.bounds == (1.0, 2.0) and settings.sizes == (4,)


def test_as_dict_round_trips_through_from_config():
    settings = Outer.from_config({"inner": {"rate": 0.1}, "mode": "slow", "bounds": [2, 3]})
    assert settings.as_dict()["bounds"] == [2.0, 3.0]
    assert Outer.from_config(settings.as_dict()) == settings


def test_unknown_key_names_the_dotted_key_and_the_nearest_known_key():
    with pytest.raises(ConfigError) as error:
        Outer.from_config({"inner": {"max_epoch": 2}})
    assert error.value.key == "track.stage.inner.max_epoch"
    assert str(error.value) == ("config key 'track.stage.inner.max_epoch': unknown key; did you mean 'max_epochs'? "
                                "(known: max_epochs, rate)")
    with pytest.raises(ConfigError, match=r"'track.stage.mdoe': unknown key; did you mean 'mode'"):
        Outer.from_config({"mdoe": "fast"})
    with pytest.raises(ConfigError, match=r"'track.stage.split.tset': unknown key; did you mean 'test'"):
        Outer.from_config({"split": {"train": 0.5, "tset": 0.5}})
    assert unknown_key("zzz", ("alpha", "beta")) == "unknown key (known: alpha, beta)"


@pytest.mark.parametrize("config, key", [
    ({"inner": {"max_epochs": 0}}, "track.stage.inner.max_epochs"),
    ({"inner": {"max_epochs": 1.5}}, "track.stage.inner.max_epochs"),
    ({"inner": {"rate": 0}}, "track.stage.inner.rate"),
    ({"inner": []}, "track.stage.inner"),
    ({"mode": "medium"}, "track.stage.mode"),
    ({"bounds": [3, 1]}, "track.stage.bounds"),
    ({"bounds": [1, 11]}, "track.stage.bounds"),
    ({"sizes": []}, "track.stage.sizes"),
    ({"split": {"train": 0.5}}, "track.stage.split"),
    ({"split": {"train": 0.5, "test": 0.6}}, "track.stage.split"),
    ({"mode": "slow", "inner": {"max_epochs": 1}}, "track.stage.mode"),
])
def test_invalid_values_name_the_dotted_key(config, key):
    with pytest.raises(ConfigError) as error:
        Outer.from_config(config)
    assert error.value.key == key


def test_an_explicit_prefix_overrides_and_a_class_without_one_needs_it():
    with pytest.raises(ConfigError, match="'elsewhere.max_epochs'"):
        Inner.from_config({"max_epochs": 0}, "elsewhere")
    with pytest.raises(TypeError, match="Inner declares no PREFIX"):
        Inner.from_config({})


def test_as_base_keeps_only_the_base_fields():
    from astrodag.flares.settings import EverestSettings
    from astrodag.models.settings import TransformerSettings

    everest = EverestSettings.from_config({"embed_dim": 16, "num_heads": 2, "focal_gamma": 1.0})
    architecture = everest.as_base(TransformerSettings)
    assert type(architecture) is TransformerSettings
    assert architecture.embed_dim == 16 and not hasattr(architecture, "focal_gamma")
