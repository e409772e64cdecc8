"""Model architectures by name: one entry each, built with :func:`build_model`.

An entry names the builder, the class holding the architecture's options (None where the
builder takes them as keyword arguments) and the shape arguments that come from the data
rather than from the config (number of features, time steps, input channels, cut-out size).
A model's ``model.json`` records the name and the options, so that the same call rebuilds it.

New architectures are one more line in :data:`ARCHITECTURES`. Builders are imported when a model
is built, so that listing the registry does not load torchvision.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One registry entry.

    Attributes
    ----------
    builder : str
        ``"module:callable"`` building the model: from an instance of ``options`` when that is
        set, else from keyword arguments (shapes and options together).
    options : str or None
        ``"module:class"`` of the architecture's options, or None.
    shapes : tuple of str
        Arguments taken from the data; :func:`build_model` refuses them among the options of
        an entry with an options class, where they are fields of that class.
    """

    builder: str
    options: str | None
    shapes: tuple[str, ...]


ARCHITECTURES: dict[str, Architecture] = {
    "everest": Architecture("astrodag.models.transformer:EverestTransformer",
                            "astrodag.models.transformer:TransformerConfig", ("n_features", "n_steps")),
    "baseline": Architecture("astrodag.models.baseline:LogisticBaseline", None, ()),
    "temporal_cnn": Architecture("astrodag.models.temporal_cnn:TimeDistributedCNN",
                                 "astrodag.models.temporal_cnn:TemporalCNNConfig", ("in_channels",)),
    "braai": Architecture("astrodag.models.braai:BraaiCNN", None, ("in_channels", "size")),
    "resnet18": Architecture("astrodag.models.braai:resnet18_triplet", None, ("in_channels",)),
    "resnet34": Architecture("astrodag.models.braai:resnet34_triplet", None, ("in_channels",)),
}


def _load(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def architecture_options(name: str, options: Mapping[str, Any] | None = None, **shapes: Any) -> Any:
    """The options object of architecture ``name`` (or the keyword dict of an entry without a class).

    Raises
    ------
    ValueError
        For an unknown architecture or option, naming the accepted ones.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    entry = ARCHITECTURES[name]
    values = dict(options or {})
    clash = sorted(set(values) & set(shapes))
    if clash:
        raise ValueError(f"{', '.join(clash)} of {name} come from the data and cannot also be options")
    values.update(shapes)
    if entry.options is None:
        accepted = [parameter for parameter in inspect.signature(_load(entry.builder)).parameters]
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; accepted: {', '.join(accepted)}")
        return values
    options_class = _load(entry.options)
    if hasattr(options_class, "from_dict"):
        return options_class.from_dict(values)
    known = [field.name for field in dataclasses.fields(options_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; accepted: {', '.join(known)}")
    return options_class(**values)


def build_model(name: str, options: Mapping[str, Any] | None = None, **shapes: Any) -> Any:
    """Build architecture ``name`` with its options and the data's shapes.

    Parameters
    ----------
    name : str
        A key of :data:`ARCHITECTURES`.
    options : mapping, optional
        Architecture options (of the entry's options class, or the builder's keyword arguments).
    **shapes
        Shape arguments from the data (see :class:`Architecture`), e.g. ``n_features=9,
        n_steps=10`` for ``everest`` or ``in_channels=3, size=63`` for ``braai``.

    Returns
    -------
    torch.nn.Module (or the baseline's estimator)
        Freshly initialised, drawing from torch's global generator.

    Raises
    ------
    ValueError
        For an unknown architecture or option, or an invalid value.
    """
    built = architecture_options(name, options, **shapes)
    builder = _load(ARCHITECTURES[name].builder)
    return builder(**built) if isinstance(built, dict) else builder(built)
