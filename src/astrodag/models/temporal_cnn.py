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

import dataclasses

import torch
from torch import nn
from torch.nn import functional

from astrodag.errors import ConfigError
from astrodag.settings import Settings, choice, number, sequence, setting


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` that pads ``(kernel_size - 1) * dilation`` zeros on the left only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(functional.pad(inputs, (self.left_padding, 0)))


@dataclasses.dataclass(frozen=True)
class TemporalCNNSettings(Settings):
    """Architecture of :class:`TimeDistributedCNN` (defaults are the seed's; config ``microlensing.model``).

    The input channels and the number of classes are given when the network is built.

    Keys
    ----
    channels : list of int, default [128, 64, 32]
        Filters of each causal convolution.
    kernel_sizes : list of int, default [5, 3, 3]
        Kernel of each convolution (as many as ``channels``).
    dropout : float, default 0.3
        Dropout after every convolution, in [0, 1).
    dense_units : int, default 64
        Units of the per-step dense layer.
    memory : {"cummax", "none"}, default "cummax"
        ``cummax``: the head also sees the running maximum of the features; ``none``: the seed.
    """

    channels: tuple[int, ...] = setting((128, 64, 32), sequence(number(1, integer=True)))
    kernel_sizes: tuple[int, ...] = setting((5, 3, 3), sequence(number(1, integer=True)))
    dropout: float = setting(0.3, number(0.0, 1.0))
    dense_units: int = setting(64, number(1, integer=True))
    memory: str = setting("cummax", choice("cummax", "none"))

    def validate(self, prefix: str) -> None:
        if len(self.channels) != len(self.kernel_sizes):
            raise ConfigError(f"{prefix}.kernel_sizes", f"must have as many entries as channels ({len(self.channels)})"
                                                        f", got {list(self.kernel_sizes)}")
        if self.dropout >= 1.0:
            raise ConfigError(f"{prefix}.dropout", f"must be < 1, got {self.dropout}")

    @property
    def receptive_field(self) -> int:
        """Number of epochs (the current one included) that one output can see."""
        return 1 + sum(k - 1 for k in self.kernel_sizes)


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
