"""Active learning for the real/bogus classifier: review the most uncertain new candidates.

One round:

1. :func:`write_review_queue` takes the scored candidate table of the scoring stage
   (:func:`astrodag.supernova.realbogus.pairs.score_batch`, ``results/supernova/scored/candidates.parquet``),
   ranks the scored candidates by uncertainty, the distance of the score from the model's
   decision threshold (ties: the higher binary entropy first), and re-cuts only the ``count``
   most uncertain from their pair's images, with the scorer's own cut-out code
   (:func:`astrodag.supernova.realbogus.pairs.candidate_cutouts`, the model's normalisation), so the
   queued cut-outs are exactly those that were scored. It writes to ``out_dir``:

   ``review_queue.csv``
       One row per candidate, most uncertain first: ``queue_row`` (its rank and its row in
       ``review_triplets.npz``), ``pair_id, sn_name, mission, filter`` (the last three from
       ``pairs.csv``), ``candidate_id, x, y, ra, dec, significance, score``, ``distance``
       (``|score - threshold|``), ``entropy`` (bits), ``kept`` (the detection stage's
       shape-cut verdict), ``masked_fraction``, ``stamp`` (the PNG, relative to ``out_dir``)
       and an empty ``label`` column for the reviewer.
   ``review_triplets.npz``
       The queued cut-outs (``cutouts``, ``(n, 3, S, S)`` float32) with ``pair_id``, ``x``,
       ``y`` per row and the ``threshold``, so the reviews can be ingested after the pair
       products have changed.
   ``stamps/{queue_row:05d}.png``
       Science, reference and difference side by side.

2. A reviewer fills ``label`` with ``1``/``real``, ``0``/``bogus`` or ``skip`` (not used);
   the rows may be reordered or deleted, the other columns must stay as written.

3. :func:`ingest_reviews` writes the labelled cut-outs as one ``{pair_id}.npz`` per pair in
   exactly the layout of a pair's ``triplets.npz`` (:func:`astrodag.supernova.imaging.triplets.cut_triplets`;
   ``source = "reviewed"``), plus ``ingested.json``; the dataset stage takes those files as
   extra triplet files in the next run, where a reviewed cut-out replaces the pair's own copy
   of that candidate. Splits stay by supernova there, so a reviewed candidate joins the split
   of its supernova.

Only the scores (one column) of the whole table are held at once; the other columns are read
for the queued rows only, one Parquet row group at a time, and only the queued candidates'
pairs are opened, so a night of millions of candidates queues in bounded memory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrodag.errors import InputDataError
from astrodag.io import atomic_path, read_table, save_figure, write_json, write_table
from astrodag.supernova.imaging.triplets import CHANNELS

log = logging.getLogger(__name__)

QUEUE_FILE = "review_queue.csv"
TRIPLETS_FILE = "review_triplets.npz"
REVIEWED_SOURCE = "reviewed"
LABELS = {"1": 1, "real": 1, "0": 0, "bogus": 0, "skip": None}
META_COLUMNS = ("pair_id", "sn_name", "mission", "filter")
# Of the scored candidate table (astrodag.supernova.realbogus.pairs.SCORED_COLUMNS): needed, and carried into
# the queue.
REQUIRED_SCORED_COLUMNS = ("pair_id", "x", "y", "score")
_NOT_SCORED = "file does not exist: score the candidates first (astrodag supernova score)"
QUEUED_COLUMNS = (*REQUIRED_SCORED_COLUMNS, "candidate_id", "ra", "dec", "significance", "kept", "masked_fraction")
SAFE_PAIR_ID = re.compile(r"[A-Za-z0-9_.-]+")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p): 1 at p = 0.5, 0 at p = 0 or 1."""
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def uncertainty_order(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of ``scores`` from the most to the least uncertain.

    Most uncertain is the score nearest ``threshold``; equal distances (to 1e-9) go to the
    higher entropy (the score nearer 0.5), then to the earlier row.
    """
    scores = np.asarray(scores, float)
    # Rounded so that float noise (0.3 - 0.2 != 0.4 - 0.3) does not decide ties.
    distance = np.round(np.abs(scores - threshold), 9)
    return np.lexsort((np.arange(len(scores)), -binary_entropy(scores), distance))


def most_uncertain(scores: np.ndarray, threshold: float, count: int) -> np.ndarray:
    """Indices of the ``count`` most uncertain finite ``scores``, most uncertain first.

    The same rows, in the same order, as the first ``count`` of :func:`uncertainty_order`
    over the finite scores, found in linear time (a partition, then a sort of the few
    nearest the threshold), which matters for millions of candidates. NaN scores
    (candidates too masked to score) are left out.
    """
    scores = np.asarray(scores, float)
    rows = np.flatnonzero(np.isfinite(scores))
    if len(rows) > count:
        distance = np.round(np.abs(scores[rows] - threshold), 9)
        # Every row as near as the count-th nearest stays, so ties are decided as in uncertainty_order.
        rows = rows[distance <= np.partition(distance, count - 1)[count - 1]]
    return rows[uncertainty_order(scores[rows], threshold)][:count]


def _queued_columns(columns: Iterable[str], source: Path) -> list[str]:
    columns = list(columns)
    missing = [c for c in REQUIRED_SCORED_COLUMNS if c not in columns]
    if missing:
        raise InputDataError(source, f"lacks the columns {missing}; is it the scoring stage's candidate table?")
    return [c for c in QUEUED_COLUMNS if c in columns]


def _checked_scores(scores: Any, source: Path) -> np.ndarray:
    scores = np.asarray(scores, float)
    if np.any((scores < 0) | (scores > 1)):
        raise InputDataError(source, "'score' must be probabilities in [0, 1]")
    return scores


def _scored_rows(scored: str | Path | pd.DataFrame, threshold: float, count: int) -> tuple[pd.DataFrame, int]:
    """The ``count`` most uncertain rows of a scored table (most uncertain first) and how many have a score.

    Of a Parquet table only the ``score`` column is read whole; the other columns are read
    for the chosen rows, one row group at a time.
    """
    if isinstance(scored, pd.DataFrame) or Path(scored).suffix == ".csv":
        source = Path("scored") if isinstance(scored, pd.DataFrame) else Path(scored)
        table = scored if isinstance(scored, pd.DataFrame) else read_table(
            source, REQUIRED_SCORED_COLUMNS, {"pair_id": str}, not_found=_NOT_SCORED)
        wanted = _queued_columns(table.columns, source)
        scores = _checked_scores(table["score"], source)
        rows = most_uncertain(scores, threshold, count)
        return table.iloc[rows][wanted].reset_index(drop=True), int(np.isfinite(scores).sum())
    source = Path(scored)
    if source.suffix != ".parquet":
        raise InputDataError(source, "expected a .parquet or .csv table (the scoring stage's candidates.parquet)")
    if not source.is_file():
        raise InputDataError(source, _NOT_SCORED)
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(source)
    wanted = _queued_columns(parquet.schema_arrow.names, source)
    scores = _checked_scores(parquet.read(columns=["score"]).column("score").to_numpy(), source)
    rows = most_uncertain(scores, threshold, count)
    ends = np.cumsum([parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
    groups = np.searchsorted(ends, rows, side="right")  # the row group of each chosen row
    parts = []
    for group in np.unique(groups):
        chosen = np.flatnonzero(groups == group)
        local = rows[chosen] - (ends[group - 1] if group else 0)
        part = parquet.read_row_group(int(group), columns=wanted).take(local).to_pandas()
        parts.append(part.set_axis(chosen))
    table = pd.concat(parts).sort_index() if parts else pd.DataFrame(columns=wanted)
    return table.reset_index(drop=True), int(np.isfinite(scores).sum())


def _pair_directories(pair_dirs: Iterable[str | Path]) -> dict[str, Path]:
    """``pair_id -> directory``: a pair's id is its directory's name, as in the scoring stage."""
    directories: dict[str, Path] = {}
    for path in map(Path, pair_dirs):
        if directories.get(path.name, path) != path:
            raise InputDataError(path, f"two pair directories are named {path.name!r} ({directories[path.name]})")
        directories[path.name] = path
    return directories


def _queued_cutouts(table: pd.DataFrame, directories: Mapping[str, Path], size: int,
                    normalisation: Mapping[str, Any]) -> np.ndarray:
    """Cut-outs of the queued candidates from their pairs' images, exactly as the scorer cut them."""
    from astrodag.supernova.imaging.pipeline import read_products
    from astrodag.supernova.realbogus.pairs import candidate_cutouts

    stack = np.empty((len(table), len(CHANNELS), size, size), np.float32)
    for pair_id, group in table.groupby("pair_id", sort=True):
        pair_dir = directories[pair_id]
        batches = list(candidate_cutouts(read_products(pair_dir), group["x"].to_numpy(float),
                                         group["y"].to_numpy(float), size, normalisation))
        stack[group.index.to_numpy()] = np.concatenate([cut for cut, _ in batches])
        fraction = np.concatenate([fraction for _, fraction in batches])
        if "masked_fraction" in group.columns and not np.allclose(
                fraction, group["masked_fraction"].to_numpy(float), rtol=0, atol=1e-6):
            raise InputDataError(pair_dir, "its images differ from those its candidates were scored on (the "
                                           "masked fractions do not match): score the candidates again")
    return stack


def write_review_queue(scored: str | Path | pd.DataFrame, pair_dirs: Iterable[str | Path],
                       model_json: str | Path | Mapping[str, Any], out_dir: str | Path, count: int = 100,
                       pairs: str | Path | None = None, stamps: bool = True) -> dict:
    """Queue the ``count`` most uncertain newly scored candidates for review (see the module notes).

    Parameters
    ----------
    scored : str, Path or DataFrame
        The scoring stage's candidate table (``.parquet``/``.csv``,
        :data:`astrodag.supernova.realbogus.pairs.SCORED_COLUMNS`): ``pair_id``, ``x``, ``y``, ``score``
        at least; NaN scores (cut-outs too masked to score) are never queued.
    pair_dirs : iterable of str or Path
        The pair directories that were scored (the pair id is the directory's name); the
        queued candidates' pairs are read again (``difference.fits``, ``mask.fits``...).
    model_json : str, Path or mapping
        The sidecar of the model that scored them: its ``threshold``, ``normalisation`` and
        ``input_shape`` decide the ranking and the cut-outs.
    out_dir : str or Path
        Receives ``review_queue.csv``, ``review_triplets.npz`` and ``stamps/``.
    count : int, default 100
        Candidates queued (fewer when fewer have a score).
    pairs : str or Path, optional
        ``pairs.csv``, filling ``sn_name``, ``mission`` and ``filter`` from ``pair_id``
        (without it they stay empty and :func:`ingest_reviews` refuses the labels).
    stamps : bool, default True
        Draw the PNG stamps.

    Returns
    -------
    dict
        Counts, the threshold, the score range of the queue and the pairs read.

    Raises
    ------
    InputDataError
        For a missing or invalid table, sidecar or pairs table, scores outside [0, 1], a
        queued pair without a directory, or pair images that changed since scoring.
    """
    from astrodag.supernova.realbogus.model import check_sidecar, read_sidecar, sidecar_normalisation

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    sidecar = check_sidecar(model_json) if isinstance(model_json, Mapping) else read_sidecar(model_json)
    threshold = float(sidecar["threshold"])
    normalisation = sidecar_normalisation(sidecar)
    size = int(sidecar["input_shape"][-1])
    out_dir = Path(out_dir)

    table, available = _scored_rows(scored, threshold, count)
    table["pair_id"] = table["pair_id"].astype(str)
    directories = _pair_directories(pair_dirs)
    unknown = sorted(set(table["pair_id"]) - set(directories))
    if unknown:
        where = Path("scored") if isinstance(scored, pd.DataFrame) else Path(scored)
        raise InputDataError(where, f"queues candidates of pairs without a pair directory given: {unknown[:5]}")
    cutouts = _queued_cutouts(table, directories, size, normalisation)
    if pairs is not None:
        table = _with_pair_columns(table, Path(pairs))
    for column in ("sn_name", "mission", "filter", "candidate_id", "ra", "dec", "significance"):
        if column not in table.columns:
            table[column] = "" if column in META_COLUMNS else np.nan

    queue = pd.DataFrame({"queue_row": np.arange(len(table))})
    for column in (*META_COLUMNS, "candidate_id", "x", "y", "ra", "dec", "significance", "score"):
        queue[column] = table[column].to_numpy()
    queue["distance"] = np.abs(queue["score"] - threshold)
    queue["entropy"] = binary_entropy(queue["score"].to_numpy(float))
    for column in ("kept", "masked_fraction"):
        if column in table.columns:
            queue[column] = table[column].to_numpy()
    queue["stamp"] = [f"stamps/{i:05d}.png" for i in queue["queue_row"]] if stamps else ""
    queue["label"] = ""

    with atomic_path(out_dir / TRIPLETS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, cutouts=cutouts, pair_id=queue["pair_id"].to_numpy(str), x=queue["x"].to_numpy(float),
                 y=queue["y"].to_numpy(float), threshold=np.array(threshold))
    if stamps:
        (out_dir / "stamps").mkdir(parents=True, exist_ok=True)  # even for an empty queue (a rule's output)
        writer = _StampWriter(size)
        for i, row in queue.iterrows():
            writer.write(out_dir / row["stamp"], cutouts[i],
                         f"#{i}  {row['pair_id']}  x={row['x']:.1f} y={row['y']:.1f}  score={row['score']:.3f}")
    write_table(out_dir / QUEUE_FILE, queue)
    summary = {"queued": int(len(queue)), "available": available, "threshold": threshold,
               "pairs": int(queue["pair_id"].nunique()),
               "score_range": [float(queue["score"].min()), float(queue["score"].max())] if len(queue) else None,
               "max_distance": float(queue["distance"].max()) if len(queue) else None}
    log.info("review queue: %d of %d scored candidates from %d pair(s), scores %s", summary["queued"],
             summary["available"], summary["pairs"], summary["score_range"])
    return summary


class _StampWriter:
    """Science | reference | difference PNGs drawn on one reused figure (fast for many stamps)."""

    def __init__(self, size: int):
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(6.0, 2.3))
        axes = self.figure.subplots(1, 3)
        blank = np.zeros((size, size))
        self.images = []
        for axis, name in zip(axes, CHANNELS):
            self.images.append(axis.imshow(blank, origin="lower", cmap="gray"))
            axis.set_title(name, fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        self.title = self.figure.suptitle("", fontsize=8)

    def write(self, path: Path, triplet: np.ndarray, caption: str) -> None:
        for image, plane in zip(self.images, triplet):
            low, high = np.percentile(plane, [1, 99.5])
            image.set_data(plane)
            image.set_clim(low, high if high > low else low + 1)
        self.title.set_text(caption)
        save_figure(path, self.figure)


def _with_pair_columns(table: pd.DataFrame, pairs: Path) -> pd.DataFrame:
    info = read_table(pairs, META_COLUMNS, {column: str for column in META_COLUMNS}, not_found="file does not exist")
    unknown = sorted(set(table["pair_id"]) - set(info["pair_id"]))
    if unknown:
        raise InputDataError(pairs, f"has no row for the pair(s) {unknown[:5]}")
    table = table.drop(columns=[c for c in META_COLUMNS[1:] if c in table.columns])
    return table.merge(info[list(META_COLUMNS)].drop_duplicates("pair_id"), on="pair_id", how="left")


def _parse_label(value: str) -> int | None:
    """1, 0 or None (skip); KeyError for anything else."""
    return LABELS[value.strip().lower()]


def ingest_reviews(review_csv: str | Path, out_dir: str | Path, triplets: str | Path | None = None) -> dict:
    """Turn a reviewed queue into labelled triplet files for the next training run.

    Parameters
    ----------
    review_csv : str or Path
        ``review_queue.csv`` with its ``label`` column filled (``1``/``real``, ``0``/``bogus``
        or ``skip``, case-insensitive).
    out_dir : str or Path
        Receives one ``{pair_id}.npz`` per reviewed pair (the layout of a pair's
        ``triplets.npz``, ``source = "reviewed"``) and ``ingested.json``. Files listed by an
        earlier ``ingested.json`` there and not written again are removed.
    triplets : str or Path, optional
        The queue's cut-outs (default: ``review_triplets.npz`` beside ``review_csv``).

    Returns
    -------
    dict
        The summary written to ``ingested.json``.

    Raises
    ------
    InputDataError
        Naming the CSV line (and ``queue_row``) of every missing or invalid label (up to
        ten), and for rows that do not match the cut-out file, duplicated rows, missing
        ``sn_name``/``mission``/``filter``, or no labelled row at all.
    """
    review_csv = Path(review_csv)
    out_dir = Path(out_dir)
    triplets = Path(triplets) if triplets is not None else review_csv.with_name(TRIPLETS_FILE)
    if not review_csv.is_file():
        raise InputDataError(review_csv, "file does not exist")
    # Everything as text: an empty label must stay '' (not NaN) and pair ids must not become numbers.
    reviews = pd.read_csv(review_csv, dtype=str, keep_default_na=False)
    required = ("queue_row", *META_COLUMNS, "x", "y", "label")
    missing = [c for c in required if c not in reviews.columns]
    if missing:
        raise InputDataError(review_csv, f"lacks the columns {missing}; is it a review_queue.csv?")
    if not triplets.is_file():
        raise InputDataError(triplets, "missing: the review queue's cut-outs (written beside review_queue.csv)")
    try:
        with np.load(triplets, allow_pickle=False) as npz:
            cutouts, queued_pair, queued_x, queued_y = npz["cutouts"], npz["pair_id"], npz["x"], npz["y"]
    except (OSError, KeyError, ValueError) as error:
        raise InputDataError(triplets, f"not a review queue's cut-out file: {error}") from error

    lines = np.arange(len(reviews)) + 2  # line 1 is the header
    where = [f"line {line} (queue_row {row or '?'})" for line, row in zip(lines, reviews["queue_row"])]
    labels, problems = [], []
    for place, value in zip(where, reviews["label"]):
        try:
            labels.append(_parse_label(value))
        except KeyError:
            labels.append(None)
            problems.append(f"{place}: {'missing label' if not value.strip() else f'label {value!r}'}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise InputDataError(review_csv, f"{len(problems)} row(s) without a valid label ({shown}); use 1 or real, "
                                         "0 or bogus, or skip")

    queue_rows, seen = [], set()
    for place, text, pair_id, x, y in zip(where, reviews["queue_row"], reviews["pair_id"], reviews["x"], reviews["y"]):
        try:
            row, x, y = int(text), float(x), float(y)
        except ValueError:
            raise InputDataError(review_csv, f"{place}: queue_row, x and y must be numbers") from None
        if not (0 <= row < len(cutouts) and queued_pair[row] == pair_id and np.isclose(queued_x[row], x)
                and np.isclose(queued_y[row], y)):
            raise InputDataError(review_csv, f"{place}: pair_id/x/y do not match row {row} of {triplets.name}; "
                                             "edit only the label column of the queue it was written with")
        if row in seen:
            raise InputDataError(review_csv, f"{place}: queue_row {row} appears twice")
        seen.add(row)
        queue_rows.append(row)

    reviews = reviews.assign(_row=queue_rows, _label=labels, _where=where)
    labelled = reviews[reviews["_label"].notna()].sort_values("_row")
    if labelled.empty:
        raise InputDataError(review_csv, "no row is labelled 1/real or 0/bogus (all skipped)")
    for column in ("sn_name", "mission", "filter"):
        blank = labelled[labelled[column].str.strip() == ""]
        if len(blank):
            raise InputDataError(review_csv, f"{blank['_where'].iloc[0]}: {column} is empty; the dataset needs it "
                                             "(write the queue with the pairs table)")

    written = []
    for pair_id, group in labelled.groupby("pair_id", sort=True):
        if not SAFE_PAIR_ID.fullmatch(pair_id):
            raise InputDataError(review_csv, f"{group['_where'].iloc[0]}: pair_id {pair_id!r} is not a safe file name")
        meta = group[list(META_COLUMNS[1:])].drop_duplicates()
        if len(meta) > 1:
            raise InputDataError(review_csv, f"pair {pair_id} has conflicting sn_name/mission/filter: "
                                             f"{meta.to_dict('records')}")
        rows = group["_row"].to_numpy(int)
        path = out_dir / f"{pair_id}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, cutouts=cutouts[rows].astype(np.float32), label=group["_label"].to_numpy(np.int8),
                     source=np.full(len(rows), REVIEWED_SOURCE, dtype="<U9"), x=queued_x[rows], y=queued_y[rows],
                     ra=_numbers(group, "ra"), dec=_numbers(group, "dec"),
                     significance=_numbers(group, "significance"), pair_id=np.array(pair_id),
                     sn_name=np.array(meta["sn_name"].iloc[0]), mission=np.array(meta["mission"].iloc[0]),
                     filter=np.array(meta["filter"].iloc[0]))
        written.append(path.name)

    manifest = out_dir / "ingested.json"
    if manifest.is_file():
        for name in set(json.loads(manifest.read_text()).get("files", [])) - set(written):
            (out_dir / name).unlink(missing_ok=True)
    summary = {"reviews": str(review_csv), "triplets": str(triplets), "files": written,
               "real": int((labelled["_label"] == 1).sum()), "bogus": int((labelled["_label"] == 0).sum()),
               "skipped": int(len(reviews) - len(labelled)), "pairs": len(written)}
    write_json(manifest, summary)
    log.info("ingested %d reviewed triplets (%d real, %d bogus, %d skipped) into %d file(s)",
             len(labelled), summary["real"], summary["bogus"], summary["skipped"], len(written))
    return summary


def _numbers(group: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column of the reviews (NaN where absent or empty)."""
    if column not in group.columns:
        return np.full(len(group), np.nan)
    return pd.to_numeric(group[column].replace("", np.nan), errors="coerce").to_numpy(float)
