"""profiles/pbs (cluster-generic executor + pbs_submit.py/pbs_status.py) without a PBS server.

No PBS server can be installed here, so a fake ``qsub`` (ASTRODAG_QSUB) records its
argv and the jobscript's properties, runs the jobscript (like a batch system would,
stdout/stderr to the -o/-e paths) and prints a PBS-style job id; a fake ``qstat``
(ASTRODAG_QSTAT) reports the job as finished with the jobscript's exit status.
Snakemake runs with ``--profile profiles/pbs`` on a toy Snakefile and on the real
workflow (tiny config), so the jobscripts are real ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import (
    PROFILES,
    SNAKEFILE,
    TINY_CONFIG,
    TINY_TARGET,
    run_env,
    snakemake_exe,
    workflow_available,
)

PBS = PROFILES / "pbs"
SUBMIT = PBS / "pbs_submit.py"
STATUS = PBS / "pbs_status.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pbs_submit = _load(SUBMIT, "astrodag_test_pbs_submit")
pbs_status = _load(STATUS, "astrodag_test_pbs_status")

FAKE_QSUB = r'''#!/usr/bin/env python3
"""Fake qsub: record argv + job properties, run the jobscript, print a job id."""
import fcntl, json, os, re, subprocess, sys
state = os.environ["FAKE_PBS_DIR"]
argv = sys.argv[1:]
jobscript = argv[-1]
with open(os.path.join(state, "counter"), "a+") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.seek(0)
    n = len(fh.read().split()) + 1
    fh.write(f"{n}\n")
jobid = f"{n}.fakepbs"
props = None
with open(jobscript) as fh:
    for line in fh:
        m = re.match(r"# properties = (.*)", line)
        if m:
            props = json.loads(m.group(1))
            break
opts = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i] in ("-o", "-e")}
with open(opts["-o"], "w") as out, open(opts["-e"], "w") as err:
    env = dict(os.environ, PBS_JOBID=jobid)
    code = subprocess.run(["/bin/sh", jobscript], stdout=out, stderr=err, env=env).returncode
with open(os.path.join(state, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps({"argv": argv, "jobid": jobid, "properties": props, "exit": code}) + "\n")
with open(os.path.join(state, jobid), "w") as fh:
    fh.write(str(code))
print(jobid)
'''

FAKE_QSTAT = r'''#!/usr/bin/env python3
"""Fake qstat -f [-x] JOBID: PBS Pro style full output of a finished job."""
import os, sys
state = os.environ["FAKE_PBS_DIR"]
jobid = sys.argv[-1]
with open(os.path.join(state, "qstat.log"), "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
path = os.path.join(state, jobid)
if not os.path.exists(path):
    print(f"qstat: Unknown Job Id {jobid}", file=sys.stderr)
    sys.exit(153)
code = open(path).read().strip()
print(f"Job Id: {jobid}\n    Job_Name = fake\n    job_state = F\n    Exit_status = {code}\n")
'''


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_pbs(tmp_path):
    state = tmp_path / "fakepbs"
    state.mkdir()
    env = run_env()
    for var in list(env):
        if var.startswith("ASTRODAG_PBS_"):
            del env[var]
    env.update(
        FAKE_PBS_DIR=str(state),
        ASTRODAG_QSUB=str(_write_exe(tmp_path / "qsub", FAKE_QSUB)),
        ASTRODAG_QSTAT=str(_write_exe(tmp_path / "qstat", FAKE_QSTAT)),
    )

    def calls():
        lines = (state / "calls.jsonl").read_text().splitlines() if (state / "calls.jsonl").exists() else []
        return [json.loads(line) for line in lines]

    return env, state, calls


def run_pbs_profile(env, workdir: Path, args: list[str], targets: list[str], timeout=600):
    cmd = [
        "timeout", "-k", "10", str(timeout),
        snakemake_exe(), "--profile", str(PBS), "-d", str(workdir),
        # the fake jobs finish during qsub: no need to wait 10 s between status rounds
        "--seconds-between-status-checks", "1",
        *args, *targets,
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 30)
    return res.returncode, res.stdout + res.stderr


def resource_list(argv: list[str]) -> dict[str, str]:
    """The single ``-l`` resource list: {"select": "1", "ncpus": .., "walltime": ..}."""
    lists = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-l"]
    assert len(lists) == 1, f"expected one -l: {argv}"
    out = {}
    for item in lists[0].split(","):
        if item.startswith("select="):
            chunks, *rest = item.split(":")
            out["select"] = chunks.split("=", 1)[1]
            out.update(kv.split("=", 1) for kv in rest)
        else:
            key, value = item.split("=", 1)
            out[key] = value
    return out


def select_of(argv: list[str]) -> dict[str, str]:
    res = resource_list(argv)
    assert res.pop("select") == "1", argv
    return {k: v for k, v in res.items() if k in ("ncpus", "mem", "ngpus")}


def opt(argv: list[str], flag: str) -> str | None:
    vals = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return vals[-1] if vals else None


def walltime_of(argv):
    return resource_list(argv).get("walltime")


def hhmmss(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def check_call_matches_properties(call: dict, workdir: Path):
    """Every qsub option must follow from the jobscript's own properties."""
    argv, props = call["argv"], call["properties"]
    res = props["resources"]
    rule = props["rule"]
    assert opt(argv, "-N") == rule
    assert "-V" in argv
    sel = select_of(argv)
    assert sel["ncpus"] == str(props["threads"]), (argv, props)
    if res.get("mem_mb"):
        assert sel["mem"] == f"{res['mem_mb']}mb"
    gpus = int(res.get("gpu") or 0)
    if gpus:
        assert sel["ngpus"] == str(gpus)
    else:
        assert "ngpus" not in sel
    assert walltime_of(argv) == hhmmss(int(res["runtime"]))
    logdir = workdir.resolve() / "logs" / "pbs" / rule
    for flag, suffix in (("-o", ".out"), ("-e", ".err")):
        path = Path(opt(argv, flag))
        assert path.parent == logdir and path.name.endswith(suffix), argv
    assert argv[-1].endswith(".sh") and Path(argv[-1]).name.startswith("snakejob.")


