"""Fixtures for the cluster tests (SLURM on localhost, PBS with a fake qsub/qstat).

``slurm_cluster`` (session): installs Debian's SLURM + munge with apt-get when missing,
starts a one-node cluster (tests/cluster/slurm/localcluster.py) and always stops it.
Without root or apt-get the SLURM tests are skipped with the reason -- unless
ASTRODAG_REQUIRE_SLURM=1 (set in CI), which turns a missing prerequisite into a failure.
Set ASTRODAG_KEEP_SLURM_DIR=1 to keep the cluster directory (configs, daemon logs).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "data" / "config_tiny.yaml"
# small end-to-end target of the flare study (simulate -> prepare -> train)
TINY_TARGET = "results/flares/experiments/M_24h/seed0/everest/predictions.parquet"


def _load_localcluster():
    path = Path(__file__).resolve().parent / "slurm" / "localcluster.py"
    spec = importlib.util.spec_from_file_location("astrodag_test_localcluster", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


localcluster = _load_localcluster()


def venv_bin() -> Path:
    """bin/ of the environment running pytest (the project venv)."""
    return Path(sys.executable).parent


def snakemake_exe() -> str:
    exe = venv_bin() / "snakemake"
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


def run_env(base: dict | None = None) -> dict:
    """Environment for a snakemake run: the venv's bin first on PATH (jobs inherit it
    and call the `astrodag` console script), no inherited profile or SLURM job context."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_bin().parent)
    env.pop("SNAKEMAKE_PROFILE", None)
    for var in list(env):
        if var.startswith("SLURM_") and var != "SLURM_CONF":
            del env[var]
    return env


def workflow_available() -> str | None:
    """None if the real workflow and its tiny config are there, else the reason."""
    missing = [str(p.relative_to(REPO)) for p in (SNAKEFILE, TINY_CONFIG) if not p.exists()]
    return f"workflow not present yet: missing {', '.join(missing)}" if missing else None


def _require_slurm() -> bool:
    return os.environ.get("ASTRODAG_REQUIRE_SLURM", "") not in ("", "0", "false", "no")


def _unavailable(reason: str):
    if _require_slurm():
        pytest.fail(f"ASTRODAG_REQUIRE_SLURM is set but the SLURM test cannot run: {reason}", pytrace=False)
    pytest.skip(f"SLURM test skipped: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    messages: list[str] = []
    log = messages.append
    if not sys.platform.startswith("linux"):
        _unavailable("needs Linux")
    if os.geteuid() != 0:
        _unavailable("needs root (installs SLURM with apt-get and starts munged/slurmctld/slurmd)")
    try:
        localcluster.install_slurm(log=log)
    except localcluster.SlurmUnavailable as e:
        _unavailable(str(e))

    # not under pytest's tmp dir: that one is mode 0700 and slurmctld runs as 'slurm'
    cluster_dir = tempfile.mkdtemp(prefix=localcluster.TEST_DIR_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None)
    cluster = localcluster.LocalSlurm(cluster_dir, log=log)
    try:
        cluster.start(timeout=90)
    except localcluster.SlurmUnavailable as e:
        cluster.stop()
        shutil.rmtree(cluster_dir, ignore_errors=True)
        _unavailable(str(e))
    except BaseException:
        cluster.stop()
        raise
    cluster.messages = messages
    try:
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("ASTRODAG_KEEP_SLURM_DIR", "") in ("", "0"):
            shutil.rmtree(cluster_dir, ignore_errors=True)
        else:
            print(f"\nSLURM test cluster directory kept: {cluster_dir}", file=sys.stderr)
