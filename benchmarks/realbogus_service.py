"""Benchmark the real/bogus HTTP service: triplets scored per second under concurrent clients.

The service (``astrodag.supernova.realbogus.service.serve``) runs in its own process on 127.0.0.1, as
``astrodag supernova serve`` runs it; this process is the clients (``httpx`` on asyncio), so on one
machine both share its cores, as a broker feeding a co-located scorer would. For each number
of service workers (``--workers``, 1 and 2 by default: processes on one port, each with the model
and cores / workers torch threads), each batch
size (1 and 256 triplets of 3x63x63 float32 by default, sent as ``.npy`` bodies) and each
number of concurrent clients (1, 4, 16), the clients post for ``--seconds`` (at most
``--max-requests`` requests) after a short warm-up; the figures are triplets per second,
requests per second, latency percentiles (ms) and failed requests. Before that, the model
alone (``RealBogusScorer.score`` on batches of 256 in this process, no HTTP) gives the
ceiling the service approaches, and the CPU time per request of the server and of the
clients shows how the cores were shared. Peak memory is the sum of the server processes' peak
resident sets (``VmHWM``). Without ``--model`` a randomly initialised network of the chosen architecture
is scored (the speed does not depend on the weights).

Target: LSST sends about 10 million alerts a night; scoring them within an hour is
~2,800 triplets/s, here taken on one 2-core machine.

Usage::

    python benchmarks/realbogus_service.py                   # braai, workers 1 2, clients 1 4 16, batches 1 256
    python benchmarks/realbogus_service.py --quick           # 2 s per case, clients 1 4
    python benchmarks/realbogus_service.py --model results/supernova/realbogus/braai/seed0/model.pt
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 10_000_000 / 3600  # triplets per second: 10 million alerts within an hour
TARGET_TEXT = "target ~2,800 triplets/s (LSST's ~10 million alerts a night within an hour, one 2-core machine)"


def make_model(directory: Path, architecture: str, size: int) -> Path:
    """A randomly initialised (seeded) model saved as training saves one; returns model.pt."""
    import torch

    from astrodag.models.registry import build_model
    from astrodag.supernova.realbogus.model import save_realbogus_model

    torch.manual_seed(0)
    options = {"size": size} if architecture == "braai" else {}
    model = build_model(architecture, options)
    sidecar = {"architecture": architecture, "options": options, "input_shape": [3, size, size],
               "normalisation": {"method": "robust", "clip": 30.0}, "threshold": 0.5}
    return save_realbogus_model(model, sidecar, directory)["model"]


def model_alone(model_pt: Path, device: str, threads: int | None, forward_batch: int, precision: str,
                seconds: float) -> float:
    """Triplets per second of ``RealBogusScorer.score`` on batches of 256 (the service's forward passes), no HTTP."""
    import numpy as np

    from astrodag.supernova.realbogus.scoring import RealBogusScorer

    scorer = RealBogusScorer.from_files(model_pt, device=device, threads=threads, batch_size=forward_batch,
                                        precision=precision)
    batch = np.random.default_rng(0).normal(size=(256, *scorer.input_shape)).astype(np.float32)
    scorer.score(batch)  # warm-up (oneDNN kernels, CUDA context)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        scorer.score(batch)
        count += len(batch)
    return count / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_pt: Path, port: int, device: str, threads: int | None, precision: str, workers: int,
                 log: Path) -> subprocess.Popen:
    code = ("import sys; from astrodag.supernova.realbogus.service import serve; "
            f"serve({str(model_pt)!r}, port={port}, device={device!r}, threads={threads!r}, "
            f"precision={precision!r}, workers={workers}, log_level='warning')")
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the service exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).raise_for_status().json()
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit(f"the service did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers are children of the supervisor; Linux ``/proc``)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            children = Path(f"/proc/{pids[index]}/task/{pids[index]}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(child) for child in children]
        index += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants so far (Linux ``/proc``; NaN elsewhere)."""
    total = 0.0
    try:
        for member in process_tree(pid):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")
    return total


def peak_rss_mib(pid: int) -> float | None:
    """Sum of the peak resident sets (Linux ``VmHWM``) of a process and its descendants, MiB."""
    total = 0.0
    try:
        for member in process_tree(pid):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    except OSError:
        return None
    return total


async def load(url: str, body: bytes, batch: int, clients: int, seconds: float, max_requests: int,
               server_pid: int) -> dict:
    """``clients`` concurrent posters for ``seconds`` or ``max_requests`` requests in all.

    Also the CPU time the server and this client process spent per request, which shows how
    the machine's cores were shared between them.
    """
    import httpx
    import numpy as np

    headers = {"Content-Type": "application/x-npy"}
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def post() -> None:
            nonlocal failures
            started = time.perf_counter()
            try:
                response = await client.post("/score", content=body, headers=headers)
                ok = response.status_code == 200 and response.json()["count"] == batch
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

        await asyncio.gather(*(post() for _ in range(clients)))  # warm-up: one request per connection
        latencies.clear()
        sent = 0
        server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() - started < seconds and sent < max_requests:
                sent += 1
                await post()

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    done = max(len(latencies), 1)
    return {"triplets_per_s": len(latencies) * batch / elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "requests": len(latencies), "failed": failures,
            "server_cpu_ms": 1e3 * server_cpu / done, "client_cpu_ms": 1e3 * client_cpu / done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model.pt of a trained model (default: a random network)")
    parser.add_argument("--architecture", choices=("braai", "resnet18"), default="braai",
                        help="architecture of the random network (without --model)")
    parser.add_argument("--size", type=int, default=63, help="cut-out side of the random network")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="triplets per request")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each case")
    parser.add_argument("--max-requests", type=int, default=5000, help="most requests of each case")
    parser.add_argument("--device", default="auto", help="the service's torch device")
    parser.add_argument("--threads", type=int, help="the service's torch CPU threads (default: torch's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker processes of the service, one run each (threads default to cores / workers)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the service's precision (auto: bfloat16 on CPUs with native bfloat16, as served)")
    parser.add_argument("--quick", action="store_true", help="2 s per case, clients 1 and 4")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.clients = 2.0, [1, 4]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_pt = args.model or make_model(tmp / "model", args.architecture, args.size)
        overall = {}
        for workers in args.workers:
            overall[workers] = run_service(args, model_pt, workers, tmp)
        for workers, best in overall.items():
            print(f"{workers} worker(s): best {best:,.0f} triplets/s = {best / TARGET:.0%} of the target; "
                  f"{10_000_000 / best / 3600:.1f} h for 10 million triplets at that rate")


def run_service(args, model_pt: Path, workers: int, tmp: Path) -> float:
    """Start the service with ``workers`` processes, load it in every case, print the table; the best rate."""
    import numpy as np

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / f"server{workers}.log"
    threads = args.threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)
    process = start_server(model_pt, port, args.device, args.threads, args.precision, workers, log)
    try:
        health = wait_healthy(url, process, log)
        time.sleep(1.0 if workers > 1 else 0.0)  # the other workers finish loading
        idle_mib = peak_rss_mib(process.pid)
        shape = tuple(health["input_shape"])
        # Measured here, while the service is idle, with the same device, threads and forward passes.
        alone = model_alone(model_pt, health["device"], threads, health["forward_batch"], health["precision"],
                            seconds=min(args.seconds, 3.0))
        print(f"\n{workers} worker(s), model {health['architecture']} {shape}, device {health['device']} in "
              f"{health['precision']}, {os.cpu_count()} CPU cores, torch threads per worker {threads or 'default'}; "
              f"{TARGET_TEXT}")
        print(f"one worker's model alone (batches of 256 in forward passes of {health['forward_batch']}, no HTTP): "
              f"{alone:,.0f} triplets/s ({alone / TARGET:.0%} of the target)")
        print(f"{'batch':>6}{'clients':>8}{'triplets/s':>12}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
              f"{'p99 ms':>9}{'requests':>9}{'failed':>7}{'target':>8}{'srv CPU':>9}{'cli CPU':>9}"
              "  (CPU ms per request)")
        best = 0.0
        rng = np.random.default_rng(0)
        for batch in args.batches:
            buffer = io.BytesIO()
            np.save(buffer, rng.normal(size=(batch, *shape)).astype(np.float32))
            for clients in args.clients:
                figures = asyncio.run(load(url, buffer.getvalue(), batch, clients, args.seconds,
                                           args.max_requests, process.pid))
                best = max(best, figures["triplets_per_s"])
                print(f"{batch:>6}{clients:>8}{figures['triplets_per_s']:>12,.0f}{figures['requests_per_s']:>9,.0f}"
                      f"{figures['p50']:>9.1f}{figures['p95']:>9.1f}{figures['p99']:>9.1f}"
                      f"{figures['requests']:>9}{figures['failed']:>7}"
                      f"{figures['triplets_per_s'] / TARGET:>8.0%}{figures['server_cpu_ms']:>9.1f}"
                      f"{figures['client_cpu_ms']:>9.1f}")
        peak = peak_rss_mib(process.pid)
        print(f"server peak memory {peak:,.0f} MiB, all processes (after loading: {idle_mib:,.0f} MiB)" if peak
              else "server peak memory: unavailable (no /proc)")
        return best
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
