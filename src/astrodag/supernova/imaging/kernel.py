"""Subtraction with a fitted, spatially varying convolution kernel (Alard & Lupton 1998; Alard 2000).

The sharper image X is convolved with a kernel K(x) fitted by weighted least squares so that
it matches the broader image Y (ApJ 503, 325; A&AS 144, 363), as HOTPANTS (Becker 2015,
ascl:1504.004) and the difference-imaging pipelines of the bulge microlensing surveys do::

    Y(x) = sum_s p_s(x) (K_s (x) X)(x) + B(x),      K_s = sum_i a_is B_i

with basis kernels ``B_i`` = Gaussians times polynomials (HOTPANTS' defaults: three Gaussians
of sigma 0.7, 1.5, 3.0 px with polynomial degrees 6, 4, 2, chosen for a FWHM near 4 px; here
their sigmas scale with the broader FWHM, and a fourth, wide one carries the PSF wings),
monomials ``p_s`` of the image position (order
``kernel_spatial_order``) and a differential background polynomial ``B``. Following Alard
(2000) only the first basis has a non-zero sum, so the kernel sum, the flux ratio, is one
coefficient (constant over the image unless ``kernel_sum_varies``).

The fit uses stamps around stars (bright, unmasked, spread over the image), weighted by the
per-pixel variance ``V_Y + sum(K^2) V_X`` (``K`` approximated by the Gaussian that matches the
two FWHMs). Stamps are clipped in two steps, as HOTPANTS does: first those whose own kernel
(fitted on the stamp alone) has an outlying sum, then, iterating the global fit, those whose
reduced chi-square is an outlier (variable stars, transients, blends). Clipping single pixels
by their residual was tried and rejected: the first fit's residuals peak at the star cores,
and dropping them biased the kernel sum by 30 % in a 144^2 test pair.
The flux ratio's error is a delete-a-group jackknife over ten groups of stamps (independent
stars, not the formal least-squares error of correlated pixels). It is statistical only: PSF
wings beyond the kernel half-width cannot be matched, which biases the sum (measured: 0.25 %
low for a Moffat beta 3 science PSF at 3.5 FWHM, about seven jackknife errors).

Applying the kernel takes one convolution per spatial term, not per basis: the image is
convolved with each ``K_s`` and the results are combined with the maps ``p_s(x)``. The image is
processed whole, not in tiles (one polynomial kernel for the whole image): its memory grows with
the image, by roughly ten image-sized single-precision planes (an estimate, not measured).

Usually X is the reference and ``D = N - K (x) R - B``. When the reference is the broader image
the science image is convolved instead, ``D = (K (x) N + B - R) / sum(K)``, so that D is in
science units either way. The products match ZOGY's for detection: the score ``S = D``
cross-correlated with D's PSF ``P_D`` (the science PSF, or ``K (x) P_n / sum(K)``), its per-pixel
variance (``V_Y (x) P_D^2 + V_X (x) (P_D (x) K)^2``, the kernel's spatial variation followed
by a polynomial factor), ``S_corr = S / sqrt(V(S))``, ``F_D = 1`` and ``F_S = sum(P_D^2)``.
Pixels within the kernel half-width of a bad pixel of X or of the image edge are masked in the output.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from astropy.stats import sigma_clip
from scipy import linalg, ndimage

from astrodag.supernova.imaging.subtract import ZogyResult

log = logging.getLogger(__name__)

# HOTPANTS' default basis (-ng 3 6 0.70 4 1.50 2 3.00) for its typical FWHM of about 4 px: the
# sigmas in units of that FWHM, and the polynomial degree of each Gaussian; plus a fourth, wide
# Gaussian (sigma 1.5 FWHM, degree 0) for the wings: matching a Moffat beta 4.5 reference to a
# beta 3 science image, the three alone leave the kernel sum 0.8 % low (measured in the tests'
# crowded field at a half-width of 2.5 FWHM; 0.25 % low with the fourth at 3.5 FWHM).
GAUSS_SIGMAS_FWHM = (0.7 / 4.0, 1.5 / 4.0, 3.0 / 4.0, 1.5)
GAUSS_DEGREES = (6, 4, 2, 0)
JACKKNIFE_GROUPS = 10
CLIP_SIGMA = 3.0


@dataclass
class KernelResult(ZogyResult):
    """Products of :func:`kernel_difference` on the input grid (float32 images): ZOGY's fields, so detection reads
    them alike (D in science units here), and the kernel fit's own.

    Attributes
    ----------
    difference : numpy.ndarray
        D, in science-image units (0 on ``mask``).
    difference_variance : numpy.ndarray
        Its per-pixel variance, ``V_N + K^2 (x) V_R`` (or the science-convolved analogue).
    score : numpy.ndarray
        S, D cross-correlated with ``psf`` (a point source of flux f has S = f flux_scale).
    significance : numpy.ndarray
        S_corr = S / score_noise (sigma).
    score_noise : numpy.ndarray
        sqrt(V(S)).
    psf : numpy.ndarray
        P_D, the PSF of D (odd, centred, unit sum).
    flux_zeropoint : float
        F_D = 1 (D is in science units).
    flux_scale : float
        F_S = sum(P_D^2).
    mask : numpy.ndarray
        Pixels where D is not valid: bad pixels of the target image, those of the convolved
        image and the image border grown by the kernel half-width.
    ratio, ratio_error : float
        Science / reference flux ratio (kernel sum at the image centre) and its jackknife error.
    ratio_range : (float, float)
        Smallest and largest ratio over the image (equal unless ``sum_varies``).
    convolved : str
        ``reference`` or ``science``: the image that was convolved (the sharper one).
    kernel : numpy.ndarray
        The kernel at the image centre (convolving the sharper image, unit of its sum: the ratio
        or its inverse).
    n_stamps, n_rejected : int
        Stamps fitted and stamps clipped as outliers.
    chi2 : float
        Median reduced chi-square of the kept stamps.
    """

    difference_variance: np.ndarray
    mask: np.ndarray
    ratio: float
    ratio_error: float
    ratio_range: tuple[float, float]
    convolved: str
    kernel: np.ndarray
    n_stamps: int
    n_rejected: int
    chi2: float


def _basis_parts(half_width: int, fwhm: float) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The separable Gaussian-times-monomial kernels as ``(row factor, column factor)`` pairs, and the
    matrix ``T`` whose rows combine them into the basis of :func:`kernel_basis`."""
    u = np.arange(-half_width, half_width + 1) / max(half_width, 1)
    pixels = np.arange(-half_width, half_width + 1)
    factors, even = [], []
    for sigma_fwhm, degree in zip(GAUSS_SIGMAS_FWHM, GAUSS_DEGREES):
        gauss = np.exp(-0.5 * (pixels / max(sigma_fwhm * fwhm, 0.3)) ** 2)
        for i in range(degree + 1):
            for j in range(degree + 1 - i):
                factors.append((gauss * u ** j, gauss * u ** i))
                even.append(i % 2 == 0 and j % 2 == 0)
    raw = np.array([np.outer(fy, fx).ravel() for fy, fx in factors])
    transform = np.eye(len(factors))
    transform[0] /= raw[0].sum()
    for k in range(1, len(factors)):
        if even[k]:
            transform[k] = transform[k] / raw[k].sum() - transform[0]
        transform[k] /= math.sqrt(np.sum((transform[k] @ raw) ** 2))
    return factors, transform


