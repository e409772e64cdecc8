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

Errors are JSON ``{"detail": message}``: 413 for a body over the limit of its encoding (the
smaller of ``max_bytes`` and what ``max_batch`` triplets of the model can need, see
:class:`RequestLimits`; refused from its ``Content-Length`` before anything is read, or as soon
as a streamed body passes the limit), a JSON body with more numbers than ``max_batch`` triplets
(counted before it is parsed) or a batch over ``max_batch`` triplets; 503 with ``Retry-After``
when ``max_heavy`` large requests are already being handled; 422 for a wrong shape, dtype,
non-finite values, unreadable ``.npy``/FITS/JSON or missing form fields; 400 for a malformed
multipart body; 503 (from uvicorn) beyond :func:`serve`'s ``max_connections``. Bad input never gives a 500.

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
# JSON costs about 40 bytes of Python objects per number while it is parsed (a float and its list
# slot, then the array): 16 MiB of JSON peak near 200 MB, where 64 MiB of .npy stay under 200 MB.
DEFAULT_MAX_JSON_BYTES = 16 * 2 ** 20
DEFAULT_MAX_HEAVY = 2
DEFAULT_HEAVY_BYTES = 2 ** 20
DEFAULT_HEAVY_WAIT = 2.0
# Bytes beyond the triplets' own: .npy and FITS headers (2,880-byte blocks), multipart boundaries, JSON keys.
BODY_SLACK = 256 * 2 ** 10
# The longest repr of a float64 with its separator: "-1.2345678901234567e-123, ".
JSON_BYTES_PER_NUMBER = 32
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


def _too_large_message(limit: int, what: str) -> str:
    return (f"request body exceeds the limit of {limit} bytes ({limit / 2 ** 20:.1f} MiB) for {what}: "
            "send fewer triplets per request")


