"""Benchmark the microlensing track: observation, one cadence's training and scoring, and the whole demo track.

Prints wall time and peak memory (maximum resident set size) of

1. drawing one shard's events (``astrodag microlensing simulate``) and observing it with every survey
   (``astrodag microlensing observe``: observation times, PSPL and binary magnification, noise, binning,
   the best-PSPL fit of every binary and the evidence search), each in its own process, at the demo's
   shard size and optionally at ``--big-shard`` events with ``--big-cadence`` (the full config's 50 000
   on roman checks the 4 GB memory bound of full.yaml);
2. training and scoring one cadence (``astrodag microlensing train`` /
   ``predict``) on the demo data, with the demo's thread count;
3. the whole demo track (``snakemake --cores N microlensing``) in a fresh
   directory, with per-rule totals from the rules' ``benchmark:`` files.

The magnification alone, next to VBMicrolensing, is in
``benchmarks/microlensing_magnification.py``.

Usage::

    python benchmarks/microlensing_study.py
    python benchmarks/microlensing_study.py --big-shard 50000 --skip-track
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command``, measured in a fresh interpreter."""
    output = subprocess.run([sys.executable, "-c", PROBE, *command], check=True, capture_output=True,
                            text=True).stdout.split()
    return float(output[0]), float(output[1])


def astrodag(*args: str) -> list[str]:
    return [sys.executable, "-m", "astrodag", "microlensing", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--big-shard", type=int, default=0, help="also observe one shard of this many events")
    parser.add_argument("--big-cadence", default="roman", help="cadence of the --big-shard observation")
    parser.add_argument("--cadence", default="normal", help="cadence for the single training benchmark")
    parser.add_argument("--skip-track", action="store_true", help="skip the whole-track snakemake run")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["microlensing"]
    simulation = config["simulation"]
    grid = config["time_grid"]
    settings = json.dumps({key: simulation[key] for key in ("priors", "split_fractions")})
    observation = json.dumps(config["observation"])
    cadences = str(REPO / config["cadences"])
    names = list(pd.read_csv(cadences, sep="\t", comment="#")["cadence"])
    threads = str(config["resources"]["train_threads"])
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["PATH"] = env_path

    print(f"# microlensing benchmark ({os.cpu_count()} CPUs visible, {grid['epochs']} epochs per curve)")
    print(f"{'stage':<52} {'wall s':>8} {'peak MiB':>9} {'rate':>22}")
    with tempfile.TemporaryDirectory(prefix="astrodag-bench-") as tmp:
        workdir = Path(tmp)
        sizes = [simulation["events_per_shard"]] + ([args.big_shard] if args.big_shard else [])
        for events in sizes:
            out = workdir / f"shard_{events}"
            grid_args = ["--epochs", str(grid["epochs"]), "--duration-days", str(grid["duration_days"])]
            wall, peak = measure(astrodag("simulate", "--out-dir", str(out / "events"), "--shard", "0", "--events",
                                          str(events), *grid_args, "--seed", "1", "--settings", settings))
            print(f"{f'draw one shard of {events} events (half binary)':<52} {wall:>8.1f} {peak:>9.0f} "
                  f"{events / wall:>14.0f} events/s")
            for name in names if events == sizes[0] else [args.big_cadence]:
                wall, peak = measure(astrodag("observe", "--events", str(out / "events" / "events.parquet"),
                                              "--cadences", cadences, "--cadence", name, "--out-dir",
                                              str(out / name), *grid_args, "--seed", "11", "--settings", observation))
                summary = json.loads((out / name / "summary.json").read_text())
                label = f"observe {events} events, {name} ({summary['observations_median']:.0f} obs/event)"
                print(f"{label:<52} {wall:>8.1f} {peak:>9.0f} {events / wall:>14.0f} events/s")

        # One cadence, trained and scored on the demo's shards, through the workflow's own rules.
        data = workdir / "data"
        snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(data),
                     "--cores", str(args.cores), "--quiet", "all"]
        observations = [f"results/microlensing/cadences/{args.cadence}/observations/shard{i:03d}"
                        for i in range(simulation["shards"])]
        subprocess.run([*snakemake[:3], *[f"{path}/summary.json" for path in observations], *snakemake[3:]],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        observations = [str(data / path) for path in observations]
        model_dir = workdir / "model"
        wall, peak = measure(astrodag("train", "--observations", *observations, "--out-dir", str(model_dir),
                                      "--cadences", cadences, "--cadence", args.cadence,
                                      "--duration-days", str(grid["duration_days"]),
                                      "--simulation-settings", json.dumps(simulation),
                                      "--observation-settings", observation,
                                      "--model-options", json.dumps(config["model"]),
                                      "--training-options", json.dumps({**config["training"], "tensorboard": False}),
                                      "--threads", threads))
        sidecar = json.loads((model_dir / "model.json").read_text())
        samples = sidecar["data"]["events"]["train"] * sidecar["epochs_run"]
        label = f"train one cadence ({args.cadence}, {sidecar['epochs_run']} epochs)"
        print(f"{label:<52} {wall:>8.1f} "
              f"{peak:>9.0f} {samples / sidecar['training_seconds']:>12.0f} curves/s (train)")
        wall, peak = measure(astrodag("predict", "--observations", *observations, "--model",
                                      str(model_dir / "model.pt"), "--model-json", str(model_dir / "model.json"),
                                      "--out-dir", str(workdir / "evaluation"), "--threads", threads))
        scoring = json.loads((workdir / "evaluation" / "scoring.json").read_text())
        print(f"{'score the test split at every step':<52} {wall:>8.1f} {peak:>9.0f} "
              f"{scoring['events_per_second']:>14.0f} curves/s")
        if args.skip_track:
            return

        track = workdir / "track"
        command = [sys.executable, "-m", "snakemake", "microlensing", "-s", str(REPO / "Snakefile"), "-d",
                   str(track), "--cores", str(args.cores), "--quiet", "all"]
        wall, peak = measure(command)
        print(f"{'whole demo track, snakemake --cores ' + str(args.cores):<52} {wall:>8.1f} {peak:>9.0f}")
        tables = []
        for path in (track / "results" / "benchmarks" / "microlensing").rglob("*.tsv"):
            frame = pd.read_csv(path, sep="\t")
            frame["rule"] = path.parent.name
            tables.append(frame)
        per_rule = pd.concat(tables).groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                                         mean_s=("s", "mean"), peak_rss_mib=("max_rss", "max"))
        print("\n# per rule, from the rules' benchmark files")
        print(per_rule.round(1).to_string())


if __name__ == "__main__":
    main()
