"""Reference/science pairs for difference imaging, chosen from archive observations of each supernova.

Footprints
    ``s_region`` strings as MAST writes them (``POLYGON [frame] ra1 dec1 ra2 dec2 ...``,
    ``CIRCLE [frame] ra dec radius``, several shapes one after the other for multi-chip footprints;
    ICRS degrees) are projected onto the tangent plane at the supernova (gnomonic projection, degrees)
    and handled as shapely geometries there: a circle becomes a 128-gon, the shapes of one footprint
    are united.

Pair rule (``select_pairs``), for each supernova:

1. Each observation is checked alone: a product that is not an image is rejected
   (``not_an_image``), and so is an image whose footprint, shrunk by ``edge_margin_arcsec``, does
   not hold the supernova (``sn_outside_footprint``). Such a row names the observation as
   reference if it started before the discovery, as science otherwise.
2. Every two remaining images form one combination, the earlier (by start time) as reference and
   the later as science. The first failed check names the rejection: ``different_mission`` (the
   ``obs_collection`` or the ``instrument_name`` differ), ``different_filter``,
   ``reference_not_before_discovery`` (the reference ends less than ``reference_gap_days`` before
   discovery), ``science_not_after_discovery`` (the science image starts before discovery), and
   ``overlap_below_threshold``: the overlap fraction, area(reference ∩ science) / area(science),
   the share of the science image that the reference covers, is below ``overlap_threshold``.
3. Of the combinations that pass, one is kept per mission, instrument and filter: the one with the
   latest reference, then the earliest science image (the closest epochs bracketing the discovery:
   least change in the host, brightest young supernova), then the larger overlap. Of these, at most
   ``max_pairs_per_sn`` are kept, those whose science image is closest to discovery first (then by
   shorter reference-science baseline, then by name). Every other passing combination is
   ``superseded``.
4. A mission/instrument/filter group with images on one side of the discovery only is recorded
   once: ``no_reference`` (with its first science image) or ``no_science`` (with its last reference).
   A supernova without any usable image gets one ``no_reference`` and one ``no_science`` row.

Epochs (``reference_mjd``, ``science_mjd``) are mid-exposure, ``(t_min + t_max) / 2``. In
decisions.csv, ``mission``, ``instrument`` and ``filter`` hold one value, or ``reference|science``
when the two differ; every combination carries its overlap fraction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

from astrodag.errors import InputDataError
from astrodag.io import read_table, write_table
from astrodag.settings import Settings, number, setting
from astrodag.supernova.archive.catalog import load_catalog, safe_name

log = logging.getLogger(__name__)


OBSERVATION_COLUMNS = ("obsid", "obs_id", "obs_collection", "instrument_name", "filters", "target_name",
                       "dataproduct_type", "calib_level", "t_min", "t_max", "t_exptime", "s_ra", "s_dec",
                       "s_region", "dataURL", "em_min", "em_max")
OPTIONAL_COLUMNS = ("size", "checksum")
PAIR_COLUMNS = ("pair_id", "sn_name", "mission", "instrument", "filter", "reference_obsid", "science_obsid",
                "reference_url", "science_url", "reference_mjd", "science_mjd", "overlap_fraction",
                "reference_size", "science_size", "reference_checksum", "science_checksum")
DECISION_COLUMNS = ("sn_name", "reference_obsid", "science_obsid", "mission", "instrument", "filter",
                    "reference_mjd", "science_mjd", "overlap_fraction", "accepted", "reason")
REASONS = ("accepted", "different_mission", "different_filter", "reference_not_before_discovery",
           "science_not_after_discovery", "overlap_below_threshold", "sn_outside_footprint", "not_an_image",
           "superseded", "no_reference", "no_science")
YIELD_COLUMNS = ("mission", "observations", "pairs_accepted") + tuple(f"rejected_{r}" for r in REASONS[1:])

_CIRCLE_VERTICES = 128
_SHAPES = {"POLYGON", "CIRCLE"}


# --------------------------------------------------------------------------------------------
# footprints
# --------------------------------------------------------------------------------------------


def tangent_plane(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection of ``(ra, dec)`` (degrees) onto the plane tangent at ``(ra0, dec0)``.

    Returns ``(xi, eta)`` in degrees (xi towards east, eta towards north). Points 90 degrees or more
    from the tangent point have no projection and come back as NaN.
    """
    ra, dec = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
        eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    behind = cos_c <= 0
    xi, eta = np.degrees(np.where(behind, np.nan, xi)), np.degrees(np.where(behind, np.nan, eta))
    return xi, eta


