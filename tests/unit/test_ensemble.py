"""Tests for astrodag.models.ensemble: MC dropout, inverse-variance fusion, reproducibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrodag.models.ensemble import EnsemblePredictor, fuse


def _member(seed: int, dropout: float = 0.5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1),
                         nn.Flatten(0))


def test_fusion_matches_a_hand_computation():
    means = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    variances = torch.tensor([[1.0, 4.0], [0.25, 1.0]])
    logit, variance = fuse(means, variances)
    # Sample 0: weights 1 and 4 -> (1 + 12) / 5; sample 1: weights 1/4 and 1 -> (-0.5 + 0) / 1.25.
    assert logit.tolist() == pytest.approx([13 / 5, -0.4])
    assert variance.tolist() == pytest.approx([1 / 5, 1 / 1.25])
    deterministic, zero = fuse(means, torch.zeros_like(means))
    assert deterministic.tolist() == pytest.approx([2.0, -1.0]) and zero.tolist() == [0.0, 0.0]
    single, _ = fuse(means[:1], variances[:1])
    assert torch.equal(single, means[0])


def test_predictions_combine_the_members_statistics():
    members = [_member(1), _member(2), _member(3)]
    inputs = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    prediction = EnsemblePredictor(members, mc_passes=20, seed=5).predict(inputs)
    assert prediction.member_mean.shape == (3, 32) and prediction.member_variance.shape == (3, 32)
    assert (prediction.member_variance > 0).all()
    logit, variance = fuse(prediction.member_mean, prediction.member_variance)
    assert torch.equal(prediction.logit, logit) and torch.equal(prediction.variance, variance)
    assert torch.allclose(prediction.disagreement, prediction.member_mean.std(dim=0, unbiased=False))
    assert torch.allclose(prediction.probability, torch.sigmoid(logit))
    # The members are back in evaluation mode afterwards.
    assert not any(module.training for member in members for module in member.modules())


def test_mc_passes_vary_with_dropout_and_not_without():
    inputs = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    with_dropout = EnsemblePredictor([_member(1, 0.5)], mc_passes=10).predict(inputs)
    assert (with_dropout.member_variance > 0).any()
    without = EnsemblePredictor([_member(1, 0.0)], mc_passes=10).predict(inputs)
    assert torch.all(without.member_variance < 1e-10)
    # BatchNorm stays in evaluation mode: without dropout the passes equal a plain evaluation pass.
    member = _member(1, 0.0).eval()
    with torch.no_grad():
        assert torch.allclose(without.member_mean[0], member(inputs), atol=1e-6)


def test_one_member_without_passes_is_the_network_itself():
    member = _member(4).eval()
    inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    prediction = EnsemblePredictor([member]).predict(inputs)
    with torch.no_grad():
        expected = member(inputs)
    assert torch.equal(prediction.logit, expected)
    assert torch.equal(prediction.variance, torch.zeros(8)) and torch.equal(prediction.disagreement, torch.zeros(8))


def test_reproducible_under_a_seed_and_leaves_the_global_generator_alone():
    inputs = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    members = [_member(1), _member(2)]
    torch.manual_seed(99)
    state = torch.get_rng_state()
    first = EnsemblePredictor(members, mc_passes=5, seed=7).predict(inputs)
    assert torch.equal(torch.get_rng_state(), state)
    second = EnsemblePredictor(members, mc_passes=5, seed=7).predict(inputs)
    other = EnsemblePredictor(members, mc_passes=5, seed=8).predict(inputs)
    assert torch.equal(first.logit, second.logit) and torch.equal(first.member_variance, second.member_variance)
    assert not torch.equal(first.logit, other.logit)
    with pytest.raises(ValueError, match="at least one member"):
        EnsemblePredictor([])
    with pytest.raises(ValueError, match="mc_passes"):
        EnsemblePredictor(members, mc_passes=-1)
