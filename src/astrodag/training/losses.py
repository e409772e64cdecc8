"""Losses for imbalanced binary classification."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BinaryFocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) on logits, for rare positive classes.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``; with ``gamma=0`` and
    ``alpha=None`` it equals binary cross-entropy.

    Parameters
    ----------
    gamma : float
        Focusing parameter; larger values down-weight easy examples.
    alpha : float or None
        Weight of the positive class in (0, 1); ``None`` weights both classes equally.
    positive_weight : float
        Extra factor on positive examples, e.g. ``n_negative / n_positive`` so
        that a rare class is not ignored and probabilities of 0.1-0.9 stay
        meaningful decision thresholds.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, positive_weight: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0 < alpha < 1:
            raise ValueError(f"focal loss alpha must be in (0, 1), got {alpha}")
        if positive_weight <= 0:
            raise ValueError(f"positive_weight must be > 0, got {positive_weight}")
        self.gamma = gamma
        self.alpha = alpha
        self.positive_weight = positive_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_true = torch.exp(-cross_entropy)
        loss = (1 - p_true) ** self.gamma * cross_entropy
        if self.alpha is not None:
            loss = (self.alpha * targets + (1 - self.alpha) * (1 - targets)) * loss
        if self.positive_weight != 1.0:
            loss = (1 + (self.positive_weight - 1) * targets) * loss
        return loss.mean()
