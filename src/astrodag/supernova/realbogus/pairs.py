"""Scoring the candidates of differenced pairs: cut-outs, scored tables and stamps of the best.

:func:`candidate_cutouts` cuts and normalises a pair's candidates as :func:`score_pair` scores
them; :func:`score_pair` and :func:`score_batch` go from differenced pairs (``difference.fits``,
``significance.fits``, ``mask.fits``, ``candidates.csv``) to a scored candidate table, and
:func:`write_stamps` writes FITS and PNG stamps of the best candidates.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrodag.errors import InputDataError
from astrodag.io import atomic_path, read_table, write_json, write_table
from astrodag.logs import progress_enabled
from astrodag.supernova.realbogus.model import CHANNELS
from astrodag.supernova.realbogus.scoring import RealBogusScorer, ScoringSettings

log = logging.getLogger(__name__)

# Cut-outs made at once in score_pair (the forward passes then go in the scorer's smaller batches).
CUTOUT_BATCH = 1024
SCORED_COLUMNS = ("candidate_id", "pair_id", "x", "y", "ra", "dec", "significance", "score", "is_real", "kept",
                  "masked_fraction")


def _pair_candidates(pair_dir: Path, products, candidates: str | Path | pd.DataFrame | None) -> pd.DataFrame:
    """The pair's candidates: given, read from ``candidates.csv``, or detected now (not written)."""
    from astrodag.supernova.imaging.detect import DetectSettings, detect_candidates

    if isinstance(candidates, pd.DataFrame):
        table = candidates
        source: Path = pair_dir / "candidates.csv"
    else:
        source = Path(candidates) if candidates is not None else pair_dir / "candidates.csv"
        if source.is_file():
            table = read_table(source, ("x", "y"), {"x": float, "y": float})
        elif candidates is not None:
            raise InputDataError(source, "candidate table does not exist")
        else:
            header = products.header
            table = detect_candidates(products.significance, products.score, products.difference, products.mask,
                                      products.psf, float(header["FLUXSCL"]), float(header["FLUXZPD"]), products.wcs,
                                      DetectSettings(), fwhm=float(header["FWHM_D"]))
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise InputDataError(source, f"candidate table lacks the columns {missing}")
    table = table.reset_index(drop=True)
    if "candidate_id" not in table.columns:
        table["candidate_id"] = np.arange(len(table))
    return table


