"""One client cannot deny service to the others; ports outside 0..65535 are refused.

The attack of the issue: 16 clients that send a request head and one byte of body, then
stall. Before the per-client limit they held all 16 request slots (``max_requests``) for the
whole body timeout, and every other request got 503. Here the stalled uploads come from
127.0.0.1 and the honest client connects from 127.0.0.2 (the whole 127/8 block is loopback on
Linux), so the server sees two client addresses.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path

import pytest

for _module in ("fastapi", "uvicorn", "python_multipart"):
    pytest.importorskip(_module, reason="the server needs the `serve` extra")

from test_serve import HOST, png_bytes, request, wait_for  # noqa: E402

from pspnet.cli import main  # noqa: E402
from pspnet.serve import ServeError, ServeLimits, bind_socket, serve_from_args  # noqa: E402

OTHER = "127.0.0.2"


def _other_loopback_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind((OTHER, 0))
        return True
    except OSError:
        return False


needs_second_loopback = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _other_loopback_works(),
    reason="needs a second loopback address (127.0.0.2), as Linux has")


def _post_from(source: str, port: int, data: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=20, source_address=(source, 0))
    try:
        conn.request("POST", "/predict", body=data, headers={"Content-Type": "image/png"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _stalled_upload(port: int) -> socket.socket:
    """A connection that sends a POST head and one byte of its 1000-byte body, then nothing."""
    s = socket.create_connection((HOST, port), timeout=10)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Content-Length: 1000\r\n\r\n\x89")
    return s


def _busy(port: int) -> int:
    return int(json.loads(request(port, "GET", "/health")[2])["busy"]["requests"])


@needs_second_loopback
def test_sixteen_stalled_uploads_do_not_deny_service_to_another_client(start, model) -> None:
    # idle_timeout_s long enough that the stalled uploads are still open while we ask
    srv = start(model, idle_timeout_s=20.0, timeout_s=30.0)
    limits = ServeLimits(idle_timeout_s=20.0, timeout_s=30.0)
    stalled = [_stalled_upload(srv.port) for _ in range(16)]
    try:
        wait_for(lambda: _busy(srv.port) == limits.max_requests_per_client, 10,
                 "the first uploads of 127.0.0.1 to be admitted")
        status, body = _post_from(OTHER, srv.port, png_bytes())
        assert status == 200, (status, body)
        # the stalling address itself is over its limit: refused at once, with the reason
        status, body = _post_from(HOST, srv.port, png_bytes())
        assert status == 503 and b"from your address" in body, body
    finally:
        for s in stalled:
            s.close()
    wait_for(lambda: _busy(srv.port) == 0, 20, "the abandoned uploads to end")


def test_a_stalled_body_is_cut_off_after_the_idle_timeout(start, model) -> None:
    srv = start(model, idle_timeout_s=0.5, timeout_s=30.0)
    with _stalled_upload(srv.port) as s:
        s.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = s.recv(4096)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:300]


def test_limits_validate_the_per_client_fields() -> None:
    with pytest.raises(ServeError, match="max_requests_per_client"):
        ServeLimits(max_requests_per_client=0)
    with pytest.raises(ServeError, match="idle_timeout_s"):
        ServeLimits(idle_timeout_s=float("nan"))


@pytest.mark.parametrize("port", [70000, 65536, -1])
def test_port_outside_the_tcp_range_is_refused(port: int, weights: Path, tmp_path: Path,
                                               capsys) -> None:
    # 70000 used to bind port 70000 % 65536 = 4464
    with pytest.raises(ServeError, match="0 to 65535"):
        bind_socket(HOST, port)
    # before the weights are read: a missing weights path is not what the error is about
    with pytest.raises(ServeError, match="0 to 65535"):
        serve_from_args(tmp_path / "missing", port=port)
    assert main(["serve", "--weights", str(weights), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --port {port}:") and "65535" in err


def test_an_image_over_the_memory_bound_is_413_not_500(model, start) -> None:  # noqa: ANN001
    """An image that fits no prediction mode inside the server's memory bound is the client's
    problem (413 with the reason), not an internal error."""
    from test_serve import post_image

    from pspnet.inference import InferenceOptions

    srv = start(model, options=InferenceOptions(max_memory=1000))
    status, _, body = post_image(srv.port, png_bytes())
    assert status == 413, body
    assert "memory" in json.loads(body)["error"]
