"""The real/bogus HTTP service, through a real uvicorn server on 127.0.0.1 and a real HTTP client."""

import contextlib
import gzip
import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from astropy.io import fits
from cli_helpers import parse, run_stage

from astrodag.errors import ConfigError, InputDataError
from astrodag.models.braai import BraaiCNN
from astrodag.supernova.realbogus.model import save_realbogus_model
from astrodag.supernova.realbogus.scoring import RealBogusScorer, prepare_triplet
from astrodag.supernova.realbogus.service import create_app
from astrodag.training import precision

SIZE = 31
MAX_BATCH = 16
MAX_BYTES = 512 * 1024
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    sidecar = {"architecture": "braai", "options": {"size": SIZE}, "input_shape": [3, SIZE, SIZE],
               "normalisation": {"method": "robust", "clip": 30.0}, "threshold": THRESHOLD}
    return save_realbogus_model(BraaiCNN(size=SIZE), sidecar, out)


@pytest.fixture(scope="module")
def scorer(model_files):
    return RealBogusScorer.from_files(model_files["model"], device="cpu", precision="float32")


@pytest.fixture(scope="module")
def url(model_files):
    # float32: the answers are compared with the float32 scorer to 1e-6, whatever the CPU offers.
    app = create_app(model_files["model"], max_batch=MAX_BATCH, max_bytes=MAX_BYTES, device="cpu",
                     precision="float32")
    with running(app) as address:
        yield address


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread; yields its URL."""
    # port 0: the OS picks a free port, read back from the listening socket (no race).
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _triplets(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(dtype)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _fits(image) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(image).writeto(buffer)
    return buffer.getvalue()


def _post_npy(client, array):
    return client.post("/score", content=_npy(array), headers={"Content-Type": "application/x-npy"})


def _cutouts(seed=1):
    rng = np.random.default_rng(seed)
    science = rng.normal(100.0, 5.0, (SIZE, SIZE))
    science[SIZE // 2, SIZE // 2] += 500.0
    reference = rng.normal(80.0, 4.0, (SIZE, SIZE))
    difference = rng.normal(0.0, 1.0, (SIZE, SIZE))
    difference[:3] = np.nan  # masked rows: normalised to 0, as in the training data
    return science, reference, difference


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["architecture"] == "braai" and body["threshold"] == THRESHOLD
    assert body["input_shape"] == [3, SIZE, SIZE] and body["max_batch"] == MAX_BATCH
    assert body["max_bytes"] == MAX_BYTES and body["device"] == "cpu" and body["forward_batch"] == 64
    assert body["precision"] == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_health_reports_the_resolved_auto_precision(model_files, monkeypatch, native):
    import asyncio

    async def health(app):
        async with app.router.lifespan_context(app):  # the server's start-up: loads the model
            return app.state.service.health()

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    auto = asyncio.run(health(create_app(model_files["model"], device="cpu")))  # precision "auto"
    assert auto["precision"] == ("bfloat16" if native else "float32")
    assert asyncio.run(health(create_app(model_files["model"], device="cpu", precision="bfloat16")))["precision"] \
        == "bfloat16"
    with pytest.raises(ValueError, match="precision must be 'auto', 'float32' or 'bfloat16'"):
        create_app(model_files["model"], precision="half")


def test_single_triplet(client, scorer):
    triplet = _triplets(1)[0]
    response = _post_npy(client, triplet)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 1 and body["threshold"] == THRESHOLD
    assert body["scores"] == pytest.approx(scorer.score(triplet).tolist(), abs=1e-6)
    assert body["is_real"] == [body["scores"][0] >= THRESHOLD]


def test_batch_as_multipart_float64_and_json(client, scorer):
    batch = _triplets(MAX_BATCH, seed=2, dtype=np.float64)
    expected = scorer.score(batch.astype(np.float32))
    upload = client.post("/score", files={"triplets": ("batch.npy", _npy(batch), "application/octet-stream")})
    assert upload.status_code == 200, upload.text
    assert upload.json()["count"] == MAX_BATCH
    assert upload.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    as_json = client.post("/score", json={"triplets": batch[:2].tolist()})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["scores"] == pytest.approx(expected[:2].tolist(), abs=1e-6)


def test_fits_and_json_cutouts_are_normalised_like_training(client, scorer):
    science, reference, difference = _cutouts()
    expected = scorer.score(prepare_triplet(science, reference, difference, **scorer.normalisation))
    files = {name: (f"{name}.fits", _fits(image), "application/fits")
             for name, image in zip(("science", "reference", "difference"), (science, reference, difference))}
    response = client.post("/score", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    # The same raw cut-outs as JSON (NaN is not JSON: masked pixels there are sent as null).
    payload = {name: np.where(np.isnan(image), None, image).tolist()
               for name, image in zip(("science", "reference", "difference"), (science, reference, difference))}
    as_json = client.post("/score", json=payload)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_sky_models_take_each_cutouts_noise_from_json_or_the_fits_noise_card(tmp_path):
    """A sky-normalised model needs the images' noise: JSON 'noise', or each FITS file's NOISE card."""
    torch.manual_seed(0)
    sidecar = {"architecture": "braai", "options": {"size": SIZE}, "input_shape": [3, SIZE, SIZE],
               "normalisation": {"method": "sky", "clip": 30.0}, "threshold": THRESHOLD}
    files = save_realbogus_model(BraaiCNN(size=SIZE), sidecar, tmp_path)
    app = create_app(files["model"], device="cpu", precision="float32")
    science, reference, difference = _cutouts()
    noise = [5.0, 4.0, 1.0]
    sky = RealBogusScorer.from_files(files["model"], device="cpu", precision="float32")
    expected = sky.score(prepare_triplet(science, reference, difference, "sky", 30.0, noise=noise))
    names = ("science", "reference", "difference")
    with running(app) as address, httpx.Client(base_url=address, timeout=30) as client:
        payload = {name: np.where(np.isnan(image), None, image).tolist()
                   for name, image in zip(names, (science, reference, difference))}
        missing = client.post("/score", json=payload)
        assert missing.status_code == 422 and "NOISESCI" in missing.json()["detail"]
        answer = client.post("/score", json={**payload, "noise": noise})
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
        upload = {}
        for name, image, level in zip(names, (science, reference, difference), noise):
            hdu = fits.PrimaryHDU(image)
            hdu.header["NOISE"] = level
            buffer = io.BytesIO()
            hdu.writeto(buffer)
            upload[name] = (f"{name}.fits", buffer.getvalue(), "application/fits")
        answer = client.post("/score", files=upload)
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)


def _send_head(url, content_type, length, body=b""):
    """Open a connection and send a POST /score head declaring ``length`` bytes, then ``body`` (part of them)."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(f"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
                       f"Content-Length: {length}\r\n\r\n".encode() + body)
    return connection


