"""Scoring (science, reference, difference) triplets with a trained real/bogus model.

A trained model is ``model.pt`` beside its ``model.json`` sidecar
(:mod:`astrodag.supernova.realbogus.model`).

:class:`RealBogusScorer` loads them once and scores already-normalised arrays
(``score``, ``score_batches``) through a one-member :class:`astrodag.models.ensemble.EnsemblePredictor`;
:func:`prepare_triplet` normalises raw cut-outs exactly as the training data were. Scoring
differenced pairs is in :mod:`astrodag.supernova.realbogus.pairs`.

Precision: ``"float32"``, ``"bfloat16"`` (``torch.autocast``) or ``"auto"``, which
:func:`resolve_precision` turns into ``bfloat16`` on a CPU with native bfloat16 instructions
(AVX512-BF16 or AMX-BF16, :func:`astrodag.training.precision.cpu_has_native_bf16`; braai on 2 such cores scores about
3,400 triplets/s against 2,000/s in float32) and into ``float32`` anywhere else, GPUs
included. :attr:`RealBogusScorer.precision` is the resolved value. The evaluation
(:func:`astrodag.supernova.realbogus.training.evaluate_realbogus`) always scores in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from astrodag.models.ensemble import EnsemblePredictor
from astrodag.settings import Settings, choice, device_name, flag, number, optional, setting
from astrodag.supernova.realbogus.model import CHANNELS, check_sidecar, load_realbogus_model, sidecar_normalisation
from astrodag.training.precision import PRECISIONS, check_precision, resolve_precision
from astrodag.training.seeding import select_device


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
                    clip: float = 30.0, noise: Sequence[float] | None = None) -> np.ndarray:
    """Normalise raw cut-outs into one ``(3, S, S)`` float32 triplet as the training data were.

    Each channel goes through :func:`astrodag.supernova.imaging.triplets.normalise`; NaN pixels
    (masked or outside the image) become 0, as in the dataset.

    Parameters
    ----------
    science, reference, difference : ndarray
        Square 2-D cut-outs of the same shape, centred on the candidate (reference aligned to
        the science grid and flux-scaled, difference as written by the difference stage).
    method : {"sky", "robust", "l2"}, default "robust"
        Pass ``**scorer.normalisation`` to match a model.
    clip : float, default 30.0
    noise : sequence of 3 floats, optional
        Per-pixel noise of the science, reference and difference images (the ``NOISESCI``,
        ``NOISEREF``, ``NOISED`` cards of ``difference.fits``); needed by ``sky``.

    Raises
    ------
    ValueError
        For cut-outs that are not square 2-D arrays of one shape, a channel without any finite
        pixel, or ``sky`` without three positive noise values.
    """
    from astrodag.supernova.imaging.triplets import NORMALISATIONS, normalise

    planes = [np.asarray(plane, dtype=np.float64) for plane in (science, reference, difference)]
    for name, plane in zip(CHANNELS, planes):
        if plane.ndim != 2 or plane.shape[0] != plane.shape[1]:
            raise ValueError(f"the {name} cut-out must be a square 2-D array, got shape {plane.shape}")
        if not np.isfinite(plane).any():
            raise ValueError(f"the {name} cut-out has no finite pixel")
    if len({plane.shape for plane in planes}) != 1:
        raise ValueError(f"the cut-outs differ in shape: {[plane.shape for plane in planes]}")
    if method not in NORMALISATIONS:
        raise ValueError(f"method must be one of {', '.join(NORMALISATIONS)}, got {method!r}")
    if method == "sky":
        values = np.asarray(noise if noise is not None else [], dtype=float).ravel()
        if values.size != 3 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError("this model's cut-outs are scaled by each image's pixel noise (normalisation 'sky'): "
                             "give the positive noise of the science, reference and difference images (the "
                             f"NOISESCI, NOISEREF, NOISED cards of difference.fits), got {noise!r}")
        return np.stack([normalise(plane, method, clip, float(level)) for plane, level in zip(planes, values)])
    return np.stack([normalise(plane, method, clip) for plane in planes])
