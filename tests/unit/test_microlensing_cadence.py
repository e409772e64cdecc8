"""Cadence table and observation masks: fractions, seasonal gaps, clumping, reproducibility, errors."""

from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from astrodag.errors import InputDataError
from astrodag.microlensing.cadence import (
    COLUMNS,
    MIN_OBSERVED_EPOCHS,
    CadenceSpec,
    cadence_masks,
    load_cadences,
    write_cadence_masks,
)
from astrodag.microlensing.simulation import time_grid

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "config" / "cadences.tsv"
SCHEMA = ROOT / "workflow" / "schemas" / "cadences.schema.yaml"
TIMES = time_grid(1500, 500.0)
HEADER = "\t".join(COLUMNS)


def missing_runs(masks: np.ndarray) -> list[np.ndarray]:
    """Lengths and start epochs of the runs of masked epochs of each row: [(starts, lengths), ...]."""
    out = []
    for row in masks:
        padded = np.concatenate([[0], (row == 0).astype(np.int8), [0]])
        edges = np.diff(padded)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        out.append((starts, ends - starts))
    return out


# --- the table ---------------------------------------------------------------------------------


def test_config_table_has_the_five_cadences():
    cadences = load_cadences(TABLE)
    assert list(cadences) == ["sparse", "normal", "dense", "lsst", "roman"]
    targets = {name: spec.missing_fraction for name, spec in cadences.items()}
    assert targets == {"sparse": 0.5, "normal": 0.2, "dense": 0.05, "lsst": 0.3, "roman": 0.15}
    assert cadences["roman"].season_days == 72 and cadences["lsst"].gap_days > 0
    assert cadences["lsst"].clump_epochs > 1
    for spec in cadences.values():
        assert spec.gap_fraction <= spec.missing_fraction and spec.description


def test_config_table_rows_validate_against_the_workflow_schema():
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    table = pd.read_csv(TABLE, sep="\t", comment="#", dtype={"cadence": str})
    for record in table.to_dict("records"):
        validator.validate(record)
    bad = dict(table.to_dict("records")[0], missing_fraction=1.0)
    assert not validator.is_valid(bad)
    assert not validator.is_valid({k: v for k, v in bad.items() if k != "description"})
    assert not validator.is_valid(dict(table.to_dict("records")[0], cadence="a/b"))


# --- masks -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_masks():
    ids = np.arange(1000, 2500)
    return {name: cadence_masks(spec, ids, TIMES, seed=11) for name, spec in load_cadences(TABLE).items()}


@pytest.mark.parametrize("name", ["sparse", "normal", "dense", "lsst", "roman"])
def test_missing_fraction_matches_the_target(config_masks, name):
    spec = load_cadences(TABLE)[name]
    masks = config_masks[name]
    assert masks.dtype == np.uint8 and masks.shape == (1500, TIMES.size)
    assert set(np.unique(masks)) <= {0, 1}
    missing = 1.0 - masks.mean(axis=1)
    # 1500 events: the standard error of the mean is below 0.001 for every cadence
    assert missing.mean() == pytest.approx(spec.missing_fraction, abs=0.004)
    assert masks.sum(axis=1).min() >= MIN_OBSERVED_EPOCHS


@pytest.mark.parametrize("name", ["lsst", "roman"])
def test_seasonal_gaps_are_empty(config_masks, name):
    spec = load_cadences(TABLE)[name]
    masks = config_masks[name][:300].astype(np.float32)
    step = TIMES[1] - TIMES[0]
    period = spec.season_days + spec.gap_days
    # Every phase of the cycle (finer than the grid): which epochs would be in a gap.
    phases = np.arange(0.0, period, step / 4) + step / 8
    in_gap = (np.mod(TIMES[None, :] + phases[:, None], period) >= spec.season_days).astype(np.float32)
    observed_in_gap = in_gap @ masks.T  # (phases, events)
    # For every event some phase puts no observation at all in the gaps ...
    empty = observed_in_gap == 0
    assert empty.any(axis=0).all()
    # ... and that is the seasonal structure, not chance: inside the seasons of that phase the
    # missing fraction is the in-season drop probability.
    phase = empty.argmax(axis=0)
    gaps = in_gap[phase] > 0
    in_season_missing = ((masks == 0) & ~gaps).sum() / (~gaps).sum()
    assert in_season_missing == pytest.approx(spec.in_season_missing, abs=0.01)
    assert gaps.mean() == pytest.approx(spec.gap_fraction, abs=0.015)
    # 500 days always hold a complete gap for these cycles: a masked run at least a gap long
    for starts, lengths in missing_runs(config_masks[name][:300]):
        assert lengths.max() * step >= spec.gap_days - step


