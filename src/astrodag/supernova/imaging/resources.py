"""Memory a ``difference`` job needs, from the size of its two images (the workflow's ``mem_mb``).

The stage holds a bounded number of image-sized single-precision planes on the science grid
(the sky-subtracted science and aligned reference, their noise maps and masks, D, S and S_corr,
one ZOGY tile at a time: ``subtract.tile_size``) and, while loading, the reference's own
pixels in the file's precision. :func:`difference_mem_mb` turns that into megabytes with the
constants below, from ``benchmarks/supernova_difference_memory.py`` (peak RSS of the CLI
stage on synthetic float64 pairs: 654 MiB at 2048^2, 3708 MiB at 8192^2, i.e. about
300 MiB plus 52 bytes per pixel of the pair) with a fifth added: 4440 MiB declared at 8192^2.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

BASE_MIB = 600  # interpreter, numpy/scipy/astropy/photutils, the PSF and injection work
SCIENCE_BYTES_PER_PIXEL = 48  # peak bytes per science-grid pixel beyond the base (measured ~40 at 8192^2)
REFERENCE_BYTES_PER_PIXEL = 12  # the reference while it is loaded (float64 file + float32 copy) and resampled


def image_pixels(path: str | Path) -> int | None:
    """Pixels of the first image HDU with two or more axes of a FITS file, read from its header.

    None when the file does not exist (yet) or is no readable FITS image: the caller falls back
    to its floor (the workflow asks again once the file exists).
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) \
                            and hdu.header.get("NAXIS", 0) >= 2:
                        return math.prod(int(hdu.header.get(f"NAXIS{i}", 1)) for i in
                                         range(1, hdu.header["NAXIS"] + 1))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def difference_mem_mb(science: str | Path, reference: str | Path, floor_mb: int) -> int:
    """Megabytes (MiB) to declare for ``astrodag supernova difference`` on this pair.

    ``BASE_MIB`` plus ``SCIENCE_BYTES_PER_PIXEL`` per science pixel plus
    ``REFERENCE_BYTES_PER_PIXEL`` per reference pixel, and never less than ``floor_mb`` (the
    configured ``supernova.resources.difference_mem_mb``), which is also the answer while an
    image cannot be read.
    """
    n_science, n_reference = image_pixels(science), image_pixels(reference)
    if n_science is None or n_reference is None:
        return int(floor_mb)
    need = BASE_MIB + (SCIENCE_BYTES_PER_PIXEL * n_science + REFERENCE_BYTES_PER_PIXEL * n_reference) / 2 ** 20
    return max(int(floor_mb), int(math.ceil(need)))
