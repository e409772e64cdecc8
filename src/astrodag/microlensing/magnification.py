"""Microlensing magnification: single lens, and binary lens with point or finite source.

Conventions (the same as VBMicrolensing, which is the reference for every result here):

* Angles and positions are in units of the Einstein radius of the total lens mass.
* The binary lens lies on the ``y1`` axis with the origin at its centre of mass: mass
  ``m1 = 1/(1+q)`` at ``(-s q/(1+q), 0)`` and mass ``m2 = q/(1+q)`` at ``(s/(1+q), 0)``.
* The source trajectory (``trajectory``) is, with ``tau = (t - t0)/tE``::

      y1 =  u0 sin(alpha) - tau cos(alpha)
      y2 = -u0 cos(alpha) - tau sin(alpha)

  so the source moves in the direction ``-(cos alpha, sin alpha)``, ``alpha`` measured
  counter-clockwise from the binary axis, and passes closest to the centre of mass at
  ``t0`` at the signed distance ``u0`` (the closest point is ``u0 (sin alpha, -cos alpha)``).
  This is exactly what ``VBMicrolensing.BinaryLightCurve`` uses, and with ``alpha=0`` it is
  what ``VBMicrolensing.PSPLLightCurve`` uses.

``binary_magnification`` has two engines giving the same numbers (to ~1e-10 relative):

* ``method="vbm"`` (default): ``VBMicrolensing.BinaryLightCurve`` once per curve, which is
  ``BinaryMag2`` at every epoch (point source unless its quadrupole/ghost-image test asks for
  contour integration of the finite source).
* ``method="numpy"``: a vectorised point-source solver for all points plus VBMicrolensing for
  the finite-source points only. Measured on 1 core (2-core sandbox): about as fast as the
  library (0.45 vs 0.5 Mpoints/s), so it is not the default; it is kept because it is exact,
  exposes which points needed the finite source, and powers ``binary_point_magnification``.

How ``method="numpy"`` works:

1. The point-source lens equation is the 5th-degree complex polynomial of VBMicrolensing
   (same frame, same coefficients). Its roots are found for all events at once: the epochs
   of every light curve are cut into segments; the first epoch of each segment is solved with
   batched companion-matrix eigenvalues, the following epochs by Newton continuation from
   the previous epoch's roots, vectorised over all segments of all events. A step that does
   not converge, or whose roots fail Vieta's sum rule (two roots collapsed onto one), is
   re-solved with eigenvalues, so the continuation never silently loses a root.
2. True images are selected as VBMicrolensing does (lens-equation residual: the two worst
   roots are dropped unless all five solve the lens equation) and the magnification is
   ``sum 1/|det J|``.
3. Whether the finite source matters is decided with VBMicrolensing's own ``BinaryMag2`` test
   (Bozza et al. 2018, MNRAS 479, 5157): the quadrupole correction ``6 rho^2 sum_i c_i``, the
   ghost-image test on the two false roots and, for q < 0.01, the distance from the planetary
   caustic. Only points that fail it (with a safety factor, so borderline points go to the
   library too) are computed with ``VBMicrolensing.BinaryLightCurve`` (contour integration,
   uniform source); the rest keep the point-source value, which is what ``BinaryMag2``
   returns for them as well.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_METHOD = "vbm"  # measured faster than method="numpy" here (benchmarks/microlensing_magnification.py)
DEFAULT_TOL = 1e-2  # VBMicrolensing's default absolute accuracy (its Tol) on finite-source magnifications

_SEGMENT = 128  # epochs per continuation segment (first one solved by eigenvalues)
_BATCH_POINTS = 262144  # points per solver batch (bounds memory: ~100 MB)
_NEWTON_STEPS = 3  # per epoch; points not converged get _NEWTON_STEPS more, then eigenvalues
_IMAGE_BLOCK = 8192  # points per block in the image/Jacobian stage
_SAFETY = 0.5  # finite-source test thresholds are tightened by this factor (borderline -> library)

_vbm_instance = None


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_float(name: str, value, *, ndim_max: int = 1) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric ({error})") from None
    if array.ndim > ndim_max:
        raise ValueError(f"{name} must have at most {ndim_max} dimension(s), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array.ravel()))[0]
        raise ValueError(f"{name} must be finite, got {array.ravel()[bad]!r} at index {bad}")
    return array


def _positive(name: str, array: np.ndarray) -> np.ndarray:
    if np.any(array <= 0):
        bad = np.flatnonzero(array.ravel() <= 0)[0]
        raise ValueError(f"{name} must be > 0, got {array.ravel()[bad]!r} at index {bad}")
    return array


def _times(times) -> np.ndarray:
    times = _as_float("times", times)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D array, got shape {times.shape}")
    return times


def _events(**params) -> tuple[np.ndarray, ...]:
    """Broadcast per-event parameters (scalars or 1-D arrays) to 1-D arrays of one length N."""
    arrays = {name: _as_float(name, value) for name, value in params.items()}
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        lengths = ", ".join(f"{name}: {a.shape}" for name, a in arrays.items())
        raise ValueError(f"event parameters must be scalars or 1-D arrays of one length ({lengths})") from None
    n = shape[0] if shape else 1
    return tuple(np.broadcast_to(a, (n,)).astype(np.float64) for a in arrays.values())


# --------------------------------------------------------------------------------------------
# trajectory and single lens
# --------------------------------------------------------------------------------------------


def trajectory(times, t0, u0, tE, alpha=None) -> tuple[np.ndarray, np.ndarray]:
    """Source position in Einstein units, VBMicrolensing's convention.

    Parameters
    ----------
    times : array_like, shape (T,)
        Epochs (days).
    t0, u0, tE : float or array_like, shape (N,)
        Time of closest approach, impact parameter (signed, Einstein units), Einstein time (days, > 0).
    alpha : float or array_like, shape (N,), optional
        Angle (radians) between the source trajectory and the binary axis; ``None`` means 0.
        ``y1 = u0 sin(alpha) - tau cos(alpha)``, ``y2 = -u0 cos(alpha) - tau sin(alpha)`` with
        ``tau = (t - t0)/tE``, as in ``VBMicrolensing.BinaryLightCurve``.

    Returns
    -------
    y1, y2 : ndarray, shape (N, T)
        Source coordinates along and across the binary axis (origin at the centre of mass).
    """
    times = _times(times)
    t0, u0, tE, alpha = _events(t0=t0, u0=u0, tE=tE, alpha=0.0 if alpha is None else alpha)
    _positive("tE", tE)
    tau = (times[None, :] - t0[:, None]) / tE[:, None]
    sin_a, cos_a = np.sin(alpha)[:, None], np.cos(alpha)[:, None]
    y1 = u0[:, None] * sin_a - tau * cos_a
    y2 = -u0[:, None] * cos_a - tau * sin_a
    return y1, y2


def pspl_magnification(times, t0, u0, tE) -> np.ndarray:
    """Point-source point-lens magnification (Paczynski 1986), shape (N, T).

    ``A = (u^2 + 2) / (u sqrt(u^2 + 4))`` with ``u^2 = u0^2 + ((t - t0)/tE)^2``; ``u0`` may be
    negative (only ``|u0|`` matters). ``u = 0`` gives ``inf``.
    """
    times = _times(times)
    t0, u0, tE = _events(t0=t0, u0=u0, tE=tE)
    _positive("tE", tE)
    tau = (times[None, :] - t0[:, None]) / tE[:, None]
    u2 = tau * tau + (u0 * u0)[:, None]
    with np.errstate(divide="ignore"):
        return (u2 + 2.0) / np.sqrt(u2 * (u2 + 4.0))


# --------------------------------------------------------------------------------------------
# binary lens, point source: the polynomial, its roots, the images
# --------------------------------------------------------------------------------------------


class _Lens:
    """Per-point lens constants in VBMicrolensing's solver frame.

    The solver frame has the lighter mass at the origin and the heavier one at ``a``
    (``a = -s`` for q < 1, ``+s`` for q >= 1 where the roles are swapped); source positions
    are shifted by ``a m1`` from the centre-of-mass frame.
    """

    def __init__(self, s: np.ndarray, q: np.ndarray):
        swap = q >= 1.0
        self.q = np.where(swap, 1.0 / q, q)
        self.a = np.where(swap, s, -s)
        self.m1 = 1.0 / (1.0 + self.q)
        self.m2 = self.q * self.m1
        self.shift = self.a * self.m1

    def take(self, index) -> _Lens:
        other = object.__new__(_Lens)
        for name in ("q", "a", "m1", "m2", "shift"):
            setattr(other, name, getattr(self, name)[index])
        return other


def _coefficients(y: np.ndarray, a: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Monic polynomial coefficients ``c[k]`` (of ``z^k``, k = 0..4) for shifted source ``y``.

    VBMicrolensing's expressions (``NewImages``), divided by the leading coefficient.
    Returns an array of shape (5,) + y.shape.
    """
    yc = np.conj(y)
    a2 = a * a
    c10 = a * m2
    c9 = c10 * c10
    c12 = a - yc
    c13 = a + y
    c16 = a * y
    c17 = a * yc
    p5 = yc * c12
    out = np.empty((5,) + y.shape, dtype=np.complex128)
    out[0] = c9 * y
    out[1] = -c9 + c10 * (a + (2.0 * c17 - 2.0 - a2) * y)
    out[2] = c10 * (1.0 + c16 - 2.0 * yc * c13) - (c17 - 1.0) * (c16 * c12 - (a - y))
    out[3] = c10 * (a + 2.0 * yc) + (a2 * a + 2.0 * (1.0 + a2) * y - c17 * (c13 + y)) * yc - a * c13
    out[4] = -c10 - c12 * (yc * (c13 + a) - 1.0)
    out /= p5
    return out


