"""The supernova imaging track's report: what the archive gave, what differencing found.

Read from the files the track's stages write (pairs.csv, decisions.csv, yield.csv, each pair's
difference.json and candidates.csv, the triplet dataset's summary.json and, for the synthetic
survey, truth.csv), it answers the questions a user asks of a run:

* how many reference/science pairs were found per mission, and why the others were rejected (a
  combination of two missions' images has its own row, ``A|B``, so that every column adds up to
  the total: yield.csv counts it under both missions);
* whether each SN was recovered in its difference image: a kept 5-sigma candidate within
  ``match_radius_arcsec`` of the catalogue position, and at what significance (for the synthetic
  survey also the injected magnitude, so recovery can be read against brightness);
* how many candidates each difference image produced (kept and rejected by the shape cuts), and
  which subtractions failed (far too many peaks above the threshold, ``candidates.json`` of the
  detection stage) and why (the pair's flux ratio, PSF, registration or noise model);
* how many fakes each pair injected, how many became real examples and how many were dropped
  for each reason (``triplets.npz``'s summary), and how many real and bogus triplets went into
  each split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord
from tabulate import tabulate

from astrodag.errors import InputDataError
from astrodag.evaluation.completeness import completeness_curve, recall_interval
from astrodag.io import read_table, write_json, write_table, write_text

logger = logging.getLogger(__name__)

DEFAULT_MATCH_RADIUS_ARCSEC = 3.0


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # a stage that found nothing may leave no header
        return pd.DataFrame(columns=list(required))
    return read_table(path, required, not_found="file is missing")


def _read_json(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise InputDataError(path, "file is missing")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InputDataError(path, f"is not valid JSON ({error})") from error


def _yield_by_mission(yields: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """yield.csv with each decision counted once: cross-mission combinations get their own ``A|B`` row.

    yield.csv counts a combination of two missions under each of them, so its mission rows add
    up to more than its ``total`` row; here they add up to it.
    """
    counted = [c for c in yields.columns if c == "pairs_accepted" or c.startswith("rejected_")]
    total = yields[yields["mission"] == "total"]
    if len(decisions) == 0:
        return yields
    missions = decisions["mission"].fillna("").astype(str)
    # One label per pair of missions whatever their order (reference|science or science|reference).
    label = missions.map(lambda value: "|".join(sorted(set(value.split("|")))) if value else "")
    rows = []
    for mission in [m for m in yields["mission"] if m != "total"] + sorted({m for m in label if "|" in m}):
        reasons = decisions.loc[label == mission, "reason"].value_counts()
        observations = yields.loc[yields["mission"] == mission, "observations"]
        row = {"mission": mission, "observations": int(observations.iloc[0]) if len(observations) else 0}
        row.update({c: int(reasons.get("accepted" if c == "pairs_accepted" else c[len("rejected_"):], 0))
                    for c in counted})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(yields.columns))
    return pd.concat([frame, total], ignore_index=True)


def _triplet_summary(pair_dir: Path) -> dict[str, Any]:
    """The fakes' fates of a pair (``triplets.npz``'s summary); empty before the triplets stage ran."""
    path = pair_dir / "triplets.npz"
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            summary = json.loads(str(npz["summary"])) if "summary" in npz.files else {}
    except (OSError, ValueError) as error:
        raise InputDataError(path, f"not a triplet file written by the triplets stage: {error}") from error
    fakes = summary.get("fakes")
    if not fakes:
        return {}
    return {"fakes_injected": fakes["injected"], "fakes_real": fakes["real"],
            **{f"fakes_dropped_{reason}": count for reason, count in fakes["dropped"].items()}}


def _pair_row(pair: pd.Series, pair_dir: Path, sn: pd.Series, truth: pd.DataFrame | None,
              radius_arcsec: float) -> dict[str, Any]:
    record = _read_json(pair_dir / "difference.json")
    candidates = _read_csv(pair_dir / "candidates.csv", ("ra", "dec", "significance", "kept"))
    kept = candidates[candidates["kept"].astype(bool)]
    row: dict[str, Any] = {
        "pair_id": pair["pair_id"],
        "sn_name": pair["sn_name"],
        "mission": pair["mission"],
        "filter": pair["filter"],
        "overlap_fraction": pair["overlap_fraction"],
        "candidates_kept": len(kept),
        "candidates_rejected": len(candidates) - len(kept),
    }
    for key in ("fwhm_science_pix", "fwhm_reference_pix", "flux_ratio", "difference_noise", "total_seconds"):
        if key in record:
            row[key] = record[key]
    sn_injected = True
    if truth is not None:
        # One truth row per (image, SN in it): two SNe of one galaxy share images.
        science = truth[(truth["obsid"].astype(str) == str(pair["science_obsid"]))
                        & (truth["sn_name"] == pair["sn_name"])]
        if len(science):
            sn_injected = bool(science["sn_injected"].iloc[0])
            row["sn_mag"] = float(science["sn_mag"].iloc[0])
    row["sn_in_science"] = sn_injected
    distance = np.full(len(kept), np.inf)
    if len(kept):
        target = SkyCoord(sn["ra"] * u.deg, sn["dec"] * u.deg)
        found = SkyCoord(kept["ra"].to_numpy() * u.deg, kept["dec"].to_numpy() * u.deg)
        distance = target.separation(found).arcsec
    near = distance <= radius_arcsec
    row["sn_recovered"] = bool(near.any())
    row["sn_significance"] = float(kept["significance"].to_numpy()[near].max()) if near.any() else np.nan
    row["sn_offset_arcsec"] = float(distance[near].min()) if near.any() else np.nan
    row.update(_detection_quality(pair_dir))
    row.update(_triplet_summary(pair_dir))
    return row


def _detection_quality(pair_dir: Path) -> dict[str, Any]:
    """Whether the pair's subtraction failed and why (``candidates.json``; empty if detection wrote none)."""
    path = pair_dir / "candidates.json"
    if not path.is_file():
        return {}
    detection = _read_json(path)
    return {"peaks_per_megapixel": detection.get("peaks_per_megapixel"),
            "subtraction_failed": bool(detection.get("failed", False)),
            "failure_reasons": "; ".join(detection.get("failure_reasons") or [])}


