"""Sky background and its noise: photutils ``Background2D`` statistics, fast full-size maps.

``Background2D`` measures sigma-clipped statistics in boxes (the low-resolution "mesh") and
resizes the mesh to the image with a cubic spline (``scipy.ndimage.zoom``). That resizing is a
tensor product of two 1-D spline interpolations, so it equals ``Wy @ mesh @ Wx.T`` with two
small interpolation matrices; :func:`estimate_background` builds the full-size maps that way,
identical to ``Background2D.background``/``background_rms`` (tested) and about ten times
faster at 2048x2048 pixels (a zoom costs 0.23 s there, the matrix products about 0.02 s).
The box statistics themselves are taken on a regular subsample of the pixels (``subsample``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from photutils.background import Background2D, MeanBackground, MedianBackground, StdBackgroundRMS
from scipy import ndimage

from astrodag.errors import ConfigError
from astrodag.settings import Settings, choice, number, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackgroundSettings(Settings):
    """Background estimation (config ``supernova.difference.background``).

    Keys
    ----
    box_size : int, default 64
        Box side in pixels of the background mesh (smaller follows gradients, larger is less
        biased by sources); capped at the image size.
    filter_size : int, default 3
        Median filter (odd, in boxes) applied to the mesh; 1 disables it.
    sigma_clip : float, default 3.0
        Sigma-clipping threshold of the box statistics.
    exclude_percentile : float, default 25.0
        Boxes with more than this percentage of masked pixels are interpolated from their
        neighbours instead of measured.
    subsample : int, default 2
        Box statistics from every n-th pixel along each axis (1: all pixels). Sky level and
        per-pixel noise are unchanged by regular subsampling; the work drops by n^2.
    estimator : {"auto", "median", "mean"}, default "auto"
        Sky level of a box (after sigma clipping). The median is robust to faint sources but
        biased for discrete low counts (it is 0 below 0.7 photons a pixel, as in GALEX maps);
        ``auto`` takes the mean when more than 5 % of the pixels are exactly 0 or the sky holds
        fewer than 20 electrons a pixel (with a header gain), the median otherwise. The mean is
        taken after clipping at ``max(sigma_clip, 5)`` sigma around the mean.
    """

    PREFIX: ClassVar[str] = "supernova.difference.background"

    box_size: int = setting(64, number(8, integer=True))
    filter_size: int = setting(3, number(1, 15, integer=True))
    sigma_clip: float = setting(3.0, number(1.0, low_open=False))
    exclude_percentile: float = setting(25.0, number(0.0, 100.0))
    subsample: int = setting(2, number(1, 8, integer=True))
    estimator: str = setting("auto", choice("auto", "median", "mean"))

    def validate(self, prefix: str) -> None:
        if self.filter_size % 2 == 0:
            raise ConfigError(f"{prefix}.filter_size", f"must be odd, got {self.filter_size}")


@dataclass
class Background:
    """Full-size background and background-noise maps of one image.

    Attributes
    ----------
    background, rms : numpy.ndarray
        Per-pixel sky level and sky noise (1 sigma), same shape and dtype as the image (a
        caller that has no further use for a map may drop it to free memory: None).
    median, rms_median : float
        Medians of the low-resolution maps (the sky level and noise quoted in records).
    estimator : str
        ``median`` or ``mean`` (see ``BackgroundSettings.estimator``).
    """

    background: np.ndarray | None
    rms: np.ndarray | None
    median: float
    rms_median: float
    estimator: str


@lru_cache(maxsize=16)
def _zoom_matrix(n_mesh: int, box: int, n_pixels: int) -> np.ndarray:
    # Row i holds the weights of the mesh values at pixel i: exactly what ndimage.zoom does along
    # one axis (cubic spline, mode 'reflect', grid_mode=True) when applied to the identity.
    if n_mesh == 1:
        return np.ones((n_pixels, 1))
    matrix = ndimage.zoom(np.eye(n_mesh), (box, 1), order=3, mode="reflect", grid_mode=True)
    return matrix[:n_pixels]


def _resize(mesh: np.ndarray, box: tuple[int, int], shape: tuple[int, int], dtype) -> np.ndarray:
    """Mesh -> full image as ``photutils`` resizes it (cubic zoom, clipped to the mesh range)."""
    low, high = float(np.min(mesh)), float(np.max(mesh))
    if low == high:
        return np.full(shape, low, dtype=dtype)
    wy = _zoom_matrix(mesh.shape[0], box[0], shape[0])
    wx = _zoom_matrix(mesh.shape[1], box[1], shape[1])
    full = (wy.astype(dtype) @ mesh.astype(dtype)) @ wx.T.astype(dtype)
    return np.clip(full, low, high, out=full)


@dataclass(frozen=True)
class NoiseModel:
    """What the header says about the noise: electrons per data unit and read noise (data units)."""

    gain: float | None = None
    read_noise: float | None = None

    def floor(self, background: np.ndarray | float) -> np.ndarray | float:
        """Photon plus read noise of the sky itself (0 without a gain)."""
        if not self.gain:
            return 0.0
        return np.sqrt(np.clip(background, 0, None) / self.gain + (self.read_noise or 0.0) ** 2)


def _counting(data: np.ndarray, excluded: np.ndarray | None, noise: NoiseModel) -> bool:
    """True when the sky holds so few photons per pixel that the median is biased (Poisson regime)."""
    sample = data[::4, ::4]
    good = np.isfinite(sample) if excluded is None else np.isfinite(sample) & ~excluded[::4, ::4]
    values = sample[good]
    if values.size == 0:
        return False
    if np.mean(values == 0) > 0.05:
        return True
    if noise.gain:
        mean, _, _ = sigma_clipped_stats(values, sigma=3.0)
        return float(mean) * noise.gain < 20
    return False


def _mesh(data: np.ndarray, excluded: np.ndarray | None, settings: BackgroundSettings,
          mean: bool) -> Background2D:
    """``Background2D`` of an image already subsampled by ``settings.subsample``."""
    size = max(2, settings.box_size // settings.subsample)
    box = (min(size, data.shape[0]), min(size, data.shape[1]))
    with warnings.catch_warnings():
        # Boxes that are fully masked are expected near footprint edges; photutils warns.
        warnings.simplefilter("ignore")
        return Background2D(data, box, mask=excluded, filter_size=settings.filter_size,
                            # Low counts are skewed: clipping at 3 sigma around the median cuts their
                            # upper tail (2-3 photons at a mean of 0.4); 5 sigma around the mean does not.
                            sigma_clip=SigmaClip(sigma=max(settings.sigma_clip, 5.0) if mean else settings.sigma_clip,
                                                 maxiters=10, cenfunc="mean" if mean else "median"),
                            bkg_estimator=MeanBackground() if mean else MedianBackground(),
                            bkg_rms_estimator=StdBackgroundRMS(), exclude_percentile=settings.exclude_percentile)


def _use_mean(data, excluded, settings, noise) -> bool:
    if settings.estimator == "auto":
        return _counting(data, excluded, noise)
    return settings.estimator == "mean"


def estimate_background(data: np.ndarray, mask: np.ndarray | None = None,
                        coverage_mask: np.ndarray | None = None,
                        settings: BackgroundSettings | None = None, noise: NoiseModel | None = None) -> Background:
    """Background and rms maps of an image.

    Parameters
    ----------
    data : numpy.ndarray
        The image; non-finite pixels are ignored.
    mask : numpy.ndarray, optional
        True for pixels to leave out of the statistics (bad, saturated, bright sources).
    coverage_mask : numpy.ndarray, optional
        True where there is no data at all (outside an aligned reference's footprint); the maps
        are 0 there.
    settings : BackgroundSettings, optional
    noise : NoiseModel, optional
        With a gain, the rms map is at least the sky's photon (and read) noise, and it is that
        noise when the mean estimator is used (photon counting: the scatter in a box then
        also holds the faint sources that 5-sigma clipping keeps).

    Returns
    -------
    Background
        When too few boxes can be measured (a mostly masked image), the maps fall back to the
        constant sigma-clipped level and standard deviation of the good pixels.
    """
    settings = settings or BackgroundSettings()
    noise = noise or NoiseModel()
    dtype = data.dtype if data.dtype in (np.float32, np.float64) else np.float32
    # Pixels outside the coverage take part in no box, exactly as photutils treats them.
    excluded = mask if coverage_mask is None else (coverage_mask if mask is None else mask | coverage_mask)
    mean = _use_mean(data, excluded, settings, noise)
    step = settings.subsample
    try:
        mesh = _mesh(data[::step, ::step], None if excluded is None else excluded[::step, ::step], settings, mean)
        # A mesh box of the subsample spans step times as many pixels of the image.
        box = tuple(step * int(b) for b in mesh.box_size)
        background = _resize(mesh.background_mesh, box, data.shape, dtype)
        rms = _resize(mesh.background_rms_mesh, box, data.shape, dtype)
        level, rms_median = float(mesh.background_median), float(mesh.background_rms_median)
    except ValueError as error:
        good = np.isfinite(data) if excluded is None else np.isfinite(data) & ~excluded
        if not good.any():
            raise
        log.warning("background mesh not measurable (%s); using the global sigma-clipped level", error)
        clipped_mean, clipped_median, std = sigma_clipped_stats(data[good], sigma=settings.sigma_clip)
        level, rms_median = float(clipped_mean if mean else clipped_median), float(std)
        background = np.full(data.shape, level, dtype=dtype)
        rms = np.full(data.shape, rms_median, dtype=dtype)
    if noise.gain and mean:
        # Photon counting: the box scatter also holds the faint sources that 5-sigma clipping keeps.
        rms = noise.floor(background).astype(dtype)
        rms_median = float(noise.floor(level))
    elif noise.gain:
        np.maximum(rms, noise.floor(background).astype(dtype), out=rms)
        rms_median = max(rms_median, float(noise.floor(level)))
    if coverage_mask is not None:
        background[coverage_mask] = 0
        rms[coverage_mask] = 0
    return Background(background=background, rms=rms, median=level, rms_median=rms_median,
                      estimator="mean" if mean else "median")


def noise_level(data: np.ndarray, mask: np.ndarray | None = None,
                settings: BackgroundSettings | None = None, noise: NoiseModel | None = None) -> float:
    """Median per-pixel sky noise (1 sigma) of an image, without building full-size maps.

    Used on the reference *before* it is resampled, because resampling correlates (and so
    lowers) the per-pixel noise while ZOGY needs that of independent pixels.
    """
    settings = settings or BackgroundSettings()
    noise = noise or NoiseModel()
    step = settings.subsample
    try:
        mean = _use_mean(data, mask, settings, noise)
        mesh = _mesh(data[::step, ::step], None if mask is None else mask[::step, ::step], settings, mean)
        floor = float(noise.floor(float(mesh.background_median)))
        return floor if noise.gain and mean else max(float(mesh.background_rms_median), floor)
    except ValueError:
        return estimate_background(data, mask, settings=settings, noise=noise).rms_median
