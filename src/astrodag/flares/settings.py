"""Settings of the flare study's config sections (``flares.dataset``, ``everest``, ``training``, ...).

Each class is one section of ``config/config.yaml``, checked by :func:`astrodag.config.validate_config`
when the workflow starts; the defaults are those a section gets when it omits a key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from astrodag.errors import ConfigError
from astrodag.evaluation.thresholds import EVEREST_WEIGHTS, validate_weights
from astrodag.models.settings import LogisticBaselineSettings, TransformerSettings
from astrodag.settings import Settings, choice, flag, fractions, number, optional, setting
from astrodag.training.settings import TrainerSettings


def _open_fraction(key: str, value: Any) -> float:
    """A number strictly between 0 and 1."""
    value = number(0.0, 1.0, low_open=True)(key, value)
    if value >= 1.0:
        raise ConfigError(key, f"must be < 1, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class FlareDatasetSettings(Settings):
    """Windows of SHARP keywords and each experiment's split (config ``flares.dataset``).

    Keys
    ----
    window_steps : int, default 10
        Samples per input window.
    cadence_minutes : int, default 60
        Each region's keyword series is resampled to this cadence: every whole multiple of it since
        1970 (UTC) takes the nearest record (real SHARP series have 12-min records).
    resample_tolerance_minutes : float, default 6
        Largest distance between a grid time and the record that fills it, under half the cadence;
        a grid time without a record this close is a gap, and no window spans a gap.
    max_longitude : float or null, default 70
        Drop keyword records whose ``|LON_FWT|`` (Stonyhurst longitude, degrees) is not below this:
        near the limb the keywords are foreshortened and noisy. The keyword table then needs a
        ``LON_FWT`` column; null keeps every record.
    drop_unobserved_horizon : bool, default true
        Leave out of an experiment the windows whose prediction horizon runs past their region's last
        record: flares of a region that has crossed the west limb would make them false negatives.
    stride : int, default 1
        Steps between consecutive window ends (1: every window).
    split_method : {"region", "time"}, default "region"
        ``region``: regions shuffled with seed ``split_seed`` + the experiment's seed, stratified by
        their strongest flare, so each seed tests on other regions; train and test regions are then on
        the disk at the same time. ``time``: regions ordered by their first record, the earliest to
        train, then validation, then test; the same split for every seed.
    split_fractions : mapping, default {train: 0.6, validation: 0.2, test: 0.2}
        Shares of the active regions in each split.
    split_seed : int, default 7
        Base seed of the region split; experiment seed s splits with ``split_seed + s``.
    """

    PREFIX: ClassVar[str] = "flares.dataset"

    window_steps: int = setting(10, number(2, integer=True))
    cadence_minutes: int = setting(60, number(1, integer=True))
    resample_tolerance_minutes: float = setting(6.0, number(0.0))
    max_longitude: float | None = setting(70.0, optional(number(0.0, 90.0, low_open=True)))
    drop_unobserved_horizon: bool = setting(True, flag)
    stride: int = setting(1, number(1, integer=True))
    split_method: str = setting("region", choice("region", "time"))
    split_fractions: dict[str, float] = setting({"train": 0.6, "validation": 0.2, "test": 0.2},
                                                fractions("train", "validation", "test"))
    split_seed: int = setting(7, number(0, integer=True))

    def validate(self, prefix: str) -> None:
        if not 2 * self.resample_tolerance_minutes < self.cadence_minutes:
            raise ConfigError(f"{prefix}.resample_tolerance_minutes",
                              f"must be under half the cadence ({self.cadence_minutes} min), "
                              f"got {self.resample_tolerance_minutes}")


@dataclasses.dataclass(frozen=True)
class EverestSettings(TransformerSettings):
    """The EVEREST transformer and its loss (config ``flares.everest``; published: 128, 4, 256, 6, 0.2).

    Keys
    ----
    embed_dim, num_heads, ff_dim, num_blocks, dropout
        The architecture (:class:`~astrodag.models.transformer.TransformerSettings`).
    focal_gamma : float, default 2.0
        Focusing parameter of the focal loss.
    focal_alpha : float or null, default null
        Weight of the positive class in the focal loss, in (0, 1); null weighs both classes equally.
    balance_classes : bool, default true
        Weigh positives by n_negative / n_positive of the training split in the loss.
    """

    PREFIX: ClassVar[str] = "flares.everest"

    focal_gamma: float = setting(2.0, number(0.0))
    focal_alpha: float | None = setting(None, optional(_open_fraction))
    balance_classes: bool = setting(True, flag)


@dataclasses.dataclass(frozen=True)
class FlareTrainerSettings(TrainerSettings):
    """The shared trainer's settings with this track's defaults (config ``flares.training``)."""

    PREFIX: ClassVar[str] = "flares.training"

    eval_batch_size: int = setting(2048, number(1, integer=True))
    monitor: str = setting("aucpr", choice("aucpr", "roc_auc", "tss", "f1", "loss", "brier"))


@dataclasses.dataclass(frozen=True)
class BaselineSettings(LogisticBaselineSettings):
    """The logistic-regression baseline (config ``flares.baseline``; keys as its base class)."""

    PREFIX: ClassVar[str] = "flares.baseline"


@dataclasses.dataclass(frozen=True)
class SweepSettings(Settings):
    """The decision-threshold sweep on the validation split (config ``flares.sweep``).

    Keys
    ----
    start, stop : float, default 0.1, 0.9
        Range of the thresholds tried, in [0, 1].
    num : int, default 81
        Thresholds tried (evenly spaced).
    weights : mapping, default {tss: 0.4, f1: 0.2, precision: 0.15, recall: 0.15, specificity: 0.1}
        Weights of the threshold score (EVEREST's), keyed by metric name.
    """

    PREFIX: ClassVar[str] = "flares.sweep"

    start: float = setting(0.1, number(0.0, 1.0))
    stop: float = setting(0.9, number(0.0, 1.0))
    num: int = setting(81, number(2, integer=True))
    weights: dict[str, float] = setting(EVEREST_WEIGHTS, lambda key, value: validate_weights(value, key))


@dataclasses.dataclass(frozen=True)
class FlareAnalysisSettings(Settings):
    """Bootstrap intervals and recalibration of the study's analysis (config ``flares.analysis``).

    Keys
    ----
    confidence : float, default 0.95
        Level of the intervals, in (0, 1).
    bootstrap_resamples : int, default 9999
        Resamples of the HARP-block bootstrap (and of the bootstrap over seeds); the smallest
        bootstrap p-value is 1 / (resamples + 1).
    seed : int, default 0
    calibration : {"platt", "isotonic"}, default "platt"
        Map fitted on each experiment's validation split before its test calibration (ECE, Brier,
        reliability) is reported. Platt (logistic on the logit) has two parameters, enough to undo
        the training's reweighting of positives, and stays stable on the few dozen validation
        positives of rare classes, where isotonic regression overfits.
    """

    PREFIX: ClassVar[str] = "flares.analysis"

    confidence: float = setting(0.95, _open_fraction)
    bootstrap_resamples: int = setting(9999, number(100, integer=True))
    seed: int = setting(0, number(0, integer=True))
    calibration: str = setting("platt", choice("platt", "isotonic"))
