"""The one hook on a uvicorn internal: it is there, it is called, and the versions are bounded.

uvicorn has no public setting for a request-head deadline, so ``pspnet.serve.server`` extends
uvicorn's h11 protocol class (``UVICORN_PROTOCOL``) and overrides ``HOOKED_METHODS``. These
tests fail when a uvicorn release renames that class, stops calling one of the methods, or is
installed outside the bounds that pyproject.toml declares for the ``serve`` extra.
"""

from __future__ import annotations

import re
import socket
from importlib.metadata import version
from pathlib import Path

import pytest

for _module in ("fastapi", "uvicorn", "python_multipart"):
    pytest.importorskip(_module, reason="the server needs the `serve` extra")

from test_serve import HOST, parse_raw, read_until_closed  # noqa: E402

from pspnet.serve import server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _serve_extra() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^serve = \[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    assert block, "pyproject.toml has no serve extra"
    return re.findall(r'"([^"]+)"', block.group(1))


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("package", ["uvicorn", "h11"])
def test_serve_extra_declares_bounded_versions_that_hold_here(package: str) -> None:
    spec = next((s for s in _serve_extra() if re.match(rf"{package}\b", s)), None)
    assert spec is not None, f"the serve extra must declare {package}"
    lower = re.search(r">=\s*([\d.]+)", spec)
    upper = re.search(r"<\s*([\d.]+)", spec)
    assert lower and upper, f"{spec}: {package} needs a lower and an upper bound"
    installed = _version_tuple(version(package))
    assert _version_tuple(lower.group(1)) <= installed < _version_tuple(upper.group(1)), (
        f"{package} {version(package)} is outside {spec}: run tests/serve with it, then "
        "move the bounds")


def test_the_extended_class_has_every_hooked_method() -> None:
    base = server._uvicorn_protocol()
    guarded = server._protocol_class(1.0)
    assert issubclass(guarded, base)
    for name in server.HOOKED_METHODS:
        assert name in vars(guarded), name  # ours overrides it ...
        assert callable(getattr(base, name, None)), name  # ... and uvicorn's still has it


def test_a_missing_hook_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(server, "UVICORN_PROTOCOL", "uvicorn.protocols.http.h11_impl:Gone")
    with pytest.raises(server.ServeError, match="pip install 'pspnet\\[serve\\]'"):
        server._protocol_class(1.0)


def test_connection_made_and_the_head_timer_are_called(start, model) -> None:
    srv = start(model, header_timeout_s=0.5)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:  # says nothing
        status, body = parse_raw(read_until_closed(s, 5))
    assert status == 408 and b"request head not received" in body


def test_data_received_sees_the_end_of_the_head(start, model) -> None:
    # A head that ends before the deadline is not cut off by it, even in pieces: the body
    # timeout (not the head's) answers a body that never comes.
    srv = start(model, header_timeout_s=1.0, idle_timeout_s=2.0, timeout_s=30.0)
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        s.sendall(b"Content-Type: image/png\r\nContent-Length: 10\r\n\r")
        s.sendall(b"\n")
        status, body = parse_raw(read_until_closed(s, 8))
    assert status == 408 and b"stalled" in body, body


def test_send_400_response_is_called_for_a_malformed_head(start, model) -> None:
    srv = start(model)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        status, body = parse_raw(read_until_closed(s, 5))  # JSON only from our hook
    assert status == 400 and body == b'{"error":"invalid HTTP request"}'
