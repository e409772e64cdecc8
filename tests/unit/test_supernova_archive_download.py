"""Downloads against a local HTTP server (127.0.0.1) that fails, truncates and honours Range; FITS checks."""

import hashlib
import http.server
import json
import threading

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from astrodag.errors import ConfigError, InputDataError
from astrodag.supernova.archive.backends import LocalBackend
from astrodag.supernova.archive.download import (
    CACHE_NAME_MAX,
    TransferSettings,
    cache_name,
    cache_path,
    download_pair,
    fetch,
    url_file_name,
    write_plain_fits,
)
from astrodag.supernova.archive.pairing import PAIR_COLUMNS

PAYLOAD = bytes(range(256)) * 400  # 100 kB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = TransferSettings(max_attempts=3, backoff_seconds=0.5, timeout_seconds=5.0)


class Archive(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /<mode>/file.fits; the mode decides how the first request goes wrong."""

    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        mode = self.path.split("/")[1]
        first = not any(r[0] == self.path for r in self.requests)
        self.requests.append((self.path, self.headers.get("Range")))
        if mode == "missing":
            self.send_error(404, "Not Found")
            return
        if mode == "flaky" and first:
            self.send_error(503, "Service Unavailable")
            return
        body, start = PAYLOAD, 0
        if mode == "corrupt" and first:
            body = b"X" + PAYLOAD[1:]
        if mode == "always-corrupt":
            body = b"X" + PAYLOAD[1:]
        ranged = self.headers.get("Range")
        if ranged and mode != "no-range":
            start = int(ranged.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode in ("truncated", "no-range") and first:
            self.wfile.write(body[start:start + 30000])  # then the connection drops
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def sleeps():
    Archive.requests = []
    return []


def test_plain_download_checks_size_and_checksum(server, tmp_path, sleeps):
    result = fetch(f"{server}/ok/file.fits", tmp_path / "a.fits", size=len(PAYLOAD), checksum=SHA, settings=FAST,
                   sleep=sleeps.append)
    assert (tmp_path / "a.fits").read_bytes() == PAYLOAD
    assert (result.sha256, result.size, result.attempts, result.cache_hit) == (SHA, len(PAYLOAD), 1, False)
    assert not (tmp_path / "a.fits.part").exists() and sleeps == []
    again = fetch(f"{server}/ok/file.fits", tmp_path / "a.fits", size=len(PAYLOAD), checksum=SHA, settings=FAST)
    assert again.cache_hit and again.attempts == 0 and len(Archive.requests) == 1


def test_server_error_is_retried_with_backoff(server, tmp_path, sleeps):
    result = fetch(f"{server}/flaky/file.fits", tmp_path / "b.fits", size=len(PAYLOAD), settings=FAST,
                   sleep=sleeps.append)
    assert result.attempts == 2 and sleeps == [0.5]
    assert (tmp_path / "b.fits").read_bytes() == PAYLOAD


def test_interrupted_download_resumes_with_range(server, tmp_path, sleeps):
    result = fetch(f"{server}/truncated/file.fits", tmp_path / "c.fits", checksum=SHA, settings=FAST,
                   sleep=sleeps.append)
    assert result.attempts == 2 and (tmp_path / "c.fits").read_bytes() == PAYLOAD
    # The second request asked only for the missing bytes.
    assert [r[1] for r in Archive.requests] == [None, "bytes=30000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, sleeps):
    result = fetch(f"{server}/no-range/file.fits", tmp_path / "d.fits", size=len(PAYLOAD), settings=FAST,
                   sleep=sleeps.append)
    assert result.attempts == 2 and (tmp_path / "d.fits").read_bytes() == PAYLOAD


def test_corrupt_download_is_fetched_again(server, tmp_path, sleeps):
    result = fetch(f"{server}/corrupt/file.fits", tmp_path / "e.fits", checksum=SHA, settings=FAST,
                   sleep=sleeps.append)
    assert result.attempts == 2 and result.sha256 == SHA
    # A fresh transfer, not a resume of the bad bytes.
    assert [r[1] for r in Archive.requests] == [None, None]


def test_persistent_corruption_fails_naming_the_url(server, tmp_path, sleeps):
    url = f"{server}/always-corrupt/file.fits"
    with pytest.raises(InputDataError) as error:
        fetch(url, tmp_path / "f.fits", checksum=SHA, settings=FAST, sleep=sleeps.append)
    assert error.value.url == url and str(error.value).startswith(f"{url}: failed after 3 tries")
    assert "failed after 3 tries" in error.value.problem and "does not match" in error.value.problem
    assert sleeps == [0.5, 1.0] and not (tmp_path / "f.fits").exists() and not (tmp_path / "f.fits.part").exists()


def test_not_found_is_not_retried(server, tmp_path, sleeps):
    with pytest.raises(InputDataError, match="HTTP 404"):
        fetch(f"{server}/missing/file.fits", tmp_path / "g.fits", settings=FAST, sleep=sleeps.append)
    assert len(Archive.requests) == 1 and sleeps == []


def test_bad_cached_file_is_replaced(server, tmp_path, sleeps):
    target = tmp_path / "h.fits"
    target.write_bytes(b"old and wrong")
    result = fetch(f"{server}/ok/file.fits", target, size=len(PAYLOAD), settings=FAST, sleep=sleeps.append)
    assert not result.cache_hit and target.read_bytes() == PAYLOAD


def test_file_urls_and_unsupported_schemes(tmp_path):
    source = tmp_path / "src.fits"
    source.write_bytes(PAYLOAD)
    result = fetch(source.as_uri(), tmp_path / "cache" / "x.fits", size=len(PAYLOAD), checksum=SHA)
    assert result.sha256 == SHA and result.path.read_bytes() == PAYLOAD
    with pytest.raises(InputDataError, match="no such file"):
        fetch((tmp_path / "none.fits").as_uri(), tmp_path / "cache" / "y.fits")
    with pytest.raises(InputDataError, match="unsupported URL scheme 'mast'"):
        fetch("mast:HST/product/x_drz.fits", tmp_path / "z.fits")


def test_cache_keys_and_file_names():
    mast = "https://mast.stsci.edu/api/v0.1/Download/file?uri=mast:HST/product/u9o40504m_drz.fits"
    assert url_file_name(mast) == "u9o40504m_drz.fits"
    assert url_file_name("file:///a/b/sw001bb_sk.fits.gz") == "sw001bb_sk.fits.gz"
    assert cache_path("/cache", "123", mast).as_posix() == "/cache/123/u9o40504m_drz.fits"


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", ".", "...", "", ".hidden.fits", "a/b\\c.fits",
                                  "x" * 300 + ".fits.gz", "a b.fits", "a..b.fits", "\u00e9t\u00e9.fits", "-\x00-"])
def test_cache_names_are_safe_bounded_and_stable(tmp_path, name):
    safe = cache_name(name)
    assert safe == cache_name(name)  # stable
    assert 0 < len(safe) <= CACHE_NAME_MAX and not safe.startswith(".") and ".." not in safe
    assert "/" not in safe and "\\" not in safe and safe.isascii()
    assert (tmp_path / safe).resolve().parent == tmp_path.resolve()
    if name.endswith(".fits.gz"):
        assert safe.endswith(".fits.gz")  # the extension survives the cut


def test_cache_names_keep_safe_names_and_separate_cleaned_ones():
    assert cache_name("u9o40504m_drz.fits") == "u9o40504m_drz.fits"
    assert cache_name("a b.fits") != cache_name("a_b.fits") != cache_name("a:b.fits") != cache_name("a b.fits.gz")
    assert cache_path("/cache", "../..", "file:///a/..%2F..%2Fx.fits").parent.parent.as_posix() == "/cache"


def test_transfer_settings_validation():
    assert TransferSettings.from_config({"max_attempts": 2}).max_attempts == 2
    with pytest.raises(ConfigError, match="supernova.archive.transfer.retries"):
        TransferSettings.from_config({"retries": 2})
    with pytest.raises(ConfigError, match="must be > 0"):
        TransferSettings.from_config({"timeout_seconds": 0})


# ---------------------------------------------------------------------------------- FITS


def image_file(path, fmt, extension=False):
    data = np.arange(48 * 40, dtype=np.float32).reshape(40, 48)
    header = fits.Header({"FILTER": "B", "BUNIT": "count"})
    if fmt == "fits.fz":
        hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data, header, name="SCI", quantize_level=-0.01)]
    elif extension:
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, header, name="SCI")]
    else:
        hdus = [fits.PrimaryHDU(data, header), fits.ImageHDU(np.zeros((40, 48), np.uint8), name="DQ")]
    fits.HDUList(hdus).writeto(path)
    return data


@pytest.mark.parametrize("fmt, extension", [("fits", False), ("fits", True), ("fits.gz", False), ("fits.fz", True)])
def test_write_plain_fits_keeps_layout_and_decompresses(tmp_path, fmt, extension):
    source = tmp_path / f"in.{fmt}"
    data = image_file(source, fmt, extension)
    layout = write_plain_fits(source, tmp_path / "out.fits")
    assert (tmp_path / "out.fits").read_bytes()[:6] == b"SIMPLE"  # plain, not gzip
    with fits.open(tmp_path / "out.fits") as hdul:
        assert all(not isinstance(h, fits.CompImageHDU) for h in hdul)
        image = hdul[layout["image_hdu"]]
        np.testing.assert_allclose(image.data, data, atol=0.01)
        assert image.header["FILTER"] == "B"
    assert layout["image_hdu"] == (1 if extension else 0)


def test_write_plain_fits_rejects_broken_files(tmp_path):
    (tmp_path / "text.fits").write_text("not FITS at all")
    with pytest.raises(InputDataError, match="not a readable FITS file"):
        write_plain_fits(tmp_path / "text.fits", tmp_path / "o.fits", url="file:///x")
    image_file(tmp_path / "whole.fits", "fits")
    (tmp_path / "cut.fits").write_bytes((tmp_path / "whole.fits").read_bytes()[:5000])
    with pytest.raises(InputDataError, match="truncated|not a readable"):
        write_plain_fits(tmp_path / "cut.fits", tmp_path / "o.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("W", "E", array=[1.0])])]).writeto(
        tmp_path / "table.fits")
    with pytest.raises(InputDataError, match="no 2-D image HDU"):
        write_plain_fits(tmp_path / "table.fits", tmp_path / "o.fits")
    assert not (tmp_path / "o.fits").exists()


def test_download_pair_from_a_local_archive(tmp_path):
    archive = tmp_path / "archive"
    (archive / "files").mkdir(parents=True)
    image_file(archive / "files" / "ref.fits.fz", "fits.fz")
    data = image_file(archive / "files" / "sci.fits.gz", "fits")  # astropy gzips a .gz name
    assert (archive / "files" / "sci.fits.gz").read_bytes()[:2] == b"\x1f\x8b"
    rows = []
    for obsid, name in (("1", "ref.fits.fz"), ("2", "sci.fits.gz")):
        body = (archive / "files" / name).read_bytes()
        rows.append({"obsid": obsid, "obs_id": obsid, "obs_collection": "SWIFT", "instrument_name": "UVOT",
                     "filters": "B", "target_name": "x", "dataproduct_type": "image", "calib_level": 2,
                     "t_min": 55000.0 + int(obsid), "t_max": 55000.1 + int(obsid), "t_exptime": 100.0, "s_ra": 10.0,
                     "s_dec": 10.0, "s_region": "POLYGON 9.9 9.9 10.1 9.9 10.1 10.1 9.9 10.1",
                     "dataURL": f"files/{name}", "em_min": 390.0, "em_max": 490.0, "size": len(body),
                     "checksum": hashlib.sha256(body).hexdigest()})
    pd.DataFrame(rows).to_csv(archive / "observations.csv", index=False)
    pair = {column: "" for column in PAIR_COLUMNS}
    pair.update(pair_id="SN_A__SWIFT_UVOT_B__1_2", sn_name="SN A", reference_obsid="1", science_obsid="2",
                reference_url="files/ref.fits.fz", science_url="files/sci.fits.gz",
                reference_size=rows[0]["size"], science_size=rows[1]["size"],
                reference_checksum=rows[0]["checksum"], science_checksum=rows[1]["checksum"])
    pd.DataFrame([pair]).to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "pair"
    record = download_pair(tmp_path / "pairs.csv", pair["pair_id"], LocalBackend(archive), tmp_path / "cache", out)
    assert sorted(p.name for p in out.iterdir()) == ["download.json", "reference.fits", "science.fits"]
    assert json.loads((out / "download.json").read_text()) == json.loads(json.dumps(record, default=str))
    assert record["science"]["sha256"] == rows[1]["checksum"] and record["science"]["attempts"] == 1
    assert (tmp_path / "cache" / "1" / "ref.fits.fz").is_file()  # the original stays compressed in the cache
    with fits.open(out / "science.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, data)
    again = download_pair(tmp_path / "pairs.csv", pair["pair_id"], LocalBackend(archive), tmp_path / "cache", out)
    assert again["reference"]["cache_hit"] and again["science"]["cache_hit"]
    with pytest.raises(InputDataError, match="no pair 'nope'"):
        download_pair(tmp_path / "pairs.csv", "nope", LocalBackend(archive), tmp_path / "cache", out)


def test_two_jobs_fetching_one_product_share_it(server, tmp_path, sleeps):
    results = []
    jobs = [threading.Thread(target=lambda: results.append(fetch(f"{server}/ok/file.fits", tmp_path / "s.fits",
                                                                 size=len(PAYLOAD), settings=FAST)))
            for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert sorted(r.cache_hit for r in results) == [False, True] and len(Archive.requests) == 1
    assert (tmp_path / "s.fits").read_bytes() == PAYLOAD
