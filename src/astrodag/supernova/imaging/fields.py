"""Fields: groups of supernovae that share images or sky, the independent unit of the real/bogus splits.

Two supernovae of one galaxy (SN 2019ehk and SN 2020oi in M100) are often differenced on the same
images: their cut-outs share pixels, so a split by supernova leaks. :func:`group_fields` links two
pairs when

* they use the same observation: the reference or science ``obsid`` or product ``checksum`` of
  the pairs table (``pairs.csv`` of the archive stage), or
* their sky coverage overlaps: the footprint of the frame the cut-outs come from (the science
  grid of ``difference.fits`` in the pair's directory, read from its header), grown by half a
  cut-out on every side so that any two cut-outs that share sky are linked. A pair whose
  directory holds no ``difference.fits`` (reviewed cut-outs, copied triplet files) is covered by
  the convex hull of its cut-out centres, grown the same way with the pixel scale measured from
  the centres' pixel and sky positions;

and the pairs of one supernova are always linked. A field is a connected component of these links
(single linkage, ``scipy.sparse.csgraph.connected_components``), named after its alphabetically
first supernova.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import MultiPoint, Polygon

from astrodag.errors import InputDataError
from astrodag.supernova.archive.pairing import tangent_plane

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = ("reference_obsid", "science_obsid", "reference_checksum", "science_checksum")


def frame_footprint(pair_dir: str | Path, margin_px: float) -> np.ndarray | None:
    """Sky corners (``(4, 2)`` ra, dec in degrees) of a pair's cut-out frame grown by ``margin_px``.

    The frame is the primary image of ``difference.fits`` (the science grid every channel of the
    cut-outs is resampled onto); None without that file or a celestial WCS in its header.
    """
    path = Path(pair_dir) / "difference.fits"
    if not path.is_file():
        return None
    try:
        header = fits.getheader(path, 0)
        wcs = WCS(header).celestial
    except (OSError, ValueError) as error:
        raise InputDataError(path, f"cannot read the frame's WCS: {error}") from error
    if not wcs.has_celestial or header.get("NAXIS", 0) < 2:
        return None
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    x = np.array([-0.5 - margin_px, nx - 0.5 + margin_px, nx - 0.5 + margin_px, -0.5 - margin_px])
    y = np.array([-0.5 - margin_px, -0.5 - margin_px, ny - 0.5 + margin_px, ny - 0.5 + margin_px])
    ra, dec = wcs.pixel_to_world_values(x, y)
    return np.column_stack([ra, dec])


def hull_footprint(x, y, ra, dec, margin_px: float) -> np.ndarray | None:
    """Sky outline of the cut-out centres' convex hull grown by ``margin_px`` (None without positions).

    The pixel scale comes from the centres themselves (median of sky over pixel distances between
    consecutive centres); a single centre gives no scale and its outline is the point itself.
    """
    x, y, ra, dec = (np.asarray(v, float) for v in (x, y, ra, dec))
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(ra) & np.isfinite(dec)
    x, y, ra, dec = x[good], y[good], ra[good], dec[good]
    if not len(x):
        return None
    ra0, dec0 = float(ra[0]), float(dec[0])
    xi, eta = tangent_plane(ra, dec, ra0, dec0)
    pixels = np.hypot(np.diff(x), np.diff(y))
    degrees = np.hypot(np.diff(xi), np.diff(eta))
    useful = pixels > 1.0
    scale = float(np.median(degrees[useful] / pixels[useful])) if useful.any() else 0.0
    outline = MultiPoint(np.column_stack([xi, eta])).convex_hull.buffer(margin_px * scale, quad_segs=4)
    if outline.is_empty:
        return np.array([[ra0, dec0]])
    points = np.asarray(outline.exterior.coords if isinstance(outline, Polygon) else outline.coords)
    return _from_tangent_plane(points[:, 0], points[:, 1], ra0, dec0)


def _from_tangent_plane(xi, eta, ra0: float, dec0: float) -> np.ndarray:
    """(ra, dec) degrees of tangent-plane points (degrees, at ``ra0, dec0``): a TAN WCS of 1-degree pixels."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [1.0, 1.0]
    wcs.wcs.cdelt = [1.0, 1.0]
    ra, dec = wcs.pixel_to_world_values(np.asarray(xi, float), np.asarray(eta, float))
    return np.column_stack([ra, dec])


