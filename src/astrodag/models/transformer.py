"""EVEREST-style transformer for multivariate time-series windows.

After EVEREST (Ji, Aydin et al.): a linear embedding of each time step, learned
positional embeddings, a stack of pre-norm transformer encoder blocks, and
attention pooling over time into one logit. Sized by config: the published
setting is embed 128, 4 heads, feed-forward 256, 6 blocks, dropout 0.2.
"""

from __future__ import annotations

import torch
from torch import nn

from astrodag.models.settings import TransformerSettings


class AttentionPooling(nn.Module):
    """Softmax-weighted average over time with a learned scoring vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(sequence), dim=1)  # (batch, steps, 1)
        return (weights * sequence).sum(dim=1)


class EverestTransformer(nn.Module):
    """Binary classifier on (batch, steps, features) windows; returns logits of shape (batch,).

    Parameters
    ----------
    settings : TransformerSettings
        The architecture.
    n_features, n_steps : int
        The shape of one window.
    """

    def __init__(self, settings: TransformerSettings, n_features: int, n_steps: int):
        super().__init__()
        self.settings = settings
        self.n_features = n_features
        self.n_steps = n_steps
        self.embed = nn.Linear(n_features, settings.embed_dim)
        self.position = nn.Parameter(torch.zeros(1, n_steps, settings.embed_dim))
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(
            d_model=settings.embed_dim,
            nhead=settings.num_heads,
            dim_feedforward=settings.ff_dim,
            dropout=settings.dropout,
            batch_first=True,
            norm_first=True,
        )
        # The nested-tensor fast path only applies to post-norm layers; disable it to avoid a warning.
        self.encoder = nn.TransformerEncoder(block, settings.num_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(settings.embed_dim)
        self.pool = AttentionPooling(settings.embed_dim)
        self.head = nn.Sequential(nn.Dropout(settings.dropout), nn.Linear(settings.embed_dim, 1))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.ndim != 3 or windows.shape[1:] != (self.n_steps, self.n_features):
            raise ValueError(
                f"expected windows of shape (batch, {self.n_steps}, {self.n_features}), "
                f"got {tuple(windows.shape)}"
            )
        hidden = self.encoder(self.embed(windows) + self.position)
        return self.head(self.pool(self.norm(hidden))).squeeze(-1)