def parse_s_region(text: str) -> list[tuple[str, np.ndarray]]:
    """The shapes of an ``s_region`` string: a list of ``("POLYGON", (n, 2) ra/dec)`` and ``("CIRCLE", [ra, dec, r])``.

    Frame names (ICRS, J2000, GSC1, ...) are skipped: at the accuracy of a footprint they are all ICRS.

    Raises
    ------
    ValueError
        If the string holds no shape, an unknown shape, or a shape with the wrong number of values.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty s_region")
    shapes: list[tuple[str, list[float]]] = []
    for token in text.replace(",", " ").split():
        word = token.upper()
        if word in _SHAPES:
            shapes.append((word, []))
            continue
        try:
            value = float(token)
        except ValueError:
            if not shapes or shapes[-1][1]:
                raise ValueError(f"unexpected {token!r} in s_region {text!r}") from None
            continue  # a frame name right after the shape keyword
        if not shapes:
            raise ValueError(f"s_region {text!r} does not start with POLYGON or CIRCLE")
        shapes[-1][1].append(value)
    parsed = []
    for kind, values in shapes:
        if kind == "CIRCLE":
            if len(values) != 3 or values[2] <= 0:
                raise ValueError(f"CIRCLE needs ra, dec and a radius > 0 in s_region {text!r}")
            parsed.append((kind, np.asarray(values)))
        else:
            if len(values) < 6 or len(values) % 2:
                raise ValueError(f"POLYGON needs at least 3 ra/dec vertices in s_region {text!r}")
            parsed.append((kind, np.asarray(values).reshape(-1, 2)))
    if not parsed:
        raise ValueError(f"no shape in s_region {text!r}")
    return parsed


def footprint(s_region: str, ra0: float, dec0: float) -> BaseGeometry:
    """The footprint ``s_region`` as a shapely geometry on the tangent plane at ``(ra0, dec0)`` (degrees).

    Raises ``ValueError`` for a string that does not parse or a shape more than 90 degrees away.
    """
    parts = []
    for kind, values in parse_s_region(s_region):
        if kind == "CIRCLE":
            ra_c, dec_c, radius = values
            xi, eta = tangent_plane(ra_c, dec_c, ra0, dec0)
            if not (np.isfinite(xi) and np.isfinite(eta)):
                raise ValueError(f"s_region {s_region!r} is on the far side of the sky")
            # The tangent-plane scale grows as 1/cos^2 away from the tangent point; at a footprint's
            # distance from its target this is far below the accuracy of the overlap threshold.
            parts.append(Point(float(xi), float(eta)).buffer(float(radius), quad_segs=_CIRCLE_VERTICES // 4))
        else:
            xi, eta = tangent_plane(values[:, 0], values[:, 1], ra0, dec0)
            if not (np.all(np.isfinite(xi)) and np.all(np.isfinite(eta))):
                raise ValueError(f"s_region {s_region!r} is on the far side of the sky")
            polygon = Polygon(np.column_stack([xi, eta]))
            # MAST polygons are sometimes self-intersecting (vertex order of merged chips).
            parts.append(polygon if polygon.is_valid else shapely.make_valid(polygon))
    shape = shapely.union_all(parts)
    if shape.is_empty or shape.area <= 0:
        raise ValueError(f"s_region {s_region!r} has no area")
    return shape


def overlap_fraction(reference: BaseGeometry, science: BaseGeometry) -> float:
    """area(reference ∩ science) / area(science): the share of the science footprint the reference covers."""
    return float(reference.intersection(science).area / science.area)


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSettings(Settings):
    """How reference/science pairs are chosen (keys of ``supernova.pairing``).

    Attributes
    ----------
    overlap_threshold : float
        Minimum overlap fraction, area(reference ∩ science) / area(science), in (0, 1]. Default 0.85.
    max_pairs_per_sn : int
        At most this many pairs per supernova (>= 1), at most one per mission/instrument/filter.
        Default 2.
    reference_gap_days : float
        A reference must end at least this many days before the discovery (>= 0): a supernova is
        often visible for a few days before it is found. Default 0.0.
    edge_margin_arcsec : float
        The supernova must lie at least this far inside a footprint (>= 0). Default 0.0.
    """

    PREFIX: ClassVar[str] = "supernova.pairing"

    overlap_threshold: float = setting(0.85, number(0.0, 1.0, low_open=True))
    max_pairs_per_sn: int = setting(2, number(1, integer=True))
    reference_gap_days: float = setting(0.0, number(0.0))
    edge_margin_arcsec: float = setting(0.0, number(0.0))


# --------------------------------------------------------------------------------------------
# observation tables
# --------------------------------------------------------------------------------------------


def check_observations(frame: pd.DataFrame, path: str | Path, *, require_sn: bool = False) -> pd.DataFrame:
    """Check an observation table's columns and types; return a copy with ``size``/``checksum`` filled.

    Raises ``InputDataError`` naming ``path`` for a missing column or a non-numeric time.
    """
    needed = OBSERVATION_COLUMNS + (("sn_name",) if require_sn else ())
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise InputDataError(path, f"missing observation column(s) {', '.join(missing)}")
    frame = frame.copy()
    for column in ("t_min", "t_max", "t_exptime", "s_ra", "s_dec", "em_min", "em_max", "calib_level"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("t_min", "t_max"):
        if frame[column].isna().any():
            row = int(frame[column].isna().to_numpy().nonzero()[0][0])
            raise InputDataError(path, f"row {row + 2}: {column} is missing or not a number")
    if "size" not in frame.columns:
        frame["size"] = pd.NA
    frame["size"] = pd.to_numeric(frame["size"], errors="coerce").astype("Int64")
    if "checksum" not in frame.columns:
        frame["checksum"] = ""
    frame["checksum"] = frame["checksum"].fillna("").astype(str)
    for column in ("obsid", "obs_id", "obs_collection", "instrument_name", "filters", "target_name",
                   "dataproduct_type", "s_region", "dataURL"):
        frame[column] = frame[column].astype("string").fillna("").astype(str)
    return frame


def read_observations(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate query outputs (observation tables with ``sn_name``), checking each file."""
    frames = []
    for path in paths:
        frame = read_table(path, (*OBSERVATION_COLUMNS, "sn_name"),
                           {"obsid": str, "obs_id": str, "sn_name": str, "checksum": str, "t_min": float,
                            "t_max": float}, not_found="observation table not found")
        frames.append(check_observations(frame, path, require_sn=True))
    if not frames:
        raise InputDataError("observations", "no observation tables given")
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# the pair rule
# --------------------------------------------------------------------------------------------


