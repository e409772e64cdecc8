"""A causal, per-timestep 1D CNN for real-time light-curve classification.

The seed system is a Keras ``TimeDistributed`` network: Conv1D(128, k5) ->
Dropout(0.3) -> Conv1D(64, k3) -> Dropout -> Conv1D(32, k3) -> Dropout ->
TimeDistributed Dense(64) -> Dense(2), which outputs class scores at every
epoch. Keras's ``padding="same"`` would let step ``t`` see epochs after ``t``;
the claim here is real-time classification, so every convolution is padded on
the left only and the output at step ``t`` depends on epochs ``<= t`` alone.

The seed's three convolutions see only 9 epochs (a few days) before step
``t``, so by the end of an event it has forgotten a caustic crossing it saw.
With ``memory="cummax"`` (the default) the per-step head also receives the
running maximum of every convolutional feature up to ``t``: still causal, and
it remembers that something binary-like happened. ``memory="none"`` is the
seed exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from astrodag.models.settings import TemporalCNNSettings


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` that pads ``(kernel_size - 1) * dilation`` zeros on the left only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(functional.pad(inputs, (self.left_padding, 0)))


class TimeDistributedCNN(nn.Module):
    """Inputs ``(batch, in_channels, steps)`` -> logits ``(batch, steps, n_classes)``."""

    def __init__(self, settings: TemporalCNNSettings = TemporalCNNSettings(), in_channels: int = 4, n_classes: int = 2):
        super().__init__()
        self.settings = settings
        layers: list[nn.Module] = []
        width = in_channels
        for out_channels, kernel_size in zip(settings.channels, settings.kernel_sizes):
            layers += [CausalConv1d(width, out_channels, kernel_size), nn.ReLU(), nn.Dropout(settings.dropout)]
            width = out_channels
        self.features = nn.Sequential(*layers)
        head_width = 2 * width if settings.memory == "cummax" else width
        # A Dense layer applied at every step is a 1x1 convolution.
        self.head = nn.Sequential(
            nn.Conv1d(head_width, settings.dense_units, 1),
            nn.ReLU(),
            nn.Conv1d(settings.dense_units, n_classes, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.features(inputs)
        if self.settings.memory == "cummax":
            features = torch.cat([features, torch.cummax(features, dim=2).values], dim=1)
        return self.head(features).transpose(1, 2)
