"""Settings of the shared trainer: one section class for every track's ``training`` config.

Kept free of torch so that reading or checking a config (the workflow's start, a job that trains
no network) does not load it.
"""

from __future__ import annotations

import dataclasses

from astrodag.errors import ConfigError
from astrodag.settings import Settings, choice, device_name, flag, number, optional, setting, text

# Forward-pass precisions on a CPU (astrodag.training.precision resolves "auto").
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainerSettings(Settings):
    """Hyper-parameters of one training run (all of them enter the resume fingerprint).

    One section class for every track: a track whose config section wants other defaults
    derives from it with its ``PREFIX`` and redeclares those fields (as the flare and
    microlensing ``training`` sections do), so every option reaches every track.

    Keys
    ----
    max_epochs : int, default 20
    batch_size : int, default 256
        Training batch size.
    eval_batch_size : int, default 1024
        Batch size of validation and prediction passes.
    learning_rate : float, default 0.001
        Peak AdamW learning rate (linear warm-up, cosine decay).
    weight_decay : float, default 0.01
    warmup_fraction : float, default 0.05
        Share of the training steps spent warming the learning rate up, in [0, 1).
    grad_clip_norm : float or null, default 1.0
        Gradient-norm clipping (null: none).
    early_stopping_patience : int, default 5
        Epochs without a better monitored score before training stops.
    monitor : str, default "aucpr"
        Validation metric of early stopping and the best checkpoint.
    monitor_mode : {"max", "min"}, default "max"
    device : str, default "auto"
        ``auto`` (CUDA when present), ``cpu`` or a torch device string.
    mixed_precision : bool, default true
        Autocast on CUDA (bfloat16 where supported).
    cpu_precision : {"float32", "bfloat16", "auto"}, default "float32"
        Autocast on a CPU; ``auto``: bfloat16 where the CPU runs it natively.
    tensorboard : bool, default true
        Write TensorBoard events into the work directory.
    """

    max_epochs: int = setting(20, number(1, integer=True))
    batch_size: int = setting(256, number(1, integer=True))
    eval_batch_size: int = setting(1024, number(1, integer=True))
    learning_rate: float = setting(1e-3, number(0.0, low_open=True))
    weight_decay: float = setting(1e-2, number(0.0))
    warmup_fraction: float = setting(0.05, number(0.0, 1.0))
    grad_clip_norm: float | None = setting(1.0, optional(number(0.0, low_open=True)))
    early_stopping_patience: int = setting(5, number(1, integer=True))
    monitor: str = setting("aucpr", text)
    monitor_mode: str = setting("max", choice("max", "min"))
    device: str = setting("auto", device_name)
    mixed_precision: bool = setting(True, flag)
    cpu_precision: str = setting("float32", choice(*PRECISIONS))
    tensorboard: bool = setting(True, flag)

    def validate(self, prefix: str) -> None:
        if self.warmup_fraction >= 1.0:
            raise ConfigError(f"{prefix}.warmup_fraction", f"must be < 1, got {self.warmup_fraction}")
