"""The HTTP server: uvicorn with the connection-level limits, a background thread, ``serve``.

:func:`build_server` installs uvicorn's h11 protocol with a deadline for the request head and
JSON answers to malformed heads (one hook on a uvicorn class: see :data:`UVICORN_PROTOCOL`);
:func:`serve` loads the weights (:func:`pspnet.load_model`) and serves them until interrupted;
:class:`ServerThread` runs an app in a background thread.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pspnet.checkpoint import load_model
from pspnet.inference import InferenceOptions
from pspnet.serve.app import create_app
from pspnet.serve.limits import MAX_HEAD_BYTES, ServeError, ServeLimits, json_bytes, require_extras
from pspnet.serve.service import Service

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

__all__ = ["build_server", "host_warning", "bind_socket", "check_port", "ServerThread", "serve",
           "serve_from_args"]

logger = logging.getLogger("pspnet.serve")


#: The uvicorn class our protocol extends, and the methods of it we override. uvicorn has no
#: public setting for a request-head deadline, so this one hook on its (internal) h11 protocol
#: adds it; pyproject.toml bounds uvicorn and h11 to the versions this was tested with, and
#: tests/serve/test_protocol_hook.py fails if a hook stops being called.
UVICORN_PROTOCOL = "uvicorn.protocols.http.h11_impl:H11Protocol"
HOOKED_METHODS = ("connection_made", "data_received", "connection_lost", "send_400_response")

#: How long a connection whose request body was refused unread (413 before the body) keeps
#: reading and discarding what the client still sends, after the answer and a half-close.
#: Closing at once with unread bytes makes the kernel reset the connection, and a client
#: still writing its body sees "connection reset" instead of the 413 (nginx's lingering close
#: does the same; its lingering_timeout is 5 s).
LINGER_S = 2.0


def _uvicorn_protocol() -> type:
    """uvicorn's h11 protocol class, checked to still have every method we override."""
    import importlib

    module, _, name = UVICORN_PROTOCOL.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = None
    missing = [m for m in HOOKED_METHODS if cls is None or not callable(getattr(cls, m, None))]
    if missing:
        import uvicorn

        raise ServeError(
            f"uvicorn {uvicorn.__version__} has no {UVICORN_PROTOCOL} with {', '.join(missing)}, "
            "which the server's request-head deadline hooks into; install the uvicorn version "
            "pspnet's serve extra names: pip install 'pspnet[serve]'"
        )
    return cls  # type: ignore[no-any-return]


