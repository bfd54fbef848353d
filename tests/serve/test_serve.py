"""The HTTP server, exercised with real requests over loopback sockets.

Every server here listens on 127.0.0.1 with an ephemeral port, in a background thread (one test
starts the real ``serve`` entry point in a subprocess). Every socket has a timeout and every
loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import inspect
import io
import json
import logging
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import TinySegmenter
import torch
from PIL import Image
from torch import nn

_NEEDS_EXTRA = "the server needs the `serve` extra: pip install 'pspnet[serve]'"
for _module in ("fastapi", "uvicorn", "python_multipart"):
    pytest.importorskip(_module, reason=_NEEDS_EXTRA)

from pspnet.checkpoint import (  # noqa: E402
    CheckpointError,
    WeightsMeta,
    load_model,
)
from pspnet.config import ModelConfig, Preprocessing  # noqa: E402
from pspnet.engine.predict import to_tensor  # noqa: E402
from pspnet.inference import InferenceOptions  # noqa: E402
from pspnet.export import export_onnx, export_torchscript  # noqa: E402
from pspnet.inference import predict  # noqa: E402
from pspnet.serve import server as serve_server  # noqa: E402
from pspnet.serve import (  # noqa: E402
    ServeError,
    ServerThread,
    create_app,
    host_warning,
    serve,
    serve_from_args,
)

HOST = "127.0.0.1"
CLASSES = ("sky", "road", "tree")
IMAGE_HW = (37, 53)


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


def png_bytes(h: int = IMAGE_HW[0], w: int = IMAGE_HW[1], seed: int = 0, fmt: str = "PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _check_body(status: int, headers: dict[str, str], body: bytes) -> None:
    """No response ever shows a traceback; every error is JSON {"error": "..."}."""
    assert b"Traceback" not in body
    assert b'File "' not in body
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), (status, body)
        doc = json.loads(body)
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"], doc


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 20.0
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    _check_body(resp.status, hdrs, data)
    return resp.status, hdrs, data


def post_image(port: int, data: bytes, query: str = "", ctype: str = "image/png",
               timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
    return request(port, "POST", "/predict" + query, data, {"Content-Type": ctype}, timeout)


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "xYzBoundary42"
              ) -> tuple[bytes, str]:
    out = b""
    for name, filename, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection (bounded by ``timeout``)."""
    data = b""
    end = time.monotonic() + timeout
    for _ in range(10_000):
        left = end - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not piece:
            break
        data += piece
    return data


def parse_raw(resp: bytes) -> tuple[int, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert m, f"not an HTTP response: {resp[:200]!r}"
    ctype = re.search(rb"(?im)^content-type:\s*(\S+)", head)
    hdrs = {"content-type": ctype.group(1).decode() if ctype else ""}
    _check_body(int(m.group(1)), hdrs, body)
    return int(m.group(1)), body


def png_declaring(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width`` x ``height`` zeros: tiny on disk, huge when decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class GatedModel(nn.Module):
    """The real model behind a gate: forward waits until the test opens it; counts overlap."""

    def __init__(self, inner: nn.Module, fail: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.meta = inner.meta
        self.fail = fail
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.active = self.peak = self.calls = 0
        self.eval()

    def forward(self, x):  # noqa: ANN001, ANN201
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        self.entered.release()
        try:
            if self.fail:
                raise RuntimeError("boom: a bug deep inside the model")
            if not self.gate.wait(timeout=30):
                raise RuntimeError("the test never opened the gate")
            return self.inner(x)
        finally:
            with self.lock:
                self.active -= 1


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# Happy paths


def test_png_mask_has_class_indices_at_original_size(start, model) -> None:
    srv = start(model)
    h, w = IMAGE_HW
    for data, ctype in [(png_bytes(), "image/png"), (png_bytes(fmt="JPEG"), "image/jpeg"),
                        (png_bytes(fmt="BMP"), "application/octet-stream")]:
        status, hdrs, body = post_image(srv.port, data, ctype=ctype)
        assert status == 200 and hdrs["content-type"] == "image/png"
        mask = Image.open(io.BytesIO(body))
        assert mask.mode == "P" and mask.size == (w, h)
        arr = np.asarray(mask)
        assert arr.shape == (h, w) and arr.max() < len(CLASSES)
        assert float(hdrs["x-inference-time-ms"]) >= 0
        assert hdrs["connection"] == "close"
    # multipart upload, other fields ignored, same mask as the raw body
    body_mp, ctype = multipart([("note", None, b"hello"), ("image", "x.png", png_bytes())])
    status, _, body = post_image(srv.port, body_mp, ctype=ctype)
    assert status == 200
    raw = post_image(srv.port, png_bytes())[2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))),
                          np.asarray(Image.open(io.BytesIO(raw))))


