"""Architecture options of every model in the registry, one settings class each.

Only architecture fields: the shapes that come from the data (features, steps, channels,
cut-out size) are passed when a model is built (:func:`astrodag.models.registry.build_model`).
Kept free of torch so that checking a config does not load it.
"""

from __future__ import annotations

import dataclasses

from astrodag.errors import ConfigError
from astrodag.settings import Settings, choice, number, sequence, setting


@dataclasses.dataclass(frozen=True)
class TransformerSettings(Settings):
    """Architecture of :class:`~astrodag.models.transformer.EverestTransformer` (defaults: the published setting).

    The window's shape (steps, features) is given when the model is built. A track's config
    section derives from this class with its ``PREFIX`` (``flares.everest``).
    """

    embed_dim: int = setting(128, number(4, integer=True))
    num_heads: int = setting(4, number(1, integer=True))
    ff_dim: int = setting(256, number(4, integer=True))
    num_blocks: int = setting(6, number(1, integer=True))
    dropout: float = setting(0.2, number(0.0, 0.9))

    def validate(self, prefix: str) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{prefix}.embed_dim",
                              f"({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")

    def architecture(self) -> TransformerSettings:
        """The architecture fields alone (a derived section may hold more, such as its loss)."""
        return self.as_base(TransformerSettings)


@dataclasses.dataclass(frozen=True)
class TemporalCNNSettings(Settings):
    """Architecture of :class:`~astrodag.models.temporal_cnn.TimeDistributedCNN` (config ``microlensing.model``).

    The defaults are the seed's.

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


@dataclasses.dataclass(frozen=True)
class BraaiCNNSettings(Settings):
    """Architecture options of :class:`~astrodag.models.braai.BraaiCNN`: dropout before the output layer."""

    dropout: float = setting(0.5, number(0.0, 0.95))


@dataclasses.dataclass(frozen=True)
class ResNetTripletSettings(Settings):
    """Architecture options of :func:`~astrodag.models.braai.resnet18_triplet` and ``resnet34_triplet``."""

    dropout: float = setting(0.0, number(0.0, 0.95))
    stem_stride: int = setting(1, number(1, 2, integer=True))
    width: int = setting(64, number(4, 512, integer=True))


@dataclasses.dataclass(frozen=True)
class LogisticBaselineSettings(Settings):
    """Options of :class:`~astrodag.models.baseline.LogisticBaseline`.

    Keys
    ----
    inverse_regularization : float, default 1.0
        scikit-learn's ``C`` of the L2-regularised fit.
    """

    inverse_regularization: float = setting(1.0, number(0.0, low_open=True))