def _decision(sn_name, reference, science, overlap, reason) -> dict[str, Any]:
    """One decisions.csv row; ``reference``/``science`` are observation rows (dicts) or None."""
    def both(key):
        values = [row[key] for row in (reference, science) if row is not None]
        return "|".join(dict.fromkeys(values))  # one value when both sides agree, "A|B" when not

    return {
        "sn_name": sn_name,
        "reference_obsid": reference["obsid"] if reference is not None else "",
        "science_obsid": science["obsid"] if science is not None else "",
        "mission": both("obs_collection"),
        "instrument": both("instrument_name"),
        "filter": both("filters"),
        "reference_mjd": reference["mjd"] if reference is not None else np.nan,
        "science_mjd": science["mjd"] if science is not None else np.nan,
        "overlap_fraction": overlap,
        "accepted": reason == "accepted",
        "reason": reason,
    }


def _group_key(row: Mapping) -> tuple[str, str, str]:
    return row["obs_collection"].strip().upper(), row["instrument_name"].strip().upper(), \
        row["filters"].strip().upper()


def pair_id(sn_name: str, reference: Mapping, science: Mapping) -> str:
    """``<safe SN>__<mission>_<instrument>_<filter>__<reference obsid>_<science obsid>``, file-name safe."""
    group = "_".join(safe_name(reference[key]) for key in ("obs_collection", "instrument_name", "filters"))
    return f"{safe_name(sn_name)}__{group}__{safe_name(reference['obsid'])}_{safe_name(science['obsid'])}"