def candidate_cutouts(products, x: np.ndarray, y: np.ndarray, size: int, normalisation: Mapping[str, Any],
                      batch_size: int = CUTOUT_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The normalised cut-outs that :func:`score_pair` scores, ``batch_size`` candidates at a time.

    Parameters
    ----------
    products : astrodag.supernova.imaging.pipeline.PairProducts
        A pair's images (:func:`astrodag.supernova.imaging.pipeline.read_products`).
    x, y : ndarray
        Candidate positions (0-based science pixels).
    size : int
        Cut-out side (``scorer.input_shape[-1]``).
    normalisation : mapping
        ``{"method", "clip"}`` (``scorer.normalisation``).
    batch_size : int, default CUTOUT_BATCH

    Yields
    ------
    (ndarray, ndarray)
        ``(k, 3, size, size)`` float32 cut-outs (science, reference, difference; invalid
        pixels 0, as in the triplets stage) and each one's invalid-pixel fraction.
    """
    from astrodag.supernova.imaging.triplets import cutouts

    planes = [products.science, products.reference, products.difference]
    # The same invalid-pixel rule as the triplets stage, so scored cut-outs look like the training ones.
    invalid = products.mask | ~np.isfinite(products.difference)
    for start in range(0, len(x), batch_size):
        yield cutouts(planes, invalid, x[start:start + batch_size], y[start:start + batch_size], size,
                      normalisation["method"], float(normalisation["clip"]), noise=products.noise)


def score_pair(pair_dir: str | Path, scorer: RealBogusScorer, out_table: str | Path | None = None,
               stamps_dir: str | Path | None = None, top: int = 20, candidates: str | Path | pd.DataFrame | None = None,
               max_masked_fraction: float = 0.5, pair_id: str | None = None) -> pd.DataFrame:
    """Score every candidate of one differenced pair.

    Parameters
    ----------
    pair_dir : str or Path
        Holds ``difference.fits`` (with its ``SCIENCE``/``REFERENCE`` extensions),
        ``significance.fits`` and ``mask.fits``, as written by the difference stage.
    scorer : RealBogusScorer
    out_table : str or Path, optional
        Write the scored table here (``.csv`` or ``.parquet``).
    stamps_dir : str or Path, optional
        Write FITS and PNG stamps of the ``top`` best-scoring candidates here.
    top : int, default 20
    candidates : str, Path or DataFrame, optional
        Candidate table (columns ``x``, ``y`` at least, 0-based science pixels). Default
        ``pair_dir/candidates.csv``; when that does not exist either, candidates are detected
        with the default :class:`astrodag.supernova.imaging.detect.DetectSettings` (not written).
    max_masked_fraction : float, default 0.5
        Candidates whose cut-out is more invalid than this get a NaN score.
    pair_id : str, optional
        Recorded in the table (default: the directory's name).

    Returns
    -------
    DataFrame
        ``SCORED_COLUMNS`` (``kept`` is the detection stage's shape-cut verdict, True when the
        table has none; ``is_real`` is ``score >= scorer.threshold``), sorted as the candidates.
    """
    from astrodag.supernova.imaging.pipeline import read_products

    pair_dir = Path(pair_dir)
    pair_id = pair_id or pair_dir.name
    products = read_products(pair_dir)
    table = _pair_candidates(pair_dir, products, candidates)
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    size = scorer.input_shape[-1]
    scores = np.full(len(table), np.nan, np.float32)
    fractions = np.ones(len(table))
    position = 0
    for stack, fraction in candidate_cutouts(products, x, y, size, scorer.normalisation):
        usable = fraction <= max_masked_fraction
        block = np.full(len(stack), np.nan, np.float32)
        if usable.any():
            block[usable] = scorer.score(stack[usable])
        scores[position:position + len(stack)] = block
        fractions[position:position + len(stack)] = fraction
        position += len(stack)
    scored = _scored_table(table, pair_id, products, x, y, scores, fractions, scorer.threshold)
    if out_table is not None:
        write_table(out_table, scored)
    if stamps_dir is not None and top:
        write_stamps(stamps_dir, {pair_id: (pair_dir, products)}, _top_rows(scored, top), scorer.threshold, size)
    return scored


def _scored_table(table: pd.DataFrame, pair_id: str, products, x: np.ndarray, y: np.ndarray, scores: np.ndarray,
                  fractions: np.ndarray, threshold: float) -> pd.DataFrame:
    if {"ra", "dec"} <= set(table.columns):
        ra, dec = table["ra"].to_numpy(float), table["dec"].to_numpy(float)
    elif len(x):
        ra, dec = (np.asarray(v, float) for v in products.wcs.pixel_to_world_values(x, y))
    else:
        ra = dec = np.array([], float)
    if "significance" in table.columns:
        significance = table["significance"].to_numpy(float)
    else:
        ix = np.clip(np.rint(x).astype(int), 0, products.significance.shape[1] - 1)
        iy = np.clip(np.rint(y).astype(int), 0, products.significance.shape[0] - 1)
        significance = products.significance[iy, ix].astype(float)
    kept = table["kept"].to_numpy(dtype=bool) if "kept" in table.columns else np.ones(len(table), bool)
    return pd.DataFrame({
        "candidate_id": table["candidate_id"].to_numpy(), "pair_id": pair_id, "x": x, "y": y, "ra": ra, "dec": dec,
        "significance": significance, "score": scores.astype(np.float64),
        "is_real": np.nan_to_num(scores, nan=-1.0) >= threshold, "kept": kept, "masked_fraction": fractions,
    }, columns=list(SCORED_COLUMNS))


def _top_rows(scored: pd.DataFrame, top: int) -> pd.DataFrame:
    return scored.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable").head(top)


def score_batch(pair_dirs: Sequence[str | Path], scorer: RealBogusScorer, out_table: str | Path,
                stamps_dir: str | Path | None = None, settings: ScoringSettings | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Score the candidates of many differenced pairs into one table.

    Pairs are processed one at a time (one pair's images and one batch of cut-outs in
    memory); only the scored rows and the running ``top`` candidates are kept.

    Parameters
    ----------
    pair_dirs : sequence of str or Path
        Pair directories (see :func:`score_pair`); each needs its ``candidates.csv`` or is
        detected on the fly.
    scorer : RealBogusScorer
    out_table : str or Path
        The scored candidate table (``.csv`` or ``.parquet``) of all pairs.
    stamps_dir : str or Path, optional
        FITS and PNG stamps of the ``settings.top`` best candidates over all pairs, plus
        ``top_candidates.csv`` (the folder is made even when there is nothing to show).
    settings : ScoringSettings, optional
    progress : bool, optional
        Show a progress bar (default: only on a terminal).

    Returns
    -------
    dict
        Pairs, candidates, scored, called real, threshold, seconds, candidates per second,
        device and the resolved precision (also written beside the table as
        ``<table stem>.json``).
    """
    from tqdm.auto import tqdm

    settings = settings or ScoringSettings()
    started = time.perf_counter()
    frames = []
    best: list[tuple[float, int, int, str]] = []  # a min-heap of (score, pair index, row, pair_id)
    directories = [Path(path) for path in pair_dirs]
    for pair_index, pair_dir in enumerate(tqdm(directories, desc="scoring pairs", unit="pair",
                                           disable=not progress_enabled(progress))):
        scored = score_pair(pair_dir, scorer, top=0, max_masked_fraction=settings.max_masked_fraction)
        frames.append(scored)
        for row, value in zip(scored.index, scored["score"].to_numpy()):
            if np.isfinite(value) and settings.top:
                entry = (float(value), pair_index, int(row), scored.at[row, "pair_id"])
                if len(best) < settings.top:
                    heapq.heappush(best, entry)
                elif entry > best[0]:
                    heapq.heapreplace(best, entry)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORED_COLUMNS))
    write_table(out_table, table)
    seconds = time.perf_counter() - started
    if stamps_dir is not None:
        from astrodag.supernova.imaging.pipeline import read_products

        # The folder and its top_candidates.csv are written even when nothing was scored.
        chosen = sorted(best, reverse=True)
        rows = pd.concat([frames[index].loc[[row]] for _, index, row, _ in chosen], ignore_index=True) if chosen \
            else pd.DataFrame(columns=list(SCORED_COLUMNS))
        pairs = {}
        for _, index, _, pair_id in chosen:
            if pair_id not in pairs:  # each pair's images are read once, however many of its candidates are top
                pairs[pair_id] = (directories[index], read_products(directories[index]))
        write_stamps(stamps_dir, pairs, rows, scorer.threshold, scorer.input_shape[-1])
    scored_count = int(table["score"].notna().sum()) if len(table) else 0
    summary = {"pairs": len(directories), "candidates": int(len(table)), "scored": scored_count,
               "called_real": int(table["is_real"].sum()) if len(table) else 0, "threshold": scorer.threshold,
               "seconds": round(seconds, 3),
               "candidates_per_second": round(scored_count / seconds, 1) if seconds > 0 else None,
               "device": str(scorer.device), "precision": scorer.precision}
    write_json(Path(out_table).with_suffix(".json"), summary)
    log.info("scored %d candidates of %d pairs in %.1f s on %s in %s; %d called real at P >= %.3f", scored_count,
             len(directories), seconds, scorer.device, scorer.precision, summary["called_real"], scorer.threshold)
    return summary


