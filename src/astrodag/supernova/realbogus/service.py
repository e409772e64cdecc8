"""Real/bogus scoring over HTTP: a FastAPI service around :class:`RealBogusScorer`.

:func:`create_app` builds the application; the model is loaded once, when the server starts
(the lifespan), and shared by all requests. :func:`serve` runs it with uvicorn
(``astrodag supernova serve --model model.pt``).

Endpoints
---------
``GET /health``
    ``status``, the answering worker's ``worker_pid``, the model file, architecture, decision
    threshold, input shape, normalisation, device, precision (resolved: ``float32`` or ``bfloat16``; ``auto``,
    the default, is bfloat16 on a CPU with native bfloat16 instructions), forward batch and the request limits.
``POST /score``
    P(real) of one triplet or a batch, chosen by the request's ``Content-Type``:

    * ``multipart/form-data`` with either a file field ``triplets`` (a ``.npy`` array) or three
      file fields ``science``, ``reference``, ``difference`` (FITS cut-outs of one candidate,
      first image HDU each, normalised by :func:`~astrodag.supernova.realbogus.scoring.prepare_triplet`
      exactly as the training data were; for a model with the ``sky`` normalisation each file's
      header card ``NOISE`` gives its image's pixel noise), e.g. ``curl -F science=@sci.fits
      -F reference=@ref.fits -F difference=@diff.fits URL/score``;
    * ``application/json``: ``{"triplets": [...]}`` (nested lists) or ``{"science": [[...]],
      "reference": [[...]], "difference": [[...]]}`` (raw 2-D cut-outs, normalised as above), with
      ``"noise": [science, reference, difference]`` (each image's pixel noise, the ``NOISE*``
      cards of ``difference.fits``) for a ``sky`` model;
    * anything else: the body is a ``.npy`` file (``np.save`` output), e.g.
      ``curl --data-binary @batch.npy -H 'Content-Type: application/x-npy' URL/score``.

    Arrays are floating point (float32; float64 is cast) of shape ``(3, S, S)`` or
    ``(n, 3, S, S)`` (channels science, reference, difference), already normalised per channel
    like the training set (``astrodag.supernova.imaging.triplets.normalise``), finite, and ``(3, S, S)``
    must be the model's input shape; FITS and raw cut-outs are ``S x S`` and may hold NaN
    (masked pixels, 0 after normalisation). The answer is ``{"count", "scores", "is_real",
    "threshold"}``; ``scores`` and ``is_real`` (``score >= threshold``) are lists in the order
    of the batch.

Errors are JSON ``{"detail": message}``: 413 for a body over ``max_bytes`` (refused from its
``Content-Length`` before anything is read, or as soon as a streamed body passes the limit)
or a batch over ``max_batch`` triplets; 422 for a wrong shape, dtype, non-finite values,
unreadable ``.npy``/FITS/JSON or missing form fields; 400 for a malformed multipart body;
503 (from uvicorn) beyond :func:`serve`'s ``max_connections``. Bad input never gives a 500.

Decoding runs in the thread pool and scoring in one scoring thread (:class:`Batcher`), so the
event loop keeps accepting and reading requests while a batch is scored; requests that queue
up during a model call are scored together in the next one.

On a CPU, ``serve(..., workers=N)`` runs N processes on one port (uvicorn's workers), each with
its own copy of the model and ``cores // N`` torch threads: receiving and decoding a request's
body then overlaps with another worker's model call instead of competing with its threads
(braai in bfloat16 on 2 cores shared with the clients, batches of 256: about 2,700 triplets/s
with one worker of 2 threads, 2,900-3,150/s with 2 workers of 1 thread; see
``benchmarks/realbogus_service.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_BYTES = 64 * 2 ** 20  # 1024 float32 triplets of 3x63x63 are 49 MiB
FITS_FIELDS = ("science", "reference", "difference")
NPY_MAGIC = b"\x93NUMPY"
_STOP = object()  # tells the scoring thread to finish
# create_app's options for the worker processes of serve(workers > 1), as JSON.
OPTIONS_VARIABLE = "ASTRODAG_SERVICE_OPTIONS"

_BINARY = {"type": "string", "format": "binary"}
_SCORE_BODY = {"requestBody": {"required": True, "content": {
    "application/x-npy": {"schema": _BINARY},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "triplets": _BINARY, **{name: _BINARY for name in FITS_FIELDS}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "triplets": {"type": "array"}, **{name: {"type": "array"} for name in FITS_FIELDS}}}},
}}}


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


def _too_large_message(max_bytes: int) -> str:
    return (f"request body exceeds the limit of {max_bytes} bytes ({max_bytes / 2 ** 20:.1f} MiB): "
            "send fewer triplets per request")


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is answered at once, before any of the body
    is read; a body without one (chunked) is counted as it streams in, and the request fails
    with 413 as soon as it passes the limit, so no oversize body is ever held whole.

    Parameters
    ----------
    app : ASGI application
    max_bytes : int
        Largest accepted body.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # "Connection: close": the unread body must not be taken for the next request.
            response = JSONResponse({"detail": _too_large_message(self.max_bytes)}, status_code=413,
                                    headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body read, so FastAPI answers it as JSON.
                    raise HTTPException(status_code=413, detail=_too_large_message(self.max_bytes),
                                        headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)


def decode_npy(data: bytes, what: str = "body") -> np.ndarray:
    """A ``.npy`` file's array; 422 when ``data`` is not one.

    The header is read first and must account for exactly the bytes that follow, so a
    header declaring a huge array is refused before anything is allocated; object arrays
    (pickles) are refused too.
    """
    if not data.startswith(NPY_MAGIC):
        raise _unprocessable(f"{what} is not a .npy file (it does not start with the NumPy magic \\x93NUMPY); "
                             "send np.save output, or multipart/JSON as described at /docs")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(stream)
    except ValueError as error:
        raise _unprocessable(f"{what} is not a readable .npy file: {error}") from error
    if dtype.hasobject:
        raise _unprocessable(f"{what} holds Python objects (dtype {dtype}); send a float32 array")
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if declared != len(data) - stream.tell():
        raise _unprocessable(f"{what} is not a readable .npy file: its header declares shape {shape} of {dtype} "
                             f"({declared} bytes) but {len(data) - stream.tell()} bytes follow")
    try:
        view = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=stream.tell())
        # A copy: the view of the request's bytes is read-only.
        return np.array(view.reshape(shape, order="F" if fortran_order else "C"))
    except ValueError as error:  # e.g. a zero-size dtype
        raise _unprocessable(f"{what} is not a readable .npy file: {error}") from error


def read_fits_cutout(data: bytes, field: str, shape: tuple[int, int]) -> tuple[np.ndarray, float | None]:
    """The first image HDU of an uploaded FITS file as a float64 cut-out of ``shape``, and its ``NOISE`` card.

    422 for anything else, or a ``NOISE`` card that is not a number.
    The image's shape is checked from its header before its data are read, and compressed
    files are refused, so a small upload cannot unpack into a huge image.
    """
    from astropy.io import fits

    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh":
        raise _unprocessable(f"{field}: send the FITS file uncompressed (cut-outs are small)")
    try:
        with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False) as hdul:
            hdu = next((hdu for hdu in hdul if hdu.is_image and hdu.shape), None)
            if hdu is None:
                raise _unprocessable(f"{field}: the FITS file has no image HDU with data")
            if tuple(hdu.shape) != tuple(shape):
                raise _unprocessable(f"{field}: expected a cut-out of shape {tuple(shape)} (the model's input), "
                                     f"got an image of shape {tuple(hdu.shape)}")
            image = np.array(hdu.data, dtype=np.float64)
            noise = hdu.header.get("NOISE")
    except HTTPException:
        raise
    except Exception as error:  # astropy raises many types on corrupt bytes; any of them is bad input
        raise _unprocessable(f"{field}: not a readable FITS file ({type(error).__name__}: {error})") from error
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float))):
        raise _unprocessable(f"{field}: the NOISE card must be a number, got {noise!r}")
    return image, None if noise is None else float(noise)


class Batcher:
    """Runs the model in one thread; requests that arrive while it is busy are scored together.

    A batch of one costs about as much as a batch of 16 on a CPU (braai: 3.7 ms against 7.8 ms
    on 2 cores), so scoring the requests queued during a model call in one next call lifts the
    throughput of many small concurrent requests without adding latency when the service is
    idle (nothing waits for a batch to fill). One thread also means one model call at a time:
    torch already spreads one call over every core it was given.

    Parameters
    ----------
    scorer : RealBogusScorer
    max_triplets : int
        Most triplets merged into one call; the service uses the scorer's forward batch, as
        merging beyond one forward pass gains nothing and keeps the first requests waiting.
        A single larger request is still scored whole (in several forward passes).
    """

    def __init__(self, scorer, max_triplets: int):
        self.scorer = scorer
        self.max_triplets = max_triplets
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="realbogus-scorer", daemon=True)
        self._thread.start()

    async def score(self, batch: np.ndarray) -> np.ndarray:
        """P(real) of a checked ``(n, 3, S, S)`` float32 batch, computed in the scoring thread."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((batch, future, loop))
        return await future

    def close(self) -> None:
        """Stop the scoring thread after the requests already queued."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        carried = None
        while True:
            item = carried if carried is not None else self._queue.get()
            carried = None
            if item is _STOP:
                return
            items, total = [item], len(item[0])
            while total < self.max_triplets:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or total + len(nxt[0]) > self.max_triplets:
                    carried = nxt  # handled in the next round, keeping the arrival order
                    break
                items.append(nxt)
                total += len(nxt[0])
            self._score(items)

    def _score(self, items: list) -> None:
        batches = [batch for batch, _, _ in items]
        try:
            scores = self.scorer.score(batches[0] if len(batches) == 1 else np.concatenate(batches))
        except Exception as error:  # handed to every waiting request, which then answers 500
            for _, future, loop in items:
                loop.call_soon_threadsafe(_settle, future, None, error)
            return
        start = 0
        for batch, future, loop in items:
            loop.call_soon_threadsafe(_settle, future, scores[start:start + len(batch)], None)
            start += len(batch)


def retain_freed_memory() -> bool:
    """Keep freed heap memory in the process instead of returning it to the system (glibc only).

    The model runs in the scoring thread, whose glibc malloc arena hands the tens of MB of
    activations of every forward pass back to the kernel (``madvise``) as soon as they are
    freed, so the next pass page-faults them in again: braai's forward passes of 64 took
    1.6 times as long as in the main thread (31 against 19 ms on 2 cores). Raising
    ``M_MMAP_THRESHOLD`` to its maximum (32 MiB) and ``M_TRIM_THRESHOLD`` to 1 GiB keeps them;
    the price is that the resident set stays at its peak. Returns False where there is no
    glibc ``mallopt`` (macOS, musl) or it refuses the values.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 2 ** 20)) and bool(mallopt(m_trim_threshold, 2 ** 30))


