"""The Snakemake workflow end to end in a temporary directory (tiny config)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "config_tiny.yaml"
pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, check=True):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(TINY), "--cores", "2", *args]
    # The rules call `python -m astrodag`: the interpreter running the tests must come first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("flares")
    snakemake(workdir)
    return workdir


def planned_jobs(workdir, *args):
    """Job counts per rule of a dry run of the shipped Snakefile."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_of_the_default_config_plans_the_45_experiment_grid_and_5_cadences(tmp_path):
    counts = planned_jobs(tmp_path)
    for rule in ("train_microlensing_model", "predict_microlensing_test", "evaluate_microlensing_cadence"):
        assert counts[rule] == 5, rule
    assert counts["simulate_events"] == 3 and counts["observe_cadence"] == 15
    assert counts["train_flare_model"] == 45
    assert counts["train_flare_baseline"] == 45
    assert counts["sweep_flare_thresholds"] == 90
    assert counts["analyze_flare_study"] == 1
    # Supernovae: one query per catalogue SN; the per-pair jobs appear once the pairing checkpoint ran.
    catalog = pd.read_csv(REPO / "resources" / "supernovae.csv", comment="#")
    assert counts["query_archive"] == len(catalog) and counts["pair_observations"] == 1
    assert counts["simulate_survey"] == 1 and counts["summarize_imaging"] == 1
    grid = pd.read_csv(REPO / "config" / "realbogus_experiments.tsv", sep="\t")
    assert counts["train_realbogus"] == counts["evaluate_realbogus"] == len(grid) >= 4
    assert set(grid["architecture"]) == {"braai", "resnet18"}
    assert (grid["test_missions"] != "all").any(), "the grid has a cross-mission experiment"
    for rule in ("score_candidates", "review_queue", "export_realbogus_onnx", "compare_realbogus"):
        assert counts[rule] == 1, rule


def test_workflow_produces_the_study_outputs(finished_run):
    analysis = finished_run / "results" / "flares" / "analysis"
    for name in ("report.md", "summary_by_target.csv", "paired_tests.csv", "tss_heatmap_everest.png", "roc.png"):
        assert (analysis / name).stat().st_size > 0, name
    results = pd.read_csv(analysis / "all_results.csv")
    assert len(results) == 8  # 2 targets x 2 seeds x 2 models
    assert set(results["model"]) == {"everest", "baseline"}
    experiment = finished_run / "results" / "flares" / "experiments" / "M_24h" / "seed0"
    everest = json.loads((experiment / "everest" / "results.json").read_text())
    assert everest["threshold_selected_on"] == "validation"
    assert 0.1 <= everest["threshold"] <= 0.9
    sidecar = json.loads((experiment / "everest" / "model.json").read_text())
    assert sidecar["seed"] == 0 and sidecar["data"]["index_sha256"]
    assert (finished_run / "logs" / "flares" / "train" / "M_24h_seed0_everest.log").stat().st_size > 0
    assert (finished_run / "results" / "benchmarks" / "flares" / "train" / "M_24h_seed0_everest.tsv").exists()
    report = (analysis / "report.md").read_text()
    assert "TSS" in report and "bootstrap" in report


def test_full_config_plans_1m_light_curves_in_shards(tmp_path):
    counts = planned_jobs(tmp_path, "--configfile", str(REPO / "config" / "full.yaml"))
    full = yaml.safe_load((REPO / "config" / "full.yaml").read_text())["microlensing"]["simulation"]
    assert full["shards"] * full["events_per_shard"] == 1_000_000
    assert counts["simulate_events"] == full["shards"] == 20
    assert counts["observe_cadence"] == 5 * 20 and counts["train_microlensing_model"] == 5