def _raw_json(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with a JSON error body, written straight to the socket."""
    body = json_bytes({"error": message})
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class _LingeringTransport:
    """The connection's transport, whose ``close`` lingers while a request body is unread.

    uvicorn closes the transport after every answer. When the app refused a body without
    reading it (413), ``close`` instead sends the answer and a FIN (``write_eof``), then
    discards what arrives until the client closes (uvicorn's ``eof_received`` lets the
    transport close then) or :data:`LINGER_S` passes. Reads resume, so nothing is buffered:
    the protocol drops the bytes (see ``lingering``).
    """

    def __init__(self, transport: Any, body_unread: Callable[[], bool]) -> None:
        self._transport = transport
        self._body_unread = body_unread
        self._timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        t = self._transport
        if self.lingering or t.is_closing():
            return
        if not self._body_unread() or not t.can_write_eof():
            t.close()
            return
        self.lingering = True
        t.write_eof()  # after the buffered answer
        t.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, t.close)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _protocol_class(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for the request head, JSON 400s and a lingering
    close after a body refused unread (:class:`_LingeringTransport`).

    It keeps its own state (the transport it was given, whether the head has ended) and uses
    only the asyncio.Protocol methods of the class it extends, plus ``send_400_response``.
    """
    base = _uvicorn_protocol()

    class GuardedH11Protocol(base):  # type: ignore[misc, valid-type]
        _pspnet_timer: asyncio.TimerHandle | None = None
        _pspnet_transport: Any = None
        _pspnet_head_seen = False
        _pspnet_tail = b""
        _pspnet_linger: _LingeringTransport | None = None

        def connection_made(self, transport: Any) -> None:
            import h11

            self._pspnet_linger = _LingeringTransport(
                transport, lambda: self.conn.their_state is h11.SEND_BODY)
            super().connection_made(self._pspnet_linger)
            self._pspnet_transport = transport
            self._pspnet_timer = asyncio.get_running_loop().call_later(
                header_timeout_s, self._pspnet_head_timeout)

        def data_received(self, data: bytes) -> None:
            if self._pspnet_linger is not None and self._pspnet_linger.lingering:
                return  # the rest of a refused body: dropped
            if not self._pspnet_head_seen:
                # Every response closes its connection, so a connection carries one request;
                # its head ends at the first empty line.
                window = self._pspnet_tail + data
                if b"\n\r\n" in window or b"\n\n" in window:
                    self._pspnet_head_seen = True
                    if self._pspnet_timer is not None:
                        self._pspnet_timer.cancel()
                self._pspnet_tail = window[-3:]
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._pspnet_timer is not None:
                self._pspnet_timer.cancel()
            if self._pspnet_linger is not None:
                self._pspnet_linger.cancel()
            super().connection_lost(exc)

        def _pspnet_head_timeout(self) -> None:
            transport = self._pspnet_transport
            if self._pspnet_head_seen or transport is None or transport.is_closing():
                return
            message = f"request head not received within {header_timeout_s:g} s"
            transport.write(_raw_json(408, "Request Timeout", message))
            transport.close()

        def send_400_response(self, msg: str) -> None:
            transport = self._pspnet_transport
            transport.write(_raw_json(400, "Bad Request", "invalid HTTP request"))
            transport.close()

    return GuardedH11Protocol


def _log_config(log_level: str) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["pspnet"] = {"handlers": ["default"], "level": log_level.upper(),
                                "propagate": False}
    return cfg


def build_server(
    app: Any,
    *,
    limits: ServeLimits = ServeLimits(),
    log_level: str = "info",
    configure_logging: bool = True,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the connection-level limits of ``limits``.

    Start it with ``server.run(sockets=[sock])`` on a socket from :func:`bind_socket`.

    Args:
        configure_logging: Install uvicorn's log handlers (and one for ``pspnet``); False leaves
            the process' logging alone (embedding, tests).
    """
    require_extras()
    import uvicorn

    config = uvicorn.Config(
        app,
        http=_protocol_class(limits.header_timeout_s),
        lifespan="on",
        log_level=log_level,
        log_config=_log_config(log_level) if configure_logging else None,
        server_header=False,
        proxy_headers=False,  # never trust X-Forwarded-* from clients
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_keep_alive=1,
        timeout_graceful_shutdown=max(1, int(math.ceil(limits.timeout_s))),
    )
    return uvicorn.Server(config)


def host_warning(host: str) -> str | None:
    """Why binding ``host`` is risky, or None for a loopback address."""
    h = host.strip().strip("[]")
    if h in ("", "0.0.0.0", "::", "*"):
        return (f"binding {host or '(all)'} exposes this server on EVERY network interface: anyone "
                "who can reach this machine can send it images and use its CPU/GPU. It has no "
                "authentication and no TLS; put an authenticating reverse proxy in front, or "
                "bind 127.0.0.1")
    if h.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(h).is_loopback:
            return None
    except ValueError:
        pass
    return (f"binding {host}, which is not a loopback address, makes this server reachable from "
            "the network; it has no authentication and no TLS")


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; ``port=0`` picks a free port.

    It listens at once, so connections made before the server's loop runs wait in the backlog
    instead of being refused.
    """
    check_port(port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def check_port(port: int) -> None:
    """Refuse a port outside 0..65535 (the OS would bind it modulo 65536: 70000 -> 4464).

    Raises:
        ServeError: ``port`` is not an integer from 0 to 65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port must be an integer from 0 to 65535 (0 picks a free one), got "
                         f"{port!r}")


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerThread:
    """Run an app on ``host:port`` in a background thread (``port=0``: a free port).

    Example::

        with ServerThread(create_app(model)) as srv:
            urllib.request.urlopen(srv.url + "/health")
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 limits: ServeLimits = ServeLimits(), log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.limits = limits
        self.log_level = log_level
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.sock: socket.socket | None = None
        self.error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None, "not started"
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        assert self.sock is not None, "not started"
        return _url(self.sock)

    def start(self, timeout: float = 20.0) -> ServerThread:
        warning = host_warning(self.host)
        if warning:
            logger.warning("%s", warning)
        self.sock = bind_socket(self.host, self.requested_port)
        self.server = build_server(self.app, limits=self.limits, log_level=self.log_level,
                                   configure_logging=False)
        server, sock = self.server, self.sock

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as e:  # noqa: BLE001 - reported by start()
                self.error = e

        self.thread = threading.Thread(target=run, name="pspnet-serve", daemon=True)
        self.thread.start()
        end = time.monotonic() + timeout
        while not server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                self.stop()
                raise ServeError(f"the server did not start within {timeout:g} s"
                                 + (f": {self.error}" if self.error else ""))
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout / 2)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(timeout / 2)
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    weights_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    device: str = "cpu",
    options: InferenceOptions | None = None,
    log_level: str = "info",
) -> None:
    """Load ``weights_path`` and serve it until interrupted (Ctrl+C / SIGTERM). Blocks.

    Args:
        weights_path: Anything :func:`pspnet.checkpoint.load_model` reads, an ONNX /
            TorchScript file from ``pspnet export`` included (recognised by its content).
        host: Address to listen on. The default is loopback only; binding another address
            logs a warning (there is no authentication).
        port: TCP port; 0 picks a free one (the log says which).
        limits: Resource limits.
        device: Where the model runs ("cpu", "cuda", "cuda:1"); exported files run on the CPU.
        options: How to run the model (default: one pass over the whole image; a fixed-size
            export: a sliding window of its size).
        log_level: uvicorn / pspnet log level.

    Raises:
        ServeError: The ``serve`` extra is missing, the address cannot be bound, or an
            exported file cannot run with ``options``.
        CheckpointError: The weights cannot be loaded (an ONNX file without onnxruntime: the
            message names the extra).
    """
    require_extras()
    check_port(port)  # before the weights are loaded
    model = load_model(weights_path, device=device)
    app = create_app(model, limits=limits, options=options)
    server = build_server(app, limits=limits, log_level=log_level)  # configures logging
    warning = host_warning(host)
    if warning:
        logger.warning("!" * 78)
        logger.warning("WARNING: %s", warning)
        logger.warning("!" * 78)
    sock = bind_socket(host, port)
    svc: Service = app.state.pspnet
    logger.info("serving %s (%d classes) from %s on %s", svc.info.arch, svc.num_classes,
                weights_path, _url(sock))
    export = svc.info.export
    if export is not None:
        if device != "cpu":
            logger.warning("%s is an exported %s file: it runs on the CPU, not %s",
                           weights_path, export["runtime"], device)
        fixed, opts = export["input_size"], svc.options
        if fixed and opts.mode == "slide":
            logger.info("fixed-size export (%dx%d, height x width): images are predicted with a "
                        "sliding window of that size%s", fixed[0], fixed[1],
                        "; images larger than that get 422 (it returns class labels, which "
                        "cannot be combined over tiles)" if export["output"] == "labels" else "")
    logger.info("limits: %s", ", ".join(f"{k}={v}" for k, v in limits.describe().items()))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve_from_args(
    weights: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_mb: float = 20.0,
    max_pixels: int = ServeLimits.max_pixels,
    timeout_s: float = ServeLimits.timeout_s,
    max_concurrency: int = ServeLimits.max_concurrency,
    device: str = "cpu",
    log_level: str = "info",
) -> int:
    """``pspnet serve``: the CLI flags mapped onto :func:`serve`. Returns the exit code (0)."""
    if not (isinstance(max_body_mb, (int, float)) and math.isfinite(max_body_mb)
            and max_body_mb > 0):
        raise ServeError(f"--max-body-mb must be a positive number, got {max_body_mb!r}")
    limits = ServeLimits(
        max_body_bytes=max(1, int(max_body_mb * 1024 * 1024)),
        max_pixels=max_pixels,
        timeout_s=timeout_s,
        header_timeout_s=min(ServeLimits.header_timeout_s, timeout_s),
        idle_timeout_s=min(ServeLimits.idle_timeout_s, timeout_s),
        max_concurrency=max_concurrency,
    )
    serve(weights, host=host, port=port, limits=limits, device=device, log_level=log_level)
    return 0
