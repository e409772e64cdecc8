"""Benchmark the microlensing magnification code against VBMicrolensing.

Draws random events from the design's priors (s log-uniform [0.2, 5], q log-uniform
[1e-3, 1], u0 uniform [0, 1], alpha uniform [0, 2 pi), rho log-uniform [3e-4, 1e-2],
tE log-uniform [10, 100] d, t0 uniform [100, 400] d) on a grid of EPOCHS epochs over 500 d, and
prints a table with curves/s, points/s and peak memory for

* PSPL, numpy (``pspl_magnification``);
* binary, numpy (``binary_magnification(method="numpy")``: vectorised point-source solver,
  VBMicrolensing only for finite-source points);
* binary, VBMicrolensing (``BinaryLightCurve`` in a loop, the reference),

plus the largest relative difference between the two binary results, overall and away from
the points that needed the finite source. Single process, single thread.

Usage::

    python benchmarks/microlensing_magnification.py                  # 1500 events x 1500 epochs
    python benchmarks/microlensing_magnification.py --events 300 --repeat 3
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np

from astrodag.microlensing.magnification import binary_magnification, pspl_magnification


def draw_events(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def log_uniform(low, high):
        return np.exp(rng.uniform(math.log(low), math.log(high), n))

    return {
        "t0": rng.uniform(100.0, 400.0, n), "u0": rng.uniform(0.0, 1.0, n), "tE": log_uniform(10.0, 100.0),
        "s": log_uniform(0.2, 5.0), "q": log_uniform(1e-3, 1.0), "alpha": rng.uniform(0.0, 2 * math.pi, n),
        "rho": log_uniform(3e-4, 1e-2),
    }


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(function, repeat: int):
    best, result = math.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result, peak_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1500, help="binary (and PSPL) events (default 1500)")
    parser.add_argument("--epochs", type=int, default=1500, help="grid epochs over 500 days (default 1500)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each timing, keep the best (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    times = np.linspace(0.0, 500.0, args.epochs, endpoint=False)
    ev = draw_events(args.events, np.random.default_rng(args.seed))
    points = args.events * args.epochs

    rows = []
    seconds, _, peak = timed(lambda: pspl_magnification(times, ev["t0"], ev["u0"], ev["tE"]), args.repeat)
    rows.append(("PSPL (numpy)", seconds, peak))
    seconds, (ours, info), peak = timed(
        lambda: binary_magnification(times, **ev, method="numpy", return_info=True), args.repeat)
    rows.append(("binary (ours, numpy+VBM)", seconds, peak))
    seconds, reference, peak = timed(lambda: binary_magnification(times, **ev, method="vbm"), args.repeat)
    rows.append(("binary (VBMicrolensing)", seconds, peak))

    print(f"{args.events} events x {args.epochs} epochs = {points:,} points per model, best of {args.repeat}")
    print(f"{'model':<28}{'seconds':>9}{'curves/s':>11}{'Mpoints/s':>11}{'peak MiB':>10}")
    for name, seconds, peak in rows:
        print(f"{name:<28}{seconds:>9.2f}{args.events / seconds:>11.0f}{points / seconds / 1e6:>11.3f}{peak:>10.0f}")
    relative = np.abs(ours - reference) / reference
    finite = info["finite_source"]
    print(f"binary speed-up vs VBMicrolensing: {rows[2][1] / rows[1][1]:.2f}x")
    print(f"finite-source points: {finite.mean():.2%} ({int(finite.sum()):,}); "
          f"eigenvalue solves: {info['eigen_solves']:,}")
    print(f"max |ours - VBM| / VBM: all points {relative.max():.2e}, point-source points "
          f"{relative[~finite].max() if (~finite).any() else 0.0:.2e}")
    print("(peak MiB is the process's maximum resident set so far, so it only grows down the table)")


if __name__ == "__main__":
    main()
