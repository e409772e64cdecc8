"""FITS loading and writing: every archive layout, every bad input named in the design."""

import gzip

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from imaging_helpers import make_wcs

from astrodag import __version__
from astrodag.errors import InputDataError
from astrodag.io import file_digest
from astrodag.supernova.imaging.fitsio import load_image, write_image

SHAPE = (40, 50)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.normal(100.0, 5.0, SHAPE).astype(np.float32), make_wcs(SHAPE)


def _header(wcs, **cards):
    header = wcs.to_header()
    header.update(cards)
    return header


def test_primary_hdu(tmp_path, image):
    data, wcs = image
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(data, _header(wcs, BUNIT="ADU", GAIN=2.0, ZEROPT=24.5, SATURATE=1e5)).writeto(path)
    loaded = load_image(path)
    assert loaded.data.dtype == np.float32 and loaded.shape == SHAPE
    np.testing.assert_array_equal(loaded.data, data)
    assert loaded.unit == "ADU" and loaded.gain == 2.0 and loaded.zeropoint == 24.5 and loaded.saturation == 1e5
    assert loaded.hdu == 0 and not loaded.mask.any()
    np.testing.assert_allclose(loaded.wcs.wcs.crval, wcs.wcs.crval)


def test_first_image_extension_inherits_primary_keywords(tmp_path, image):
    data, wcs = image
    path = tmp_path / "b.fits"
    primary = fits.PrimaryHDU(header=fits.Header({"TELESCOP": "SWIFT", "EXPTIME": 200.0}))
    fits.HDUList([primary, fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])], name="TAB"),
                  fits.ImageHDU(data, _header(wcs), name="SCI")]).writeto(path)
    loaded = load_image(path)
    assert loaded.hdu == "SCI" and loaded.header["TELESCOP"] == "SWIFT" and loaded.header["EXPTIME"] == 200.0
    assert load_image(path, hdu="SCI").hdu == "SCI"
    with pytest.raises(InputDataError, match="no HDU 'NOPE'"):
        load_image(path, hdu="NOPE")
    with pytest.raises(InputDataError, match="holds no image"):
        load_image(path, hdu="TAB")


def test_gzip_and_tile_compressed(tmp_path, image):
    data, wcs = image
    plain = tmp_path / "c.fits"
    fits.PrimaryHDU(data, _header(wcs)).writeto(plain)
    gz = tmp_path / "c.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(load_image(gz).data, data)

    counts = np.round(data).astype(np.int32)  # integers compress losslessly
    fz = tmp_path / "c.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(counts, _header(wcs), name="SCI")]).writeto(fz)
    loaded = load_image(fz)
    np.testing.assert_array_equal(loaded.data, counts.astype(np.float32))
    np.testing.assert_allclose(loaded.wcs.pixel_scale_matrix, wcs.pixel_scale_matrix)


def test_float64_kept_on_request_and_degenerate_axis_dropped(tmp_path, image):
    data, wcs = image
    path = tmp_path / "d.fits"
    header = WCS(naxis=3).to_header()
    header.update(_header(wcs))
    header["CTYPE3"] = "FREQ"
    fits.PrimaryHDU(data.astype(np.float64)[None], header).writeto(path)
    loaded = load_image(path, dtype=None)
    assert loaded.data.dtype == np.float64 and loaded.shape == SHAPE and loaded.wcs.naxis == 2


def test_mask_from_nan_saturation_and_quality_extension(tmp_path, image):
    data, wcs = image
    data = data.copy()
    data[1, 2] = np.nan
    data[3, 4] = 2e5
    quality = np.zeros(SHAPE, np.int16)
    quality[5, 6] = 4
    path = tmp_path / "e.fits"
    fits.HDUList([fits.PrimaryHDU(data, _header(wcs, SATURATE=1e5)), fits.ImageHDU(quality, name="DQ")]).writeto(path)
    mask = load_image(path).mask
    assert mask[1, 2] and mask[3, 4] and mask[5, 6] and mask.sum() == 3


