"""Active learning: the review queue of the most uncertain scored candidates and the ingestion of the labels."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from cli_helpers import run_stage
from realbogus_helpers import write_pair

from astrodag.errors import InputDataError
from astrodag.models.registry import build_model
from astrodag.supernova.imaging.pipeline import read_products
from astrodag.supernova.imaging.triplets import DatasetSettings, build_dataset, cutouts
from astrodag.supernova.realbogus.model import save_realbogus_model
from astrodag.supernova.realbogus.pairs import score_batch
from astrodag.supernova.realbogus.review import (
    QUEUE_FILE,
    TRIPLETS_FILE,
    binary_entropy,
    ingest_reviews,
    most_uncertain,
    uncertainty_order,
    write_review_queue,
)
from astrodag.supernova.realbogus.scoring import RealBogusScorer, ScoringSettings

THRESHOLD = 0.3
# Row i has score SCORES[i]; with threshold 0.3 the expected queue order is below.
SCORES = [0.95, 0.31, 0.2, 0.4, 0.05, 0.6, 0.29]
EXPECTED_ORDER = [1, 6, 3, 2, 4, 5, 0]  # 0.31 and 0.29 tie at 0.01: 0.31 is nearer 0.5; 0.4 beats 0.2 the same way
# Three pairs of two supernovae; pair ids are the directory names, as in the scoring stage.
PAIRS = pd.DataFrame({"pair_id": ["SN_A__PS1__1_2", "SN_A__PS1__3_4", "SN_B__SWIFT__1_2"],
                      "sn_name": ["SN A", "SN A", "SN B"], "mission": ["PS1", "PS1", "SWIFT"],
                      "filter": ["g", "g", "V"], "overlap_fraction": 1.0})
COUNT = 6


def test_uncertainty_order_and_entropy():
    assert list(uncertainty_order(SCORES, THRESHOLD)) == EXPECTED_ORDER
    assert binary_entropy([0.5])[0] == pytest.approx(1.0)
    assert binary_entropy([0.0, 1.0]) == pytest.approx([0, 0], abs=1e-9)


def test_most_uncertain_is_the_head_of_the_full_order_without_nan():
    assert list(most_uncertain(SCORES, THRESHOLD, 3)) == EXPECTED_ORDER[:3]
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=5000), 3)  # many exact ties
    scores[rng.choice(5000, 300, replace=False)] = np.nan
    finite = np.flatnonzero(np.isfinite(scores))
    for count in (1, 7, 100, 4700, 6000):
        expected = finite[uncertainty_order(scores[finite], 0.42)][:count]
        np.testing.assert_array_equal(most_uncertain(scores, 0.42, count), expected)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Three differenced pairs, scored by a braai model (float32), and their pairs.csv."""
    root = tmp_path_factory.mktemp("night")
    torch.manual_seed(0)
    sidecar = {"architecture": "braai", "options": {"dropout": 0.5}, "input_shape": [3, 63, 63],
               "normalisation": {"method": "robust", "clip": 30.0}, "threshold": 0.5}
    save_realbogus_model(build_model("braai", {"dropout": 0.5}), sidecar, root / "model")
    scorer = RealBogusScorer.from_files(root / "model" / "model.pt", device="cpu", threads=1, precision="float32")
    pair_dirs = [root / "pairs" / pair_id for pair_id in PAIRS["pair_id"]]
    for seed, pair_dir in enumerate(pair_dirs):
        write_pair(pair_dir, seed=seed)
    score_batch(pair_dirs, scorer, root / "candidates.parquet", settings=ScoringSettings.from_config({"top": 0}),
                progress=False)
    PAIRS.to_csv(root / "pairs.csv", index=False)
    return root, pair_dirs, scorer


@pytest.fixture
def queue(scored, tmp_path):
    root, pair_dirs, _ = scored
    summary = write_review_queue(root / "candidates.parquet", pair_dirs, root / "model" / "model.json",
                                 tmp_path / "review", count=COUNT, pairs=root / "pairs.csv")
    return tmp_path / "review", summary


