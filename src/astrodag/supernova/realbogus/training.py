"""Training and evaluation of the real/bogus classifier on the triplet dataset.

Inputs are the dataset stage's files (:func:`astrodag.supernova.imaging.triplets.build_dataset`):
``{train,validation,test}.npy`` (float32 ``(n, 3, S, S)``, normalised per cut-out, read
memory-mapped) and ``index.parquet`` (``split``, ``row``, ``mission``, ``label``, ...).

Protocol (no test-set leakage):

* the network is fitted on the training split with the shared
  :class:`astrodag.training.trainer.Trainer` (seeded, resumable, early stopping on the
  validation AUCPR); class imbalance is handled by a positive-class weight in the loss
  (``class_balance: weighted``) or by oversampling the rarer class (``balanced``); every
  training triplet is flipped and rotated by multiples of 90 degrees at random on the fly
  (``augment``), on top of the dataset's stored augmented copies;
* the decision threshold is chosen on the validation split (``threshold_rule``) and stored in
  ``model.json``; :func:`evaluate_realbogus` applies it, and the thresholds of the
  few-false-negatives analysis (validation FNR <= 1, 2, 5 %), once to the test split;
* with ``missions_train`` / ``missions_test`` the training and validation triplets come from
  some missions and the test triplets from others (a cross-mission experiment); the splits
  stay the dataset's, which are by field. A held-out mission (one training never saw) is
  tested on its un-augmented triplets of every split in the fields that training and
  validation did not touch, since the test split may hold none of it;
* every metric names the independent fields behind it; precision and AUCPR are given on the
  1:1-subsampled split and at the survey's base rate (bogus candidates per detected supernova,
  from the dataset's ``summary.json``: the bogus rows weighted up to it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from astrodag import __version__
from astrodag.errors import ConfigError, InputDataError
from astrodag.evaluation.base_rate import base_rate_metrics
from astrodag.evaluation.thresholds import equal_error_threshold, max_tss_threshold, rates_at, threshold_for_fnr
from astrodag.io import read_table, save_figure, write_json, write_table
from astrodag.models.settings import BraaiCNNSettings, ResNetTripletSettings
from astrodag.settings import Settings, choice, device_name, flag, number, optional, section, setting, subset
from astrodag.supernova.imaging.triplets import NORMALISATIONS
from astrodag.supernova.realbogus.model import CHANNELS, save_realbogus_model
from astrodag.supernova.realbogus.scoring import RealBogusScorer
from astrodag.training.settings import PRECISIONS, TrainerSettings

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
INDEX_COLUMNS = ("split", "row", "mission", "label")
THRESHOLD_RULES = ("fnr", "eer", "tss", "fixed")
# Duev et al. (2019), braai on ZTF's internal set at threshold 0.5: the anchor we report against.
BRAAI_ANCHOR = {"reference": "Duev et al. 2019, MNRAS 489, 3582", "threshold": 0.5, "fnr": 0.011, "fpr": 0.029}
DIGEST_ROWS = 256


def _fraction_list(key: str, value: Any) -> tuple[float, ...]:
    """A non-empty list of distinct fractions in (0, 1)."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ConfigError(key, f"must be a list of fractions in (0, 1), got {value!r}")
    items = tuple(value)
    if not items:
        raise ConfigError(key, "must list at least one fraction")
    check = number(0.0, 1.0, low_open=True)
    result = tuple(check(key, item) for item in items)
    if any(item >= 1.0 for item in result) or len(set(result)) != len(result):
        raise ConfigError(key, f"must hold distinct fractions strictly between 0 and 1, got {list(items)}")
    return tuple(sorted(result))


@dataclass(frozen=True)
class BraaiSettings(BraaiCNNSettings):
    """The braai CNN and its training length (config ``supernova.realbogus.braai``).

    Keys
    ----
    dropout : float, default 0.5
        Dropout before the output layer.
    max_epochs : int, default 6
        Training epochs (fewer with early stopping); 6 epochs of the ~1.4k demo triplets
        take about 40 s on one CPU thread.
    batch_size : int, default 64
        Training batch size.
    learning_rate : float, default 0.001
        Peak AdamW learning rate (linear warm-up, cosine decay).
    """

    PREFIX: ClassVar[str] = "supernova.realbogus.braai"

    max_epochs: int = setting(6, number(1, integer=True))
    batch_size: int = setting(64, number(1, integer=True))
    learning_rate: float = setting(1e-3, number(0.0, low_open=True))

    def model_options(self) -> dict[str, Any]:
        """The architecture fields (:class:`~astrodag.models.braai.BraaiCNNSettings`)."""
        return self.as_base(BraaiCNNSettings).as_dict()


@dataclass(frozen=True)
class ResNetSettings(ResNetTripletSettings):
    """The ResNet-18 variant and its training length (config ``supernova.realbogus.resnet18``).

    Keys
    ----
    dropout : float, default 0.0
        Dropout before the output layer.
    stem_stride : int, default 2
        Stride of the 3x3 stem: 1 is the full-resolution CIFAR-style network (about 4
        triplets/s of training on one CPU thread), 2 about four times cheaper.
    width : int, default 32
        Channels of the first stage (64 is ResNet-18 proper; 32 costs about a quarter).
    max_epochs : int, default 3
        Training epochs.
    batch_size : int, default 64
        Training batch size.
    learning_rate : float, default 0.001
        Peak AdamW learning rate.
    """

    PREFIX: ClassVar[str] = "supernova.realbogus.resnet18"

    stem_stride: int = setting(2, number(1, 2, integer=True))
    width: int = setting(32, number(4, 512, integer=True))
    max_epochs: int = setting(3, number(1, integer=True))
    batch_size: int = setting(64, number(1, integer=True))
    learning_rate: float = setting(1e-3, number(0.0, low_open=True))

    def model_options(self) -> dict[str, Any]:
        """The architecture fields (:class:`~astrodag.models.braai.ResNetTripletSettings`)."""
        return self.as_base(ResNetTripletSettings).as_dict()