def _settle(future: asyncio.Future, result, error) -> None:
    # A request whose client went away has a cancelled future: nothing to deliver.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Service:
    """The loaded scorer and the request handling that needs it (kept in ``app.state.service``)."""

    def __init__(self, scorer, model_pt: Path, max_batch: int, max_bytes: int):
        self.scorer = scorer
        self.model_pt = model_pt
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.batcher = Batcher(scorer, scorer.batch_size)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "worker_pid": os.getpid(), "model": str(self.model_pt),
                "architecture": self.scorer.sidecar["architecture"],
                "threshold": self.scorer.threshold, "input_shape": list(self.scorer.input_shape),
                "normalisation": self.scorer.normalisation, "device": str(self.scorer.device),
                "precision": self.scorer.precision, "forward_batch": self.scorer.batch_size,
                "max_batch": self.max_batch, "max_bytes": self.max_bytes}

    def batch(self, array: np.ndarray, what: str = "triplets") -> np.ndarray:
        """``array`` checked by the scorer (dtype, shape, finite values) as a float32 batch.

        Raises
        ------
        fastapi.HTTPException
            413 for more than ``max_batch`` triplets, 422 for anything the scorer refuses.
        """
        count = len(array) if array.ndim == 4 else 1
        if count > self.max_batch:
            raise HTTPException(status_code=413, detail=f"{what}: {count} triplets exceed the limit of "
                                                        f"{self.max_batch} per request; split the batch")
        try:
            # float64 values beyond the float32 range become inf in the cast, which the check refuses.
            with np.errstate(over="ignore"):
                return self.scorer.check(array)
        except ValueError as error:
            raise _unprocessable(f"{what}: {error}") from error

    def from_cutouts(self, cutouts: dict[str, np.ndarray], noise=None) -> np.ndarray:
        """Normalise raw (science, reference, difference) cut-outs (and each image's noise) into a one-triplet batch."""
        from astrodag.supernova.realbogus.scoring import prepare_triplet

        try:
            triplet = prepare_triplet(*(cutouts[name] for name in FITS_FIELDS), **self.scorer.normalisation,
                                      noise=noise)
        except ValueError as error:
            raise _unprocessable(f"cannot prepare the cut-outs: {error}") from error
        return self.batch(triplet, "cut-outs")

    def from_npy(self, body: bytes, what: str = "body") -> np.ndarray:
        return self.batch(decode_npy(body, what), what)

    def from_json(self, body: bytes) -> np.ndarray:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            raise _unprocessable(f"body is not valid JSON: {error}") from error
        if not isinstance(payload, dict) or not (set(payload) == {"triplets"}
                                                 or set(payload) - {"noise"} == set(FITS_FIELDS)):
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise _unprocessable(f"JSON must be an object with the key 'triplets' or the keys "
                                 f"{', '.join(FITS_FIELDS)} (and 'noise'); got {keys}")
        arrays = {}
        for key, value in payload.items():
            try:
                arrays[key] = np.array(value, dtype=np.float64)
            except (ValueError, TypeError) as error:
                raise _unprocessable(f"{key}: not a rectangular array of numbers ({error})") from error
        if "triplets" in arrays:
            return self.batch(arrays["triplets"])
        return self.from_cutouts({name: arrays[name] for name in FITS_FIELDS}, arrays.get("noise"))

    def from_form(self, files: dict[str, bytes]) -> np.ndarray:
        if set(files) == {"triplets"}:
            return self.from_npy(files["triplets"], "triplets")
        if set(files) == set(FITS_FIELDS):
            shape = tuple(self.scorer.input_shape[1:])
            read = {name: read_fits_cutout(files[name], name, shape) for name in FITS_FIELDS}
            noise = [read[name][1] for name in FITS_FIELDS]
            return self.from_cutouts({name: read[name][0] for name in FITS_FIELDS},
                                     None if None in noise else noise)
        raise _unprocessable(f"form fields {sorted(files)}: send a file 'triplets' (.npy) or the three files "
                             f"{', '.join(FITS_FIELDS)} (FITS)")

    async def score(self, batch: np.ndarray) -> dict[str, Any]:
        scores = (await self.batcher.score(batch)).astype(float)
        threshold = self.scorer.threshold
        return {"count": len(scores), "scores": scores.tolist(),
                "is_real": (scores >= threshold).tolist(), "threshold": threshold}


