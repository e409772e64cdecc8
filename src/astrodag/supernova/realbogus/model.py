"""The files of a trained real/bogus model: the sidecar's keys and their checks, on the shared bundle.

A trained model is two files (written by :func:`save_realbogus_model` through
:func:`astrodag.training.bundle.save_model`):

``model.pt``
    The network's ``state_dict`` (loaded with ``torch.load(..., weights_only=True)``).
``model.json``
    The sidecar: ``format`` (``SIDECAR_FORMAT``), ``architecture`` and ``options`` (rebuild the
    network with :func:`astrodag.models.registry.build_model`), ``input_shape``
    (``[3, S, S]``), ``channels`` (``["science", "reference", "difference"]``),
    ``normalisation`` (``{"method": "sky" | "robust" | "l2", "clip": float}``, as the triplets were
    cut), ``threshold`` (P(real) at or above which a candidate is called real, chosen on the
    validation split) and whatever the training run recorded (seed, data digest, metrics).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astrodag.errors import InputDataError
from astrodag.training import bundle

SIDECAR_FORMAT = "astrodag.realbogus/1"
CHANNELS = ("science", "reference", "difference")
REQUIRED_SIDECAR_KEYS = ("architecture", "options", "input_shape", "normalisation", "threshold")
MISSING_MODEL = "train a real/bogus model first (astrodag supernova train)"


def check_sidecar(sidecar: Mapping[str, Any], path: str | Path = "model.json") -> dict[str, Any]:
    """Validate a real/bogus sidecar and return it as a dict.

    Raises
    ------
    InputDataError
        If a required key is missing or the input shape, normalisation or threshold is invalid.
    """
    if not isinstance(sidecar, Mapping):
        raise InputDataError(path, f"the sidecar must be a JSON object, got {type(sidecar).__name__}")
    missing = [key for key in REQUIRED_SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise InputDataError(path, f"not a real/bogus model sidecar: lacks {', '.join(missing)}")
    shape = sidecar["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape)
            or shape[1] != shape[2]):
        raise InputDataError(path, f"input_shape must be [channels, S, S] of positive integers, got {shape!r}")
    from astrodag.supernova.imaging.triplets import NORMALISATIONS

    normalisation = sidecar["normalisation"]
    if not isinstance(normalisation, Mapping) or normalisation.get("method") not in NORMALISATIONS \
            or not isinstance(normalisation.get("clip"), (int, float)):
        raise InputDataError(path, f"normalisation must be {{'method': {'|'.join(NORMALISATIONS)}, 'clip': number}}, "
                                   f"got {normalisation!r}")
    threshold = sidecar["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputDataError(path, f"threshold must be a number in [0, 1], got {threshold!r}")
    return dict(sidecar)


def sidecar_normalisation(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`prepare_triplet` that reproduce a model's training data."""
    return {"method": sidecar["normalisation"]["method"], "clip": float(sidecar["normalisation"]["clip"])}


def read_sidecar(model_json: str | Path) -> dict[str, Any]:
    """Read and validate a ``model.json`` (see :func:`check_sidecar`).

    Raises
    ------
    InputDataError
        For a missing file, invalid JSON or an invalid sidecar.
    """
    return bundle.read_sidecar(model_json, check_sidecar, MISSING_MODEL)


def _complete_sidecar(sidecar: Mapping[str, Any], path: Path) -> dict[str, Any]:
    return check_sidecar({"format": SIDECAR_FORMAT, "channels": list(CHANNELS), **sidecar}, path)


def save_realbogus_model(model: nn.Module, sidecar: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/model.pt`` and ``out_dir/model.json`` (:func:`astrodag.training.bundle.save_model`).

    Parameters
    ----------
    model : torch.nn.Module
        A network built by :func:`astrodag.models.registry.build_model`.
    sidecar : mapping
        At least ``architecture``, ``options``, ``input_shape``, ``normalisation`` and
        ``threshold``; ``format`` and ``channels`` are filled in.
    out_dir : str or Path

    Returns
    -------
    dict
        ``{"model": path of model.pt, "sidecar": path of model.json}``.
    """
    return bundle.save_model(model, sidecar, out_dir, check=_complete_sidecar)


def _build(sidecar: Mapping[str, Any]) -> nn.Module:
    from astrodag.models.registry import build_model

    return build_model(sidecar["architecture"], sidecar["options"])


def load_realbogus_model(model_pt: str | Path, model_json: str | Path | None = None,
                         device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from its sidecar and load its weights (:func:`astrodag.training.bundle.load_model`).

    Parameters
    ----------
    model_pt : str or Path
        The ``state_dict`` file.
    model_json : str or Path, optional
        The sidecar (default: ``model_pt`` with the suffix ``.json``).
    device : str or torch.device, default "cpu"

    Returns
    -------
    (model, sidecar)
        The network in evaluation mode on ``device`` and the validated sidecar.

    Raises
    ------
    InputDataError
        For a missing or unreadable file, an invalid sidecar or weights that do not fit the
        recorded architecture.
    """
    return bundle.load_model(model_pt, _build, model_json, device, check=check_sidecar, missing_hint=MISSING_MODEL)


def export_realbogus_onnx(model_pt: str | Path, model_json: str | Path | None, out_path: str | Path,
                          check: bool = True) -> dict[str, Any]:
    """Export a trained real/bogus model to ONNX (:func:`astrodag.models.onnx_export.export_onnx`).

    The graph takes ``triplets`` (float32 ``(batch, 3, S, S)``, normalised as for
    :class:`~astrodag.supernova.realbogus.scoring.RealBogusScorer`) and returns ``score``, P(real).
    The sidecar's facts travel in the model's metadata: ``architecture``, ``threshold``,
    ``input_shape``, ``normalisation`` (JSON) and the whole ``sidecar`` (JSON).
    """
    from astrodag.models.onnx_export import export_onnx

    model, sidecar = load_realbogus_model(model_pt, model_json, "cpu")
    shape = list(sidecar["input_shape"])
    metadata = {"architecture": sidecar["architecture"], "threshold": json.dumps(sidecar["threshold"]),
                "input_shape": json.dumps(shape), "normalisation": json.dumps(sidecar["normalisation"]),
                "sidecar": json.dumps(sidecar, default=str)}
    return export_onnx(model, shape, out_path, metadata, input_name="triplets", check=check)
