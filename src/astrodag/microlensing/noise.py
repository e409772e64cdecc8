"""Photometric errors of a survey, and the rescaling of reported errors to the observed scatter.

``SurveyNoise`` is the single-visit error of a star of magnitude ``m`` (Ivezic et al. 2019,
ApJ 873, 111, eq. 4-5):

    sigma(m)^2 = floor^2 + (0.04 - gamma) x + gamma x^2,   x = 10^(0.4 (m - depth)),

where ``depth`` is the 5-sigma limiting magnitude of one visit (sigma(depth) ~ 0.2 mag) and
``floor`` the systematic floor. It is the CCD equation sigma = 1.0857 sqrt(F + B) / F in
magnitudes, with F the source photons and B the background photons in its aperture (sky, and
in crowded bulge fields the blended neighbours): the ``x`` term is the source's own photon
noise, the ``x^2`` term the background's; ``gamma`` = B / (B + F at the depth), 0.039 for
LSST's bands. Skowron et al. (2016, AcA 66, 1) use the same sqrt(F + B) / F form for OGLE-IV
bulge photometry. ``depth_counts`` and ``background_counts`` give F and B in photons.

``fit_error_rescaling`` and ``rescale_errors`` follow Skowron et al. (2016): the errors a
pipeline reports are replaced by ``sqrt((k sigma)^2 + eps^2)``, with ``k`` and ``eps`` chosen so
that the residuals of constant stars, divided by the new errors, have chi^2 / dof = 1 at every
magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

MAG_PER_FLUX = 2.5 / math.log(10.0)  # d(mag) / d(ln flux) = 1.0857


@dataclass(frozen=True)
class SurveyNoise:
    """Single-visit photometric error of a survey (see the module docstring).

    Parameters
    ----------
    depth_mag : float
        5-sigma single-visit limiting magnitude (finite).
    floor_mag : float
        Systematic error floor (mag, >= 0).
    gamma : float
        Background share of the noise at the depth, in (0, 0.04); 0.039 (Ivezic et al. 2019, LSST).
    """

    depth_mag: float
    floor_mag: float
    gamma: float = 0.039

    def __post_init__(self):
        for key in ("depth_mag", "floor_mag", "gamma"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        if self.floor_mag < 0:
            raise ValueError(f"floor_mag must be >= 0, got {self.floor_mag}")
        if not 0.0 < self.gamma < 0.04:
            raise ValueError(f"gamma must be in (0, 0.04), got {self.gamma}")

    def sigma(self, mag):
        """Error (mag) of one visit of a star of magnitude ``mag`` (array_like; float64 out)."""
        x = np.power(10.0, 0.4 * (np.asarray(mag, dtype=np.float64) - self.depth_mag))
        return np.sqrt(self.floor_mag**2 + (0.04 - self.gamma) * x + self.gamma * x * x)

    @property
    def depth_counts(self) -> float:
        """Photons F of a star at the depth, in the CCD-equation form of ``sigma`` (without the floor)."""
        return MAG_PER_FLUX**2 / (0.04 - self.gamma)

    @property
    def background_counts(self) -> float:
        """Background photons B in the aperture (sky + blend), in the CCD-equation form of ``sigma``."""
        return self.gamma * self.depth_counts**2 / MAG_PER_FLUX**2


def rescale_errors(errors, scale: float, floor: float):
    """Rescaled errors ``sqrt((scale errors)^2 + floor^2)`` (Skowron et al. 2016, AcA 66, 1)."""
    errors = np.asarray(errors, dtype=np.float64)
    return np.sqrt((scale * errors) ** 2 + floor**2)


def fit_error_rescaling(residuals, errors, floor: float | None = None, bins: int = 10) -> tuple[float, float]:
    """Scale ``k`` and floor ``eps`` that make reported errors match the observed scatter.

    Skowron et al. (2016, AcA 66, 1): for constant (non-variable) stars, or baseline points of an
    event, the residuals about the star's mean divided by ``sqrt((k sigma)^2 + eps^2)`` should
    have chi^2 / dof = 1 at every magnitude. The points are grouped into ``bins`` bins of equal
    size by reported error (the error grows with magnitude, so these are magnitude bins), and
    ``k``, ``eps`` minimise sum over bins of ``(chi2_b / n_b - 1)^2 / (2 / n_b)`` (the variance of
    chi2_b / n_b), with ``scipy.optimize.least_squares``. Remove outliers (e.g. by sigma clipping)
    before: they are not Gaussian scatter.

    Parameters
    ----------
    residuals : array_like, shape (N,)
        Observed minus mean magnitude of constant points (mag).
    errors : array_like, shape (N,)
        Their reported errors (mag, > 0).
    floor : float, optional
        Keep the floor fixed at this value (>= 0) and fit the scale only, e.g. when all points are
        faint and the floor is not constrained. ``None`` (default) fits both.
    bins : int
        Number of error bins (>= 2 when the floor is fitted, >= 1 otherwise); at least 5 points each.

    Returns
    -------
    (scale, floor) : tuple of float
    """
    residuals = np.asarray(residuals, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if residuals.shape != errors.shape or residuals.ndim != 1:
        raise ValueError("residuals and errors must be 1-D arrays of the same length")
    if not (np.isfinite(residuals).all() and np.isfinite(errors).all() and (errors > 0).all()):
        raise ValueError("residuals must be finite and errors finite and > 0")
    if floor is not None and not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be None or a finite number >= 0, got {floor!r}")
    n_parameters = 1 if floor is not None else 2
    if bins < n_parameters:
        raise ValueError(f"bins must be >= {n_parameters} to fit {n_parameters} parameter(s), got {bins}")
    if residuals.size < 5 * bins:
        raise ValueError(f"need at least 5 points per bin ({5 * bins}), got {residuals.size}")
    order = np.argsort(errors, kind="stable")
    groups = np.array_split(order, bins)
    squared_residuals = [residuals[g] ** 2 for g in groups]
    squared_errors = [errors[g] ** 2 for g in groups]
    weights = np.sqrt(np.array([g.size for g in groups]) / 2.0)

    def deviations(parameters):
        k2 = parameters[0] ** 2
        eps2 = (parameters[1] if floor is None else floor) ** 2
        reduced = np.array([np.mean(r2 / (k2 * s2 + eps2)) for r2, s2 in zip(squared_residuals, squared_errors)])
        return (reduced - 1.0) * weights

    # Start from the overall ratio of observed to reported scatter, and a small floor.
    k0 = max(math.sqrt(np.mean(residuals**2 / errors**2)), 1e-3)
    start = [k0] if floor is not None else [k0, 0.1 * float(np.min(errors))]
    lower = [1e-9] if floor is not None else [1e-9, 0.0]  # k > 0 keeps the new errors > 0
    fit = optimize.least_squares(deviations, start, bounds=(lower, np.inf), x_scale="jac")
    scale = float(fit.x[0])
    return scale, float(fit.x[1]) if floor is None else float(floor)