# --- pure functions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runtime, expected",
    [
        (10, "00:10:00"),
        (90, "01:30:00"),
        (1500, "25:00:00"),
        ("45", "00:45:00"),
        ("2h", "02:00:00"),
        ("1h30m", "01:30:00"),
        (0.5, "00:00:30"),
        ("12:00:00", "12:00:00"),
    ],
)
def test_walltime_from_runtime_minutes(runtime, expected):
    assert pbs_submit.walltime(runtime) == expected


def test_qsub_command_from_properties(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"ASTRODAG_QSUB": "/x/qsub", "ASTRODAG_PBS_GPU_QUEUE": "gpuq", "ASTRODAG_PBS_ACCOUNT": "acc"}
    gpu = {"rule": "train_flare_model", "threads": 4,
           "resources": {"mem_mb": 2000, "runtime": 30, "gpu": 1}}  # fmt: skip
    cmd = pbs_submit.build_qsub_command(str(tmp_path / "snakejob.train.7.sh"), gpu, env=env)
    assert cmd[:4] == ["/x/qsub", "-N", "train_flare_model", "-V"]
    assert cmd[4:6] == ["-l", "select=1:ncpus=4:mem=2000mb:ngpus=1,walltime=00:30:00"]
    assert opt(cmd, "-q") == "gpuq" and opt(cmd, "-A") == "acc"
    assert opt(cmd, "-o") == str(tmp_path / "logs/pbs/train_flare_model/snakejob.train.7.out")
    assert (tmp_path / "logs/pbs/train_flare_model").is_dir()
    cpu = {"rule": "prepare_flare_dataset", "threads": 1,
           "resources": {"mem_mb": 4000, "runtime": 30, "pbs_queue": "short", "pbs_extra": "-m abe"}}  # fmt: skip
    cmd = pbs_submit.build_qsub_command("snakejob.prep.1.sh", cpu, env={})
    assert cmd[0] == "qsub" and opt(cmd, "-l") == "select=1:ncpus=1:mem=4000mb,walltime=00:30:00"
    assert opt(cmd, "-q") == "short" and opt(cmd, "-A") is None and opt(cmd, "-m") == "abe"


