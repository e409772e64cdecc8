"""Real/bogus networks: shapes, clear errors, and the torchvision layout of the ResNet."""

import pytest
import torch

from astrodag.errors import ConfigError
from astrodag.models.braai import BraaiCNN, resnet18_triplet
from astrodag.models.registry import build_model


def test_braai_returns_one_logit_per_triplet_and_has_the_published_layout():
    model = BraaiCNN()
    assert model(torch.zeros(5, 3, 63, 63)).shape == (5,)
    convolutions = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convolutions] == [32, 64, 128]
    dense = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(128 * 7 * 7, 256), (256, 1)]


def test_braai_other_sizes_and_channels():
    assert BraaiCNN(in_channels=2, size=31)(torch.zeros(2, 2, 31, 31)).shape == (2,)


@pytest.mark.parametrize("shape", [(4, 3, 51, 51), (4, 2, 63, 63), (3, 63, 63), (4, 3, 63, 62)])
def test_braai_names_the_expected_shape(shape):
    with pytest.raises(ValueError, match=r"\(batch, 3, 63, 63\)"):
        BraaiCNN()(torch.zeros(shape))


@pytest.mark.parametrize("kwargs", [{"dropout": 1.0}, {"size": 4}, {"in_channels": 0}, {"size": 63.0}])
def test_braai_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        BraaiCNN(**kwargs)


def test_resnet18_keeps_torchvision_parameter_names():
    from torchvision.models import resnet18

    ours = resnet18_triplet().state_dict()
    theirs = resnet18(weights=None).state_dict()
    assert set(ours) - set(theirs) == {"fc.1.weight", "fc.1.bias"}
    assert set(theirs) - set(ours) == {"fc.weight", "fc.bias"}
    different = [name for name in ours if name in theirs and ours[name].shape != theirs[name].shape]
    assert different == ["conv1.weight"]  # the 3x3 stem
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_small_resnet_scores_any_square_size(stem_stride):
    model = resnet18_triplet(stem_stride=stem_stride, width=8).eval()
    assert model(torch.zeros(3, 3, 63, 63)).shape == (3,)
    assert model(torch.zeros(1, 3, 31, 31)).shape == (1,)
    with pytest.raises(ValueError, match=r"\(batch, 3, S, S\)"):
        model(torch.zeros(1, 3, 31, 30))


def test_build_by_name_and_its_errors():
    assert isinstance(build_model("braai", {"dropout": 0.2}), BraaiCNN)
    model = build_model("resnet18", {"width": 8, "stem_stride": 2})
    assert model.conv1.stride == (2, 2) and model.fc[1].in_features == 64
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="braai options.width.: unknown key"):
        build_model("braai", {"width": 8})
    with pytest.raises(ValueError, match="stem_stride"):
        build_model("resnet18", {"stem_stride": 3})
