"""The per-timestep CNN is the seed's architecture and strictly causal."""

import pytest
import torch

from astrodag.models.temporal_cnn import CausalConv1d, TemporalCNNConfig, TimeDistributedCNN


@pytest.mark.parametrize("memory", ["cummax", "none"])
def test_changing_the_future_does_not_change_past_outputs(memory):
    torch.manual_seed(0)
    model = TimeDistributedCNN(TemporalCNNConfig(memory=memory)).eval()
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
    assert gradient[: step - TemporalCNNConfig().receptive_field].sum() > 0


def test_seed_layer_layout_and_output_shape():
    model = TimeDistributedCNN()
    convolutions = [m for m in model.features if isinstance(m, CausalConv1d)]
    assert [c.out_channels for c in convolutions] == [128, 64, 32]
    assert [c.kernel_size[0] for c in convolutions] == [5, 3, 3]
    dropouts = [m.p for m in model.features if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3, 0.3, 0.3]
    assert model.head[0].out_channels == 64 and model.head[2].out_channels == 2
    assert model(torch.zeros(2, 4, 1500)).shape == (2, 1500, 2)
    assert TemporalCNNConfig().receptive_field == 9


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown model option"):
        TemporalCNNConfig.from_dict({"chanels": [1]})
    with pytest.raises(ValueError, match="memory"):
        TemporalCNNConfig(memory="lstm")
    with pytest.raises(ValueError, match="same length"):
        TemporalCNNConfig(channels=(8, 8), kernel_sizes=(3,))
