"""The service behind the routes: what is served, the inference slots, running one image.

:func:`model_info` reads the classes, palette and preprocessing from the model's metadata (an
export brings its own); :class:`Service` decodes, predicts and encodes in worker threads, at
most ``max_concurrency`` at once (:class:`Slots`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.exported import is_exported
from pspnet.config import Preprocessing
from pspnet.data.palette import colorize, default_palette
from pspnet.engine.predict import predict_array
from pspnet.inference import InferenceOptions
from pspnet.serve.limits import ApiError, ServeError, ServeLimits, json_bytes
from pspnet.serve.request import decode_image, image_bytes

__all__ = ["Slots", "ModelInfo", "model_info", "Service"]


class Slots:
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
class ModelInfo:
    """Everything the server needs besides the model: names, colours, how to run it."""

    arch: str
    num_classes: int
    classes: tuple[str, ...] | None
    palette: Any
    preprocess: Preprocessing
    options: InferenceOptions
    export: dict[str, Any] | None = None
    """Exported files only: ``runtime``, ``input_size`` (None: any size), ``min_size`` and
    ``output`` (``"logits"`` or ``"labels"``)."""


def model_info(model: nn.Module, meta: WeightsMeta | None,
                options: InferenceOptions | None) -> ModelInfo:
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
        return ModelInfo(meta.model.arch, int(meta.model.num_classes), meta.classes,
                          meta.palette, meta.preprocess, options or InferenceOptions())
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
        if fixed:
            options = InferenceOptions(mode="slide", crop_size=fixed)  # type: ignore[arg-type]
        else:
            options = InferenceOptions()
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
    return ModelInfo(
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


class Service:
    """The served model with its names and colours, the worker threads and the slots."""

    def __init__(self, model: nn.Module, info: ModelInfo, limits: ServeLimits) -> None:
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
        self.slots = Slots(limits.max_concurrency, limits.max_queue)
        self.pending = 0  # POST requests in progress (event-loop thread only)
        self.pending_by_client: dict[str, int] = {}  # the same, by client IP address
        self.running = 0  # inferences running in worker threads
        self._lock = threading.Lock()

    def admit(self, client: str) -> str | None:
        """Count a new ``POST`` from address ``client``, or say why it is refused (503).

        Event-loop thread only; every admitted request must :meth:`leave`.
        """
        limits = self.limits
        if self.pending >= limits.max_requests:
            return (f"server busy: {self.pending} requests in progress (limit "
                    f"{limits.max_requests}); retry later")
        mine = self.pending_by_client.get(client, 0)
        if mine >= limits.max_requests_per_client:
            return (f"too many requests in progress from your address: {mine} (limit "
                    f"{limits.max_requests_per_client} per client); finish or close them first")
        self.pending += 1
        self.pending_by_client[client] = mine + 1
        return None

    def leave(self, client: str) -> None:
        """A request counted by :meth:`admit` has ended."""
        self.pending -= 1
        left = self.pending_by_client.get(client, 1) - 1
        if left > 0:
            self.pending_by_client[client] = left
        else:
            self.pending_by_client.pop(client, None)

    async def image_bytes(self, request: Any) -> bytes:
        """The encoded image of a ``/predict`` request, within this server's body limits."""
        return await image_bytes(request, self.limits)

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
            image = decode_image(data, self.limits.max_pixels)
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
            return json_bytes(doc), "application/json", ms
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


