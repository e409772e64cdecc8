"""Nothing lost: bad tables stop the workflow before any job, a lost intermediate is rebuilt, and jobs end with
their Snakemake (and the README's recovery recipe works after a killed one)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from astrodag.config import lock_advice

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "config_tiny.yaml"
pytestmark = pytest.mark.workflow

# The environment of a job: the interpreter running the tests first on PATH, the source tree importable.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "PYTHONPATH": str(REPO / "src")}


def snakemake(workdir, *args, snakefile=REPO / "Snakefile", configfile=TINY, timeout=300):
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "--cores", "1"]
    if configfile:
        command += ["--configfile", str(configfile)]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


HEADERS = {
    "flares.experiments": "flare_class\twindow_hours\tseed\n",
    "microlensing.cadences": (REPO / "tests" / "data" / "cadences_tiny.tsv").read_text().splitlines()[0] + "\n",
    "supernova.catalog": "sn_name,ra,dec,discovery_mjd,type,redshift,host\n",
    "supernova.realbogus_experiments": "experiment\tarchitecture\tseed\ttrain_missions\ttest_missions\n",
}
BAD_TABLES = {
    **{f"{key} header only": (key, text, "has no rows") for key, text in HEADERS.items()},
    "flares.experiments empty file": ("flares.experiments", "", "file is empty"),
    "flares.experiments duplicate": ("flares.experiments", HEADERS["flares.experiments"] + "M\t24\t0\n" * 2,
                                     "duplicated flare_class, window_hours, seed: row 1 (line 2); row 2 (line 3)"),
    # Two names with one file-safe form (the jobs' names): the archive jobs would overwrite each other's files.
    "supernova.catalog same safe name": ("supernova.catalog", HEADERS["supernova.catalog"]
                                         + "SN 2011fe,210.77,54.27,55797.17,Ia,,\n"
                                         + "SN  2011fe,210.77,54.27,55797.17,Ia,,\n",
                                         "safe_name is not unique"),
    "supernova.catalog implausible date": ("supernova.catalog", HEADERS["supernova.catalog"]
                                           + "SN 2011fe,210.77,54.27,57.17,Ia,,\n", "is not a plausible MJD"),
}


@pytest.mark.parametrize("key, text, problem", BAD_TABLES.values(), ids=BAD_TABLES)
def test_bad_table_fails_at_start_in_one_line_naming_the_file(key, text, problem, tmp_path):
    section, name = key.split(".")
    table = tmp_path / ("table.csv" if name == "catalog" else "table.tsv")
    table.write_text(text)
    kept = tmp_path / "results" / "flares" / "analysis" / "report.md"
    kept.parent.mkdir(parents=True)
    kept.write_text("an earlier result")
    result = snakemake(tmp_path, "-n", "--config", f"{section}={{'{name}': '{table}'}}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    (line,) = [line for line in output.splitlines() if line.startswith(f"{table}: ")]
    assert problem in line, output
    assert "Traceback" not in output and len(output.splitlines()) < 15, output
    assert kept.read_text() == "an earlier result"


def test_empty_flare_grid_stops_a_real_run_before_it_deletes_the_analysis(tmp_path):
    """The issue's case: the analysis of an earlier run survives a run with an empty grid."""
    grid = tmp_path / "grid.tsv"
    grid.write_text(HEADERS["flares.experiments"])
    kept = tmp_path / "results" / "flares" / "analysis" / "report.md"
    kept.parent.mkdir(parents=True)
    kept.write_text("an earlier result")
    result = snakemake(tmp_path, "--config", f"flares={{'experiments': '{grid}'}}", "--",
                       "results/flares/analysis/report.md")
    assert result.returncode != 0 and f"{grid}: the flare experiment grid has no rows" in result.stderr
    assert kept.read_text() == "an earlier result"