class RequestLimits:
    """How large a request body may be, by encoding, and how many large ones are handled at once.

    Before the model is known only ``max_bytes`` (and ``max_json_bytes`` for JSON) apply;
    :meth:`fit` then derives from the model's triplet shape ``(3, S, S)`` the most a body of
    ``max_batch`` triplets can need, so that a body that can only end in a 413 for its batch size is
    refused from its ``Content-Length`` before it is read or parsed:

    * ``.npy`` and multipart: ``max_batch * 3 * S * S * 8`` bytes (float64) plus ``BODY_SLACK``;
    * JSON: ``max_batch * 3 * S * S * JSON_BYTES_PER_NUMBER`` plus ``BODY_SLACK``, and at most
      ``max_batch * 3 * S * S + 16`` numbers, counted (by its commas) before it is parsed;

    each capped by ``max_bytes`` (JSON also by ``max_json_bytes``). A request whose body is over
    ``heavy_bytes`` (or of unknown length) needs one of ``max_heavy`` slots for as long as it is
    handled; one that finds none free within ``heavy_wait`` seconds gets 503 with ``Retry-After``.
    Small requests need no slot, so they are answered while large ones queue. A worker's request
    bodies thus hold at most about ``max_heavy`` times a large body's decoding peak plus
    ``max_connections * heavy_bytes``.
    """

    def __init__(self, max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_json_bytes: int = DEFAULT_MAX_JSON_BYTES, max_heavy: int = DEFAULT_MAX_HEAVY,
                 heavy_bytes: int = DEFAULT_HEAVY_BYTES, heavy_wait: float = DEFAULT_HEAVY_WAIT):
        if min(max_batch, max_bytes, max_json_bytes, max_heavy, heavy_bytes) < 1 or not heavy_wait >= 0:
            raise ValueError(f"request limits must be positive (heavy_wait >= 0), got max_batch={max_batch}, "
                             f"max_bytes={max_bytes}, max_json_bytes={max_json_bytes}, max_heavy={max_heavy}, "
                             f"heavy_bytes={heavy_bytes}, heavy_wait={heavy_wait}")
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes
        self.max_heavy = max_heavy
        self.heavy_bytes = heavy_bytes
        self.heavy_wait = float(heavy_wait)
        self.binary_bytes = max_bytes
        self.json_bytes = min(max_bytes, max_json_bytes)
        self.json_numbers: int | None = None
        self.heavy_active = 0
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    def fit(self, input_shape: tuple[int, ...]) -> None:
        """Derive the body limits from the model's triplet shape."""
        numbers = self.max_batch * int(np.prod(input_shape))
        self.binary_bytes = min(self.max_bytes, numbers * 8 + BODY_SLACK)
        self.json_bytes = min(self.max_bytes, self.max_json_bytes, numbers * JSON_BYTES_PER_NUMBER + BODY_SLACK)
        self.json_numbers = numbers + 16  # room for the three noise values of raw cut-outs

    def body_limit(self, content_type: str) -> int:
        """Largest body accepted for a ``Content-Type`` (its media type, lower case)."""
        return self.json_bytes if content_type == "application/json" else self.binary_bytes

    def as_dict(self) -> dict[str, Any]:
        """The limits and the heavy requests now being handled, for ``/health``."""
        return {"max_bytes": self.binary_bytes, "max_json_bytes": self.json_bytes,
                "max_json_numbers": self.json_numbers, "max_heavy": self.max_heavy, "heavy_bytes": self.heavy_bytes,
                "heavy_active": self.heavy_active}

    async def acquire(self) -> bool:
        """Take a slot for a heavy request, waiting up to ``heavy_wait`` seconds; False if none came free."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_heavy)
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once (wait_for(..., 0) would give up on it)
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.heavy_wait)
            except TimeoutError:
                return False
        self.heavy_active += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        self.heavy_active -= 1
        self._slots.release()


class BodyLimit:
    """ASGI middleware applying :class:`RequestLimits`: 413 for bodies over the limit, 503 when busy.

    A declared ``Content-Length`` over the limit of the request's ``Content-Type`` is answered at
    once, before any of the body is read; a body without one (chunked) is counted as it streams
    in, and the request fails with 413 as soon as it passes the limit, so no oversize body is ever
    held whole. A large body (or a chunked one) first waits for a heavy-request slot.

    Parameters
    ----------
    app : ASGI application
    limits : RequestLimits
    """

    def __init__(self, app, limits: RequestLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        what = content_type or "a body without Content-Type"
        limit = self.limits.body_limit(content_type)
        declared = headers.get(b"content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else None
        if declared is not None and declared > limit:
            # "Connection: close": the unread body must not be taken for the next request.
            await _refuse(scope, receive, send, 413, _too_large_message(limit, what))
            return
        heavy = (declared or 0) > self.limits.heavy_bytes or (declared is None and b"transfer-encoding" in headers)
        if heavy and not await self.limits.acquire():
            wait = max(1, round(self.limits.heavy_wait))
            await _refuse(scope, receive, send, 503,
                          f"busy: {self.limits.max_heavy} large requests (over {self.limits.heavy_bytes} bytes) "
                          f"are being handled; retry in {wait} s or send smaller requests",
                          {"Retry-After": str(wait)})
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the endpoint's body read, so FastAPI answers it as JSON.
                    raise HTTPException(status_code=413, detail=_too_large_message(limit, what),
                                        headers={"Connection": "close"})
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if heavy:
                self.limits.release()


async def _refuse(scope, receive, send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer ``status`` with ``{"detail": message}`` without reading the body (and close the connection)."""
    response = JSONResponse({"detail": message}, status_code=status, headers={"Connection": "close", **(headers or {})})
    await response(scope, receive, send)


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

    def __init__(self, scorer, model_pt: Path, limits: RequestLimits):
        self.scorer = scorer
        self.model_pt = model_pt
        self.limits = limits
        self.max_batch = limits.max_batch
        self.batcher = Batcher(scorer, scorer.batch_size)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "worker_pid": os.getpid(), "model": str(self.model_pt),
                "architecture": self.scorer.sidecar["architecture"],
                "threshold": self.scorer.threshold, "input_shape": list(self.scorer.input_shape),
                "normalisation": self.scorer.normalisation, "device": str(self.scorer.device),
                "precision": self.scorer.precision, "forward_batch": self.scorer.batch_size,
                "max_batch": self.max_batch, **self.limits.as_dict()}

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
        # Counted before parsing: a JSON number list costs about 40 bytes per number once parsed.
        numbers = self.limits.json_numbers
        if numbers is not None and body.count(b",") + 1 > numbers:
            raise HTTPException(status_code=413, detail=f"JSON body holds more than {numbers} numbers, more than "
                                                        f"{self.max_batch} triplets need: split the batch")
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
        for key in list(payload):
            value = payload.pop(key)  # each parsed list is freed as soon as it is an array
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
               forward_batch: int | None = None, precision: str = "auto", max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
               max_heavy: int = DEFAULT_MAX_HEAVY, heavy_bytes: int = DEFAULT_HEAVY_BYTES,
               heavy_wait: float = DEFAULT_HEAVY_WAIT) -> FastAPI:
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
        Largest request body (413 beyond); lower when ``max_batch`` triplets of the model need less
        (see :class:`RequestLimits`).
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
    max_json_bytes : int, default 16 MiB
        Largest JSON body (JSON is for a few triplets or raw cut-outs; send .npy for batches).
    max_heavy : int, default 2
        Requests over ``heavy_bytes`` handled at once; more wait up to ``heavy_wait`` seconds, then get 503.
    heavy_bytes : int, default 1 MiB
        Bodies over this size (or of unknown length) are heavy.
    heavy_wait : float, default 2.0
        Seconds a heavy request waits for a slot.

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    ValueError
        For non-positive limits or an unknown ``precision``.
    """
    from astrodag.training.precision import check_precision

    limits = RequestLimits(max_batch, max_bytes, max_json_bytes, max_heavy, heavy_bytes, heavy_wait)
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
        limits.fit(scorer.input_shape)
        service = app.state.service = _Service(scorer, model_pt, limits)
        log.info("real/bogus service: %s", json.dumps(service.health()))
        try:
            yield
        finally:
            service.batcher.close()

    app = FastAPI(title="astrodag real/bogus scorer", lifespan=lifespan,
                  description="P(real) of (science, reference, difference) triplets; "
                              "see astrodag.supernova.realbogus.service.")
    app.add_middleware(BodyLimit, limits=limits)

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
          log_level: str = "info", precision: str = "auto", workers: int = 1,
          max_json_bytes: int = DEFAULT_MAX_JSON_BYTES, max_heavy: int = DEFAULT_MAX_HEAVY) -> None:
    """Run the scoring service with uvicorn until interrupted.

    A model that cannot be loaded stops the start-up with the loading error (e.g.
    :class:`~astrodag.errors.InputDataError`).

    Parameters
    ----------
    model_pt, model_json, max_batch, max_bytes, device, threads, forward_batch, precision, max_json_bytes, max_heavy
        As for :func:`create_app`.
    host : str, default "127.0.0.1"
        Interface to listen on (``0.0.0.0`` for all; the service has no authentication).
    port : int, default 8000
    max_connections : int, default 64
        Concurrent connections and requests (per worker); beyond it uvicorn answers 503.
        Request bodies then hold at most about ``max_heavy`` large bodies being decoded plus
        ``max_connections`` x 1 MiB per worker (see :class:`RequestLimits`).
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
               "forward_batch": forward_batch, "precision": precision, "max_json_bytes": max_json_bytes,
               "max_heavy": max_heavy}
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
