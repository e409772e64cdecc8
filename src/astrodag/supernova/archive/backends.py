"""Where observations come from: the MAST archive, or a local directory laid out the same way.

Both backends answer the same two questions:

``query(ra, dec, radius_arcmin, missions=None)``
    a ``pandas.DataFrame`` with MAST's ``Observations`` columns (``OBSERVATION_COLUMNS`` of
    ``astrodag.supernova.archive.pairing``) plus ``size`` and ``checksum``, one row per image product, whose
    footprint comes within ``radius_arcmin`` of the position;
``download(row, destination)``
    the product of one row fetched into the cache folder ``destination`` (``fetch`` also tells
    whether it was a cache hit and how many tries it took).

``make_backend(name, **options)`` builds one by name (``local`` or ``mast``).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from shapely.geometry import Point

from astrodag.errors import ConfigError, InputDataError
from astrodag.io import file_digest, read_table, write_table
from astrodag.settings import Settings, flag, number, section, sequence, setting, text
from astrodag.supernova.archive.catalog import catalog_entry, load_catalog
from astrodag.supernova.archive.download import (
    DownloadError,
    FetchResult,
    TransferSettings,
    cache_path,
    fetch,
    with_retries,
)
from astrodag.supernova.archive.pairing import OBSERVATION_COLUMNS, check_observations, footprint

log = logging.getLogger(__name__)


QUERY_COLUMNS = OBSERVATION_COLUMNS + ("size", "checksum")
IMAGE_EXTENSIONS = (".fits", ".fits.gz", ".fits.fz", ".fit", ".fts", ".img", ".img.gz")


class ArchiveBackend(abc.ABC):
    """A source of observation tables and image products."""

    #: the name ``make_backend`` knows it by
    name = ""

    def __init__(self, transfer: TransferSettings | None = None, sleep: Callable[[float], None] = time.sleep):
        self.transfer = transfer or TransferSettings()
        self.sleep = sleep

    @abc.abstractmethod
    def query(self, ra: float, dec: float, radius_arcmin: float,
              missions: Iterable[str] | None = None) -> pd.DataFrame:
        """Image observations whose footprint comes within ``radius_arcmin`` of ``(ra, dec)`` (ICRS degrees).

        ``missions`` restricts the ``obs_collection`` (case-insensitive); None means all.
        """

    @abc.abstractmethod
    def resolve_url(self, row: Mapping) -> str:
        """The absolute URL of a row's product."""

    def fetch(self, row: Mapping, destination: str | Path) -> FetchResult:
        """Fetch a row's product into the cache folder ``destination``.

        See :func:`astrodag.supernova.archive.download.fetch`.
        """
        url = self.resolve_url(row)
        return fetch(url, cache_path(destination, str(row["obsid"]), url), size=row.get("size"),
                     checksum=row.get("checksum"), settings=self.transfer, sleep=self.sleep)

    def download(self, row: Mapping, destination: str | Path) -> Path:
        """Fetch a row's product into the cache folder ``destination``; return its path."""
        return self.fetch(row, destination).path


def _missions(missions: Iterable[str] | None) -> set[str] | None:
    return None if missions is None else {m.strip().upper() for m in missions}


# --------------------------------------------------------------------------------------------
# local archive
# --------------------------------------------------------------------------------------------