def test_without_seasons_no_long_gaps(config_masks):
    for name in ("sparse", "normal", "dense"):
        assert max(lengths.max() for _, lengths in missing_runs(config_masks[name][:200])) < 30


def test_clumping_makes_longer_runs_at_the_same_fraction():
    ids = np.arange(400)
    independent = cadence_masks(CadenceSpec("a", 0.3), ids, TIMES, seed=3)
    clumped = cadence_masks(CadenceSpec("a", 0.3, clump_epochs=6), ids, TIMES, seed=3)
    for masks in (independent, clumped):
        assert 1 - masks.mean() == pytest.approx(0.3, abs=0.01)
    mean_run = {key: np.concatenate([lengths for _, lengths in missing_runs(masks)]).mean()
                for key, masks in (("independent", independent), ("clumped", clumped))}
    assert mean_run["independent"] == pytest.approx(1 / 0.7, rel=0.05)  # geometric runs of 1/(1-p)
    assert mean_run["clumped"] == pytest.approx(6.0, rel=0.1)


def test_clumping_inside_seasons_keeps_the_gaps_and_the_fraction():
    spec = CadenceSpec("seasonal", 0.4, season_days=100, gap_days=25, clump_epochs=8)
    masks = cadence_masks(spec, np.arange(600), TIMES, seed=0)
    assert 1 - masks.mean() == pytest.approx(0.4, abs=0.01)
    assert spec.gap_fraction == pytest.approx(0.2) and spec.in_season_missing == pytest.approx(0.25)


def test_masks_are_reproducible_and_independent_of_the_shard_layout():
    spec = load_cadences(TABLE)["lsst"]
    ids = np.arange(500, 560)
    whole = cadence_masks(spec, ids, TIMES, seed=11)
    np.testing.assert_array_equal(whole, cadence_masks(spec, ids, TIMES, seed=11))
    split = np.vstack([cadence_masks(spec, ids[:25], TIMES, seed=11), cadence_masks(spec, ids[25:], TIMES, seed=11)])
    np.testing.assert_array_equal(whole, split)
    order = np.random.default_rng(0).permutation(ids.size)
    np.testing.assert_array_equal(whole[order], cadence_masks(spec, ids[order], TIMES, seed=11))
    assert not np.array_equal(whole, cadence_masks(spec, ids, TIMES, seed=12))
    renamed = CadenceSpec("lsst2", spec.missing_fraction, spec.season_days, spec.gap_days, spec.clump_epochs)
    assert not np.array_equal(whole, cadence_masks(renamed, ids, TIMES, seed=11))
    assert not np.array_equal(whole[0], whole[1])


def test_every_mask_keeps_a_minimum_of_observed_epochs():
    times = time_grid(40, 20.0)
    almost_empty = CadenceSpec("x", 0.99, clump_epochs=1)
    masks = cadence_masks(almost_empty, np.arange(300), times, seed=1)
    assert masks.sum(axis=1).min() == MIN_OBSERVED_EPOCHS
    # a grid shorter than one gap: the whole curve may fall in the gap, epochs are restored anyway
    in_gap = CadenceSpec("y", 0.95, season_days=5, gap_days=95)
    masks = cadence_masks(in_gap, np.arange(300), times, seed=1)
    assert masks.sum(axis=1).min() >= MIN_OBSERVED_EPOCHS


