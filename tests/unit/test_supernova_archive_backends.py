"""Archive backends: a local archive, and MAST replayed from recorded responses (never the network)."""

import json
import re
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import requests
from astroquery import mast
from astroquery.utils.mocks import MockResponse

from astrodag.errors import ConfigError, InputDataError
from astrodag.supernova.archive.backends import (
    QUERY_COLUMNS,
    BackendSettings,
    LocalBackend,
    MastBackend,
    choose_product,
    make_backend,
    query_supernova,
)
from astrodag.supernova.archive.download import DownloadError, TransferSettings

DATA = Path(__file__).resolve().parents[1] / "data" / "mast"
M101 = (210.773796, 54.273661)  # SN 2011fe
NOW = TransferSettings(max_attempts=3, backoff_seconds=1.0)


# ---------------------------------------------------------------------------------- MAST replay


class Replay:
    """Stands in for astroquery's ``PortalAPI._request``, answering from the recorded files.

    ``observations`` names the recording served for position queries; ``failures`` makes that many
    requests fail first with a connection error.
    """

    def __init__(self, observations, failures=0):
        self.observations = observations
        self.failures = failures
        self.requests = []

    # Set on the class, an instance is not bound: it is called as _request(method, url, ...).
    def __call__(self, method="POST", url=None, params=None, data=None, headers=None, files=None,
                 stream=False, auth=None, retrieve_all=True):
        if "columnsconfig" in url:
            return [MockResponse((DATA / "columnsconfig.json").read_bytes())]
        if self.failures:
            self.failures -= 1
            raise requests.exceptions.ConnectionError("connection reset by peer")
        request = json.loads(urllib.parse.unquote(data[len("request="):]))
        self.requests.append(request)
        if request["service"] == "Mast.Caom.Filtered.Position":
            return [MockResponse((DATA / self.observations).read_bytes())]
        assert request["service"] == "Mast.Caom.Products", request["service"]
        # The recording is the product list of one HST observation: serve it as the asked ones'.
        recorded = json.loads((DATA / "products.json").read_text())
        recorded["data"] = [dict(row, obsID=int(obsid)) for obsid in request["params"]["obsid"].split(",")
                            for row in recorded["data"]]
        return [MockResponse(json.dumps(recorded).encode())]


@pytest.fixture
def replay(monkeypatch):
    def install(observations, failures=0):
        fake = Replay(observations, failures)
        monkeypatch.setattr(mast.discovery_portal.PortalAPI, "_request", fake)
        return fake
    return install


def test_mast_query_asks_for_science_images_around_the_position(replay):
    fake = replay("advSearchPos.json")
    frame = MastBackend(NOW).query(*M101, 3.0, missions=["galex"])
    query = fake.requests[0]
    assert query["service"] == "Mast.Caom.Filtered.Position"
    assert query["params"]["position"] == f"{M101[0]}, {M101[1]}, 0.05"  # 3 arcmin in degrees
    assert {f["paramName"]: f["values"] for f in query["params"]["filters"]} == {
        "dataproduct_type": ["image"], "intentType": ["science"], "obs_collection": ["GALEX"]}
    # One product-list request for the six distinct GALEX obsids (NUV and FUV share them).
    assert len(fake.requests[1]["params"]["obsid"].split(",")) == 6
    # The recorded products are HST files, not GALEX NUV/FUV intensity maps: nothing to download.
    assert frame.empty and list(frame.columns) == list(QUERY_COLUMNS)


def test_mast_query_picks_the_recommended_science_image(replay):
    replay("caom.json")
    frame = MastBackend(NOW).query(23.13, 60.64, 2.0)
    recorded = pd.DataFrame(json.loads((DATA / "caom.json").read_text())["data"])
    # HST and HLA observations get the drizzled image; the GALEX one has no NUV map and is dropped.
    assert len(frame) == (recorded["obs_collection"] != "GALEX").sum() == 18
    assert set(frame["dataURL"]) == {
        "https://mast.stsci.edu/api/v0.1/Download/file?uri=mast:HST/product/u9o40504m_drz.fits"}
    assert (frame["size"] == 27227520).all() and (frame["checksum"] == "").all()
    assert list(frame.columns) == list(QUERY_COLUMNS)
    assert frame["t_min"].is_monotonic_increasing
    first = frame.iloc[0]
    assert first["s_region"].startswith("POLYGON") and isinstance(first["obsid"], str)


def test_mast_errors_are_retried_with_backoff(replay):
    fake = replay("caom.json", failures=2)
    sleeps = []
    frame = MastBackend(NOW, sleep=sleeps.append).query(23.13, 60.64, 2.0)
    assert len(frame) == 18 and sleeps == [1.0, 2.0] and len(fake.requests) == 2


def test_mast_gives_up_naming_the_service(replay):
    replay("caom.json", failures=5)
    with pytest.raises(DownloadError) as error:
        MastBackend(NOW, sleep=lambda s: None).query(23.13, 60.64, 2.0)
    assert error.value.url.startswith("https://mast.stsci.edu/api/v0/invoke")
    assert "failed after 3 tries" in error.value.problem and "connection reset" in error.value.problem


