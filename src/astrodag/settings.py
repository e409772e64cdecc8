"""Settings dataclasses validated field by field from config mappings.

Every stage of the imaging package takes its options as one mapping (a section of
``config/config.yaml``, passed to the CLI as ``--settings JSON``). A settings class derives
from :class:`Settings` and declares each key as a dataclass field made with :func:`setting`
(a default and a check) or :func:`section` (a nested settings class). ``from_config`` rejects
unknown keys and invalid values with a ``ConfigError`` that names the full key, e.g.
``supernova.difference.align.method``, so a typo fails before any work is done.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from astrodag.errors import ConfigError

Check = Callable[[str, Any], Any]


def setting(default: Any, check: Check) -> Any:
    """A settings field: its default (the demo value) and the check that validates a given value."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def section(cls: type[Settings]) -> Any:
    """A nested settings section (its own mapping in the config)."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


def number(low: float | None = None, high: float | None = None, *, integer: bool = False,
           low_open: bool = False) -> Check:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); ``integer`` for whole numbers."""

    def check(key: str, value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        if integer:
            if float(value) != int(value):
                raise ConfigError(key, f"must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if low is not None and (value <= low if low_open else value < low):
            raise ConfigError(key, f"must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None and value > high:
            raise ConfigError(key, f"must be <= {high}, got {value}")
        return value

    return check


def optional(inner: Check) -> Check:
    """``None`` (null in YAML/JSON) or a value accepted by ``inner``."""

    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def choice(*options: str) -> Check:
    """One of the given strings."""

    def check(key: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, options))}, got {value!r}")
        return value

    return check


def flag(key: str, value: Any) -> bool:
    """A boolean (``true``/``false``; numbers and strings are refused so that typos show)."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def interval(low: float | None = None, high: float | None = None) -> Check:
    """A ``[lower, upper]`` pair of numbers with ``lower <= upper``, both within ``[low, high]``."""
    bound = number(low, high)

    def check(key: str, value: Any) -> tuple[float, float]:
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ConfigError(key, f"must be a list [lower, upper], got {value!r}")
        lower, upper = (bound(key, item) for item in value)
        if lower > upper:
            raise ConfigError(key, f"lower bound {lower} is above the upper bound {upper}")
        return lower, upper

    return check


def subset(*options: str) -> Check:
    """A list of distinct strings, each one of ``options``."""

    def check(key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise ConfigError(key, f"must be a list drawn from {', '.join(options)}, got {value!r}")
        items = tuple(value)
        for item in items:
            if item not in options:
                raise ConfigError(key, f"{item!r} is not one of {', '.join(options)}")
        if len(set(items)) != len(items):
            raise ConfigError(key, f"lists an entry twice: {list(items)}")
        return items

    return check


def fractions(*names: str) -> Check:
    """A mapping ``{name: fraction}`` holding every one of ``names``, each >= 0, summing to 1."""
    part = number(0.0, 1.0)

    def check(key: str, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping of {', '.join(names)}, got {value!r}")
        unknown = [name for name in value if name not in names]
        missing = [name for name in names if name not in value]
        if unknown or missing:
            raise ConfigError(key, f"must hold exactly {', '.join(names)} (unknown: {unknown}, missing: {missing})")
        result = {name: part(f"{key}.{name}", value[name]) for name in names}
        if abs(sum(result.values()) - 1.0) > 1e-6:
            raise ConfigError(key, f"must sum to 1, got {sum(result.values()):.6g}")
        return result

    return check


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the settings classes: ``from_config`` validation and ``as_dict`` for the records."""

    PREFIX: ClassVar[str] = "supernova"

    @classmethod
    def from_config(cls, mapping: Mapping | None = None, prefix: str | None = None):
        """Settings from a config mapping (missing keys take the defaults).

        Raises
        ------
        ConfigError
            For an unknown key or an invalid value, naming the full key.
        """
        prefix = cls.PREFIX if prefix is None else prefix
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(prefix, f"must be a mapping, got {type(mapping).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, value in mapping.items():
            if name not in fields:
                raise ConfigError(f"{prefix}.{name}", f"unknown key (known: {', '.join(fields)})")
            metadata = fields[name].metadata
            key = f"{prefix}.{name}"
            if "section" in metadata:
                values[name] = metadata["section"].from_config(value, key)
            else:
                values[name] = metadata["check"](key, value)
        settings = cls(**values)
        settings.validate(prefix)
        return settings

    def validate(self, prefix: str) -> None:
        """Checks that involve several keys; subclasses raise ``ConfigError`` here."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists), for records and FITS provenance."""

        def plain(value):
            if isinstance(value, (tuple, list)):
                return [plain(item) for item in value]
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            return value

        return {key: plain(value) for key, value in dataclasses.asdict(self).items()}
