"""EVEREST-style transformer for multivariate time-series windows.

After EVEREST (Ji, Aydin et al.): a linear embedding of each time step, learned
positional embeddings, a stack of pre-norm transformer encoder blocks, and
attention pooling over time into one logit. Sized by config: the published
setting is embed 128, 4 heads, feed-forward 256, 6 blocks, dropout 0.2.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    n_features: int
    n_steps: int
    embed_dim: int = 128
    num_heads: int = 4
    ff_dim: int = 256
    num_blocks: int = 6
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )


class AttentionPooling(nn.Module):
    """Softmax-weighted average over time with a learned scoring vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(sequence), dim=1)  # (batch, steps, 1)
        return (weights * sequence).sum(dim=1)


class EverestTransformer(nn.Module):
    """Binary classifier on (batch, steps, features) windows; returns logits of shape (batch,)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.n_features, config.embed_dim)
        self.position = nn.Parameter(torch.zeros(1, config.n_steps, config.embed_dim))
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(
            d_model=config.embed_dim,
            nhead=config.num_heads,
            dim_feedforward=config.ff_dim,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        # The nested-tensor fast path only applies to post-norm layers; disable it to avoid a warning.
        self.encoder = nn.TransformerEncoder(block, config.num_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.pool = AttentionPooling(config.embed_dim)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.embed_dim, 1))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.ndim != 3 or windows.shape[1:] != (self.config.n_steps, self.config.n_features):
            raise ValueError(
                f"expected windows of shape (batch, {self.config.n_steps}, {self.config.n_features}), "
                f"got {tuple(windows.shape)}"
            )
        hidden = self.encoder(self.embed(windows) + self.position)
        return self.head(self.pool(self.norm(hidden))).squeeze(-1)
