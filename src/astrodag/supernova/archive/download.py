"""Robust downloads of archive products into a local cache, and the per-pair download stage.

``fetch`` copies one URL (``http``, ``https`` or ``file``) to a path:

* the bytes go to ``<path>.part`` and are renamed onto ``path`` only once they check out, so an
  interrupted job never leaves a file that looks complete;
* an interrupted HTTP transfer resumes from the ``.part`` file with an HTTP ``Range`` request (a
  server that ignores the range sends the whole file, which then replaces the partial one);
* a transfer is checked against the expected size and SHA-256 checksum when they are known (and
  against the server's ``Content-Length``); a short file is resumed, a corrupt one deleted and
  fetched again;
* failures that may pass (connection errors, time-outs, HTTP 408/429/5xx, short or corrupt data)
  are retried with exponential back-off, ``backoff_seconds * 2**(attempt - 1)``; the last failure,
  or a permanent one (HTTP 404, a missing local file), raises ``DownloadError`` (an
  ``InputDataError``) naming the URL.

The cache holds each product at ``<cache_dir>/<obsid>/<file name>`` (``cache_path``; both names made safe
by ``cache_name``, so no URL or obsid can place a file outside the cache folder): a file already
there that matches the expected size and checksum is used without a transfer. A lock file beside it
(``flock``) keeps two jobs from fetching the same product at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from astrodag import __version__
from astrodag.errors import InputDataError
from astrodag.io import atomic_path, file_digest, read_table, write_json
from astrodag.settings import Settings, number, setting

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRY_HTTP = {408, 429}
# Longest cache file or folder name: with the ".part"/".lock" suffixes well under the usual 255 bytes.
CACHE_NAME_MAX = 100
_SAFE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSION = re.compile(r"(?:\.[A-Za-z0-9]{1,8}){1,2}$")

T = TypeVar("T")


@dataclass(frozen=True)
class TransferSettings(Settings):
    """Retries and time-outs of archive queries and downloads (keys of ``supernova.archive.transfer``).

    Attributes
    ----------
    max_attempts : int
        Tries per query or file (>= 1), the first included. Default 5.
    backoff_seconds : float
        Wait before the second try (>= 0); it doubles before each further one. Default 2.0.
    timeout_seconds : float
        Socket time-out of one download request (> 0); MAST queries keep astroquery's own
        (``astroquery.mast.conf.timeout``). Default 60.0.
    """

    PREFIX: ClassVar[str] = "supernova.archive.transfer"

    max_attempts: int = setting(5, number(1, integer=True))
    backoff_seconds: float = setting(2.0, number(0.0))
    timeout_seconds: float = setting(60.0, number(0.0, low_open=True))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return self.backoff_seconds * 2.0 ** (attempt - 1)


class DownloadError(InputDataError):
    """An archive query or product that could not be fetched intact; names the URL as written.

    (``InputDataError`` keeps its subject as a ``Path``, which would fold ``https://`` into ``https:/``.)
    """

    def __init__(self, url: str, problem: str):
        super().__init__(url, problem)
        self.url = url
        self.args = (f"{url}: {problem}",)


class TransientError(Exception):
    """A failure worth another try (network trouble, a server error, a short or corrupt transfer)."""


class _PermanentError(Exception):
    """A failure that another try will not cure (HTTP 404, a missing file, an unsupported URL)."""


def with_retries(action: Callable[[], T], target: str, settings: TransferSettings,
                 sleep: Callable[[float], None] = time.sleep,
                 transient: tuple[type[BaseException], ...] = (TransientError,)) -> tuple[T, int]:
    """Run ``action`` until it succeeds, retrying the ``transient`` exceptions with exponential back-off.

    Returns ``(result, attempts)``; after the last try raises ``DownloadError(target, ...)`` with the
    last error.
    """
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return action(), attempt
        except transient as error:
            last = f"{type(error).__name__}: {error}" if not isinstance(error, TransientError) else str(error)
            if attempt == settings.max_attempts:
                break
            log.warning("%s: try %d of %d failed (%s); retrying in %.1f s", target, attempt, settings.max_attempts,
                        last, settings.delay(attempt))
            sleep(settings.delay(attempt))
    raise DownloadError(target, f"failed after {settings.max_attempts} tries: {last}")


# --------------------------------------------------------------------------------------------
# one file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch`` did: where the file is, what it holds, and whether it came from the cache."""

    url: str
    path: Path
    size: int
    sha256: str
    cache_hit: bool
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {**asdict(self), "path": str(self.path)}


def cache_name(name: str) -> str:
    """A name for the cache made from ``name``: ``[A-Za-z0-9_.-]`` only, no leading dot, no ``..``, short.

    A name that is already so (every MAST and synthetic product name) is kept as it is. Any
    other loses its unsafe characters (each run becomes ``_``, each run of dots one dot), is cut to
    ``CACHE_NAME_MAX`` characters, and gets the first 12 hex digits of the SHA-256 of the original
    before its extension (``.fits.gz`` kept), so that two names differing only in what was removed
    stay apart. The same name always gives the same result.

    >>> cache_name("../../etc/passwd")
    'etc_passwd_3754d6cb3a38'
    """
    name = str(name)
    if len(name) <= CACHE_NAME_MAX and _SAFE_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    cleaned = re.sub(r"\.{2,}", ".", _UNSAFE_CHARACTERS.sub("_", name)).strip("._")
    extension = _EXTENSION.search(cleaned)
    extension = extension.group(0) if extension else ""
    stem = cleaned[:len(cleaned) - len(extension)].strip("._")
    stem = stem[:CACHE_NAME_MAX - len(extension) - len(digest) - 1]
    return f"{stem}_{digest}{extension}" if stem else f"{digest}{extension}"


def url_file_name(url: str) -> str:
    """The product's file name in ``url`` (the ``uri=`` parameter of a MAST download URL, else the path), made safe.

    See ``cache_name``.
    """
    parts = urllib.parse.urlsplit(url)
    uri = urllib.parse.parse_qs(parts.query).get("uri")
    path = uri[0] if uri else parts.path
    name = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
    if not name:
        raise DownloadError(url, "the URL names no file")
    return cache_name(name)


def cache_path(cache_dir: str | Path, obsid: str, url: str) -> Path:
    """``<cache_dir>/<obsid>/<file name of url>``: products with one name in two observations stay apart.

    Both parts pass through ``cache_name``, so the path always lies two levels inside ``cache_dir``.
    """
    return Path(cache_dir) / cache_name(str(obsid)) / url_file_name(url)


def _expected(size: Any, checksum: Any) -> tuple[int | None, str | None]:
    """Normalised expectations: a positive int size or None, a lower-case hex SHA-256 or None."""
    try:
        size = int(size) if size is not None and str(size).strip() not in ("", "nan", "<NA>") else None
    except (TypeError, ValueError):
        size = None
    checksum = str(checksum).strip().lower() if checksum is not None else ""
    return (size if size and size > 0 else None), (checksum if len(checksum) == 64 else None)


def _check(path: Path, size: int | None, checksum: str | None) -> tuple[str | None, str, bool]:
    """``(problem, sha256, resumable)``: problem is None when ``path`` matches; a short file is resumable."""
    actual = path.stat().st_size
    if size is not None and actual < size:
        return f"short file: {actual} of {size} bytes", "", True
    if size is not None and actual > size:
        return f"file is {actual} bytes, {size} expected", "", False
    digest = file_digest(path)
    if checksum is not None and digest != checksum:
        return f"SHA-256 {digest} does not match the expected {checksum}", digest, False
    return None, digest, False


def _http_transfer(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with a Range request), or fetch it anew."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"astrodag/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the partial file is not a prefix the server recognises
            part.unlink(missing_ok=True)
            raise TransientError("server refused the resume range; starting over") from error
        if error.code in _RETRY_HTTP or error.code >= 500:
            raise TransientError(f"HTTP {error.code} {error.reason}") from error
        raise _PermanentError(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise TransientError(f"{type(error).__name__}: {getattr(error, 'reason', error)}") from error
    with response:
        resumed = response.status == 206
        if resumed and not (offset and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")):
            part.unlink(missing_ok=True)
            raise TransientError("server answered with another byte range; starting over")
        if not resumed:
            offset = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as error:
            raise TransientError(f"transfer interrupted: {type(error).__name__}: {error}") from error
    received = part.stat().st_size
    if expected is not None and received < expected:
        raise TransientError(f"connection closed after {received} of {expected} bytes")


def _file_transfer(url: str, part: Path) -> None:
    """Copy a ``file://`` URL to ``part``."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    if not source.is_file():
        raise _PermanentError(f"no such file {source}")
    try:
        shutil.copyfile(source, part)
    except OSError as error:
        raise TransientError(f"copy failed: {error}") from error


def fetch(url: str, destination: str | Path, *, size: Any = None, checksum: Any = None,
          settings: TransferSettings = TransferSettings(), sleep: Callable[[float], None] = time.sleep) -> FetchResult:
    """Download ``url`` to ``destination`` with retries, resume, size/checksum checks and an atomic rename.

    Parameters
    ----------
    url : str
        ``http(s)://`` or ``file://`` URL.
    destination : str or Path
        Final path; its folder is created. A file already there that matches ``size`` and
        ``checksum`` is a cache hit.
    size : int, optional
        Expected size in bytes (unknown if None, empty or not positive).
    checksum : str, optional
        Expected SHA-256 in hex (unknown unless 64 hex characters).
    settings : TransferSettings
        Tries, back-off and time-out.
    sleep : callable
        Called with the back-off delay in seconds (tests pass a no-op).

    Returns
    -------
    FetchResult

    Raises
    ------
    DownloadError
        An ``InputDataError`` naming ``url``, when the file cannot be fetched intact.
    """
    destination = Path(destination)
    size, checksum = _expected(size, checksum)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(url, f"unsupported URL scheme {scheme!r} (expected http, https or file)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Two jobs may want one product (two supernovae in one field): the second waits, then finds it cached.
    with open(destination.with_name(destination.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch_locked(url, scheme, destination, size, checksum, settings, sleep)


def _fetch_locked(url, scheme, destination, size, checksum, settings, sleep) -> FetchResult:
    """``fetch`` once the destination's lock is held."""
    if destination.is_file():
        problem, digest, _ = _check(destination, size, checksum)
        if problem is None:
            log.info("cache hit %s", destination)
            return FetchResult(url, destination, destination.stat().st_size, digest, True, 0)
        log.warning("cached %s is bad (%s): fetching it again", destination, problem)
        destination.unlink()
    part = destination.with_name(destination.name + ".part")

    def attempt() -> str:
        if scheme == "file":
            _file_transfer(url, part)
        else:
            _http_transfer(url, part, settings.timeout_seconds)
        problem, digest, resumable = _check(part, size, checksum)
        if problem is not None:
            if not resumable:
                part.unlink()
            raise TransientError(problem)
        return digest

    try:
        digest, attempts = with_retries(attempt, url, settings, sleep)
    except _PermanentError as error:
        part.unlink(missing_ok=True)
        raise DownloadError(url, str(error)) from error
    os.replace(part, destination)
    log.info("fetched %s -> %s (%d bytes, %d tries)", url, destination, destination.stat().st_size, attempts)
    return FetchResult(url, destination, destination.stat().st_size, digest, False, attempts)


# --------------------------------------------------------------------------------------------
# FITS check and the download stage
# --------------------------------------------------------------------------------------------


def write_plain_fits(source: str | Path, destination: str | Path, url: str = "") -> dict[str, Any]:
    """Check that ``source`` is FITS with a 2-D image and write it uncompressed to ``destination``.

    Every HDU is kept in order: a tile-compressed image (``.fits.fz``) becomes a plain image
    extension with the same header, a gzipped file (``.fits.gz``) is simply decompressed.

    Returns
    -------
    dict
        ``hdus`` (their names) and ``image_hdu`` (index of the first 2-D image).

    Raises
    ------
    InputDataError
        Naming ``source`` (and ``url``) if it is not readable FITS, is truncated, or holds no 2-D image.
    """
    from astropy.io import fits

    source = Path(source)
    where = f" (from {url})" if url else ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(source, memmap=False) as hdul:
                out = fits.HDUList()
                image_hdu = None
                for index, hdu in enumerate(hdul):
                    data = hdu.data  # reading it here is what finds a truncated file
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                        if image_hdu is None and data is not None and data.ndim == 2:
                            image_hdu = index
                        header = hdu.header.copy()
                        out.append(fits.PrimaryHDU(data, header) if index == 0 else
                                   fits.ImageHDU(data, header, name=hdu.name))
                    else:
                        out.append(hdu.copy())
        truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
        if truncated:
            raise InputDataError(source, f"truncated FITS file{where}: {truncated[0]}")
    except (OSError, ValueError, TypeError, IndexError) as error:
        raise InputDataError(source, f"not a readable FITS file{where}: {error}") from error
    if image_hdu is None:
        raise InputDataError(source, f"no 2-D image HDU{where}")
    if not isinstance(out[0], fits.PrimaryHDU):
        out.insert(0, fits.PrimaryHDU())
    with atomic_path(destination) as tmp:
        out.writeto(tmp, output_verify="silentfix", overwrite=True)
    return {"hdus": [hdu.name for hdu in out], "image_hdu": image_hdu}


def read_pair(pairs_path: str | Path, pair_id: str) -> dict[str, Any]:
    """The row of ``pair_id`` in pairs.csv, as a dict."""
    from astrodag.supernova.archive.pairing import PAIR_COLUMNS

    pairs = read_table(pairs_path, PAIR_COLUMNS, {"pair_id": str, "reference_obsid": str, "science_obsid": str,
                                                  "reference_checksum": str, "science_checksum": str},
                       not_found="pairs table not found")
    match = pairs[pairs["pair_id"] == pair_id]
    if match.empty:
        raise InputDataError(pairs_path, f"no pair {pair_id!r}")
    return match.iloc[0].to_dict()


def download_pair(pairs_path: str | Path, pair_id: str, backend, cache_dir: str | Path,
                  out_dir: str | Path) -> dict[str, Any]:
    """Fetch a pair's two images through ``backend`` and write ``science.fits``, ``reference.fits``, ``download.json``.

    Parameters
    ----------
    pairs_path : str or Path
        pairs.csv of the pair stage.
    pair_id : str
        The pair to fetch.
    backend : ArchiveBackend
        Resolves and fetches the products (``astrodag.supernova.archive.backends``).
    cache_dir : str or Path
        Download cache; originals (compressed as delivered) stay there.
    out_dir : str or Path
        Gets uncompressed ``science.fits`` and ``reference.fits`` (all HDUs kept) and ``download.json``.

    Returns
    -------
    dict
        The content of ``download.json``: for each role the URL, cache path, size, SHA-256, whether
        it was a cache hit, the number of tries, and the HDUs.
    """
    pair = read_pair(pairs_path, pair_id)
    out_dir = Path(out_dir)
    record: dict[str, Any] = {"pair_id": pair_id, "sn_name": pair["sn_name"], "backend": backend.name}
    for role in ("science", "reference"):
        row = {"obsid": pair[f"{role}_obsid"], "dataURL": pair[f"{role}_url"], "size": pair[f"{role}_size"],
               "checksum": pair[f"{role}_checksum"]}
        result = backend.fetch(row, cache_dir)
        try:
            layout = write_plain_fits(result.path, out_dir / f"{role}.fits", url=result.url)
        except InputDataError:
            # A cached file that is not FITS must not be served again by the next run.
            result.path.unlink(missing_ok=True)
            raise
        record[role] = {"obsid": row["obsid"], **result.to_dict(), **layout}
    write_json(out_dir / "download.json", record)
    return record
