"""Survey schedules: seasons, nights, weather, visits, reproducibility, the table and its errors."""

from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from astrodag.errors import InputDataError
from astrodag.microlensing.cadence import COLUMNS, MIN_OBSERVATIONS, CadenceSpec, load_cadences, observation_times
from astrodag.microlensing.noise import SurveyNoise

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "config" / "cadences.tsv"
SCHEMA = ROOT / "workflow" / "schemas" / "cadences.schema.yaml"
CADENCES = load_cadences(TABLE)
DURATION = 500.0  # the demo grid: 1500 steps of 8 h
STEP = 1.0 / 3.0
HEADER = "\t".join(COLUMNS)


def times_of(name, events=range(40), seed=11, duration=DURATION):
    return [observation_times(CADENCES[name], event, seed, duration) for event in events]


def largest_folded_gap(times, period):
    """Largest empty arc (days) of the times folded on ``period``: the gap of every cycle."""
    phases = np.sort(np.mod(times, period))
    return max(np.diff(phases).max(), phases[0] + period - phases[-1])


# --- the table ---------------------------------------------------------------------------------


def test_config_table_has_the_five_surveys():
    assert list(CADENCES) == ["sparse", "normal", "dense", "lsst", "roman"]
    roman, lsst, dense = CADENCES["roman"], CADENCES["lsst"], CADENCES["dense"]
    assert (roman.visit_interval_minutes, roman.season_days, roman.night_hours) == (15.16, 72, 24)
    assert roman.period_days == pytest.approx(365.25 / 2, abs=0.1)
    assert lsst.season_days <= 365.25 - 120 and lsst.visits_per_night == 2
    assert dense.sites == 3 and dense.visit_interval_minutes == 15
    assert roman.noise == SurveyNoise(24.67, 0.001) and roman.noise.sigma(21.15) == pytest.approx(0.01, rel=0.01)
    for spec in CADENCES.values():
        assert spec.description and spec.seasonal and isinstance(spec.sites, int)
    for name in ("sparse", "normal", "dense"):  # OGLE-IV, KMTNet: ~0.2 mag at I = 21
        assert CADENCES[name].noise.sigma(21.0) == pytest.approx(0.2, abs=0.002)
    assert lsst.noise.sigma(22.5) == pytest.approx(0.2, abs=0.002)


def test_config_table_rows_validate_against_the_workflow_schema():
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    table = pd.read_csv(TABLE, sep="\t", comment="#", dtype={"cadence": str})
    records = table.to_dict("records")
    for record in records:
        validator.validate(record)
    assert not validator.is_valid(dict(records[0], night_probability=0.0))
    assert not validator.is_valid(dict(records[0], sites=1.5))
    assert not validator.is_valid({k: v for k, v in records[0].items() if k != "description"})
    assert not validator.is_valid(dict(records[0], cadence="a/b"))


def test_to_dict_round_trips():
    for spec in CADENCES.values():
        row = spec.to_dict()
        assert list(row) == list(COLUMNS)
        assert CadenceSpec(name=row.pop("cadence"), **row) == spec


# --- schedules ---------------------------------------------------------------------------------


def test_roman_observes_every_15_minutes_in_72_day_seasons_with_110_day_gaps():
    spec = CADENCES["roman"]
    for times in times_of("roman", range(10)):
        assert times.dtype == np.float64 and np.all(np.diff(times) > 0)
        assert times.min() >= 0 and times.max() < DURATION
        spacing = np.diff(times) * 1440.0
        assert np.median(spacing) == pytest.approx(15.16, abs=0.1)
        inside = spacing < 60.0
        assert inside.mean() > 0.999 and np.all(np.abs(spacing[inside] - 15.16) <= 0.1 * 15.16 + 1e-6)
        gaps = np.diff(times)[np.diff(times) > 30.0]
        assert gaps.size >= 1 and np.all(np.abs(gaps - 110.6) < 1.5)
        assert largest_folded_gap(times, spec.period_days) > 110.0
        # 95 visits a day on 99 percent of days; 500 days hold 167.6 to 216 days of seasons, by the phase
        assert 167.6 * 95 * 0.97 < times.size < 216 * 95
        # a 15-minute cadence puts ~32 visits in most observed 8-hour steps
        counts = np.bincount((times / STEP).astype(int), minlength=1500)
        assert np.median(counts[counts > 0]) >= 31


