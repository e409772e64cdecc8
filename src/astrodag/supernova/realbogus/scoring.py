"""Scoring (science, reference, difference) triplets with a trained real/bogus model.

A trained model is two files (written by :func:`save_realbogus_model`):

``model.pt``
    The network's ``state_dict`` (loaded with ``torch.load(..., weights_only=True)``).
``model.json``
    The sidecar: ``format`` (``SIDECAR_FORMAT``), ``architecture`` and ``options`` (rebuild the
    network with :func:`astrodag.models.registry.build_model`), ``input_shape``
    (``[3, S, S]``), ``channels`` (``["science", "reference", "difference"]``),
    ``normalisation`` (``{"method": "robust" | "l2", "clip": float}``, as the triplets were
    cut), ``threshold`` (P(real) at or above which a candidate is called real, chosen on the
    validation split) and whatever the training run recorded (seed, data digest, metrics).

:class:`RealBogusScorer` loads them once and scores already-normalised arrays
(``score``, ``score_batches``); :func:`prepare_triplet` normalises raw cut-outs exactly
as the training data were; :func:`candidate_cutouts` cuts and normalises a pair's
candidates as :func:`score_pair` scores them; :func:`score_pair` and :func:`score_batch` go
from differenced pairs (``difference.fits``, ``significance.fits``, ``mask.fits``,
``candidates.csv``) to a scored candidate table and stamps of the best candidates.

Precision: ``"float32"``, ``"bfloat16"`` (``torch.autocast``) or ``"auto"``, which
:func:`resolve_precision` turns into ``bfloat16`` on a CPU with native bfloat16 instructions
(AVX512-BF16 or AMX-BF16, :func:`astrodag.training.precision.cpu_has_native_bf16`; braai on 2 such cores scores about
3,400 triplets/s against 2,000/s in float32) and into ``float32`` anywhere else, GPUs
included. :attr:`RealBogusScorer.precision` is the resolved value. The evaluation
(:func:`astrodag.supernova.realbogus.training.evaluate_realbogus`) always scores in float32.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from astrodag.errors import ConfigError, InputDataError
from astrodag.settings import Settings, choice, flag, number, optional, setting
from astrodag.io import atomic_path, write_json, write_table
from astrodag.logs import progress_enabled
from astrodag.models.ensemble import EnsemblePredictor
from astrodag.training import bundle
from astrodag.training.precision import PRECISIONS, check_precision, resolve_precision
from astrodag.training.seeding import select_device

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "astrodag.realbogus/1"
CHANNELS = ("science", "reference", "difference")
REQUIRED_SIDECAR_KEYS = ("architecture", "options", "input_shape", "normalisation", "threshold")
MISSING_MODEL = "train a real/bogus model first (astrodag supernova train)"
# Cut-outs made at once in score_pair (the forward passes then go in the scorer's smaller batches).
CUTOUT_BATCH = 1024
SCORED_COLUMNS = ("candidate_id", "pair_id", "x", "y", "ra", "dec", "significance", "score", "is_real", "kept",
                  "masked_fraction")


def device_name(key: str, value: Any) -> str:
    """Settings check of a torch device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``...)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a device name such as 'auto', 'cpu' or 'cuda:0', got {value!r}")
    return value


