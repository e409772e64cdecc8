"""Small synthetic images for the imaging tests: TAN WCSs, Gaussian star fields, FITS pairs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrodag.simulation.render import gaussian_psf

RA, DEC = 150.0, 2.0


def make_wcs(shape=(128, 128), scale_arcsec=1.0, rotation_deg=0.0, shift=(0.0, 0.0), ra=RA, dec=DEC) -> WCS:
    """TAN WCS with the sky position (ra, dec) at the image centre plus ``shift`` pixels."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2 + shift[0], (shape[0] + 1) / 2 + shift[1]]
    scale = scale_arcsec / 3600
    angle = math.radians(rotation_deg)
    wcs.wcs.cd = scale * np.array([[-math.cos(angle), math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return wcs


def render(shape, x, y, flux, fwhm) -> np.ndarray:
    """Pixel-integrated Gaussian sources (exact sub-pixel centres) on a zero image."""
    image = np.zeros(shape)
    size = int(2 * math.ceil(4 * fwhm) + 1)
    half = size // 2
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    for xc, yc, f in zip(x, y, np.broadcast_to(flux, x.shape)):
        ix, iy = int(round(xc)), int(round(yc))
        stamp = f * gaussian_psf(fwhm, size, center=(xc - ix, yc - iy))
        y0, x0 = iy - half, ix - half
        ys = slice(max(y0, 0), min(y0 + size, shape[0]))
        xs = slice(max(x0, 0), min(x0 + size, shape[1]))
        if ys.start < ys.stop and xs.start < xs.stop:
            image[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return image


def sky_stars(rng, n, shape=(128, 128), margin=10, flux=(2e3, 5e4)):
    """Random star positions (ra, dec) inside an image of ``shape`` centred on (RA, DEC) at 1"/px."""
    wcs = make_wcs(shape)
    x = rng.uniform(margin, shape[1] - margin, n)
    y = rng.uniform(margin, shape[0] - margin, n)
    ra, dec = wcs.pixel_to_world_values(x, y)
    return ra, dec, np.exp(rng.uniform(*np.log(flux), n))


def observe(wcs, shape, ra, dec, flux, fwhm, rng, sky=100.0, noise=5.0, scale=1.0):
    """An image of sky sources through ``wcs``: Gaussian PSF, flat sky, Gaussian noise."""
    x, y = wcs.world_to_pixel_values(ra, dec)
    image = sky + render(shape, x, y, scale * np.asarray(flux), fwhm)
    return (image + rng.normal(0.0, noise, shape)).astype(np.float32)


def write_fits(path: Path, data, wcs, **cards) -> Path:
    header = wcs.to_header(relax=True)
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)
    return path


def make_pair(directory: Path, shape=(128, 128), seed=0, n_stars=30, sci_fwhm=3.0, ref_fwhm=2.5, ratio=1.2,
              rotation_deg=3.0, shift=(2.3, -1.7), transient=None, noise=5.0, ref_noise=3.0, cards=None):
    """A science/reference FITS pair of the same star field, the reference rotated and shifted.

    ``transient`` = (x, y, flux) in science pixels adds a point source to the science image only.
    Returns (science_path, reference_path, science_wcs).
    """
    rng = np.random.default_rng(seed)
    ra, dec, flux = sky_stars(rng, n_stars, shape)
    sci_wcs = make_wcs(shape)
    ref_wcs = make_wcs(shape, rotation_deg=rotation_deg, shift=shift)
    science = observe(sci_wcs, shape, ra, dec, flux, sci_fwhm, rng, noise=noise, scale=ratio)
    if transient is not None:
        science += render(shape, [transient[0]], [transient[1]], [transient[2]], sci_fwhm).astype(np.float32)
    reference = observe(ref_wcs, shape, ra, dec, flux, ref_fwhm, rng, noise=ref_noise)
    cards = {"GAIN": 1000.0, "EXPTIME": 100.0, **(cards or {})}
    directory.mkdir(parents=True, exist_ok=True)
    return (write_fits(directory / "science.fits", science, sci_wcs, **cards),
            write_fits(directory / "reference.fits", reference, ref_wcs, **cards), sci_wcs)


TRANSIENT = (70.4, 58.7, 4000.0)  # x, y, flux of the transient in processed pairs
PAIR_SHAPE = (144, 144)


def process_pair(directory: Path, seed=0, settings=None, **pair_options):
    """A pair made, differenced and detected: returns (pair directory, science WCS, record)."""
    from astrodag.supernova.imaging.pipeline import DifferenceSettings, detect_pair, difference_pair

    science, reference, wcs = make_pair(directory, shape=PAIR_SHAPE, seed=seed, n_stars=45,
                                        transient=TRANSIENT, **pair_options)
    settings = DifferenceSettings.from_config(settings if settings is not None else {"inject": {"count": 8}})
    record = difference_pair(science, reference, directory, settings, seed=seed)
    detect_pair(directory)
    return directory, wcs, record


@pytest.fixture(scope="module")
def processed_pair(tmp_path_factory):
    """One differenced and detected pair per test module (the transient at TRANSIENT)."""
    return process_pair(tmp_path_factory.mktemp("pair") / "SN2011fe__SYN_X_g__1_2")