def test_gain_and_read_noise_in_data_units(tmp_path, image):
    data, wcs = image
    cases = [({"BUNIT": "count/s", "GAIN": 150.0, "EXPTIME": 100.0, "RDNOISE": 3.0}, 150.0, 0.02),
             ({"BUNIT": "electron/s", "EXPTIME": 100.0}, 100.0, None),
             ({"BUNIT": "electron"}, 1.0, None),
             ({"BUNIT": "ADU"}, None, None)]
    for number, (cards, gain, read_noise) in enumerate(cases):
        path = tmp_path / f"g{number}.fits"
        fits.PrimaryHDU(data, _header(wcs, **cards)).writeto(path)
        loaded = load_image(path)
        assert loaded.gain == gain and loaded.read_noise == (pytest.approx(read_noise) if read_noise else None)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("junk", "not a readable FITS file"),
    ("truncated", "not a readable FITS file"),
    ("truncated_gz", "not a readable FITS file"),
    ("table_only", "no image HDU"),
    ("cube", "3-D array"),
    ("no_wcs", "no celestial WCS"),
    ("singular_wcs", "WCS"),
    ("all_nan", "no finite pixel"),
])
def test_bad_inputs_name_the_file(tmp_path, image, case, message):
    data, wcs = image
    path = tmp_path / f"{case}.fits"
    if case == "junk":
        path.write_bytes(b"this is not FITS" * 300)
    elif case in ("truncated", "truncated_gz"):
        full = tmp_path / "full.fits"
        fits.PrimaryHDU(data, _header(wcs)).writeto(full)
        raw = full.read_bytes()
        if case == "truncated":
            path.write_bytes(raw[: len(raw) - 3000])
        else:
            packed = gzip.compress(raw)
            path = tmp_path / "truncated.fits.gz"
            path.write_bytes(packed[: len(packed) // 2])
    elif case == "table_only":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]) \
            .writeto(path)
    elif case == "cube":
        fits.PrimaryHDU(np.stack([data, data, data]), _header(wcs)).writeto(path)
    elif case == "no_wcs":
        fits.PrimaryHDU(data).writeto(path)
    elif case == "singular_wcs":
        header = _header(wcs)
        header["PC1_1"] = header["PC1_2"] = header["PC2_1"] = header["PC2_2"] = 0.0
        fits.PrimaryHDU(data, header).writeto(path)
    elif case == "all_nan":
        fits.PrimaryHDU(np.full(SHAPE, np.nan, np.float32), _header(wcs)).writeto(path)
    with pytest.raises(InputDataError, match=message) as error:
        load_image(path)
    assert error.value.path == path


def test_write_image_is_atomic_with_provenance(tmp_path, image):
    data, wcs = image
    source = tmp_path / "in.fits"
    fits.PrimaryHDU(data, _header(wcs)).writeto(source)
    out = tmp_path / "out" / "product.fits"
    provenance = {"stage": "difference", "inputs": {"science": source},
                  "parameters": {"settings": {"a": 1, "long": "x" * 150}, "seed": 3}, "history": ["made in a test"]}
    write_image(out, data, wcs, provenance, unit="sigma", extensions=[fits.ImageHDU(np.ones((3, 3)), name="PSF")])
    assert sorted(p.name for p in out.parent.iterdir()) == ["product.fits"]  # no temporary left behind
    with fits.open(out) as hdul:
        header = hdul[0].header
        assert header["ADVERS"] == __version__ and header["ADSTAGE"] == "difference"
        assert header["ADIN1K"] == "science" and header["ADIN1"] == "in.fits"
        assert header["ADSHA1"] == file_digest(source)
        history = "".join(str(h).split(": ", 1)[1] for h in header["HISTORY"] if str(h).startswith("ADPAR"))
        assert '"seed":3' in history and "x" * 150 in history
        assert "made in a test" in str(header["HISTORY"]) and hdul["PSF"].data.shape == (3, 3)
    loaded = load_image(out)
    assert loaded.unit == "sigma"
    np.testing.assert_allclose(loaded.wcs.wcs.crval, wcs.wcs.crval)

    gz = tmp_path / "product.fits.gz"
    write_image(gz, data, wcs, provenance)
    np.testing.assert_array_equal(load_image(gz).data, data)
    first = gz.read_bytes()
    write_image(gz, data, wcs, provenance)
    assert gz.read_bytes() == first  # deterministic bytes (no timestamps)