def test_microlensing_track_outputs(finished_run):
    results = finished_run / "results" / "microlensing"
    comparison = results / "comparison"
    for name in ("comparison.md", "comparison.txt", "comparison.json", "summary.csv",
                 "early_detection_comparison.png", "roc_comparison.png", "accuracy_comparison.png"):
        assert (comparison / name).stat().st_size > 0, name
    summary = pd.read_csv(comparison / "summary.csv")
    assert list(summary["cadence"]) == ["normal", "roman"]
    events = pd.concat(pd.read_parquet(p) for p in sorted(results.glob("events/shard*/events.parquet")))
    assert len(events) == 2 * 96 and events["event_id"].is_unique
    for cadence in ("normal", "roman"):
        metrics = json.loads((results / "cadences" / cadence / "analysis" / "metrics.json").read_text())
        test_events = pd.read_parquet(results / "cadences" / cadence / "evaluation" / "events.parquet")
        assert metrics["n_events"] == len(test_events) and set(test_events["split"]) == {"test"}
        sidecar = json.loads((results / "cadences" / cadence / "model" / "model.json").read_text())
        assert sidecar["time_grid"] == {"epochs": 120, "duration_days": 200}
        early = pd.read_csv(results / "cadences" / cadence / "analysis" / "early_detection.csv")
        assert set(early["basis"]) == {"time", "observed"} and len(early) == 2 * 4
        phase = pd.read_csv(results / "cadences" / cadence / "analysis" / "early_detection_phase.csv")
        behind = phase["n_binary"] + phase["n_pspl"] + phase["n_excluded"]
        assert len(phase) == 7 + 4 and behind.eq(len(test_events)).all()
        assert metrics["deployment"]
        observed = pd.read_parquet(results / "cadences" / cadence / "observations" / "shard000" / "events.parquet")
        binaries = observed[observed["label"] == 1]
        assert binaries["delta_chi2"].notna().all() and observed.loc[observed["label"] == 0, "delta_chi2"].isna().all()
        assert (binaries["pspl_like"] == (binaries["delta_chi2"] < 160)).all()
        assert (finished_run / "logs" / "microlensing" / "train" / f"{cadence}.log").stat().st_size > 0
        assert sidecar["cadence"]["name"] == cadence and sidecar["observation"] and sidecar["simulation"]
    # Observations are cadence-specific: the same events, different observed steps.
    normal = np.load(results / "cadences" / "normal" / "observations" / "shard000" / "counts.npy")
    roman = np.load(results / "cadences" / "roman" / "observations" / "shard000" / "counts.npy")
    assert normal.shape == roman.shape == (96, 120) and not np.array_equal(normal > 0, roman > 0)


def test_supernova_track_outputs(finished_run):
    results = finished_run / "results" / "supernova"
    pairs = pd.read_csv(results / "archive" / "pairs.csv")
    decisions = pd.read_csv(results / "archive" / "decisions.csv")
    assert len(pairs) >= 3 and pairs["pair_id"].is_unique
    assert (pairs["overlap_fraction"] >= 0.85).all()
    rejected = set(decisions.loc[~decisions["accepted"], "reason"])
    assert {"different_mission", "different_filter"} <= rejected
    for pair_id in pairs["pair_id"]:
        pair_dir = results / "pairs" / pair_id
        for name in ("science.fits", "reference.fits", "difference.fits", "significance.fits", "mask.fits",
                     "candidates.csv", "triplets.npz"):
            assert (pair_dir / name).stat().st_size > 0, (pair_id, name)
        assert (finished_run / "logs" / "supernova" / "difference_pair" / f"{pair_id}.log").exists()
    report = json.loads((results / "imaging_report.json").read_text())
    assert report["pairs_accepted"] == len(pairs)
    assert report["sn_recovery"]["pairs_with_sn"] >= 1 and report["sn_recovery"]["recovered"] >= 1
    assert "Supernova recovery" in (results / "imaging_report.md").read_text()
    index = pd.read_parquet(results / "triplets" / "index.parquet")
    assert set(index["label"]) == {0, 1}
    # No supernova in two splits.
    assert index.groupby("sn_name")["split"].nunique().max() == 1
    for split, rows in index.groupby("split"):
        images = np.load(results / "triplets" / f"{split}.npy", mmap_mode="r")
        assert images.shape[1:] == (3, 63, 63) and len(images) == len(rows)


def test_supernova_realbogus_outputs(finished_run):
    results = finished_run / "results" / "supernova"
    for experiment in ("braai_seed0", "resnet18_seed0"):
        metrics = json.loads((results / "realbogus" / experiment / "evaluation" / "metrics.json").read_text())
        assert 0 <= metrics["aucpr"] <= 1 and metrics["at_threshold"]["threshold"] is not None
        sidecar = json.loads((results / "realbogus" / experiment / "model" / "model.json").read_text())
        assert sidecar["architecture"] == experiment.split("_")[0]
        predictions = pd.read_parquet(results / "realbogus" / experiment / "evaluation" / "predictions.parquet")
        assert set(predictions["split"]) == {"test"}
    report = json.loads((results / "realbogus" / "report.json").read_text())
    assert report["deployed"] == "braai_seed0" and len(report["experiments"]) == 2
    assert report["sn_recovery"]["all"]["pairs_with_sn"] >= 1
    scored = pd.read_parquet(results / "scored" / "candidates.parquet")
    # Candidates whose cut-out is mostly masked (image edges) are not scored: NaN, never called real.
    assert scored["score"].notna().any() and scored["score"].dropna().between(0, 1).all()
    assert not scored.loc[scored["score"].isna(), "is_real"].any()
    queue = pd.read_csv(results / "review" / "review_queue.csv", dtype={"pair_id": str})
    assert 0 < len(queue) <= 10 and "label" in queue.columns
    # The queue holds newly scored candidates (not test-split triplets), with their scores and SN names.
    merged = queue.merge(scored, on=["pair_id", "candidate_id"], suffixes=("", "_scored"), validate="one_to_one")
    assert len(merged) == len(queue) and np.allclose(merged["score"], merged["score_scored"])
    assert queue["sn_name"].notna().all() and queue["score"].notna().all()
    with np.load(results / "review" / "review_triplets.npz") as npz:
        assert npz["cutouts"].shape == (len(queue), 3, 63, 63)
    assert (results / "realbogus" / "braai_seed0" / "model" / "model.onnx").stat().st_size > 0


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report(finished_run):
    snakemake(finished_run, "--report", "report.html")
    html = (finished_run / "report.html").read_text(errors="replace")
    assert "tss_heatmap_everest.png" in html
    assert "early_detection_comparison.png" in html
    assert "imaging_report.md" in html