def select_pairs(observations: pd.DataFrame, sn: Mapping, settings: PairSettings) -> tuple[list, list]:
    """Pairs and decisions for one supernova (see the module docstring for the rule).

    Parameters
    ----------
    observations : pandas.DataFrame
        The supernova's observations (checked by ``check_observations``).
    sn : mapping
        Its catalogue row (``sn_name``, ``ra``, ``dec``, ``discovery_mjd``).
    settings : PairSettings

    Returns
    -------
    pairs, decisions : list of dict
        Rows of pairs.csv and decisions.csv.
    """
    name, discovery = sn["sn_name"], float(sn["discovery_mjd"])
    ra0, dec0 = float(sn["ra"]), float(sn["dec"])
    margin = settings.edge_margin_arcsec / 3600.0
    decisions: list[dict[str, Any]] = []
    usable: list[dict[str, Any]] = []
    # Observations in a fixed order (time, then obsid) so that the output does not depend on row order.
    rows = observations.drop_duplicates(["obsid", "filters", "dataURL"])  # a product listed twice is one image
    rows = rows.assign(mjd=0.5 * (rows["t_min"] + rows["t_max"]))
    rows = rows.sort_values(["t_min", "obsid", "filters"], kind="stable").to_dict("records")
    for row in rows:
        side_reference = row["t_min"] < discovery
        if row["dataproduct_type"].strip().lower() != "image":
            decisions.append(_decision(name, row if side_reference else None, None if side_reference else row,
                                       np.nan, "not_an_image"))
            continue
        try:
            shape = footprint(row["s_region"], ra0, dec0)
        except ValueError as error:
            log.warning("%s: observation %s has an unusable s_region (%s): treated as not covering it",
                        name, row["obsid"], error)
            shape = None
        inside = shape is not None and (shape.buffer(-margin) if margin else shape).contains(Point(0.0, 0.0))
        if not inside:
            decisions.append(_decision(name, row if side_reference else None, None if side_reference else row,
                                       np.nan, "sn_outside_footprint"))
            continue
        row["footprint"] = shape
        usable.append(row)

    candidates: dict[tuple, list] = {}
    for i, reference in enumerate(usable):
        for science in usable[i + 1:]:
            overlap = overlap_fraction(reference["footprint"], science["footprint"])
            if (reference["obs_collection"].strip().upper(), reference["instrument_name"].strip().upper()) != \
                    (science["obs_collection"].strip().upper(), science["instrument_name"].strip().upper()):
                reason = "different_mission"
            elif reference["filters"].strip().upper() != science["filters"].strip().upper():
                reason = "different_filter"
            elif reference["t_max"] > discovery - settings.reference_gap_days:
                reason = "reference_not_before_discovery"
            elif science["t_min"] <= discovery:
                reason = "science_not_after_discovery"
            elif overlap < settings.overlap_threshold:
                reason = "overlap_below_threshold"
            else:
                candidates.setdefault(_group_key(reference), []).append((reference, science, overlap))
                continue
            decisions.append(_decision(name, reference, science, overlap, reason))

    # One pair per group: latest reference, then earliest science, then larger overlap.
    best = {key: min(combos, key=lambda c: (-c[0]["mjd"], c[1]["mjd"], -c[2], c[0]["obsid"], c[1]["obsid"]))
            for key, combos in candidates.items()}
    ranked = sorted(best, key=lambda key: (best[key][1]["mjd"] - discovery,
                                           best[key][1]["mjd"] - best[key][0]["mjd"], key))
    kept = set(ranked[:settings.max_pairs_per_sn])
    pairs = []
    for key in sorted(candidates):
        for combo in candidates[key]:
            accepted = key in kept and combo is best[key]
            decisions.append(_decision(name, combo[0], combo[1], combo[2], "accepted" if accepted else "superseded"))
            if accepted:
                reference, science, overlap = combo
                pairs.append({
                    "pair_id": pair_id(name, reference, science), "sn_name": name,
                    "mission": reference["obs_collection"], "instrument": reference["instrument_name"],
                    "filter": reference["filters"], "reference_obsid": reference["obsid"],
                    "science_obsid": science["obsid"], "reference_url": reference["dataURL"],
                    "science_url": science["dataURL"], "reference_mjd": reference["mjd"],
                    "science_mjd": science["mjd"], "overlap_fraction": overlap,
                    "reference_size": reference["size"], "science_size": science["size"],
                    "reference_checksum": reference["checksum"], "science_checksum": science["checksum"],
                })

    groups: dict[tuple, list] = {}
    for row in usable:
        groups.setdefault(_group_key(row), []).append(row)
    for key in sorted(groups):
        before = [row for row in groups[key] if row["t_max"] <= discovery - settings.reference_gap_days]
        after = [row for row in groups[key] if row["t_min"] > discovery]
        if not before and after:
            decisions.append(_decision(name, None, after[0], np.nan, "no_reference"))
        elif before and not after:
            decisions.append(_decision(name, before[-1], None, np.nan, "no_science"))
    if not usable:
        decisions += [_decision(name, None, None, np.nan, reason) for reason in ("no_reference", "no_science")]
    return pairs, decisions


