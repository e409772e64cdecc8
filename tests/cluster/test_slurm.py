"""profiles/slurm against a real (one-node, localhost) SLURM cluster.

The cluster comes from the session fixture ``slurm_cluster`` (conftest.py): Debian's
SLURM 22.05 + munge, partitions ``cpu`` (default) and ``gpu`` -- the names the profile
uses -- and one fake GPU (gres.conf maps it to /dev/null; jobs get
CUDA_VISIBLE_DEVICES=0). There is no slurmdbd, so runs add
``--slurm-status-command squeue`` (MinJobAge is 600 s). Nothing is copied: Snakemake
runs the repository's Snakefile and profile with ``-d <tmp>``.
"""

from __future__ import annotations

import re
import subprocess
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

pytestmark = pytest.mark.slurm

SUBMITTED_RE = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)")
GPU_RULE = "train_flare_model"


def run_snakemake(
    cluster, workdir: Path, args: list[str], targets: list[str], timeout: int = 600
) -> tuple[int, str, float]:
    cmd = [
        "timeout", "-k", "10", str(timeout),
        snakemake_exe(),
        "--profile", str(PROFILES / "slurm"),
        "-d", str(workdir),
        *args,
        # localhost cluster without accounting: sacct would hang, squeue works
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        # keep the SLURM logs of successful jobs, to inspect them below
        "--slurm-keep-successful-logs",
        *targets,
    ]  # fmt: skip
    t0 = time.monotonic()
    res = subprocess.run(
        cmd, env=run_env(cluster.env), capture_output=True, text=True, timeout=timeout + 30
    )
    elapsed = time.monotonic() - t0
    output = res.stdout + res.stderr
    (workdir.parent / "snakemake.out").write_text(output)
    return res.returncode, output, elapsed


def submitted_jobs(output: str) -> dict[str, list[tuple[str, Path]]]:
    """rule -> [(slurm job id, slurm log path)] from Snakemake's output."""
    jobs: dict[str, list[tuple[str, Path]]] = {}
    for _sm_id, slurm_id, logpath in SUBMITTED_RE.findall(output):
        m = re.search(r"/rule_([^/]+)/", logpath)
        assert m, f"unexpected SLURM log path {logpath}"
        jobs.setdefault(m.group(1), []).append((slurm_id, Path(logpath)))
    return jobs


def scontrol_job(cluster, jobid: str) -> str:
    res = cluster.run("scontrol", "show", "job", jobid)
    assert res.returncode == 0, f"scontrol show job {jobid}: {res.stderr}"
    return res.stdout


