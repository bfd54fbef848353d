"""An HTTP server for one model: ``POST /predict`` an image, get its mask back.

Start it with ``pspnet serve --weights DIR`` (or :func:`serve`); it listens on 127.0.0.1 unless
told otherwise. ``--weights`` may also be an ONNX or TorchScript file from ``pspnet export``:
its embedded metadata gives the classes, palette and preprocessing; a fixed-size export runs as
a sliding window of its size (a labels export: on images up to that size, others get 422).
Needs the ``serve`` extra: ``pip install 'pspnet[serve]'`` (FastAPI, uvicorn,
python-multipart).

Endpoints
=========

``POST /predict[?format=png|json]``
    The image is the raw request body (``Content-Type: image/*`` or
    ``application/octet-stream``) or the file field ``image`` of a ``multipart/form-data`` body.
    ``format=png`` (default) answers with the mask as a palette PNG at the image's own size whose
    pixel values are the class indices (``np.asarray(Image.open(f))``); ``format=json`` answers
    ``{"width", "height", "classes": [{"index", "name", "pixels", "fraction"}], "time_ms"}``
    listing the classes present (fractions sum to 1).
``GET /health``
    ``{"status": "ok", "model": arch, "classes": [names]}``.
``GET /``
    A short description of the endpoints and the limits in force.

Limits (:class:`ServeLimits`), each enforced before the work it guards
=====================================================================

* Request head: must arrive within ``header_timeout_s`` of connecting (slow-loris, 408) and be
  at most 16 KiB (400 while it is incomplete, 431 once parsed); the connection is closed.
* Body size: a ``Content-Length`` above ``max_body_bytes`` is refused before any byte of the
  body is read; a chunked body is counted while it is read and refused the moment it passes the
  limit (413). Nothing is buffered beyond the limit: after the 413 the server half-closes and
  discards what the client still sends for at most 2 s (a lingering close, so that a client
  that writes its whole body first still reads the answer instead of a connection reset).
* Body time: the whole body must arrive within ``timeout_s`` of the request head, with no
  pause longer than ``idle_timeout_s`` (408): a client that stalls is cut off early.
* Image: only PNG, JPEG, BMP, TIFF and WebP, recognised from the bytes (415 otherwise);
  width x height is checked against ``max_pixels`` from the header, before any pixel is decoded
  (413: decompression bombs); truncated or corrupt images give 422.
* Concurrency: at most ``max_concurrency`` inferences run at once, each in a worker thread (the
  event loop keeps answering ``/health``); up to ``max_queue`` more wait at most
  ``queue_timeout_s`` for a slot, everything else gets 503 at once. ``max_requests`` bounds the
  ``POST`` requests in progress (uploads included), so memory stays below about
  ``max_requests * max_body_bytes``; ``max_requests_per_client`` bounds those from one client
  IP address, so that one client cannot take every slot from the others (503).
* Port: 0..65535 (a larger number is refused, not bound modulo 65536).
* Inference time: a request whose inference takes longer than ``inference_timeout_s`` gets 503.
  Python cannot kill the thread; it keeps its slot until it finishes, so the server never runs
  more than ``max_concurrency`` inferences, however many requests time out.
* Every request has a hard overall deadline; every response closes its connection.

The server never opens a path or URL named by a request: there are no such parameters, and any
query parameter besides ``format`` is refused. Every error is ``{"error": "..."}`` JSON with
its status code; unexpected exceptions are logged here with their traceback and answered
``500 {"error": "internal error"}``.

:func:`create_app` gives the ASGI app alone; the head timeout and the limit on incomplete heads
live in the HTTP protocol that :func:`build_server` installs, so under another ASGI server
configure their equivalents there. uvicorn has no public setting for them: the protocol extends
uvicorn's h11 protocol class (``serve.server.UVICORN_PROTOCOL``), and the ``serve`` extra bounds
uvicorn and h11 to the versions it was tested with. :class:`ServerThread` runs the app in a
background thread (tests, notebooks).

Modules: :mod:`~pspnet.serve.limits` (:class:`ServeLimits`, errors), :mod:`~pspnet.serve.request`
(reading bodies and images under the limits), :mod:`~pspnet.serve.service` (what is served and
running it), :mod:`~pspnet.serve.app` (the routes), :mod:`~pspnet.serve.server` (uvicorn,
:func:`serve`).
"""

from pspnet.serve.app import create_app
from pspnet.serve.limits import ServeError, ServeLimits
from pspnet.serve.server import (
    ServerThread,
    bind_socket,
    build_server,
    host_warning,
    serve,
    serve_from_args,
)

__all__ = [
    "ServeError",
    "ServeLimits",
    "create_app",
    "build_server",
    "ServerThread",
    "bind_socket",
    "serve",
    "serve_from_args",
    "host_warning",
]