def _eig_roots(c: np.ndarray) -> np.ndarray:
    """All 5 roots of monic polynomials with coefficients ``c`` (5, M): companion-matrix
    eigenvalues polished by one Newton step. Returns (5, M)."""
    m = c.shape[1]
    companion = np.zeros((m, 5, 5), dtype=np.complex128)
    companion[:, 1:, :-1] = np.eye(4)
    companion[:, :, -1] = -c.T
    with np.errstate(all="ignore"):
        z = np.linalg.eigvals(companion).T.copy()
        p = z + c[4]
        dp = np.ones_like(z)
        for k in (3, 2, 1, 0):
            dp = dp * z + p
            p = p * z + c[k]
        step = p / dp
    return np.where(np.isfinite(step), z - step, z)


class _Work:
    """Scratch buffers for ``_newton`` (allocation-free inner loop)."""

    def __init__(self, shape):
        self.p = np.empty(shape, dtype=np.complex128)
        self.dp = np.empty(shape, dtype=np.complex128)
        self.step = np.empty(shape, dtype=np.complex128)
        self.real = np.empty(shape)


def _newton(z: np.ndarray, c: np.ndarray, steps: int, work: _Work | None = None) -> np.ndarray:
    """``steps`` Newton iterations, in place, on all roots ``z`` (5, M) of monic polynomials
    ``c`` (5, M). Returns a boolean (M,): True where a point has not converged or its roots
    break Vieta's rule ``sum z = -c4`` (two roots collapsed onto one)."""
    work = work or _Work(z.shape)
    p, dp, step, real = work.p, work.dp, work.step, work.real
    for _ in range(steps):
        np.add(z, c[4], out=p)
        np.multiply(z, 2.0, out=dp)
        dp += c[4]
        p *= z
        p += c[3]
        for k in (2, 1, 0):
            dp *= z
            dp += p
            p *= z
            p += c[k]
        np.divide(p, dp, out=step)
        z -= step
    np.abs(z, out=real)
    real += 1.0
    scale = real.sum(axis=0)
    real *= 1e-9
    bad = (np.abs(step) > real).any(axis=0)
    bad |= ~(np.abs(z.sum(axis=0) + c[4]) <= 1e-7 * scale)  # also catches NaN
    return bad


