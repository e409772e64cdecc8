"""Alignment: the affine fast path against reproject, known shifts and rotations, footprints."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from imaging_helpers import DEC, RA, make_wcs, observe, render, sky_stars, write_fits
from photutils.psf import fit_2dgaussian
from reproject import reproject_interp

from astrodag.errors import ConfigError, InputDataError
from astrodag.supernova.imaging.align import AlignSettings, align_reference, fit_affine
from astrodag.supernova.imaging.fitsio import load_image

SHAPE = (96, 96)


def _smooth_scene(wcs, shape):
    """A smooth image (broad Gaussians) defined on the sky, so every resampler agrees on it."""
    rng = np.random.default_rng(4)
    ra, dec, flux = sky_stars(rng, 12, shape, margin=-10, flux=(1e3, 1e4))
    x, y = wcs.world_to_pixel_values(ra, dec)
    return (10.0 + render(shape, x, y, flux, 12.0)).astype(np.float32)


def _pair(tmp_path, rotation=7.0, shift=(3.4, -2.2), reference_shape=SHAPE, reference_wcs=None):
    sci_wcs = make_wcs(SHAPE)
    ref_wcs = reference_wcs or make_wcs(reference_shape, rotation_deg=rotation, shift=shift)
    science = write_fits(tmp_path / "sci.fits", _smooth_scene(sci_wcs, SHAPE), sci_wcs)
    reference = write_fits(tmp_path / "ref.fits", _smooth_scene(ref_wcs, reference_shape), ref_wcs)
    return load_image(science), load_image(reference)


def test_affine_fast_path_matches_reproject_interp(tmp_path):
    science, reference = _pair(tmp_path)
    settings = AlignSettings(order="bilinear")
    fast = align_reference(science, reference, settings)
    assert fast.method == "affine" and fast.affine_error_px < 1e-3
    expected, footprint = reproject_interp((reference.data, reference.wcs), science.wcs, shape_out=SHAPE,
                                           order="bilinear")
    both = fast.footprint & (footprint > 0)
    # The footprints agree up to a one-pixel rim.
    assert np.sum(fast.footprint != (footprint > 0)) < 2 * sum(SHAPE)
    np.testing.assert_allclose(fast.data[both], expected[both], rtol=1e-4, atol=1e-4 * float(np.nanmax(expected)))
    slow = align_reference(science, reference, AlignSettings(method="interp", order="bilinear"))
    assert slow.method == "interp"
    np.testing.assert_allclose(slow.data[both], expected[both], rtol=1e-5)
    assert abs(slow.overlap_fraction - fast.overlap_fraction) < 0.02


@pytest.mark.parametrize("method", ["affine", "interp"])
def test_recovers_a_known_shift_and_rotation(tmp_path, method):
    rng = np.random.default_rng(1)
    # Isolated stars on a jittered grid (blends would bias the centroids).
    grid = np.arange(16, 90, 18, dtype=float)
    gx, gy = np.meshgrid(grid, grid)
    sci_wcs = make_wcs(SHAPE)
    ra, dec = sci_wcs.pixel_to_world_values(gx.ravel() + rng.uniform(-2, 2, gx.size),
                                            gy.ravel() + rng.uniform(-2, 2, gx.size))
    flux = rng.uniform(2e4, 5e4, gx.size)
    sci_wcs, ref_wcs = make_wcs(SHAPE), make_wcs(SHAPE, rotation_deg=11.0, shift=(4.3, -3.6))
    science = load_image(write_fits(tmp_path / "s.fits", observe(sci_wcs, SHAPE, ra, dec, flux, 3.0, rng, noise=0.5),
                                    sci_wcs))
    reference = load_image(write_fits(tmp_path / "r.fits", observe(ref_wcs, SHAPE, ra, dec, flux, 3.0, rng,
                                                                   noise=0.5), ref_wcs))
    aligned = align_reference(science, reference, AlignSettings(method=method))
    x, y = sci_wcs.world_to_pixel_values(ra, dec)
    inside = (x > 8) & (x < SHAPE[1] - 8) & (y > 8) & (y < SHAPE[0] - 8)
    inside &= np.array([aligned.footprint[int(b) - 4:int(b) + 5, int(a) - 4:int(a) + 5].all() for a, b in zip(x, y)])
    data = np.nan_to_num(aligned.data - 100.0)
    fit = fit_2dgaussian(data, xypos=np.column_stack([x[inside], y[inside]]), fwhm=3.0, fit_shape=7).results
    offsets = np.hypot(np.asarray(fit["x_fit"]) - x[inside], np.asarray(fit["y_fit"]) - y[inside])
    assert inside.sum() >= 8 and np.median(offsets) < 0.02 and offsets.max() < 0.06


@pytest.mark.parametrize("method", ["affine", "interp"])
def test_shift_correction_moves_the_reference(tmp_path, method):
    science, reference = _pair(tmp_path, rotation=0.0, shift=(0.0, 0.0))
    base = align_reference(science, reference, AlignSettings(method=method, order="bicubic"))
    moved = align_reference(science, reference, AlignSettings(method=method, order="bicubic"), shift=(2.0, 1.0))
    # Output pixel (x, y) now shows what (x + 2, y + 1) showed.
    np.testing.assert_allclose(moved.data[20:70, 20:70], base.data[21:71, 22:72], rtol=1e-4)
    assert moved.shift_px == (2.0, 1.0)


def test_strong_distortion_falls_back_to_reproject(tmp_path):
    header = make_wcs(SHAPE, rotation_deg=5.0).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 2e-4, "B_0_2": -2e-4, "A_1_1": 1e-4})
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, SHAPE[1], SHAPE[0]
    distorted = WCS(header)
    coefficients, error = fit_affine(make_wcs(SHAPE), distorted, SHAPE)
    assert error > 0.2
    science, reference = _pair(tmp_path, reference_wcs=distorted)
    aligned = align_reference(science, reference)
    assert aligned.method == "interp" and aligned.affine_error_px == pytest.approx(error)
    expected, _ = reproject_interp((reference.data, reference.wcs), science.wcs, shape_out=SHAPE, order="bicubic",
                                   roundtrip_coords=False)
    np.testing.assert_allclose(aligned.data[aligned.footprint], expected[aligned.footprint], rtol=1e-5)


def test_exact_reprojection(tmp_path):
    science, reference = _pair(tmp_path, rotation=3.0, shift=(1.5, 0.5))
    aligned = align_reference(science, reference, AlignSettings(method="exact"))
    interp = align_reference(science, reference)
    both = aligned.footprint & interp.footprint
    assert aligned.method == "exact" and both.mean() > 0.9
    # Flux-conserving averaging of a smooth image is close to interpolation.
    np.testing.assert_allclose(aligned.data[both], interp.data[both], rtol=0.02)


def test_overlap_fraction_and_non_overlapping_footprints(tmp_path):
    science, reference = _pair(tmp_path, rotation=0.0, shift=(48.0, 0.0))
    aligned = align_reference(science, reference)
    assert aligned.overlap_fraction == pytest.approx(0.5, abs=0.02)
    # Science pixel x sees reference pixel x + 48: only the left half is covered.
    assert aligned.footprint[:, :40].all() and not aligned.footprint[:, 56:].any()
    assert np.isnan(aligned.data[:, 56:]).all()

    far = make_wcs(SHAPE, ra=RA + 1.0, dec=DEC)
    science, reference = _pair(tmp_path, reference_wcs=far)
    for method in ("affine", "interp"):
        with pytest.raises(InputDataError, match="footprints do not overlap") as error:
            align_reference(science, reference, AlignSettings(method=method))
        assert error.value.path == reference.path


@pytest.mark.parametrize("method", ["affine", "interp"])
def test_bad_reference_pixels_are_carried_into_the_mask(tmp_path, method):
    science, reference = _pair(tmp_path, rotation=0.0, shift=(0.0, 0.0))
    reference.mask[50, 30] = True
    reference.data[50, 30] = 1e9  # whatever a bad pixel holds must not leak
    aligned = align_reference(science, reference, AlignSettings(method=method))
    assert aligned.mask[50, 30] and aligned.mask.sum() <= 25
    assert np.nanmax(aligned.data) < 1e6


def test_settings_reject_unknown_and_invalid_keys():
    assert AlignSettings.from_config({"method": "interp", "roundtrip_coords": True}).method == "interp"
    with pytest.raises(ConfigError, match="supernova.difference.align.methd"):
        AlignSettings.from_config({"methd": "interp"})
    with pytest.raises(ConfigError, match="supernova.difference.align.order"):
        AlignSettings.from_config({"order": "cubic"})
    with pytest.raises(ConfigError, match="supernova.difference.align.refine"):
        AlignSettings.from_config({"refine": "yes"})


def test_frames_differ(tmp_path):
    """A reference in Galactic coordinates aligns through the sky, like one in ICRS."""
    science, reference = _pair(tmp_path, rotation=0.0, shift=(0.0, 0.0))
    galactic = reference.wcs.deepcopy()
    centre = galactic.pixel_to_world((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2).galactic
    galactic.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    galactic.wcs.crval = [centre.l.deg, centre.b.deg]
    header = galactic.to_header()
    path = tmp_path / "gal.fits"
    fits.PrimaryHDU(reference.data, header).writeto(path)
    aligned = align_reference(science, load_image(path))
    plain = align_reference(science, reference)
    assert aligned.method == "affine"  # a rotation between frames is still affine
    inner = (slice(15, 80), slice(15, 80))
    # The galactic WCS is rotated on the sky relative to ICRS: compare against reproject.
    expected, _ = reproject_interp((reference.data, galactic), science.wcs, shape_out=SHAPE, order="bicubic")
    np.testing.assert_allclose(aligned.data[inner], expected[inner], rtol=1e-3)
    assert np.isfinite(plain.data[inner]).all()
