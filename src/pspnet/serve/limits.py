"""The server's limits and errors: :class:`ServeLimits`, the API error, the shared headers."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ServeError", "ServeLimits", "ApiError", "ClientGone", "ALLOWED_FORMATS",
           "MAX_HEAD_BYTES", "MAX_PARTS"]

#: Pillow formats accepted from clients, the same set as ``pspnet.data.io.IMAGE_EXTENSIONS``.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_ALLOWED_DETECTED = frozenset(ALLOWED_FORMATS) | {"MPO"}  # MPO: phone-camera JPEG

#: Largest request head (request line + headers) the server parses.
MAX_HEAD_BYTES = 16 * 1024
#: Most parts a multipart body may have.
MAX_PARTS = 16

_INSTALL_HINT = "pip install 'pspnet[serve]'"


class ServeError(ValueError):
    """The server cannot start: a missing extra, a bad limit, an address that is in use."""


@dataclass(frozen=True)
class ServeLimits:
    """Resource limits of the server. Every field is enforced; see the module docstring."""

    max_body_bytes: int = 20 * 1024 * 1024
    """Largest request body (the encoded image, or the whole multipart body)."""
    max_pixels: int = 16_000_000
    """Largest width * height of an image, checked from its header before decoding."""
    timeout_s: float = 30.0
    """Time allowed to receive the request body, counted from the end of the request head."""
    header_timeout_s: float = 5.0
    """Time allowed from connecting to the end of the request head."""
    idle_timeout_s: float = 5.0
    """Longest pause allowed between two pieces of a request body: a client that stalls is
    cut off after this, not after ``timeout_s``."""
    inference_timeout_s: float = 120.0
    """Time allowed for decoding, inference and encoding the answer of one image."""
    max_concurrency: int = 2
    """Inferences running at the same time (one worker thread each)."""
    max_queue: int = 8
    """Requests that may wait for an inference slot; more get 503 at once."""
    queue_timeout_s: float = 10.0
    """How long a request waits for an inference slot before it gets 503."""
    max_requests: int = 16
    """``POST`` requests in progress at once (uploading, waiting or running); more get 503."""
    max_requests_per_client: int = 4
    """``POST`` requests in progress at once from one client IP address; more get 503, so a
    client that stalls its uploads cannot take every request slot from the others."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_concurrency", "max_requests",
                     "max_requests_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeError(f"ServeLimits.{name} must be a positive integer, got {value!r}")
        q = self.max_queue
        if isinstance(q, bool) or not isinstance(q, int) or q < 0:
            raise ServeError(f"ServeLimits.max_queue must be an integer >= 0, got {q!r}")
        for name in ("timeout_s", "header_timeout_s", "idle_timeout_s", "inference_timeout_s",
                     "queue_timeout_s"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ServeError(f"ServeLimits.{name} must be a positive number of seconds, "
                                 f"got {value!r}")

    @property
    def deadline_s(self) -> float:
        """Hard limit on one request, from its head to its last response byte."""
        return 2 * self.timeout_s + self.queue_timeout_s + self.inference_timeout_s + 5.0

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An answer other than 200: status code and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


def json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# Headers added to every response.
COMMON_HEADERS = [
    (b"connection", b"close"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


async def send_json(send: Callable[..., Any], status: int, doc: Any) -> None:
    """Answer with JSON from raw ASGI (outside the framework)."""
    body = json_bytes(doc)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


def require_extras() -> None:
    missing = []
    for mod in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ServeError(
            f"the server needs {', '.join(missing)}, which are not installed; {_INSTALL_HINT}"
        )