def test_lsst_leaves_most_steps_empty_and_a_long_gap_every_year():
    spec = CADENCES["lsst"]
    empty = in_season = 0
    for times in times_of("lsst", range(60)):
        assert largest_folded_gap(times, 365.25) >= 120.0
        # the in-season steps: those not inside a gap of more than 100 days
        edges = np.concatenate([[0.0], times, [DURATION]])
        centres = (np.arange(1500) + 0.5) * STEP
        after = np.searchsorted(edges, centres)
        gap = edges[after] - edges[after - 1]
        season = gap < 100.0
        observed = np.bincount((times / STEP).astype(int), minlength=1500) > 0
        in_season += season.sum()
        empty += (season & ~observed).sum()
        # pairs of visits ~30 minutes apart in a night, a night every few days
        spacing = np.diff(times) * 1440.0
        assert np.all((spacing < 40.0) | (spacing > 16 * 60.0))
    assert empty / in_season >= 0.85
    assert spec.night_probability == pytest.approx(1 / 3.3, abs=0.05)


@pytest.mark.parametrize("name", ["sparse", "normal", "dense"])
def test_ground_surveys_have_a_bulge_season(name):
    for times in times_of(name, range(10)):
        assert largest_folded_gap(times, 365.25) >= 365.25 - 240.0 - 1.0


@pytest.mark.parametrize("spec", [CADENCES["normal"], CADENCES["sparse"],
                                  CadenceSpec("two", 365.25, 0.0, 2, 4.0, 0.8, 20.0, 0, 21.0, 0.005)])
def test_ground_sites_observe_only_in_their_night_windows(spec):
    # sites evenly spaced in longitude: one window of night_hours every 1 / sites days
    cycle = 1.0 / spec.sites
    for event in range(20):
        times = observation_times(spec, event, 3, 200.0)
        assert largest_folded_gap(times, cycle) >= cycle - spec.night_hours / 24.0 - 1e-9


def test_weather_takes_whole_nights():
    spec = CADENCES["normal"]  # one site, a visit every 60 min through 8-hour nights
    intervals = days = 0
    for event in range(20):
        times = observation_times(spec, event, 5, 300.0)
        nights = np.split(times, np.flatnonzero(np.diff(times) > 0.5) + 1)
        starts = np.array([night[0] for night in nights])
        sizes = np.array([night.size for night in nights])
        apart = np.diff(starts)
        short = apart < 30.0  # within a season
        # every observed night inside a season (not cut by a season's or the grid's ends) has all its visits
        inner = sizes[1:-1][short[:-1] & short[1:]]
        assert inner.size > 50 and np.all(inner == sizes.max()) and sizes.max() in (7, 8)
        # full nights start a whole number of days apart (up to the jitter): the losses are whole nights
        both_full = short & (sizes[:-1] == sizes.max()) & (sizes[1:] == sizes.max())
        assert np.all(np.abs(apart[both_full] - np.round(apart[both_full])) < 0.005)
        intervals += both_full.sum()
        days += np.round(apart[both_full]).sum()
    # geometric spacing of usable nights: one per 1 / night_probability days (~2500 intervals, s.e. ~0.01)
    assert intervals / days == pytest.approx(spec.night_probability, abs=0.03)


def test_night_losses_are_independent_per_site():
    spec = CadenceSpec("pair", 365.25, 365.25, 2, 6.0, 0.5, 30.0, 0, 21.0, 0.005)
    both = one = 0
    for event in range(20):
        times = observation_times(spec, event, 1, 200.0)
        # half-day bins centred on each site's nights; site of a visit = which half of the day
        first = times[0]
        halves = np.floor((times - first + 0.25) * 2).astype(int)
        observed = np.zeros(2 * 201, dtype=bool)
        observed[halves] = True
        pairs = observed[: 2 * 199].reshape(-1, 2)
        both += pairs.all(axis=1).sum()
        one += pairs.any(axis=1).sum()
    # P(both usable | at least one) = 0.25 / 0.75 for independent sites
    assert both / one == pytest.approx(1 / 3, abs=0.05)


def test_visits_per_night_limits_the_runs():
    for times in times_of("sparse", range(10)):
        assert np.all(np.diff(times) > 16 / 24)  # one visit per night
    lsst = times_of("lsst", range(10))
    pairs = np.concatenate([np.diff(t)[np.diff(t) < 0.1] for t in lsst]) * 1440
    assert pairs.size > 100 and np.all(np.abs(pairs - 30.0) <= 3.0 + 1e-6)


