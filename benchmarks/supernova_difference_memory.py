"""Peak memory and wall time of ``astrodag supernova difference`` against the declared ``mem_mb``.

For each size (2048 and 8192 pixels a side by default) a synthetic pair is written as FITS in
double precision, the science image as a float64 file (the case of issue 15: an 8192^2 float64
science image peaked at 7.6 GB against a declared 2000 MB): the star field, PSFs, noise,
rotation and transients of ``benchmarks/imaging_pair.py``. The CLI stage then runs in a child
process with the workflow's demo settings (34 fakes injected), and the child's peak resident
memory (``ru_maxrss`` from ``wait4``) and wall time are printed beside the float32 image size,
their ratio and the ``mem_mb`` the workflow declares for the pair
(:func:`astrodag.supernova.imaging.resources.difference_mem_mb`). ``--src`` runs another
checkout's code (e.g. the one before the memory bounds) for a before/after comparison.

Writing an 8192^2 pair takes about a minute and ~6 GB; the stage itself several minutes.

Usage::

    python benchmarks/supernova_difference_memory.py                   # 2048 and 8192
    python benchmarks/supernova_difference_memory.py --sizes 512 1024
    python benchmarks/supernova_difference_memory.py --sizes 8192 --src /path/to/other/checkout/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"inject": {"count": 34}}  # config/config.yaml's supernova.difference


def write_pair(directory: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """The pair of ``benchmarks/imaging_pair.py`` at ``size``, rewritten as float64 FITS files."""
    import numpy as np
    from astropy.io import fits

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from imaging_pair import make_pair

    science, reference, _ = make_pair(directory, size, seed)
    for path in (science, reference):
        with fits.open(path) as hdul:
            data, header = hdul[0].data.astype(np.float64), hdul[0].header
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        del data
    return science, reference


def run_stage(science: Path, reference: Path, out_dir: Path, src: Path) -> tuple[float, float, int]:
    """Peak RSS (MiB), wall seconds and exit status of the CLI stage in a child process."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "astrodag", "supernova", "difference", "--science", str(science),
               "--reference", str(reference), "--out-dir", str(out_dir), "--settings", json.dumps(SETTINGS),
               "--seed", "0", "--log", str(out_dir.parent / f"{out_dir.name}.log")]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="image sides in pixels")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the astrodag source directory to run (default: this checkout's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from astrodag.supernova.imaging.resources import difference_mem_mb

    print(f"code: {args.src}; settings {json.dumps(SETTINGS)}; one thread")
    print(f"{'size':>6}{'float32 MiB':>13}{'peak MiB':>10}{'ratio':>7}{'mem_mb':>8}{'covered':>9}{'wall s':>8}")
    with tempfile.TemporaryDirectory(prefix="astrodag-difference-memory-") as tmp:
        for size in args.sizes:
            directory = Path(tmp) / str(size)
            directory.mkdir()
            science, reference = write_pair(directory, size, args.seed)
            peak, wall, status = run_stage(science, reference, directory / "pair", args.src)
            image = size * size * 4 / 2 ** 20
            declared = difference_mem_mb(science, reference, 2000)
            verdict = "yes" if peak <= declared else "NO"
            print(f"{size:>6}{image:>13.0f}{peak:>10.0f}{peak / image:>7.1f}{declared:>8}{verdict:>9}{wall:>8.1f}"
                  + ("" if status == 0 else f"  (exit status {status})"), flush=True)
            for path in directory.glob("*.fits"):
                path.unlink()


if __name__ == "__main__":
    main()