async def _form_files(request: Request) -> dict[str, bytes]:
    """The file parts of a multipart body by field name (plain text fields are refused)."""
    form = await request.form(max_files=len(FITS_FIELDS), max_fields=len(FITS_FIELDS))
    try:
        files = {}
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise _unprocessable(f"form field {name!r} must be a file upload, not a text value")
            if name in files:
                raise _unprocessable(f"form field {name!r} is given twice")
            files[name] = await value.read()
        return files
    finally:
        await form.close()


def create_app(model_pt: str | Path, model_json: str | Path | None = None, max_batch: int = DEFAULT_MAX_BATCH,
               max_bytes: int = DEFAULT_MAX_BYTES, device: str = "auto", threads: int | None = None,
               forward_batch: int | None = None, precision: str = "auto") -> FastAPI:
    """The scoring service (see the module notes); the model loads when the server starts.

    Parameters
    ----------
    model_pt : str or Path
        The trained network's ``model.pt`` (state dict).
    model_json : str or Path, optional
        Its sidecar (default: ``model_pt`` with the suffix ``.json``).
    max_batch : int, default 1024
        Most triplets per request (413 beyond).
    max_bytes : int, default 64 MiB
        Largest request body (413 beyond).
    device : str, default "auto"
        Torch device; ``auto`` picks CUDA when present.
    threads : int, optional
        Torch CPU threads.
    forward_batch : int, optional
        Triplets per forward pass; default 64 on a CPU (braai on 2 cores: about 2,050
        triplets/s in passes of 16-64, 1,250/s at 256, 1,000/s at 1024, as the activations
        leave the caches), 1024 on a GPU.
    precision : {"auto", "float32", "bfloat16"}, default "auto"
        As for :class:`~astrodag.supernova.realbogus.scoring.RealBogusScorer`: ``auto`` is bfloat16 on a CPU
        with AVX512-BF16 or AMX-BF16 and float32 elsewhere (GPUs included); ``/health``
        reports the resolved value.

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    ValueError
        For non-positive limits or an unknown ``precision``.
    """
    from astrodag.training.precision import check_precision

    if max_batch < 1 or max_bytes < 1:
        raise ValueError(f"max_batch and max_bytes must be positive, got {max_batch} and {max_bytes}")
    check_precision(precision)
    model_pt = Path(model_pt)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from astrodag.supernova.realbogus.scoring import RealBogusScorer
        from astrodag.training.seeding import select_device

        if not retain_freed_memory():
            log.info("glibc mallopt unavailable: freed memory goes back to the system after every model call")
        torch_device = select_device(device)
        batch_size = forward_batch or (1024 if torch_device.type == "cuda" else 64)
        try:
            scorer = await run_in_threadpool(RealBogusScorer.from_files, model_pt, model_json,
                                             device=str(torch_device), threads=threads, batch_size=batch_size,
                                             precision=precision)
        except Exception as error:
            app.state.startup_error = error  # for serve() to report once uvicorn has given up
            raise
        service = app.state.service = _Service(scorer, model_pt, max_batch, max_bytes)
        log.info("real/bogus service: %s", json.dumps(service.health()))
        try:
            yield
        finally:
            service.batcher.close()

    app = FastAPI(title="astrodag real/bogus scorer", lifespan=lifespan,
                  description="P(real) of (science, reference, difference) triplets; "
                              "see astrodag.supernova.realbogus.service.")
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    @app.get("/health")
    async def health(request: Request) -> dict:
        """The loaded model and the request limits."""
        return request.app.state.service.health()

    @app.post("/score", openapi_extra=_SCORE_BODY)
    async def score(request: Request) -> JSONResponse:
        """P(real) of a triplet or a batch (.npy, FITS cut-outs or JSON; see the module notes)."""
        service: _Service = request.app.state.service
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            files = await _form_files(request)
            batch = await run_in_threadpool(service.from_form, files)
        elif content_type == "application/json":
            batch = await run_in_threadpool(service.from_json, await request.body())
        else:
            batch = await run_in_threadpool(service.from_npy, await request.body())
        return JSONResponse(await service.score(batch))

    return app