class LocalBackend(ArchiveBackend):
    """A directory of FITS files with an ``observations.csv`` in MAST's columns.

    ``dataURL`` is a path relative to the directory, an absolute path, a ``file://`` URL, or an
    ``http(s)://`` URL. Local paths must lead inside the directory once resolved (symbolic links
    followed): a row whose path leaves it (``../x.fits``, ``/etc/passwd``, ``file:///elsewhere/x.fits``,
    a link pointing out) is refused with an ``InputDataError`` naming ``observations.csv`` and the
    obsid, by the query for the rows it returns and again before anything is fetched, unless
    ``allow_outside`` is set. Unlike ``MastBackend`` the query returns every product type, so that
    the pair stage records non-images (as ``not_an_image``) instead of never seeing them.

    Parameters
    ----------
    archive_dir : str or Path
        The directory holding ``observations.csv``.
    transfer : TransferSettings, optional
    sleep : callable, optional
        Back-off sleep (tests pass a no-op).
    allow_outside : bool, default False
        Accept local paths outside ``archive_dir`` (``supernova.archive.allow_outside_archive``).
    """

    name = "local"

    def __init__(self, archive_dir: str | Path, transfer: TransferSettings | None = None,
                 sleep: Callable[[float], None] = time.sleep, allow_outside: bool = False):
        super().__init__(transfer, sleep)
        self.archive_dir = Path(archive_dir)
        self.root = self.archive_dir.resolve()
        self.allow_outside = bool(allow_outside)
        self.table_path = self.archive_dir / "observations.csv"
        table = read_table(self.table_path, OBSERVATION_COLUMNS,
                           {"obsid": str, "obs_id": str, "checksum": str, "t_min": float, "t_max": float},
                           not_found="local archive has no observations.csv")
        self.table = check_observations(table, self.table_path)

    def query(self, ra, dec, radius_arcmin, missions=None):
        wanted = _missions(missions)
        table = self.table if wanted is None else self.table[self.table["obs_collection"].str.upper().isin(wanted)]
        radius = float(radius_arcmin) / 60.0
        keep = []
        for row in table.itertuples(index=False):
            try:
                near = footprint(row.s_region, ra, dec).distance(Point(0.0, 0.0)) <= radius
            except ValueError:
                # No usable footprint: fall back on the pointing centre, as a cone search would.
                near = _separation_deg(ra, dec, row.s_ra, row.s_dec) <= radius
            keep.append(bool(near))
        found = table[np.asarray(keep, dtype=bool)] if keep else table.iloc[:0]
        # A path leaving the archive fails here, before the pair and download stages build on it.
        for obsid, url in zip(found["obsid"], found["dataURL"].fillna("").astype(str).str.strip()):
            if url:
                self._checked_url(url, obsid)
        return found.loc[:, list(QUERY_COLUMNS)].sort_values(["t_min", "obsid"], kind="stable").reset_index(drop=True)

    def resolve_url(self, row):
        url = str(row["dataURL"]).strip()
        if not url:
            raise InputDataError(self.table_path, f"observation {row['obsid']} has no dataURL")
        return self._checked_url(url, row["obsid"])

    def _checked_url(self, url: str, obsid) -> str:
        """The URL of ``url`` (a file URL of the resolved path for local files), refused if it leaves the archive."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            return url
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InputDataError(self.table_path, f"observation {obsid}: dataURL {url!r} names another host "
                                                      f"({parts.netloc}); a file URL must be local")
            path = Path(urllib.request.url2pathname(parts.path))
        else:
            path = Path(url)
        # Relative paths are relative to the archive; resolve() follows links, so a link pointing out is caught.
        resolved = (self.archive_dir / path).resolve()
        if not (self.allow_outside or resolved.is_relative_to(self.root)):
            raise InputDataError(self.table_path, f"observation {obsid}: dataURL {url!r} leads outside the archive "
                                                  f"directory {self.root} (to {resolved}); set "
                                                  "supernova.archive.allow_outside_archive: true to allow it")
        return resolved.as_uri()


def _separation_deg(ra1, dec1, ra2, dec2) -> float:
    """Great-circle distance in degrees (haversine; NaN positions give NaN)."""
    ra1, dec1, ra2, dec2 = np.radians([ra1, dec1, ra2, dec2])
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return float(np.degrees(2 * np.arcsin(np.sqrt(min(h, 1.0)))))


# --------------------------------------------------------------------------------------------
# MAST
# --------------------------------------------------------------------------------------------

# Among several science images of one observation, file names matching these come first (in this
# order): drizzled HST mosaics, GALEX intensity maps, Swift UVOT sky images, PS1 stacks and warps.
_PREFERRED_PRODUCTS = (r"_drz\.fits", r"_drc\.fits", r"-int\.fits", r"_sk\.img", r"\.stk\..*\.fits",
                       r"\.wrp\..*\.fits", r"_flt\.fits", r"_flc\.fits")
# Observations that hold several filters (GALEX: NUV and FUV share an obsid) name the band in the file.
_FILTER_TOKENS = {("GALEX", "NUV"): "-nd-", ("GALEX", "FUV"): "-fd-"}
_PRODUCT_BATCH = 50  # obsids per product-list request (keeps the request URL and the reply small)


class MastBackend(ArchiveBackend):
    """Observations from MAST through ``astroquery.mast.Observations``.

    ``query`` runs ``Observations.query_criteria`` with the position, the radius, ``dataproduct_type``
    image, ``intentType`` science and, when given, ``obs_collection``; keeps observations with
    ``calib_level >= min_calib_level``; lists their products (``get_product_list``, in batches) and
    keeps, for each observation and filter, one science image (``productType`` SCIENCE, an image file
    extension; see ``choose_product`` for the rule). ``dataURL`` then is MAST's download URL of that
    file and ``size`` its size; MAST gives no SHA-256, so ``checksum`` is empty. Observations
    without a science image are dropped (and logged). Each MAST request is retried with back-off.

    Downloads go through ``astrodag.supernova.archive.download.fetch`` rather than
    ``Observations.download_file``, which neither resumes an interrupted transfer nor checks its size.

    Parameters
    ----------
    transfer : TransferSettings, optional
        Tries, back-off and time-out, for queries and downloads.
    min_calib_level : int
        Lowest CAOM calibration level kept (2: calibrated single images, 3: combined products).
    sleep : callable, optional
        Back-off sleep (tests pass a no-op).
    """

    name = "mast"

    def __init__(self, transfer: TransferSettings | None = None, min_calib_level: int = 2,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(transfer, sleep)
        self.min_calib_level = int(min_calib_level)

    def _retrying(self, action, what: str):
        """Run a MAST request with the transfer settings' retries; failures name MAST's API URL."""
        import requests
        from astroquery.exceptions import RemoteServiceError
        from astroquery.mast import Observations

        transient = (requests.exceptions.RequestException, RemoteServiceError, TimeoutError, ConnectionError)
        url = Observations._portal_api_connection.MAST_REQUEST_URL
        result, attempts = with_retries(action, f"{url} ({what})", self.transfer, self.sleep, transient=transient)
        if attempts > 1:
            log.info("MAST %s succeeded after %d tries", what, attempts)
        return result

    def query(self, ra, dec, radius_arcmin, missions=None):
        import astropy.units as u
        from astropy.coordinates import SkyCoord
        from astroquery.mast import Observations

        criteria = {"coordinates": SkyCoord(ra, dec, unit="deg", frame="icrs"),
                    "radius": float(radius_arcmin) * u.arcmin, "dataproduct_type": ["image"],
                    "intentType": "science"}
        if missions is not None:
            criteria["obs_collection"] = sorted(_missions(missions))
        table = self._retrying(lambda: Observations.query_criteria(**criteria), f"query around {ra:.5f} {dec:+.5f}")
        observations = _table_frame(table, OBSERVATION_COLUMNS)
        if observations.empty:
            return pd.DataFrame(columns=list(QUERY_COLUMNS))
        observations["obsid"] = observations["obsid"].astype(str)
        level = pd.to_numeric(observations["calib_level"], errors="coerce")
        observations = observations[level >= self.min_calib_level].reset_index(drop=True)

        products = []
        obsids = list(dict.fromkeys(observations["obsid"]))
        for start in range(0, len(obsids), _PRODUCT_BATCH):
            batch = obsids[start:start + _PRODUCT_BATCH]
            listed = self._retrying(lambda batch=batch: Observations.get_product_list(",".join(batch)),
                                    f"products of {len(batch)} observations")
            if len(listed):
                products.append(_table_frame(Observations.filter_products(
                    listed, productType="SCIENCE", extension=list(IMAGE_EXTENSIONS)), _PRODUCT_COLUMNS))
        products = pd.concat(products, ignore_index=True) if products else pd.DataFrame(columns=list(_PRODUCT_COLUMNS))
        products = products[products["dataproduct_type"].astype(str).str.lower() == "image"]
        # A product belongs to its parent observation when MAST names one (HST associations), else to obsID.
        parent = products["parent_obsid"].map(lambda v: "" if v is None or pd.isna(v) else str(v).strip())
        owner = parent.where(parent != "", products["obsID"].astype(str))

        base = Observations._portal_api_connection.MAST_DOWNLOAD_URL
        rows, dropped = [], 0
        for row in observations.to_dict("records"):
            product = choose_product(products[owner == row["obsid"]], row["obs_collection"], row["filters"])
            if product is None:
                dropped += 1
                continue
            rows.append({**row, "dataURL": f"{base}?uri={urllib.parse.quote(product['dataURI'], safe=':/')}",
                         "size": product["size"], "checksum": ""})
        if dropped:
            log.info("MAST: %d of %d observations have no science image product", dropped, len(observations))
        frame = pd.DataFrame(rows, columns=list(QUERY_COLUMNS))
        frame["size"] = pd.to_numeric(frame["size"], errors="coerce").astype("Int64")
        return frame.sort_values(["t_min", "obsid"], kind="stable").reset_index(drop=True)

    def resolve_url(self, row):
        url = str(row["dataURL"]).strip()
        if not url.lower().startswith(("http://", "https://")):
            raise DownloadError(url or str(row["obsid"]), "a MAST product needs an http(s) dataURL")
        return url


_PRODUCT_COLUMNS = ("obsID", "parent_obsid", "dataURI", "productFilename", "productType", "dataproduct_type",
                    "productGroupDescription", "size")


def _table_frame(table, columns: Iterable[str]) -> pd.DataFrame:
    """An astropy Table as a DataFrame of ``columns`` (absent columns empty, masked values empty)."""
    frame = pd.DataFrame(index=range(len(table)))
    names = set(table.colnames) if table is not None else set()
    for column in columns:
        if column in names:
            values = table[column]
            mask = np.ma.getmaskarray(values)
            data = np.asarray(np.ma.getdata(values), dtype=object)
            data[mask] = None
            frame[column] = data
        else:
            frame[column] = None
    return frame


def choose_product(products: pd.DataFrame, collection: str, band: str) -> Mapping | None:
    """The science image of one observation and filter among its ``products`` (None if there is none).

    Rule: products naming another band are dropped (``_FILTER_TOKENS``: GALEX NUV/FUV share an
    obsid); then MAST's "Minimum Recommended Products" come first, then the preferred file types
    (``_PREFERRED_PRODUCTS``, in order), then the larger file, then the file name.
    """
    token = _FILTER_TOKENS.get((str(collection).upper(), str(band).upper()))
    if token is not None:
        products = products[products["productFilename"].astype(str).str.contains(token, regex=False)]
    if products.empty:
        return None

    def rank(index) -> tuple:
        name = str(products.at[index, "productFilename"])
        preferred = next((i for i, p in enumerate(_PREFERRED_PRODUCTS) if re.search(p, name)),
                         len(_PREFERRED_PRODUCTS))
        mrp = products.at[index, "productGroupDescription"] == "Minimum Recommended Products"
        size = pd.to_numeric(products.at[index, "size"], errors="coerce")
        return (not mrp, preferred, -(size if np.isfinite(size) else 0), name)

    return products.loc[min(products.index, key=rank)].to_dict()


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------

_BACKENDS = {"local": LocalBackend, "mast": MastBackend}


def make_backend(name: str, **options: Any) -> ArchiveBackend:
    """The backend called ``name`` (``local`` or ``mast``), built with ``options``.

    ``local`` needs ``archive_dir`` and takes ``allow_outside``; both take ``transfer`` (TransferSettings) and
    ``sleep``; ``mast`` also takes ``min_calib_level``.
    """
    if name not in _BACKENDS:
        raise ConfigError("supernova.archive.backend", f"unknown backend {name!r} (known: {', '.join(_BACKENDS)})")
    if name == "local" and options.get("archive_dir") is None:
        raise ConfigError("supernova.archive.archive_dir", "the local backend needs an archive directory")
    try:
        return _BACKENDS[name](**options)
    except TypeError as error:
        raise ConfigError("supernova.archive", f"bad options for the {name} backend: {error}") from error


# --------------------------------------------------------------------------------------------
# settings and the query stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendSettings(Settings):
    """Options of the archive backends (keys of ``supernova.archive``).

    Attributes
    ----------
    transfer : TransferSettings
        Tries, back-off and time-out of queries and downloads (``supernova.archive.transfer``).
    min_calib_level : int
        MAST only: lowest CAOM calibration level kept (0-4). Default 2.
    allow_outside_archive : bool
        Local archive only: accept ``dataURL`` paths (relative, absolute or ``file://``) that lead outside the
        archive directory once resolved, links followed. Default false: such a row is an error.
    """

    PREFIX: ClassVar[str] = "supernova.archive"

    transfer: TransferSettings = section(TransferSettings)
    min_calib_level: int = setting(2, number(0, 4, integer=True))
    allow_outside_archive: bool = setting(False, flag)

    def backend(self, name: str, archive_dir: str | Path | None = None,
                sleep: Callable[[float], None] = time.sleep) -> ArchiveBackend:
        """The backend ``name`` built with these settings."""
        options: dict[str, Any] = {"transfer": self.transfer, "sleep": sleep}
        if name == "local":
            options["archive_dir"] = archive_dir
            options["allow_outside"] = self.allow_outside_archive
        elif name == "mast":
            options["min_calib_level"] = self.min_calib_level
        return make_backend(name, **options)


@dataclass(frozen=True)
class QuerySettings(Settings):
    """The cone searched around each supernova (config ``supernova.query``).

    Keys
    ----
    radius_arcmin : float, default 5.0
        Radius of the cone, in (0, 600] arcmin.
    missions : list of str, default []
        Missions to keep (e.g. ``[SWIFT, GALEX, PS1]``); empty: every mission the archive has.
    """

    PREFIX: ClassVar[str] = "supernova.query"

    radius_arcmin: float = setting(5.0, number(0.0, 600.0, low_open=True))
    missions: tuple[str, ...] = setting((), sequence(text, min_items=0))


def query_supernova(catalog_path: str | Path, sn: str, backend: ArchiveBackend, out: str | Path, *,
                    radius_arcmin: float = QuerySettings.radius_arcmin, missions: Iterable[str] | None = None,
                    cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Query one supernova's observations and write them, with ``sn_name`` first, to ``out`` (CSV).

    With ``cache_dir``, the answer is kept in ``<cache_dir>/queries/`` under a key of the backend,
    the position, the radius, the missions and (local archive) the digest of its
    ``observations.csv``, so that a rerun does not ask MAST again.
    """
    catalog = load_catalog(catalog_path)
    entry = catalog_entry(catalog, sn, catalog_path)
    radius = number(0.0, 600.0, low_open=True)("supernova.query.radius_arcmin", radius_arcmin)
    missions = sorted(_missions(missions)) if missions else None
    cached = None
    if cache_dir is not None:
        key = {"backend": backend.name, "ra": float(entry["ra"]), "dec": float(entry["dec"]), "radius": radius,
               "missions": missions}
        if isinstance(backend, LocalBackend):
            key["archive"] = file_digest(backend.table_path)
        elif isinstance(backend, MastBackend):
            key["min_calib_level"] = backend.min_calib_level
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cached = Path(cache_dir) / "queries" / f"{entry['safe_name']}_{backend.name}_{digest}.csv"
    if cached is not None and cached.is_file():
        log.info("query of %s from the cache %s", entry["sn_name"], cached)
        frame = pd.read_csv(cached, dtype={"obsid": str, "obs_id": str, "sn_name": str, "checksum": str})
    else:
        frame = backend.query(float(entry["ra"]), float(entry["dec"]), radius, missions)
        frame.insert(0, "sn_name", entry["sn_name"])
        if cached is not None:
            write_table(cached, frame)
    write_table(out, frame)
    log.info("%s: %d observations within %.2f arcmin (%s)", entry["sn_name"], len(frame), radius, backend.name)
    return frame