def test_times_are_reproducible_and_depend_only_on_seed_name_and_event():
    spec = CADENCES["dense"]
    first = [observation_times(spec, event, 11, DURATION) for event in (7, 8, 9)]
    again = [observation_times(spec, event, 11, DURATION) for event in (9, 8, 7)][::-1]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][:100], first[1][:100])
    assert not np.array_equal(first[0][:100], observation_times(spec, 7, 12, DURATION)[:100])
    renamed = replace(spec, name="dense2")
    assert not np.array_equal(first[0][:100], observation_times(renamed, 7, 11, DURATION)[:100])


def test_every_event_gets_a_minimum_of_observations():
    roman = CADENCES["roman"]
    for event in range(200):
        # two days: many events fall entirely in a seasonal gap
        times = observation_times(roman, event, 1, 2.0)
        assert times.size >= MIN_OBSERVATIONS and np.all(np.diff(times) >= 0)
        assert times.min() >= 0 and times.max() < 2.0
    sparse = CADENCES["sparse"]
    for event in range(50):
        times = observation_times(sparse, event, 1, 0.2)  # shorter than a night
        assert times.size == MIN_OBSERVATIONS and times.max() < 0.2


def test_bad_arguments():
    spec = CADENCES["normal"]
    for kwargs, problem in [({"event_id": -1}, "event_id"), ({"seed": 1.5}, "seed"),
                            ({"duration_days": 0.0}, "duration_days")]:
        arguments = {"event_id": 1, "seed": 1, "duration_days": 10.0, **kwargs}
        with pytest.raises(ValueError, match=problem):
            observation_times(spec, **arguments)


# --- bad tables --------------------------------------------------------------------------------


GOOD = "normal\t365.25\t240\t1\t8\t0.75\t60\t0\t21.0\t0.004\tOGLE-like"


def row(**changes):
    cells = dict(zip(COLUMNS, GOOD.split("\t")))
    cells.update(changes)
    return "\t".join(cells[c] for c in COLUMNS)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("\t".join(c for c in COLUMNS if c != "sites") + "\n" + GOOD.replace("\t1\t8", "\t8"),
         "missing column(s) sites"),
        (HEADER + "\tcolour\n" + GOOD + "\tred", "unknown column(s) colour"),
        (HEADER + "\n" + row(night_probability="1.5"),
         "row 1 (cadence 'normal'): night_probability must be in (0, 1]"),
        (HEADER + "\n" + row(period_days="lots"), "row 1 (cadence 'normal'), column period_days: expected a number"),
        (HEADER + "\n" + row(depth_mag="inf"), "column depth_mag: expected a finite number, got 'inf'"),
        (HEADER + "\n" + row(sites="1.5"), "column sites: expected a whole number, got '1.5'"),
        (HEADER + "\n" + row(sites="0"), "sites must be >= 1"),
        (HEADER + "\n" + row(season_days="400"), "season_days must be in [0, period_days = 365.25]"),
        (HEADER + "\n" + row(night_hours="25"), "night_hours must be in (0, 24]"),
        (HEADER + "\n" + row(visit_interval_minutes="480"), "does not fit a visit into every 8.0-hour night"),
        (HEADER + "\n" + row(visits_per_night="-1"), "visits_per_night must be >= 0"),
        (HEADER + "\n" + row(error_floor_mag="-0.01"), "error_floor_mag must be >= 0"),
        (HEADER + "\n" + GOOD + "\n" + row(cadence="dense") + "\n" + GOOD,
         "duplicate cadence name 'normal' (rows 1 and 3)"),
        (HEADER + "\n" + row(cadence="a b"), "cadence name must be"),
        (HEADER + "\n" + row(description=""), "column description: empty"),
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
    path.write_text("# a comment\n" + HEADER + "\n" + row(cadence="b") + "\n" + row(cadence="a", sites="2") + "\n")
    cadences = load_cadences(path)
    assert list(cadences) == ["b", "a"]
    assert cadences["a"] == CadenceSpec("a", 365.25, 240.0, 2, 8.0, 0.75, 60.0, 0, 21.0, 0.004, "OGLE-like")
