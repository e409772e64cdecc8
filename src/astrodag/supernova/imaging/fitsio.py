"""FITS images in and out: robust loading into :class:`Image`, atomic writing with provenance.

Archives deliver images in several shapes: the image in the primary HDU or in an extension,
plain, gzip-compressed (``.fits.gz``) or tile-compressed (``.fits.fz``, a ``CompImageHDU``),
sometimes with degenerate extra axes (``NAXIS3 = 1``) and a data-quality extension.
:func:`load_image` accepts all of these and turns every way a file can be unusable into an
``InputDataError`` that names the file: missing, not FITS, corrupt or truncated, no image HDU,
not 2-D, no (or a degenerate) celestial WCS, no finite pixel.

Pixel mask (``Image.mask``, True = bad): non-finite pixels, pixels at or above the saturation
level (``SATURATE``/``SATLEVEL``/``SATURATN`` keyword) and non-zero pixels of a data-quality
extension (``DQ``, ``MASK``, ``BPM``) of the same shape.
"""

from __future__ import annotations

import gzip
import json
import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

from astrodag import __version__
from astrodag.errors import InputDataError
from astrodag.io import atomic_path, file_digest

log = logging.getLogger(__name__)

IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
QUALITY_EXTENSIONS = ("DQ", "MASK", "BPM")
SATURATION_KEYS = ("SATURATE", "SATLEVEL", "SATURATN")
ZEROPOINT_KEYS = ("ZEROPT", "MAGZPT", "MAGZERO", "ZP")
FWHM_KEYS = ("FWHM", "PSF_FWHM", "FWHM_PX")
_READ_ERRORS = (OSError, EOFError, TypeError, ValueError, KeyError, IndexError, zlib.error, fits.VerifyError,
                AstropyUserWarning)


@dataclass
class Image:
    """A 2-D image with its header, celestial WCS and bad-pixel mask.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel values, float32 (or float64 when loaded so), shape ``(ny, nx)``.
    header : astropy.io.fits.Header
        Header of the image HDU (merged with the primary header's keywords that it lacks).
    wcs : astropy.wcs.WCS
        The celestial (2-D) WCS.
    path : pathlib.Path
        The file it came from.
    mask : numpy.ndarray
        Bool, True where a pixel is bad (non-finite, saturated or flagged).
    unit : str
        ``BUNIT`` (empty when absent).
    hdu : int or str
        Index or ``EXTNAME`` of the HDU read.
    """

    data: np.ndarray
    header: fits.Header
    wcs: WCS
    path: Path
    mask: np.ndarray
    unit: str = ""
    hdu: int | str = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def keyword(self, *names: str, default: float | None = None) -> float | None:
        """The first of the header keywords ``names`` that holds a finite number, else ``default``."""
        for name in names:
            value = self.header.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                return float(value)
        return default

    @property
    def saturation(self) -> float | None:
        """Saturation level in data units (``SATURATE`` and synonyms), None when unknown."""
        return self.keyword(*SATURATION_KEYS)

    @property
    def gain(self) -> float | None:
        """Electrons per data unit, so that a pixel's Poisson variance is ``value / gain``.

        ``GAIN`` as the header gives it (the convention of the synthetic survey and of most
        reduced products: for a count-rate image it already includes the exposure time).
        Without it, an image in electrons has 1 (in electrons per second, ``EXPTIME``);
        None when unknown.
        """
        gain = self.keyword("GAIN")
        if gain is not None and gain > 0:
            return gain
        unit = self.unit.strip().lower()
        if unit.startswith(("electron", "e-")):
            exptime = self.keyword("EXPTIME", "EXPOSURE")
            if _is_rate(unit):
                return exptime if exptime and exptime > 0 else None
            return 1.0
        return None

    @property
    def read_noise(self) -> float | None:
        """Read noise in data units (``RDNOISE``/``READNOIS`` electrons over the gain), None when unknown."""
        electrons = self.keyword("RDNOISE", "READNOIS", "RDNOISE1")
        gain = self.gain
        return electrons / gain if electrons is not None and gain else None

    @property
    def zeropoint(self) -> float | None:
        """Magnitude of one data unit (``ZEROPT``/``MAGZPT``...), None when unknown."""
        return self.keyword(*ZEROPOINT_KEYS)

    @property
    def fwhm(self) -> float | None:
        """PSF FWHM in pixels from the header (``FWHM``...), None when absent."""
        value = self.keyword(*FWHM_KEYS)
        return value if value and value > 0 else None


def _is_rate(unit: str) -> bool:
    text = unit.strip().lower().replace(" ", "")
    return text.endswith(("/s", "/sec", "s-1", "s**-1", "s^-1")) or text in ("cps", "ct/s", "counts/s")