def test_json_statistics_sum_to_one(start, model) -> None:
    srv = start(model)
    status, hdrs, body = post_image(srv.port, png_bytes(seed=3), "?format=json")
    assert status == 200 and hdrs["content-type"] == "application/json"
    doc = json.loads(body)
    h, w = IMAGE_HW
    assert (doc["width"], doc["height"]) == (w, h) and doc["time_ms"] >= 0
    assert doc["classes"], doc
    assert sum(c["pixels"] for c in doc["classes"]) == h * w
    assert sum(c["fraction"] for c in doc["classes"]) == pytest.approx(1.0, abs=1e-9)
    for c in doc["classes"]:
        assert 0 <= c["index"] < len(CLASSES) and c["name"] == CLASSES[c["index"]]
        assert c["pixels"] > 0
    # the statistics describe the same mask as the PNG answer
    mask = np.asarray(Image.open(io.BytesIO(post_image(srv.port, png_bytes(seed=3))[2])))
    counts = np.bincount(mask.ravel(), minlength=len(CLASSES))
    assert {c["index"]: c["pixels"] for c in doc["classes"]} == {
        i: int(n) for i, n in enumerate(counts) if n}


def test_health_index_and_unknown_routes(start, model) -> None:
    srv = start(model)
    status, _, body = request(srv.port, "GET", "/health")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "ok" and doc["model"] == "pspnet_r18"
    assert doc["classes"] == list(CLASSES)
    status, _, body = request(srv.port, "GET", "/")
    assert status == 200 and "POST /predict?format=png" in json.loads(body)["endpoints"]
    assert request(srv.port, "GET", "/nope")[0] == 404
    assert request(srv.port, "GET", "/predict")[0] == 405
    for docs in ("/docs", "/openapi.json", "/redoc"):
        assert request(srv.port, "GET", docs)[0] == 404


def test_default_host_is_loopback_and_other_hosts_warn() -> None:
    for func in (serve, serve_from_args, ServerThread.__init__):
        assert inspect.signature(func).parameters["host"].default == "127.0.0.1"
    assert host_warning("127.0.0.1") is None and host_warning("::1") is None
    assert host_warning("localhost") is None
    assert "EVERY network interface" in (host_warning("0.0.0.0") or "")
    assert "EVERY network interface" in (host_warning("::") or "")
    assert "not a loopback" in (host_warning("192.168.1.20") or "")


# --------------------------------------------------------------------------------------------
# Bad input