def _outline(corners: np.ndarray, ra0: float, dec0: float):
    xi, eta = tangent_plane(corners[:, 0], corners[:, 1], ra0, dec0)
    return MultiPoint(np.column_stack([xi, eta])).convex_hull


def group_fields(pairs: pd.DataFrame, footprints: Mapping[str, np.ndarray | None],
                 identities: pd.DataFrame | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """Pair -> field (see the module notes), and how many links joined different supernovae, by kind.

    Parameters
    ----------
    pairs : DataFrame
        ``pair_id`` and ``sn_name``, one row per pair.
    footprints : mapping of str to ndarray or None
        ``pair_id`` -> sky outline vertices (``(k, 2)`` ra, dec degrees), e.g. from
        :func:`frame_footprint` or :func:`hull_footprint`.
    identities : DataFrame, optional
        ``pairs.csv`` of the archive stage: ``pair_id`` and any of ``IDENTITY_COLUMNS``.

    Returns
    -------
    dict, dict
        ``pair_id -> field`` (the field's alphabetically first supernova) and the counts of
        ``shared_observation`` and ``sky_overlap`` links between pairs of different supernovae.
    """
    pairs = pairs.drop_duplicates("pair_id").reset_index(drop=True)
    n = len(pairs)
    position = {pair: i for i, pair in enumerate(pairs["pair_id"])}
    sn = pairs["sn_name"].to_numpy()
    links: list[tuple[int, int]] = []
    counts = {"shared_observation": 0, "sky_overlap": 0}

    def link(i: int, j: int, kind: str | None) -> None:
        links.append((i, j))
        if kind and sn[i] != sn[j]:
            counts[kind] += 1

    for members in pairs.groupby("sn_name", sort=False).indices.values():
        for i, j in zip(members[:-1], members[1:]):
            link(i, j, None)
    if identities is not None and len(identities):
        known = identities[identities["pair_id"].isin(position)]
        # One product namespace per kind of key: a pair's science obsid may be another pair's reference obsid.
        keys = pd.concat([pd.DataFrame({"pair_id": known["pair_id"],
                                        "key": column.split("_", 1)[1] + ":" + known[column].astype(str).str.strip()})
                          for column in IDENTITY_COLUMNS if column in known.columns], ignore_index=True)
        empty = ("", "nan", "None", "<NA>")
        keys = keys[~keys["key"].str.split(":", n=1).str[1].isin(empty)] if len(keys) else keys
        for _, group in keys.groupby("key")["pair_id"] if len(keys) else ():
            ids = [position[p] for p in group.unique()]
            for i, j in zip(ids[:-1], ids[1:]):
                link(i, j, "shared_observation")
    with_outline = [(position[p], np.asarray(c, float)) for p, c in footprints.items()
                    if p in position and c is not None and len(c)]
    if len(with_outline) > 1:
        index = np.array([i for i, _ in with_outline])
        vectors = [SkyCoord(c[:, 0] * u.deg, c[:, 1] * u.deg).cartesian.xyz.value.mean(axis=1) for _, c in with_outline]
        centres = SkyCoord(*np.array(vectors).T, representation_type="cartesian").spherical
        centres = SkyCoord(centres.lon, centres.lat)
        radii = np.array([SkyCoord(c[:, 0] * u.deg, c[:, 1] * u.deg).separation(centres[k]).deg.max()
                          for k, (_, c) in enumerate(with_outline)])
        first, second, separation, _ = centres.search_around_sky(centres, (2 * radii.max() + 1e-9) * u.deg)
        for a, b, distance in zip(first, second, separation.deg):
            if a >= b or distance > radii[a] + radii[b]:
                continue
            ra0, dec0 = centres[a].ra.deg, centres[a].dec.deg
            if _outline(with_outline[a][1], ra0, dec0).intersects(_outline(with_outline[b][1], ra0, dec0)):
                link(int(index[a]), int(index[b]), "sky_overlap")
    rows, cols = (np.array(v, int) for v in zip(*links)) if links else (np.zeros(0, int), np.zeros(0, int))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    names = pd.Series(sn).groupby(component).min()
    return {pair: names[component[i]] for pair, i in position.items()}, counts
