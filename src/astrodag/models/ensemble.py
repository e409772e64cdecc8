"""Predictions of an ensemble of networks, with Monte-Carlo dropout and inverse-variance fusion.

Each of the N members (networks returning logits) is run ``mc_passes`` times with its dropout
layers active and everything else in evaluation mode (BatchNorm keeps its running statistics),
which samples its predictive distribution (Gal & Ghahramani 2016). Per sample and member this
gives the mean and variance of the logit; the members are then fused by inverse-variance weights,

    fused = sum_m (mean_m / var_m) / sum_m (1 / var_m),    fused_variance = 1 / sum_m (1 / var_m),

and their disagreement is the standard deviation of the member means. With ``mc_passes=0`` each
member runs once in evaluation mode: the variances are 0 and the fused logit is the plain mean
(for one member, that member's logit, bit for bit).

Dropout masks are drawn from torch's generator seeded with ``seed`` inside
:func:`torch.random.fork_rng`, so predictions are reproducible and the caller's random state
is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Dropout layers switched on for the Monte-Carlo passes.
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class EnsemblePrediction:
    """Per-sample outputs of :meth:`EnsemblePredictor.predict` (float32 tensors on the predictor's device).

    Attributes
    ----------
    logit : Tensor, shape (n, ...)
        The fused logit.
    variance : Tensor, shape (n, ...)
        Its variance (0 without Monte-Carlo passes).
    member_mean, member_variance : Tensor, shape (members, n, ...)
        Mean and variance of each member's logit over its passes.
    disagreement : Tensor, shape (n, ...)
        Standard deviation of the member means (0 for one member).
    """

    logit: torch.Tensor
    variance: torch.Tensor
    member_mean: torch.Tensor
    member_variance: torch.Tensor
    disagreement: torch.Tensor

    @property
    def probability(self) -> torch.Tensor:
        """Sigmoid of the fused logit."""
        return torch.sigmoid(self.logit)


def fuse(member_mean: torch.Tensor, member_variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-variance fusion over the first (member) axis.

    Where every member has variance 0 (deterministic members) the fused logit is their plain
    mean and the fused variance 0.

    Returns
    -------
    (logit, variance)
    """
    if member_mean.shape[0] == 1:
        return member_mean[0], member_variance[0]
    deterministic = (member_variance == 0).all(dim=0)
    weights = 1.0 / torch.where(member_variance > 0, member_variance, torch.ones_like(member_variance))
    total = weights.sum(dim=0)
    fused = (weights * member_mean).sum(dim=0) / total
    logit = torch.where(deterministic, member_mean.mean(dim=0), fused)
    variance = torch.where(deterministic, torch.zeros_like(total), 1.0 / total)
    return logit, variance


class EnsemblePredictor:
    """N networks predicting together, optionally with Monte-Carlo dropout.

    Parameters
    ----------
    members : sequence of torch.nn.Module
        Networks returning logits of shape ``(n, ...)``; they are moved to ``device``.
    mc_passes : int, default 0
        Forward passes per member with dropout active (0: one pass in evaluation mode). A member
        with zero variance everywhere (no dropout) gets the plain mean in fusion.
    seed : int, default 0
        Seeds the dropout masks of the Monte-Carlo passes.
    device : str or torch.device, default "cpu"
    autocast_dtype : torch.dtype, optional
        Run the members under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``); the
        outputs are converted to float32 before any averaging.
    memory_format : torch.memory_format, default torch.contiguous_format
        Layout of the inputs (``torch.channels_last`` for faster convolutions on CPU).

    Raises
    ------
    ValueError
        Without members or with a negative ``mc_passes``.
    """

    def __init__(self, members: Sequence[nn.Module], mc_passes: int = 0, seed: int = 0,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if isinstance(mc_passes, bool) or not isinstance(mc_passes, int) or mc_passes < 0:
            raise ValueError(f"mc_passes must be a non-negative integer, got {mc_passes!r}")
        self.device = torch.device(device)
        self.members = [member.to(self.device).eval() for member in members]
        self.mc_passes = mc_passes
        self.seed = int(seed)
        self.autocast_dtype = autocast_dtype
        self.memory_format = memory_format

    def _passes(self, member: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The member's float32 logits, shape ``(passes, n, ...)``."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            if not self.mc_passes:
                return member(inputs).float()[None]
            dropouts = [module for module in member.modules() if isinstance(module, DROPOUT_TYPES)]
            try:
                for module in dropouts:
                    module.train()
                return torch.stack([member(inputs).float() for _ in range(self.mc_passes)])
            finally:
                for module in dropouts:
                    module.eval()

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor) -> EnsemblePrediction:
        """Fused logits, their variance and the members' statistics for a batch of inputs."""
        inputs = inputs.to(self.device)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=self.mc_passes > 0):
            if self.mc_passes:
                torch.manual_seed(self.seed)
            outputs = [self._passes(member, inputs) for member in self.members]
        means, variances = [], []
        for passes in outputs:
            if len(passes) == 1:
                means.append(passes[0])
                variances.append(torch.zeros_like(passes[0]))
            else:
                means.append(passes.mean(dim=0))
                variances.append(passes.var(dim=0, unbiased=True))
        member_mean, member_variance = torch.stack(means), torch.stack(variances)
        logit, variance = fuse(member_mean, member_variance)
        disagreement = member_mean.std(dim=0, unbiased=False) if len(means) > 1 else torch.zeros_like(logit)
        return EnsemblePrediction(logit, variance, member_mean, member_variance, disagreement)
