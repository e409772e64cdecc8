#!/usr/bin/env python3
"""Job status for Snakemake's cluster-generic executor on PBS Pro / OpenPBS / Torque.

Called as ``pbs_status.py <jobid>``; prints exactly one word, as cluster-generic
expects: ``running``, ``success`` or ``failed``.

It runs ``qstat -f -x <jobid>``: on PBS Pro/OpenPBS ``-x`` includes finished jobs
(job history), on Torque it selects XML output -- both forms are parsed.

  job_state F (PBS Pro finished), C (Torque completed), X (finished subjob)
      -> ``success`` if Exit_status/exit_status is 0, else ``failed``
  any other state (Q queued, H held, W waiting, T transit, R running, E exiting,
  S suspended, B array begun, M moved, ...) -> ``running``
  qstat says the job id is unknown (history expired)          -> ``failed``
  qstat fails otherwise (server busy/unreachable)              -> ``running``
      (a warning goes to stderr; Snakemake asks again later)

ASTRODAG_QSTAT names the qstat binary (default ``qstat``; the tests use a fake).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

FINISHED = {"F", "C", "X"}
UNKNOWN_JOB = re.compile(r"unknown job|job has finished|does not exist|invalid job", re.I)
STATE_RE = re.compile(r"job_state\s*(?:=\s*|>)\s*([A-Za-z])", re.I)
EXIT_RE = re.compile(r"exit_status\s*(?:=\s*|>)\s*(-?\d+)", re.I)


def status_from_qstat(output: str) -> str | None:
    """Map the text of ``qstat -f`` (plain or XML) to running/success/failed."""
    state = STATE_RE.search(output)
    if not state:
        return None
    if state.group(1).upper() in FINISHED:
        code = EXIT_RE.search(output)
        return "success" if code and int(code.group(1)) == 0 else "failed"
    return "running"


def query(jobid: str, env=os.environ) -> str:
    qstat = env.get("ASTRODAG_QSTAT", "qstat")
    last_err = ""
    for args in (["-f", "-x", jobid], ["-f", jobid]):
        try:
            res = subprocess.run([qstat, *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            last_err = str(e)
            continue
        if res.returncode == 0:
            status = status_from_qstat(res.stdout)
            if status:
                return status
            last_err = f"no job_state in qstat output: {res.stdout[:500]!r}"
            continue
        last_err = (res.stderr or res.stdout).strip()
        if UNKNOWN_JOB.search(last_err) and args[0] == "-f" and len(args) == 2:
            # not even history knows it: it finished long ago or was deleted
            return "failed"
    print(f"pbs_status.py: cannot get status of {jobid}: {last_err}", file=sys.stderr)
    return "running"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pbs_status.py JOBID", file=sys.stderr)
        return 2
    print(query(argv[0].strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