def _continuation_roots(c: np.ndarray) -> tuple[np.ndarray, int]:
    """Roots (5, W, L) of monic polynomials ``c`` (5, W, L) that vary smoothly along the last axis.

    Epoch 0 of each row is solved by eigenvalues; each later epoch starts from a quadratic
    extrapolation of the three previous epochs' roots (fewer at the start of a row), then
    ``_NEWTON_STEPS`` Newton steps; rows that have not converged get as many again, and the
    rest are re-solved by eigenvalues. Returns the roots and the number of eigenvalue solves.
    """
    _, w, length = c.shape
    roots = np.empty((5, w, length), dtype=np.complex128)
    per_step = np.ascontiguousarray(np.moveaxis(c, 2, 0))  # (L, 5, W)
    z = _eig_roots(per_step[0])
    roots[:, :, 0] = z
    fallbacks = w
    z1, z2 = z.copy(), z.copy()  # roots one and two epochs back (for the predictor)
    work = _Work(z.shape)
    with np.errstate(all="ignore"):
        for j in range(1, length):
            cj = per_step[j]
            if j == 1:
                guess = z.copy()
            elif j == 2:
                guess = 2.0 * z - z1
            else:
                guess = z - z1
                guess *= 3.0
                guess += z2
            z2, z1, z = z1, z, guess
            bad = _newton(z, cj, _NEWTON_STEPS, work)
            if bad.any():
                rows = np.flatnonzero(bad)
                z_rows, c_rows = z[:, rows], cj[:, rows]
                still = _newton(z_rows, c_rows, _NEWTON_STEPS)
                z[:, rows] = z_rows
                rows = rows[still]
                if rows.size:
                    # eigenvalues come in arbitrary order: restart these rows' predictor history
                    z[:, rows] = _eig_roots(cj[:, rows])
                    z1[:, rows] = z[:, rows]
                    z2[:, rows] = z[:, rows]
                    fallbacks += rows.size
            roots[:, :, j] = z
    return roots, fallbacks