def summarize_imaging_track(
    pairs_path: str | Path,
    decisions_path: str | Path,
    yield_path: str | Path,
    catalog_path: str | Path,
    pair_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    dataset_summary: str | Path | None = None,
    truth: str | Path | None = None,
    match_radius_arcsec: float = DEFAULT_MATCH_RADIUS_ARCSEC,
) -> dict[str, Any]:
    """Write imaging_report.md, imaging_report.json and pairs_summary.csv to ``out_dir``.

    Parameters
    ----------
    pairs_path, decisions_path, yield_path : path
        The pairing stage's tables.
    catalog_path : path
        The SN catalogue (sn_name, ra, dec, ...).
    pair_dirs : sequence of path
        One directory per accepted pair, named by its pair_id, holding difference.json and
        candidates.csv.
    out_dir : path
        Where the report goes.
    dataset_summary : path, optional
        The triplet dataset's summary.json.
    truth : path, optional
        The synthetic survey's truth.csv: whether the SN is in each science image, and its magnitude.
    match_radius_arcsec : float
        A kept candidate this close to the catalogue position recovers the SN.

    Returns
    -------
    dict
        The content of imaging_report.json.
    """
    out_dir = Path(out_dir)
    pairs = _read_csv(Path(pairs_path), ("pair_id", "sn_name", "mission", "filter", "science_obsid",
                                         "overlap_fraction"))
    decisions = _read_csv(Path(decisions_path), ("sn_name", "mission", "accepted", "reason"))
    yields = _read_csv(Path(yield_path), ("mission",))
    catalog = _read_csv(Path(catalog_path), ("sn_name", "ra", "dec")).set_index("sn_name")
    truth_table = _read_csv(Path(truth), ("obsid", "sn_name", "sn_injected", "sn_mag")) if truth else None
    by_id = {Path(d).name: Path(d) for d in pair_dirs}
    missing = sorted(set(pairs["pair_id"]) - set(by_id))
    if missing:
        raise InputDataError(pairs_path, f"no pair directory given for {missing[:5]}")

    rows = []
    for _, pair in pairs.iterrows():
        if pair["sn_name"] not in catalog.index:
            raise InputDataError(pairs_path, f"pair {pair['pair_id']}: SN {pair['sn_name']!r} is not in {catalog_path}")
        rows.append(_pair_row(pair, by_id[pair["pair_id"]], catalog.loc[pair["sn_name"]], truth_table,
                              match_radius_arcsec))
    per_pair = pd.DataFrame(rows)

    reasons = decisions.loc[~decisions["accepted"].astype(bool), "reason"].value_counts().sort_index()
    with_sn = per_pair[per_pair["sn_in_science"]] if len(per_pair) else per_pair
    recovery = recall_interval(with_sn["sn_recovered"].to_numpy(bool) if len(with_sn) else np.zeros(0, bool))
    n_with, n_recovered = recovery["n"], recovery["recovered"]
    false_matches = int(per_pair.loc[~per_pair["sn_in_science"], "sn_recovered"].sum()) if len(per_pair) else 0
    by_magnitude = _recovery_by_magnitude(with_sn)
    dataset = _read_json(Path(dataset_summary)) if dataset_summary else None

    summary: dict[str, Any] = {
        "supernovae_in_catalog": len(catalog),
        "supernovae_with_pairs": int(pairs["sn_name"].nunique()),
        "pairs_accepted": len(pairs),
        "combinations_rejected": int(reasons.sum()),
        "rejected_by_reason": {str(k): int(v) for k, v in reasons.items()},
        "yield_by_mission": _yield_by_mission(yields, decisions).to_dict("records"),
        "sn_recovery": {
            "pairs_with_sn": n_with,
            "recovered": n_recovered,
            "fraction": recovery["fraction"] if n_with else None,
            "fraction_low": recovery["fraction_low"], "fraction_high": recovery["fraction_high"],
            "median_significance": (float(with_sn["sn_significance"].median())
                                    if n_recovered else None),
            "match_radius_arcsec": match_radius_arcsec,
            "matches_without_sn": false_matches,
            "by_magnitude": by_magnitude,
        },
        "candidates_per_image": {
            "median_kept": float(per_pair["candidates_kept"].median()) if len(per_pair) else None,
            "total_kept": int(per_pair["candidates_kept"].sum()) if len(per_pair) else 0,
            "total_rejected": int(per_pair["candidates_rejected"].sum()) if len(per_pair) else 0,
        },
        "failed_subtractions": _failed(per_pair),
        "fakes": _fake_totals(per_pair),
        "triplets": dataset,
    }
    write_table(out_dir / "pairs_summary.csv", per_pair)
    write_json(out_dir / "imaging_report.json", summary)
    write_text(out_dir / "imaging_report.md", _markdown(summary, per_pair, reasons))
    logger.info("%d pairs; SN recovered in %d of %d; wrote %s", len(pairs), n_recovered, n_with, out_dir)
    return summary