def test_non_images_and_path_parameters_are_refused(start, model) -> None:
    srv = start(model)
    passwd = json.dumps({"path": "/etc/passwd"}).encode()
    # a JSON body naming a file is not an image, whatever it claims to be
    assert post_image(srv.port, passwd, ctype="application/json")[0] == 415
    status, _, body = post_image(srv.port, passwd, ctype="image/png")
    assert status == 415 and b"root:" not in body
    assert post_image(srv.port, b"hello, world", ctype="text/plain")[0] == 415
    assert post_image(srv.port, b"hello, world", ctype="image/jpeg")[0] == 415
    # no parameter names a path or URL
    for q in ("?path=/etc/passwd", "?url=http://127.0.0.1/x.png", "?file=x"):
        status, _, body = post_image(srv.port, png_bytes(), q)
        assert status == 400 and b"unknown query parameter" in body
    assert post_image(srv.port, png_bytes(), "?format=gif")[0] == 400
    # multipart without an image field (a "path" field is just ignored text)
    mp, ctype = multipart([("path", None, b"/etc/passwd")])
    assert post_image(srv.port, mp, ctype=ctype)[0] == 400
    mp, ctype = multipart([("image", "x.txt", passwd)])
    assert post_image(srv.port, mp, ctype=ctype)[0] == 415
    assert post_image(srv.port, b"--nope\r\n", ctype="multipart/form-data; boundary=nope")[0] == 400
    # corrupt, truncated and empty images
    good = png_bytes()
    assert post_image(srv.port, good[: len(good) // 2])[0] == 422
    assert post_image(srv.port, good[:40])[0] in (415, 422)
    assert post_image(srv.port, b"")[0] == 400
    # a disallowed format (GIF) is refused even with an image content type
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, format="GIF")
    assert post_image(srv.port, buf.getvalue(), ctype="image/gif")[0] == 415
    # compressed bodies are not unpacked
    status, _, _ = request(srv.port, "POST", "/predict", good,
                           {"Content-Type": "image/png", "Content-Encoding": "gzip"})
    assert status == 415
    # malformed HTTP gets a JSON 400 too
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert parse_raw(read_until_closed(s, 5))[0] == 400
    with socket.create_connection((HOST, srv.port), timeout=5) as s:  # a 32 KiB request head
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 32768 + b"\r\n\r\n")
        assert parse_raw(read_until_closed(s, 5))[0] in (400, 431)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:  # ... arriving in pieces
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
        time.sleep(0.2)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"a" * 20000 + b"\r\n\r\n")
        assert parse_raw(read_until_closed(s, 5))[0] in (400, 431)
    assert request(srv.port, "GET", "/health")[0] == 200


def test_decompression_bomb_refused_from_its_header(start, model) -> None:
    srv = start(model, max_pixels=1_000_000)
    bomb = png_declaring(20000, 20000)  # 400 Mpx, 1.6 GB as RGB once decoded
    assert len(bomb) < 100_000
    t0 = time.monotonic()
    status, _, body = post_image(srv.port, bomb)
    assert status == 413 and b"pixels" in body
    # below Pillow's own bomb limit, our pixel limit refuses it (with the size)
    status, _, body = post_image(srv.port, png_declaring(3000, 2000))
    assert status == 413 and b"3000x2000" in body
    assert time.monotonic() - t0 < 5  # refused without decoding
    assert request(srv.port, "GET", "/health")[0] == 200


# --------------------------------------------------------------------------------------------
# Size and time limits


LIMIT = 256 * 1024


def test_content_length_over_limit_is_refused_before_the_body(start, model) -> None:
    srv = start(model, max_body_bytes=LIMIT)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
        t0 = time.monotonic()
        status, body = parse_raw(read_until_closed(s, 5))  # no byte of the body was sent
        assert status == 413 and b"limit" in body and time.monotonic() - t0 < 3
    # a client that sends it anyway gets the same answer
    status, _, _ = post_image(srv.port, b"\0" * (LIMIT + 1))
    assert status == 413
    assert post_image(srv.port, png_bytes())[0] == 200  # under the limit: fine


def test_a_client_that_sends_a_refused_body_anyway_still_reads_the_413(start, model) -> None:
    # The server answers before the body and lingers: closing at once with the client's bytes
    # unread would reset the connection under a client still writing (no 413 to read).
    srv = start(model, max_body_bytes=LIMIT)
    for _ in range(3):
        status, _, body = post_image(srv.port, b"\0" * (LIMIT * 32))
        assert status == 413 and b"limit" in body
    assert post_image(srv.port, png_bytes())[0] == 200


def test_lingering_after_a_refused_body_is_bounded(start, model) -> None:
    srv = start(model, max_body_bytes=LIMIT)
    answer = b""
    chunk = b"\0" * 65536
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: %d\r\n\r\n" % (1 << 40))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:  # a client that never stops sending
            try:
                if select.select([s], [], [], 0)[0]:
                    answer += s.recv(65536)  # the 413, then b"" (the server's FIN) ...
                s.sendall(chunk)  # ... and the client goes on regardless
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed = time.monotonic() - t0
    assert parse_raw(answer)[0] == 413
    assert elapsed < serve_server.LINGER_S + 3, f"the server kept discarding for {elapsed:.1f} s"