def test_mast_product_choice():
    products = pd.DataFrame({
        "productFilename": ["AIS_1-fd-int.fits.gz", "AIS_1-nd-int.fits.gz", "AIS_1-nd-cnt.fits.gz", "x_c0m.fits"],
        "productGroupDescription": [None, None, None, "Minimum Recommended Products"],
        "size": [10, 20, 30, 5], "dataURI": ["a", "b", "c", "d"]})
    assert choose_product(products.iloc[:3], "GALEX", "NUV")["dataURI"] == "b"
    assert choose_product(products.iloc[:3], "GALEX", "FUV")["dataURI"] == "a"
    assert choose_product(products, "HST", "F814W")["dataURI"] == "d"  # recommended first
    assert choose_product(products.iloc[:0], "HST", "F814W") is None


def test_mast_download_needs_an_http_url():
    with pytest.raises(DownloadError, match="needs an http"):
        MastBackend().resolve_url({"obsid": "1", "dataURL": "mast:HST/product/x.fits"})


# ---------------------------------------------------------------------------------- local archive


def local_archive(tmp_path, rows):
    (tmp_path / "observations.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    return tmp_path


def row(obsid, ra, dec, half, mission="SWIFT", url=None, region=None):
    return {"obsid": obsid, "obs_id": obsid, "obs_collection": mission, "instrument_name": "UVOT", "filters": "B",
            "target_name": "t", "dataproduct_type": "image", "calib_level": 2, "t_min": 55000.0 + int(obsid),
            "t_max": 55000.1 + int(obsid), "t_exptime": 100.0, "s_ra": ra, "s_dec": dec,
            "s_region": region if region is not None else "POLYGON " + " ".join(
                f"{ra + e * half} {dec + n * half}" for e, n in ((-1, -1), (1, -1), (1, 1), (-1, 1))),
            "dataURL": url or f"files/{obsid}.fits", "em_min": 1.0, "em_max": 2.0, "size": 10, "checksum": ""}


def test_local_query_is_a_footprint_cone_search(tmp_path):
    archive = local_archive(tmp_path, [
        row("1", 10.0, 0.0, 0.02),  # holds the position
        row("2", 10.06, 0.0, 0.02),  # its edge 0.04 deg = 2.4' away
        row("3", 10.2, 0.0, 0.02),  # 10.8' away
        row("4", 10.0, 0.0, 0.02, mission="GALEX"),
        row("5", 10.01, 0.0, 0.0, region=""),  # no footprint: its centre 0.6' away counts
    ])
    backend = make_backend("local", archive_dir=archive)
    assert backend.query(10.0, 0.0, 3.0)["obsid"].tolist() == ["1", "2", "4", "5"]
    assert backend.query(10.0, 0.0, 1.0)["obsid"].tolist() == ["1", "4", "5"]
    assert backend.query(10.0, 0.0, 3.0, missions=["galex"])["obsid"].tolist() == ["4"]
    assert list(backend.query(10.0, 0.0, 3.0).columns) == list(QUERY_COLUMNS)


def test_local_urls_resolve_against_the_archive(tmp_path):
    archive = local_archive(tmp_path, [row("1", 10.0, 0.0, 0.02)])
    backend = LocalBackend(archive)
    root = archive.resolve()
    assert backend.resolve_url({"obsid": "1", "dataURL": "files/1.fits"}) == (root / "files/1.fits").as_uri()
    inside = (root / "files" / "x.fits").as_uri()
    assert backend.resolve_url({"obsid": "1", "dataURL": inside}) == inside
    assert backend.resolve_url({"obsid": "1", "dataURL": str(root / "files" / "x.fits")}) == inside
    assert backend.resolve_url({"obsid": "1", "dataURL": "files/../files/x.fits"}) == inside
    (archive / "files").mkdir()
    (archive / "files" / "1.fits").write_bytes(b"0123456789")
    path = backend.download({"obsid": "1", "dataURL": "files/1.fits", "size": 10, "checksum": ""}, tmp_path / "c")
    assert path == tmp_path / "c" / "1" / "1.fits" and path.read_bytes() == b"0123456789"


def outside_archive(tmp_path):
    """An archive beside a folder ``outside`` holding a FITS-named file, a link to it, and a link inside."""
    archive = tmp_path / "archive"
    (archive / "files").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.fits").write_bytes(b"secret")
    (archive / "files" / "1.fits").write_bytes(b"inside")
    (archive / "files" / "out.fits").symlink_to(tmp_path / "outside" / "x.fits")
    (archive / "files" / "alias.fits").symlink_to(archive / "files" / "1.fits")
    return archive


@pytest.mark.parametrize("url", [
    "../outside/x.fits",
    "files/../../outside/x.fits",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "file:///etc/passwd",
    "FILE:///etc/passwd",
    "file://localhost/etc/passwd",
    "file:../outside/x.fits",
    "file://{outside}/x.fits",
    "{outside}/x.fits",
    "files/out.fits",  # a link inside pointing out
])
def test_local_paths_outside_the_archive_are_refused_before_any_copy(tmp_path, url):
    archive = outside_archive(tmp_path)
    url = url.format(outside=(tmp_path / "outside").as_posix())
    rows = [row("1", 10.0, 0.0, 0.02, url=url)]
    local_archive(archive, rows)
    backend = LocalBackend(archive)
    message = rf"observations\.csv: observation 1: dataURL '{re.escape(url)}' leads outside the archive directory"
    with pytest.raises(InputDataError, match=message) as caught:
        backend.fetch({"obsid": "1", "dataURL": url, "size": None, "checksum": ""}, tmp_path / "cache")
    assert "allow_outside_archive" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "cache").exists()  # nothing was copied, not even a lock file
    with pytest.raises(InputDataError, match=message):
        backend.query(10.0, 0.0, 3.0)  # the query stage already refuses the row