@pytest.mark.parametrize(
    "qstat_output, expected",
    [
        ("Job Id: 1.srv\n    job_state = R\n", "running"),
        ("Job Id: 1.srv\n    job_state = Q\n", "running"),
        ("Job Id: 1.srv\n    job_state = H\n", "running"),
        ("Job Id: 1.srv\n    job_state = E\n    Exit_status = 0\n", "running"),
        ("Job Id: 1.srv\n    job_state = F\n    Exit_status = 0\n", "success"),
        ("Job Id: 1.srv\n    job_state = F\n    Exit_status = 1\n", "failed"),
        ("Job Id: 1.srv\n    job_state = F\n    Exit_status = -11\n", "failed"),
        ("Job Id: 1.srv\n    job_state = F\n", "failed"),  # deleted before it ran
        ("Job Id: 1.srv\n    job_state = C\n    exit_status = 0\n", "success"),  # Torque
        ("<Data><Job><job_state>C</job_state><exit_status>0</exit_status></Job></Data>", "success"),
        ("<Data><Job><job_state>C</job_state><exit_status>271</exit_status></Job></Data>", "failed"),
        ("<Data><Job><job_state>R</job_state></Job></Data>", "running"),
    ],
)
def test_status_from_qstat_output(qstat_output, expected):
    assert pbs_status.status_from_qstat(qstat_output) == expected