def yield_table(observations: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Per mission: observations, accepted pairs and rejections by reason, plus a ``total`` row.

    A combination of two missions counts for each of them; the ``total`` row counts every
    observation and decision once.
    """
    rows = []
    per_mission = decisions.assign(mission=decisions["mission"].str.split("|")).explode("mission")
    missions = sorted((set(observations["obs_collection"]) | set(per_mission["mission"])) - {""})
    for mission, frame, obs in [(m, per_mission[per_mission["mission"] == m],
                                 observations[observations["obs_collection"] == m]) for m in missions] + \
            [("total", decisions, observations)]:
        counts = frame["reason"].value_counts()
        row = {"mission": mission, "observations": len(obs), "pairs_accepted": int(counts.get("accepted", 0))}
        row.update({f"rejected_{reason}": int(counts.get(reason, 0)) for reason in REASONS[1:]})
        rows.append(row)
    return pd.DataFrame(rows, columns=list(YIELD_COLUMNS))


def pair_survey(observation_paths: Iterable[str | Path], catalog_path: str | Path, settings: PairSettings,
                pairs_path: str | Path, decisions_path: str | Path, yield_path: str | Path) -> dict[str, Any]:
    """Choose the pairs of every supernova in the query outputs; write pairs, decisions and yield tables.

    Each observation belongs to the supernova named in its ``sn_name`` column. Every supernova of
    the catalogue is decided on: one without observations (an empty query output has no rows to
    name it) gets its ``no_reference`` and ``no_science`` rows.

    Returns
    -------
    dict
        Counts: supernovae, observations, pairs, supernovae with pairs, rejections by reason.
    """
    catalog = load_catalog(catalog_path).set_index("sn_name", drop=False)
    observations = read_observations(observation_paths)
    unknown = sorted(set(observations["sn_name"]) - set(catalog.index))
    if unknown:
        raise InputDataError(catalog_path, f"query outputs name supernovae not in the catalogue: {', '.join(unknown)}")
    pairs, decisions = [], []
    names = list(catalog.index)
    for name in names:
        sn_pairs, sn_decisions = select_pairs(observations[observations["sn_name"] == name], catalog.loc[name],
                                              settings)
        pairs += sn_pairs
        decisions += sn_decisions
    pairs_frame = pd.DataFrame(pairs, columns=list(PAIR_COLUMNS))
    decisions_frame = pd.DataFrame(decisions, columns=list(DECISION_COLUMNS))
    yields = yield_table(observations, decisions_frame)
    write_table(pairs_path, pairs_frame)
    write_table(decisions_path, decisions_frame)
    write_table(yield_path, yields)
    reasons = decisions_frame["reason"].value_counts()
    summary = {"supernovae": len(names), "observations": len(observations), "pairs": len(pairs_frame),
               "supernovae_with_pairs": int(pairs_frame["sn_name"].nunique()),
               "rejections": {reason: int(reasons.get(reason, 0)) for reason in REASONS[1:]}}
    log.info("pairs: %d accepted for %d of %d supernovae", summary["pairs"], summary["supernovae_with_pairs"],
             summary["supernovae"])
    return summary