@dataclass(frozen=True)
class ScoringSettings(Settings):
    """Scoring differenced pairs (config ``supernova.scoring``).

    Keys
    ----
    batch_size : int or null, default null
        Triplets per forward pass; null picks 64 on a CPU (small batches stay in the caches:
        braai scores ~2,300/s at 64 against ~600/s at 1024 on 2 cores) and 1024 on a GPU.
    top : int, default 20
        Best-scoring candidates (over all pairs scored together) written as FITS and PNG stamps.
    max_masked_fraction : float, default 0.5
        Candidates whose cut-out has more invalid pixels than this get no score (NaN), as
        the training set drops such cut-outs.
    device : str, default "auto"
        ``auto`` (CUDA when present), ``cpu`` or a torch device string.
    channels_last : bool, default true
        Run convolutions in the channels-last memory format (faster on CPU with oneDNN).
    precision : {"auto", "float32", "bfloat16"}, default "auto"
        ``bfloat16`` autocasts the network (about 1.7 times faster on CPUs with AVX512-BF16 or
        AMX-BF16; scores then differ from float32 by up to about 1e-3). ``auto`` is
        bfloat16 on a CPU with those instructions and float32 elsewhere (GPUs included); the
        resolved value is logged and written in the summary JSON.
    """

    PREFIX: ClassVar[str] = "supernova.scoring"

    batch_size: int | None = setting(None, optional(number(1, integer=True)))
    top: int = setting(20, number(0, integer=True))
    max_masked_fraction: float = setting(0.5, number(0.0, 1.0))
    device: str = setting("auto", device_name)
    channels_last: bool = setting(True, flag)
    precision: str = setting("auto", choice(*PRECISIONS))


# --------------------------------------------------------------------------------------------
# the model files
# --------------------------------------------------------------------------------------------


