"""The Snakemake profiles in profiles/: valid YAML, only real Snakemake options, documented,
accepted by Snakemake itself, and the cluster profiles send train_flare_model to a GPU
partition/queue."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
NAMES = ["local", "slurm", "pbs"]
GPU_RULE = "train_flare_model"
REPO_RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"


def gpu_rules():
    """Names of the rules that request a GPU (``gpu=`` among their resources)."""
    names = []
    for path in REPO_RULES.glob("*.smk"):
        for block in re.split(r"\n(?=rule )", path.read_text()):
            match = re.match(r"rule (\w+):", block)
            if match and re.search(r"^\s+gpu=", block, flags=re.M):
                names.append(match.group(1))
    return sorted(names)


def test_every_gpu_rule_goes_to_a_gpu_partition_and_queue():
    assert {"train_flare_model", "train_microlensing_model", "train_realbogus"} <= set(gpu_rules())
    for rule in gpu_rules():
        assert load("slurm")["set-resources"][rule]["slurm_partition"] == "gpu", rule
        assert load("pbs")["set-resources"][rule]["pbs_queue"] == "gpu", rule


def load(name: str) -> dict:
    data = yaml.safe_load((PROFILES / name / "config.yaml").read_text())
    assert isinstance(data, dict), f"profiles/{name}/config.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def snakemake_options() -> set[str]:
    """Every long option Snakemake's CLI knows, executor plugins' options included."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    return {s for action in parser._actions for s in action.option_strings if s.startswith("--")}


@pytest.mark.parametrize("name", NAMES)
def test_profile_is_yaml_mapping(name):
    data = load(name)
    assert data, f"profiles/{name}/config.yaml is empty"


@pytest.mark.parametrize("name", NAMES)
def test_profile_keys_are_snakemake_options(name, snakemake_options):
    unknown = [key for key in load(name) if f"--{key}" not in snakemake_options]
    assert not unknown, f"profiles/{name}: not Snakemake options: {unknown}"


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_key_is_commented(name):
    """Each top-level key has a comment right above it (or on its line)."""
    lines = (PROFILES / name / "config.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z][\w-]*):", line)
        if not m:
            continue
        above = lines[i - 1].strip() if i else ""
        if not (above.startswith("#") or "#" in line.split(":", 1)[1]):
            undocumented.append(m.group(1))
    assert not undocumented, f"profiles/{name}: keys without a comment: {undocumented}"


@pytest.mark.parametrize("name", NAMES)
def test_snakemake_profile_parser_accepts_profile(name):
    from snakemake.profiles import ProfileConfigFileParser

    path = PROFILES / name / "config.yaml"
    with open(path) as fh:
        parsed = ProfileConfigFileParser().parse(fh)
    assert parsed, path


def test_no_default_workflow_profile():
    # profiles/default/ would be applied silently to every run (--workflow-profile);
    # users pick a profile explicitly: snakemake --profile profiles/<name>
    assert not (PROFILES / "default").exists()


def test_local_profile():
    data = load("local")
    assert "executor" not in data or data["executor"] == "local"
    assert data["cores"] == 2 or data["cores"] == "all"


def test_slurm_profile_maps_training_to_gpu_partition():
    data = load("slurm")
    assert data["executor"] == "slurm"
    assert int(data["jobs"]) > 0 and int(data["latency-wait"]) >= 5
    gpu_partition = data["set-resources"][GPU_RULE]["slurm_partition"]
    assert gpu_partition and isinstance(gpu_partition, str)
    default_partition = (data.get("default-resources") or {}).get("slurm_partition")
    assert default_partition != gpu_partition
    # the gpu request itself comes from the rule (gpu=1 -> sbatch --gpus=1), not the profile
    assert "gpu" not in (data.get("default-resources") or {})
    # sacct needs slurmdbd: the profile leaves the status command to the plugin default
    # (documented in a comment) instead of forcing squeue on every site
    text = (PROFILES / "slurm" / "config.yaml").read_text()
    assert "slurm-status-command" in text and "squeue" in text


def test_pbs_profile_commands():
    data = load("pbs")
    assert data["executor"] == "cluster-generic"
    for key in ("cluster-generic-submit-cmd", "cluster-generic-status-cmd"):
        script = PROFILES / "pbs" / data[key]  # Snakemake resolves it next to the profile
        assert script.is_file(), script
        assert os.access(script, os.X_OK), f"{script} must be executable (chmod +x)"
        assert script.read_text().startswith("#!/usr/bin/env python3")
    assert data["cluster-generic-cancel-cmd"] == "qdel"
    assert data["set-resources"][GPU_RULE]["pbs_queue"]


TOY = """
rule all:
    input: "b.txt"

rule prepare_flare_dataset:
    output: "a.txt"
    shell: "touch {output}"

rule train_flare_model:
    input: "a.txt"
    output: "b.txt"
    threads: 2
    resources: mem_mb=1000, runtime=10, gpu=1
    shell: "touch {output}"
"""


@pytest.mark.parametrize("name", NAMES)
def test_snakemake_dry_run_with_profile(name, tmp_path):
    """Snakemake itself loads the profile (and its executor plugin) without complaint."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(TOY))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("SNAKEMAKE_PROFILE", None)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(PROFILES / name), "-n",
         "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-4000:]
    if name == "slurm":
        assert re.search(r"rule train_flare_model:.*?resources: [^\n]*slurm_partition=gpu", output, re.S)
    if name == "pbs":
        assert re.search(r"rule train_flare_model:.*?resources: [^\n]*pbs_queue=gpu", output, re.S)