def _images(z: np.ndarray, y: np.ndarray, lens: _Lens, tests: bool = True) -> dict[str, np.ndarray]:
    """Point-source magnification and VBMicrolensing's finite-source indicators.

    ``z`` (5, M) roots, ``y`` (M,) shifted source, ``lens`` per-point constants (M,).
    Returns ``mag`` (sum of 1/|det J| over true images), ``corrquad`` (sum over images of the
    quadrupole coefficient; times ``6 rho^2`` it estimates the finite-source correction) and
    ``corrquad2`` (ghost-image indicator from the two false roots, 0 with five images),
    computed as ``VBMicrolensing::NewImages`` does for a point source (macros _Jacobians1,3,4).
    With ``tests=False`` only ``mag`` is computed (the others stay 0).
    """
    m = z.shape[1]
    out = {"mag": np.empty(m), "corrquad": np.zeros(m), "corrquad2": np.zeros(m)}
    for start in range(0, m, _IMAGE_BLOCK):  # blocks small enough for the cache
        part = slice(start, start + _IMAGE_BLOCK)
        _images_block(z[:, part], y[part], lens.a[part], lens.m1[part], lens.m2[part],
                      out["mag"][part], out["corrquad"][part], out["corrquad2"][part], tests)
    return out


def _images_block(z, y, a, m1, m2, mag, corrquad, corrquad2, tests) -> None:
    n = z.shape[1]
    cols = np.arange(n)
    with np.errstate(all="ignore"):
        w1 = 1.0 / (z - a)  # 1/(z - z_heavy)
        w2 = 1.0 / z  # 1/(z - z_light)
        lens_eq = y - z
        lens_eq += m1 * np.conj(w1)
        lens_eq += m2 * np.conj(w2)
        residual = np.abs(lens_eq)
        # VBMicrolensing: the two worst roots are false images unless all five solve the lens equation
        worst1 = residual.argmax(axis=0)
        ranked = residual.copy()
        ranked[worst1, cols] = -1.0
        worst2 = ranked.argmax(axis=0)
        second = ranked[worst2, cols]
        ranked[worst2, cols] = -1.0
        three = second * 1e-4 > ranked.max(axis=0) + 1e-12
        is_image = np.ones(z.shape, dtype=bool)
        rows3 = np.flatnonzero(three)
        is_image[worst1[rows3], rows3] = False
        is_image[worst2[rows3], rows3] = False

        w1s = w1 * w1
        w2s = w2 * w2
        j1 = m1 * w1s
        j1 += m2 * w2s
        det = 1.0 - (j1.real * j1.real + j1.imag * j1.imag)
        inv = np.abs(1.0 / det)
        inv[~is_image] = 0.0
        inv.sum(axis=0, out=mag)
        if not tests:
            return

        # quadrupole coefficient of each image (_Jacobians3)
        j2 = m1 * (w1s * w1)
        j2 += m2 * (w2s * w2)
        j2 *= -2.0
        j1c = np.conj(j1)
        j1c2 = j1c * j1c
        w1s *= w1s
        w2s *= w2s
        j3 = m1 * w1s
        j3 += m2 * w2s
        j3s = (j3 * j1c2).real * 6.0
        det2 = det * det
        ob2 = (j2.real * j2.real + j2.imag * j2.imag) * (6.0 - 6.0 * det + det2)
        j2s = j2 * j2
        j2s *= j1c2
        j2s *= j1c
        cq = ob2 - 6.0 * j2s.real - 2.0 * j3s * det
        np.abs(cq, out=cq)
        cq += 3.0 * np.abs(j2s.imag)
        cq *= 0.5
        cq /= np.abs(det * det2 * det2)
        cq[~is_image] = 0.0
        cq.sum(axis=0, out=corrquad)

        # ghost-image test on the two false roots (_Jacobians4), three-image points only
        if rows3.size:
            ghost = np.empty((2, rows3.size))
            yc = np.conj(y[rows3])
            a3, m13, m23 = a[rows3], m1[rows3], m2[rows3]
            for k, worst in enumerate((worst1, worst2)):
                idx = (worst[rows3], rows3)
                zaltc = yc + m13 * w1[idx] + m23 * w2[idx]
                zab = zaltc - a3
                jalt = np.conj(m13 / (zab * zab) + m23 / (zaltc * zaltc))
                j1cw = j1c[idx]
                jj = 1.0 - j1cw * jalt
                g = j2[idx] * j1cw * jj
                g = (g - np.conj(g) * jalt) / (jj * jj * det[idx])
                ghost[k] = np.where(det[idx] < -10.0, -1.0, g.real * g.real + g.imag * g.imag)
            corrquad2[rows3] = np.where((ghost < 0).any(axis=0), 0.0, ghost.max(axis=0))