def kernel_basis(half_width: int, fwhm: float) -> np.ndarray:
    """Alard-Lupton basis kernels ``(n, 2 h + 1, 2 h + 1)``: the first has unit sum, the others zero sum.

    Gaussians (sigmas :data:`GAUSS_SIGMAS_FWHM` times ``fwhm``, at least 0.3 px) times the
    monomials ``u^i v^j`` (``i + j`` up to :data:`GAUSS_DEGREES`); even ones get the first basis
    subtracted (Alard 2000), and all are scaled to unit norm for the conditioning of the fit.
    """
    factors, transform = _basis_parts(half_width, fwhm)
    raw = np.array([np.outer(fy, fx) for fy, fx in factors])
    return np.einsum("ij,jyx->iyx", transform, raw)


def monomials(order: int) -> list[tuple[int, int]]:
    """Exponents ``(a, b)`` of ``x^a y^b`` with ``a + b <= order``, the constant first."""
    return [(a, total - a) for total in range(order + 1) for a in range(total, -1, -1)]


def _coordinates(x, y, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions scaled to [-1, 1] over the image."""
    ny, nx = shape
    return (np.asarray(x, float) - (nx - 1) / 2) / max((nx - 1) / 2, 1), \
        (np.asarray(y, float) - (ny - 1) / 2) / max((ny - 1) / 2, 1)


def poly_map(coefficients: dict[tuple[int, int], float], shape: tuple[int, int]) -> np.ndarray:
    """``sum c x^a y^b`` over the image (scaled coordinates) as one matrix product (float32)."""
    xs, ys = _coordinates(np.arange(shape[1]), np.arange(shape[0]), shape)
    top = max(a for a, _ in coefficients)
    columns = np.zeros((shape[0], top + 1))
    for (a, b), c in coefficients.items():
        columns[:, a] += c * ys ** b
    return columns.astype(np.float32) @ np.vander(xs, top + 1, increasing=True).T.astype(np.float32)


def _quadratic_map(gram: np.ndarray, terms: list[tuple[int, int]], shape) -> np.ndarray:
    """``p(x)^T G p(x)`` over the image, ``p`` the monomials ``terms``."""
    coefficients: dict[tuple[int, int], float] = {}
    for s, (a, b) in enumerate(terms):
        for t, (c, d) in enumerate(terms):
            key = (a + c, b + d)
            coefficients[key] = coefficients.get(key, 0.0) + float(gram[s, t])
    return poly_map(coefficients, shape)


def select_stamps(positions: np.ndarray, bad: np.ndarray, half: int, count: int) -> np.ndarray:
    """Up to ``count`` stamp centres ``(x, y)`` (integers), the brightest first in each cell of a grid.

    ``positions`` are star centres, brightest first. A stamp's region (half-size ``half``) must lie
    inside the image with no ``bad`` pixel, and two stamps' centres are at least ``half`` apart.
    Cells (about four stamps each) are visited in turn so that the stamps cover the image.
    """
    ny, nx = bad.shape
    centres = np.rint(np.asarray(positions, float).reshape(-1, 2)).astype(int)
    inside = ((centres[:, 0] >= half) & (centres[:, 0] < nx - half)
              & (centres[:, 1] >= half) & (centres[:, 1] < ny - half))
    centres = centres[inside]
    if len(centres) == 0:
        return np.zeros((0, 2), int)
    # A region is clean when the box sum of the bad pixels around its centre is zero.
    counts = ndimage.uniform_filter(bad.astype(np.float32), size=2 * half + 1, mode="constant")
    centres = centres[counts[centres[:, 1], centres[:, 0]] < 0.5 / (2 * half + 1) ** 2]
    cells = max(1, int(math.sqrt(count / 4)))
    cell = (centres[:, 1] * cells // ny) * cells + centres[:, 0] * cells // nx
    queues = [list(centres[cell == c]) for c in range(cells * cells)]
    chosen: list[np.ndarray] = []
    taken = np.zeros(bad.shape, bool)
    while len(chosen) < count and any(queues):
        for queue in queues:
            while queue:
                x, y = queue.pop(0)
                if not taken[y, x]:
                    chosen.append(np.array([x, y]))
                    taken[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = True
                    break
            if len(chosen) == count:
                break
    return np.asarray(chosen, int).reshape(-1, 2)


def cutouts(image: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """Square cut-outs ``(n, 2 half + 1, 2 half + 1)`` of ``image`` centred on integer ``(x, y)`` centres."""
    offsets = np.arange(-half, half + 1)
    rows = centres[:, 1, None, None] + offsets[None, :, None]
    cols = centres[:, 0, None, None] + offsets[None, None, :]
    return image[rows, cols]


def _valid_matrix(factor: np.ndarray, length: int) -> np.ndarray:
    """The matrix of the 'valid' 1-D convolution of a length-``length`` vector with ``factor``."""
    width = len(factor)
    matrix = np.zeros((length - width + 1, length))
    rows = np.arange(length - width + 1)
    for s in range(width):
        matrix[rows, rows + s] = factor[width - 1 - s]
    return matrix


def _convolve_stamps(regions: np.ndarray, half_width: int, fwhm: float) -> np.ndarray:
    """Each region convolved with each basis of :func:`kernel_basis`, 'valid' part: ``(n, m * m, n_basis)``.

    The raw kernels are separable, so each is two small matrix products (in single precision, that
    of the images); the basis follows by ``T``.
    """
    factors, transform = _basis_parts(half_width, fwhm)
    n, length = len(regions), regions.shape[-1]
    rows = regions.reshape(n * length, length).astype(np.float32)
    done: dict[bytes, np.ndarray] = {}
    out = []
    for fy, fx in factors:
        key = fx.tobytes()
        if key not in done:  # along x, as one product; then transposed (n, x, y) for the product along y
            along_x = (rows @ _valid_matrix(fx, length).T.astype(np.float32)).reshape(n, length, -1)
            done[key] = np.ascontiguousarray(along_x.transpose(0, 2, 1)).reshape(-1, length)
        conv = (done[key] @ _valid_matrix(fy, length).T.astype(np.float32)).reshape(n, -1, length - len(fy) + 1)
        out.append(conv.transpose(0, 2, 1).reshape(n, -1))
    return np.stack(out, axis=2).astype(np.float64) @ transform.T


@dataclass
class _Fit:
    coefficients: np.ndarray  # (n_basis, n_terms) kernel coefficients a_is
    background: np.ndarray  # (n_background,) background coefficients
    kept: np.ndarray  # stamps kept
    chi2: np.ndarray  # reduced chi-square per stamp
    jackknife_sums: np.ndarray  # kernel sum at the centre without each group


def _consistent_stamps(normal_local: np.ndarray, rhs_local: np.ndarray) -> np.ndarray:
    """Stamps whose own kernel has a sum consistent with the others' (HOTPANTS' first pass).

    Each stamp's kernel and background are fitted alone; a transient, a variable or a blend in a
    stamp shows as an outlying kernel sum (3 sigma, median and MAD), which would drag the first
    global fit so far that its residuals could no longer tell the good stamps from the bad.
    """
    size = normal_local.shape[1]
    ridge = 1e-9 * np.trace(normal_local, axis1=1, axis2=2)[:, None, None] * np.eye(size)
    sums = np.linalg.solve(normal_local + ridge, rhs_local[..., None])[:, 0, 0]
    kept = ~sigma_clip(sums, sigma=CLIP_SIGMA, maxiters=5, cenfunc="median", stdfunc="mad_std").mask
    return kept if kept.sum() >= 3 else np.ones(len(sums), bool)


def _fit(target: np.ndarray, design: np.ndarray, var_y: np.ndarray, var_x: np.ndarray,
         p_kernel: np.ndarray, p_background: np.ndarray, free: np.ndarray, power: float) -> _Fit:
    """Clipped weighted least squares over the stamps (see the module notes).

    ``target`` (n, m) and ``var_y`` the target image's pixels and variance per stamp,
    ``design`` (n, m, n_basis) the convolved bases, ``var_x`` the convolved image's variance
    (n, m), ``p_kernel`` and ``p_background`` the spatial monomials at the stamp centres, ``free``
    which of the ``n_basis * n_terms + n_background`` parameters are fitted, ``power`` an estimate
    of sum(K^2), by which the convolved image's variance enters (it only sets the weights, which
    need not be exact for an unbiased fit, so they are made once). The kernel sum at the centre is
    the first parameter, since only the first basis has a non-zero sum.
    """
    n, m, n_basis = design.shape
    n_terms, n_bg = p_kernel.shape[1], p_background.shape[1]
    local = np.concatenate([design, np.ones((n, m, 1))], axis=2)  # bases and a constant
    groups = np.arange(n) % JACKKNIFE_GROUPS
    weights = 1.0 / (var_y + power * var_x)
    weighted = local * weights[..., None]
    normal_local = weighted.transpose(0, 2, 1) @ local
    rhs_local = np.einsum("kpi,kp->ki", weighted, target)
    del weighted
    kept = _consistent_stamps(normal_local, rhs_local)
    for iteration in range(10):
        normals, rhss = [], []
        for g in range(JACKKNIFE_GROUPS):
            use = kept & (groups == g)
            lk, rk, pk, qk = normal_local[use], rhs_local[use], p_kernel[use], p_background[use]
            outer = (pk[:, :, None] * pk[:, None, :]).reshape(len(pk), n_terms * n_terms)
            kk = lk[:, :n_basis, :n_basis].reshape(len(lk), n_basis * n_basis).T @ outer
            kk = kk.reshape(n_basis, n_basis, n_terms, n_terms).transpose(0, 2, 1, 3).reshape(
                n_basis * n_terms, n_basis * n_terms)
            kb = np.einsum("ki,ks,kt->ist", lk[:, :n_basis, n_basis], pk, qk).reshape(n_basis * n_terms, n_bg)
            bb = np.einsum("k,ks,kt->st", lk[:, n_basis, n_basis], qk, qk)
            normals.append(np.block([[kk, kb], [kb.T, bb]]))
            rhss.append(np.concatenate([np.einsum("ki,ks->is", rk[:, :n_basis], pk).ravel(),
                                        np.einsum("k,ks->s", rk[:, n_basis], qk)]))
        normal, rhs = sum(normals), sum(rhss)

        def solve(matrix, vector):
            full = np.zeros(len(free))
            matrix, vector = matrix[np.ix_(free, free)], vector[free]
            try:
                full[free] = linalg.cho_solve(linalg.cho_factor(matrix), vector)
            except linalg.LinAlgError:
                # Degenerate stamps (too few, or too alike for the spatial terms): the minimum-norm solution.
                log.warning("kernel fit: singular normal equations, solved by least squares")
                full[free] = linalg.lstsq(matrix, vector)[0]
            return full

        theta = solve(normal, rhs)
        coefficients = theta[:n_basis * n_terms].reshape(n_basis, n_terms)
        background = theta[n_basis * n_terms:]
        per_stamp = np.concatenate([coefficients @ p_kernel.T, (background @ p_background.T)[None]], axis=0)
        residual = target - np.einsum("kpi,ik->kp", local, per_stamp)
        chi2 = np.sum(residual ** 2 * weights, axis=1) / m
        clipped = sigma_clip(np.log(chi2[kept]), sigma_lower=np.inf, sigma_upper=CLIP_SIGMA, maxiters=1,
                             cenfunc="median", stdfunc="mad_std").mask
        if iteration == 9 or not clipped.any():
            break
        now = kept.copy()
        now[np.flatnonzero(kept)[clipped]] = False
        kept = now
    sums = np.array([solve(normal - normals[g], rhs - rhss[g])[0] for g in range(JACKKNIFE_GROUPS)
                     if (kept & (groups == g)).any()])
    return _Fit(coefficients, background, kept, chi2, sums)


def _fft_shape(shape: tuple[int, int], pad: int) -> tuple[int, int]:
    return sfft.next_fast_len(shape[0] + pad, real=True), sfft.next_fast_len(shape[1] + pad, real=True)


def kernel_difference(new: np.ndarray, ref: np.ndarray, psf_new: np.ndarray, fwhm_new: float, fwhm_ref: float,
                      stars: np.ndarray, var_new: np.ndarray, var_ref: np.ndarray, *,
                      bad_new: np.ndarray | None = None, bad_ref: np.ndarray | None = None, spatial_order: int = 2,
                      half_width_fwhm: float = 3.5, background_order: int = 1, stamps: int = 250,
                      sum_varies: bool = False, workers: int = 1) -> KernelResult:
    """Subtract ``ref`` from ``new`` with a fitted, spatially varying kernel (see the module notes).

    Parameters
    ----------
    new, ref : numpy.ndarray
        Science and reference on the same grid, background-subtracted (float32 is kept).
    psf_new : numpy.ndarray
        Science PSF stamp (odd, centred, unit sum): the PSF of D when the reference is convolved.
    fwhm_new, fwhm_ref : float
        FWHMs (pixels): the sharper image is convolved; the broader sets the kernel's size.
    stars : numpy.ndarray
        ``(n, 2)`` star positions ``(x, y)``, brightest first: the candidate stamp centres.
    var_new, var_ref : numpy.ndarray
        Per-pixel variance maps of the two images, each in its own units.
    bad_new, bad_ref : numpy.ndarray, optional
        Bad pixels of each (never used in the fit; those of the convolved image are grown).
    spatial_order, half_width_fwhm, background_order, stamps, sum_varies, workers
        ``SubtractSettings``' ``kernel_spatial_order``, ``kernel_half_width_fwhm``,
        ``background_order``, ``kernel_stamps``, ``kernel_sum_varies`` and ``workers``.

    Returns
    -------
    KernelResult

    Raises
    ------
    ValueError
        If fewer than 3 usable stamps are found.
    """
    shape = new.shape
    bad_new = np.zeros(shape, bool) if bad_new is None else bad_new
    bad_ref = np.zeros(shape, bool) if bad_ref is None else bad_ref
    convolve_ref = fwhm_ref <= fwhm_new
    x_img, y_img = (ref, new) if convolve_ref else (new, ref)
    var_x, var_y = (var_ref, var_new) if convolve_ref else (var_new, var_ref)
    bad_x, bad_y = (bad_ref, bad_new) if convolve_ref else (bad_new, bad_ref)
    if not convolve_ref:
        log.info("reference broader than the science image (FWHM %.2f > %.2f px): convolving the science image",
                 fwhm_ref, fwhm_new)
    broad = max(fwhm_new, fwhm_ref)
    half = max(3, int(math.ceil(half_width_fwhm * broad)))
    bases = kernel_basis(half, broad)
    n_basis = len(bases)

    centres = select_stamps(stars, bad_x | bad_y, 2 * half, stamps)
    terms = monomials(spatial_order)
    if len(centres) < 3 * len(terms) and spatial_order > 0:
        log.warning("%d kernel stamps: too few for a spatial order %d, the kernel is constant", len(centres),
                    spatial_order)
        terms = monomials(0)
    if len(centres) < 3:
        raise ValueError(f"{len(centres)} usable kernel stamps (need 3): too few unmasked stars")
    bg_terms = monomials(background_order)
    regions = cutouts(x_img, centres, 2 * half)
    design = _convolve_stamps(regions, half, broad)
    target, stamp_var_y, stamp_var_x = (cutouts(image, centres, half).reshape(len(centres), -1).astype(np.float64)
                                        for image in (y_img, var_y, var_x))
    cx, cy = _coordinates(centres[:, 0], centres[:, 1], shape)
    p_kernel = np.stack([cx ** a * cy ** b for a, b in terms], axis=1)
    p_background = np.stack([cx ** a * cy ** b for a, b in bg_terms], axis=1)
    free = np.ones(n_basis * len(terms) + len(bg_terms), bool)
    if not sum_varies:
        free[1:len(terms)] = False  # the sum-carrying basis has no spatial terms
    # sum(K^2) of the Gaussian that matches the two FWHMs, 1 / (4 pi sigma^2), for the weights.
    sigma_match = math.sqrt(max(abs(fwhm_new ** 2 - fwhm_ref ** 2), 1.0)) / (2 * math.sqrt(2 * math.log(2)))
    fit = _fit(target, design, stamp_var_y, stamp_var_x, p_kernel, p_background, free,
               1 / (4 * math.pi * sigma_match ** 2))

    kernels = np.einsum("is,iyx->syx", fit.coefficients, bases)  # one kernel per spatial term
    sums = kernels.sum(axis=(1, 2))
    sum_map = {term: float(total) for term, total in zip(terms, sums)}
    corners = poly_map(sum_map, (9, 9)) if spatial_order else np.full((1, 1), sums[0])
    centre_sum = float(sums[0])
    jack = fit.jackknife_sums
    sum_error = float(math.sqrt((len(jack) - 1) / len(jack) * np.sum((jack - jack.mean()) ** 2))) \
        if len(jack) > 1 else float("nan")
    if convolve_ref:
        ratio, ratio_error, ratio_range = centre_sum, sum_error, (float(corners.min()), float(corners.max()))
    else:
        ratio, ratio_error = 1.0 / centre_sum, sum_error / centre_sum ** 2
        ratio_range = (float(1.0 / corners.max()), float(1.0 / corners.min()))

    # Apply: one convolution per spatial term, combined with the monomial maps.
    real = np.float32
    fshape = _fft_shape(shape, 2 * half)
    crop = (slice(half, half + shape[0]), slice(half, half + shape[1]))
    x_hat = sfft.rfft2(np.where(bad_x, real(0), x_img), s=fshape, workers=workers)
    xs, ys = (c.astype(real) for c in _coordinates(np.arange(shape[1]), np.arange(shape[0]), shape))
    model = poly_map({term: float(c) for term, c in zip(bg_terms, fit.background)}, shape)
    for term, kernel in zip(terms, kernels):
        k_hat = sfft.rfft2(kernel.astype(real), s=fshape, workers=workers)
        conv = sfft.irfft2(x_hat * k_hat, s=fshape, workers=workers)[crop]
        if term != (0, 0):  # times x^a y^b, by broadcasting: no image-sized map
            conv *= (ys ** term[1])[:, None]
            conv *= (xs ** term[0])[None, :]
        model += conv
    del x_hat
    # Off the image counts as bad: the kernel would need the flux of the stars beyond the edge.
    mask = bad_y | (ndimage.maximum_filter(bad_x.astype(np.uint8), size=2 * half + 1, mode="constant", cval=1) > 0)
    if convolve_ref:
        difference = np.subtract(y_img, model, out=model)
        norm = None
    else:
        norm = poly_map(sum_map, shape) if sum_varies else real(centre_sum)
        difference = (model - y_img) / norm
    del model
    difference[mask] = 0

    # PSF of D and the variances. The kernel's variation across the image enters through the
    # ratio of sum((P (x) K(x))^2) to its value at the centre (a polynomial map).
    kernel_centre = kernels[0]
    if convolve_ref:
        psf_d = np.asarray(psf_new, float)
    else:
        psf_d = _convolve_same(psf_new, kernel_centre)
    psf_d = psf_d / psf_d.sum()
    flipped = psf_d[::-1, ::-1]
    smeared = np.stack([_convolve_full(flipped, k) for k in kernels])
    smeared_gram = np.einsum("syx,tyx->st", smeared, smeared)
    kernel_gram = np.einsum("syx,tyx->st", kernels, kernels)
    ones = np.zeros(len(terms))
    ones[0] = 1.0
    var_y0 = np.where(mask, real(0), var_y)
    var_x0 = np.where(bad_x, real(0), var_x)
    big = max(psf_d.shape[0], smeared.shape[1], kernel_centre.shape[0])
    vshape = _fft_shape(shape, big)
    v_y, v_x = sfft.rfft2(var_y0, s=vshape, workers=workers), sfft.rfft2(var_x0, s=vshape, workers=workers)
    del var_x0

    def apply(spectrum, stamp):
        h = stamp.shape[0] // 2
        out = sfft.irfft2(spectrum * sfft.rfft2(stamp.astype(real), s=vshape, workers=workers), s=vshape,
                          workers=workers)
        return out[h:h + shape[0], h:h + shape[1]]

    def spatial(gram):
        if len(terms) == 1:
            return real(1.0)
        return _quadratic_map(gram / gram[0, 0], terms, shape)

    diff_var = apply(v_x, kernel_centre ** 2) * spatial(kernel_gram) + var_y
    score_var = apply(v_y, flipped ** 2) + apply(v_x, smeared[0] ** 2) * spatial(smeared_gram)
    del v_x, v_y
    if norm is not None:
        diff_var /= norm ** 2
        score_var /= norm ** 2
    score = _correlate(difference, psf_d, workers)
    score_noise = np.sqrt(np.clip(score_var, 1e-30, None), out=score_var)
    significance = score / score_noise
    significance[mask] = 0
    log.info("kernel fit: %d stamps (%d clipped), ratio %.4f +- %.4f (range %.4f-%.4f), median chi2 %.2f",
             int(fit.kept.sum()), int((~fit.kept).sum()), ratio, ratio_error, *ratio_range,
             float(np.median(fit.chi2[fit.kept])))
    return KernelResult(difference=difference, difference_variance=diff_var, score=score,
                        significance=significance.astype(real, copy=False), score_noise=score_noise, psf=psf_d,
                        flux_zeropoint=1.0, flux_scale=float(np.sum(psf_d ** 2)), mask=mask, ratio=float(ratio),
                        ratio_error=ratio_error, ratio_range=ratio_range,
                        convolved="reference" if convolve_ref else "science", kernel=kernel_centre,
                        n_stamps=int(fit.kept.sum()), n_rejected=int((~fit.kept).sum()),
                        chi2=float(np.median(fit.chi2[fit.kept])))


def _convolve_full(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(a, b, mode="full")


def _convolve_same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(a, b, mode="same")


def _correlate(image: np.ndarray, stamp: np.ndarray, workers: int) -> np.ndarray:
    """``image`` cross-correlated with an odd, centred ``stamp`` (zero outside the image), float32."""
    h = stamp.shape[0] // 2
    fshape = _fft_shape(image.shape, 2 * h)
    spectrum = sfft.rfft2(image, s=fshape, workers=workers) * sfft.rfft2(
        stamp[::-1, ::-1].astype(np.float32), s=fshape, workers=workers)
    return sfft.irfft2(spectrum, s=fshape, workers=workers)[h:h + image.shape[0], h:h + image.shape[1]]