@pytest.mark.parametrize(
    "script, expected",
    [
        ('echo "Job Id: $2"; echo "    job_state = R"', "running"),
        ('echo "Job Id: $3"; echo "    job_state = F"; echo "    Exit_status = 0"', "success"),
        ('echo "Job Id: $3"; echo "    job_state = F"; echo "    Exit_status = 2"', "failed"),
        ('echo "qstat: Unknown Job Id $3" >&2; exit 153', "failed"),
        ('echo "Connection refused" >&2; exit 15010', "running"),  # server down: ask later
    ],
)
def test_status_script_with_fake_qstat(tmp_path, script, expected):
    qstat = _write_exe(tmp_path / "qstat", f"#!/bin/sh\n{script}\n")
    env = dict(os.environ, ASTRODAG_QSTAT=str(qstat))
    res = subprocess.run([sys.executable, str(STATUS), "42.srv"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{expected}\n"  # exactly one line, as cluster-generic requires


# --- Snakemake + profiles/pbs --------------------------------------------------------------


TOY_SNAKEFILE = """
rule all:
    input: "cpu.txt", "gpu.txt"

rule prepare_flare_dataset:
    output: "cpu.txt"
    shell: "echo cpu > {output}"

rule train_flare_model:
    input: "cpu.txt"
    output: "gpu.txt"
    threads: 3
    resources: mem_mb=1500, runtime=75, gpu=1
    shell: "echo PBS_JOBID=$PBS_JOBID > {output}"
"""


def test_pbs_profile_toy_workflow(fake_pbs, tmp_path):
    env, state, calls = fake_pbs
    env["ASTRODAG_PBS_QUEUE"] = "short"  # CPU jobs; the GPU rule keeps the profile's queue
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(textwrap.dedent(TOY_SNAKEFILE))
    workdir = tmp_path / "work"
    rc, out = run_pbs_profile(env, workdir, ["-s", str(snakefile)], [])
    assert rc == 0, out[-6000:]
    assert re.search(r"Submitted job \d+ with external jobid '\d+\.fakepbs'", out), out[-3000:]
    assert (workdir / "gpu.txt").read_text().startswith("PBS_JOBID=")

    by_rule = {c["properties"]["rule"]: c for c in calls()}
    assert set(by_rule) == {"prepare_flare_dataset", "train_flare_model"}
    for call in by_rule.values():
        check_call_matches_properties(call, workdir)

    gpu = by_rule["train_flare_model"]["argv"]
    assert select_of(gpu) == {"ncpus": "3", "mem": "1500mb", "ngpus": "1"}
    assert walltime_of(gpu) == "01:15:00"
    assert opt(gpu, "-q") == "gpu"  # set-resources in the profile

    cpu = by_rule["prepare_flare_dataset"]["argv"]
    assert "ngpus" not in select_of(cpu)
    assert walltime_of(cpu) == "02:00:00"  # profile default runtime: 120 min
    assert opt(cpu, "-q") == "short"
    # the status script was asked, with the ids the submit script printed
    asked = (state / "qstat.log").read_text()
    assert "1.fakepbs" in asked and "2.fakepbs" in asked


@pytest.mark.workflow
def test_pbs_profile_tiny_flare_chain(fake_pbs, tmp_path):
    """The real workflow under profiles/pbs: every qsub call follows from its jobscript."""
    reason = workflow_available()
    if reason:
        pytest.skip(reason)
    env, _state, calls = fake_pbs
    workdir = tmp_path / "work"
    rc, out = run_pbs_profile(
        env, workdir, ["-s", str(SNAKEFILE), "--configfile", str(TINY_CONFIG), "--jobs", "1"], [TINY_TARGET]
    )
    assert rc == 0, out[-8000:]
    assert (workdir / TINY_TARGET).is_file()
    by_rule = {c["properties"]["rule"]: c for c in calls()}
    assert {"simulate_flare_data", "prepare_flare_dataset", "train_flare_model"} <= set(by_rule)
    for call in by_rule.values():
        assert call["exit"] == 0
        check_call_matches_properties(call, workdir)
    train = by_rule["train_flare_model"]
    assert select_of(train["argv"]).get("ngpus") == "1"
    assert opt(train["argv"], "-q") == "gpu"
    for rule in ("simulate_flare_data", "prepare_flare_dataset"):
        assert "ngpus" not in select_of(by_rule[rule]["argv"])
        assert opt(by_rule[rule]["argv"], "-q") is None


# --- optional: a real qsub front-end (SLURM's Torque wrappers) ------------------------------


def _slurm_torque_qsub() -> str | None:
    qsub = shutil.which("qsub")
    if qsub and "sbatch" in Path(qsub).read_text(errors="replace"):
        return qsub
    return None


@pytest.mark.slurm
def test_pbs_submit_through_slurm_torque_qsub(slurm_cluster, tmp_path):
    """pbs_submit.py's qsub line, fed to Debian's slurm-wlm-torque qsub (a PBS front-end
    that translates to sbatch) on the localhost SLURM cluster.

    The wrapper understands -N, -V, -q, -A, -o/-e and select's ncpus/mem plus walltime;
    it ignores ngpus, and its qstat prints no exit status (so pbs_status.py cannot tell
    success from failure there) -- only the submission side is checked.
    """
    qsub = _slurm_torque_qsub()
    if qsub is None:
        pytest.skip("slurm-wlm-torque's qsub wrapper not installed (optional: apt-get install slurm-wlm-torque)")
    props = {
        "type": "single", "rule": "train_flare_model", "threads": 2, "jobid": 1,
        "resources": {"mem_mb": 1500, "runtime": 7, "gpu": 1, "pbs_queue": "gpu"},
    }  # fmt: skip
    out = tmp_path / "ran.txt"
    jobscript = tmp_path / "snakejob.train_flare_model.1.sh"
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho ran $SLURM_JOB_ID > {out}\n")
    env = run_env(slurm_cluster.env)
    env["ASTRODAG_QSUB"] = qsub
    res = subprocess.run(
        [sys.executable, str(SUBMIT), str(jobscript)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    jobid = res.stdout.strip()
    assert jobid.isdigit(), res.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = slurm_cluster.run("squeue", "--states=all", "-h", "-j", jobid, "-o", "%T").stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    info = slurm_cluster.run("scontrol", "show", "job", jobid).stdout
    assert "JobState=COMPLETED" in info, info
    assert "JobName=train_flare_model" in info and "Partition=gpu" in info, info
    assert "TimeLimit=00:07:00" in info and "MinMemoryNode=1500M" in info and "MinCPUsNode=2" in info, info
    log = tmp_path / "logs" / "pbs" / "train_flare_model" / "snakejob.train_flare_model.1.out"
    assert f"StdOut={log}" in info, info
    assert out.read_text().split() == ["ran", jobid]