def _safedist(y1: np.ndarray, y2: np.ndarray, s: np.ndarray, lens: _Lens) -> np.ndarray:
    """VBMicrolensing's squared distance from the planetary caustic's region (q < 0.01), or
    from the circle that holds all caustics (q >= 0.01); 10 inside that circle."""
    sd_planet = (y1 + (lens.a - 1.0 / lens.a) * lens.m1) ** 2 + y2 * y2 - 4.0 * np.sqrt(lens.q) / (lens.a * lens.a)
    r_inf = s + 1.0 / s + 2.0
    d = np.sqrt(y1 * y1 + y2 * y2)
    sd_far = np.where(d > r_inf, (d - r_inf) ** 2, 10.0)
    return np.where(lens.q < 0.01, sd_planet, sd_far)


def _needs_finite_source(images, safedist, rho, tol, safety=_SAFETY) -> np.ndarray:
    """VBMicrolensing's BinaryMag2 test, tightened by ``safety`` (< 1 sends borderline points on)."""
    rho2 = rho * rho
    quadrupole = images["corrquad"] * 6.0 * (rho2 + 1e-4 * tol)
    ghost = images["corrquad2"] * 256.0 * (rho2 + 1e-8)
    point_ok = (quadrupole < safety * tol) & (ghost < safety) & (safedist * safety > 4.0 * rho2)
    return ~point_ok