def test_write_cadence_masks_matches_cadence_masks(tmp_path):
    spec = load_cadences(TABLE)["roman"]
    events = tmp_path / "events.parquet"
    ids = np.arange(3000, 3137, dtype=np.int64)
    pd.DataFrame({"event_id": ids, "label": np.zeros(ids.size, dtype=np.int8)}).to_parquet(events)
    out_small = tmp_path / "masks" / "small.npy"
    summary = write_cadence_masks(events, out_small, spec, TIMES, seed=11, chunk_events=10, progress=False)
    out_big = tmp_path / "masks" / "big.npy"
    write_cadence_masks(events, out_big, spec, TIMES, seed=11, progress=False)
    assert out_small.read_bytes() == out_big.read_bytes()
    written = np.load(out_small, mmap_mode="r")
    assert written.dtype == np.uint8 and written.shape == (ids.size, TIMES.size)
    np.testing.assert_array_equal(written, cadence_masks(spec, ids, TIMES, seed=11))
    assert summary["events"] == ids.size and summary["missing_fraction"] == pytest.approx(1 - written.mean())
    assert sorted(p.name for p in out_small.parent.iterdir()) == ["big.npy", "small.npy"]  # no temp files


def test_write_cadence_masks_input_errors(tmp_path):
    spec = CadenceSpec("a", 0.2)
    with pytest.raises(InputDataError, match="does not exist"):
        write_cadence_masks(tmp_path / "none.parquet", tmp_path / "m.npy", spec, TIMES, seed=0)
    events = tmp_path / "events.parquet"
    pd.DataFrame({"id": [1, 2]}).to_parquet(events)
    with pytest.raises(InputDataError, match="event_id"):
        write_cadence_masks(events, tmp_path / "m.npy", spec, TIMES, seed=0)
    assert not (tmp_path / "m.npy").exists()


# --- bad tables --------------------------------------------------------------------------------


GOOD = "normal\t0.2\t0\t0\t1\tone in five missing"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("cadence\tmissing_fraction\tseason_days\tgap_days\tdescription\n" + "normal\t0.2\t0\t0\tx",
         "missing column(s) clump_epochs"),
        (HEADER + "\tcolour\n" + GOOD + "\tred", "unknown column(s) colour"),
        (HEADER + "\n" + GOOD.replace("0.2", "1.0"),
         "row 1 (cadence 'normal'), column missing_fraction: must be in [0, 1)"),
        (HEADER + "\n" + GOOD.replace("0.2", "-0.1"), "column missing_fraction: must be in [0, 1)"),
        (HEADER + "\n" + GOOD.replace("0.2", "lots"), "column missing_fraction: expected a number, got 'lots'"),
        (HEADER + "\n" + GOOD + "\n" + "dense\t0.05\t0\t0\t1\td\n" + GOOD,
         "duplicate cadence name 'normal' (rows 1 and 3)"),
        (HEADER + "\n" + "lsst\t0.2\t200\t60\t4\tgaps of 23 percent",
         "row 1 (cadence 'lsst'): the seasonal gaps alone mask"),
        (HEADER + "\n" + "odd\t0.2\t0\t30\t1\tgap without season", "gap_days 30.0 needs season_days > 0"),
        (HEADER + "\n" + "odd\t0.9\t0\t0\t2\tshort clumps", "clump_epochs 2.0 is too small"),
        (HEADER + "\n" + "odd\t0.2\t0\t0\t0.5\tbad clumps", "clump_epochs must be >= 1"),
        (HEADER + "\n" + "odd\t0.2\t-5\t0\t1\tnegative season", "season_days and gap_days must be >= 0"),
        (HEADER + "\n" + "a b\t0.2\t0\t0\t1\tspace in name", "cadence name must be"),
        (HEADER + "\n" + "odd\t0.2\t0\t0\t1\t", "column description: empty"),
        (HEADER + "\n", "no cadences"),
    ],
)
def test_bad_tables_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad_cadences.tsv"
    path.write_text(text + "\n")
    with pytest.raises(InputDataError) as error:
        load_cadences(path)
    assert error.value.path == path
    assert str(path) in str(error.value)
    assert problem in str(error.value)


def test_missing_table(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        load_cadences(tmp_path / "cadences.tsv")


def test_comments_and_order_are_kept(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("# a comment\n" + HEADER + "\n" + "b\t0.1\t0\t0\t1\tsecond\n" + "a\t0.1\t10\t1\t1\tfirst\n")
    cadences = load_cadences(path)
    assert list(cadences) == ["b", "a"]
    assert cadences["a"] == CadenceSpec("a", 0.1, 10.0, 1.0, 1.0, "first")