@dataclass(frozen=True)
class RealBogusSettings(Settings):
    """Training and evaluation of the real/bogus classifier (config ``supernova.realbogus``).

    Keys
    ----
    braai : mapping
        :class:`BraaiSettings` (used when the architecture is ``braai``).
    resnet18 : mapping
        :class:`ResNetSettings` (used when the architecture is ``resnet18``).
    class_balance : {"weighted", "balanced", "none"}, default "weighted"
        ``weighted``: the loss weighs real triplets by n_bogus / n_real of the training set;
        ``balanced``: the rarer class is oversampled to the size of the other each epoch;
        ``none``: plain loss.
    focal_gamma : float, default 0.0
        Focusing parameter of the focal loss (0: binary cross-entropy).
    augment : list, default [flips, rot90]
        On-the-fly training augmentation: random left-right flips and/or rotations by
        multiples of 90 degrees (with both, all eight symmetries of the square).
    normalisation : {"sky", "robust", "l2"}, default "sky"
        How the triplets were normalised: must equal ``supernova.triplets.normalisation``
        (recorded in ``model.json`` so that new cut-outs are normalised the same way).
    clip : float, default 30.0
        Must equal ``supernova.triplets.clip``.
    weight_decay : float, default 0.0001
        AdamW weight decay.
    warmup_fraction : float, default 0.05
        Share of the training steps spent warming the learning rate up.
    grad_clip_norm : float or null, default 1.0
        Gradient-norm clipping (null: none).
    early_stopping_patience : int, default 3
        Epochs without a better validation AUCPR before training stops.
    eval_batch_size : int, default 256
        Batch size of the validation passes during training, and triplets read from the
        memory-mapped arrays at a time in evaluation.
    device : str, default "auto"
        ``auto`` (CUDA when present), ``cpu`` or a torch device string.
    mixed_precision : bool, default true
        bfloat16/float16 autocast on CUDA (ignored on CPU).
    cpu_precision : {"float32", "bfloat16", "auto"}, default "float32"
        Training autocast on a CPU (the shared trainer's option; ``auto``: bfloat16 where the
        CPU runs it natively).
    channels_last : bool, default true
        Train in the channels-last memory format (about 1.35 times faster for braai on CPU;
        the saved weights are in the default format either way).
    tensorboard : bool, default false
        Write TensorBoard events into ``checkpoints/tensorboard``.
    threshold_rule : {"fnr", "eer", "tss", "fixed"}, default "fnr"
        How the operating threshold is chosen on the validation split: ``fnr`` the highest
        threshold whose validation FNR is at most ``target_fnr`` (few missed transients);
        ``eer`` where FNR equals FPR; ``tss`` the maximum of TPR - FPR; ``fixed``
        ``fixed_threshold``.
    target_fnr : float, default 0.02
        Validation FNR bound of the ``fnr`` rule.
    fnr_min_misses : float, default 5.0
        The ``fnr`` rule is used only when the validation split holds at least
        ``fnr_min_misses / target_fnr`` reals (250 for 2 %), so that the target allows that many
        misses; with fewer the equal-error threshold is used and ``model.json`` records the
        fallback. The FNR-target analysis marks its unresolvable targets the same way.
    threshold_bootstrap : int, default 1000
        Resamples of the validation fields behind the operating threshold's 95 % interval (0:
        none).
    fixed_threshold : float, default 0.5
        Threshold of the ``fixed`` rule.
    fnr_targets : list, default [0.01, 0.02, 0.05]
        FNR bounds of the threshold analysis: each threshold is chosen on validation and
        its FNR and FPR reported on test.
    calibration_bins : int, default 10
        Equal-width bins of the reliability diagram and the ECE.
    """

    PREFIX: ClassVar[str] = "supernova.realbogus"

    braai: BraaiSettings = section(BraaiSettings)
    resnet18: ResNetSettings = section(ResNetSettings)
    class_balance: str = setting("weighted", choice("weighted", "balanced", "none"))
    focal_gamma: float = setting(0.0, number(0.0, 10.0))
    augment: tuple[str, ...] = setting(("flips", "rot90"), subset("flips", "rot90"))
    normalisation: str = setting("sky", choice(*NORMALISATIONS))
    clip: float = setting(30.0, number(1.0))
    weight_decay: float = setting(1e-4, number(0.0))
    warmup_fraction: float = setting(0.05, number(0.0, 0.5))
    grad_clip_norm: float | None = setting(1.0, optional(number(0.0, low_open=True)))
    early_stopping_patience: int = setting(3, number(1, integer=True))
    eval_batch_size: int = setting(256, number(1, integer=True))
    device: str = setting("auto", device_name)
    mixed_precision: bool = setting(True, flag)
    cpu_precision: str = setting("float32", choice(*PRECISIONS))
    channels_last: bool = setting(True, flag)
    tensorboard: bool = setting(False, flag)
    threshold_rule: str = setting("fnr", choice(*THRESHOLD_RULES))
    target_fnr: float = setting(0.02, number(0.0, 1.0))
    fnr_min_misses: float = setting(5.0, number(0.0))
    threshold_bootstrap: int = setting(1000, number(0, 100000, integer=True))
    fixed_threshold: float = setting(0.5, number(0.0, 1.0))
    fnr_targets: tuple[float, ...] = setting((0.01, 0.02, 0.05), _fraction_list)
    calibration_bins: int = setting(10, number(2, 100, integer=True))

    def architecture(self, name: str) -> BraaiSettings | ResNetSettings:
        """The section of architecture ``name``."""
        if name not in ("braai", "resnet18"):
            raise ConfigError(f"{self.PREFIX}.architecture", f"must be 'braai' or 'resnet18', got {name!r}")
        return getattr(self, name)

    def trainer(self, architecture: str) -> TrainerSettings:
        """The shared trainer's settings of ``architecture``: its training length, the rest from here.

        The config keeps its flat keys (``supernova.realbogus.weight_decay``, ``braai.max_epochs``...);
        early stopping always watches the validation AUCPR.
        """
        model = self.architecture(architecture)
        return TrainerSettings(
            max_epochs=model.max_epochs, batch_size=model.batch_size, eval_batch_size=self.eval_batch_size,
            learning_rate=model.learning_rate, weight_decay=self.weight_decay, warmup_fraction=self.warmup_fraction,
            grad_clip_norm=self.grad_clip_norm, early_stopping_patience=self.early_stopping_patience,
            monitor="aucpr", monitor_mode="max", device=self.device, mixed_precision=self.mixed_precision,
            cpu_precision=self.cpu_precision, tensorboard=self.tensorboard)


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