def test_queue_holds_the_most_uncertain_scored_candidates(scored, queue):
    root, _, scorer = scored
    out, summary = queue
    table = pd.read_parquet(root / "candidates.parquet")
    unscored = table["score"].isna()
    assert unscored.sum() == 3  # the masked corner candidate of each pair
    expected = table[~unscored].iloc[uncertainty_order(table.loc[~unscored, "score"], scorer.threshold)].head(COUNT)
    queued = pd.read_csv(out / QUEUE_FILE, keep_default_na=False)
    assert summary["queued"] == COUNT and summary["available"] == len(table) - 3 and summary["threshold"] == 0.5
    assert list(queued["queue_row"]) == list(range(COUNT))
    assert list(zip(queued["pair_id"], queued["candidate_id"])) == list(zip(expected["pair_id"],
                                                                            expected["candidate_id"]))
    for column in ("x", "y", "ra", "dec", "significance", "score"):
        np.testing.assert_allclose(queued[column], expected[column], rtol=1e-12)
    np.testing.assert_allclose(queued["distance"], np.abs(queued["score"] - 0.5))
    assert (queued["label"] == "").all() and list(queued.columns)[-1] == "label"
    # sn_name, mission and filter come from pairs.csv.
    meta = PAIRS.set_index("pair_id")
    for column in ("sn_name", "mission", "filter"):
        assert list(queued[column]) == list(meta.loc[queued["pair_id"], column])
    assert {"entropy", "kept", "masked_fraction", "stamp"} <= set(queued.columns)
    for stamp in queued["stamp"]:
        assert (out / stamp).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / TRIPLETS_FILE) as npz:
        assert npz["cutouts"].shape == (COUNT, 3, 63, 63) and npz["cutouts"].dtype == np.float32
        assert list(npz["pair_id"]) == list(queued["pair_id"]) and float(npz["threshold"]) == 0.5


def test_queued_cutouts_are_what_the_scorer_scored(scored, queue):
    _, pair_dirs, scorer = scored
    out, _ = queue
    queued = pd.read_csv(out / QUEUE_FILE, keep_default_na=False)
    with np.load(out / TRIPLETS_FILE) as npz:
        queued_cutouts = npz["cutouts"]
    # Scored again, they give the scores of the table.
    np.testing.assert_allclose(scorer.score(queued_cutouts), queued["score"], rtol=0, atol=1e-5)
    # And they are the cut-outs of the triplets stage's rule, from the pairs' images.
    directories = {path.name: path for path in pair_dirs}
    for pair_id, rows in queued.groupby("pair_id"):
        products = read_products(directories[pair_id])
        expected, _ = cutouts([products.science, products.reference, products.difference],
                              products.mask | ~np.isfinite(products.difference), rows["x"].to_numpy(float),
                              rows["y"].to_numpy(float), 63, "robust", 30.0)
        np.testing.assert_array_equal(queued_cutouts[rows.index], expected)


def test_csv_dataframe_and_many_row_groups_give_the_same_queue(scored, queue, tmp_path):
    root, pair_dirs, _ = scored
    out, _ = queue
    table = pd.read_parquet(root / "candidates.parquet")
    table.to_parquet(tmp_path / "grouped.parquet", row_group_size=4)  # the queued rows span several groups
    table.to_csv(tmp_path / "scored.csv", index=False)
    reference = pd.read_csv(out / QUEUE_FILE, keep_default_na=False)
    with np.load(out / TRIPLETS_FILE) as npz:
        reference_cutouts = npz["cutouts"]
    for number, source in enumerate((tmp_path / "grouped.parquet", tmp_path / "scored.csv", table)):
        target = tmp_path / f"queue{number}"
        write_review_queue(source, pair_dirs, root / "model" / "model.json", target, count=COUNT,
                           pairs=root / "pairs.csv", stamps=False)
        again = pd.read_csv(target / QUEUE_FILE, keep_default_na=False)
        pd.testing.assert_frame_equal(again.drop(columns="stamp"), reference.drop(columns="stamp"))
        with np.load(target / TRIPLETS_FILE) as npz:
            np.testing.assert_array_equal(npz["cutouts"], reference_cutouts)
    assert not (tmp_path / "queue0" / "stamps").exists()


