"""Magnification: trajectory convention, PSPL, binary point and finite source vs VBMicrolensing.

VBMicrolensing (the field library) is the reference throughout. Tolerances:
- point source away from caustics: 1e-4 relative is required; the solver agrees to ~1e-10;
- full light curves including caustic crossings: the points that need the finite source are
  computed by VBMicrolensing itself (the same BinaryMag2 decision), so the whole curve must
  agree to 1e-6 relative; a looser 1e-2 (VBMicrolensing's default Tol) is never needed.
"""

import math

import numpy as np
import pytest

from astrodag.microlensing import magnification as mag_module
from astrodag.microlensing.magnification import (
    binary_magnification,
    binary_point_magnification,
    pspl_magnification,
    trajectory,
)

VBMicrolensing = pytest.importorskip("VBMicrolensing")

TIMES = np.linspace(0.0, 500.0, 1500, endpoint=False)


@pytest.fixture(scope="module")
def vbm():
    return VBMicrolensing.VBMicrolensing()  # default Tol = 1e-2, as binary_magnification


def random_events(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "t0": rng.uniform(100, 400, n), "u0": rng.uniform(0, 1, n),
        "tE": np.exp(rng.uniform(math.log(10), math.log(100), n)),
        "s": np.exp(rng.uniform(math.log(0.2), math.log(5), n)), "q": np.exp(rng.uniform(math.log(1e-3), 0, n)),
        "alpha": rng.uniform(0, 2 * np.pi, n), "rho": np.exp(rng.uniform(math.log(3e-4), math.log(1e-2), n)),
    }


def vbm_curves(vbm, times, ev):
    return np.array([
        vbm.BinaryLightCurve([math.log(ev["s"][i]), math.log(ev["q"][i]), ev["u0"][i], ev["alpha"][i],
                              math.log(ev["rho"][i]), math.log(ev["tE"][i]), ev["t0"][i]], times.tolist())
        for i in range(len(ev["t0"]))
    ])  # (N, 3, T): magnification, y1, y2


# --- trajectory and PSPL ------------------------------------------------------------------------