def test_lint_passes(tmp_path):
    result = snakemake(tmp_path, "--lint", check=False)
    assert result.returncode == 0, result.stdout[-4000:]


def test_config_typo_fails_at_start_naming_the_key_in_a_few_lines(tmp_path):
    result = snakemake(tmp_path, "-n", "--config", 'flares={"synthtic": {"regions": 10}}', check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config key 'flares.synthtic': unknown key; did you mean 'synthetic'?" in output
    # The message and the key, not the schema.
    assert "On schema" not in output and len(output.splitlines()) < 15, output


def readme_snakemake_commands():
    """Every `snakemake ...` line of the README's bash blocks, as written (comments dropped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in text.split("```bash")[1:]:
        for line in block.split("```")[0].splitlines():
            if line.startswith("snakemake ") and "--report" not in line:
                # `snakemake --unlock && snakemake ...`: the command after the unlock (the recovery recipe itself
                # is run in tests/integration/test_recovery.py).
                commands.append(shlex.split(line.split("&&")[-1], comments=True))
    return commands


@pytest.mark.parametrize("command", readme_snakemake_commands(), ids=" ".join)
def test_readme_snakemake_commands_work_as_written(command, tmp_path):
    """Each of the README's Snakemake commands plans its jobs (a dry run from the repository root)."""
    arguments = [sys.executable, "-m", "snakemake", *command[1:], "-n", "-d", str(tmp_path)]
    result = subprocess.run(arguments, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "This was a dry-run" in result.stdout


def test_readme_nested_config_override_reaches_the_rules(tmp_path):
    """`--config 'flares={"synthetic": {"regions": 1000}}'` sets an integer, and keeps the other keys."""
    result = snakemake(tmp_path, "-n", "-p", "--config", 'flares={"synthetic": {"regions": 1000}}',
                       "--", "simulate_flare_data", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--regions 1000 " in result.stdout and "--seed 2011 " in result.stdout


def test_full_config_writes_only_into_its_own_results_and_logs(tmp_path):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
               "--configfile", str(REPO / "config" / "full.yaml"), "--summary"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    outputs = [row[0] for row in rows if row[0] != "output_file"]
    assert len(outputs) > 100 and all(path.startswith(("results-full/", "logs-full/")) for path in outputs), outputs[:5]


def test_bad_experiment_grid_is_rejected(tmp_path):
    grid = tmp_path / "grid.tsv"
    grid.write_text("flare_class\twindow_hours\tseed\nX\t24\t0\n")
    result = snakemake(tmp_path, "-n", "--config", f"flares={{'experiments': '{grid}'}}", check=False)
    assert result.returncode != 0
    assert "'X' is not one of" in result.stdout + result.stderr


def test_bad_supernova_catalog_is_rejected(tmp_path):
    catalog = tmp_path / "sne.csv"
    catalog.write_text("sn_name,ra,dec,discovery_mjd\nSN 2099zz,400.0,10.0,60000\n")
    result = snakemake(tmp_path, "-n", "--config", f"supernova={{'catalog': '{catalog}'}}", check=False)
    assert result.returncode != 0
    assert "400.0" in result.stdout + result.stderr


def test_bad_cadence_table_is_rejected(tmp_path):
    table = tmp_path / "cadences.tsv"
    table.write_text("cadence\tperiod_days\tseason_days\tsites\tnight_hours\tnight_probability\tvisit_interval_minutes"
                     "\tvisits_per_night\tdepth_mag\terror_floor_mag\tdescription\n"
                     "weird\t365.25\t240\t1\t8\t1.5\t60\t0\t21\t0.005\tmore than certain\n")
    result = snakemake(tmp_path, "-n", "--config", f"microlensing={{'cadences': '{table}'}}", check=False)
    assert result.returncode != 0
    assert "1.5" in result.stdout + result.stderr
