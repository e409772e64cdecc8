"""Settings dataclasses validated field by field from config mappings: the one mechanism of every track.

Every stage takes its options as one mapping (a section of ``config/config.yaml``, passed to
the CLI as ``--settings JSON``). A settings class derives from :class:`Settings`, declares the
dotted config key it reads as ``PREFIX`` and each key as a dataclass field made with
:func:`setting` (a default and a check) or :func:`section` (a nested settings class).
``from_config`` rejects unknown keys and invalid values with a ``ConfigError`` that names the
full key, e.g. ``supernova.difference.align.method``, and for an unknown key the nearest known
one, so a typo fails before any work is done. A track that wants other defaults for a shared
class (the trainer's, say) derives from it and redeclares those fields.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from astrodag.errors import ConfigError

Check = Callable[[str, Any], Any]
S = TypeVar("S", bound="Settings")


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


def interval(low: float | None = None, high: float | None = None, *, integer: bool = False,
             low_open: bool = False) -> Check:
    """A ``[lower, upper]`` pair of numbers with ``lower <= upper``, both accepted by ``number(low, high, ...)``."""
    bound = number(low, high, integer=integer, low_open=low_open)

    def check(key: str, value: Any) -> tuple[float, float]:
        if not _is_list(value) or len(value) != 2:
            raise ConfigError(key, f"must be a list [lower, upper], got {value!r}")
        lower, upper = (bound(key, item) for item in value)
        if lower > upper:
            raise ConfigError(key, f"lower bound {lower} is above the upper bound {upper}")
        return lower, upper

    return check


def text(key: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def device_name(key: str, value: Any) -> str:
    """A torch device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``...)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a device name such as 'auto', 'cpu' or 'cuda:0', got {value!r}")
    return value


def _is_list(value: Any) -> bool:
    return not isinstance(value, (str, bytes, Mapping)) and hasattr(value, "__len__") and hasattr(value, "__iter__")


def sequence(item: Check, *, min_items: int = 1) -> Check:
    """A list of at least ``min_items`` values, each accepted by ``item`` (returned as a tuple)."""

    def check(key: str, value: Any) -> tuple:
        if not _is_list(value) or len(value) < min_items:
            raise ConfigError(key, f"must be a list of at least {min_items} item(s), got {value!r}")
        return tuple(item(key, entry) for entry in value)

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


def unknown_key(name: str, known: Sequence[str]) -> str:
    """The problem text of an unknown key: the nearest known key, when one is close, and all of them."""
    nearest = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
    return f"unknown key{hint} (known: {', '.join(known)})"


def fractions(*names: str) -> Check:
    """A mapping ``{name: fraction}`` holding every one of ``names``, each >= 0, summing to 1."""
    part = number(0.0, 1.0)

    def check(key: str, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping of {', '.join(names)}, got {value!r}")
        for name in value:
            if name not in names:
                raise ConfigError(f"{key}.{name}", unknown_key(name, names))
        missing = [name for name in names if name not in value]
        if missing:
            raise ConfigError(key, f"must hold exactly {', '.join(names)} (missing: {', '.join(missing)})")
        result = {name: part(f"{key}.{name}", value[name]) for name in names}
        if abs(sum(result.values()) - 1.0) > 1e-6:
            raise ConfigError(key, f"must sum to 1, got {sum(result.values()):.6g}")
        return result

    return check


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the settings classes: ``from_config`` validation and ``as_dict`` for the records.

    A subclass sets ``PREFIX`` to the dotted config key of its section (``"microlensing.training"``);
    a class without one (a shared section such as the trainer's) needs the prefix passed.
    """

    PREFIX: ClassVar[str]

    @classmethod
    def from_config(cls, mapping: Mapping | None = None, prefix: str | None = None):
        """Settings from a config mapping (missing keys take the defaults).

        Raises
        ------
        ConfigError
            For an unknown key (naming it and the nearest known key) or an invalid value, naming the full key.
        TypeError
            When neither ``prefix`` nor the class's ``PREFIX`` says which config key this is.
        """
        if prefix is None:
            prefix = getattr(cls, "PREFIX", None)
            if prefix is None:
                raise TypeError(f"{cls.__name__} declares no PREFIX: pass the config key as prefix=")
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(prefix, f"must be a mapping, got {type(mapping).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, value in mapping.items():
            if name not in fields:
                raise ConfigError(f"{prefix}.{name}", unknown_key(str(name), tuple(fields)))
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

    def as_base(self, base: type[S]) -> S:
        """The fields of ``base`` (a class this one derives from) alone, e.g. a section's architecture options."""
        return base(**{field.name: getattr(self, field.name) for field in dataclasses.fields(base)})

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists), for records and FITS provenance."""

        def plain(value):
            if isinstance(value, (tuple, list)):
                return [plain(item) for item in value]
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            return value

        return {key: plain(value) for key, value in dataclasses.asdict(self).items()}