def test_a_bigger_count_than_scored_candidates_queues_them_all(scored, tmp_path):
    root, pair_dirs, _ = scored
    summary = write_review_queue(root / "candidates.parquet", pair_dirs, root / "model" / "model.json", tmp_path,
                                 count=1000, stamps=False)
    assert summary["queued"] == summary["available"] == 18
    # Without pairs.csv the SN columns stay empty, and ingestion says why it needs them.
    table = pd.read_csv(tmp_path / QUEUE_FILE, dtype=str, keep_default_na=False).assign(label="1")
    assert (table["sn_name"] == "").all()
    table.to_csv(tmp_path / QUEUE_FILE, index=False)
    with pytest.raises(InputDataError, match="sn_name is empty"):
        ingest_reviews(tmp_path / QUEUE_FILE, tmp_path / "ingested")


def _label(out, labels, reorder=False):
    table = pd.read_csv(out / QUEUE_FILE, dtype=str, keep_default_na=False)
    table["label"] = labels
    if reorder:
        table = table.iloc[::-1]
    table.to_csv(out / QUEUE_FILE, index=False)
    return table


def test_ingested_reviews_feed_the_dataset_in_the_split_of_their_supernova(queue, tmp_path):
    out, _ = queue
    labels = ["1", "Bogus", "skip", " real ", "0", "1"]
    table = _label(out, labels, reorder=True)
    summary = ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    labelled = table[table["label"].str.strip().str.lower() != "skip"]
    assert (summary["real"], summary["bogus"], summary["skipped"]) == (3, 2, 1)
    files = sorted((tmp_path / "ingested").glob("*.npz"))
    assert [f.name for f in files] == sorted(f"{p}.npz" for p in labelled["pair_id"].unique()) \
        == sorted(summary["files"])
    with np.load(out / TRIPLETS_FILE) as queued:
        cutouts = queued["cutouts"]
    for path in files:
        rows = labelled[labelled["pair_id"] == path.stem].assign(row=lambda t: t["queue_row"].astype(int))
        rows = rows.sort_values("row")
        meta = PAIRS.set_index("pair_id").loc[path.stem]
        with np.load(path) as npz:
            assert str(npz["pair_id"]) == path.stem and str(npz["sn_name"]) == meta["sn_name"]
            assert str(npz["mission"]) == meta["mission"] and str(npz["filter"]) == meta["filter"]
            assert list(npz["label"]) == [1 if v.strip().lower() in ("1", "real") else 0 for v in rows["label"]]
            assert set(npz["source"]) == {"reviewed"}
            np.testing.assert_allclose(npz["x"], rows["x"].astype(float))
            np.testing.assert_array_equal(npz["cutouts"], cutouts[rows["row"].to_numpy()])
    # The dataset stage reads them as it reads a pair's triplets.npz, and splits by supernova.
    settings = DatasetSettings.from_config({"previews": 0, "bogus_per_real": None, "augment_copies": 0,
                                            "split_fractions": {"train": 0.5, "validation": 0.0, "test": 0.5}})
    dataset = build_dataset(files, tmp_path / "dataset", settings, seed=0)
    assert sum(part["total"] for part in dataset["triplets"].values()) == 5
    index = pd.read_parquet(tmp_path / "dataset" / "index.parquet")
    assert set(index["source"]) == {"reviewed"} and set(index["sn_name"]) <= {"SN A", "SN B"}
    assert index.groupby("sn_name")["split"].nunique().max() == 1


