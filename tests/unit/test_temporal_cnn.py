"""The per-timestep CNN is the seed's architecture and strictly causal."""

import pytest
import torch

from astrodag.errors import ConfigError
from astrodag.models.settings import TemporalCNNSettings
from astrodag.models.temporal_cnn import CausalConv1d, TimeDistributedCNN


@pytest.mark.parametrize("memory", ["cummax", "none"])
def test_changing_the_future_does_not_change_past_outputs(memory):
    torch.manual_seed(0)
    model = TimeDistributedCNN(TemporalCNNSettings(memory=memory)).eval()
    inputs = torch.randn(3, 4, 200)
    changed = inputs.clone()
    cut = 120
    changed[:, :, cut + 1:] = torch.randn(3, 4, 200 - cut - 1) * 10
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    assert torch.equal(before[:, : cut + 1], after[:, : cut + 1])
    assert not torch.allclose(before[:, cut + 1:], after[:, cut + 1:])


def test_gradient_of_an_output_reaches_no_later_input():
    torch.manual_seed(1)
    model = TimeDistributedCNN().eval()
    inputs = torch.randn(1, 4, 64, requires_grad=True)
    step = 30
    model(inputs)[0, step, 1].backward()
    gradient = inputs.grad[0].abs().sum(dim=0)
    assert torch.all(gradient[step + 1:] == 0)
    assert gradient[step] > 0
    # With the running-max memory, epochs far before the receptive field still matter.
    assert gradient[: step - TemporalCNNSettings().receptive_field].sum() > 0


def test_seed_layer_layout_and_output_shape():
    model = TimeDistributedCNN()
    convolutions = [m for m in model.features if isinstance(m, CausalConv1d)]
    assert [c.out_channels for c in convolutions] == [128, 64, 32]
    assert [c.kernel_size[0] for c in convolutions] == [5, 3, 3]
    dropouts = [m.p for m in model.features if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3, 0.3, 0.3]
    assert model.head[0].out_channels == 64 and model.head[2].out_channels == 2
    assert model(torch.zeros(2, 4, 1500)).shape == (2, 1500, 2)
    assert TemporalCNNSettings().receptive_field == 9


def test_settings_reject_bad_options():
    with pytest.raises(ConfigError, match="'microlensing.model.chanels': unknown key; did you mean 'channels'"):
        TemporalCNNSettings.from_config({"chanels": [1]}, "microlensing.model")
    with pytest.raises(ConfigError, match="microlensing.model.memory"):
        TemporalCNNSettings.from_config({"memory": "lstm"}, "microlensing.model")
    with pytest.raises(ConfigError, match="microlensing.model.kernel_sizes"):
        TemporalCNNSettings.from_config({"channels": [8, 8], "kernel_sizes": [3]}, "microlensing.model")
    with pytest.raises(ConfigError, match="microlensing.model.dropout"):
        TemporalCNNSettings.from_config({"dropout": 1.0}, "microlensing.model")


def test_input_channels_and_classes_are_given_when_the_network_is_built():
    model = TimeDistributedCNN(TemporalCNNSettings(channels=(8,), kernel_sizes=(3,)), in_channels=2, n_classes=3)
    assert model(torch.zeros(1, 2, 20)).shape == (1, 20, 3)
