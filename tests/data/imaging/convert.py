"""Rebuild the vendored images of this folder from their sources (see README.md); run once, by hand.

Usage: python tests/data/imaging/convert.py SITE_PACKAGES HUBBLE_DEEP_FIELD_JPG
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

HERE = Path(__file__).parent
# Nominal Hubble Deep Field North centre (Williams et al. 1996, AJ 112, 1335) and an assumed scale.
HDF_CENTRE_DEG = (189.2058, 62.2161)
HDF_SCALE_ARCSEC = 0.1


def _write_gz(path: Path, hdul: fits.HDUList) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as handle:
        hdul.writeto(handle)


def main(site_packages: str, jpeg: str) -> None:
    site = Path(site_packages)
    with fits.open(site / "astropy/io/fits/hdu/compressed/tests/data/m13.fits") as hdul:
        header = hdul[0].header.copy()
        for key in ("CHECKSUM", "DATASUM"):  # they would no longer match
            header.remove(key, ignore_missing=True)
        _write_gz(HERE / "m13_dss.fits.gz", fits.HDUList([fits.PrimaryHDU(hdul[0].data, header)]))
    with fits.open(site / "astroquery/ukidss/tests/data/image.fits", do_not_scale_image_data=True) as hdul:
        # The image HDU as stored (int32 with BSCALE), with the primary header's observation cards.
        primary = fits.PrimaryHDU(hdul[1].data, hdul[1].header)
        for key in ("TELESCOP", "INSTRUME", "FILTER", "DATE-OBS", "MJD-OBS", "PROJECT", "OBJECT"):
            if key in hdul[0].header:
                primary.header[key] = hdul[0].header[key]
        _write_gz(HERE / "ukidss_k.fits.gz", fits.HDUList([primary]))
    rgb = np.asarray(Image.open(jpeg))
    grey = rgb.astype(np.int16).sum(axis=2)[::-1]  # FITS rows run upwards
    saturated = (rgb == 255).any(axis=2)[::-1]
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = HDF_CENTRE_DEG
    wcs.wcs.crpix = [(grey.shape[1] + 1) / 2, (grey.shape[0] + 1) / 2]
    wcs.wcs.cd = np.diag([-HDF_SCALE_ARCSEC / 3600, HDF_SCALE_ARCSEC / 3600])
    header = wcs.to_header()
    header["TELESCOP"] = ("HST", "HDF STScI-PRC96-01 via scikit-image")
    header["INSTRUME"] = ("WFPC2", "")
    header["COMMENT"] = "Sum of the R, G, B channels of an 8-bit JPEG colour composite: quantised."
    header["COMMENT"] = "Pixel scale and centre are nominal, not an astrometric solution."
    header["COMMENT"] = "DQ extension: 1 where any channel is 255 (saturated in the JPEG)."
    _write_gz(HERE / "hdf_wfpc2.fits.gz", fits.HDUList([fits.PrimaryHDU(grey, header),
                                                       fits.ImageHDU(saturated.astype(np.uint8), name="DQ")]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
