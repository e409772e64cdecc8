"""A trained model on disk: ``model.pt`` (the weights) beside ``model.json`` (the sidecar).

``model.pt``
    The network's ``state_dict``, on the CPU and in the default memory format, so that any
    device loads it; written atomically and read back with ``torch.load(..., weights_only=True)``
    (no pickled code runs on loading).
``model.json``
    Everything needed to rebuild and use the network: its architecture and options, the
    training settings, the input normalisation, the decision threshold, the data digest, the
    precision... Its keys are each track's own; a track passes a ``check`` that validates them.

:func:`save_model` writes the sidecar last: a crash in between leaves weights without a sidecar,
which :func:`load_model` refuses. A model without weights (e.g. a scikit-learn-style baseline
fully described by its sidecar) is saved with ``model=None``.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrodag.errors import InputDataError
from astrodag.io import atomic_path, write_json

if TYPE_CHECKING:  # torch is imported where weights are written or read: a model without them (the flare
    # baseline, whose coefficients are in its sidecar) does not load it.
    import torch
    from torch import nn

WEIGHTS_FILE = "model.pt"
SIDECAR_FILE = "model.json"
MISSING_HINT = "train a model first"

SidecarCheck = Callable[[Mapping[str, Any], Path], Mapping[str, Any]]


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s ``state_dict`` to ``path`` atomically, as CPU tensors in the default memory format."""
    import torch

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def save_model(model: nn.Module | None, sidecar: Mapping[str, Any], out_dir: str | Path,
               check: SidecarCheck | None = None) -> dict[str, Path]:
    """Write ``out_dir/model.pt`` (unless ``model`` is None) and then ``out_dir/model.json``.

    Parameters
    ----------
    model : torch.nn.Module or None
        The trained network; None writes the sidecar alone.
    sidecar : mapping
        JSON-serialisable record of the model.
    out_dir : str or Path
    check : callable, optional
        ``check(sidecar, path)`` validates (and may complete) the sidecar before anything is
        written; it returns the record to write and raises ``InputDataError`` naming ``path``.

    Returns
    -------
    dict
        ``{"model": path of model.pt or None, "sidecar": path of model.json}``.
    """
    out_dir = Path(out_dir)
    record = dict(check(sidecar, out_dir / SIDECAR_FILE) if check else sidecar)
    weights = save_weights(model, out_dir / WEIGHTS_FILE) if model is not None else None
    write_json(out_dir / SIDECAR_FILE, record)
    return {"model": weights, "sidecar": out_dir / SIDECAR_FILE}


def read_sidecar(model_json: str | Path, check: SidecarCheck | None = None,
                 missing_hint: str = MISSING_HINT) -> dict[str, Any]:
    """Read a ``model.json`` and validate it with ``check``.

    Raises
    ------
    InputDataError
        For a missing file (with ``missing_hint``), invalid JSON, a sidecar that is not a JSON
        object, or whatever ``check`` refuses.
    """
    model_json = Path(model_json)
    if not model_json.is_file():
        raise InputDataError(model_json, f"missing: {missing_hint}")
    try:
        sidecar = json.loads(model_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputDataError(model_json, f"not valid JSON: {error}") from error
    if check is not None:
        return dict(check(sidecar, model_json))
    if not isinstance(sidecar, dict):
        raise InputDataError(model_json, f"the sidecar must be a JSON object, got {type(sidecar).__name__}")
    return sidecar


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_weights(model: nn.Module, model_pt: str | Path) -> nn.Module:
    """Load ``model_pt`` (``weights_only=True``) into ``model``.

    Raises
    ------
    InputDataError
        Naming ``model_pt`` when it cannot be read, is not an astrodag model file (not a
        ``state_dict`` of tensors: any other pickle is refused unread) or its tensors do not fit ``model``.
    """
    import torch

    model_pt = Path(model_pt)
    prefix = "cannot load the model weights"
    try:
        with warnings.catch_warnings():
            # A pickle of another protocol is refused below anyway; torch's warning about it only adds lines.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(model_pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False, which would run the file's code: never for a model file.
        raise InputDataError(model_pt, f"{prefix}: not an astrodag model file (not a state_dict of tensors; refused"
                                       " without running any of its code)") from error
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise InputDataError(model_pt, f"{prefix}: not an astrodag model file, or truncated ({_first_line(error)})"
                             ) from error
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputDataError(model_pt, f"{prefix}: not an astrodag model file (holds a {type(state).__name__},"
                                       " not a state_dict of tensors)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise InputDataError(model_pt, f"{prefix}: they do not fit the architecture in the sidecar"
                                       f" ({_first_line(error)})") from error
    return model


def load_model(model_pt: str | Path, build: Callable[[dict[str, Any]], nn.Module],
               model_json: str | Path | None = None, device: str | torch.device = "cpu",
               check: SidecarCheck | None = None, sidecar: Mapping[str, Any] | None = None,
               missing_hint: str = MISSING_HINT) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network from its sidecar and load its weights.

    Parameters
    ----------
    model_pt : str or Path
        The ``state_dict`` file.
    build : callable
        ``build(sidecar)`` returns the untrained network the sidecar describes; a ValueError
        or TypeError from it becomes an InputDataError naming the sidecar.
    model_json : str or Path, optional
        The sidecar (default: ``model_pt`` with the suffix ``.json``).
    device : str or torch.device, default "cpu"
    check : callable, optional
        Validates the sidecar (see :func:`read_sidecar`).
    sidecar : mapping, optional
        An already-read sidecar; ``model_json`` then only names it in messages.
    missing_hint : str
        What to do about a missing file, for the error message.

    Returns
    -------
    (model, sidecar)
        The network in evaluation mode on ``device`` and the sidecar.

    Raises
    ------
    InputDataError
        For a missing or unreadable file, an invalid sidecar or weights that do not fit the
        recorded architecture.
    """
    model_pt = Path(model_pt)
    model_json = Path(model_json) if model_json is not None else model_pt.with_suffix(".json")
    if not model_pt.is_file():
        raise InputDataError(model_pt, f"missing: {missing_hint}")
    if sidecar is None:
        sidecar = read_sidecar(model_json, check, missing_hint)
    elif check is not None:
        sidecar = check(sidecar, model_json)
    sidecar = dict(sidecar)
    try:
        model = build(sidecar)
    except (ValueError, TypeError) as error:
        raise InputDataError(model_json, f"cannot build the recorded architecture: {error}") from error
    return load_weights(model, model_pt).to(device).eval(), sidecar
