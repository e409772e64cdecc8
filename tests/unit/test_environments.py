"""pyproject.toml (our pip install), environment.yml and envs/*.yaml must agree."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# PyPI name -> conda-forge name where they differ.
CONDA_NAMES = {"torch": "pytorch", "uvicorn": "uvicorn-standard"}
# Dependencies that only one rule family imports -> its environment file.
TRACK_ONLY = {
    "vbmicrolensing": "microlensing.yaml",
    "reproject": "supernova.yaml",
    "photutils": "supernova.yaml",
    "astroquery": "supernova.yaml",
    "requests": "supernova.yaml",
    "shapely": "supernova.yaml",
    "onnx": "supernova.yaml",
    "onnxscript": "supernova.yaml",
    "onnxruntime": "supernova.yaml",
    "fastapi": "supernova.yaml",
    "uvicorn-standard": "supernova.yaml",
    "python-multipart": "supernova.yaml",
}


def names(requirements):
    """Package names of a requirement list; a conda ``pip:`` sub-list counts too."""
    flat = []
    for item in requirements:
        flat += item.get("pip", []) if isinstance(item, dict) else [item]
    return {re.split(r"[<>=!~ \[]", item, maxsplit=1)[0].lower() for item in flat}


def test_environment_yml_lists_every_runtime_and_test_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = names(project["dependencies"]) | names(project["optional-dependencies"]["test"])
    conda = names(yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"])
    missing = {CONDA_NAMES.get(name, name) for name in wanted} - conda
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def test_rule_environments_cover_the_package_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    workflow_only = {"snakemake", "snakemake-executor-plugin-slurm", "snakemake-executor-plugin-cluster-generic"}
    wanted = {CONDA_NAMES.get(name, name) for name in names(project["dependencies"]) - workflow_only}
    for env in sorted((REPO / "envs").glob("*.yaml")):
        needed = {name for name in wanted if TRACK_ONLY.get(name, env.name) == env.name}
        listed = names(yaml.safe_load(env.read_text())["dependencies"])
        assert not needed - listed, f"{env.name} lacks {sorted(needed - listed)}"


def test_every_rule_declares_a_conda_env_that_exists():
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', rules.read_text()):
            assert (rules.parent / env).resolve().exists(), f"{rules.name}: {env} does not exist"
