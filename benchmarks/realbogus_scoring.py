"""Benchmark real/bogus batch inference on the CPU: triplets scored per second and peak memory.

For each model (braai; the demo ResNet-18 variant with stem stride 2 and width 32; optionally
the full-resolution ResNet-18, ``--full-resnet``), each execution variant and each batch size
(64, 256, 1024, 4096 by default) it times scoring ``max(batch, --triplets)`` random normalised
3x63x63 triplets after a warm-up batch, on ``--threads`` threads (2 by default), and reports
the fastest of ``--repeats`` passes. The batch is what one call receives; the raw variants run
it as one forward pass, the scorer variants in forward passes of 64 (their CPU default, because
the first layer's activations of a large batch, 32x63x63 floats a triplet, leave the caches).
Variants:

``float32``            plain NCHW float32 under ``torch.inference_mode``
``channels_last``      NHWC memory format (oneDNN's preferred layout for convolutions)
``bfloat16``           channels-last, ``torch.autocast`` to bfloat16 (native on AVX512-BF16/AMX CPUs)
``jit``                channels-last, ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``
``compile``            channels-last, ``torch.compile`` (inductor; compile time reported separately)
``onnxruntime``        the model exported by ``export_realbogus_onnx``, ONNX Runtime CPU
``scorer``             :class:`astrodag.supernova.realbogus.scoring.RealBogusScorer.score` (the production path:
                       input checks, channels-last float32, forward passes of 64)
``scorer-bf16``        the same with ``precision="bfloat16"``, which the scorer's default
                       ``precision="auto"`` chooses on CPUs with native bfloat16 (printed at the top)

Peak memory is the process's resident set size sampled every 2 ms during the warm-up and the
timed passes, minus the RSS just before (the variant's working memory, not the inputs'; large
activations are returned to the system when freed, so earlier variants hardly inflate it).
Scores of every variant are compared with the float32 ones (max absolute difference).

Target: LSST's ~10 million alerts a night scored in under an hour on one 2-core machine is
2,778 triplets/s.

Usage::

    python benchmarks/realbogus_scoring.py
    python benchmarks/realbogus_scoring.py --models braai --variants channels_last onnxruntime --batch-sizes 1024
    python benchmarks/realbogus_scoring.py --quick        # braai only, batch 256 and 1024
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

TARGET_PER_SECOND = 10_000_000 / 3600
VARIANTS = ("float32", "channels_last", "bfloat16", "jit", "compile", "onnxruntime", "scorer", "scorer-bf16")
MODELS = {"braai": ("braai", {}), "resnet18": ("resnet18", {"stem_stride": 2, "width": 32}),
          "resnet18-full": ("resnet18", {"stem_stride": 1, "width": 64})}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak RSS above the level at entry, sampled in a background thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0

    def __enter__(self):
        self.base = _rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def _predictor(variant: str, architecture: str, options: dict, model_dir: Path, threads: int):
    """(predict(batch ndarray) -> scores ndarray, set-up seconds) of one variant."""
    import numpy as np
    import torch

    from astrodag.supernova.realbogus.scoring import RealBogusScorer, load_realbogus_model

    started = time.perf_counter()
    model, _ = load_realbogus_model(model_dir / "model.pt")
    if variant.startswith("scorer"):
        scorer = RealBogusScorer.from_files(model_dir / "model.pt", threads=threads,
                                            precision="bfloat16" if variant == "scorer-bf16" else "float32")
        return scorer.score, time.perf_counter() - started
    if variant == "onnxruntime":
        from astrodag.models.onnx_export import onnx_session, score_onnx
        from astrodag.supernova.realbogus.model import export_realbogus_onnx

        export_realbogus_onnx(model_dir / "model.pt", None, model_dir / "model.onnx", check=False)
        session = onnx_session(model_dir / "model.onnx", threads=threads)
        return (lambda batch: score_onnx(session, batch)), time.perf_counter() - started
    layout = torch.contiguous_format if variant == "float32" else torch.channels_last
    model = model.to(memory_format=layout)
    if variant == "jit":
        example = torch.zeros(8, 3, 63, 63).contiguous(memory_format=layout)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated, and the input checks trace as constants
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    elif variant == "compile":
        model = torch.compile(model, dynamic=False)

    def predict(batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch).contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bfloat16"):
            return torch.sigmoid(model(inputs).float()).numpy()

    if variant == "compile":
        predict(np.zeros((8, 3, 63, 63), np.float32))  # compiling happens on the first call
    return predict, time.perf_counter() - started


def run_one(predict, data, batch: int, total: int, repeats: int):
    """Fastest of ``repeats`` timed passes over ``total`` triplets; scores and peak memory (MiB)."""
    import numpy as np

    best = float("inf")
    with PeakMemory() as memory:
        predict(data[:batch])  # warm-up: lazy initialisation, oneDNN primitive caches
        for _ in range(repeats):
            started = time.perf_counter()
            scores = [predict(data[start:start + batch]) for start in range(0, total, batch)]
            best = min(best, time.perf_counter() - started)
    return total / best, np.concatenate(scores), memory.mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["braai", "resnet18"])
    parser.add_argument("--full-resnet", action="store_true", help="also the full-resolution ResNet-18 (slow)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256, 1024, 4096])
    parser.add_argument("--triplets", type=int, default=1024, help="triplets per timed pass (at least one batch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="braai only, batches 64 and 1024, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_sizes, args.repeats = ["braai"], [64, 1024], 1
    if args.full_resnet and "resnet18-full" not in args.models:
        args.models.append("resnet18-full")
    # Thread pools are sized before torch loads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import numpy as np
    import torch

    from astrodag.models.registry import build_model
    from astrodag.supernova.realbogus.model import save_realbogus_model
    from astrodag.training.precision import resolve_precision

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    largest = max(max(args.batch_sizes), args.triplets)
    data = np.clip(rng.normal(0.0, 1.0, (largest, 3, 63, 63)), -30, 30).astype(np.float32)
    print(f"precision 'auto' (the scorer's and the service's default) is {resolve_precision('auto', 'cpu')} "
          "on this CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"target {TARGET_PER_SECOND:,.0f} triplets/s (10 M alerts in 1 h)")
    print(f"{'model':<14} {'variant':<14} {'batch':>6} {'triplets/s':>11} {'x target':>9} {'peak MiB':>9} "
          f"{'setup s':>8} {'max |dp|':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            architecture, options = MODELS[name]
            model_dir = Path(tmp) / name
            torch.manual_seed(0)
            save_realbogus_model(build_model(architecture, options),
                                 {"architecture": architecture, "options": options, "input_shape": [3, 63, 63],
                                  "normalisation": {"method": "robust", "clip": 30.0}, "threshold": 0.5}, model_dir)
            reference: dict[int, np.ndarray] = {}
            for variant in args.variants:
                try:
                    predict, setup = _predictor(variant, architecture, options, model_dir, args.threads)
                except Exception as error:  # an optional accelerator failing is a result to report, not a crash
                    print(f"{name:<14} {variant:<14} {'':>6} failed to set up: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:80]}")
                    continue
                for batch in args.batch_sizes:
                    total = max(batch, args.triplets)
                    rate, scores, mib = run_one(predict, data, batch, total, args.repeats)
                    reference.setdefault(total, scores)
                    difference = float(np.max(np.abs(scores - reference[total])))
                    print(f"{name:<14} {variant:<14} {batch:>6} {rate:>11,.0f} {rate / TARGET_PER_SECOND:>9.2f} "
                          f"{mib:>9.0f} {setup:>8.1f} {difference:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