@pytest.mark.parametrize("labels, message", [
    (["1", "", "real", "maybe", "0", "1"], r"2 row\(s\) without a valid label \(line 3 \(queue_row 1\): missing "
                                           r"label; line 5 \(queue_row 3\): label 'maybe'\)"),
    (["skip"] * COUNT, "all skipped"),
])
def test_bad_labels_name_the_rows(queue, tmp_path, labels, message):
    out = queue[0]
    _label(out, labels)
    with pytest.raises(InputDataError, match=message):
        ingest_reviews(out / QUEUE_FILE, tmp_path / "ingested")
    assert not (tmp_path / "ingested").exists()


def test_edited_or_foreign_rows_are_refused(queue, tmp_path):
    out = queue[0]
    pristine = _label(out, ["1"] * COUNT)
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


def test_queue_input_errors(scored, tmp_path):
    root, pair_dirs, _ = scored
    model_json = root / "model" / "model.json"
    table = pd.read_parquet(root / "candidates.parquet")

    def queue(source, dirs=pair_dirs, sidecar=model_json, **kwargs):
        return write_review_queue(source, dirs, sidecar, tmp_path / "out", count=4, stamps=False, **kwargs)

    with pytest.raises(InputDataError, match=r"lacks the columns \['score'\]"):
        queue(table.drop(columns="score"))
    with pytest.raises(InputDataError, match=r"in \[0, 1\]"):
        queue(table.assign(score=np.where(table.index == 2, 1.5, table["score"])))
    with pytest.raises(InputDataError, match="nothing.parquet: file does not exist"):
        queue(tmp_path / "nothing.parquet")
    with pytest.raises(InputDataError, match="expected a .parquet or .csv table"):
        queue(tmp_path / "scored.npy")
    with pytest.raises(InputDataError, match="pairs without a pair directory given"):
        queue(table, dirs=pair_dirs[:1])
    with pytest.raises(InputDataError, match="two pair directories are named"):
        queue(table, dirs=[*pair_dirs, tmp_path / "elsewhere" / pair_dirs[0].name])
    with pytest.raises(InputDataError, match="model.json: missing"):
        queue(table, sidecar=tmp_path / "model.json")
    with pytest.raises(InputDataError, match="has no row for the pair"):
        PAIRS.iloc[:1].to_csv(tmp_path / "pairs.csv", index=False)
        queue(table, pairs=tmp_path / "pairs.csv")
    with pytest.raises(ValueError, match="count must be at least 1"):
        write_review_queue(table, pair_dirs, model_json, tmp_path / "out", count=0)
    # Pair images changed since scoring: refused rather than queued with other cut-outs.
    moved = [tmp_path / "pairs" / path.name for path in pair_dirs]
    for source, target in zip(pair_dirs, moved):
        shutil.copytree(source, target)
    for target in moved:
        with fits.open(target / "mask.fits", mode="update") as hdul:
            hdul[0].data[:] = 4
    with pytest.raises(InputDataError, match="differ from those its candidates were scored on"):
        queue(table, dirs=moved)


def test_cli_review_and_ingest(scored, tmp_path):
    root, pair_dirs, _ = scored
    run_stage("supernova", "review", "--scored", root / "candidates.parquet", "--pair-dirs", *pair_dirs,
              "--model-json", root / "model" / "model.json", "--pairs", root / "pairs.csv", "--out-dir",
              tmp_path / "cli", "--count", "2", "--no-stamps")
    queued = pd.read_csv(tmp_path / "cli" / QUEUE_FILE)
    table = pd.read_parquet(root / "candidates.parquet")
    assert list(queued["score"]) == pytest.approx(list(table["score"].iloc[most_uncertain(table["score"], 0.5, 2)]))
    _label(tmp_path / "cli", ["1", "0"])
    run_stage("supernova", "ingest-reviews", "--reviews", tmp_path / "cli" / QUEUE_FILE, "--out-dir",
              tmp_path / "cli-ingested")
    record = json.loads((tmp_path / "cli-ingested" / "ingested.json").read_text())
    assert record["real"] == 1 and record["bogus"] == 1