def write_stamps(stamps_dir: str | Path, pairs: Mapping[str, tuple[Path, Any]], rows: pd.DataFrame,
                 threshold: float, size: int = 63) -> None:
    """FITS and PNG stamps (science, reference, difference) of scored candidates.

    Parameters
    ----------
    stamps_dir : str or Path
        Receives ``{rank:03d}_{pair_id}_{candidate_id}.fits`` (three image HDUs with the
        cut-out WCS; score and position in the primary header), the same name as ``.png``
        and ``top_candidates.csv`` (the rows with their rank and stamp name).
    pairs : mapping
        ``pair_id -> (pair_dir, products)`` for every pair in ``rows``.
    rows : DataFrame
        Scored rows (``SCORED_COLUMNS``), best first.
    threshold : float
        Shown in the PNG titles.
    size : int, default 63
        Stamp side in pixels (the model's cut-out size).
    """
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from matplotlib.figure import Figure

    from astrodag.io import save_figure
    from astrodag.supernova.imaging.fitsio import provenance_cards

    stamps_dir = Path(stamps_dir)
    stamps_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for rank, row in enumerate(rows.itertuples(index=False), start=1):
        pair_dir, products = pairs[row.pair_id]
        name = f"{rank:03d}_{row.pair_id}_{row.candidate_id}"
        hdus: list = [fits.PrimaryHDU()]
        header = hdus[0].header
        for key, value, comment in (("PAIRID", str(row.pair_id), "pair"),
                                    ("CANDID", str(row.candidate_id), "candidate"),
                                    ("RBSCORE", float(row.score), "real/bogus P(real)"),
                                    ("RBTHRESH", float(threshold), "threshold for real"),
                                    ("CANDX", float(row.x), "0-based x in the science image"),
                                    ("CANDY", float(row.y), "0-based y in the science image"),
                                    ("RA", float(row.ra), "deg"), ("DEC", float(row.dec), "deg")):
            header[key] = (value, comment)
        for card in provenance_cards({"stage": "score", "inputs": {"difference": pair_dir / "difference.fits"}}):
            if card[0] != "HISTORY":
                header[card[0]] = card[1:]
        panels = []
        for channel, plane in zip(CHANNELS, (products.science, products.reference, products.difference)):
            cut = Cutout2D(plane, (row.x, row.y), size, wcs=products.wcs, mode="partial", fill_value=np.nan)
            hdus.append(fits.ImageHDU(cut.data.astype(np.float32), header=cut.wcs.to_header(), name=channel.upper()))
            panels.append(cut.data)
        with atomic_path(stamps_dir / f"{name}.fits") as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True)
        figure = Figure(figsize=(6.6, 2.5), layout="constrained")
        axes = figure.subplots(1, 3)
        for axis, channel, panel in zip(axes, CHANNELS, panels):
            finite = panel[np.isfinite(panel)]
            low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
            axis.imshow(panel, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            axis.set_title(channel, fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
        verdict = "real" if row.score >= threshold else "bogus"
        figure.suptitle(f"{row.pair_id} #{row.candidate_id}: P(real) = {row.score:.3f} ({verdict})", fontsize=8)
        save_figure(stamps_dir / f"{name}.png", figure)
        names.append(name)
    write_table(stamps_dir / "top_candidates.csv", rows.assign(rank=np.arange(1, len(rows) + 1), stamp=names))