def _failed(per_pair: pd.DataFrame) -> list[dict[str, Any]]:
    """The pairs whose subtraction failed, with their peak density and the reasons."""
    if "subtraction_failed" not in per_pair.columns:
        return []
    failed = per_pair[per_pair["subtraction_failed"].fillna(False).astype(bool)]
    return [{"pair_id": row.pair_id, "peaks_per_megapixel": row.peaks_per_megapixel,
             "reasons": row.failure_reasons} for row in failed.itertuples()]


def _fake_totals(per_pair: pd.DataFrame) -> dict[str, int]:
    """Fakes injected, real and dropped per reason, summed over the pairs (empty before the triplets stage)."""
    columns = [c for c in per_pair.columns if c.startswith("fakes_")]
    return {c[len("fakes_"):]: int(per_pair[c].fillna(0).sum()) for c in columns}


# Bins of the injected SN magnitude: quartiles, each reported only with this many science images.
MAGNITUDE_BINS = 4
MIN_PAIRS_PER_BIN = 3


def _recovery_by_magnitude(with_sn: pd.DataFrame) -> list[dict[str, Any]]:
    """SN recovery in quantile bins of the injected magnitude (synthetic survey), with Wilson intervals.

    Pairs of one SN share it, so each bin also says how many distinct SNe stand behind it.
    """
    if "sn_mag" not in with_sn.columns:
        return []
    known = with_sn[np.isfinite(with_sn["sn_mag"].to_numpy(float))]
    if len(known) < MIN_PAIRS_PER_BIN:
        return []
    bins = min(MAGNITUDE_BINS, len(known) // MIN_PAIRS_PER_BIN)
    curve = completeness_curve(known["sn_mag"].to_numpy(float), known["sn_recovered"].to_numpy(bool), bins=bins,
                               quantiles=True, min_count=MIN_PAIRS_PER_BIN)
    magnitudes = known["sn_mag"].to_numpy(float)
    last = len(curve) - 1
    supernovae = []
    for index, row in enumerate(curve.itertuples()):
        inside = (magnitudes >= row.bin_low) & ((magnitudes <= row.bin_high) if index == last
                                                 else (magnitudes < row.bin_high))
        supernovae.append(int(known.loc[inside, "sn_name"].nunique()))
    curve.insert(3, "supernovae", supernovae)
    return [{key: (None if isinstance(value, float) and not np.isfinite(value) else value)
             for key, value in record.items()} for record in curve.to_dict("records")]


def _markdown(summary: dict[str, Any], per_pair: pd.DataFrame, reasons: pd.Series) -> str:
    recovery = summary["sn_recovery"]
    lines = [
        "# Supernova imaging track",
        "",
        f"{summary['pairs_accepted']} reference/science pairs for {summary['supernovae_with_pairs']} of "
        f"{summary['supernovae_in_catalog']} supernovae; {summary['combinations_rejected']} combinations rejected.",
        "",
        "## Pairs per mission",
        "",
        "Each decision counts once: a combination of two missions' images has its own row (`A|B`).",
        "",
        tabulate(pd.DataFrame(summary["yield_by_mission"]), headers="keys", tablefmt="github", showindex=False),
        "",
        "## Rejections by reason",
        "",
        tabulate(reasons.rename("combinations").reset_index().rename(columns={"index": "reason"}),
                 headers="keys", tablefmt="github", showindex=False) if len(reasons) else "None.",
        "",
        "## Supernova recovery",
        "",
    ]
    if recovery["pairs_with_sn"]:
        lines.append(
            f"Recovered (a kept 5σ candidate within {recovery['match_radius_arcsec']:g}″ of the catalogue position) "
            f"in {recovery['recovered']} of {recovery['pairs_with_sn']} science images that contain the SN: "
            f"{recovery['fraction']:.0%} (95 % Wilson {recovery['fraction_low']:.0%}–{recovery['fraction_high']:.0%})"
            + (f", median significance {recovery['median_significance']:.1f}σ." if recovery["median_significance"]
               else "."))
    else:
        lines.append("No science image contains the SN.")
    if recovery["matches_without_sn"]:
        lines.append(f"{recovery['matches_without_sn']} pair(s) without the SN had a candidate at its position.")
    if recovery.get("by_magnitude"):
        table = pd.DataFrame(recovery["by_magnitude"]).rename(columns={"n": "images"})
        lines += ["", "Recovery against the injected SN magnitude (quantile bins; 95 % Wilson intervals over images, "
                  f"none below {MIN_PAIRS_PER_BIN} images; images of one SN are not independent):", "",
                  tabulate(table, headers="keys", tablefmt="github", showindex=False, floatfmt=".2f")]
    fakes = summary.get("fakes") or {}
    if fakes.get("injected"):
        dropped = ", ".join(f"{count} {key[len('dropped_'):].replace('_', ' ')}" for key, count in fakes.items()
                            if key.startswith("dropped_"))
        lines += ["", "## Fakes", "",
                  f"{fakes['injected']} fakes injected, {fakes['real']} real examples (a kept candidate within the "
                  f"match radius, flux consistent, expected significance at least the detection threshold); "
                  f"dropped: {dropped}."]
    failed = summary.get("failed_subtractions") or []
    if failed:
        lines += ["", "## Failed subtractions", "",
                  f"{len(failed)} of {summary['pairs_accepted']} pair(s) gave far more peaks above the detection "
                  "threshold than a sky has transients: their candidates are mostly subtraction residuals.", "",
                  tabulate(pd.DataFrame(failed), headers="keys", tablefmt="github", showindex=False, floatfmt=".0f")]
    columns = [c for c in ("pair_id", "mission", "filter", "sn_mag", "sn_recovered", "sn_significance",
                           "candidates_kept", "candidates_rejected", "subtraction_failed", "fakes_real")
               if c in per_pair.columns]
    lines += ["", "## Per pair", "",
              tabulate(per_pair[columns], headers="keys", tablefmt="github", showindex=False, floatfmt=".2f")
              if len(per_pair) else "No pairs."]
    triplets = summary["triplets"]
    if triplets:
        lines += ["", "## Triplets", "", "```json", json.dumps(triplets, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"