def test_local_archive_that_is_not_a_directory_fails_at_start(tmp_path):
    missing = tmp_path / "no-archive"
    result = snakemake(tmp_path, "-n", "--config", f"supernova={{'source': 'local', 'archive_dir': '{missing}'}}")
    assert result.returncode != 0
    assert f"config key 'supernova.archive_dir': {missing} is not a directory" in result.stdout + result.stderr


ONE_EXPERIMENT = "results/flares/experiments/M_24h/seed0/everest"


def _plan(result):
    """Job counts per rule of a dry run."""
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_one_experiment_recipe_rebuilds_lost_weights(tmp_path):
    """After a killed training job the README's one-experiment recipe retrains when model.pt is gone.

    (Snakemake rebuilds a missing file only where a job that runs, or a target, asks for it: the results after
    it being there, the recipe names the weights too.)
    """
    targets = [f"{ONE_EXPERIMENT}/model.pt", f"{ONE_EXPERIMENT}/results.json"]
    assert f"snakemake --cores 2 {' '.join(targets)}" in (REPO / "README.md").read_text()
    stages = [
        ["results/flares/raw/sharp_keywords.csv", "results/flares/raw/flare_events.csv",
         "results/flares/raw/simulation_summary.json"],
        ["results/flares/dataset/features.npy", "results/flares/dataset/windows.parquet",
         "results/flares/dataset/summary.json"],
        [f"{ONE_EXPERIMENT}/{name}" for name in ("predictions.parquet", "model.json", "model.pt", "history.csv")],
        [f"{ONE_EXPERIMENT}/{name}" for name in ("thresholds.csv", "metrics.csv", "results.json")],
    ]
    now = time.time()
    for age, files in zip((400, 300, 200, 100), stages):
        for name in files:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
            os.utime(path, (now - age, now - age))
    # The README's command, as a dry run of the shipped config.
    assert _plan(snakemake(tmp_path, "-n", *targets, configfile=None)) == {}
    (tmp_path / ONE_EXPERIMENT / "model.pt").unlink()
    plan = _plan(snakemake(tmp_path, "-n", *targets, configfile=None))
    assert plan["train_flare_model"] == 1 and plan["sweep_flare_thresholds"] == 1, plan


@pytest.mark.parametrize("target, weights, rule", [
    ("flares", "everest/model.pt", "train_flare_model"),
    ("microlensing", "model/model.pt", "train_microlensing_model"),
])
def test_track_target_rebuilds_lost_weights(target, weights, rule, tmp_path):
    """`snakemake TRACK` (and the default target) retrains a model whose model.pt is gone."""
    now = time.time()  # newer than the tables in the repository that the rules read
    summary = snakemake(tmp_path, "-n", "--summary", target)
    assert summary.returncode == 0, summary.stderr[-3000:]
    outputs = [line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if "\t" in line]
    for name in outputs:  # all as old as each other: up to date
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        os.utime(path, (now, now))
    assert _plan(snakemake(tmp_path, "-n", target)) == {}
    lost = next(name for name in outputs if name.endswith(weights))
    (tmp_path / lost).unlink()
    plan = _plan(snakemake(tmp_path, "-n", target))
    assert plan[rule] == 1, plan


def test_supernova_target_asks_for_every_real_bogus_model(tmp_path):
    """`snakemake supernova` names each experiment's weights, so a lost model.pt is retrained (as above)."""
    summary = snakemake(tmp_path, "-n", "--summary", "supernova")
    assert summary.returncode == 0, summary.stderr[-3000:]
    outputs = {line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if "\t" in line}
    grid = pd.read_csv(REPO / "tests" / "data" / "realbogus_experiments_tiny.tsv", sep="\t", comment="#")
    for experiment in grid["experiment"]:
        assert f"results/supernova/realbogus/{experiment}/model/model.pt" in outputs


