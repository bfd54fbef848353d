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
  limit (413). Nothing is buffered beyond the limit.
* Body time: the whole body must arrive within ``timeout_s`` of the request head (408).
* Image: only PNG, JPEG, BMP, TIFF and WebP, recognised from the bytes (415 otherwise);
  width x height is checked against ``max_pixels`` from the header, before any pixel is decoded
  (413: decompression bombs); truncated or corrupt images give 422.
* Concurrency: at most ``max_concurrency`` inferences run at once, each in a worker thread (the
  event loop keeps answering ``/health``); up to ``max_queue`` more wait at most
  ``queue_timeout_s`` for a slot, everything else gets 503 at once. ``max_requests`` bounds the
  ``POST`` requests in progress (uploads included), so memory stays below about
  ``max_requests * max_body_bytes``.
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
configure their equivalents there. :class:`ServerThread` runs the app in a background thread
(tests, notebooks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import io
import ipaddress
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.config import Preprocessing
from pspnet.data.io import DataError, image_to_rgb, is_complete
from pspnet.data.palette import colorize, default_palette
from pspnet.engine.predict import PredictOptions, predict_array
from pspnet.export import is_exported, load_model_or_export

try:  # the `serve` extra; module level so that FastAPI can resolve the routes' annotations
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # pragma: no cover - create_app and serve say what to install
    pass

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

__all__ = [
    "ServeError",
    "ServeLimits",
    "create_app",
    "build_server",
    "ServerThread",
    "bind_socket",
    "serve",
    "serve_from_args",
    "load_for_serving",
    "host_warning",
]

logger = logging.getLogger("pspnet.serve")

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
    header_timeout_s: float = 10.0
    """Time allowed from connecting to the end of the request head."""
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

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_concurrency", "max_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeError(f"ServeLimits.{name} must be a positive integer, got {value!r}")
        q = self.max_queue
        if isinstance(q, bool) or not isinstance(q, int) or q < 0:
            raise ServeError(f"ServeLimits.max_queue must be an integer >= 0, got {q!r}")
        for name in ("timeout_s", "header_timeout_s", "inference_timeout_s", "queue_timeout_s"):
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


class _ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# Headers added to every response.
_COMMON_HEADERS = [
    (b"connection", b"close"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


async def _send_json(send: Callable[..., Any], status: int, doc: Any) -> None:
    """Answer with JSON from raw ASGI (outside the framework)."""
    body = _json_bytes(doc)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _require_extras() -> None:
    missing = []
    for mod in ("fastapi", "uvicorn", "python_multipart", "h11"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ServeError(
            f"the server needs {', '.join(missing)}, which are not installed; {_INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Images from bytes


def _pixel_count_from_bomb_error(err: Exception) -> int | None:
    m = re.search(r"\((\d+) pixels\)", str(err))
    return int(m.group(1)) if m else None


def _too_many_pixels(width: int | None, height: int | None, pixels: int | None,
                     max_pixels: int) -> ApiError:
    size = f"{width}x{height} = " if width and height else ""
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return ApiError(
        413, f"image is {size}{count}, above this server's limit of {max_pixels:,} pixels "
        "(a guard against decompression bombs); downscale it"
    )


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open an image from bytes, reading only its header; refuse what we will not decode."""
    if not data:
        raise ApiError(400, "empty request body: send the image bytes")
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_many_pixels(None, None, _pixel_count_from_bomb_error(e), max_pixels) from None
    except UnidentifiedImageError:
        raise ApiError(
            415, f"the body is not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed header can fail anywhere in a plugin
        raise ApiError(422, f"corrupt image header ({type(e).__name__}); re-encode the "
                            "image") from None
    if im.format not in _ALLOWED_DETECTED:  # defensive: formats= already ensures this
        raise ApiError(415, f"image format {im.format} is not allowed")
    width, height = im.size
    if width < 1 or height < 1:
        raise ApiError(422, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, width * height, max_pixels)
    return im


def _check_complete(fmt: str, data: bytes) -> None:
    """Refuse PNG/JPEG bodies without their end marker (Pillow may pad truncated images)."""
    if not is_complete(fmt, data):
        raise ApiError(422, f"truncated {fmt} image (its end marker is missing)")


def _decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image to (H, W, 3) uint8 RGB, under the rules of ``read_image``.

    Raises:
        ApiError: 400 (empty), 413 (too many pixels), 415 (not an allowed image), 422 (corrupt,
            truncated, or a floating-point image).
    """
    im = _open_checked(data, max_pixels)
    try:
        im.load()
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_many_pixels(None, None, _pixel_count_from_bomb_error(e), max_pixels) from None
    except Exception as e:  # noqa: BLE001 - corrupt data can fail anywhere inside a decoder
        raise ApiError(422, f"truncated or corrupt {im.format} image "
                            f"({type(e).__name__})") from None
    _check_complete(im.format or "", data)
    try:
        return image_to_rgb(im, "the uploaded image")
    except DataError as e:
        raise ApiError(422, str(e)) from None


# --------------------------------------------------------------------------------------------
# Request bodies


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(value)
    return (ctype.decode("latin-1").strip().lower(),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()})


def _multipart_image(body: bytes, boundary: str) -> bytes:
    """The bytes of the ``image`` part of a multipart/form-data body (already size-limited)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    cur: dict[str, Any] = {}
    ended = False

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, f"multipart body has more than {MAX_PARTS} parts")
        cur.update(headers={}, field=bytearray(), value=bytearray(), data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][bytes(cur["field"]).strip().lower()] = bytes(cur["value"]).strip()
        cur["field"], cur["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((cur["headers"], cur["data"]))

    def on_end() -> None:
        nonlocal ended
        ended = True

    callbacks = {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    }
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart/form-data needs a boundary parameter of 1..200 characters")
    try:
        parser = MultipartParser(boundary.encode("latin-1"), callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise ApiError(400, "malformed multipart/form-data body") from None
    except UnicodeEncodeError:
        raise ApiError(400, "malformed multipart boundary") from None
    if not ended:
        raise ApiError(400, "incomplete multipart/form-data body (no closing boundary)")
    found = []
    for headers, data in parts:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if opts.get(b"name") == b"image":
            found.append(data)
    if not found:
        raise ApiError(400, "multipart/form-data body has no file field named 'image'")
    if len(found) > 1:
        raise ApiError(400, "multipart/form-data body has more than one 'image' field")
    return b"".join(found[0])


# --------------------------------------------------------------------------------------------
# Inference slots


class _Slots:
    """At most ``n`` holders; at most ``max_waiting`` waiters, each for a bounded time.

    Used from one event loop. A slot is handed directly from a releasing holder to the oldest
    waiter, so waiters are served in order and nobody can overtake them.
    """

    def __init__(self, n: int, max_waiting: int) -> None:
        self.free = n
        self.max_waiting = max_waiting
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self.waiters if not w.done())

    async def acquire(self, timeout: float) -> None:
        while self.waiters and self.waiters[0].done():  # cancelled, not yet removed
            self.waiters.popleft()
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        if self.waiting >= self.max_waiting:
            raise ApiError(503, "server busy: all inference slots are taken and the queue is full; "
                                "retry later")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot reached us as we gave up: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            if isinstance(e, TimeoutError):
                raise ApiError(503, f"server busy: no inference slot became free within "
                                    f"{timeout:g} s; retry later") from None
            raise

    def release(self) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self.free += 1


# --------------------------------------------------------------------------------------------
# What is served



@dataclass(frozen=True)
class _ModelInfo:
    """Everything the server needs besides the model: names, colours, how to run it."""

    arch: str
    num_classes: int
    classes: tuple[str, ...] | None
    palette: Any
    preprocess: Preprocessing
    options: PredictOptions
    export: dict[str, Any] | None = None
    """Exported files only: ``runtime``, ``input_size`` (None: any size), ``min_size`` and
    ``output`` (``"logits"`` or ``"labels"``)."""


def _model_info(model: nn.Module, meta: WeightsMeta | None,
                options: PredictOptions | None) -> _ModelInfo:
    """Read classes, palette and preprocessing from ``meta``, ``model.meta`` or an export.

    Exported files (:func:`pspnet.export.load_exported`) bring their own metadata. A
    fixed-size export runs as a sliding window of its size (by default), the way
    ``pspnet predict`` runs it; a labels export cannot average flipped or rescaled views.

    Raises:
        ServeError: No metadata, or options the exported file cannot honour.
    """
    meta = meta if meta is not None else getattr(model, "meta", None)
    if meta is not None and not isinstance(meta, WeightsMeta):
        raise ServeError(f"meta must be a WeightsMeta, got {type(meta).__name__}")
    if not is_exported(model):
        if meta is None:
            raise ServeError("the model carries no `.meta` (WeightsMeta); load it with "
                             "pspnet.checkpoint.load_model or pass meta=")
        return _ModelInfo(meta.model.arch, int(meta.model.num_classes), meta.classes,
                          meta.palette, meta.preprocess, options or PredictOptions())
    name = model.path.name
    num_classes = model.num_classes or (meta.model.num_classes if meta else None)
    if not num_classes:
        raise ServeError(f"{model.path} records no number of classes; export it again with "
                         "`pspnet export`")
    if meta is not None and meta.model.num_classes != num_classes:
        raise ServeError(f"meta describes {meta.model.num_classes} classes but {model.path} "
                         f"predicts {num_classes}; pass a WeightsMeta that matches it")
    fixed = tuple(model.input_size) if model.input_size else None
    labels = model.output == "labels"
    if options is None:
        options = (PredictOptions(mode="slide", crop_size=fixed) if fixed  # type: ignore[arg-type]
                   else PredictOptions())
    size = f"{fixed[0]}x{fixed[1]}" if fixed else ""
    if fixed and options.mode == "slide" and tuple(options.crop_size or ()) != fixed:
        raise ServeError(f"{model.path} accepts only {size} (height x width) inputs, but the "
                         f"sliding window is {options.crop_size}; use crop_size={fixed}")
    if labels and (options.flip or tuple(options.scales) != (1.0,)):
        raise ServeError(
            f"{model.path} returns class labels (exported with --output labels), which cannot "
            "be averaged over flipped or rescaled views; serve it without flip and scales, or "
            "export it again with --output logits"
        )
    runtime = str(model.metadata.get("runtime") or "exported")
    return _ModelInfo(
        arch=meta.model.arch if meta is not None else f"{runtime} export {name}",
        num_classes=int(num_classes),
        classes=(meta.classes if meta is not None and meta.classes else model.classes),
        palette=meta.palette if meta is not None else model.metadata.get("palette"),
        preprocess=meta.preprocess if meta is not None else model.preprocess,
        options=options,
        export={"runtime": runtime, "input_size": list(fixed) if fixed else None,
                "min_size": list(model.min_size) if model.min_size else None,
                "output": model.output},
    )


# --------------------------------------------------------------------------------------------
# The service behind the routes


class _Service:
    def __init__(self, model: nn.Module, info: _ModelInfo, limits: ServeLimits) -> None:
        self.model = model
        self.info = info
        self.limits = limits
        self.options = info.options
        self.num_classes = info.num_classes
        self.class_names = (list(info.classes) if info.classes is not None
                            else [str(i) for i in range(self.num_classes)])
        self.palette = (np.asarray(info.palette, np.uint8) if info.palette is not None
                        else default_palette(max(self.num_classes, 1)))
        self.executor = ThreadPoolExecutor(max_workers=limits.max_concurrency,
                                           thread_name_prefix="pspnet-infer")
        self.slots = _Slots(limits.max_concurrency, limits.max_queue)
        self.pending = 0  # POST requests in progress (event-loop thread only)
        self.running = 0  # inferences running in worker threads
        self._lock = threading.Lock()

    # -- body ------------------------------------------------------------------------------

    async def read_body(self, request: Any) -> bytes:
        """The request body, at most ``max_body_bytes``, received within ``timeout_s``."""
        from starlette.requests import ClientDisconnect

        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "invalid Content-Length header")
            if int(declared) > limit:
                raise ApiError(413, f"request body of {int(declared):,} bytes is above this "
                                    f"server's limit of {limit:,} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"request body is above this server's limit of "
                                            f"{limit:,} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, f"request body not received within {self.limits.timeout_s:g} s "
                                f"({size:,} bytes arrived)") from None
        except ClientDisconnect:
            raise _ClientGone() from None
        return b"".join(chunks)

    async def image_bytes(self, request: Any) -> bytes:
        """The encoded image of a ``/predict`` request (raw body or multipart field)."""
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(415, f"Content-Encoding {encoding!r} is not accepted; send the image "
                                "bytes as they are")
        ctype, params = _media_type(request.headers.get("content-type", ""))
        if ctype == "multipart/form-data":
            body = await self.read_body(request)
            return _multipart_image(body, params.get("boundary", ""))
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return await self.read_body(request)
        raise ApiError(
            415, f"Content-Type {ctype or '(none)'!r} is not accepted: send the image as the raw "
                 "body with Content-Type image/* (or application/octet-stream), or as the file "
                 "field 'image' of a multipart/form-data body"
        )

    # -- inference -------------------------------------------------------------------------

    def check_size(self, width: int, height: int) -> None:
        """Refuse (422) an image size the served export cannot predict as configured."""
        export, opts = self.info.export, self.options
        if export is None:
            return
        size = f"the image is {width}x{height} pixels (width x height)"
        if opts.mode == "whole":
            fixed, least = export["input_size"], export["min_size"]
            if fixed and (height, width) != tuple(fixed):
                raise ApiError(422, f"{size}, but this server's model (a fixed-size export, run "
                                    f"on whole images) accepts {fixed[1]}x{fixed[0]} only; "
                                    "resize the image to that size")
            if least and (height < least[0] or width < least[1]):
                raise ApiError(422, f"{size}, but this server's model needs at least "
                                    f"{least[1]}x{least[0]}; upscale or pad the image")
        elif export["output"] == "labels" and opts.crop_size is not None:
            ch, cw = opts.crop_size
            if height > ch or width > cw:
                raise ApiError(422, f"{size}, larger than this server's {cw}x{ch} window: its "
                                    "model returns class labels, which cannot be combined over "
                                    f"several tiles; send an image of at most {cw}x{ch}")

    def _work(self, data: bytes, fmt: str) -> tuple[bytes, str, float]:
        """Decode, predict, encode (runs in a worker thread)."""
        with self._lock:
            self.running += 1
        try:
            t0 = time.perf_counter()
            image = _decode_image(data, self.limits.max_pixels)
            labels = predict_array(self.model, image, self.info.preprocess, self.options,
                                   self.num_classes)
            ms = (time.perf_counter() - t0) * 1000.0
            h, w = int(labels.shape[0]), int(labels.shape[1])
            if fmt == "png":
                buf = io.BytesIO()
                colorize(labels, self.palette).save(buf, format="PNG")
                return buf.getvalue(), "image/png", ms
            counts = np.bincount(labels.ravel().astype(np.int64), minlength=self.num_classes)
            total = float(labels.size)
            classes = [
                {"index": i, "name": self.class_names[i] if i < len(self.class_names) else str(i),
                 "pixels": int(c), "fraction": float(c) / total}
                for i, c in enumerate(counts.tolist()) if c
            ]
            doc = {"width": w, "height": h, "classes": classes, "time_ms": round(ms, 1)}
            return _json_bytes(doc), "application/json", ms
        finally:
            with self._lock:
                self.running -= 1

    async def infer(self, data: bytes, fmt: str) -> tuple[bytes, str, float]:
        """Run :meth:`_work` in a slot, within ``inference_timeout_s``."""
        limits = self.limits
        await self.slots.acquire(limits.queue_timeout_s)
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(self.executor, self._work, data, fmt)
        except BaseException:
            self.slots.release()
            raise
        # The slot is freed when the thread finishes, not when the request gives up on it.
        work.add_done_callback(lambda _: self.slots.release())
        # A request that gives up never reads the result: mark its exception as seen.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(limits.inference_timeout_s):
                return await asyncio.shield(work)
        except TimeoutError:
            raise ApiError(503, f"inference did not finish within "
                                f"{limits.inference_timeout_s:g} s; send a smaller image or "
                                "retry later") from None


# --------------------------------------------------------------------------------------------
# The ASGI app


class _Guard:
    """Outer ASGI layer: request count limit, hard deadline, closing headers, JSON errors."""

    def __init__(self, app: Any, service: _Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc = self.service
        started = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {n for n, _ in _COMMON_HEADERS}
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": headers + _COMMON_HEADERS}
            await send(message)

        # h11 refuses an incomplete head over MAX_HEAD_BYTES; one that arrives whole in a single
        # read is measured here.
        head = (len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
                + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", [])))
        if head > MAX_HEAD_BYTES:
            await _send_json(guarded_send, 431, {
                "error": f"request head is {head:,} bytes, above the limit of {MAX_HEAD_BYTES:,}"})
            return
        counted = scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        if counted:
            if svc.pending >= svc.limits.max_requests:
                await _send_json(guarded_send, 503, {
                    "error": f"server busy: {svc.pending} requests in progress (limit "
                             f"{svc.limits.max_requests}); retry later"})
                return
            svc.pending += 1
        deadline = asyncio.timeout(svc.limits.deadline_s)
        try:
            async with deadline:
                await self.app(scope, receive, guarded_send)
        except TimeoutError:
            if not deadline.expired():
                raise
            logger.warning("request %s %s passed the hard deadline of %g s; closing it",
                           scope.get("method"), scope.get("path"), svc.limits.deadline_s)
            if not started:
                await _send_json(guarded_send, 503, {
                    "error": f"request took longer than {svc.limits.deadline_s:g} s"})
            # else: returning with the response incomplete makes the server drop the connection
        finally:
            if counted:
                svc.pending -= 1


def create_app(
    model: nn.Module,
    *,
    limits: ServeLimits = ServeLimits(),
    options: PredictOptions | None = None,
    meta: WeightsMeta | None = None,
) -> FastAPI:
    """The ASGI app serving ``model``.

    Args:
        model: An eval-mode model, typically from :func:`pspnet.checkpoint.load_model`, or an
            exported ONNX / TorchScript runtime (:func:`load_for_serving`), whose embedded
            metadata gives the classes, palette and preprocessing.
        limits: Resource limits.
        options: How to run the model (default: one forward pass over the whole image; for a
            fixed-size export, a sliding window of its size). Clients cannot change them.
        meta: Classes, palette and preprocessing; default ``model.meta``.

    Returns:
        A FastAPI app. Run it with :func:`build_server` / :class:`ServerThread`, which add the
        connection-level limits.

    Raises:
        ServeError: The ``serve`` extra is missing, the model carries no metadata, or an
            exported file cannot run with ``options`` (e.g. flip with a labels export).
    """
    _require_extras()
    info = _model_info(model, meta, options)
    if getattr(model, "training", False):
        raise ServeError("the model is in training mode; call model.eval() before serving it")
    svc = _Service(model, info, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        svc.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pspnet", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.pspnet = svc

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error in %s %s", request.method, request.url.path,
                     exc_info=exc)
        return error(500, "internal error")

    @app.get("/")
    async def index() -> JSONResponse:
        return JSONResponse({
            "service": "pspnet semantic segmentation",
            "model": info.arch,
            "num_classes": svc.num_classes,
            "inference": {"mode": svc.options.mode, "crop_size": svc.options.crop_size,
                          "scales": list(svc.options.scales), "flip": svc.options.flip},
            **({"export": info.export} if info.export is not None else {}),
            "endpoints": {
                "POST /predict?format=png": "image as the raw body (Content-Type image/*) or "
                                            "multipart field 'image' -> palette PNG mask whose "
                                            "pixel values are class indices, at the image's size",
                "POST /predict?format=json": "same input -> {width, height, classes: [{index, "
                                             "name, pixels, fraction}], time_ms}",
                "GET /health": "liveness and the model's classes",
            },
            "formats": list(ALLOWED_FORMATS),
            "limits": limits.describe(),
        })

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({
            "status": "ok",
            "model": info.arch,
            "classes": svc.class_names,
            "num_classes": svc.num_classes,
            "busy": {"running": svc.running, "waiting": svc.slots.waiting,
                     "requests": svc.pending, "max_concurrency": limits.max_concurrency},
        })

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            unknown = sorted(set(request.query_params) - {"format"})
            if unknown:
                raise ApiError(400, f"unknown query parameter {unknown[0]!r}; the only one is "
                                    "'format' (png or json)")
            formats = request.query_params.getlist("format")
            fmt = formats[-1].lower() if formats else "png"
            if len(formats) > 1 or fmt not in ("png", "json"):
                raise ApiError(400, "format must be given once, as png or json")
            if fmt == "png" and svc.num_classes > 255:
                raise ApiError(400, f"this model has {svc.num_classes} classes and a PNG mask "
                                    "holds at most 255; ask for format=json")
            data = await svc.image_bytes(request)
            # Header only: refuse bombs, and sizes the model cannot take, before queueing.
            svc.check_size(*_open_checked(data, limits.max_pixels).size)
            body, media_type, ms = await svc.infer(data, fmt)
            return Response(body, media_type=media_type,
                            headers={"x-inference-time-ms": f"{ms:.1f}"})
        except ApiError as e:
            return error(e.status, e.message)
        except _ClientGone:
            return error(400, "client disconnected")
        except Exception:  # noqa: BLE001 - logged here, never shown to the client
            logger.exception("prediction failed")
            return error(500, "internal error")

    app.add_middleware(_Guard, service=svc)
    return app


# --------------------------------------------------------------------------------------------
# The HTTP server


def _protocol_class(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for the request head and JSON 400s."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def raw_json(status: int, reason: str, message: str) -> bytes:
        body = _json_bytes({"error": message})
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        return head.encode("ascii") + body

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        _pspnet_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._pspnet_timer = self.loop.call_later(header_timeout_s, self._pspnet_head_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._pspnet_timer is not None:
                self._pspnet_timer.cancel()
            super().connection_lost(exc)

        def _pspnet_head_timeout(self) -> None:
            # Every response closes its connection, so a connection carries one request: if its
            # head has not been parsed by now, the client is too slow (or idle).
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            message = f"request head not received within {header_timeout_s:g} s"
            self.transport.write(raw_json(408, "Request Timeout", message))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(raw_json(400, "Bad Request", "invalid HTTP request"))
            self.transport.close()

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
    _require_extras()
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


def load_for_serving(weights_path: str | Path, device: str = "cpu") -> nn.Module:
    """The model :func:`serve` runs: an eager model, or an exported ONNX / TorchScript file.

    Exported files (``pspnet export``) are recognised by their content, not their suffix (a
    training checkpoint is a ``.pt`` file too), and run on the CPU, whatever ``device`` says.

    Args:
        weights_path: Anything :func:`pspnet.checkpoint.load_model` reads, or an export.
        device: Where an eager model runs.

    Raises:
        ServeError: An ONNX file without onnxruntime installed.
        CheckpointError: The weights cannot be loaded.
        ValueError: An ONNX / TorchScript file that is not a pspnet export.
    """
    try:
        return load_model_or_export(weights_path, device=device)
    except ImportError as e:
        raise ServeError(f"cannot serve {weights_path}: {e}") from None


def serve(
    weights_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    device: str = "cpu",
    options: PredictOptions | None = None,
    log_level: str = "info",
) -> None:
    """Load ``weights_path`` and serve it until interrupted (Ctrl+C / SIGTERM). Blocks.

    Args:
        weights_path: Anything :func:`pspnet.checkpoint.load_model` reads, or an ONNX /
            TorchScript file from ``pspnet export`` (:func:`load_for_serving`).
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
            exported file cannot run (no onnxruntime; ``options`` it cannot honour).
        CheckpointError: The weights cannot be loaded.
    """
    _require_extras()
    model = load_for_serving(weights_path, device=device)
    app = create_app(model, limits=limits, options=options)
    server = build_server(app, limits=limits, log_level=log_level)  # configures logging
    warning = host_warning(host)
    if warning:
        logger.warning("!" * 78)
        logger.warning("WARNING: %s", warning)
        logger.warning("!" * 78)
    sock = bind_socket(host, port)
    svc: _Service = app.state.pspnet
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
        max_concurrency=max_concurrency,
    )
    serve(weights, host=host, port=port, limits=limits, device=device, log_level=log_level)
    return 0


if __name__ == "__main__":  # pragma: no cover
    print("run `pspnet serve --weights DIR`", file=sys.stderr)
    sys.exit(2)
