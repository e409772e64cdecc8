"""Shared training machinery: the resumable Trainer, losses and seeding."""

from astrodag.training.losses import BinaryFocalLoss
from astrodag.training.seeding import seed_everything, select_device
from astrodag.training.trainer import Trainer, TrainerSettings, TrainingResult

__all__ = ["BinaryFocalLoss", "Trainer", "TrainerSettings", "TrainingResult", "seed_everything", "select_device"]