def _children(pid, name):
    """Ids of the processes whose parent is ``pid`` and with ``name`` as an argument (``python -m NAME ...``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if parent == pid and name.encode() in arguments:
            found.append(int(entry.name))
    return found


def _alive(pid):
    """Whether ``pid`` runs (a zombie left unreaped by the reaper of a container counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _handles_sigterm(pid):
    """Whether ``pid`` has installed its SIGTERM handler (set up by then: astrodag.cli_support.end_with_parent)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _start_blocked_job(parent_command, tmp_path):
    """Start ``parent_command``, whose job blocks (opening a FIFO as its log); the parent and the job's id."""
    parent = subprocess.Popen(parent_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                              cwd=tmp_path)
    job = []
    assert _wait(lambda: job.extend(_children(parent.pid, "astrodag")) or job, 60), "the job did not start"
    _wait(lambda: _handles_sigterm(job[0]), 10)
    return parent, job[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_cli_job_ends_when_its_parent_shell_is_killed(tmp_path):
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    job_command = (f"{sys.executable} -m astrodag flares simulate --keywords k.csv --events e.csv --regions 2"
                   f" --log {fifo}; true")  # `; true`: bash waits for the job instead of becoming it
    shell, job = _start_blocked_job(["bash", "-c", job_command], tmp_path)
    try:
        os.kill(shell.pid, signal.SIGKILL)
        shell.wait()
        assert _wait(lambda: not _alive(job), 5), "the job outlived its parent"
    finally:
        if _alive(job):
            os.kill(job, signal.SIGKILL)


TINY_SNAKEFILE = """
rule simulate:
    output:
        "raw/keywords.csv",
        "raw/events.csv",
    shell:
        "python -m astrodag flares simulate --keywords {output[0]} --events {output[1]} --regions 2"
        " --log {config[log]}"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killed_snakemake_takes_its_job_along_and_the_readme_recovery_works(tmp_path):
    """Snakemake is the job's parent (bash runs the rule's command in its own place); killing it ends the job.

    Meanwhile the start-up check tells the running instance; after the kill, stale locks, and `snakemake --unlock`
    then `--rerun-incomplete` (the README's recipe) finishes the work.
    """
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(TINY_SNAKEFILE)
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(tmp_path), "--cores", "1"]
    first, job = _start_blocked_job([*command, "--config", f"log={fifo}"], tmp_path)
    try:
        assert f"another Snakemake instance (process {first.pid}) is running" in lock_advice(tmp_path)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert _wait(lambda: not _alive(job), 5), "the job outlived Snakemake"
    finally:
        if _alive(job):
            os.kill(job, signal.SIGKILL)
        if first.poll() is None:
            first.kill()
    assert "run `snakemake --unlock`, then rerun with `--rerun-incomplete`" in lock_advice(tmp_path)
    rerun = snakemake(tmp_path, "--config", "log=rerun.log", snakefile=snakefile, configfile=None)
    assert rerun.returncode != 0 and "--unlock" in rerun.stderr
    # The README's recovery recipe.
    assert snakemake(tmp_path, "--unlock", snakefile=snakefile, configfile=None).returncode == 0
    recovered = snakemake(tmp_path, "--rerun-incomplete", "--config", "log=rerun.log", snakefile=snakefile,
                          configfile=None)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert (tmp_path / "raw" / "keywords.csv").is_file() and (tmp_path / "raw" / "events.csv").is_file()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="other processes are found in /proc")
def test_workflow_start_tells_another_running_instance_from_stale_locks(tmp_path):
    """Before Snakemake's IncompleteFilesException or LockException, one line says which of the two it is."""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(str(tmp_path / "results" / "x"))
    other = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 60"], cwd=tmp_path)
    try:
        assert _wait(lambda: Path(f"/proc/{other.pid}/cmdline").read_bytes().startswith(b"snakemake\0"), 10)
        running = snakemake(tmp_path, "-n")
        assert f"another Snakemake instance (process {other.pid}) is running in {tmp_path.resolve()}" in (
            running.stdout + running.stderr)
    finally:
        other.kill()
        other.wait()
    stale = snakemake(tmp_path, "-n")
    assert "no longer running (killed?): run `snakemake --unlock`, then rerun with `--rerun-incomplete`" in (
        stale.stdout + stale.stderr)
