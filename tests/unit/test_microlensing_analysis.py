"""Tests for astrodag.microlensing.analysis: early detection, detection times, cadence reports."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.rates import confint_poisson

from astrodag.errors import InputDataError
from astrodag.evaluation.base_rate import deployment_rates
from astrodag.evaluation.metrics import binary_metrics
from astrodag.evaluation.statistics import resolvable_auc, untied_auc_p_value
from astrodag.microlensing import analysis, report
from astrodag.microlensing.analysis import (
    deployment_metrics,
    detection_summary,
    detection_times,
    early_detection,
    evaluate_cadence,
    known_steps,
    phase_detection,
)
from astrodag.microlensing.report import compare_cadences
from astrodag.microlensing.scan import observed_steps, time_steps
from astrodag.reporting.tables import format_interval

PNG = b"\x89PNG\r\n\x1a\n"


def _wilson(k, n):
    return proportion_confint(k, n, alpha=0.05, method="wilson")


# ---------------------------------------------------------------------------
# Steps of the two bases
# ---------------------------------------------------------------------------


def test_time_steps_are_ceil_f_times_T_minus_one():
    assert time_steps(1500, [0.1, 0.7, 1.0]).tolist() == [149, 1049, 1499]
    # 0.55 * 100 is 55.00000000000001 and (0.1 * 3) * 10 is 3.0000000000000004 in floating point;
    # on paper ceil gives 55 and 3.
    assert time_steps(100, [0.55]).tolist() == [54]
    assert time_steps(10, [0.1 * 3]).tolist() == [2]
    assert time_steps(10, [0.25, 0.5]).tolist() == [2, 4]
    with pytest.raises(ValueError, match="fractions"):
        time_steps(10, [0.0])


def test_observed_steps_on_a_hand_built_mask():
    mask = np.zeros((2, 10), dtype=np.uint8)
    mask[0, [1, 3, 4, 8]] = 1  # 4 observed epochs
    mask[1, :] = 1  # 10 observed epochs
    fractions = [0.25, 0.5, 0.6, 1.0]
    # Row 0 needs ceil(f * 4) = 1, 2, 3, 4 epochs -> steps 1, 3, 4, 8.
    # Row 1 needs ceil(f * 10) = 3, 5, 6, 10 epochs -> steps 2, 4, 5, 9.
    expected = [[1, 3, 4, 8], [2, 4, 5, 9]]
    assert observed_steps(mask, fractions).tolist() == expected
    assert observed_steps(mask.astype(bool), fractions, chunk_events=1).tolist() == expected
    # Rounding: 0.55 of 100 observed epochs is the 55th observed epoch, not the 56th.
    sparse = np.zeros((1, 300), dtype=np.uint8)
    sparse[0, ::3] = 1
    assert observed_steps(sparse, [0.55]).tolist() == [[54 * 3]]


# ---------------------------------------------------------------------------
# early_detection on a tiny hand-checkable example
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny():
    """Four events on 10 steps of 10 days; see the comments for the expected decisions."""
    times = np.arange(10) * 10.0
    prob = np.empty((4, 10))
    prob[0] = np.where(np.arange(10) >= 3, 0.8, 0.2)  # binary, t0 = 30: ramps up at its peak
    prob[1] = 0.2  # binary but PSPL-like: never found
    prob[2] = 0.3  # PSPL, always right
    prob[3] = np.where(np.arange(10) >= 8, 0.6, 0.3)  # PSPL, late false alarm
    return {
        "probabilities": prob,
        "labels": np.array([1, 1, 0, 0]),
        "pspl_like": np.array([False, True, False, False]),
        "mask": np.ones((4, 10), dtype=np.uint8),
        "times": times,
        "t0": np.array([30.0, 50.0, 40.0, 60.0]),
        "tE": np.array([10.0, 20.0, 10.0, 10.0]),
    }


def test_early_detection_time_basis_hand_values(tiny):
    table = early_detection(
        tiny["probabilities"], tiny["labels"], tiny["mask"], [0.3, 0.6, 1.0], "time",
        pspl_like=tiny["pspl_like"], times=tiny["times"], t0=tiny["t0"], tE=tiny["tE"],
    )
    assert table["basis"].tolist() == ["time"] * 3
    assert table["median_step"].tolist() == [2, 5, 9]
    assert table["median_time_days"].tolist() == [20, 50, 90]
    # Step 2: nobody called binary -> the two PSPL right. Step 5: event 0 found. Step 9: event 3 false alarm.
    assert table["n_correct"].tolist() == [2, 3, 2]
    assert table["accuracy"].tolist() == [0.5, 0.75, 0.5]
    assert table["roc_auc"].tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert table["recall"].tolist() == [0.0, 0.5, 0.5]
    assert table["false_alarm_rate"].tolist() == [0.0, 0.0, 0.5]
    # Without the PSPL-like binary: events 0, 2, 3.
    assert table["n_events_without_pspl_like"].tolist() == [3, 3, 3]
    assert table["accuracy_without_pspl_like"].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert table["roc_auc_without_pspl_like"].tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert table["n_pspl_like"].tolist() == [1, 1, 1]
    assert table["recall_pspl_like"].tolist() == [0.0, 0.0, 0.0]
    # Median (t - t0)/tE of the binaries: step 2 -> (-1, -1.5), step 5 -> (2, 0), step 9 -> (6, 2).
    assert table["median_phase_binary"].tolist() == pytest.approx([-1.25, 1.0, 4.0])
    # 95 % Wilson bounds are statsmodels' own.
    for row in table.itertuples():
        low, high = _wilson(row.n_correct, row.n_events)
        assert (row.accuracy_low, row.accuracy_high) == pytest.approx((low, high))
    low, high = _wilson(3, 3)
    assert table.loc[1, ["accuracy_without_pspl_like_low", "accuracy_without_pspl_like_high"]].tolist() == \
        pytest.approx([low, high])


def test_early_detection_counts_binaries_past_their_evidence_time_and_the_ideal_auc(tiny):
    # Binaries 0 and 1 (1 is never told apart from a PSPL); binary 0 is from day 40 on.
    evidence_time = np.array([40.0, np.nan, np.nan, np.nan])
    table = early_detection(
        tiny["probabilities"], tiny["labels"], tiny["mask"], [0.3, 0.6, 1.0], "time",
        pspl_like=tiny["pspl_like"], times=tiny["times"], t0=tiny["t0"], tE=tiny["tE"], evidence_time=evidence_time,
    )
    assert table["distinguishable_share_binary"].tolist() == [0.0, 0.5, 0.5]
    # The ideal classifier ranks binary 0 above both PSPL events and binary 1 at random among them.
    assert table["ideal_roc_auc"].tolist() == [0.5, 0.75, 0.75]
    assert table["ideal_roc_auc_p_value"].tolist() == pytest.approx(
        [untied_auc_p_value(auc, 2, 2) for auc in (0.5, 0.75, 0.75)])
    assert table["roc_auc_p_value"].notna().all()
    without = early_detection(tiny["probabilities"], tiny["labels"], tiny["mask"], [0.5], "time")
    assert without[["distinguishable_share_binary", "ideal_roc_auc", "ideal_roc_auc_p_value"]].isna().all().all()
    with pytest.raises(ValueError, match="evidence_time"):
        early_detection(tiny["probabilities"], tiny["labels"], tiny["mask"], [0.5], "time", times=tiny["times"],
                        evidence_time=np.zeros(3))


def test_chance_note_tells_what_the_test_events_resolve_from_the_classifiers_shortfall():
    early = pd.DataFrame({
        "cadence": ["dense"] * 3, "basis": ["time"] * 3, "fraction": [0.1, 0.2, 0.3],
        "n_binary": [700] * 3, "n_pspl": [730] * 3,
        "roc_auc_p_value": [0.6, 0.3, 0.2], "distinguishable_share_binary": [0.0, 0.02, 0.2],
        "ideal_roc_auc": [0.5, 0.51, 0.6], "ideal_roc_auc_p_value": [0.5, 0.2, 1e-6],
    })
    note = report._chance_note(early, "time")
    assert "does not beat chance (one-sided p >= 0.05) for dense at 0.1, 0.2, 0.3." in note
    assert f"resolve an AUC of {resolvable_auc(700, 730):.3f} or more" in note
    assert "At dense 0.1, 0.2 at most 2.0% of the binaries were fitted by no PSPL" in note
    assert f"would reach AUC 0.510 at most, below {resolvable_auc(700, 730):.3f}." in note
    assert "how typical the light curve seen so far is" in note
    assert "At dense 0.3 a classifier knowing which binaries no PSPL fits" in note
    early["roc_auc_p_value"] = 0.01
    assert report._chance_note(early, "time").startswith("The ROC AUC beats chance")


def test_early_detection_observed_basis_uses_each_events_own_step():
    mask = np.zeros((2, 10), dtype=np.uint8)
    mask[0, [1, 3, 4, 8]] = 1
    mask[1, :] = 1
    prob = np.empty((2, 10))
    prob[0] = np.where(np.arange(10) >= 3, 0.9, 0.1)  # binary, called binary from step 3
    prob[1] = np.where(np.arange(10) >= 5, 0.9, 0.1)  # PSPL, false alarm from step 5
    labels = [1, 0]
    observed = early_detection(prob, labels, mask, [0.25, 0.5, 0.6], "observed")
    # Steps: event 0 -> 1, 3, 4; event 1 -> 2, 4, 5.
    assert observed["median_step"].tolist() == [1.5, 3.5, 4.5]
    assert observed["accuracy"].tolist() == [0.5, 1.0, 0.5]
    # The time basis reads step 2 and step 4 for both events instead.
    by_time = early_detection(prob, labels, mask, [0.25, 0.5], "time")
    assert by_time["median_step"].tolist() == [2, 4]
    assert by_time["accuracy"].tolist() == [0.5, 1.0]
    # Without times/t0/tE the phase columns are NaN rather than missing.
    assert observed["median_phase_binary"].isna().all()


def test_single_class_gives_nan_auc_without_warnings(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = early_detection(tiny["probabilities"][:2], [1, 1], None, [0.5, 1.0], "time")
    assert table["roc_auc"].isna().all()
    assert table["accuracy"].tolist() == [0.5, 0.5]
    assert table["false_alarm_rate"].isna().all()


def _naive_observed_step(row_mask, fraction):
    needed = int(np.ceil(round(fraction * row_mask.sum(), 9)))
    return int(np.nonzero(np.cumsum(row_mask) >= needed)[0][0])


def _naive_alarms(row, observed, threshold, k):
    """Alarm steps by walking the observed epochs one by one, as a real-time system would."""
    steps, run = [], 0
    for step in range(len(row)):
        if not observed[step]:
            continue
        run = run + 1 if row[step] >= threshold else 0
        if run == k:
            steps.append(step)
    return steps


def test_streaming_memmap_matches_a_naive_computation(tmp_path):
    rng = np.random.default_rng(3)
    n, t = 57, 40
    prob = rng.random((n, t)).astype(np.float32)
    mask = (rng.random((n, t)) < 0.5).astype(np.uint8)
    mask[:, 0] = 1
    labels = rng.integers(0, 2, n)
    np.save(tmp_path / "p.npy", prob)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    fractions = [0.1, 0.35, 0.8, 1.0]
    small = early_detection(mapped, labels, mask, fractions, "observed", chunk_events=5)
    whole = early_detection(prob, labels, mask, fractions, "observed", chunk_events=10_000)
    pd.testing.assert_frame_equal(small, whole)
    for j, fraction in enumerate(fractions):
        steps = [_naive_observed_step(mask[i], fraction) for i in range(n)]
        expected = binary_metrics(labels, prob[np.arange(n), steps].astype(float))
        assert small.loc[j, "accuracy"] == pytest.approx(expected["accuracy"])
        assert small.loc[j, "roc_auc"] == pytest.approx(expected["roc_auc"])
        assert small.loc[j, "median_step"] == np.median(steps)

    events = pd.DataFrame({"label": labels, "t0": rng.uniform(0, 40, n), "tE": rng.uniform(1, 5, n)})
    times = np.arange(t) * 2.0
    thresholds = [0.3, 0.6, 0.9]
    for k in (1, 2, 3):
        detections = detection_times(mapped, events, times, thresholds, mask=mask, consecutive_epochs=k,
                                     chunk_events=4)
        assert len(detections) == n * len(thresholds)
        for row in detections.itertuples():
            expected = _naive_alarms(prob[row.event_id].astype(float), mask[row.event_id], row.threshold, k)
            assert row.n_alarms == len(expected)
            if not expected:
                assert not row.detected and pd.isna(row.detection_step) and np.isnan(row.detection_phase)
            else:
                assert row.detected and row.detection_step == expected[0]
                assert row.detection_phase == pytest.approx((times[expected[0]] - events.t0[row.event_id]) /
                                                            events.tE[row.event_id])


# ---------------------------------------------------------------------------
# Detection times
# ---------------------------------------------------------------------------


def test_detection_is_the_first_crossing_and_every_crossing_on_a_pspl_is_a_false_alarm():
    prob = np.array([
        [0.1, 0.6, 0.7, 0.4, 0.6, 0.92, 0.95, 0.97],  # binary: crosses 0.5 early, dips, crosses again
        [0.1, 0.6, 0.7, 0.8, 0.9, 0.95, 0.6, 0.4],  # binary: detected, then falls back (the future never undoes it)
        [0.2, 0.6, 0.3, 0.3, 0.55, 0.2, 0.1, 0.1],  # PSPL: crosses 0.5 twice and falls back: two false alarms
        [0.1] * 7 + [0.95],  # PSPL: only the last step -> false alarm at step 7
    ])
    events = pd.DataFrame({
        "event_id": [10, 11, 12, 13],
        "label": [1, 1, 0, 0],
        "t0": [10.0, 10.0, 5.0, 0.0],
        "tE": [5.0, 5.0, 10.0, 7.0],
        "pspl_like": [False, True, False, False],
    })
    times = np.arange(8) * 5.0
    table = detection_times(prob, events, times, [0.5, 0.9])
    assert table["event_id"].tolist() == [10, 10, 11, 11, 12, 12, 13, 13]
    assert table["threshold"].tolist() == [0.5, 0.9] * 4
    steps = [None if pd.isna(s) else int(s) for s in table["detection_step"]]
    assert steps == [1, 5, 1, 4, 1, None, 7, 7]
    assert table["detected"].tolist() == [True, True, True, True, True, False, True, True]
    assert table["n_alarms"].tolist() == [2, 1, 1, 1, 2, 0, 1, 1]
    np.testing.assert_allclose(table["detection_day"], [5, 25, 5, 20, 5, np.nan, 35, 35])
    np.testing.assert_allclose(table["detection_phase"], [-1.0, 3.0, -1.0, 2.0, 0.0, np.nan, 5.0, 5.0])
    assert (table["monitoring_days"] == 40.0).all() and (table["consecutive_epochs"] == 1).all()

    summary = detection_summary(table)
    assert summary["threshold"].tolist() == [0.5, 0.9]
    assert summary["n_detected"].tolist() == [2, 2]
    assert summary["detected_fraction"].tolist() == [1.0, 1.0]
    assert summary["median_phase"].tolist() == [-1.0, 2.5]
    assert summary["detected_fraction_without_pspl_like"].tolist() == [1.0, 1.0]
    assert summary["n_false_alarms"].tolist() == [2, 1]
    assert summary["false_alarm_fraction"].tolist() == [1.0, 0.5]
    low, high = _wilson(1, 2)
    assert summary.loc[1, ["false_alarm_low", "false_alarm_high"]].tolist() == pytest.approx([low, high])
    # Every up-crossing on a PSPL event counts: 3 at 0.5 over 2 events monitored 40 days each.
    assert summary["n_pspl_alarms"].tolist() == [3, 1]
    assert summary["alarms_per_pspl_event"].tolist() == [1.5, 0.5]
    years = 2 * 40.0 / 365.25
    assert summary["alarms_per_year"].to_numpy() == pytest.approx([3 / years, 1 / years])
    assert summary.loc[0, ["alarms_per_year_low", "alarms_per_year_high"]].tolist() == pytest.approx(
        list(confint_poisson(3, years, method="exact-c", alpha=0.05)))
    assert summary.loc[0, ["alarms_per_pspl_event_low", "alarms_per_pspl_event_high"]].tolist() == pytest.approx(
        list(confint_poisson(3, 2, method="exact-c", alpha=0.05)))
    assert summary["monitoring_days"].tolist() == [40.0, 40.0]


def test_k_consecutive_observed_epochs_raise_the_alarm():
    prob = np.array([
        [0.6, 0.2, 0.6, 0.7, 0.2, 0.6, 0.6, 0.6],  # runs of 1, 2 and 3 above 0.5
        [0.6, 0.7, 0.2, 0.6, 0.2, 0.1, 0.1, 0.1],  # PSPL: one run of 2, then a single epoch
    ])
    events = pd.DataFrame({"label": [1, 0], "t0": [0.0, 0.0], "tE": [1.0, 1.0]})
    times = np.arange(8.0)
    steps = {k: detection_times(prob, events, times, [0.5], consecutive_epochs=k) for k in (1, 2, 3, 4)}
    assert steps[1]["detection_step"].tolist() == [0, 0] and steps[1]["n_alarms"].tolist() == [3, 2]
    assert steps[2]["detection_step"].tolist() == [3, 1] and steps[2]["n_alarms"].tolist() == [2, 1]
    assert steps[3]["detection_step"].tolist() == [7, pd.NA] and steps[3]["n_alarms"].tolist() == [1, 0]
    assert steps[4]["detected"].tolist() == [False, False]
    assert detection_summary(steps[3])["consecutive_epochs"].tolist() == [3]
    with pytest.raises(ValueError, match="consecutive_epochs"):
        detection_times(prob, events, times, [0.5], consecutive_epochs=0)


def test_unobserved_epochs_never_raise_an_alarm_nor_break_a_run():
    prob = np.array([
        [0.1, 0.9, 0.9, 0.1, 0.1, 0.1],  # PSPL: above 0.5 only where it was not observed
        [0.1, 0.9, 0.2, 0.9, 0.1, 0.1],  # binary: the dip at step 2 is unobserved, so 1 and 3 are one run
    ])
    mask = np.array([
        [1, 0, 0, 1, 1, 1],
        [1, 1, 0, 1, 1, 1],
    ], dtype=np.uint8)
    events = pd.DataFrame({"label": [0, 1], "t0": [0.0, 0.0], "tE": [1.0, 1.0]})
    times = np.arange(6.0)
    table = detection_times(prob, events, times, [0.5], mask=mask)
    assert table["detected"].tolist() == [False, True] and table["n_alarms"].tolist() == [0, 1]
    # Without the mask the PSPL's unobserved steps would have raised a false alarm.
    assert detection_times(prob, events, times, [0.5])["detected"].tolist() == [True, True]
    two = detection_times(prob, events, times, [0.5], mask=mask, consecutive_epochs=2)
    assert two["detection_step"].tolist() == [pd.NA, 3]


def test_detection_summary_quartiles():
    frame = pd.DataFrame({
        "threshold": 0.5,
        "label": [1, 1, 1, 1, 1, 0],
        "pspl_like": False,
        "detected": [True, True, True, True, False, False],
        "detection_day": [1.0, 2.0, 3.0, 4.0, np.nan, np.nan],
        "detection_phase": [-1.0, 0.0, 1.0, 2.0, np.nan, np.nan],
        "n_alarms": [1, 1, 1, 1, 0, 0],
        "monitoring_days": 365.25,
        "consecutive_epochs": 1,
    })
    row = detection_summary(frame).iloc[0]
    assert (row.phase_q25, row.median_phase, row.phase_q75) == pytest.approx((-0.25, 0.5, 1.25))
    assert row.detected_fraction == 0.8 and row.false_alarm_fraction == 0.0
    assert row.alarms_per_year == 0.0 and row.alarms_per_year_high == pytest.approx(-np.log(0.025))


# ---------------------------------------------------------------------------
# Validation of the pure functions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["probabilities"].__setitem__((1, 2), 1.5), r"outside \[0, 1\].*row 1"),
        (lambda a: a["probabilities"].__setitem__((2, 2), np.nan), "NaN or infinite"),
        (lambda a: a.__setitem__("mask", a["mask"][:, :5]), "mask has shape"),
        (lambda a: a["mask"].__setitem__((3, slice(None)), 0), "no observed epoch.*row 3"),
        (lambda a: a["mask"].__setitem__((0, 0), 2), "only 0/1"),
        (lambda a: a.__setitem__("labels", np.array([1, 0, 2, 0])), "0 \\(PSPL\\) or 1 \\(binary\\)"),
        (lambda a: a.__setitem__("labels", np.array([1, 0, 0])), "3 labels for 4 events"),
        (lambda a: a.__setitem__("pspl_like", np.array([True, False])), "2 pspl_like flags"),
        (lambda a: a.__setitem__("fractions", [0.5, 1.2]), r"fractions must lie in \(0, 1\]"),
        (lambda a: a.__setitem__("basis", "epochs"), "basis must be one of"),
        (lambda a: a.__setitem__("probabilities", a["probabilities"][0]), "must be 2-D"),
    ],
)
def test_early_detection_rejects_bad_inputs(tiny, change, message):
    arguments = {**tiny, "fractions": [0.5, 1.0], "basis": "observed"}
    arguments["probabilities"] = tiny["probabilities"].copy()
    change(arguments)
    with pytest.raises(ValueError, match=message):
        early_detection(arguments["probabilities"], arguments["labels"], arguments["mask"], arguments["fractions"],
                        arguments["basis"], pspl_like=arguments["pspl_like"])


def test_detection_times_rejects_bad_inputs(tiny):
    events = pd.DataFrame({"label": tiny["labels"], "t0": tiny["t0"], "tE": tiny["tE"]})
    with pytest.raises(ValueError, match=r"lack column\(s\) \['tE'\]"):
        detection_times(tiny["probabilities"], events.drop(columns="tE"), tiny["times"])
    with pytest.raises(ValueError, match="'tE' must be finite and > 0"):
        detection_times(tiny["probabilities"], events.assign(tE=[1.0, 0.0, 1.0, 1.0]), tiny["times"])
    with pytest.raises(ValueError, match="times has shape"):
        detection_times(tiny["probabilities"], events, tiny["times"][:-1])
    with pytest.raises(ValueError, match="3 event rows for 4 rows"):
        detection_times(tiny["probabilities"], events.iloc[:3], tiny["times"])
    with pytest.raises(ValueError, match="thresholds"):
        detection_times(tiny["probabilities"], events, tiny["times"], [0.5, 1.5])


# ---------------------------------------------------------------------------
# evaluate_cadence and compare_cadences on files
# ---------------------------------------------------------------------------


def _write_evaluation(directory, seed, n=240, steps=60, skill=0.6, missing=0.3):
    """Synthetic scorer output: binaries ramp up after t0 (except the PSPL-like ones), PSPL stay low."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    times = np.linspace(0.0, 500.0, steps, endpoint=False)
    label = rng.permutation(np.repeat([0, 1], n // 2)).astype(np.int8)
    t0 = rng.uniform(100.0, 400.0, n)
    tE = rng.uniform(10.0, 60.0, n)
    pspl_like = (label == 1) & (rng.random(n) < 0.2)
    strength = np.where((label == 1) & ~pspl_like, skill, 0.0)
    ramp = 1.0 / (1.0 + np.exp(-3.0 * (times[None, :] - t0[:, None]) / tE[:, None]))
    noise = 0.08 * rng.standard_normal((n, steps))
    prob = np.clip(0.3 + strength[:, None] * ramp + noise, 0.0, 1.0).astype(np.float32)
    mask = (rng.random((n, steps)) >= missing).astype(np.uint8)
    mask[:, -1] = 1
    np.save(directory / "probabilities.npy", prob)
    np.save(directory / "mask.npy", mask)
    np.save(directory / "times.npy", times)
    # Told apart from a PSPL at the peak (never for PSPL events and PSPL-like binaries).
    evidence_time = np.where((label == 1) & ~pspl_like, t0, np.nan)
    # Brightened about 1.5 tE before the peak; a few never did.
    brightening_time = np.where(rng.random(n) < 0.1, np.nan, t0 - 1.5 * tE)
    pd.DataFrame({"event_id": np.arange(n) + 1000, "label": label, "split": "test", "t0": t0, "tE": tE,
                  "pspl_like": pspl_like, "evidence_time": evidence_time,
                  "brightening_time": brightening_time}).to_parquet(directory / "events.parquet")
    return directory


FRACTIONS = (0.2, 0.5, 1.0)
THRESHOLDS = (0.5, 0.8)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cadences")
    dirs = {}
    for name, seed, skill, missing in (("dense", 1, 0.6, 0.05), ("sparse", 2, 0.35, 0.5)):
        source = _write_evaluation(root / name / "evaluation", seed, skill=skill, missing=missing)
        out = root / name / "analysis"
        metrics = evaluate_cadence(source, out, name, fractions=FRACTIONS, thresholds=THRESHOLDS, chunk_events=50,
                                   progress=False)
        dirs[name] = {"source": source, "out": out, "metrics": metrics}
    return dirs


def test_evaluate_cadence_writes_files_that_agree_with_the_pure_functions(evaluated):
    source, out = evaluated["dense"]["source"], evaluated["dense"]["out"]
    for name in analysis.CADENCE_OUTPUTS:
        assert (out / name).is_file(), name
    for name in ("roc.png", "confusion_matrix.png", "early_detection.png", "detection_times.png"):
        assert (out / name).read_bytes()[:8] == PNG
    prob = np.load(source / "probabilities.npy")
    mask = np.load(source / "mask.npy")
    times = np.load(source / "times.npy")
    events = pd.read_parquet(source / "events.parquet")

    written = pd.read_csv(out / "early_detection.csv")
    assert written["basis"].tolist() == ["time"] * 3 + ["observed"] * 3
    for basis in analysis.BASES:
        direct = early_detection(prob, events["label"], mask, FRACTIONS, basis, pspl_like=events["pspl_like"],
                                 times=times, t0=events["t0"], tE=events["tE"], evidence_time=events["evidence_time"])
        pd.testing.assert_frame_equal(written[written["basis"] == basis].reset_index(drop=True), direct,
                                      check_dtype=False)

    direct = detection_times(prob, events, times, THRESHOLDS, mask=mask)
    written = pd.read_csv(out / "detection_times.csv")
    assert written.columns.tolist() == direct.columns.tolist()
    np.testing.assert_array_equal(written["event_id"], direct["event_id"])
    np.testing.assert_array_equal(written["detected"], direct["detected"])
    np.testing.assert_allclose(written["detection_phase"], direct["detection_phase"].to_numpy(dtype=float))
    np.testing.assert_allclose(written["detection_step"], direct["detection_step"].to_numpy(dtype=float,
                                                                                             na_value=np.nan))
    pd.testing.assert_frame_equal(pd.read_csv(out / "detection_summary.csv"), detection_summary(direct),
                                  check_dtype=False)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(evaluated["dense"]["metrics"]))
    # The last step is observed: called binary there => an alarm by then; alarms that fall back count too.
    at_half = direct[direct["threshold"] == 0.5]
    assert np.all(at_half["detected"].to_numpy() >= (prob[:, -1].astype(float) >= 0.5))
    summary = detection_summary(direct).set_index("threshold")
    assert summary.loc[0.5, "false_alarm_fraction"] > metrics["final_step"]["false_alarm_rate"]
    assert summary.loc[0.5, "detected_fraction"] >= metrics["final_step"]["recall"]
    assert metrics["consecutive_epochs"] == 1 and metrics["monitoring_days"] == pytest.approx(500.0)
    final = binary_metrics(events["label"], prob[:, -1].astype(float))
    assert metrics["final_step"]["accuracy"] == pytest.approx(final["accuracy"])
    assert metrics["final_step"]["roc_auc"] == pytest.approx(final["roc_auc"])
    assert metrics["final_step"]["aucpr"] == pytest.approx(final["aucpr"])
    assert metrics["confusion_matrix"] == {key: final[key] for key in ("tp", "fp", "tn", "fn")}
    correct = final["tp"] + final["tn"]
    assert [metrics["final_step"]["accuracy_low"], metrics["final_step"]["accuracy_high"]] == \
        pytest.approx(list(_wilson(correct, len(events))))
    like = events["pspl_like"].to_numpy() & (events["label"].to_numpy() == 1)
    assert metrics["n_pspl_like"] == int(like.sum())
    assert metrics["pspl_like_fraction"] == pytest.approx(like.sum() / (events["label"] == 1).sum())
    keep = ~like
    without = binary_metrics(events["label"][keep], prob[keep, -1].astype(float))
    assert metrics["without_pspl_like"]["accuracy"] == pytest.approx(without["accuracy"])
    assert metrics["without_pspl_like"]["accuracy"] > metrics["final_step"]["accuracy"]
    assert metrics["mean_observed_fraction"] == pytest.approx(mask.mean())
    assert len(metrics["roc_curve"]["fpr"]) == len(metrics["roc_curve"]["tpr"]) >= 2

    # Early detection by the event's clock: the file is the pure function's table.
    written = pd.read_csv(out / "early_detection_phase.csv")
    direct = phase_detection(prob, events, times)
    pd.testing.assert_frame_equal(written, direct, check_dtype=False)
    assert written["clock"].tolist() == ["peak"] * 7 + ["brightening"] * 4
    assert (written["n_events"] + written["n_excluded"] == len(events)).all()
    # Deployment at 5 and 10 % binaries, from the final-step decisions at the decision threshold.
    assert [entry["binary_share"] for entry in metrics["deployment"]] == [0.05, 0.1]
    expected = deployment_metrics(events["label"].to_numpy(), prob[:, -1], 0.5, 0.05)
    assert metrics["deployment"][0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("probabilities.npy", lambda p: np.save(p, np.full((240, 60), 1.5, dtype=np.float32)), r"outside \[0, 1\]"),
        ("probabilities.npy", lambda p: np.save(p, np.zeros((240, 59), dtype=np.float32)), "mask has shape"),
        ("mask.npy", lambda p: np.save(p, np.zeros((240, 60), dtype=np.uint8)), "no observed epoch"),
        ("events.parquet", lambda p: pd.read_parquet(p).drop(columns="pspl_like").to_parquet(p), "pspl_like"),
        ("events.parquet", lambda p: pd.read_parquet(p).iloc[:10].to_parquet(p), "10 event rows for 240"),
        ("events.parquet", lambda p: pd.read_parquet(p).drop(columns="brightening_time").to_parquet(p),
         "lacks the column 'brightening_time'.*observe"),
        ("times.npy", lambda p: np.save(p, np.arange(10.0)), "times has shape"),
        ("times.npy", lambda p: p.unlink(), "missing"),
        ("probabilities.npy", lambda p: p.write_bytes(b"not numpy"), "cannot read"),
    ],
)
def test_evaluate_cadence_errors_name_the_file(evaluated, tmp_path, name, corrupt, message):
    source = tmp_path / "evaluation"
    shutil.copytree(evaluated["dense"]["source"], source)
    corrupt(source / name)
    with pytest.raises(InputDataError, match=message) as caught:
        evaluate_cadence(source, tmp_path / "out", "dense", fractions=FRACTIONS, thresholds=THRESHOLDS)
    # The shape mismatch is reported against the mask, which disagrees with the probabilities.
    expected = "mask.npy" if message == "mask has shape" else name
    assert caught.value.path == source / expected
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_compare_cadences_tables_json_and_figures(evaluated, tmp_path):
    result = compare_cadences({name: entry["out"] for name, entry in evaluated.items()}, tmp_path)
    for name in report.COMPARISON_OUTPUTS:
        assert (tmp_path / name).is_file(), name
    for name in ("early_detection_comparison.png", "roc_comparison.png", "accuracy_comparison.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG

    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["cadence"].tolist() == ["dense", "sparse"] == result["cadences"]
    on_disk = json.loads((tmp_path / "comparison.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    markdown = (tmp_path / "comparison.md").read_text()
    text = (tmp_path / "comparison.txt").read_text()
    for row, record in zip(summary.itertuples(), on_disk["summary"], strict=True):
        metrics = evaluated[row.cadence]["metrics"]
        assert row.accuracy == pytest.approx(metrics["final_step"]["accuracy"]) == record["accuracy"]
        assert row.accuracy_without_pspl_like == pytest.approx(metrics["without_pspl_like"]["accuracy"])
        assert row.pspl_like_fraction == pytest.approx(metrics["pspl_like_fraction"])
        cell = format_interval(row.accuracy, row.accuracy_low, row.accuracy_high)
        assert cell in markdown and cell in text
    # The weaker, sparser cadence really is worse here, and the report says which is best.
    assert summary.loc[0, "accuracy"] > summary.loc[1, "accuracy"]
    assert "Highest final-step accuracy: dense" in markdown
    # Beating chance: p-values per fraction, the ideal classifier's, and where it fails, which of the two it is.
    assert "Mann-Whitney" in markdown and "an ideal classifier ranking exactly those binaries" in markdown
    assert "does not beat chance" in markdown and "These test events resolve an AUC of" in markdown
    assert any("does not beat chance" in note for note in on_disk["notes"])
    assert "PSPL-like" in markdown and "Wilson" in markdown
    assert markdown.startswith("# ") and "|:--" in markdown
    assert text.startswith("Microlensing classification by cadence\n====") and "|" not in text
    # Long records: 2 cadences x 2 bases x 3 fractions, 2 cadences x 2 thresholds.
    assert len(on_disk["early_detection"]) == 12 and len(on_disk["detection"]) == 4
    # Early detection by the event's clock: 2 cadences x 11 (clock, k) rows, with the events behind each row.
    assert len(on_disk["early_detection_phase"]) == 22
    assert "Early detection by the event's own clock" in markdown and "binaries / PSPL (left out)" in markdown
    for record in on_disk["early_detection_phase"]:
        if record["clock"] == "peak" and record["k_tE"] == 1.0:
            row = pd.read_csv(evaluated[record["cadence"]]["out"] / "early_detection_phase.csv").iloc[5]
            assert f"{row['n_binary']} / {row['n_pspl']} ({row['n_excluded']})" in markdown
            assert record["roc_auc"] == pytest.approx(row["roc_auc"])
    # Precision, NPV and alarms per true binary at 5 and 10 % binaries: summary.csv, JSON and report.
    for _, row in summary.iterrows():
        entry = evaluated[row["cadence"]]["metrics"]["deployment"][0]
        assert row["precision_at_0.05"] == pytest.approx(entry["precision"])
        assert row["alarms_per_true_binary_at_0.1_high"] >= row["alarms_per_true_binary_at_0.1"]
        cell = format_interval(entry["precision"], entry["precision_low"], entry["precision_high"])
        assert cell in markdown and cell in text
    assert len(on_disk["deployment"]) == 4 and "At a realistic binary share" in markdown
    # False alarms per PSPL event and per year of monitoring, per cadence and threshold.
    for record in on_disk["detection"]:
        written = pd.read_csv(evaluated[record["cadence"]]["out"] / "detection_summary.csv").set_index("threshold")
        expected = written.loc[record["threshold"]]
        for key in ("n_pspl_alarms", "alarms_per_pspl_event", "alarms_per_year", "monitoring_days",
                    "consecutive_epochs"):
            assert record[key] == pytest.approx(expected[key]), key
        assert expected["n_pspl_alarms"] >= expected["n_false_alarms"]
        cell = format_interval(expected["alarms_per_year"], expected["alarms_per_year_low"],
                               expected["alarms_per_year_high"])
        assert cell in markdown and cell in text
    assert "false alarms per year" in markdown and "1 observed epoch in a row" in markdown
    assert "the grid's duration per event, gaps included, 500 days" in markdown
    early = pd.read_csv(evaluated["sparse"]["out"] / "early_detection.csv")
    record = next(r for r in on_disk["early_detection"]
                  if r["cadence"] == "sparse" and r["basis"] == "observed" and r["fraction"] == 0.5)
    expected = early[(early["basis"] == "observed") & (early["fraction"] == 0.5)].iloc[0]
    assert record["accuracy"] == pytest.approx(expected["accuracy"])


def test_compare_cadences_reports_missing_outputs(evaluated, tmp_path):
    with pytest.raises(InputDataError, match="metrics.json.*evaluate_cadence"):
        compare_cadences({"dense": evaluated["dense"]["out"], "lsst": tmp_path / "nothing"}, tmp_path / "out")
    with pytest.raises(ValueError, match="empty"):
        compare_cadences({}, tmp_path / "out")


def _clock_events(n_steps=100):
    """Events on a grid of 1-day steps: t0 mid-step, tE = 4 d, brightening 3 d before the peak."""
    t0 = np.array([20.5, 30.5, 40.5, 50.5, 60.5, 70.5])
    return pd.DataFrame({"label": [1, 0, 1, 0, 1, 0], "t0": t0, "tE": 4.0, "pspl_like": False,
                         "brightening_time": t0 - 3.0}), np.arange(float(n_steps))


def test_phase_scores_are_those_of_the_last_step_complete_by_t0_plus_k_tE():
    events, times = _clock_events()
    label = events["label"].to_numpy()
    n, n_steps = len(events), len(times)
    # Step i covers [i, i + 1): at t = t0 + 1 tE (= brightening + 1.75 tE) the last complete step is floor(t) - 1.
    at = events["t0"].to_numpy() + 4.0
    steps, inside = known_steps(times, at)
    np.testing.assert_array_equal(steps, np.floor(at).astype(int) - 1)
    assert inside.all()
    # Right up to that step the scores rank every binary first; from the next step on they say the opposite.
    right = np.where(label == 1, 0.9, 0.1)
    prob = np.repeat(right[:, None], n_steps, axis=1)
    after = np.arange(n_steps)[None, :] > steps[:, None]
    prob[after] = np.broadcast_to((1.0 - right)[:, None], (n, n_steps))[after]
    table = phase_detection(prob.astype(np.float32), events, times, event_phases=[1.0], after_brightening=[1.75])
    for row in table.itertuples():
        assert (row.clock, row.n_events, row.n_excluded) in {("peak", 6, 0), ("brightening", 6, 0)}
        assert row.roc_auc == 1.0 and row.accuracy == 1.0 and row.n_binary == row.n_pspl == 3
    # A score from one step later (what a step-start clock would read) would be the opposite.
    later = phase_detection(prob.astype(np.float32), events, times + 1.0, event_phases=[1.0],
                            after_brightening=[1.75])
    assert (later["roc_auc"] == 1.0).all()
    earlier = phase_detection(prob.astype(np.float32), events, times - 1.0, event_phases=[1.0],
                              after_brightening=[1.75])
    assert (earlier["roc_auc"] == 0.0).all() and (earlier["accuracy"] == 0.0).all()


def test_phase_rows_leave_out_and_count_events_off_the_grid_or_without_brightening():
    events, times = _clock_events()
    events.loc[0, "brightening_time"] = np.nan  # a binary that never brightened
    events.loc[5, "t0"] = 95.5  # a PSPL whose t0 + 2 tE falls after the grid's end (100 d)
    prob = np.full((len(events), len(times)), 0.5, dtype=np.float32)
    table = phase_detection(prob, events, times, event_phases=[-5.0, 0.0, 2.0], after_brightening=[0.0])
    rows = table.set_index(["clock", "k_tE"])
    # t0 - 5 tE = 0.5: no step is complete yet, for the first event only.
    assert rows.loc[("peak", -5.0), ["n_excluded", "n_excluded_binary", "n_outside_grid", "n_no_reference"]].tolist() \
        == [1, 1, 1, 0]
    assert rows.loc[("peak", 0.0), "n_excluded"] == 0
    assert rows.loc[("peak", 2.0), ["n_excluded", "n_excluded_pspl", "n_outside_grid"]].tolist() == [1, 1, 1]
    assert rows.loc[("brightening", 0.0), ["n_excluded", "n_excluded_binary", "n_no_reference"]].tolist() == [1, 1, 1]
    assert (table["n_binary"] + table["n_pspl"] + table["n_excluded"] == len(events)).all()
    assert rows.loc[("brightening", 0.0), "n_binary"] == 2 and rows.loc[("brightening", 0.0), "n_pspl"] == 3
    with pytest.raises(ValueError, match="brightening_time"):
        phase_detection(prob, events.drop(columns="brightening_time"), times)


def test_deployment_precision_is_the_closed_form_and_drops_at_a_realistic_binary_share():
    rng = np.random.default_rng(4)
    labels = np.repeat([1, 0], 200)
    scores = np.where(labels == 1, rng.uniform(0.3, 1.0, 400), rng.uniform(0.0, 0.7, 400))
    tpr = np.mean(scores[labels == 1] >= 0.5)
    fpr = np.mean(scores[labels == 0] >= 0.5)
    at = {share: deployment_metrics(labels, scores, 0.5, share) for share in (0.05, 0.1, 0.5)}
    for share, metrics in at.items():
        assert metrics["tpr"] == pytest.approx(tpr) and metrics["fpr"] == pytest.approx(fpr)
        assert metrics["precision"] == pytest.approx(tpr * share / (tpr * share + fpr * (1 - share)))
        assert metrics["alarms_per_true_binary"] == pytest.approx(1 / metrics["precision"])
        assert metrics["precision_low"] < metrics["precision"] < metrics["precision_high"]
    # Balanced test set: at 50 % the precision is the test set's own.
    assert at[0.5]["precision"] == pytest.approx(np.mean(labels[scores >= 0.5]))
    assert at[0.05]["precision"] < at[0.1]["precision"] < at[0.5]["precision"]
    assert at[0.05]["precision_high"] < at[0.5]["precision_low"]
    assert at[0.05]["npv"] > at[0.5]["npv"]
    assert deployment_rates(tpr, fpr, 0.05)["precision"] == pytest.approx(at[0.05]["precision"])
