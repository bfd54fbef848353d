"""The ASGI app: ``POST /predict``, ``GET /health``, ``GET /``, behind an outer guard.

:class:`_Guard` enforces what must hold for every request (the request count, the hard
deadline, the closing headers, the head size); the routes answer JSON errors with their status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.inference import InferenceOptions
from pspnet.inference.bounds import MemoryBoundError
from pspnet.serve.limits import (
    ALLOWED_FORMATS,
    COMMON_HEADERS,
    MAX_HEAD_BYTES,
    ApiError,
    ClientGone,
    ServeError,
    ServeLimits,
    require_extras,
    send_json,
)
from pspnet.serve.request import answer_format, open_checked
from pspnet.serve.service import Service, model_info

try:  # the `serve` extra; module level so that FastAPI can resolve the routes' annotations
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # pragma: no cover - create_app and serve say what to install
    pass

__all__ = ["create_app"]

logger = logging.getLogger("pspnet.serve")


class _Guard:
    """Outer ASGI layer: request count limits (in all and per client address), hard deadline,
    closing headers, JSON errors."""

    def __init__(self, app: Any, service: Service) -> None:
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
                names = {n for n, _ in COMMON_HEADERS}
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": headers + COMMON_HEADERS}
            await send(message)

        # h11 refuses an incomplete head over MAX_HEAD_BYTES; one that arrives whole in a single
        # read is measured here.
        head = (len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
                + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", [])))
        if head > MAX_HEAD_BYTES:
            await send_json(guarded_send, 431, {
                "error": f"request head is {head:,} bytes, above the limit of {MAX_HEAD_BYTES:,}"})
            return
        counted = scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        client = (scope.get("client") or ("?", 0))[0]
        if counted:
            refusal = svc.admit(client)
            if refusal is not None:
                await send_json(guarded_send, 503, {"error": refusal})
                return
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
                await send_json(guarded_send, 503, {
                    "error": f"request took longer than {svc.limits.deadline_s:g} s"})
            # else: returning with the response incomplete makes the server drop the connection
        finally:
            if counted:
                svc.leave(client)


def create_app(
    model: nn.Module,
    *,
    limits: ServeLimits = ServeLimits(),
    options: InferenceOptions | None = None,
    meta: WeightsMeta | None = None,
) -> FastAPI:
    """The ASGI app serving ``model``.

    Args:
        model: An eval-mode model from :func:`pspnet.checkpoint.load_model`: eager weights, or
            an exported ONNX / TorchScript runtime, whose embedded metadata gives the classes,
            palette and preprocessing.
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
    require_extras()
    info = model_info(model, meta, options)
    if getattr(model, "training", False):
        raise ServeError("the model is in training mode; call model.eval() before serving it")
    svc = Service(model, info, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        svc.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pspnet", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.pspnet = svc
    _add_error_handlers(app)
    _add_info_routes(app, svc)
    _add_predict_route(app, svc)
    app.add_middleware(_Guard, service=svc)
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": ...}`` JSON; unexpected ones are logged and answered 500."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error in %s %s", request.method, request.url.path,
                     exc_info=exc)
        return _error(500, "internal error")


def _add_info_routes(app: FastAPI, svc: Service) -> None:
    """``GET /`` (the endpoints and the limits in force) and ``GET /health``."""
    info, limits = svc.info, svc.limits

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


def _add_predict_route(app: FastAPI, svc: Service) -> None:
    """``POST /predict``: the image in, the mask (PNG) or the class counts (JSON) out."""

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            fmt = answer_format(request.query_params, svc.num_classes)
            data = await svc.image_bytes(request)
            # Header only: refuse bombs, and sizes the model cannot take, before queueing.
            svc.check_size(*open_checked(data, svc.limits.max_pixels).size)
            body, media_type, ms = await svc.infer(data, fmt)
            return Response(body, media_type=media_type,
                            headers={"x-inference-time-ms": f"{ms:.1f}"})
        except ApiError as e:
            return _error(e.status, e.message)
        except ClientGone:
            return _error(400, "client disconnected")
        except MemoryBoundError as e:  # the image fits no mode inside the server's memory bound
            return _error(413, str(e))
        except Exception:  # noqa: BLE001 - logged here, never shown to the client
            logger.exception("prediction failed")
            return _error(500, "internal error")
