"""Model architectures by name: one entry each, built with :func:`build_model`.

An entry names the builder, the settings class of the architecture's options and the shape
arguments that come from the data rather than from the config (number of features, time
steps, input channels, cut-out size, the solver's seed). A model's ``model.json`` records the
name and the options (shapes included, as the tracks have always written them), so that the
same call rebuilds it.

New architectures are one more line in :data:`ARCHITECTURES`. Builders and settings classes
are imported when a model is built, so that listing the registry does not load torchvision.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from astrodag.errors import ConfigError
from astrodag.settings import Settings


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One registry entry.

    Attributes
    ----------
    builder : str
        ``"module:callable"`` building the model.
    settings : str
        ``"module:class"``: the :class:`~astrodag.settings.Settings` of the architecture's options.
    shapes : tuple of str
        Arguments taken from the data, passed to the builder as keywords.
    takes_settings : bool
        True: the builder is called as ``builder(settings, **shapes)``; False: with the settings'
        fields as keywords, ``builder(**shapes, **fields)``.
    """

    builder: str
    settings: str
    shapes: tuple[str, ...]
    takes_settings: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "everest": Architecture("astrodag.models.transformer:EverestTransformer",
                            "astrodag.models.settings:TransformerSettings", ("n_features", "n_steps"), True),
    "baseline": Architecture("astrodag.models.baseline:LogisticBaseline",
                             "astrodag.models.settings:LogisticBaselineSettings", ("seed",)),
    "temporal_cnn": Architecture("astrodag.models.temporal_cnn:TimeDistributedCNN",
                                 "astrodag.models.settings:TemporalCNNSettings", ("in_channels", "n_classes"),
                                 True),
    "braai": Architecture("astrodag.models.braai:BraaiCNN", "astrodag.models.settings:BraaiCNNSettings",
                          ("in_channels", "size")),
    "resnet18": Architecture("astrodag.models.braai:resnet18_triplet", "astrodag.models.settings:ResNetTripletSettings",
                             ("in_channels",)),
    "resnet34": Architecture("astrodag.models.braai:resnet34_triplet", "astrodag.models.settings:ResNetTripletSettings",
                             ("in_channels",)),
}


def _load(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def _entry(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def split_options(name: str, options: Mapping[str, Any] | Settings | None = None,
                  **shapes: Any) -> tuple[Settings, dict[str, Any]]:
    """The validated settings of architecture ``name`` and its shape arguments.

    Shape arguments may come as keywords or inside ``options`` (as a sidecar records them),
    not both.

    Raises
    ------
    ValueError
        For an unknown architecture, a shape given twice or an unknown shape keyword;
        ``ConfigError`` (a ``ValueError``) for an unknown or invalid option, naming it and the
        nearest accepted one.
    """
    entry = _entry(name)
    unknown = sorted(set(shapes) - set(entry.shapes))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not a shape argument of {name} ({', '.join(entry.shapes)})")
    settings_class = _load(entry.settings)
    if isinstance(options, Settings):
        return options, dict(shapes)
    values = dict(options or {})
    recorded = {key: values.pop(key) for key in entry.shapes if key in values}
    clash = sorted(set(recorded) & set(shapes))
    if clash:
        raise ConfigError(f"{name} options", f"{', '.join(clash)} come(s) from the data and cannot also be an option")
    return settings_class.from_config(values, f"{name} options"), {**recorded, **shapes}


def build_model(name: str, options: Mapping[str, Any] | Settings | None = None, **shapes: Any) -> Any:
    """Build architecture ``name`` with its options and the data's shapes.

    Parameters
    ----------
    name : str
        A key of :data:`ARCHITECTURES`.
    options : mapping or Settings, optional
        Architecture options (a mapping checked by the entry's settings class, or an instance).
    **shapes
        Shape arguments from the data (see :class:`Architecture`), e.g. ``n_features=9,
        n_steps=10`` for ``everest`` or ``in_channels=3, size=63`` for ``braai``.

    Returns
    -------
    torch.nn.Module (or the baseline's estimator)
        Freshly initialised, drawing from torch's global generator.
    """
    entry = _entry(name)
    settings, shape_arguments = split_options(name, options, **shapes)
    builder = _load(entry.builder)
    if entry.takes_settings:
        return builder(settings, **shape_arguments)
    return builder(**shape_arguments, **settings.as_dict())