def _solve_points(y1: np.ndarray, y2: np.ndarray, s: np.ndarray, q: np.ndarray, *, rows: int | None,
                  rho: np.ndarray | None = None, tol: float = DEFAULT_TOL) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Point-source magnification of flat points, and (with ``rho``) the finite-source flags.

    With ``rows`` (= W) the points are W rows of consecutive trajectory epochs (row-major)
    and are solved by continuation; otherwise each point is solved by eigenvalues.
    Returns ``(mag, needs_finite_source or None, eigenvalue solves)``.
    """
    lens = _Lens(s, q)
    y = (y1 + lens.shift) + 1j * y2
    # a source exactly on a lens makes the polynomial degenerate: nudge it (by 1e-12)
    y = np.where((y == 0) | (y == lens.a), y + 1e-12, y)
    c = _coefficients(y, lens.a, lens.m2)
    if rows is None:
        z = _eig_roots(c)
        solves = y.size
    else:
        z, solves = _continuation_roots(c.reshape(5, rows, -1))
        z = z.reshape(5, -1)
    if rho is None:
        return _images(z, y, lens, tests=False)["mag"], None, solves

    # Far outside the caustic region (beyond s + 1/s + 2 from the centre of mass, plus a margin)
    # the quadrupole term is < 1e-6 and no ghost images exist: VBMicrolensing's test passes
    # there, so only the magnification is computed.
    safedist = _safedist(y1, y2, s, lens)
    r_inf = s + 1.0 / s + 2.0 + 1.0
    quiet = (y1 * y1 + y2 * y2 > r_inf * r_inf) & (safedist * _SAFETY > 4.0 * rho * rho)
    mag = np.empty(y.size)
    need = np.zeros(y.size, dtype=bool)
    far = np.flatnonzero(quiet)
    near = np.flatnonzero(~quiet)
    if far.size:
        mag[far] = _images(z[:, far], y[far], lens.take(far), tests=False)["mag"]
    if near.size:
        images = _images(z[:, near], y[near], lens.take(near), tests=True)
        mag[near] = images["mag"]
        need[near] = _needs_finite_source(images, safedist[near], rho[near], tol)
    return mag, need, solves


def binary_point_magnification(s, q, y1, y2) -> np.ndarray:
    """Point-source binary-lens magnification (VBMicrolensing ``BinaryMag0``), vectorised.

    Parameters
    ----------
    s, q : float or array_like
        Separation (Einstein units of the total mass, > 0) and mass ratio ``m2/m1`` (> 0).
        A 1-D ``s`` or ``q`` of length N with 2-D positions ``(N, T)`` applies per row.
    y1, y2 : array_like
        Source positions (centre-of-mass frame, see the module docstring), any shape.

    Returns
    -------
    ndarray
        Magnification, shape of the broadcast inputs. When the positions are 2-D, each row is
        treated as a trajectory (epochs in order) and solved by fast continuation; every point
        is checked and re-solved by eigenvalues if continuation fails, so any input is correct.
    """
    y1 = _as_float("y1", y1, ndim_max=8)
    y2 = _as_float("y2", y2, ndim_max=8)
    s = _positive("s", _as_float("s", s, ndim_max=8))
    q = _positive("q", _as_float("q", q, ndim_max=8))
    ndim = max(y1.ndim, y2.ndim)
    if ndim == 2:
        s = s[:, None] if s.ndim == 1 else s
        q = q[:, None] if q.ndim == 1 else q
    try:
        s, q, y1, y2 = np.broadcast_arrays(s, q, y1, y2)
    except ValueError:
        raise ValueError(f"s {s.shape}, q {q.shape}, y1 {y1.shape} and y2 {y2.shape} do not broadcast") from None
    shape = y1.shape
    if y1.size == 0:
        return np.zeros(shape)
    flat = [np.ascontiguousarray(x, dtype=np.float64).ravel() for x in (s, q, y1, y2)]
    trajectories = ndim == 2 and shape[1] >= 8
    mag = np.empty(y1.size)
    step = _BATCH_POINTS if not trajectories else max(1, _BATCH_POINTS // shape[1]) * shape[1]
    for start in range(0, y1.size, step):
        part = slice(start, start + step)
        sv, qv, y1v, y2v = (x[part] for x in flat)
        rows = sv.size // shape[1] if trajectories else None
        mag[part] = _solve_points(y1v, y2v, sv, qv, rows=rows)[0]
    return mag.reshape(shape)


# --------------------------------------------------------------------------------------------
# binary lens, finite source
# --------------------------------------------------------------------------------------------


def _vbm(tol: float):
    """The process's VBMicrolensing instance (created on first use), with accuracy ``tol``."""
    global _vbm_instance
    if _vbm_instance is None:
        import VBMicrolensing

        _vbm_instance = VBMicrolensing.VBMicrolensing()
    _vbm_instance.Tol = tol
    return _vbm_instance


def _segments(n_times: int) -> tuple[int, np.ndarray]:
    """Cut ``n_times`` epochs into equal-length segments (the last one may overlap)."""
    count = max(1, math.ceil(n_times / _SEGMENT))
    length = math.ceil(n_times / count)
    starts = np.minimum(np.arange(count) * length, n_times - length)
    return length, starts


