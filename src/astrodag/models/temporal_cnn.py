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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` that pads ``(kernel_size - 1) * dilation`` zeros on the left only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(functional.pad(inputs, (self.left_padding, 0)))


@dataclasses.dataclass(frozen=True)
class TemporalCNNConfig:
    """Architecture of :class:`TimeDistributedCNN` (defaults are the seed's)."""

    in_channels: int = 4
    channels: Sequence[int] = (128, 64, 32)
    kernel_sizes: Sequence[int] = (5, 3, 3)
    dropout: float = 0.3
    dense_units: int = 64
    n_classes: int = 2
    memory: str = "cummax"

    def __post_init__(self) -> None:
        if self.memory not in ("cummax", "none"):
            raise ValueError(f"memory must be 'cummax' or 'none', got {self.memory!r}")
        if len(self.channels) != len(self.kernel_sizes) or not self.channels:
            raise ValueError("channels and kernel_sizes must be non-empty and of the same length")
        if min(self.channels) < 1 or min(self.kernel_sizes) < 1 or self.in_channels < 1:
            raise ValueError("channel counts and kernel sizes must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TemporalCNNConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "channels": list(self.channels),
                "kernel_sizes": list(self.kernel_sizes)}

    @property
    def receptive_field(self) -> int:
        """Number of epochs (the current one included) that one output can see."""
        return 1 + sum(k - 1 for k in self.kernel_sizes)


class TimeDistributedCNN(nn.Module):
    """Inputs ``(batch, channels, steps)`` -> logits ``(batch, steps, n_classes)``."""

    def __init__(self, config: TemporalCNNConfig = TemporalCNNConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels
        for out_channels, kernel_size in zip(config.channels, config.kernel_sizes):
            layers += [CausalConv1d(width, out_channels, kernel_size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = out_channels
        self.features = nn.Sequential(*layers)
        head_width = 2 * width if config.memory == "cummax" else width
        # A Dense layer applied at every step is a 1x1 convolution.
        self.head = nn.Sequential(
            nn.Conv1d(head_width, config.dense_units, 1),
            nn.ReLU(),
            nn.Conv1d(config.dense_units, config.n_classes, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.features(inputs)
        if self.config.memory == "cummax":
            features = torch.cat([features, torch.cummax(features, dim=2).values], dim=1)
        return self.head(features).transpose(1, 2)
