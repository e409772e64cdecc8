"""Tests for astrodag.models.registry: every architecture by name."""

from __future__ import annotations

import pytest
import torch

from astrodag.models.baseline import LogisticBaseline
from astrodag.models.braai import BraaiCNN, resnet18_triplet
from astrodag.models.registry import ARCHITECTURES, build_model, split_options
from astrodag.models.settings import TemporalCNNSettings, TransformerSettings
from astrodag.models.temporal_cnn import TimeDistributedCNN
from astrodag.models.transformer import EverestTransformer

SHAPES = {
    "everest": {"n_features": 9, "n_steps": 10},
    "baseline": {},
    "temporal_cnn": {"in_channels": 4},
    "braai": {"in_channels": 3, "size": 31},
    "resnet18": {"in_channels": 5},
    "resnet34": {"in_channels": 5},
}
SMALL = {"everest": {"embed_dim": 16, "num_heads": 2, "ff_dim": 32, "num_blocks": 1}, "resnet18": {"width": 8},
         "resnet34": {"width": 8}}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_entry_builds_from_its_name(name):
    assert set(SHAPES) == set(ARCHITECTURES)
    model = build_model(name, SMALL.get(name), **SHAPES[name])
    if name == "baseline":
        assert isinstance(model, LogisticBaseline)
        return
    inputs = {"everest": torch.zeros(2, 10, 9), "temporal_cnn": torch.zeros(2, 4, 20),
              "braai": torch.zeros(2, 3, 31, 31)}.get(name, torch.zeros(2, 5, 21, 21))
    outputs = model.eval()(inputs)
    assert outputs.shape == ((2, 20, 2) if name == "temporal_cnn" else (2,))


def test_the_registry_builds_what_the_classes_build_with_the_same_seed():
    pairs = [
        (lambda: build_model("everest", SMALL["everest"], **SHAPES["everest"]),
         lambda: EverestTransformer(TransformerSettings(**SMALL["everest"]), n_features=9, n_steps=10)),
        (lambda: build_model("temporal_cnn", {"dropout": 0.1}, in_channels=4),
         lambda: TimeDistributedCNN(TemporalCNNSettings(dropout=0.1), in_channels=4)),
        (lambda: build_model("braai", {"dropout": 0.2}, in_channels=3, size=31),
         lambda: BraaiCNN(3, 31, 0.2)),
        (lambda: build_model("resnet18", {"width": 8, "stem_stride": 2}, in_channels=3),
         lambda: resnet18_triplet(3, 0.0, 2, 8)),
    ]
    for registry, direct in pairs:
        torch.manual_seed(3)
        first = registry().state_dict()
        torch.manual_seed(3)
        second = direct().state_dict()
        assert list(first) == list(second)
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_resnet34_has_torchvisions_residual_stages():
    from torchvision.models import resnet34

    ours = build_model("resnet34", {"width": 64}, in_channels=3).state_dict()
    reference = resnet34().state_dict()
    stages = [key for key in reference if key.startswith("layer")]
    assert [key for key in ours if key.startswith("layer")] == stages
    assert all(ours[key].shape == reference[key].shape for key in stages)
    # The small-input stem: 3x3 instead of 7x7, for any number of bands.
    assert build_model("resnet34", {"width": 8}, in_channels=6).conv1.weight.shape == (8, 6, 3, 3)


def test_errors_name_the_architecture_and_the_options():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'; choose one of everest"):
        build_model("vgg")
    with pytest.raises(ValueError, match="braai options.width.*unknown key"):
        build_model("braai", {"width": 8})
    with pytest.raises(ValueError, match="everest options.colour.*unknown key"):
        build_model("everest", {"colour": 1}, n_features=2, n_steps=3)
    with pytest.raises(ValueError, match="in_channels come.*from the data"):
        build_model("temporal_cnn", {"in_channels": 3}, in_channels=4)
    with pytest.raises(ValueError, match="not a shape argument of braai"):
        build_model("braai", n_steps=3)
    with pytest.raises(ValueError, match="resnet18 options.stem_stride"):
        build_model("resnet18", {"stem_stride": 3})


def test_shapes_recorded_among_the_options_are_taken_as_shapes():
    # Sidecars record the shapes beside the options; the registry rebuilds from that record.
    settings, shapes = split_options("temporal_cnn", {"dropout": 0.1, "in_channels": 4, "n_classes": 2})
    assert settings == TemporalCNNSettings(dropout=0.1) and shapes == {"in_channels": 4, "n_classes": 2}
    assert build_model("braai", {"dropout": 0.2, "size": 31}, in_channels=3).size == 31