def binary_magnification(times, t0, u0, tE, s, q, alpha, rho, *, tol: float = DEFAULT_TOL,
                         method: str = DEFAULT_METHOD, return_info: bool = False):
    """Binary-lens light curves with a uniform finite source, shape (N, T).

    Equal to ``VBMicrolensing.BinaryLightCurve([log s, log q, u0, alpha, log rho, log tE, t0], times)``
    (with ``Tol = tol``): the point-source value where VBMicrolensing's ``BinaryMag2`` test says
    the finite source does not matter, and VBMicrolensing's contour integration elsewhere.

    Parameters
    ----------
    times : array_like, shape (T,)
        Epochs (days).
    t0, u0, tE, s, q, alpha, rho : float or array_like, shape (N,)
        Time of closest approach to the centre of mass (days), impact parameter (Einstein
        units), Einstein time (days, > 0), separation (> 0), mass ratio ``m2/m1`` (> 0),
        trajectory angle (radians, see ``trajectory``), source radius (Einstein units, > 0).
    tol : float
        Absolute accuracy goal of the finite-source magnifications (VBMicrolensing's ``Tol``).
    method : {"vbm", "numpy"}
        ``"vbm"``: one ``VBMicrolensing.BinaryLightCurve`` call per curve (the reference).
        ``"numpy"``: the vectorised point-source solver of this module for all points, and
        ``BinaryLightCurve`` only for the points that fail the finite-source test (see the
        module docstring); it agrees with ``"vbm"`` to ~1e-10 relative. Which one is faster
        depends on the machine (``benchmarks/microlensing_magnification.py`` measures both).
    return_info : bool
        Also return a dict with ``finite_source`` (bool (N, T): the points computed by
        VBMicrolensing's contour integration; ``None`` for ``"vbm"``) and ``eigen_solves``
        (points solved by companion-matrix eigenvalues: segment starts and fallbacks).

    Returns
    -------
    ndarray, shape (N, T)  (and the info dict if ``return_info``)
    """
    times = _times(times)
    t0, u0, tE, s, q, alpha, rho = _events(t0=t0, u0=u0, tE=tE, s=s, q=q, alpha=alpha, rho=rho)
    for name, value in (("tE", tE), ("s", s), ("q", q), ("rho", rho)):
        _positive(name, value)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    if method not in ("vbm", "numpy"):
        raise ValueError(f"method must be 'vbm' or 'numpy', got {method!r}")
    if method == "vbm":
        vbm = _vbm(tol)
        mag = np.empty((t0.size, times.size))
        grid = times.tolist()
        for i in range(t0.size):
            params = [math.log(s[i]), math.log(q[i]), u0[i], alpha[i], math.log(rho[i]), math.log(tE[i]), t0[i]]
            mag[i] = vbm.BinaryLightCurve(params, grid)[0]
        return (mag, {"finite_source": None, "eigen_solves": 0}) if return_info else mag

    n, n_times = t0.size, times.size
    mag = np.empty((n, n_times))
    finite = np.zeros((n, n_times), dtype=bool)
    fallbacks = 0
    if n_times == 0 or n == 0:
        return (mag, {"finite_source": finite, "eigen_solves": 0}) if return_info else mag

    length, starts = _segments(n_times)
    per_event = starts.size
    epochs = starts[:, None] + np.arange(length)  # (K, L)
    events_per_batch = max(1, _BATCH_POINTS // (per_event * length))
    for first in range(0, n, events_per_batch):
        ev = np.arange(first, min(n, first + events_per_batch))
        rows = np.repeat(ev, per_event)  # one row per segment
        idx = np.tile(epochs, (ev.size, 1))  # (W, L)
        tau = (times[idx] - t0[rows, None]) / tE[rows, None]
        sin_a, cos_a = np.sin(alpha[rows])[:, None], np.cos(alpha[rows])[:, None]
        y1 = u0[rows, None] * sin_a - tau * cos_a
        y2 = -u0[rows, None] * cos_a - tau * sin_a
        flat_rows = np.repeat(rows, length)
        values, need, solves = _solve_points(y1.ravel(), y2.ravel(), s[flat_rows], q[flat_rows], rows=rows.size,
                                             rho=rho[flat_rows], tol=tol)
        fallbacks += solves
        mag[flat_rows, idx.ravel()] = values
        finite[flat_rows, idx.ravel()] = need

    hits = np.flatnonzero(finite.any(axis=1))
    if hits.size:
        vbm = _vbm(tol)
        for i in hits:
            cols = np.flatnonzero(finite[i])
            params = [math.log(s[i]), math.log(q[i]), u0[i], alpha[i], math.log(rho[i]), math.log(tE[i]), t0[i]]
            mag[i, cols] = vbm.BinaryLightCurve(params, times[cols].tolist())[0]
    log.debug("binary_magnification: %d curves, %d finite-source points, %d eigenvalue fallbacks",
              n, int(finite.sum()), fallbacks)
    if return_info:
        return mag, {"finite_source": finite, "eigen_solves": fallbacks}
    return mag
