"""Reading a request: its body (size and time limits), its image (format and pixel limits).

Everything here refuses with :class:`~pspnet.serve.limits.ApiError` (status and one-line
message) before doing the work a limit guards: the body is counted while it arrives, the image
header is read before any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pspnet.data.io import DataError, exif_upright, image_to_rgb, is_complete
from pspnet.serve.limits import (
    _ALLOWED_DETECTED,
    ALLOWED_FORMATS,
    MAX_PARTS,
    ApiError,
    ClientGone,
    ServeLimits,
)

__all__ = ["open_checked", "decode_image", "media_type", "multipart_image", "read_body",
           "image_bytes", "answer_format"]


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


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
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


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image to (H, W, 3) uint8 RGB, under the rules of ``read_image``.

    Raises:
        ApiError: 400 (empty), 413 (too many pixels), 415 (not an allowed image), 422 (corrupt,
            truncated, or a floating-point image).
    """
    im = open_checked(data, max_pixels)
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
        return image_to_rgb(exif_upright(im), "the uploaded image")  # as predict: upright
    except DataError as e:
        raise ApiError(422, str(e)) from None


# --------------------------------------------------------------------------------------------
# Request bodies


def media_type(value: str) -> tuple[str, dict[str, str]]:
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(value)
    return (ctype.decode("latin-1").strip().lower(),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()})


def multipart_image(body: bytes, boundary: str) -> bytes:
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


async def read_body(request: Any, limits: ServeLimits) -> bytes:
    """The request body, at most ``max_body_bytes``, received within ``timeout_s`` and with
    no pause longer than ``idle_timeout_s``."""
    from starlette.requests import ClientDisconnect

    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared):,} bytes is above this "
                                f"server's limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    # One deadline checked around each read, not ``wait_for`` nested in ``asyncio.timeout``:
    # on Python 3.11 a chunk that arrives just as the outer timeout fires makes ``wait_for``
    # swallow the cancellation, and a client trickling bytes then escapes the body limit.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout_s
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _body_too_slow(limits, size)
            wait = min(limits.idle_timeout_s, left)
            try:  # a client that stops sending is cut off after the idle time
                chunk = await asyncio.wait_for(anext(stream), wait)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if wait < limits.idle_timeout_s:
                    raise _body_too_slow(limits, size) from None
                raise ApiError(408, f"request body stalled: no byte for "
                                    f"{limits.idle_timeout_s:g} s ({size:,} bytes "
                                    "arrived)") from None
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is above this server's limit of "
                                    f"{limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def _body_too_slow(limits: ServeLimits, size: int) -> ApiError:
    return ApiError(408, f"request body not received within {limits.timeout_s:g} s "
                         f"({size:,} bytes arrived)")


async def image_bytes(request: Any, limits: ServeLimits) -> bytes:
    """The encoded image of a ``/predict`` request (raw body or multipart field)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not accepted; send the image "
                            "bytes as they are")
    ctype, params = media_type(request.headers.get("content-type", ""))
    if ctype == "multipart/form-data":
        body = await read_body(request, limits)
        return multipart_image(body, params.get("boundary", ""))
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await read_body(request, limits)
    raise ApiError(
        415, f"Content-Type {ctype or '(none)'!r} is not accepted: send the image as the raw "
             "body with Content-Type image/* (or application/octet-stream), or as the file "
             "field 'image' of a multipart/form-data body"
    )


def answer_format(query: Any, num_classes: int) -> str:
    """``png`` or ``json`` from the ``/predict`` query parameters (the only one is ``format``).

    Raises:
        ApiError: 400 for another parameter, a repeated or unknown format, or a PNG answer
            for more classes than a palette PNG holds.
    """
    unknown = sorted(set(query) - {"format"})
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r}; the only one is "
                            "'format' (png or json)")
    formats = query.getlist("format")
    fmt = formats[-1].lower() if formats else "png"
    if len(formats) > 1 or fmt not in ("png", "json"):
        raise ApiError(400, "format must be given once, as png or json")
    if fmt == "png" and num_classes > 255:
        raise ApiError(400, f"this model has {num_classes} classes and a PNG mask "
                            "holds at most 255; ask for format=json")
    return fmt