def check_sidecar(sidecar: Mapping[str, Any], path: str | Path = "model.json") -> dict[str, Any]:
    """Validate a real/bogus sidecar and return it as a dict.

    Raises
    ------
    InputDataError
        If a required key is missing or the input shape, normalisation or threshold is invalid.
    """
    if not isinstance(sidecar, Mapping):
        raise InputDataError(path, f"the sidecar must be a JSON object, got {type(sidecar).__name__}")
    missing = [key for key in REQUIRED_SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise InputDataError(path, f"not a real/bogus model sidecar: lacks {', '.join(missing)}")
    shape = sidecar["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape)
            or shape[1] != shape[2]):
        raise InputDataError(path, f"input_shape must be [channels, S, S] of positive integers, got {shape!r}")
    normalisation = sidecar["normalisation"]
    if not isinstance(normalisation, Mapping) or normalisation.get("method") not in ("robust", "l2") \
            or not isinstance(normalisation.get("clip"), (int, float)):
        raise InputDataError(path, f"normalisation must be {{'method': 'robust'|'l2', 'clip': number}}, "
                                   f"got {normalisation!r}")
    threshold = sidecar["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputDataError(path, f"threshold must be a number in [0, 1], got {threshold!r}")
    return dict(sidecar)


def sidecar_normalisation(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`prepare_triplet` that reproduce a model's training data."""
    return {"method": sidecar["normalisation"]["method"], "clip": float(sidecar["normalisation"]["clip"])}


def read_sidecar(model_json: str | Path) -> dict[str, Any]:
    """Read and validate a ``model.json`` (see :func:`check_sidecar`).

    Raises
    ------
    InputDataError
        For a missing file, invalid JSON or an invalid sidecar.
    """
    return bundle.read_sidecar(model_json, check_sidecar, MISSING_MODEL)


def _complete_sidecar(sidecar: Mapping[str, Any], path: Path) -> dict[str, Any]:
    return check_sidecar({"format": SIDECAR_FORMAT, "channels": list(CHANNELS), **sidecar}, path)


def save_realbogus_model(model: nn.Module, sidecar: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/model.pt`` and ``out_dir/model.json`` (:func:`astrodag.training.bundle.save_model`).

    Parameters
    ----------
    model : torch.nn.Module
        A network built by :func:`astrodag.models.registry.build_model`.
    sidecar : mapping
        At least ``architecture``, ``options``, ``input_shape``, ``normalisation`` and
        ``threshold``; ``format`` and ``channels`` are filled in.
    out_dir : str or Path

    Returns
    -------
    dict
        ``{"model": path of model.pt, "sidecar": path of model.json}``.
    """
    return bundle.save_model(model, sidecar, out_dir, check=_complete_sidecar)


def _build(sidecar: Mapping[str, Any]) -> nn.Module:
    from astrodag.models.registry import build_model

    return build_model(sidecar["architecture"], sidecar["options"])


def load_realbogus_model(model_pt: str | Path, model_json: str | Path | None = None,
                         device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from its sidecar and load its weights (:func:`astrodag.training.bundle.load_model`).

    Parameters
    ----------
    model_pt : str or Path
        The ``state_dict`` file.
    model_json : str or Path, optional
        The sidecar (default: ``model_pt`` with the suffix ``.json``).
    device : str or torch.device, default "cpu"

    Returns
    -------
    (model, sidecar)
        The network in evaluation mode on ``device`` and the validated sidecar.

    Raises
    ------
    InputDataError
        For a missing or unreadable file, an invalid sidecar or weights that do not fit the
        recorded architecture.
    """
    return bundle.load_model(model_pt, _build, model_json, device, check=check_sidecar, missing_hint=MISSING_MODEL)


# --------------------------------------------------------------------------------------------
# the scorer
# --------------------------------------------------------------------------------------------


class RealBogusScorer:
    """A loaded real/bogus model that turns normalised triplets into P(real).

    Parameters
    ----------
    model : torch.nn.Module
        The network (its outputs are logits).
    sidecar : mapping
        Its validated sidecar (see the module notes).
    device : str or torch.device, default "auto"
        ``auto`` picks CUDA when present.
    threads : int, optional
        CPU threads for torch (``torch.set_num_threads``, process-wide).
    batch_size : int, optional
        Triplets per forward pass inside :meth:`score` (default 64 on a CPU, where small
        batches keep the first layer's activations in the caches, 1024 on a GPU).
    channels_last : bool, default True
        Use the channels-last memory format (faster convolutions on CPU).
    precision : {"auto", "float32", "bfloat16"}, default "auto"
        ``bfloat16`` runs the network under ``torch.autocast`` (faster on CPUs with native
        bfloat16 instructions; scores differ from float32 by up to about 1e-3). ``auto`` resolves
        with :func:`resolve_precision` for the device: bfloat16 on a CPU with AVX512-BF16 or
        AMX-BF16, float32 otherwise (on CUDA too).

    Attributes
    ----------
    precision : str
        The precision the network runs in: ``"float32"`` or ``"bfloat16"`` (``auto`` resolved).
    device : torch.device
    batch_size : int

    Raises
    ------
    ValueError
        For a ``batch_size`` that is not a positive integer or an unknown ``precision``.

    Use :meth:`from_files` to load a model written by :func:`save_realbogus_model`.
    """

    def __init__(self, model: nn.Module, sidecar: Mapping[str, Any], device: str | torch.device = "auto",
                 threads: int | None = None, batch_size: int | None = None, channels_last: bool = True,
                 precision: str = "auto"):
        if threads:
            torch.set_num_threads(int(threads))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_precision(precision)
        self.sidecar = check_sidecar(sidecar)
        self.device = select_device(device) if isinstance(device, str) else device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.batch_size = batch_size or (1024 if self.device.type == "cuda" else 64)
        self.precision = resolve_precision(precision, self.device)
        # One member, no Monte-Carlo passes: the scores are the network's own sigmoid outputs.
        self.ensemble = EnsemblePredictor([self.model], device=self.device, memory_format=self.memory_format,
                                          autocast_dtype=torch.bfloat16 if self.precision == "bfloat16" else None)

    @classmethod
    def from_files(cls, model_pt: str | Path, model_json: str | Path | None = None, device: str = "auto",
                   threads: int | None = None, batch_size: int | None = None, channels_last: bool = True,
                   precision: str = "auto") -> RealBogusScorer:
        """Load ``model.pt`` and its sidecar once (see :func:`load_realbogus_model`)."""
        check_precision(precision)  # before the loading
        torch_device = select_device(device)
        model, sidecar = load_realbogus_model(model_pt, model_json, torch_device)
        return cls(model, sidecar, torch_device, threads=threads, batch_size=batch_size, channels_last=channels_last,
                   precision=precision)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, S, S)`` of one triplet."""
        return tuple(self.sidecar["input_shape"])

    @property
    def threshold(self) -> float:
        """P(real) at or above which a candidate is called real (chosen on validation)."""
        return float(self.sidecar["threshold"])

    @property
    def normalisation(self) -> dict[str, Any]:
        """Keyword arguments of :func:`prepare_triplet` that reproduce the training data's."""
        return sidecar_normalisation(self.sidecar)

    def check(self, triplets: Any) -> np.ndarray:
        """``triplets`` as a float32 ``(n, C, S, S)`` array, or a ValueError saying what is wrong.

        A single ``(C, S, S)`` triplet is accepted as a batch of one.
        """
        array = np.asarray(triplets)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"triplets must be floating point (float32), got dtype {array.dtype}")
        if array.ndim == 3:
            array = array[np.newaxis]
        if array.ndim != 4 or array.shape[1:] != self.input_shape:
            expected = "(n, {}, {}, {})".format(*self.input_shape)
            raise ValueError(f"triplets must have shape {expected} (channels {', '.join(CHANNELS)}), "
                             f"got {array.shape}")
        array = np.asarray(array, dtype=np.float32)
        finite = np.isfinite(array).reshape(len(array), -1).all(axis=1) if len(array) else np.ones(0, bool)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(f"{len(bad)} triplet(s) hold NaN or infinite values (first at index {bad[0]}); "
                             "normalise raw cut-outs with prepare_triplet, which sets invalid pixels to 0")
        return array

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        prediction = self.ensemble.predict(torch.from_numpy(np.ascontiguousarray(batch)))
        return prediction.probability.cpu().numpy()

    def score(self, triplets: Any) -> np.ndarray:
        """P(real) in [0, 1] of each normalised triplet, as a float32 array of shape ``(n,)``.

        Raises
        ------
        ValueError
            For a wrong dtype or shape or non-finite values (see :meth:`check`).
        """
        return self._score_checked(self.check(triplets))

    def _score_checked(self, array: np.ndarray) -> np.ndarray:
        scores = np.empty(len(array), np.float32)
        for start in range(0, len(array), self.batch_size):
            scores[start:start + self.batch_size] = self._forward(array[start:start + self.batch_size])
        return scores

    def score_batches(self, triplets: Iterable[Any], batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Score a stream of triplets with bounded memory.

        Parameters
        ----------
        triplets : iterable
            Yields single ``(C, S, S)`` triplets or ``(k, C, S, S)`` arrays, in any mix.
        batch_size : int, optional
            Triplets held at once (default: the scorer's ``batch_size``); each held batch is
            scored in forward passes of the scorer's ``batch_size``.

        Yields
        ------
        ndarray
            Scores of consecutive batches of (at most) ``batch_size`` triplets, in input order.
        """
        batch_size = batch_size or self.batch_size
        buffer: list[np.ndarray] = []
        held = 0
        for item in triplets:
            array = self.check(item)
            while len(array):
                take = array[:batch_size - held]
                array = array[len(take):]
                buffer.append(take)
                held += len(take)
                if held == batch_size:
                    yield self._score_checked(np.concatenate(buffer))
                    buffer, held = [], 0
        if held:
            yield self._score_checked(np.concatenate(buffer))


def prepare_triplet(science: np.ndarray, reference: np.ndarray, difference: np.ndarray, method: str = "robust",
                    clip: float = 30.0) -> np.ndarray:
    """Normalise raw cut-outs into one ``(3, S, S)`` float32 triplet as the training data were.

    Each channel goes through :func:`astrodag.supernova.imaging.triplets.normalise`; NaN pixels
    (masked or outside the image) become 0, as in the dataset.

    Parameters
    ----------
    science, reference, difference : ndarray
        Square 2-D cut-outs of the same shape, centred on the candidate (reference aligned to
        the science grid and flux-scaled, difference as written by the difference stage).
    method : {"robust", "l2"}, default "robust"
        Pass ``**scorer.normalisation`` to match a model.
    clip : float, default 30.0

    Raises
    ------
    ValueError
        For cut-outs that are not square 2-D arrays of one shape, or a channel without any
        finite pixel.
    """
    from astrodag.supernova.imaging.triplets import normalise

    planes = [np.asarray(plane, dtype=np.float64) for plane in (science, reference, difference)]
    for name, plane in zip(CHANNELS, planes):
        if plane.ndim != 2 or plane.shape[0] != plane.shape[1]:
            raise ValueError(f"the {name} cut-out must be a square 2-D array, got shape {plane.shape}")
        if not np.isfinite(plane).any():
            raise ValueError(f"the {name} cut-out has no finite pixel")
    if len({plane.shape for plane in planes}) != 1:
        raise ValueError(f"the cut-outs differ in shape: {[plane.shape for plane in planes]}")
    if method not in ("robust", "l2"):
        raise ValueError(f"method must be 'robust' or 'l2', got {method!r}")
    return np.stack([normalise(plane, method, clip) for plane in planes])


# --------------------------------------------------------------------------------------------
# differenced pairs
# --------------------------------------------------------------------------------------------


def _pair_candidates(pair_dir: Path, products, candidates: str | Path | pd.DataFrame | None) -> pd.DataFrame:
    """The pair's candidates: given, read from ``candidates.csv``, or detected now (not written)."""
    from astrodag.supernova.imaging.detect import DetectSettings, detect_candidates

    if isinstance(candidates, pd.DataFrame):
        table = candidates
        source: Path = pair_dir / "candidates.csv"
    else:
        source = Path(candidates) if candidates is not None else pair_dir / "candidates.csv"
        if source.is_file():
            table = pd.read_csv(source)
        elif candidates is not None:
            raise InputDataError(source, "candidate table does not exist")
        else:
            header = products.header
            table = detect_candidates(products.significance, products.score, products.difference, products.mask,
                                      products.psf, float(header["FLUXSCL"]), float(header["FLUXZPD"]), products.wcs,
                                      DetectSettings(), fwhm=float(header["FWHM_D"]))
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise InputDataError(source, f"candidate table lacks the columns {missing}")
    table = table.reset_index(drop=True)
    if "candidate_id" not in table.columns:
        table["candidate_id"] = np.arange(len(table))
    return table


def candidate_cutouts(products, x: np.ndarray, y: np.ndarray, size: int, normalisation: Mapping[str, Any],
                      batch_size: int = CUTOUT_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The normalised cut-outs that :func:`score_pair` scores, ``batch_size`` candidates at a time.

    Parameters
    ----------
    products : astrodag.supernova.imaging.pipeline.PairProducts
        A pair's images (:func:`astrodag.supernova.imaging.pipeline.read_products`).
    x, y : ndarray
        Candidate positions (0-based science pixels).
    size : int
        Cut-out side (``scorer.input_shape[-1]``).
    normalisation : mapping
        ``{"method", "clip"}`` (``scorer.normalisation``).
    batch_size : int, default CUTOUT_BATCH

    Yields
    ------
    (ndarray, ndarray)
        ``(k, 3, size, size)`` float32 cut-outs (science, reference, difference; invalid
        pixels 0, as in the triplets stage) and each one's invalid-pixel fraction.
    """
    from astrodag.supernova.imaging.triplets import cutouts

    planes = [products.science, products.reference, products.difference]
    # The same invalid-pixel rule as the triplets stage, so scored cut-outs look like the training ones.
    invalid = products.mask | ~np.isfinite(products.difference)
    for start in range(0, len(x), batch_size):
        yield cutouts(planes, invalid, x[start:start + batch_size], y[start:start + batch_size], size,
                      normalisation["method"], float(normalisation["clip"]))


def score_pair(pair_dir: str | Path, scorer: RealBogusScorer, out_table: str | Path | None = None,
               stamps_dir: str | Path | None = None, top: int = 20, candidates: str | Path | pd.DataFrame | None = None,
               max_masked_fraction: float = 0.5, pair_id: str | None = None) -> pd.DataFrame:
    """Score every candidate of one differenced pair.

    Parameters
    ----------
    pair_dir : str or Path
        Holds ``difference.fits`` (with its ``SCIENCE``/``REFERENCE`` extensions),
        ``significance.fits`` and ``mask.fits``, as written by the difference stage.
    scorer : RealBogusScorer
    out_table : str or Path, optional
        Write the scored table here (``.csv`` or ``.parquet``).
    stamps_dir : str or Path, optional
        Write FITS and PNG stamps of the ``top`` best-scoring candidates here.
    top : int, default 20
    candidates : str, Path or DataFrame, optional
        Candidate table (columns ``x``, ``y`` at least, 0-based science pixels). Default
        ``pair_dir/candidates.csv``; when that does not exist either, candidates are detected
        with the default :class:`astrodag.supernova.imaging.detect.DetectSettings` (not written).
    max_masked_fraction : float, default 0.5
        Candidates whose cut-out is more invalid than this get a NaN score.
    pair_id : str, optional
        Recorded in the table (default: the directory's name).

    Returns
    -------
    DataFrame
        ``SCORED_COLUMNS`` (``kept`` is the detection stage's shape-cut verdict, True when the
        table has none; ``is_real`` is ``score >= scorer.threshold``), sorted as the candidates.
    """
    from astrodag.supernova.imaging.pipeline import read_products

    pair_dir = Path(pair_dir)
    pair_id = pair_id or pair_dir.name
    products = read_products(pair_dir)
    table = _pair_candidates(pair_dir, products, candidates)
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    size = scorer.input_shape[-1]
    scores = np.full(len(table), np.nan, np.float32)
    fractions = np.ones(len(table))
    position = 0
    for stack, fraction in candidate_cutouts(products, x, y, size, scorer.normalisation):
        usable = fraction <= max_masked_fraction
        block = np.full(len(stack), np.nan, np.float32)
        if usable.any():
            block[usable] = scorer.score(stack[usable])
        scores[position:position + len(stack)] = block
        fractions[position:position + len(stack)] = fraction
        position += len(stack)
    scored = _scored_table(table, pair_id, products, x, y, scores, fractions, scorer.threshold)
    if out_table is not None:
        write_table(out_table, scored)
    if stamps_dir is not None and top:
        write_stamps(stamps_dir, {pair_id: (pair_dir, products)}, _top_rows(scored, top), scorer.threshold, size)
    return scored


def _scored_table(table: pd.DataFrame, pair_id: str, products, x: np.ndarray, y: np.ndarray, scores: np.ndarray,
                  fractions: np.ndarray, threshold: float) -> pd.DataFrame:
    if {"ra", "dec"} <= set(table.columns):
        ra, dec = table["ra"].to_numpy(float), table["dec"].to_numpy(float)
    elif len(x):
        ra, dec = (np.asarray(v, float) for v in products.wcs.pixel_to_world_values(x, y))
    else:
        ra = dec = np.array([], float)
    if "significance" in table.columns:
        significance = table["significance"].to_numpy(float)
    else:
        ix = np.clip(np.rint(x).astype(int), 0, products.significance.shape[1] - 1)
        iy = np.clip(np.rint(y).astype(int), 0, products.significance.shape[0] - 1)
        significance = products.significance[iy, ix].astype(float)
    kept = table["kept"].to_numpy(dtype=bool) if "kept" in table.columns else np.ones(len(table), bool)
    return pd.DataFrame({
        "candidate_id": table["candidate_id"].to_numpy(), "pair_id": pair_id, "x": x, "y": y, "ra": ra, "dec": dec,
        "significance": significance, "score": scores.astype(np.float64),
        "is_real": np.nan_to_num(scores, nan=-1.0) >= threshold, "kept": kept, "masked_fraction": fractions,
    }, columns=list(SCORED_COLUMNS))


def _top_rows(scored: pd.DataFrame, top: int) -> pd.DataFrame:
    return scored.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable").head(top)


def score_batch(pair_dirs: Sequence[str | Path], scorer: RealBogusScorer, out_table: str | Path,
                stamps_dir: str | Path | None = None, settings: ScoringSettings | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Score the candidates of many differenced pairs into one table.

    Pairs are processed one at a time (one pair's images and one batch of cut-outs in
    memory); only the scored rows and the running ``top`` candidates are kept.

    Parameters
    ----------
    pair_dirs : sequence of str or Path
        Pair directories (see :func:`score_pair`); each needs its ``candidates.csv`` or is
        detected on the fly.
    scorer : RealBogusScorer
    out_table : str or Path
        The scored candidate table (``.csv`` or ``.parquet``) of all pairs.
    stamps_dir : str or Path, optional
        FITS and PNG stamps of the ``settings.top`` best candidates over all pairs, plus
        ``top_candidates.csv`` (the folder is made even when there is nothing to show).
    settings : ScoringSettings, optional
    progress : bool, optional
        Show a progress bar (default: only on a terminal).

    Returns
    -------
    dict
        Pairs, candidates, scored, called real, threshold, seconds, candidates per second,
        device and the resolved precision (also written beside the table as
        ``<table stem>.json``).
    """
    from tqdm.auto import tqdm

    settings = settings or ScoringSettings()
    started = time.perf_counter()
    frames = []
    best: list[tuple[float, int, int, str]] = []  # a min-heap of (score, pair index, row, pair_id)
    directories = [Path(path) for path in pair_dirs]
    for pair_index, pair_dir in enumerate(tqdm(directories, desc="scoring pairs", unit="pair",
                                           disable=not progress_enabled(progress))):
        scored = score_pair(pair_dir, scorer, top=0, max_masked_fraction=settings.max_masked_fraction)
        frames.append(scored)
        for row, value in zip(scored.index, scored["score"].to_numpy()):
            if np.isfinite(value) and settings.top:
                entry = (float(value), pair_index, int(row), scored.at[row, "pair_id"])
                if len(best) < settings.top:
                    heapq.heappush(best, entry)
                elif entry > best[0]:
                    heapq.heapreplace(best, entry)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORED_COLUMNS))
    write_table(out_table, table)
    seconds = time.perf_counter() - started
    if stamps_dir is not None:
        from astrodag.supernova.imaging.pipeline import read_products

        # The folder and its top_candidates.csv are written even when nothing was scored.
        chosen = sorted(best, reverse=True)
        rows = pd.concat([frames[index].loc[[row]] for _, index, row, _ in chosen], ignore_index=True) if chosen \
            else pd.DataFrame(columns=list(SCORED_COLUMNS))
        pairs = {}
        for _, index, _, pair_id in chosen:
            if pair_id not in pairs:  # each pair's images are read once, however many of its candidates are top
                pairs[pair_id] = (directories[index], read_products(directories[index]))
        write_stamps(stamps_dir, pairs, rows, scorer.threshold, scorer.input_shape[-1])
    scored_count = int(table["score"].notna().sum()) if len(table) else 0
    summary = {"pairs": len(directories), "candidates": int(len(table)), "scored": scored_count,
               "called_real": int(table["is_real"].sum()) if len(table) else 0, "threshold": scorer.threshold,
               "seconds": round(seconds, 3),
               "candidates_per_second": round(scored_count / seconds, 1) if seconds > 0 else None,
               "device": str(scorer.device), "precision": scorer.precision}
    write_json(Path(out_table).with_suffix(".json"), summary)
    log.info("scored %d candidates of %d pairs in %.1f s on %s in %s; %d called real at P >= %.3f", scored_count,
             len(directories), seconds, scorer.device, scorer.precision, summary["called_real"], scorer.threshold)
    return summary


def write_stamps(stamps_dir: str | Path, pairs: Mapping[str, tuple[Path, Any]], rows: pd.DataFrame,
                 threshold: float, size: int = 63) -> None:
    """FITS and PNG stamps (science, reference, difference) of scored candidates.

    Parameters
    ----------
    stamps_dir : str or Path
        Receives ``{rank:03d}_{pair_id}_{candidate_id}.fits`` (three image HDUs with the
        cut-out WCS; score and position in the primary header), the same name as ``.png``
        and ``top_candidates.csv`` (the rows with their rank and stamp name).
    pairs : mapping
        ``pair_id -> (pair_dir, products)`` for every pair in ``rows``.
    rows : DataFrame
        Scored rows (``SCORED_COLUMNS``), best first.
    threshold : float
        Shown in the PNG titles.
    size : int, default 63
        Stamp side in pixels (the model's cut-out size).
    """
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from matplotlib.figure import Figure

    from astrodag.supernova.imaging.fitsio import provenance_cards
    from astrodag.io import save_figure

    stamps_dir = Path(stamps_dir)
    stamps_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for rank, row in enumerate(rows.itertuples(index=False), start=1):
        pair_dir, products = pairs[row.pair_id]
        name = f"{rank:03d}_{row.pair_id}_{row.candidate_id}"
        hdus: list = [fits.PrimaryHDU()]
        header = hdus[0].header
        for key, value, comment in (("PAIRID", str(row.pair_id), "pair"),
                                    ("CANDID", str(row.candidate_id), "candidate"),
                                    ("RBSCORE", float(row.score), "real/bogus P(real)"),
                                    ("RBTHRESH", float(threshold), "threshold for real"),
                                    ("CANDX", float(row.x), "0-based x in the science image"),
                                    ("CANDY", float(row.y), "0-based y in the science image"),
                                    ("RA", float(row.ra), "deg"), ("DEC", float(row.dec), "deg")):
            header[key] = (value, comment)
        for card in provenance_cards({"stage": "score", "inputs": {"difference": pair_dir / "difference.fits"}}):
            if card[0] != "HISTORY":
                header[card[0]] = card[1:]
        panels = []
        for channel, plane in zip(CHANNELS, (products.science, products.reference, products.difference)):
            cut = Cutout2D(plane, (row.x, row.y), size, wcs=products.wcs, mode="partial", fill_value=np.nan)
            hdus.append(fits.ImageHDU(cut.data.astype(np.float32), header=cut.wcs.to_header(), name=channel.upper()))
            panels.append(cut.data)
        with atomic_path(stamps_dir / f"{name}.fits") as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True)
        figure = Figure(figsize=(6.6, 2.5), layout="constrained")
        axes = figure.subplots(1, 3)
        for axis, channel, panel in zip(axes, CHANNELS, panels):
            finite = panel[np.isfinite(panel)]
            low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
            axis.imshow(panel, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            axis.set_title(channel, fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
        verdict = "real" if row.score >= threshold else "bogus"
        figure.suptitle(f"{row.pair_id} #{row.candidate_id}: P(real) = {row.score:.3f} ({verdict})", fontsize=8)
        save_figure(stamps_dir / f"{name}.png", figure)
        names.append(name)
    write_table(stamps_dir / "top_candidates.csv", rows.assign(rank=np.arange(1, len(rows) + 1), stamp=names))
