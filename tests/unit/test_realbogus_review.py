"""Active learning: the review queue of uncertain candidates and the ingestion of the reviewers' labels."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from astrodag.errors import InputDataError
from astrodag.imaging import service_commands
from astrodag.imaging.review import (QUEUE_FILE, TRIPLETS_FILE, binary_entropy, ingest_reviews, uncertainty_order,
                                     write_review_queue)
from astrodag.imaging.triplets import DatasetSettings, build_dataset

SIZE = 15
THRESHOLD = 0.3
# Row i has score SCORES[i]; with threshold 0.3 the expected queue order is below.
SCORES = [0.95, 0.31, 0.2, 0.4, 0.05, 0.6, 0.29]
EXPECTED_ORDER = [1, 6, 3, 2, 4, 5, 0]  # 0.31 and 0.29 tie at 0.01: 0.31 is nearer 0.5; 0.4 beats 0.2 the same way


def _predictions(n=len(SCORES)):
    pairs = ["P1", "P2"]
    return pd.DataFrame({
        "split": "test", "row": np.arange(n)[::-1],  # rows do not follow the table order
        "pair_id": [pairs[i % 2] for i in range(n)], "sn_name": [f"SN {pairs[i % 2]}" for i in range(n)],
        "mission": "PS1", "filter": "g", "label": np.int8(0), "source": "candidate",
        "x": np.arange(n) * 10.0 + 0.5, "y": np.arange(n) * 5.0, "ra": 150.0 + np.arange(n) * 1e-3, "dec": 2.0,
        "significance": 6.0 + np.arange(n), "augmentation": "none", "score": SCORES[:n]})


@pytest.fixture
def queue(tmp_path):
    triplets = np.random.default_rng(0).normal(size=(len(SCORES), 3, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "test.npy", triplets)
    predictions = _predictions()
    predictions.to_parquet(tmp_path / "predictions.parquet")
    summary = write_review_queue(tmp_path / "predictions.parquet", tmp_path / "test.npy", tmp_path / "review",
                                 count=5, threshold=THRESHOLD)
    return tmp_path / "review", predictions, triplets, summary


def test_uncertainty_order_and_entropy():
    assert list(uncertainty_order(SCORES, THRESHOLD)) == EXPECTED_ORDER
    assert binary_entropy([0.5])[0] == pytest.approx(1.0)
    assert binary_entropy([0.0, 1.0]) == pytest.approx([0, 0], abs=1e-9)


def test_queue_holds_the_most_uncertain_with_stamps_and_cutouts(queue):
    out, predictions, triplets, summary = queue
    table = pd.read_csv(out / QUEUE_FILE, keep_default_na=False)
    assert summary["queued"] == 5 and summary["available"] == len(SCORES)
    assert list(table["score"]) == pytest.approx([SCORES[i] for i in EXPECTED_ORDER[:5]])
    assert list(table["queue_row"]) == list(range(5))
    assert (table["label"] == "").all() and list(table.columns)[-1] == "label"
    assert list(table["distance"]) == pytest.approx(np.abs(table["score"] - THRESHOLD))
    assert {"pair_id", "sn_name", "x", "y", "ra", "dec", "significance", "entropy", "prior_label",
            "prior_source", "stamp"} <= set(table.columns)
    with np.load(out / TRIPLETS_FILE) as npz:
        cutouts, pair_id = npz["cutouts"], npz["pair_id"]
        assert float(npz["threshold"]) == THRESHOLD
    for queue_row, source_row in enumerate(EXPECTED_ORDER[:5]):
        assert np.array_equal(cutouts[queue_row], triplets[predictions["row"][source_row]])
        assert pair_id[queue_row] == predictions["pair_id"][source_row]
    for stamp in table["stamp"]:
        assert (out / stamp).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_queue_reviews_each_position_once_and_fills_pairs(tmp_path):
    triplets = np.zeros((4, 3, SIZE, SIZE), np.float32)
    predictions = _predictions(2)
    # An augmented copy of row 0 (a different score) and an exact duplicate position must not be queued again.
    extra = predictions.iloc[[0, 0]].assign(row=[2, 3], augmentation=["rot90", "none"], score=[0.3, 0.5])
    table = pd.concat([predictions, extra], ignore_index=True).drop(columns=["sn_name", "mission", "filter"])
    pd.DataFrame({"pair_id": ["P1", "P2"], "sn_name": ["SN 1", "SN 2"], "mission": "GALEX",
                  "filter": "NUV"}).to_csv(tmp_path / "pairs.csv", index=False)
    write_review_queue(table, triplets, tmp_path / "review", count=10, threshold=THRESHOLD,
                       pairs=tmp_path / "pairs.csv", stamps=False)
    queued = pd.read_csv(tmp_path / "review" / QUEUE_FILE)
    assert len(queued) == 2 and not (tmp_path / "review" / "stamps").exists()
    assert dict(zip(queued["pair_id"], queued["sn_name"])) == {"P1": "SN 1", "P2": "SN 2"}
    assert (queued["mission"] == "GALEX").all()


def _label(out, labels, reorder=False):
    table = pd.read_csv(out / QUEUE_FILE, dtype=str, keep_default_na=False)
    table["label"] = labels
    if reorder:
        table = table.iloc[::-1]
    table.to_csv(out / QUEUE_FILE, index=False)
    return table


def test_ingested_reviews_feed_the_dataset(queue, tmp_path):
    out, predictions, triplets, _ = queue
    _label(out, ["1", "Bogus", "skip", " real ", "0"], reorder=True)
    summary = ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    assert (summary["real"], summary["bogus"], summary["skipped"]) == (2, 2, 1)
    files = sorted((tmp_path / "ingested").glob("*.npz"))
    assert [f.name for f in files] == ["P1.npz", "P2.npz"] == sorted(summary["files"])
    # Queue rows 0-4 are predictions 1, 6, 3, 2, 4: P2, P1, P2, P1, P1; row 2 (P2) was skipped.
    queue_table = pd.read_csv(out / QUEUE_FILE, keep_default_na=False).set_index("queue_row")
    with np.load(out / TRIPLETS_FILE) as queued:
        cutouts = queued["cutouts"]
    for path, rows, labels in ((files[0], [1, 3, 4], [0, 1, 0]), (files[1], [0], [1])):
        with np.load(path) as npz:
            assert str(npz["pair_id"]) == path.stem and str(npz["sn_name"]) == f"SN {path.stem}"
            assert npz["pair_id"].ndim == 0 and str(npz["mission"]) == "PS1" and str(npz["filter"]) == "g"
            assert list(npz["label"]) == labels and npz["label"].dtype == np.int8
            assert set(npz["source"]) == {"reviewed"}
            assert list(npz["x"]) == list(queue_table.loc[rows, "x"])
            assert list(npz["significance"]) == list(queue_table.loc[rows, "significance"])
            assert np.array_equal(npz["cutouts"], cutouts[rows])
    # The dataset stage reads them as it reads a pair's triplets.npz.
    settings = DatasetSettings.from_config({"previews": 0, "bogus_per_real": None, "augment_copies": 0,
                                            "split_fractions": {"train": 1.0, "validation": 0.0, "test": 0.0}})
    dataset = build_dataset(files, tmp_path / "dataset", settings, seed=0)
    assert dataset["triplets"]["train"]["real"] == 2 and dataset["triplets"]["train"]["bogus"] == 2
    index = pd.read_parquet(tmp_path / "dataset" / "index.parquet")
    assert set(index["source"]) == {"reviewed"} and set(index["sn_name"]) == {"SN P1", "SN P2"}

    # Re-ingesting after relabelling removes the file of a pair that is no longer reviewed.
    table = _label(out, ["skip", "skip", "skip", "1", "skip"])
    assert set(table.loc[table["label"] == "1", "pair_id"]) == {"P1"}
    assert ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")["files"] == ["P1.npz"]
    assert sorted(f.name for f in (tmp_path / "ingested").glob("*.npz")) == ["P1.npz"]
    assert json.loads((tmp_path / "ingested" / "ingested.json").read_text())["real"] == 1


@pytest.mark.parametrize("labels, message", [
    (["1", "", "real", "maybe", "0"], r"2 row\(s\) without a valid label \(line 3 \(queue_row 1\): missing label; "
                                      r"line 5 \(queue_row 3\): label 'maybe'\)"),
    (["skip"] * 5, "all skipped"),
])
def test_bad_labels_name_the_rows(queue, tmp_path, labels, message):
    out = queue[0]
    _label(out, labels)
    with pytest.raises(InputDataError, match=message):
        ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    assert not (tmp_path / "ingested").exists()


def test_edited_or_foreign_rows_are_refused(queue, tmp_path):
    out = queue[0]
    pristine = _label(out, ["1"] * 5)
    for column, line, message in (("pair_id", 2, r"line 4 \(queue_row 2\): pair_id/x/y do not match row 2"),
                                  ("sn_name", 3, r"line 5 \(queue_row 3\): sn_name is empty"),
                                  ("x", 1, r"line 3 \(queue_row 1\): pair_id/x/y do not match")):
        edited = pristine.copy()
        edited.loc[edited.index[line], column] = "" if column == "sn_name" else "P9" if column == "pair_id" else "1.5"
        edited.to_csv(out / QUEUE_FILE, index=False)
        with pytest.raises(InputDataError, match=message):
            ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    pd.concat([pristine, pristine.iloc[[0]]]).to_csv(out / QUEUE_FILE, index=False)
    with pytest.raises(InputDataError, match="queue_row 0 appears twice"):
        ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    (out / TRIPLETS_FILE).unlink()
    with pytest.raises(InputDataError, match="the review queue's cut-outs"):
        ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")


def test_queue_input_errors(tmp_path):
    triplets = np.zeros((3, 3, SIZE, SIZE), np.float32)
    with pytest.raises(InputDataError, match="holds the splits"):
        write_review_queue(_predictions(3).assign(split=["test", "train", "test"]), triplets, tmp_path, 2)
    with pytest.raises(InputDataError, match="outside the 3 triplets"):
        write_review_queue(_predictions(3).assign(row=[0, 1, 7]), triplets, tmp_path, 2)
    with pytest.raises(InputDataError, match=r"lacks the columns \['score'\]"):
        write_review_queue(_predictions(3).drop(columns="score"), triplets, tmp_path, 2)
    with pytest.raises(InputDataError, match=r"in \[0, 1\]"):
        write_review_queue(_predictions(3).assign(score=[0.1, 1.5, 0.2]), triplets, tmp_path, 2)
    summary = write_review_queue(_predictions(3).assign(score=[0.1, np.nan, 0.2]), triplets, tmp_path, 5,
                                 stamps=False)
    assert summary["available"] == summary["queued"] == 2


def test_cli_review_and_ingest(queue, tmp_path):
    out, *_ = queue
    (tmp_path / "model.json").write_text(json.dumps({"threshold": 0.9}))
    parser = argparse.ArgumentParser()
    stages = parser.add_subparsers(dest="stage")
    service_commands.add_parsers(stages, lambda p: None)
    args = parser.parse_args(["review", "--predictions", str(tmp_path / "predictions.parquet"), "--triplets",
                              str(tmp_path / "test.npy"), "--out-dir", str(tmp_path / "cli"), "--count", "2",
                              "--model-json", str(tmp_path / "model.json"), "--no-stamps"])
    assert service_commands.run(args)
    queued = pd.read_csv(tmp_path / "cli" / QUEUE_FILE)
    assert list(queued["score"]) == [0.95, 0.6]  # nearest the sidecar's threshold 0.9
    _label(tmp_path / "cli", ["1", "0"])
    args = parser.parse_args(["ingest-reviews", "--reviews", str(tmp_path / "cli" / QUEUE_FILE), "--out-dir",
                              str(tmp_path / "cli-ingested")])
    assert service_commands.run(args)
    assert json.loads((tmp_path / "cli-ingested" / "ingested.json").read_text())["pairs"] == 2
    assert not service_commands.run(argparse.Namespace(stage="train"))