def check_jobs_ran_on_slurm(cluster, output: str, workdir: Path, expected_rules: set[str]) -> dict:
    jobs = submitted_jobs(output)
    assert expected_rules <= set(jobs), (
        f"rules not submitted to SLURM: {sorted(expected_rules - set(jobs))}; got {sorted(jobs)}"
    )
    squeue = cluster.run("squeue", "--states=all", "--noheader", "--format=%i|%P|%T").stdout
    squeue_rows = dict((row.split("|")[0], row.split("|")[1:]) for row in squeue.split())
    ctld_log = cluster.slurmctld_log.read_text(errors="replace")

    for rule, entries in jobs.items():
        # the last attempt of each rule is the one that must have succeeded
        slurm_id, logpath = entries[-1]
        gpu = rule == GPU_RULE
        partition = "gpu" if gpu else "cpu"
        # 1. the plugin's per-job SLURM log, inside the workdir
        assert logpath.is_file(), f"{rule}: SLURM log {logpath} missing"
        assert workdir.resolve() in logpath.resolve().parents
        # 2. slurmctld's own bookkeeping
        info = scontrol_job(cluster, slurm_id)
        assert "JobState=COMPLETED" in info, f"{rule} ({slurm_id}):\n{info}"
        assert f"Partition={partition}" in info, f"{rule} ({slurm_id}) partition:\n{info}"
        assert f"Comment=rule_{rule}" in info, info
        assert slurm_id in squeue_rows and squeue_rows[slurm_id] == [partition, "COMPLETED"], squeue
        assert re.search(rf"sched: Allocate JobId={slurm_id} .*Partition={partition}\b", ctld_log), (
            f"no allocation of {slurm_id} in {cluster.slurmctld_log}"
        )
        assert re.search(rf"_job_complete: JobId={slurm_id} WEXITSTATUS 0", ctld_log)
        # 3. the GPU request path: --gpus=1 -> gres on the job, CUDA_VISIBLE_DEVICES in it
        job_log = logpath.read_text(errors="replace")
        prolog = re.findall(
            rf"astrodag-test-taskprolog SLURM_JOB_ID={slurm_id} .*CUDA_VISIBLE_DEVICES=(\S+)", job_log
        )
        assert prolog, f"{rule}: no TaskProlog line in its SLURM log {logpath}:\n{job_log[-2000:]}"
        if gpu:
            assert re.search(r"TresPerJob=gres:gpu:1\b", info), f"{rule}: no GPU gres:\n{info}"
            assert set(prolog) == {"0"}, f"{rule}: CUDA_VISIBLE_DEVICES={prolog}"
        else:
            assert "gres:gpu" not in info and "gres/gpu" not in info, f"{rule} got a GPU:\n{info}"
            assert set(prolog) == {"unset"}, f"{rule}: CUDA_VISIBLE_DEVICES={prolog}"
    return jobs


def test_slurm_profile_gpu_and_cpu_rules_toy(slurm_cluster, tmp_path):
    """Workflow-independent check of the profile: one CPU and one GPU rule, in parallel."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        textwrap.dedent(
            """
            rule all:
                input: "cpu.txt", "gpu.txt"

            rule prepare_flare_dataset:
                output: "cpu.txt"
                shell: "echo cpu > {output}"

            rule train_flare_model:
                output: "gpu.txt"
                threads: 2
                resources: mem_mb=1500, runtime=10, gpu=1
                shell: "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"
            """
        )
    )
    workdir = tmp_path / "work"
    rc, output, elapsed = run_snakemake(slurm_cluster, workdir, ["-s", str(snakefile)], [], timeout=300)
    assert rc == 0, f"snakemake failed ({rc}) after {elapsed:.0f} s:\n{output[-6000:]}"
    assert (workdir / "gpu.txt").read_text().strip() == "CUDA_VISIBLE_DEVICES=0"
    jobs = check_jobs_ran_on_slurm(slurm_cluster, output, workdir, {"prepare_flare_dataset", GPU_RULE})
    # the sbatch options the profile + rule resources turn into
    info = scontrol_job(slurm_cluster, jobs[GPU_RULE][-1][0])
    assert "TimeLimit=00:10:00" in info and "MinMemoryNode=1500M" in info, info
    cpu_info = scontrol_job(slurm_cluster, jobs["prepare_flare_dataset"][-1][0])
    assert "TimeLimit=02:00:00" in cpu_info, "profile default runtime (120 min) not applied:\n" + cpu_info


def test_slurm_profile_runs_tiny_flare_chain(slurm_cluster, tmp_path):
    """The real workflow, tiny config: simulate -> prepare -> train as SLURM jobs."""
    reason = workflow_available()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path / "work"
    rc, output, elapsed = run_snakemake(
        slurm_cluster,
        workdir,
        ["-s", str(SNAKEFILE), "--configfile", str(TINY_CONFIG)],
        [TINY_TARGET],
    )
    print(f"snakemake --profile profiles/slurm ({TINY_TARGET}) took {elapsed:.1f} s")
    assert rc == 0, f"snakemake failed ({rc}) after {elapsed:.0f} s:\n{output[-8000:]}"
    assert (workdir / TINY_TARGET).is_file()
    check_jobs_ran_on_slurm(
        slurm_cluster,
        output,
        workdir,
        {"simulate_flare_data", "prepare_flare_dataset", GPU_RULE},
    )
