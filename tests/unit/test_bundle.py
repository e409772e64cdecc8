"""Tests for astrodag.training.bundle: model.pt + model.json on disk."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from astrodag.errors import InputDataError
from astrodag.training.bundle import load_model, read_sidecar, save_model


def _build(sidecar):
    return nn.Sequential(nn.Linear(sidecar["inputs"], 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


def test_round_trip_restores_the_weights_and_the_sidecar(tmp_path):
    torch.manual_seed(0)
    model = _build({"inputs": 4})
    model(torch.randn(8, 4))  # moves the BatchNorm running statistics away from their start
    paths = save_model(model, {"inputs": 4, "threshold": 0.3}, tmp_path)
    assert paths == {"model": tmp_path / "model.pt", "sidecar": tmp_path / "model.json"}
    assert json.loads((tmp_path / "model.json").read_text()) == {"inputs": 4, "threshold": 0.3}
    loaded, sidecar = load_model(tmp_path / "model.pt", _build)
    assert sidecar == {"inputs": 4, "threshold": 0.3} and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    # weights_only loading: the file holds tensors and nothing else.
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(model.state_dict())


def test_sidecar_alone_and_checks(tmp_path):
    assert save_model(None, {"kind": "baseline"}, tmp_path)["model"] is None
    assert not (tmp_path / "model.pt").exists()

    def check(sidecar, path):
        if "threshold" not in sidecar:
            raise InputDataError(path, "lacks threshold")
        return {"format": "test/1", **sidecar}

    with pytest.raises(InputDataError, match="model.json: lacks threshold"):
        save_model(_build({"inputs": 2}), {"inputs": 2}, tmp_path / "refused", check=check)
    assert not (tmp_path / "refused" / "model.pt").exists()
    save_model(_build({"inputs": 2}), {"inputs": 2, "threshold": 0.5}, tmp_path / "ok", check=check)
    assert read_sidecar(tmp_path / "ok" / "model.json", check)["format"] == "test/1"


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match="model.json: missing: train it"):
        read_sidecar(tmp_path / "model.json", missing_hint="train it")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        read_sidecar(tmp_path / "model.json")
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(InputDataError, match="JSON object"):
        read_sidecar(tmp_path / "model.json")
    save_model(_build({"inputs": 4}), {"inputs": 4}, tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"inputs": 5}))
    with pytest.raises(InputDataError, match="model.pt: cannot load the model weights"):
        load_model(tmp_path / "model.pt", _build)
    with pytest.raises(InputDataError, match="cannot build the recorded architecture"):
        load_model(tmp_path / "model.pt", lambda sidecar: _build({"inputs": "four"}))
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match="model.pt: cannot load"):
        load_model(tmp_path / "model.pt", _build, sidecar={"inputs": 4})
