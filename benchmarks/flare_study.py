"""Benchmark the flare study: one training experiment, and the whole demo study.

Prints wall time and peak memory (maximum resident set size) of

1. one transformer experiment (``astrodag flares train``) and one baseline
   experiment, on the demo config's dataset, with the demo's thread count;
2. the whole demo flare study (``snakemake --cores N analyze_flare_study``) in a fresh directory,
   with per-rule totals read from the rules' ``benchmark:`` files.

Usage::

    python benchmarks/flare_study.py                 # both parts
    python benchmarks/flare_study.py --skip-study    # only the single experiment
    python benchmarks/flare_study.py --configfile config/full.yaml --cores 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run a command; return its wall seconds and the peak RSS (MiB) of the largest child so far."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def snakemake_command(workdir: Path, configfile: Path | None, cores: int, *targets: str) -> list[str]:
    # Targets go first: --quiet takes any number of values and would swallow them.
    command = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--cores", str(cores), "--quiet", "all"]
    if configfile:
        command += ["--configfile", str(configfile)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, help="config to benchmark (default: the demo config)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--skip-study", action="store_true", help="only time one experiment")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["flares"]
    if args.configfile:
        override = yaml.safe_load(args.configfile.read_text()).get("flares", {})
        for key, value in override.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value

    with tempfile.TemporaryDirectory(prefix="astrodag-bench-") as tmp:
        workdir = Path(tmp)
        # The dataset first (not timed), then one experiment per model in its own process.
        run(snakemake_command(workdir, args.configfile, args.cores,
                              "results/flares/dataset/windows.parquet"), REPO)
        dataset = workdir / "results" / "flares" / "dataset"
        print(f"# flare study benchmark ({os.cpu_count()} CPUs visible, torch threads per job: "
              f"{config['resources']['train_threads']})")
        print(f"{'stage':<40} {'wall s':>8} {'peak MiB':>9}")
        for model, options in (("everest", ["--model-options", json.dumps(config["everest"]),
                                            "--training-options", json.dumps(config["training"])]),
                               ("baseline", ["--model-options", json.dumps(config["baseline"])])):
            command = [sys.executable, "-m", "astrodag", "flares", "train", "--features",
                       str(dataset / "features.npy"), "--index", str(dataset / "windows.parquet"),
                       "--out-dir", str(workdir / "single" / model), "--flare-class", "M", "--window", "24",
                       "--seed", "0", "--architecture", model, "--threads", str(config["resources"]["train_threads"]),
                       *options]
            # ru_maxrss of children is a running maximum: measure each in a fresh interpreter.
            probe = [sys.executable, "-c",
                     "import resource, subprocess, sys, time; t = time.perf_counter(); "
                     "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                     "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)",
                     *command]
            output = subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split()
            print(f"{'one experiment, ' + model + ' (M, 24 h)':<40} {float(output[0]):>8.1f} {float(output[1]):>9.0f}")
        if args.skip_study:
            return

        study = workdir / "study"
        wall, peak = run(snakemake_command(study, args.configfile, args.cores, "analyze_flare_study"), REPO)
        print(f"{'whole study, snakemake --cores ' + str(args.cores):<40} {wall:>8.1f} {peak:>9.0f}")
        tables = []
        for path in (study / "results" / "benchmarks" / "flares").rglob("*.tsv"):
            frame = pd.read_csv(path, sep="\t")
            # train/<target>_seed<k>_<model>.tsv, or <rule>.tsv for the one-job rules
            frame["rule"] = f"train ({path.stem.rsplit('_', 1)[1]})" if path.parent.name == "train" else path.stem
            tables.append(frame)
        per_rule = pd.concat(tables).groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                                         mean_s=("s", "mean"), peak_rss_mib=("max_rss", "max"))
        print("\n# per rule, from the rules' benchmark files")
        print(per_rule.round(1).to_string())


if __name__ == "__main__":
    main()