def test_local_links_and_paths_inside_the_archive_are_used(tmp_path):
    archive = outside_archive(tmp_path)
    local_archive(archive, [row("1", 10.0, 0.0, 0.02, url="files/alias.fits"),
                            row("2", 10.0, 0.0, 0.02, url=str(archive / "files" / "1.fits"))])
    backend = LocalBackend(archive)
    assert backend.query(10.0, 0.0, 3.0)["obsid"].tolist() == ["1", "2"]
    path = backend.download({"obsid": "1", "dataURL": "files/alias.fits", "size": 6, "checksum": ""}, tmp_path / "c")
    assert path.read_bytes() == b"inside"


def test_allow_outside_archive_lets_outside_paths_through(tmp_path):
    archive = outside_archive(tmp_path)
    local_archive(archive, [row("1", 10.0, 0.0, 0.02, url="../outside/x.fits")])
    backend = BackendSettings.from_config({"allow_outside_archive": True}).backend("local", archive)
    assert backend.query(10.0, 0.0, 3.0)["obsid"].tolist() == ["1"]
    path = backend.download({"obsid": "1", "dataURL": "../outside/x.fits", "size": 6, "checksum": ""},
                            tmp_path / "c")
    assert path.read_bytes() == b"secret"
    with pytest.raises(InputDataError, match="outside the archive"):
        BackendSettings.from_config({}).backend("local", archive).query(10.0, 0.0, 3.0)
    with pytest.raises(ConfigError, match="allow_outside_archive.: must be true or false"):
        BackendSettings.from_config({"allow_outside_archive": "yes"})
    with pytest.raises(InputDataError, match="names another host"):
        backend.resolve_url({"obsid": "1", "dataURL": "file://server/share/x.fits"})


def test_local_archive_errors(tmp_path):
    with pytest.raises(InputDataError, match="no observations.csv"):
        LocalBackend(tmp_path)
    (tmp_path / "observations.csv").write_text("obsid,t_min\n1,55000\n")
    with pytest.raises(InputDataError, match=r"observations\.csv: missing column\(s\) obs_id, obs_collection"):
        LocalBackend(tmp_path)


def test_make_backend_and_settings():
    with pytest.raises(ConfigError, match="unknown backend 'ftp'"):
        make_backend("ftp")
    with pytest.raises(ConfigError, match="needs an archive directory"):
        make_backend("local")
    settings = BackendSettings.from_config({"transfer": {"max_attempts": 2}, "min_calib_level": 3})
    assert settings.transfer.max_attempts == 2
    assert settings.backend("mast").min_calib_level == 3
    with pytest.raises(ConfigError, match="supernova.archive.transfer.tries"):
        BackendSettings.from_config({"transfer": {"tries": 2}})


def test_query_stage_writes_sn_name_and_uses_the_cache(tmp_path):
    catalog = tmp_path / "sne.csv"
    catalog.write_text("sn_name,ra,dec,discovery_mjd,type,redshift,host\nSN 2099a,10.0,0.0,55001.5,Ia,,X\n")
    (tmp_path / "archive").mkdir()
    backend = LocalBackend(local_archive(tmp_path / "archive", [row("1", 10.0, 0.0, 0.02), row("2", 10.0, 0.0, 0.02)]))
    frame = query_supernova(catalog, "SN_2099a", backend, tmp_path / "q.csv", cache_dir=tmp_path / "cache")
    written = pd.read_csv(tmp_path / "q.csv", dtype={"obsid": str})
    assert written.columns[0] == "sn_name" and (written["sn_name"] == "SN 2099a").all()
    assert written["obsid"].tolist() == frame["obsid"].tolist() == ["1", "2"]
    cached = list((tmp_path / "cache" / "queries").glob("SN_2099a_local_*.csv"))
    assert len(cached) == 1
    backend.query = None  # a second run must not query again
    query_supernova(catalog, "SN 2099a", backend, tmp_path / "q2.csv", cache_dir=tmp_path / "cache")
    assert (tmp_path / "q2.csv").read_text() == (tmp_path / "q.csv").read_text()