def app_from_environment() -> FastAPI:
    """The application of one worker process of :func:`serve` (options in ``ASTRODAG_SERVICE_OPTIONS``)."""
    return create_app(**json.loads(os.environ[OPTIONS_VARIABLE]))


def serve(model_pt: str | Path, host: str = "127.0.0.1", port: int = 8000, model_json: str | Path | None = None,
          max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int = DEFAULT_MAX_BYTES, device: str = "auto",
          threads: int | None = None, forward_batch: int | None = None, max_connections: int = 64,
          log_level: str = "info", precision: str = "auto", workers: int = 1) -> None:
    """Run the scoring service with uvicorn until interrupted.

    A model that cannot be loaded stops the start-up with the loading error (e.g.
    :class:`~astrodag.errors.InputDataError`).

    Parameters
    ----------
    model_pt, model_json, max_batch, max_bytes, device, threads, forward_batch, precision
        As for :func:`create_app`.
    host : str, default "127.0.0.1"
        Interface to listen on (``0.0.0.0`` for all; the service has no authentication).
    port : int, default 8000
    max_connections : int, default 64
        Concurrent connections and requests (per worker); beyond it uvicorn answers 503.
        Together with ``max_bytes`` it bounds the memory held by request bodies (64 x 64 MiB at
        most per worker).
    log_level : str, default "info"
        uvicorn's log level.
    workers : int, default 1
        Worker processes sharing the port, each loading the model once. With more than one,
        ``threads`` defaults to the CPU cores divided among them (at least 1).
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    options = {"model_pt": str(model_pt), "model_json": None if model_json is None else str(model_json),
               "max_batch": max_batch, "max_bytes": max_bytes, "device": device, "threads": threads,
               "forward_batch": forward_batch, "precision": precision}
    # lifespan="on": a model that fails to load stops the server instead of serving 500s.
    settings = {"host": host, "port": port, "log_level": log_level, "lifespan": "on",
                "limit_concurrency": max_connections}
    if workers > 1:
        from astrodag.supernova.realbogus.model import load_realbogus_model
        from astrodag.training.precision import check_precision

        check_precision(precision)
        # Loaded once here so that a bad model is one clear error, not workers failing in turn.
        load_realbogus_model(model_pt, model_json, "cpu")
        options["threads"] = threads or max(1, (os.cpu_count() or 1) // workers)
        os.environ[OPTIONS_VARIABLE] = json.dumps(options)
        uvicorn.run("astrodag.supernova.realbogus.service:app_from_environment", factory=True, workers=workers,
                    **settings)
        return
    app = create_app(**options)
    config = uvicorn.Config(app, **settings)
    try:
        uvicorn.Server(config).run()
    except SystemExit:
        # uvicorn exits when the lifespan fails; raise the cause (e.g. InputDataError) instead.
        error = getattr(app.state, "startup_error", None)
        if error is not None:
            raise error from None
        raise