def test_chunked_body_over_limit_is_cut_off_without_reading_it_all(start, model) -> None:
    srv = start(model, max_body_bytes=LIMIT)
    planned = 64 * 1024 * 1024
    chunk = b"\0" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        end = time.monotonic() + 20
        while sent < planned and time.monotonic() < end:
            if select.select([s], [], [], 0)[0]:
                break  # the server answered
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break  # the server closed the connection or stopped reading
            sent += len(chunk)
        status, body = parse_raw(read_until_closed(s, 5))
    assert status == 413 and b"limit" in body
    assert sent < planned / 4, f"the client could push {sent:,} bytes"
    assert request(srv.port, "GET", "/health")[0] == 200


def test_slow_body_is_cut_off_with_408(start, model) -> None:
    srv = start(model, timeout_s=1.0)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 1000\r\n\r\n")
        t0 = time.monotonic()
        answered = False
        for _ in range(60):  # one byte per 0.1 s: at most 6 s
            if select.select([s], [], [], 0.1)[0]:
                answered = True
                break
            try:
                s.sendall(b"\x89")
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed = time.monotonic() - t0
        status, body = parse_raw(read_until_closed(s, 5))
    assert answered and status == 408, (status, body)
    assert 0.9 <= elapsed < 3.0, elapsed


