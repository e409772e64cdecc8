#!/usr/bin/env python3
"""Submit one Snakemake jobscript to PBS Pro / OpenPBS (cluster-generic submit command).

Snakemake's cluster-generic executor calls ``pbs_submit.py <jobscript>``; the jobscript
carries the job's properties (rule, threads, resources) in its ``# properties = {...}``
line.  This script turns them into

    qsub -N <rule> -V -l select=1:ncpus=<threads>:mem=<mem_mb>mb[:ngpus=<gpu>],walltime=HH:MM:SS
         [-q <queue>] [-A <account>] [<pbs_extra>]
         -o <logdir>/<rule>/<jobname>.out -e <logdir>/<rule>/<jobname>.err <jobscript>

and prints the job id qsub reports (cluster-generic passes it to pbs_status.py).

Where the values come from (first match wins):

=========  =====================================================  ==========================
qsub       job resource (rule / profile default-resources /       environment variable
           set-resources)
=========  =====================================================  ==========================
ncpus      threads                                                -
mem        mem_mb (MB)                                            -
ngpus      gpu (or gpus); omitted when 0/absent                   -
walltime   runtime (minutes)                                      ASTRODAG_PBS_WALLTIME
-q         pbs_queue                                              ASTRODAG_PBS_GPU_QUEUE (GPU
                                                                  jobs), ASTRODAG_PBS_QUEUE
-A         pbs_account                                            ASTRODAG_PBS_ACCOUNT
extra      pbs_extra (string, split like a shell would)           ASTRODAG_PBS_EXTRA
logs       -                                                      ASTRODAG_PBS_LOGDIR
                                                                  (default logs/pbs)
=========  =====================================================  ==========================

``-V`` exports the submitting environment (activate the venv before running Snakemake,
the jobs' rules then run the venv's python); set ASTRODAG_PBS_EXPORT_ENV=0 to drop it.
ASTRODAG_QSUB names the qsub binary (default ``qsub``; the tests point it at a fake).
``--dry-run`` (before the jobscript) prints the qsub command line instead of running it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

PROPERTIES_RE = re.compile(r"# properties = (.*)")


def read_job_properties(jobscript: str) -> dict:
    """The job properties Snakemake wrote into the jobscript."""
    try:
        from snakemake.utils import read_job_properties as _read
    except ImportError:  # not running inside the Snakemake environment
        _read = None
    props = _read(jobscript) if _read is not None else None
    if props is None:
        with open(jobscript) as fh:
            for line in fh:
                m = PROPERTIES_RE.match(line)
                if m:
                    props = json.loads(m.group(1))
                    break
    if not props:
        raise SystemExit(f"pbs_submit.py: no '# properties = ...' line in {jobscript}")
    return props


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


_UNIT_MINUTES = {"s": 1 / 60, "m": 1, "min": 1, "h": 60, "d": 1440}


def runtime_minutes(value) -> float | None:
    """Snakemake's runtime resource in minutes (ints, or strings like '90', '2h', '1h30m')."""
    num = _number(value)
    if num is not None:
        return num
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(d|h|min|m|s)", text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(float(n) * _UNIT_MINUTES[u] for n, u in parts)
    return None


def walltime(value) -> str | None:
    """Minutes -> PBS walltime HH:MM:SS (hours may exceed 24); HH:MM:SS passes through."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"\d+:\d{2}:\d{2}", value.strip()):
        return value.strip()
    minutes = runtime_minutes(value)
    if minutes is None or minutes <= 0:
        raise SystemExit(f"pbs_submit.py: cannot turn runtime {value!r} into a walltime")
    seconds = int(round(minutes * 60))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _job_name(props: dict) -> str:
    name = props.get("rule") or (f"group_{props['groupid']}" if props.get("groupid") else "snakejob")
    # PBS: job names start with a letter, no whitespace/special characters
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))
    if not name[:1].isalpha():
        name = "j" + name
    return name


def build_qsub_command(jobscript: str, props: dict, env=os.environ) -> list[str]:
    resources = props.get("resources") or {}
    threads = int(props.get("threads") or resources.get("_cores") or 1)
    gpus = int(_number(resources.get("gpu", resources.get("gpus"))) or 0)
    mem_mb = _number(resources.get("mem_mb"))

    select = f"select=1:ncpus={max(threads, 1)}"
    if mem_mb:
        select += f":mem={int(mem_mb)}mb"
    if gpus > 0:
        select += f":ngpus={gpus}"

    name = _job_name(props)
    cmd = [env.get("ASTRODAG_QSUB", "qsub"), "-N", name]
    if env.get("ASTRODAG_PBS_EXPORT_ENV", "1") not in ("0", "false", "no"):
        cmd.append("-V")
    # one -l with a comma-separated resource list (valid PBS Pro/OpenPBS/Torque syntax);
    # some qsub front-ends (e.g. SLURM's Torque wrappers) keep only the last of several -l
    resource_list = select
    wt = walltime(resources.get("runtime")) or walltime(env.get("ASTRODAG_PBS_WALLTIME") or None)
    if wt:
        resource_list += f",walltime={wt}"
    cmd += ["-l", resource_list]

    queue = resources.get("pbs_queue")
    if not queue and gpus > 0:
        queue = env.get("ASTRODAG_PBS_GPU_QUEUE")
    queue = queue or env.get("ASTRODAG_PBS_QUEUE")
    if queue:
        cmd += ["-q", str(queue)]

    account = resources.get("pbs_account") or env.get("ASTRODAG_PBS_ACCOUNT")
    if account:
        cmd += ["-A", str(account)]

    extra = resources.get("pbs_extra") or env.get("ASTRODAG_PBS_EXTRA")
    if extra:
        cmd += shlex.split(str(extra))

    logdir = Path(env.get("ASTRODAG_PBS_LOGDIR", "logs/pbs")).resolve() / name
    logdir.mkdir(parents=True, exist_ok=True)  # PBS does not create it
    stem = Path(jobscript).name
    stem = stem[:-3] if stem.endswith(".sh") else stem
    cmd += ["-o", str(logdir / f"{stem}.out"), "-e", str(logdir / f"{stem}.err")]
    cmd.append(str(jobscript))
    return cmd


def main(argv: list[str]) -> int:
    dry_run = False
    if argv and argv[0] == "--dry-run":
        dry_run, argv = True, argv[1:]
    if len(argv) != 1:
        print("usage: pbs_submit.py [--dry-run] JOBSCRIPT", file=sys.stderr)
        return 2
    jobscript = argv[0]
    cmd = build_qsub_command(jobscript, read_job_properties(jobscript))
    if dry_run:
        print(shlex.join(cmd))
        return 0
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        print(f"pbs_submit.py: cannot run {cmd[0]}: {e}", file=sys.stderr)
        return 1
    if res.returncode != 0:
        print(f"pbs_submit.py: {shlex.join(cmd)} failed ({res.returncode}):", file=sys.stderr)
        print(res.stdout + res.stderr, file=sys.stderr)
        return res.returncode
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    if not lines:
        print(f"pbs_submit.py: qsub printed no job id: {res.stderr}", file=sys.stderr)
        return 1
    # qsub prints the job id (e.g. "1234.pbs-server"); cluster-generic reads line 1.
    # Wrappers that print a sentence ("Submitted batch job 1234") end with the id.
    print(lines[-1].split()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