def _read_reply(connection) -> tuple[bytes, dict]:
    """The status line and the JSON body of the reply on ``connection`` (which it closes)."""
    reply = b""
    with connection:
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, json.loads(body)


def test_oversize_content_length_is_refused_before_the_body(url):
    # Declare a 1 GiB body and send none of it: the answer must come from the header alone.
    head, body = _read_reply(_send_head(url, "application/x-npy", 2 ** 30))
    assert head.startswith(b"HTTP/1.1 413")
    assert "exceeds the limit of 524288 bytes" in body["detail"]


def test_oversize_streamed_body_and_batch_are_refused(client):
    chunk = b"\x00" * (64 * 1024)
    streamed = client.post("/score", content=iter([chunk] * 12), headers={"Content-Type": "application/x-npy"})
    assert streamed.status_code == 413 and "exceeds the limit" in streamed.json()["detail"]
    too_many = _post_npy(client, _triplets(MAX_BATCH + 1))
    assert too_many.status_code == 413 and f"limit of {MAX_BATCH} per request" in too_many.json()["detail"]
    assert client.get("/health").status_code == 200  # the server is still fine


def _huge_header() -> bytes:
    """A .npy header declaring a million triplets, with no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1_000_000, 3, SIZE, SIZE)})
    return buffer.getvalue()  # the magic is part of what write_array_header_1_0 writes


def _garbage_fits(name):
    science, reference, difference = _cutouts()
    images = {"science": _fits(science), "reference": _fits(reference), "difference": _fits(difference)}
    images[name] = b"SIMPLE  = this is not FITS" + b"\x00" * 100
    return {key: (f"{key}.fits", value, "application/fits") for key, value in images.items()}


@pytest.mark.parametrize("request_kwargs, message", [
    ({"array": _triplets(1)[0][:, :-2, :-2]}, "must have shape (n, 3, 31, 31)"),
    ({"array": _triplets(2)[:, :2]}, "must have shape (n, 3, 31, 31)"),
    ({"array": np.where(np.arange(2)[:, None, None, None] == 1, np.nan, _triplets(2))}, "1 triplet(s) hold NaN"),
    ({"array": np.full((1, 3, SIZE, SIZE), 1e300)}, "NaN or infinite"),
    ({"array": np.zeros((1, 3, SIZE, SIZE), np.int32)}, "floating point"),
    ({"array": np.array([{"a": 1}], dtype=object)}, "holds Python objects"),
    ({"content": _huge_header()}, "declares shape (1000000, 3, 31, 31) of float32 (11532000000 bytes) but 0"),
    ({"content": b"\x89PNG garbage bytes"}, "not a .npy file"),
    ({"content": _npy(_triplets(1))[:200]}, "not a readable .npy file"),
    ({"json": {"triplets": [[1, 2], [3]]}}, "not a rectangular array"),
    ({"json": {"pixels": [1]}}, "key 'triplets'"),
    ({"content": b"{not json", "type": "application/json"}, "not valid JSON"),
    ({"content": b'{"triplets": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "type": "application/json"},
     "not valid JSON"),
    ({"files": _garbage_fits("reference")}, "reference: not a readable FITS file"),
    ({"files": {"science": ("s.fits", _fits(np.ones((SIZE, SIZE))), "application/fits")}}, "the three files"),
    ({"files": {k: (f"{k}.fits", _fits(np.ones((9, 9))), "application/fits")
                for k in ("science", "reference", "difference")}}, "science: expected a cut-out of shape (31, 31)"),
    ({"files": {k: (f"{k}.fits", _fits(np.ones((2, SIZE, SIZE))), "application/fits")
                for k in ("science", "reference", "difference")}}, "got an image of shape (2, 31, 31)"),
    ({"files": {k: (f"{k}.fits.gz", gzip.compress(_fits(np.ones((SIZE, SIZE)))), "application/fits")
                for k in ("science", "reference", "difference")}}, "send the FITS file uncompressed"),
])
def test_bad_input_is_422_with_a_clear_message(client, request_kwargs, message):
    if "array" in request_kwargs:
        array = request_kwargs["array"]
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        response = client.post("/score", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"})
    elif "files" in request_kwargs:
        response = client.post("/score", files=request_kwargs["files"])
    elif "json" in request_kwargs:
        response = client.post("/score", json=request_kwargs["json"])
    else:
        response = client.post("/score", content=request_kwargs["content"],
                               headers={"Content-Type": request_kwargs.get("type", "application/octet-stream")})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_concurrent_requests_are_all_answered(url, scorer):
    batches = [_triplets(1 + i % 4, seed=10 + i) for i in range(48)]

    def post(batch):
        with httpx.Client(base_url=url, timeout=60) as client:
            return _post_npy(client, batch)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(post, batches))
    assert [r.status_code for r in responses] == [200] * len(batches)
    for batch, response in zip(batches, responses):
        assert response.json()["scores"] == pytest.approx(scorer.score(batch).tolist(), abs=1e-6)


def test_serve_command(tmp_path, model_files, monkeypatch):
    called = {}
    monkeypatch.setattr("astrodag.supernova.realbogus.service.serve",
                        lambda model, **kwargs: called.update(kwargs, model=model))
    run_stage("supernova", "serve", "--model", model_files["model"], "--port", "8123", "--max-mb", "2")
    assert called["port"] == 8123 and called["max_bytes"] == 2 * 2 ** 20 and called["host"] == "127.0.0.1"
    assert called["max_connections"] == 64 and called["device"] == "auto" and called["precision"] == "auto"
    assert "max_batch" not in called  # the service's own default applies
    run_stage("supernova", "serve", "--model", model_files["model"], "--max-json-mb", "4", "--max-heavy", "3")
    assert called["max_json_bytes"] == 4 * 2 ** 20 and called["max_heavy"] == 3
    with pytest.raises(ConfigError, match="serve.max-heavy"):
        run_stage("supernova", "serve", "--model", model_files["model"], "--max-heavy", "0")
    run_stage("supernova", "serve", "--model", model_files["model"], "--precision", "bfloat16")
    assert called["precision"] == "bfloat16"
    assert called["workers"] == 1
    run_stage("supernova", "serve", "--model", model_files["model"], "--workers", "2")
    assert called["workers"] == 2
    with pytest.raises(ConfigError, match="serve.workers"):
        run_stage("supernova", "serve", "--model", model_files["model"], "--workers", "0")
    with pytest.raises(SystemExit):
        parse("supernova", "serve", "--model", model_files["model"], "--precision", "half")
    with pytest.raises(InputDataError, match="missing"):
        run_stage("supernova", "serve", "--model", tmp_path / "none.pt")


class _SlowScorer:
    """Records the size of each model call; the first call waits until released."""

    def __init__(self):
        self.calls, self.release = [], threading.Event()

    def score(self, batch):
        if not self.calls:
            self.release.wait(10)
        self.calls.append(len(batch))
        if np.isnan(batch).any():
            raise RuntimeError("model failure")
        return batch[:, 0, 0, 0].copy()


def test_batcher_merges_requests_queued_during_a_model_call():
    import asyncio

    from astrodag.supernova.realbogus.service import Batcher

    scorer = _SlowScorer()
    batcher = Batcher(scorer, max_triplets=8)
    batches = [np.full((n, 3, 2, 2), float(i), np.float32) for i, n in enumerate((1, 2, 3, 4, 2))]

    async def main():
        first = asyncio.create_task(batcher.score(batches[0]))
        await asyncio.sleep(0.05)  # the scoring thread is now blocked in the first call
        rest = [asyncio.create_task(batcher.score(batch)) for batch in batches[1:]]
        await asyncio.sleep(0.05)
        scorer.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    # 2 + 3 queued together (5 <= 8); adding 4 would pass 8, so 4 + 2 go in the next call.
    assert scorer.calls == [1, 5, 6]
    for i, (batch, result) in enumerate(zip(batches, results)):
        assert list(result) == [float(i)] * len(batch)

    async def failing():
        return await batcher.score(np.full((1, 3, 2, 2), np.nan, np.float32))

    with pytest.raises(RuntimeError, match="model failure"):
        asyncio.run(failing())
    batcher.close()
    assert not batcher._thread.is_alive()


def test_a_model_that_cannot_load_stops_the_server_with_its_error(tmp_path, model_files):
    from astrodag.supernova.realbogus.service import serve

    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    (tmp_path / "model.json").write_text(model_files["sidecar"].read_text())
    for workers in (1, 2):
        with pytest.raises(InputDataError, match="cannot load the model weights"):
            serve(tmp_path / "model.pt", port=0, device="cpu", log_level="critical", workers=workers)


def test_two_worker_processes_answer_on_one_port(model_files, scorer):
    """``astrodag supernova serve --workers 2`` as users start it: both workers load the model and score."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "astrodag", "supernova", "serve", "--model", str(model_files["model"]),
               "--port", str(port), "--workers", "2", "--device", "cpu", "--precision", "float32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        pids = set()
        with httpx.Client(base_url=url, timeout=30) as client:
            while len(pids) < 2:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, f"saw only the workers {pids}"
                try:
                    health = client.get("/health", headers={"Connection": "close"}).json()
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                assert health["precision"] == "float32"
                pids.add(health["worker_pid"])
            batch = _triplets(5, seed=7)
            answer = _post_npy(client, batch).json()
        assert process.pid not in pids
        np.testing.assert_allclose(answer["scores"], scorer.score(batch), atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_the_service_keeps_freed_memory_on_glibc():
    from astrodag.supernova.realbogus.service import retain_freed_memory

    assert retain_freed_memory()


# Derived from MAX_BATCH triplets of 3 x SIZE x SIZE (RequestLimits.fit): float64 .npy, and JSON at 32 bytes a number.
NUMBERS = MAX_BATCH * 3 * SIZE * SIZE
BINARY_LIMIT = NUMBERS * 8 + 256 * 1024
JSON_LIMIT = NUMBERS * 32 + 256 * 1024


@pytest.fixture(scope="module")
def derived_url(model_files):
    # Default max_bytes (64 MiB): the limits come from MAX_BATCH and the model's input shape.
    app = create_app(model_files["model"], max_batch=MAX_BATCH, device="cpu", precision="float32")
    with running(app) as address:
        yield address


def test_body_limits_follow_the_batch_limit_and_are_checked_before_reading(derived_url, scorer):
    with httpx.Client(base_url=derived_url, timeout=30) as client:
        health = client.get("/health").json()
        assert (health["max_bytes"], health["max_json_bytes"]) == (BINARY_LIMIT, JSON_LIMIT)
        # The largest allowed batch still passes, as float64 .npy and as JSON.
        batch = _triplets(MAX_BATCH, seed=5, dtype=np.float64)
        assert _post_npy(client, batch).status_code == 200
        answer = client.post("/score", json={"triplets": batch.tolist()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"] == pytest.approx(scorer.score(batch).tolist(), abs=1e-6)
        # More numbers than MAX_BATCH triplets hold: refused from a count of commas, before parsing.
        many = client.post("/score", content=b'{"triplets": [' + b"0," * (NUMBERS + 16) + b"0]}",
                           headers={"Content-Type": "application/json"})
        assert many.status_code == 413 and f"more than {NUMBERS + 16} numbers" in many.json()["detail"]
    # One byte over each encoding's limit, and no body sent: answered from the head alone.
    for content_type, limit in (("application/x-npy", BINARY_LIMIT), ("application/json", JSON_LIMIT),
                                ("multipart/form-data; boundary=x", BINARY_LIMIT)):
        head, body = _read_reply(_send_head(derived_url, content_type, limit + 1))
        assert head.startswith(b"HTTP/1.1 413"), (content_type, head)
        assert f"exceeds the limit of {limit} bytes" in body["detail"]


def test_heavy_requests_beyond_the_cap_get_503_while_small_ones_are_answered(model_files, scorer):
    app = create_app(model_files["model"], max_batch=MAX_BATCH, device="cpu", precision="float32",
                     max_heavy=1, heavy_bytes=64 * 1024, heavy_wait=0.3)
    heavy = _npy(_triplets(10, seed=7))  # 115 kB: over heavy_bytes
    small = _triplets(1, seed=8)  # 11.6 kB
    with running(app) as address, httpx.Client(base_url=address, timeout=30) as client:
        assert client.get("/health").json()["heavy_active"] == 0
        # A heavy request that sends half its body and stalls holds the only slot...
        stalled = _send_head(address, "application/x-npy", len(heavy), heavy[:len(heavy) // 2])
        deadline = time.monotonic() + 20
        while client.get("/health").json()["heavy_active"] != 1:
            assert time.monotonic() < deadline, "the stalled request never took its slot"
            time.sleep(0.02)
        # ...so another one gets 503 with Retry-After after waiting heavy_wait, its body unread...
        start = time.monotonic()
        head, body = _read_reply(_send_head(address, "application/x-npy", len(heavy)))
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
        assert "busy: 1 large requests" in body["detail"] and time.monotonic() - start >= 0.3
        # ...while a small request is answered at once.
        start = time.monotonic()
        answer = _post_npy(client, small)
        assert answer.status_code == 200 and time.monotonic() - start < 5
        assert answer.json()["scores"] == pytest.approx(scorer.score(small).tolist(), abs=1e-6)
        # The stalled request completes and frees its slot; the next heavy request is scored.
        stalled.sendall(heavy[len(heavy) // 2:])
        head, body = _read_reply(stalled)
        assert head.startswith(b"HTTP/1.1 200") and body["count"] == 10
        assert client.get("/health").json()["heavy_active"] == 0
        assert _post_npy(client, _triplets(10, seed=7)).status_code == 200