def load_image(path: str | Path, hdu: int | str | None = None, dtype: Any = np.float32) -> Image:
    """Load a 2-D image with a celestial WCS from a FITS file.

    Parameters
    ----------
    path : str or Path
        ``.fits``, ``.fits.gz`` or ``.fits.fz`` (tile-compressed) file.
    hdu : int or str, optional
        The HDU to read (index or ``EXTNAME``); by default the first HDU that holds a 2-D image.
    dtype : numpy dtype or None
        Type of ``Image.data``; None keeps float64 input as float64 (anything else becomes float32).

    Returns
    -------
    Image

    Raises
    ------
    InputDataError
        If the file is missing, is not a readable FITS file (corrupt or truncated), holds no
        image HDU (or not the one asked for), the image is not 2-D, it has no usable celestial
        WCS, or no pixel is finite.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        with warnings.catch_warnings():
            # astropy only warns about a short file, which must fail here; lazy_load_hdus=False
            # reads every header now, so truncation shows here and not later.
            warnings.filterwarnings("error", message=".*truncated", category=AstropyUserWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                index = _select_hdu(path, hdul, hdu)
                chosen = hdul[index]
                raw = chosen.data
                header = chosen.header.copy()
                if index != 0:
                    # Archive extensions often leave TELESCOP, MJD-OBS, EXPTIME ... in the primary header.
                    for card in hdul[0].header.cards:
                        if card.keyword not in header and card.keyword not in _NOT_INHERITED:
                            header.append(card)
                quality = _quality_mask(hdul, index, None if raw is None else raw.shape)
                wcs = _read_wcs(path, chosen.header, hdul)
    except InputDataError:
        raise
    except _READ_ERRORS as error:
        raise InputDataError(path, f"not a readable FITS file (corrupt or truncated?): {error}") from error
    except MemoryError as error:
        raise InputDataError(path, "image too large to load") from error

    name: int | str = chosen.name if chosen.name and chosen.name != "PRIMARY" else index
    data = np.asarray(raw)
    if data.ndim > 2:
        # Degenerate leading axes (NAXIS3 = 1 ...) are common; the WCS drops them via .celestial.
        data = data.reshape([n for n in data.shape if n != 1] or [1])
    if data.ndim != 2:
        raise InputDataError(path, f"HDU {name!r} holds a {data.ndim}-D array of shape {raw.shape}, not a 2-D image")
    if not wcs.has_celestial:
        raise InputDataError(path, f"HDU {name!r} has no celestial WCS (CTYPE RA/DEC or similar)")
    wcs = wcs.celestial
    _check_wcs(path, wcs, data.shape)

    keep64 = dtype is None and data.dtype.kind == "f" and data.dtype.itemsize == 8  # FITS is big-endian
    data = np.array(data, dtype=np.float64 if keep64 else (dtype or np.float32))
    finite = np.isfinite(data)
    if not finite.any():
        raise InputDataError(path, f"HDU {name!r} has no finite pixel (all NaN or inf)")
    mask = ~finite
    image = Image(data=data, header=header, wcs=wcs, path=path, mask=mask,
                  unit=str(header.get("BUNIT", "")).strip(), hdu=name)
    if image.saturation is not None:
        mask |= finite & (data >= image.saturation)
    if quality is not None:
        mask |= quality.reshape(data.shape)
    return image


_NOT_INHERITED = {"", "COMMENT", "HISTORY", "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
                  "XTENSION", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM", "END"}


def _read_wcs(path: Path, header: fits.Header, hdul: fits.HDUList) -> WCS:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(header, fobj=hdul)
    except Exception as error:  # astropy.wcs raises several types (ValueError, WcsError subclasses ...)
        raise InputDataError(path, f"invalid WCS in the image header: {error}") from error


def _select_hdu(path: Path, hdul: fits.HDUList, hdu: int | str | None) -> int:
    if hdu is not None:
        try:
            index = hdul.index_of(hdu)
        except (KeyError, IndexError) as error:
            names = [h.name for h in hdul]
            raise InputDataError(path, f"no HDU {hdu!r} (HDUs: {names})") from error
        if not isinstance(hdul[index], IMAGE_HDUS) or hdul[index].data is None:
            raise InputDataError(path, f"HDU {hdu!r} holds no image")
        return index
    for index, candidate in enumerate(hdul):
        if isinstance(candidate, IMAGE_HDUS) and candidate.name not in QUALITY_EXTENSIONS \
                and candidate.header.get("NAXIS", 0) >= 1 and candidate.data is not None:
            return index
    raise InputDataError(path, f"no image HDU (HDUs: {[type(h).__name__ for h in hdul]})")


def _quality_mask(hdul: fits.HDUList, index: int, shape: tuple[int, ...] | None) -> np.ndarray | None:
    for candidate in hdul:
        if candidate is hdul[index] or candidate.name not in QUALITY_EXTENSIONS:
            continue
        if isinstance(candidate, IMAGE_HDUS) and candidate.data is not None and candidate.data.shape == shape:
            return np.asarray(candidate.data) != 0
    return None


def _check_wcs(path: Path, wcs: WCS, shape: tuple[int, int]) -> None:
    ny, nx = shape
    try:
        # The centre and the corners must map to the sky and back (a singular CD matrix does not).
        x = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1], dtype=float)
        y = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1], dtype=float)
        lon, lat = wcs.pixel_to_world_values(x, y)
        back_x, back_y = wcs.world_to_pixel_values(lon, lat)
        good = np.all(np.isfinite([lon, lat, back_x, back_y])) and np.allclose(back_x, x, atol=0.01) \
            and np.allclose(back_y, y, atol=0.01)
    except Exception as error:  # the WCS library raises several types for broken headers
        raise InputDataError(path, f"celestial WCS cannot transform pixel coordinates: {error}") from error
    if not good:
        raise InputDataError(path, "celestial WCS is degenerate (pixel -> sky -> pixel does not round-trip)")


def provenance_cards(provenance: Mapping[str, Any]) -> list[tuple[str, Any, str] | tuple[str, str]]:
    """Header cards recording how a product was made.

    ``provenance`` may hold ``stage`` (str), ``inputs`` (mapping name -> path; each file's
    SHA-256 is recorded when it exists), ``parameters`` (JSON-serialisable, written as HISTORY
    cards ``ADPAR nnn: <piece>``; join the pieces to read it back)
    and ``history`` (list of str).
    """
    cards: list = [("ORIGIN", "astrodag", "software that wrote this file"),
                   ("ADVERS", __version__, "astrodag version")]
    if provenance.get("stage"):
        cards.append(("ADSTAGE", str(provenance["stage"]), "astrodag stage"))
    digests = dict(provenance.get("digests", {}))
    for number, (name, file) in enumerate(dict(provenance.get("inputs", {})).items(), start=1):
        cards.append((f"ADIN{number}K", str(name), "role of input file"))
        cards.append((f"ADIN{number}", Path(file).name, "input file name"))
        digest = digests.get(name) or (file_digest(file) if Path(file).is_file() else None)
        if digest:
            cards.append((f"ADSHA{number}", digest, ""))  # 64 hex digits leave no room for a comment
    if "parameters" in provenance:
        # JSON in numbered 56-character pieces that fit one HISTORY card each ("ADPAR 001: ...").
        text = json.dumps(provenance["parameters"], sort_keys=True, separators=(",", ":"), default=str)
        cards.extend(("HISTORY", f"ADPAR {i // 56 + 1:03d}: {text[i:i + 56]}") for i in range(0, len(text), 56))
    cards.extend(("HISTORY", str(line)) for line in provenance.get("history", ()))
    return cards


def write_image(path: str | Path, data: np.ndarray, wcs: WCS | fits.Header | None,
                provenance: Mapping[str, Any], *, unit: str | None = None, name: str | None = None,
                header: fits.Header | None = None, extensions: Sequence[fits.hdu.base.ExtensionHDU] = ()) -> None:
    """Write an image (and optional extension HDUs) atomically with provenance cards.

    Parameters
    ----------
    path : str or Path
        Output file; a ``.gz`` suffix writes it gzip-compressed.
    data : numpy.ndarray
        The primary image.
    wcs : astropy.wcs.WCS or astropy.io.fits.Header or None
        World coordinates of ``data`` (a Header is copied as given).
    provenance : mapping
        See :func:`provenance_cards`.
    unit : str, optional
        ``BUNIT``.
    name : str, optional
        ``EXTNAME`` of the primary HDU.
    header : astropy.io.fits.Header, optional
        Further cards for the primary header (e.g. measured quantities).
    extensions : sequence of HDU
        Extension HDUs appended after the primary one.
    """
    path = Path(path)
    primary_header = fits.Header()
    if isinstance(wcs, WCS):
        primary_header.update(wcs.to_header(relax=True))
    elif isinstance(wcs, fits.Header):
        primary_header.update(wcs)
    if header is not None:
        primary_header.update(header)
    if unit is not None:
        primary_header["BUNIT"] = unit
    if name:
        primary_header["EXTNAME"] = name
    for card in provenance_cards(provenance):
        if card[0] == "HISTORY":
            primary_header.add_history(card[1])
        else:
            primary_header[card[0]] = card[1:]
    hdul = fits.HDUList([fits.PrimaryHDU(data=data, header=primary_header), *extensions])
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            # No name and mtime=0 in the gzip header: the same content gives the same bytes.
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as handle:
                hdul.writeto(handle)
        else:
            hdul.writeto(tmp, overwrite=True)