@dataclass
class TripletSplits:
    """The memory-mapped split arrays and the index of a triplet dataset directory."""

    directory: Path
    arrays: dict[str, np.ndarray]
    index: pd.DataFrame

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.arrays["train"].shape[1:])

    def select(self, split: str, missions: Sequence[str] | None = None) -> pd.DataFrame:
        """Index rows of ``split`` (of ``missions`` only, when given), in array order."""
        rows = self.index[self.index["split"] == split]
        if missions is not None:
            rows = rows[rows["mission"].isin(list(missions))]
        return rows.sort_values("row", kind="stable")


def load_splits(triplets_dir: str | Path) -> TripletSplits:
    """Open ``{train,validation,test}.npy`` memory-mapped and check them against ``index.parquet``.

    Raises
    ------
    InputDataError
        Naming the file: missing, not float32 ``(n, 3, S, S)``, shapes that differ between
        splits, or an index that does not match the arrays.
    """
    directory = Path(triplets_dir)
    index_path = directory / "index.parquet"
    index = read_table(index_path, INDEX_COLUMNS,
                       not_found="missing: build the triplet dataset first (astrodag supernova build-dataset)")
    bad_labels = sorted(set(index["label"].unique()) - {0, 1})
    if bad_labels:
        raise InputDataError(index_path, f"labels must be 0 (bogus) or 1 (real), found {bad_labels}")
    arrays = {}
    for split in SPLITS:
        path = directory / f"{split}.npy"
        if not path.is_file():
            raise InputDataError(path, "missing: build the triplet dataset first (astrodag supernova build-dataset)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputDataError(path, f"not a readable .npy array: {error}") from error
        if array.dtype != np.float32 or array.ndim != 4 or array.shape[1] != len(CHANNELS) \
                or array.shape[2] != array.shape[3]:
            raise InputDataError(path, f"must be float32 (n, 3, S, S), got {array.dtype} {array.shape}")
        rows = index.loc[index["split"] == split, "row"].to_numpy()
        if len(rows) != len(array) or (len(rows) and (rows.min() < 0 or rows.max() >= len(array))):
            raise InputDataError(path, f"holds {len(array)} triplets but index.parquet lists {len(rows)} rows "
                                       f"for the {split} split (rebuild the dataset)")
        arrays[split] = array
    shapes = {split: array.shape[1:] for split, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise InputDataError(directory, f"the splits hold cut-outs of different shapes: {shapes}")
    return TripletSplits(directory, arrays, index)


def triplets_digest(splits: TripletSplits, sample_rows: int = DIGEST_ROWS) -> str:
    """SHA-256 fingerprint of a triplet dataset: the whole index plus evenly spaced rows of each array.

    Reading every pixel of a million-triplet dataset would take minutes; the index (which
    holds every triplet's position and significance) and a sample of the pixels identify a
    dataset build just as well.
    """
    digest = hashlib.sha256()
    with open(splits.directory / "index.parquet", "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    for split in SPLITS:
        array = splits.arrays[split]
        digest.update(f"{split}:{array.shape}".encode())
        for row in np.unique(np.linspace(0, len(array) - 1, min(sample_rows, len(array))).astype(int)):
            digest.update(np.ascontiguousarray(array[row]).tobytes())
    return digest.hexdigest()


def check_normalisation(splits: TripletSplits, method: str, clip: float, sample_rows: int = DIGEST_ROWS) -> None:
    """Refuse a dataset whose values cannot come from the configured normalisation.

    The method recorded in the dataset's ``summary.json`` must be ``method``; ``sky`` and
    ``robust`` cut-outs lie within ``[-clip, clip]``; ``l2`` channels have unit norm at most.
    A sample of training rows is checked (and for NaN), so that a mismatch between
    ``supernova.triplets`` and ``supernova.realbogus`` fails here, not silently at scoring.
    """
    summary_path = splits.directory / "summary.json"
    recorded = json.loads(summary_path.read_text()).get("normalisation") if summary_path.is_file() else None
    if recorded in NORMALISATIONS and recorded != method:
        raise InputDataError(summary_path, f"the triplets were cut with normalisation {recorded!r}, but "
                                           f"supernova.realbogus.normalisation is {method!r}: set both alike")
    array = splits.arrays["train"]
    rows = np.unique(np.linspace(0, len(array) - 1, min(sample_rows, len(array))).astype(int))
    sample = np.asarray(array[rows], dtype=np.float64)
    path = splits.directory / "train.npy"
    if not np.isfinite(sample).all():
        raise InputDataError(path, "holds NaN or infinite values (the dataset stage writes finite cut-outs)")
    if method in ("sky", "robust") and np.abs(sample).max() > clip * (1 + 1e-6):
        raise InputDataError(path, f"values reach {np.abs(sample).max():.4g}, beyond clip={clip}: the triplets were "
                                   f"not cut with normalisation {method!r} and this clip (supernova.triplets)")
    if method == "l2" and np.sqrt((sample ** 2).sum(axis=(2, 3))).max() > 1 + 1e-4:
        raise InputDataError(path, "channels have norms above 1: the triplets were not cut with normalisation 'l2'")


class TripletDataset(Dataset):
    """(triplet, label) pairs read from a memory-mapped split array.

    Parameters
    ----------
    array : ndarray
        The split's ``(n, 3, S, S)`` array (memory-mapped).
    rows : ndarray of int
        Rows of ``array`` to use.
    labels : ndarray
        0/1 label of each of ``rows``.
    augment : sequence of {"flips", "rot90"}
        Random symmetries applied to each item as it is read (training only). They draw from
        torch's global generator, which the Trainer seeds and checkpoints, so runs and
        resumed runs are reproducible.
    balanced : bool
        Oversample the rarer class (cycling through its rows) to the size of the other.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: np.ndarray, augment: Sequence[str] = (),
                 balanced: bool = False):
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.augment = tuple(augment)
        order = np.arange(len(self.rows))
        if balanced:
            real, bogus = order[self.labels == 1], order[self.labels == 0]
            small, large = sorted((real, bogus), key=len)
            if len(small):
                order = np.concatenate([large, small[np.arange(len(large)) % len(small)]])
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        position = self.order[item]
        triplet = torch.from_numpy(np.array(self.array[self.rows[position]], dtype=np.float32))
        if "rot90" in self.augment:
            triplet = torch.rot90(triplet, int(torch.randint(4, (1,))), dims=(1, 2))
        if "flips" in self.augment:
            if torch.rand(1).item() < 0.5:
                triplet = triplet.flip(2)
            # With rotations, one flip already completes the eight symmetries.
            if "rot90" not in self.augment and torch.rand(1).item() < 0.5:
                triplet = triplet.flip(1)
        return triplet.contiguous(), torch.tensor(self.labels[position])


def _split_frame(splits: TripletSplits, split: str, missions: Sequence[str] | None) -> pd.DataFrame:
    rows = splits.select(split, missions)
    where = f"the {split} split" + (f" for missions {list(missions)}" if missions is not None else "")
    if rows.empty:
        raise InputDataError(splits.directory / "index.parquet", f"{where} holds no triplets")
    if rows["label"].nunique() < 2:
        raise InputDataError(splits.directory / "index.parquet",
                             f"{where} holds only {'real' if rows['label'].iloc[0] == 1 else 'bogus'} triplets; "
                             "both classes are needed")
    return rows


def _held_out_frame(splits: TripletSplits, missions_train: Sequence[str] | None,
                    missions_test: Sequence[str] | None) -> pd.DataFrame:
    """The test rows: the test split, or every split's un-augmented rows of a held-out mission.

    A mission that training never saw (test missions disjoint from the training missions) is
    tested on all of its triplets in fields that training and validation did not use: the model
    saw none of that mission, and the test split alone may hold none of it, but another
    mission's image of the same sky (same host, same stars) was a training example.
    """
    if not missions_test or missions_train is None or set(missions_test) & set(missions_train):
        return _split_frame(splits, "test", missions_test)
    rows = pd.concat([splits.select(split, missions_test) for split in SPLITS], ignore_index=True)
    if "augmentation" in rows.columns:
        rows = rows[rows["augmentation"] == "none"]
    seen = np.unique(np.concatenate([field_labels(splits.select(split, missions_train))
                                     for split in ("train", "validation")]))
    rows = rows[~np.isin(field_labels(rows), seen)]
    where = f"the held-out missions {list(missions_test)} (in fields training did not see)"
    if rows["label"].nunique() < 2:
        raise InputDataError(splits.directory / "index.parquet", f"{where} hold too few triplets of both classes")
    return rows


def _score_frame(scorer: RealBogusScorer, splits: TripletSplits, frame: pd.DataFrame, chunk: int) -> np.ndarray:
    """Scores of the frame's rows, in its order, read from each row's split array."""
    scores = np.empty(len(frame), np.float32)
    for split, part in frame.groupby("split", sort=False):
        positions = np.flatnonzero(frame["split"].to_numpy() == split)
        scores[positions] = _score_rows(scorer, splits.arrays[split], part["row"].to_numpy(), chunk)
    return scores


def _score_rows(scorer: RealBogusScorer, array: np.ndarray, rows: np.ndarray, chunk: int) -> np.ndarray:
    """Scores of ``array[rows]``, reading ``chunk`` rows of the memory map at a time."""
    chunks = (np.asarray(array[rows[start:start + chunk]]) for start in range(0, len(rows), chunk))
    parts = list(scorer.score_batches(chunks, chunk))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# --------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------


def _rule_threshold(rule: str, y_true: np.ndarray, y_prob: np.ndarray, settings: RealBogusSettings) -> float:
    if rule == "fnr":
        return threshold_for_fnr(y_true, y_prob, settings.target_fnr)
    if rule == "eer":
        return equal_error_threshold(y_true, y_prob)
    if rule == "tss":
        return max_tss_threshold(y_true, y_prob)
    return settings.fixed_threshold


def fnr_resolvable(n_real: int, target_fnr: float, min_misses: float) -> bool:
    """Whether ``n_real`` reals resolve an FNR of ``target_fnr``: the target allows ``min_misses`` of them."""
    return n_real * target_fnr >= min_misses - 1e-9


def choose_threshold(y_true: np.ndarray, y_prob: np.ndarray, settings: RealBogusSettings,
                     fields: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """The operating threshold by ``settings.threshold_rule``, chosen on validation scores, and its interval.

    The ``fnr`` rule needs at least ``fnr_min_misses / target_fnr`` validation reals (else a
    handful of unlearnable reals decides the threshold); with fewer it falls back to the
    equal-error threshold, and the record says so (``rule`` is the rule used, ``requested_rule``
    the configured one). The interval is the 2.5-97.5 percentile range of the same rule over
    ``threshold_bootstrap`` resamples of the validation fields (``fields``: each row's field, the
    independent unit; default one field per row) with replacement; ``n_fields`` says how many
    stand behind it. The achieved validation FNR comes with its Wilson interval (whose triplets
    are not independent: the field bootstrap is the honest one).
    """
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    n_real = int((y_true == 1).sum())
    rule, reason = settings.threshold_rule, None
    if rule == "fnr" and not fnr_resolvable(n_real, settings.target_fnr, settings.fnr_min_misses):
        reason = (f"{n_real} validation reals allow {n_real * settings.target_fnr:.2f} misses at FNR "
                  f"{settings.target_fnr:g}, fewer than fnr_min_misses={settings.fnr_min_misses:g}")
        log.warning("threshold: %s; using the equal-error threshold", reason)
        rule = "eer"
    value = _rule_threshold(rule, y_true, y_prob, settings)
    fields = np.arange(len(y_true)) if fields is None else np.asarray(fields)
    groups = list(pd.Series(np.arange(len(y_true))).groupby(fields, sort=True).indices.values())
    interval = None
    if rule != "fixed" and settings.threshold_bootstrap and len(groups) > 1:
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(settings.threshold_bootstrap):
            rows = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
            labels = y_true[rows]
            if labels.min() != labels.max():
                values.append(_rule_threshold(rule, labels, y_prob[rows], settings))
        if values:
            interval = [float(v) for v in np.percentile(values, [2.5, 97.5])]
    achieved = rates_at(y_true, y_prob, value)
    record = {"value": float(value), "rule": rule, "requested_rule": settings.threshold_rule,
              "fallback_reason": reason, "chosen_on": "validation", "n_real": n_real,
              "n_bogus": int(len(y_true) - n_real), "n_fields": len(groups), "interval95": interval,
              "interval_method": f"percentile bootstrap over the {len(groups)} validation fields "
                                 f"({settings.threshold_bootstrap} resamples)" if interval else None,
              "validation_fnr": achieved["fnr"], "validation_fnr_ci95": achieved["fnr_ci95"],
              "validation_fpr": achieved["fpr"], "validation_fpr_ci95": achieved["fpr_ci95"]}
    if settings.threshold_rule == "fnr":
        record["target_fnr"] = settings.target_fnr
        record["fnr_min_misses"] = settings.fnr_min_misses
    return record


def field_labels(frame: pd.DataFrame) -> np.ndarray:
    """Each row's field, the independent unit (datasets built before fields: its supernova)."""
    column = "field" if "field" in frame.columns else "sn_name" if "sn_name" in frame.columns else "pair_id"
    return frame[column].astype(str).to_numpy()


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def train_realbogus(triplets_dir: str | Path, out_dir: str | Path, architecture: str = "braai", seed: int = 0,
                    settings: RealBogusSettings | None = None, missions_train: Sequence[str] | None = None,
                    missions_test: Sequence[str] | None = None, threads: int | None = None,
                    progress: bool | None = None) -> dict[str, Any]:
    """Train a real/bogus network and choose its threshold on the validation split.

    Parameters
    ----------
    triplets_dir : str or Path
        The dataset stage's output (``{train,validation,test}.npy``, ``index.parquet``).
    out_dir : str or Path
        Receives ``model.pt``, ``model.json``, ``history.csv`` and ``checkpoints/`` (the
        Trainer's ``best.pt``/``last.pt``: rerunning after an interruption resumes).
    architecture : {"braai", "resnet18"}, default "braai"
    seed : int, default 0
        Seeds the weights, the shuffling, dropout and the augmentation: the same seed gives
        the same weights bit for bit on CPU.
    settings : RealBogusSettings, optional
    missions_train : sequence of str, optional
        Train and validate on these missions only (default all).
    missions_test : sequence of str, optional
        Recorded for :func:`evaluate_realbogus`, which tests on these missions only.
    threads : int, optional
        CPU threads for torch.
    progress : bool, optional
        Progress bar over the epochs (default: only on a terminal).

    Returns
    -------
    dict
        The sidecar written to ``model.json``.
    """
    from astrodag.evaluation.metrics import binary_metrics
    from astrodag.training.experiment import train_model
    from astrodag.training.losses import BinaryFocalLoss

    settings = settings or RealBogusSettings()
    model_settings = settings.architecture(architecture)
    out_dir = Path(out_dir)
    missions_train = sorted(missions_train) if missions_train else None
    missions_test = sorted(missions_test) if missions_test else None
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    splits = load_splits(triplets_dir)
    check_normalisation(splits, settings.normalisation, settings.clip)
    frames = {split: _split_frame(splits, split, missions_train) for split in ("train", "validation")}
    labels = {split: frame["label"].to_numpy(np.float32) for split, frame in frames.items()}
    datasets = {
        "train": TripletDataset(splits.arrays["train"], frames["train"]["row"].to_numpy(), labels["train"],
                                settings.augment, balanced=settings.class_balance == "balanced"),
        "validation": TripletDataset(splits.arrays["validation"], frames["validation"]["row"].to_numpy(),
                                     labels["validation"]),
    }
    n_real = float(labels["train"].sum())
    positive_weight = (len(labels["train"]) - n_real) / n_real if settings.class_balance == "weighted" else 1.0
    channels, size, _ = splits.input_shape
    options = {"in_channels": channels, **({"size": size} if architecture == "braai" else {}),
               **model_settings.model_options()}
    digest = triplets_digest(splits)
    # What else decides the weights: the Trainer adds the architecture, the loss (focal gamma, positive weight), its
    # settings and a sample of the datasets' items; a checkpoint of another run is not resumed.
    run_key = {"triplets": digest, "class_balance": settings.class_balance, "augment": list(settings.augment),
               "missions_train": missions_train, "channels_last": settings.channels_last}
    # Convolutions on a channels-last model produce channels-last activations from ordinary inputs.
    prepare = (lambda model: model.to(memory_format=torch.channels_last)) if settings.channels_last else None
    run = train_model(architecture, options, {}, BinaryFocalLoss(gamma=settings.focal_gamma,
                                                                   positive_weight=positive_weight),
                      settings.trainer(architecture), datasets["train"], datasets["validation"], out_dir, seed=seed,
                      evaluate=binary_metrics, run_key=run_key, threads=threads, prepare=prepare, progress=progress)
    result, fit_seconds = run.result, run.fit_seconds
    validation_scores = run.trainer.predict(datasets["validation"])
    threshold = choose_threshold(labels["validation"], validation_scores, settings,
                                 fields=field_labels(frames["validation"]), seed=seed)
    validation = binary_metrics(labels["validation"], validation_scores, threshold["value"],
                                n_bins=settings.calibration_bins)
    samples_seen = len(datasets["train"]) * (result.epochs_run - result.resumed_from_epoch)
    sidecar = {
        "architecture": architecture,
        "options": options,
        "input_shape": [channels, size, size],
        "normalisation": {"method": settings.normalisation, "clip": settings.clip},
        "threshold": threshold["value"],
        "threshold_rule": threshold,
        "seed": int(seed),
        "software_version": __version__,
        "data": {"triplets_dir": str(splits.directory), "sha256": digest,
                 "triplets": {split: int(len(frame)) for split, frame in frames.items()},
                 "real": {split: int(frame["label"].sum()) for split, frame in frames.items()},
                 "fields": {split: field_counts(frame) for split, frame in frames.items()}},
        "missions": {"train": missions_train, "test": missions_test},
        "loss": {"name": "BinaryFocalLoss", "gamma": settings.focal_gamma, "positive_weight": positive_weight,
                 "class_balance": settings.class_balance},
        "augment": list(settings.augment),
        **run.record(),
        "training_seconds": round(time.perf_counter() - started, 3),
        "train_samples_per_second": round(samples_seen / fit_seconds, 1) if samples_seen and fit_seconds > 0 else None,
        "validation_metrics": validation,
    }
    save_realbogus_model(run.model, sidecar, out_dir)
    log.info("%s seed %d: validation AUCPR %.4f, threshold %.4f (%s), FNR %.3f FPR %.3f; %d epochs in %.1f s",
             architecture, seed, validation["aucpr"], threshold["value"], threshold["rule"],
             1 - validation["recall"], 1 - validation["specificity"], result.epochs_run, sidecar["training_seconds"])
    return sidecar


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def evaluate_realbogus(model_dir: str | Path, triplets_dir: str | Path, out_dir: str | Path,
                       settings: RealBogusSettings | None = None, missions_test: Sequence[str] | None = None,
                       threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Score the test split once with a trained model and write every metric and figure.

    The validation and test triplets are scored in float32 on every device (never bfloat16,
    whatever the CPU offers).

    Parameters
    ----------
    model_dir : str or Path
        Holds ``model.pt`` and ``model.json`` (from :func:`train_realbogus`).
    triplets_dir : str or Path
        The dataset the model was trained on (its digest is checked).
    out_dir : str or Path
        Receives ``metrics.json``, ``predictions.parquet``, ``thresholds.csv``, ``pr.png``,
        ``roc.png``, ``reliability.png`` and ``confusion_matrix.png``.
    settings : RealBogusSettings, optional
        ``fnr_targets``, ``calibration_bins`` and ``eval_batch_size`` are used.
    missions_test : sequence of str, optional
        Test missions (default: those recorded at training, else all).
    threads : int, optional
    device : str, optional
        Default ``settings.device``.

    Returns
    -------
    dict
        The content of ``metrics.json``: AUCPR first, then ROC AUC, FNR/FPR at the
        validation-chosen threshold, at the equal-error threshold and at 0.5 (braai's
        operating point), the confusion matrix, calibration, the FNR-target analysis,
        per-mission and per-source break-downs, the fields behind the test and validation
        triplets, and precision and AUCPR at the survey's base rate (``at_base_rate``).
    """
    from astrodag.evaluation.metrics import binary_metrics
    from astrodag.reporting.figures import plot_confusion_matrix, plot_precision_recall, plot_reliability, plot_roc

    settings = settings or RealBogusSettings()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    # float32 whatever the CPU (not the scorer's "auto"): the validation threshold analysis and the
    # test metrics must not depend on the machine's bfloat16 support.
    scorer = RealBogusScorer.from_files(model_dir / "model.pt", model_dir / "model.json",
                                        device=device or settings.device, threads=threads, precision="float32")
    sidecar = scorer.sidecar
    splits = load_splits(triplets_dir)
    if splits.input_shape != scorer.input_shape:
        raise InputDataError(splits.directory, f"holds cut-outs of shape {splits.input_shape}, the model takes "
                                               f"{scorer.input_shape}")
    digest = triplets_digest(splits)
    if sidecar.get("data", {}).get("sha256") not in (None, digest):
        log.warning("%s is not the dataset the model was trained on (digest differs); the threshold was chosen on "
                    "another validation split", splits.directory)
    missions = sidecar.get("missions") or {}
    missions_train = missions.get("train")
    missions_test = sorted(missions_test) if missions_test else missions.get("test")
    frames = {"validation": _split_frame(splits, "validation", missions_train),
              "test": _held_out_frame(splits, missions_train, missions_test)}
    started = time.perf_counter()
    scores = {split: _score_frame(scorer, splits, frame, settings.eval_batch_size) for split, frame in frames.items()}
    seconds = time.perf_counter() - started
    labels = {split: frame["label"].to_numpy(np.int8) for split, frame in frames.items()}
    y_val, p_val, y_test, p_test = labels["validation"], scores["validation"], labels["test"], scores["test"]

    threshold = scorer.threshold
    test = binary_metrics(y_test, p_test, threshold, n_bins=settings.calibration_bins)
    validation = binary_metrics(y_val, p_val, threshold, n_bins=settings.calibration_bins)
    eer_threshold = equal_error_threshold(y_val, p_val)
    targets = []
    for target in settings.fnr_targets:
        value = threshold_for_fnr(y_val, p_val, target)
        on_validation = rates_at(y_val, p_val, value)
        targets.append({"target_fnr": target, "threshold": value, "validation_fnr": on_validation["fnr"],
                        "validation_fpr": on_validation["fpr"],
                        "resolvable": fnr_resolvable(int(y_val.sum()), target, settings.fnr_min_misses),
                        "test": rates_at(y_test, p_test, value)})
    test_frame = frames["test"].assign(score=p_test.astype(np.float64), is_real=p_test >= threshold)
    bogus_per_real = survey_bogus_per_real(splits.directory)
    metrics = {
        "aucpr": test["aucpr"],
        "roc_auc": test["roc_auc"],
        "at_threshold": {**rates_at(y_test, p_test, threshold), "rule": sidecar.get("threshold_rule")},
        "at_equal_error": {**rates_at(y_test, p_test, eer_threshold), "chosen_on": "validation",
                           "validation": rates_at(y_val, p_val, eer_threshold)},
        "at_0.5": rates_at(y_test, p_test, 0.5),
        "confusion_matrix": {key: test[key] for key in ("tp", "fp", "tn", "fn")},
        "ece": test["ece"], "mce": test["mce"], "brier": test["brier"],
        "calibration_bins": settings.calibration_bins,
        "fnr_targets": targets,
        "at_base_rate": _survey_base_rate(y_test, p_test, threshold, bogus_per_real),
        "test": {"n": test["n"], "n_real": test["n_positive"], **field_counts(frames["test"]),
                 "metrics_at_threshold": test},
        "validation": {"n": validation["n"], "n_real": validation["n_positive"], "aucpr": validation["aucpr"],
                       "roc_auc": validation["roc_auc"], **field_counts(frames["validation"])},
        "per_mission": _breakdown(test_frame, "mission", threshold),
        "per_source": _breakdown(test_frame, "source", threshold) if "source" in test_frame.columns else {},
        "anchor": BRAAI_ANCHOR,
        "model": {"architecture": sidecar["architecture"], "options": sidecar["options"],
                  "seed": sidecar.get("seed"), "threshold": threshold, "data_sha256": sidecar.get("data", {}).get(
                      "sha256"), "dataset_matches": sidecar.get("data", {}).get("sha256") == digest},
        "scoring": {"triplets": int(len(p_val) + len(p_test)), "seconds": round(seconds, 3),
                    "triplets_per_second": round((len(p_val) + len(p_test)) / seconds, 1) if seconds > 0 else None,
                    "device": str(scorer.device), "precision": scorer.precision},
    }
    write_json(out_dir / "metrics.json", metrics)
    write_table(out_dir / "predictions.parquet", test_frame.reset_index(drop=True))
    write_table(out_dir / "thresholds.csv", _threshold_table(y_val, p_val, y_test, p_test, threshold, eer_threshold,
                                                              targets))
    curves = {"validation": (y_val, p_val), "test": (y_test, p_test)}
    name = sidecar["architecture"]
    save_figure(out_dir / "pr.png", plot_precision_recall(curves, title=f"{name} real/bogus: precision-recall"))
    save_figure(out_dir / "roc.png", plot_roc(curves, title=f"{name} real/bogus: ROC"))
    save_figure(out_dir / "reliability.png", plot_reliability({"test": (y_test, p_test)},
                                                              n_bins=settings.calibration_bins,
                                                              title=f"{name} real/bogus: reliability (test)"))
    save_figure(out_dir / "confusion_matrix.png",
                plot_confusion_matrix(metrics["confusion_matrix"], labels=("bogus", "real"),
                                      title=f"test, P(real) >= {threshold:.3f}"))
    log.info("test AUCPR %.4f ROC AUC %.4f; at %.3f FNR %.3f FPR %.3f (n=%d)", metrics["aucpr"], metrics["roc_auc"],
             threshold, metrics["at_threshold"]["fnr"], metrics["at_threshold"]["fpr"], test["n"])
    return metrics


def field_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """The independent fields behind a set of triplets: how many, which, and per mission."""
    fields = field_labels(frame)
    per_mission = pd.Series(fields).groupby(frame["mission"].to_numpy()).nunique()
    return {"n_fields": int(len(np.unique(fields))), "fields": sorted(np.unique(fields).tolist()),
            "missions": sorted(frame["mission"].unique()),
            "fields_per_mission": {str(m): int(k) for m, k in per_mission.items()}}


def survey_bogus_per_real(triplets_dir: str | Path) -> float | None:
    """The survey's bogus/real ratio: bogus candidates per detected supernova, before subsampling.

    What the detector hands a deployed classifier: every candidate of every pair (kept or
    rejected by the shape cuts, ``available_per_source`` of the dataset's summary.json) that is
    not a supernova, per supernova detected. Fakes and sampled artefacts are training devices
    that a survey's stream does not hold, so they do not count. None (with a warning) when the
    summary is missing or no supernova was detected.
    """
    path = Path(triplets_dir) / "summary.json"
    try:
        sources = json.loads(path.read_text())["available_per_source"]
        return float(sources["candidate"]) / float(sources["sn"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as error:
        log.warning("%s: no survey base rate (%s); precision and AUCPR only on the subsampled split", path, error)
        return None


def _survey_base_rate(y_true, y_prob, threshold: float, bogus_per_real: float | None) -> dict[str, Any]:
    """`base_rate_metrics` at the survey's bogus candidates per detected supernova, with its source."""
    metrics = {"bogus_per_real": bogus_per_real, **base_rate_metrics(y_true, y_prob, threshold, bogus_per_real)}
    if metrics["aucpr"] is not None:
        metrics["source"] = ("bogus candidates per detected supernova over all pairs "
                             "(summary.json 'available_per_source')")
    return metrics


def _breakdown(frame: pd.DataFrame, column: str, threshold: float) -> dict[str, Any]:
    """Counts (triplets, reals, fields), FNR and FPR (and AUCPR where both classes occur) per value of ``column``."""
    from sklearn.metrics import average_precision_score

    result = {}
    for value, group in frame.groupby(column, sort=True):
        labels, scores = group["label"].to_numpy(), group["score"].to_numpy()
        rates = rates_at(labels, scores, threshold)
        both = 0 < labels.sum() < len(labels)
        result[str(value)] = {"n": int(len(group)), "n_real": int(labels.sum()),
                              "n_fields": int(len(np.unique(field_labels(group)))),
                              "aucpr": float(average_precision_score(labels, scores)) if both else None,
                              "fnr": rates["fnr"], "fpr": rates["fpr"]}
    return result


def _threshold_table(y_val, p_val, y_test, p_test, threshold, eer_threshold, targets) -> pd.DataFrame:
    """FNR/FPR on validation and test over a grid of thresholds plus the chosen ones (marked)."""
    special: dict[float, str] = {}
    # One threshold may be several operating points (the operating one is the equal-error one after a fallback).
    marks = [(threshold, "operating"), (eer_threshold, "equal_error"), (0.5, "braai_0.5")]
    for value, name in marks + [(t["threshold"], f"fnr<={t['target_fnr']:g}") for t in targets]:
        special[value] = f"{special[value]}+{name}" if value in special else name
    values = np.union1d(np.round(np.linspace(0.0, 1.0, 101), 6), list(special))
    rows = []
    for value in values:
        val, test = rates_at(y_val, p_val, value), rates_at(y_test, p_test, value)
        rows.append({"threshold": value, "marker": special.get(value, ""),
                     "validation_fnr": val["fnr"], "validation_fpr": val["fpr"],
                     "test_fnr": test["fnr"], "test_fpr": test["fpr"], "test_precision": test["precision"],
                     "test_tp": test["tp"], "test_fp": test["fp"], "test_tn": test["tn"], "test_fn": test["fn"]})
    return pd.DataFrame(rows)