def test_slow_request_head_is_cut_off(start, model) -> None:
    srv = start(model, header_timeout_s=1.0)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\n")
        t0 = time.monotonic()
        for i in range(60):
            if select.select([s], [], [], 0.1)[0]:
                break
            try:
                s.sendall(b"X-Slow-%d: y\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed = time.monotonic() - t0
        resp = read_until_closed(s, 5)
    assert parse_raw(resp)[0] == 408
    assert 0.9 <= elapsed < 3.0, elapsed
    # an idle connection that never sends anything is closed too
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        assert parse_raw(read_until_closed(s, 4))[0] == 408


# --------------------------------------------------------------------------------------------
# Concurrency and inference time


def _post_many(port: int, n: int, timeout: float = 30.0) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            status = post_image(port, png_bytes(seed=i), timeout=timeout)[0]
        except Exception as e:  # noqa: BLE001 - recorded, asserted on below
            status = -1
            print("client failed:", repr(e))
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    assert not any(t.is_alive() for t in threads)
    return statuses


def test_ten_clients_two_slots_each_served_or_503(start, model) -> None:
    srv = start(model, max_concurrency=2, max_queue=3, queue_timeout_s=0.3)
    statuses = _post_many(srv.port, 10)
    assert len(statuses) == 10 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2
    doc = json.loads(request(srv.port, "GET", "/health")[2])
    assert doc["status"] == "ok" and doc["busy"]["running"] == 0 and doc["busy"]["requests"] == 0
    assert post_image(srv.port, png_bytes())[0] == 200


def test_concurrency_is_bounded_and_queue_is_bounded(start, model) -> None:
    gated = GatedModel(model)
    srv = start(gated, max_concurrency=2, max_queue=4, queue_timeout_s=1.0)
    results: list[int] = []
    runner = threading.Thread(target=lambda: results.extend(_post_many(srv.port, 10)), daemon=True)
    runner.start()
    try:
        for _ in range(2):
            assert gated.entered.acquire(timeout=15), "two inferences should start"
        # the event loop still answers while both slots are busy
        t0 = time.monotonic()
        doc = json.loads(request(srv.port, "GET", "/health", timeout=5)[2])
        assert time.monotonic() - t0 < 3.0 and doc["busy"]["running"] == 2
        # 4 queued requests give up after 1 s, 4 more find the queue full at once
        wait_for(lambda: json.loads(request(srv.port, "GET", "/health")[2])["busy"]["requests"]
                 == 2, 10, "the 8 surplus requests to get 503")
        assert gated.active == 2
    finally:
        gated.gate.set()
    runner.join(40)
    assert sorted(results) == [200] * 2 + [503] * 8, results
    assert gated.peak == 2 and gated.calls == 2
    assert post_image(srv.port, png_bytes())[0] == 200


def test_inference_timeout_answers_503_and_keeps_the_slot(start, model) -> None:
    gated = GatedModel(model)
    srv = start(gated, max_concurrency=1, inference_timeout_s=0.5, queue_timeout_s=0.5)
    try:
        t0 = time.monotonic()
        status, _, body = post_image(srv.port, png_bytes())
        assert status == 503 and b"did not finish" in body and time.monotonic() - t0 < 3
        # the stuck inference still holds the only slot: the next request cannot overlap it
        status, _, body = post_image(srv.port, png_bytes())
        assert status == 503 and b"no inference slot" in body
        assert json.loads(request(srv.port, "GET", "/health")[2])["busy"]["running"] == 1
        assert gated.peak == 1
    finally:
        gated.gate.set()
    wait_for(lambda: json.loads(request(srv.port, "GET", "/health")[2])["busy"]["running"] == 0,
             10, "the stuck inference to finish")
    status, _, _ = post_image(srv.port, png_bytes())
    assert status == 200 and gated.peak == 1


def test_too_many_uploads_in_progress_get_503(start, model) -> None:
    srv = start(model, max_requests=1, timeout_s=5.0)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 1000\r\n\r\n\x89")  # an upload that stays open
        wait_for(lambda: json.loads(request(srv.port, "GET", "/health")[2])["busy"]["requests"]
                 == 1, 5, "the upload to start")
        status, _, body = post_image(srv.port, png_bytes())
        assert status == 503 and b"requests in progress" in body
    wait_for(lambda: json.loads(request(srv.port, "GET", "/health")[2])["busy"]["requests"] == 0,
             5, "the abandoned upload to end")
    assert post_image(srv.port, png_bytes())[0] == 200


def test_unexpected_errors_are_logged_not_shown(start, model, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pspnet.serve")
    srv = start(GatedModel(model, fail=True))
    status, _, body = post_image(srv.port, png_bytes())
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    assert b"boom" not in body
    logged = [r for r in caplog.records if r.name == "pspnet.serve" and r.exc_info]
    assert logged and "boom" in str(logged[0].exc_info[1])
    assert request(srv.port, "GET", "/health")[0] == 200


# --------------------------------------------------------------------------------------------
# The real entry point


@contextlib.contextmanager
def serve_subprocess(weights: Path) -> Iterator[int]:
    """``serve_from_args(weights)`` in a subprocess, stopped at the end: its port."""
    code = ("import sys; from pspnet.serve import serve_from_args; "
            "serve_from_args(sys.argv[1], port=0, max_body_mb=1, timeout_s=5, max_concurrency=1)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(weights)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        port = None
        end = time.monotonic() + 90
        while port is None and time.monotonic() < end and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            m = re.search(r"serving pspnet_r18 .* on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port, "server did not start:\n" + "".join(seen)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    out = "".join(seen)
    assert "EVERY network interface" not in out and "Traceback" not in out


@pytest.mark.slow
def test_serve_entry_point_in_a_subprocess(weights: Path) -> None:
    with serve_subprocess(weights) as port:
        status, _, body = request(port, "GET", "/health")
        assert status == 200 and json.loads(body)["classes"] == list(CLASSES)
        assert post_image(port, png_bytes())[0] == 200
        assert post_image(port, b"\0" * (1024 * 1024 + 1))[0] == 413  # --max-body-mb 1


# --------------------------------------------------------------------------------------------
# Exported files (`pspnet export`): their metadata, and never a silently different mask


needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="onnx/onnxscript/onnxruntime not installed: pip install 'pspnet[onnx]'"
)

EXPORT_HW = (32, 48)
# Not the defaults: a server that ignored the file's metadata would give other masks/colours.
EXPORT_PRE = Preprocessing(mean=(90.0, 110.0, 130.0), std=(40.0, 50.0, 60.0),
                           channel_order="BGR")
EXPORT_PALETTE = ((200, 10, 10), (10, 200, 10), (10, 10, 200))


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    net = TinySegmenter(len(CLASSES)).eval()
    net.meta = WeightsMeta(ModelConfig(arch="pspnet_r18", num_classes=len(CLASSES)),
                           classes=CLASSES, palette=EXPORT_PALETTE, preprocess=EXPORT_PRE)
    return net


@pytest.fixture(scope="module")
def exports(tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fixed-size TorchScript exports (logits, labels) of ``tiny``; made once (about 1 s each)."""
    d = tmp_path_factory.mktemp("exports")
    h, w = EXPORT_HW
    export_torchscript(tiny, d / "logits.ts", height=h, width=w, timing_runs=0)
    export_torchscript(tiny, d / "labels.ts", height=h, width=w, output="labels", timing_runs=0)
    return {"logits.ts": d / "logits.ts", "labels.ts": d / "labels.ts"}


def eager_labels(net: nn.Module, data: bytes, pre: Preprocessing = EXPORT_PRE,
                 **kw: object) -> tuple[np.ndarray, np.ndarray]:
    """The eager model's mask of an encoded image and where it is clear-cut.

    Clear-cut pixels are those whose top two probabilities differ by more than 1e-3, far above
    the export parity tolerance, so an exported graph must give the same class there.
    """
    image = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    probs = predict(net, to_tensor(image, pre), num_classes=len(CLASSES), **kw)[0]
    top2 = probs.topk(2, dim=0).values
    return probs.argmax(0).numpy(), (top2[0] - top2[1] > 1e-3).numpy()


def assert_same_mask(body: bytes, expected: tuple[np.ndarray, np.ndarray]) -> None:
    labels, clear = expected
    mask = np.asarray(Image.open(io.BytesIO(body)))
    assert mask.shape == labels.shape
    assert clear.mean() > 0.9  # the image is clear-cut: the comparison means something
    assert np.array_equal(mask[clear], labels[clear])


@pytest.mark.slow
@needs_onnx
def test_onnx_export_is_served_with_its_metadata(start, tiny, tmp_path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(tiny, path, height=EXPORT_HW[0], width=EXPORT_HW[1], dynamic=True,
                timing_runs=0)
    srv = start(load_model(path))
    doc = json.loads(request(srv.port, "GET", "/health")[2])
    assert doc["classes"] == list(CLASSES) and doc["model"] == "pspnet_r18"
    index = json.loads(request(srv.port, "GET", "/")[2])
    assert index["export"]["runtime"] == "onnx" and index["export"]["input_size"] is None
    assert index["inference"]["mode"] == "whole"
    for h, w in [IMAGE_HW, (20, 30)]:  # a dynamic export runs whole images of any size
        data = png_bytes(h, w, seed=h)
        status, _, body = post_image(srv.port, data)
        assert status == 200
        assert_same_mask(body, eager_labels(tiny, data))
    # The file's palette and preprocessing were used (the defaults give another mask).
    data = png_bytes(seed=5)
    body = post_image(srv.port, data)[2]
    assert Image.open(io.BytesIO(body)).getpalette()[:9] == [v for c in EXPORT_PALETTE for v in c]
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(body))),
                              eager_labels(tiny, data, Preprocessing())[0])


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("openvino", "onnx", "onnxscript")),
    reason="openvino/onnx/onnxscript not installed: pip install 'pspnet[openvino]'")
def test_openvino_export_is_served_like_the_onnx_one(start, tiny, tmp_path) -> None:
    from pspnet.export import export_openvino

    path = tmp_path / "model.xml"
    export_openvino(tiny, path, height=EXPORT_HW[0], width=EXPORT_HW[1], timing_runs=0)
    srv = start(load_model(path))
    index = json.loads(request(srv.port, "GET", "/")[2])
    assert index["export"]["runtime"] == "openvino"
    assert index["inference"]["mode"] == "slide"  # fixed-size: a window of its size
    assert json.loads(request(srv.port, "GET", "/health")[2])["classes"] == list(CLASSES)
    for h, w in [IMAGE_HW, (20, 30)]:
        data = png_bytes(h, w, seed=h)
        status, _, body = post_image(srv.port, data)
        assert status == 200
        assert_same_mask(body, eager_labels(tiny, data, mode="slide", crop_size=EXPORT_HW))
    body = post_image(srv.port, png_bytes(seed=5))[2]
    assert Image.open(io.BytesIO(body)).getpalette()[:9] == [v for c in EXPORT_PALETTE for v in c]


def test_fixed_size_export_is_served_with_a_window_of_its_size(start, tiny, exports) -> None:
    srv = start(load_model(exports["logits.ts"]))
    index = json.loads(request(srv.port, "GET", "/")[2])
    assert index["inference"]["mode"] == "slide"
    assert index["inference"]["crop_size"] == list(EXPORT_HW)
    assert index["export"] == {"runtime": "torchscript", "input_size": list(EXPORT_HW),
                               "min_size": None, "output": "logits"}
    assert json.loads(request(srv.port, "GET", "/health")[2])["classes"] == list(CLASSES)
    for h, w in [IMAGE_HW, EXPORT_HW, (20, 30)]:  # larger (4 tiles), exact, smaller (padded)
        data = png_bytes(h, w, seed=w)
        status, _, body = post_image(srv.port, data)
        assert status == 200
        assert_same_mask(body, eager_labels(tiny, data, mode="slide", crop_size=EXPORT_HW))
    # Told to run whole images, it takes its own size only and says so: 422, not a 500.
    whole = start(load_model(exports["logits.ts"]), options=InferenceOptions())
    status, _, body = post_image(whole.port, png_bytes())
    assert status == 422 and "accepts 48x32 only" in json.loads(body)["error"]
    data = png_bytes(*EXPORT_HW)
    status, _, body = post_image(whole.port, data)
    assert status == 200
    assert_same_mask(body, eager_labels(tiny, data))


def test_labels_export_is_served_exactly_or_refused(start, tiny, exports) -> None:
    model = load_model(exports["labels.ts"])
    srv = start(model)
    assert json.loads(request(srv.port, "GET", "/")[2])["export"]["output"] == "labels"
    for h, w in [EXPORT_HW, (20, 30)]:  # one tile (padded when smaller): exact labels
        data = png_bytes(h, w, seed=h + w)
        status, _, body = post_image(srv.port, data)
        assert status == 200
        assert_same_mask(body, eager_labels(tiny, data, mode="slide", crop_size=EXPORT_HW))
        doc = json.loads(post_image(srv.port, data, "?format=json")[2])
        assert sum(c["pixels"] for c in doc["classes"]) == h * w
    # Larger images would need several tiles, whose labels cannot be averaged.
    status, _, body = post_image(srv.port, png_bytes())
    msg = json.loads(body)["error"]
    assert status == 422 and "class labels" in msg and "at most 48x32" in msg
    assert request(srv.port, "GET", "/health")[0] == 200
    with pytest.raises(ServeError, match=r"labels\.ts returns class labels.*--output logits"):
        create_app(model, options=InferenceOptions(mode="slide", crop_size=EXPORT_HW, flip=True))
    with pytest.raises(ServeError, match=r"accepts only 32x48 .* use crop_size=\(32, 48\)"):
        create_app(model, options=InferenceOptions(mode="slide", crop_size=(16, 16)))


def test_export_without_class_metadata_serves_class_indices(start, tmp_path) -> None:
    torch.manual_seed(1)
    path = tmp_path / "bare.ts"
    export_torchscript(TinySegmenter(len(CLASSES)).eval(), path, height=20, width=30, timing_runs=0)
    srv = start(load_model(path))
    doc = json.loads(request(srv.port, "GET", "/health")[2])
    assert doc["classes"] == ["0", "1", "2"] and doc["model"] == "torchscript export bare.ts"
    assert post_image(srv.port, png_bytes(20, 30))[0] == 200


def test_missing_onnxruntime_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError, match=r"cannot run .*m\.onnx.*pspnet\[onnx\]"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.slow
def test_serve_entry_point_serves_an_exported_file(tiny, exports) -> None:
    with serve_subprocess(exports["logits.ts"]) as port:
        assert json.loads(request(port, "GET", "/health")[2])["classes"] == list(CLASSES)
        data = png_bytes(seed=9)
        status, _, body = post_image(port, data)
        assert status == 200
        assert_same_mask(body, eager_labels(tiny, data, mode="slide", crop_size=EXPORT_HW))