def test_trajectory_matches_vbmicrolensing_convention(vbm):
    ev = random_events(6, seed=1)
    ev["u0"][0], ev["alpha"][1] = -0.4, 3.5  # signed u0 and alpha > pi too
    y1, y2 = trajectory(TIMES, ev["t0"], ev["u0"], ev["tE"], ev["alpha"])
    reference = vbm_curves(vbm, TIMES, ev)
    np.testing.assert_allclose(y1, reference[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(y2, reference[:, 2], rtol=0, atol=1e-12)
    # closest approach at t0, at distance |u0|, moving along -(cos alpha, sin alpha)
    y1c, y2c = trajectory([50.0, 51.0], 50.0, 0.3, 10.0, 0.7)
    assert np.hypot(y1c[0, 0], y2c[0, 0]) == pytest.approx(0.3)
    np.testing.assert_allclose([y1c[0, 1] - y1c[0, 0], y2c[0, 1] - y2c[0, 0]], [-0.1 * np.cos(0.7), -0.1 * np.sin(0.7)])


def test_pspl_analytic_and_vbmicrolensing(vbm):
    t0, u0, tE = np.array([200.0, 250.0]), np.array([0.1, 0.8]), np.array([20.0, 60.0])
    a = pspl_magnification(TIMES, t0, u0, tE)
    u = np.hypot((TIMES - t0[:, None]) / tE[:, None], u0[:, None])
    np.testing.assert_allclose(a, (u**2 + 2) / (u * np.sqrt(u**2 + 4)), rtol=1e-14)
    for i in range(2):
        reference = vbm.PSPLLightCurve([math.log(u0[i]), math.log(tE[i]), t0[i]], TIMES.tolist())
        np.testing.assert_allclose(a[i], reference[0], rtol=1e-12)
    assert a[0].max() == pytest.approx((0.01 + 2) / (0.1 * math.sqrt(0.01 + 4)), rel=1e-3)  # peak near t0
    np.testing.assert_array_equal(pspl_magnification(TIMES, 200.0, -0.1, 20.0), a[:1])  # only |u0| matters
    # alpha=None is alpha=0, VBMicrolensing's PSPL trajectory (y1 = -tau, y2 = -u0)
    y1, y2 = trajectory(TIMES, 200.0, 0.1, 20.0)
    reference = vbm.PSPLLightCurve([math.log(0.1), math.log(20.0), 200.0], TIMES.tolist())
    np.testing.assert_allclose(y1[0], reference[1], atol=1e-12)
    np.testing.assert_allclose(y2[0], reference[2], atol=1e-12)


# --- binary lens, point source -------------------------------------------------------------------


def test_point_source_and_finite_source_indicators_match_vbmicrolensing(vbm):
    """Random points over s in [0.2, 5], q in [1e-3, 1]: magnification and BinaryMag2's tests."""
    rng = np.random.default_rng(2)
    n = 1500
    s = np.exp(rng.uniform(math.log(0.2), math.log(5), n))
    q = np.exp(rng.uniform(math.log(1e-3), 0, n))
    y1, y2 = rng.uniform(-2.5, 2.5, n), rng.uniform(0.0, 2.5, n)
    reference = np.empty((n, 3))
    for i in range(n):
        reference[i] = vbm.BinaryMag0(s[i], q[i], y1[i], y2[i]), vbm.corrquad, vbm.corrquad2
    ours = binary_point_magnification(s, q, y1, y2)  # 1-D: each point by eigenvalues
    # "away from caustics": VBMicrolensing's own quadrupole and ghost tests pass for rho = 1e-3
    away = (reference[:, 1] * 6e-6 < 1e-3) & (reference[:, 2] * 256e-6 < 1)
    assert away.mean() > 0.9
    np.testing.assert_allclose(ours[away], reference[away, 0], rtol=1e-4)
    assert np.max(np.abs(ours[away] / reference[away, 0] - 1)) < 1e-8
    # the quadrupole and ghost-image coefficients that decide finite source (all points)
    lens = mag_module._Lens(s, q)
    y = (y1 + lens.shift) + 1j * y2
    images = mag_module._images(mag_module._eig_roots(mag_module._coefficients(y, lens.a, lens.m2)), y, lens)
    np.testing.assert_allclose(images["corrquad"], reference[:, 1], rtol=1e-6)
    np.testing.assert_allclose(images["corrquad2"], reference[:, 2], rtol=1e-6, atol=1e-300)


def test_point_source_continuation_rows_match_eigenvalues(vbm):
    """2-D positions are solved row by row by continuation; the result must not depend on it."""
    ev = random_events(8, seed=3)
    y1, y2 = trajectory(TIMES, ev["t0"], ev["u0"], ev["tE"], ev["alpha"])
    rows = binary_point_magnification(ev["s"], ev["q"], y1, y2)
    flat = binary_point_magnification(np.repeat(ev["s"], TIMES.size), np.repeat(ev["q"], TIMES.size),
                                      y1.ravel(), y2.ravel())
    assert rows.shape == y1.shape
    np.testing.assert_allclose(rows.ravel(), flat, rtol=1e-8)
    i = 0
    reference = [vbm.BinaryMag0(ev["s"][i], ev["q"][i], a, b) for a, b in zip(y1[i], y2[i])]
    np.testing.assert_allclose(rows[i], reference, rtol=1e-6)


# --- binary lens, finite source (full light curves) ----------------------------------------------


def caustic_crossing_events():
    """Trajectories through the central caustic (u0 ~ 0) of resonant binaries: caustic crossings."""
    return {
        "t0": np.array([250.0, 200.0, 300.0]), "u0": np.array([0.0, 0.02, -0.05]), "tE": np.array([30.0, 15.0, 80.0]),
        "s": np.array([1.0, 0.8, 1.3]), "q": np.array([0.5, 0.1, 1.0]), "alpha": np.array([0.3, 1.2, 2.5]),
        "rho": np.array([1e-3, 3e-4, 1e-2]),
    }


@pytest.mark.parametrize("method", ["numpy", "vbm"])
def test_binary_light_curves_match_binary_light_curve(vbm, method):
    ev = random_events(30, seed=4)
    for key, value in caustic_crossing_events().items():
        ev[key] = np.concatenate([ev[key], value])
    reference = vbm_curves(vbm, TIMES, ev)[:, 0]
    ours, info = binary_magnification(TIMES, **ev, method=method, return_info=True)
    assert ours.shape == (33, TIMES.size)
    if method == "vbm":  # the same library calls (its root finder remembers state: ~1e-14)
        np.testing.assert_allclose(ours, reference, rtol=1e-12)
        return
    finite = info["finite_source"]
    assert finite[-3:].any(axis=1).all()  # the crossing events needed the finite source
    assert ours[-3:].max() > 10  # and really are high-magnification crossings
    np.testing.assert_allclose(ours[~finite], reference[~finite], rtol=1e-4)  # required
    np.testing.assert_allclose(ours, reference, rtol=1e-6)  # measured: ~1e-10 everywhere


def test_unsorted_times_still_correct(vbm):
    """Continuation assumes smooth trajectories; jumps are caught and re-solved by eigenvalues."""
    ev = caustic_crossing_events()
    times = np.random.default_rng(5).permutation(TIMES)[:300]
    ours, info = binary_magnification(times, **ev, method="numpy", return_info=True)
    assert info["eigen_solves"] > 3 * 3  # more than one segment start per curve: fallbacks happened
    np.testing.assert_allclose(ours, vbm_curves(vbm, times, ev)[:, 0], rtol=1e-6)


def test_finite_source_really_matters_at_caustic_crossings():
    ev = caustic_crossing_events()
    with_source = binary_magnification(TIMES, **ev, method="numpy")
    y1, y2 = trajectory(TIMES, ev["t0"], ev["u0"], ev["tE"], ev["alpha"])
    point = binary_point_magnification(ev["s"], ev["q"], y1, y2)
    assert np.max(np.abs(with_source / point - 1)) > 0.05  # smoothing near the caustics
    far = np.abs(TIMES[None] - ev["t0"][:, None]) > 3 * ev["tE"][:, None]
    np.testing.assert_allclose(with_source[far], point[far], rtol=1e-10)


# --- limits --------------------------------------------------------------------------------------


def test_tiny_mass_ratio_tends_to_pspl():
    # trajectory perpendicular to the axis, far from the planetary caustic at ~s - 1/s = 4.8
    a = binary_magnification(TIMES, 250.0, 0.3, 20.0, 5.0, 1e-7, np.pi / 2, 1e-3, method="numpy")
    np.testing.assert_allclose(a, pspl_magnification(TIMES, 250.0, 0.3, 20.0), rtol=1e-5)


def test_wide_binary_is_two_separate_pspl_bumps():
    s, q, u0, tE = 50.0, 0.5, 0.1, 1.0
    times = np.linspace(-60.0, 60.0, 4001)
    a = binary_magnification(times, 0.0, u0, tE, s, q, 0.0, 1e-4, method="numpy")[0]
    y1, y2 = trajectory(times, 0.0, u0, tE, 0.0)
    m1, m2 = 1 / (1 + q), q / (1 + q)
    z1, z2 = -s * q / (1 + q), s / (1 + q)
    # near each lens: a single lens of mass m_k, the source shifted by the other lens' deflection
    for zk, mk, zo, mo in ((z1, m1, z2, m2), (z2, m2, z1, m1)):
        u = np.hypot(y1[0] - zk + mo / (zk - zo), y2[0]) / math.sqrt(mk)
        near = u < 3
        assert near.sum() > 50
        np.testing.assert_allclose(a[near], (u[near] ** 2 + 2) / (u[near] * np.sqrt(u[near] ** 2 + 4)), rtol=2e-3)
    between = np.abs(y1[0] - (z1 + z2) / 2) < 5
    np.testing.assert_allclose(a[between], 1.0, atol=1e-3)  # baseline between the two bumps
    peaks = a[y1[0] < (z1 + z2) / 2].max(), a[y1[0] > (z1 + z2) / 2].max()
    assert min(peaks) > 5


# --- shapes and bad inputs -----------------------------------------------------------------------


def test_shapes_and_broadcasting():
    assert pspl_magnification(TIMES, 200.0, 0.1, 20.0).shape == (1, TIMES.size)
    assert pspl_magnification(TIMES, [100.0, 200.0, 300.0], 0.1, 20.0).shape == (3, TIMES.size)
    y1, y2 = trajectory(TIMES[:10], [1.0, 2.0], 0.1, 20.0, 0.5)
    assert y1.shape == y2.shape == (2, 10)
    a = binary_magnification(TIMES[:40], [10.0, 20.0], 0.1, 20.0, 1.0, [0.5, 0.01], 0.3, 1e-3, method="numpy")
    assert a.shape == (2, 40) and a.dtype == np.float64
    assert binary_magnification([], 10.0, 0.1, 20.0, 1.0, 0.5, 0.3, 1e-3).shape == (1, 0)
    assert binary_point_magnification(1.0, 0.5, 0.3, 0.2).shape == ()
    assert binary_point_magnification(1.0, 0.5, np.zeros((4, 3)) + 0.3, 0.2).shape == (4, 3)
    # q > 1 is the same lens seen from the other side (VBMicrolensing's convention)
    mirrored = binary_point_magnification(1.0, 0.5, -0.1, 0.2)
    assert binary_point_magnification(1.0, 2.0, 0.1, 0.2) == pytest.approx(mirrored)
    with pytest.raises(ValueError, match="event parameters"):
        pspl_magnification(TIMES, [1.0, 2.0], [0.1, 0.2, 0.3], 20.0)
    with pytest.raises(ValueError, match="times"):
        pspl_magnification(np.zeros((2, 2)), 1.0, 0.1, 20.0)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("tE", {"tE": -5.0}),
        ("tE", {"tE": 0.0}),
        ("q", {"q": 0.0}),
        ("q", {"q": [0.5, -0.1]}),
        ("s", {"s": -1.0}),
        ("rho", {"rho": 0.0}),
        ("u0", {"u0": np.nan}),
        ("t0", {"t0": np.inf}),
        ("alpha", {"alpha": [0.1, np.nan]}),
        ("times", {"times": [0.0, np.nan]}),
        ("method", {"method": "fast"}),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_parameter(name, kwargs):
    args = {"times": TIMES[:5], "t0": 10.0, "u0": 0.1, "tE": 20.0, "s": 1.0, "q": 0.5, "alpha": 0.3, "rho": 1e-3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        binary_magnification(**args)


def test_bad_inputs_other_functions():
    with pytest.raises(ValueError, match="tE"):
        pspl_magnification(TIMES, 1.0, 0.1, -20.0)
    with pytest.raises(ValueError, match="u0"):
        trajectory(TIMES, 1.0, np.nan, 20.0)
    with pytest.raises(ValueError, match="q"):
        binary_point_magnification(1.0, -0.5, 0.1, 0.1)
    with pytest.raises(ValueError, match="y2"):
        binary_point_magnification(1.0, 0.5, 0.1, np.nan)
