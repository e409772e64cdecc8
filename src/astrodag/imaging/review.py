"""Active learning for the real/bogus classifier: review the most uncertain candidates.

One round:

1. :func:`write_review_queue` ranks scored candidates by uncertainty, the distance of the
   score from the decision threshold (ties: the higher binary entropy first), and writes
   the ``count`` most uncertain to ``out_dir``:

   ``review_queue.csv``
       One row per candidate, most uncertain first: ``queue_row`` (its rank and its row in
       ``review_triplets.npz``), ``pair_id, sn_name, mission, filter``, ``candidate_id``
       (when the predictions have one), ``x, y, ra, dec, significance, score, distance``
       (``|score - threshold|``), ``entropy`` (bits), ``prior_label`` and ``prior_source``
       (the dataset's label and source, when known), ``stamp`` (the PNG, relative to
       ``out_dir``) and an empty ``label`` column for the reviewer.
   ``review_triplets.npz``
       The queued cut-outs (``cutouts``, ``(n, 3, S, S)`` float32) with ``pair_id``, ``x``,
       ``y`` per row and the ``threshold``, so the reviews can be ingested after the source
       arrays have changed.
   ``stamps/{queue_row:05d}.png``
       Science, reference and difference side by side.

2. A reviewer fills ``label`` with ``1``/``real``, ``0``/``bogus`` or ``skip`` (not used);
   the rows may be reordered or deleted, the other columns must stay as written.

3. :func:`ingest_reviews` writes the labelled cut-outs as one ``{pair_id}.npz`` per pair in
   exactly the layout of a pair's ``triplets.npz`` (:func:`astrodag.imaging.triplets.cut_triplets`;
   ``source = "reviewed"``), plus ``ingested.json``; the dataset stage takes those files as
   extra triplet files in the next run. Splits stay by supernova there, so a reviewed
   candidate joins the split of its supernova.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from astrodag.errors import InputDataError
from astrodag.imaging.triplets import CHANNELS
from astrodag.io import atomic_path, save_figure, write_json, write_table

log = logging.getLogger(__name__)

QUEUE_FILE = "review_queue.csv"
TRIPLETS_FILE = "review_triplets.npz"
REVIEWED_SOURCE = "reviewed"
LABELS = {"1": 1, "real": 1, "0": 0, "bogus": 0, "skip": None}
META_COLUMNS = ("pair_id", "sn_name", "mission", "filter")
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


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={column: str for column in META_COLUMNS})
    raise InputDataError(path, "expected a .parquet or .csv table")


def _open_triplets(path: Path) -> np.ndarray:
    """A triplet array from ``.npy`` (memory-mapped) or a ``.npz`` with ``cutouts``."""
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                array = npz["cutouts"]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, KeyError, ValueError) as error:
        raise InputDataError(path, f"not a triplet array (.npy, or .npz with 'cutouts'): {error}") from error
    if array.ndim != 4 or array.shape[1] != len(CHANNELS):
        raise InputDataError(path, f"expected triplets of shape (n, 3, S, S), got {array.shape}")
    return array


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


def write_review_queue(predictions: str | Path | pd.DataFrame, triplets: str | Path | np.ndarray,
                       out_dir: str | Path, count: int = 100, threshold: float = 0.5,
                       pairs: str | Path | None = None, stamps: bool = True) -> dict:
    """Write the ``count`` most uncertain candidates for human review (see the module notes).

    Parameters
    ----------
    predictions : str, Path or DataFrame
        Scored candidates (``.parquet``/``.csv``), e.g. the evaluation's ``predictions.parquet``:
        ``score``, ``pair_id``, ``x``, ``y`` and optionally ``row`` (the candidate's row in
        ``triplets``; without it, row i of the table is row i of the array), ``sn_name``,
        ``mission``, ``filter``, ``candidate_id``, ``ra``, ``dec``, ``significance``,
        ``label``, ``source``, ``split``, ``augmentation``.
    triplets : str, Path or ndarray
        The candidates' normalised cut-outs, ``(n, 3, S, S)`` (``.npy``, or ``.npz`` with
        ``cutouts``), e.g. ``results/supernova/triplets/test.npy``.
    out_dir : str or Path
        Receives ``review_queue.csv``, ``review_triplets.npz`` and ``stamps/``.
    count : int, default 100
        Candidates queued (fewer when fewer are available).
    threshold : float, default 0.5
        The model's decision threshold (``model.json``); uncertainty is distance from it.
    pairs : str or Path, optional
        ``pairs.csv``, filling ``sn_name``, ``mission`` and ``filter`` from ``pair_id`` for
        predictions that lack them (the scoring stage's candidate tables).
    stamps : bool, default True
        Draw the PNG stamps.

    Returns
    -------
    dict
        Counts and the score range of the queue.

    Raises
    ------
    InputDataError
        For missing columns, several splits in one table, rows outside the array or scores
        outside [0, 1]. Rows with a NaN score (unscored candidates) are left out.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    source_path = Path("predictions") if isinstance(predictions, pd.DataFrame) else Path(predictions)
    table = predictions.copy() if isinstance(predictions, pd.DataFrame) else _read_table(source_path)
    array = triplets if isinstance(triplets, np.ndarray) else _open_triplets(Path(triplets))
    out_dir = Path(out_dir)

    missing = [c for c in ("score", "pair_id", "x", "y") if c not in table.columns]
    if missing:
        raise InputDataError(source_path, f"lacks the columns {missing}")
    if "split" in table.columns and table["split"].nunique() > 1:
        raise InputDataError(source_path, f"holds the splits {sorted(table['split'].unique())}, whose rows index "
                                          "different arrays; pass one split's predictions with its array")
    if "row" not in table.columns:
        if len(table) != len(array):
            raise InputDataError(source_path, f"has {len(table)} rows but the triplet array {len(array)}, and no "
                                              "'row' column to match them")
        table["row"] = np.arange(len(table))
    rows = table["row"].to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= len(array)):
        raise InputDataError(source_path, f"'row' values span [{rows.min()}, {rows.max()}], outside the "
                                          f"{len(array)} triplets")
    scores = table["score"].to_numpy(float)
    if np.any((scores < 0) | (scores > 1)):
        raise InputDataError(source_path, "'score' must be probabilities in [0, 1]")
    # Candidates without a score (NaN: cut-out too masked to score) cannot be ranked.
    available = int(np.isfinite(scores).sum())
    table = table[np.isfinite(scores)]
    if pairs is not None:
        table = _with_pair_columns(table, Path(pairs))
    for column in ("sn_name", "mission", "filter", "ra", "dec", "significance"):
        if column not in table.columns:
            table[column] = "" if column in META_COLUMNS else np.nan

    # Augmented copies repeat an original that is in the table too; review each position once.
    if "augmentation" in table.columns:
        table = table[table["augmentation"].fillna("none") == "none"]
    table = table.iloc[uncertainty_order(table["score"].to_numpy(float), threshold)]
    table = table.drop_duplicates(["pair_id", "x", "y"]).head(count).reset_index(drop=True)

    queue = pd.DataFrame({"queue_row": np.arange(len(table))})
    for column in (*META_COLUMNS, "candidate_id", "x", "y", "ra", "dec", "significance", "score"):
        if column in table.columns:
            queue[column] = table[column].to_numpy()
    queue["distance"] = np.abs(queue["score"] - threshold)
    queue["entropy"] = binary_entropy(queue["score"].to_numpy(float))
    for column in ("label", "source"):
        if column in table.columns:
            queue[f"prior_{column}"] = table[column].to_numpy()
    queue["stamp"] = [f"stamps/{i:05d}.png" for i in queue["queue_row"]] if stamps else ""
    queue["label"] = ""

    # Sorted reads keep a memory-mapped array's access sequential.
    order = np.argsort(table["row"].to_numpy(), kind="stable")
    cutouts = np.empty((len(table), *array.shape[1:]), np.float32)
    cutouts[order] = array[table["row"].to_numpy()[order]]
    with atomic_path(out_dir / TRIPLETS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, cutouts=cutouts, pair_id=queue["pair_id"].to_numpy(str), x=queue["x"].to_numpy(float),
                 y=queue["y"].to_numpy(float), threshold=np.array(threshold))
    if stamps:
        writer = _StampWriter(array.shape[-1])
        for i, row in queue.iterrows():
            writer.write(out_dir / row["stamp"], cutouts[i],
                         f"#{i}  {row['pair_id']}  x={row['x']:.1f} y={row['y']:.1f}  score={row['score']:.3f}")
    write_table(out_dir / QUEUE_FILE, queue)
    summary = {"queued": int(len(queue)), "available": available, "threshold": float(threshold),
               "score_range": [float(queue["score"].min()), float(queue["score"].max())] if len(queue) else None,
               "max_distance": float(queue["distance"].max()) if len(queue) else None}
    log.info("review queue: %d of %d candidates, scores %s", summary["queued"], summary["available"],
             summary["score_range"])
    return summary


def _with_pair_columns(table: pd.DataFrame, pairs: Path) -> pd.DataFrame:
    info = _read_table(pairs)
    missing = [c for c in META_COLUMNS if c not in info.columns]
    if missing:
        raise InputDataError(pairs, f"lacks the columns {missing}")
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
