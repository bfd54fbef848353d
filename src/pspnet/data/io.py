"""Safe reading of images and label images (list files: :mod:`pspnet.data.samples`).

Everything that turns bytes on disk into arrays goes through this module, so the rules are in one
place:

* Only allow-listed formats are decoded (:data:`IMAGE_EXTENSIONS`, checked against the format
  Pillow *detects*, not only the file name), so a renamed text file or an exotic format never
  reaches a decoder we did not plan for.
* A pixel limit of our own (``max_pixels``) refuses decompression bombs before any pixel is
  decoded; Pillow's own bomb error/warning is turned into the same :class:`DataError`.
* Truncated or corrupt files raise :class:`DataError`. We never rely on Pillow's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` (another library in the process may have set it to True, in
  which case Pillow pads missing rows with grey); PNG and JPEG files are additionally checked for
  their end marker.
* Labels are decoded as the integers that are stored: palette images give their palette
  *indices*, never their luminance (``convert("L")`` of a VOC label would give garbage classes).
* Pixels are returned as stored: EXIF orientation is reported (:func:`exif_orientation`) but not
  applied. Label PNGs carry no EXIF, so rotating only the photo would misalign it with its label.
  Prediction on photos (``predict``, ``serve``), where no label exists, asks for the upright
  picture instead (``read_image(..., apply_exif=True)``, :func:`exif_upright`).

This module imports only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DataError",
    "MissingDataFileError",
    "OversizedImageError",
    "LabelFormatError",
    "Sample",
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "open_image",
    "read_image",
    "read_label",
    "decode_label",
    "exif_orientation",
    "exif_upright",
    "image_size",
]

#: File name extensions we accept for images and labels (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

#: Pillow format names matching :data:`IMAGE_EXTENSIONS`. MPO is how Pillow names the JPEGs
#: many phone cameras write (a JPEG with an extra preview image); it decodes as a JPEG.
_ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_ALLOWED_DETECTED: frozenset[str] = frozenset(_ALLOWED_FORMATS) | {"MPO"}

#: Formats whose compression changes pixel values: never acceptable for labels.
_LOSSY_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO"})

#: Default limit on width*height of any image or label we decode (120 megapixels: a 12000x10000
#: aerial tile still passes; a 50000x50000 "image" that decodes to 7.5 GB does not).
DEFAULT_MAX_PIXELS: int = 120_000_000

_EXIF_ORIENTATION_TAG = 0x0112


class DataError(ValueError):
    """A data file (image, label, list file) is missing, unreadable or has invalid content.

    The message always names the file, the offending value and how to fix it.
    """


class MissingDataFileError(DataError, FileNotFoundError):
    """A file named by a list file or a data set layout does not exist.

    It is both a :class:`DataError` and a :class:`FileNotFoundError`, so callers may catch either.
    """


class OversizedImageError(DataError):
    """An image has more pixels than the decompression-bomb limit allows."""


class LabelFormatError(DataError):
    """A label file decodes, but not to class indices (colour-coded, lossy, or float)."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file.

    Attributes:
        image: Path of the image file.
        label: Path of the label file, or None when the split has no labels (e.g. a test split).
        name: Short unique name used in reports and prediction file names.
    """

    image: Path
    label: Path | None
    name: str


# --------------------------------------------------------------------------------------------
# Opening files.


def _pixel_limit_fix(max_pixels: int) -> str:
    return (
        f"if the file is genuine, raise the limit (now {max_pixels:,}: --max-pixels of "
        "predict, evaluate, serve and data check); otherwise remove it from the data set"
    )


def _pillow_bomb_error(path: Path, err: Exception, max_pixels: int) -> OversizedImageError:
    m = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(err))
    pixels = int(m.group(1)) if m else None
    if pixels is not None and pixels > max_pixels:
        return OversizedImageError(
            f"{path}: image has {pixels:,} pixels, above the limit of {max_pixels:,} (a guard "
            "against decompression bombs); " + _pixel_limit_fix(max_pixels)
        )
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    pil_limit = f" of {int(m.group(2)):,} pixels" if m else ""
    return OversizedImageError(
        f"{path}: image has {count}; the pixel limit ({max_pixels:,}) allows it but Pillow's own "
        f"decompression-bomb limit{pil_limit} (PIL.Image.MAX_IMAGE_PIXELS) refuses it; raise "
        "PIL.Image.MAX_IMAGE_PIXELS in the calling program, or downscale the file"
    )


def open_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open, check and fully decode an image file.

    Args:
        path: The file to read.
        max_pixels: Refuse images with more than this many pixels (width * height) before
            decoding them, to stop decompression bombs.

    Returns:
        The decoded Pillow image in the mode it was stored in (not converted), with its
        ``format`` attribute and EXIF data available. It was decoded from an in-memory copy,
        so no file handle stays open.

    Raises:
        MissingDataFileError: The file does not exist.
        DataError: The extension or detected format is not allowed, the image is too large, or
            the file is truncated or corrupt.
    """
    p = Path(path)
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(
            f"{p}: extension {p.suffix or '(none)'!r} is not an allowed image format; "
            f"convert it to one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    try:
        # Read the bytes once: Pillow decodes from memory and we can check end markers below.
        data = p.read_bytes()
    except FileNotFoundError:
        raise MissingDataFileError(
            f"{p}: file does not exist; check the data root and the file name"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, not an image file; fix the path") from None
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({e.strerror or e}); check its permissions") from None

    try:
        im = Image.open(io.BytesIO(data), formats=_ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own process-wide limit fired first (as an error, or as a warning the user
        # turned into one). Say which limit it was: --max-pixels cannot lift Pillow's.
        raise _pillow_bomb_error(p, e, max_pixels) from None
    except UnidentifiedImageError:
        raise DataError(
            f"{p}: not an image, or not in an allowed format "
            f"({', '.join(_ALLOWED_FORMATS)}); re-save it as PNG (labels) or JPEG/PNG (photos) "
            "or remove it from the data set"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed header can fail anywhere in a plugin
        raise DataError(f"{p}: corrupt image header ({e}); re-export or remove the file") from None

    if im.format not in _ALLOWED_DETECTED:  # defensive: `formats=` should already ensure this
        raise DataError(
            f"{p}: detected format {im.format} is not allowed; convert it to PNG or JPEG"
        )
    width, height = im.size
    pixels = width * height
    if pixels > max_pixels:
        raise OversizedImageError(
            f"{p}: image is {width}x{height} = {pixels:,} pixels, above the limit of "
            f"{max_pixels:,} (a guard against decompression bombs); " + _pixel_limit_fix(max_pixels)
        )
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt data can fail anywhere inside a decoder
        raise DataError(
            f"{p}: truncated or corrupt {im.format} file ({e}); re-download or re-export it"
        ) from None
    _check_complete(p, im.format, data)
    return im


def is_complete(fmt: str, data: bytes) -> bool:
    """Whether PNG/JPEG bytes end with their end marker (other formats: always True).

    Pillow raises on truncation only while ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, a
    process-wide flag any imported library may flip. These cheap structural checks keep truncated
    files out regardless of that flag.
    """
    if fmt == "PNG":
        # Every complete PNG ends with an IEND chunk, whose CRC is the constant AE 42 60 82.
        return data.rfind(b"IEND\xaeB`\x82") != -1
    if fmt in ("JPEG", "MPO"):
        # 0xFF bytes inside entropy-coded data are stuffed (FF 00), so FF D9 (end of image) can
        # only be a marker. An EXIF thumbnail has its own FF D9, but it comes before the main
        # image's start-of-scan (FF DA); a complete file has an FF D9 after its last FF DA.
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
    return True


def _check_complete(path: Path, fmt: str, data: bytes) -> None:
    """Reject PNG/JPEG files whose end marker is missing (see :func:`is_complete`)."""
    if not is_complete(fmt, data):
        raise DataError(
            f"{path}: truncated {fmt} file (its end marker is missing); re-download or "
            "re-export it"
        )


def exif_orientation(path: str | os.PathLike[str] | Image.Image) -> int:
    """Return the EXIF orientation tag of an image (1 = upright, no rotation stored).

    Only the header is parsed; no pixels are decoded.

    Args:
        path: The image file, or an already opened image (e.g. from :func:`open_image`).

    Returns:
        An int in 1..8 (see the EXIF standard); 1 when the file has no (valid) tag.

    Raises:
        MissingDataFileError: The file does not exist.
        DataError: The file is not an allowed image.
    """
    if isinstance(path, Image.Image):
        return _orientation_of(path)
    p = Path(path)
    try:
        with Image.open(p, formats=_ALLOWED_FORMATS) as im:
            return _orientation_of(im)
    except FileNotFoundError:
        raise MissingDataFileError(
            f"{p}: file does not exist; check the data root and the file name"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The header is fine and only the pixel count is large: EXIF is still irrelevant here,
        # the size is refused (with the full message) when the pixels are read.
        return 1
    except UnidentifiedImageError:
        raise DataError(
            f"{p}: not an image, or not in an allowed format ({', '.join(_ALLOWED_FORMATS)})"
        ) from None


def exif_upright(im: Image.Image) -> Image.Image:
    """``im`` rotated and mirrored as its EXIF orientation tag says: the photo as a viewer shows
    it (a phone's portrait shot stands upright).

    For prediction only (``predict``, ``serve``): a training label was drawn on the stored
    pixels, so training and evaluation read photos as stored. An image without a tag, or with a
    broken EXIF block, is returned unchanged.
    """
    if _orientation_of(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Return (width, height) of an allowed image from its header, without decoding pixels.

    Args:
        path: The image file.

    Raises:
        MissingDataFileError: The file does not exist.
        DataError: The file is not an allowed image.
    """
    p = Path(path)
    try:
        with Image.open(p, formats=_ALLOWED_FORMATS) as im:
            return im.size
    except FileNotFoundError:
        raise MissingDataFileError(
            f"{p}: file does not exist; check the data root and the file name"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise OversizedImageError(
            f"{p}: Pillow refuses this image as a possible decompression bomb ({e}); "
            "downscale the file or remove it from the data set"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"{p}: not an image, or not in an allowed format ({', '.join(_ALLOWED_FORMATS)})"
        ) from None


def _orientation_of(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block only means "no orientation known"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --------------------------------------------------------------------------------------------
# Images.


def _owned(arr: np.ndarray, dtype: type) -> np.ndarray:
    """A C-contiguous, writable array of ``dtype``.

    ``np.asarray(pil_image)`` is a read-only view; transforms may write in place and torch warns
    on read-only arrays, so copy when (and only when) needed.
    """
    return np.require(arr, dtype=dtype, requirements=["C", "W"])


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, apply_exif: bool = False
) -> np.ndarray:
    """Read a photo as an RGB array, pixels as stored (or upright with ``apply_exif``).

    By default EXIF orientation is *not* applied: label files carry no EXIF tag, so rotating the
    photo alone would misalign it with its label. Use :func:`exif_orientation` (or ``pspnet
    data check``) to find such files.

    Grayscale, palette, RGBA (alpha dropped, not composited), CMYK and 16-bit grayscale (scaled
    to 8 bits) images are converted to RGB.

    Args:
        path: The image file.
        max_pixels: Refuse images with more than this many pixels.
        apply_exif: Turn the photo upright by its EXIF orientation (:func:`exif_upright`), for
            prediction where no label must match the stored pixels.

    Returns:
        A C-contiguous ``uint8`` array of shape (H, W, 3), RGB order.

    Raises:
        DataError: See :func:`open_image`; also for float images, which have no defined 0..255
            scale.
    """
    im = open_image(path, max_pixels=max_pixels)
    return image_to_rgb(exif_upright(im) if apply_exif else im, str(path))


def image_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded Pillow image to a C-contiguous (H, W, 3) uint8 RGB array.

    Shared by file reading and the HTTP server so both accept exactly the same images.

    Args:
        im: A fully decoded image.
        name: What to call it in error messages (a path, "request body").

    Raises:
        DataError: Float images (no defined 0..255 scale) and 32-bit images outside 0..65535.
    """
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise DataError(
                f"{name}: {mode} image has values outside 0..65535; convert it to 8-bit RGB"
            )
        # 16-bit to 8-bit by the top byte (what image viewers show), not by clipping at 255.
        gray = (values >> 8).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "F":
        raise DataError(
            f"{name}: floating-point image (mode F) has no defined colour scale; "
            "convert it to 8-bit RGB"
        )
    else:
        # L, LA, P, PA, 1, RGBA, RGBX, CMYK, YCbCr, ...: Pillow's conversion is well-defined.
        arr = np.asarray(im.convert("RGB"))
    return _owned(arr, np.uint8)


# --------------------------------------------------------------------------------------------
# Labels.

def decode_label(
    im: Image.Image, path: str | os.PathLike[str], *, allow_rgb: bool = False
) -> np.ndarray:
    """Turn an opened label image into its stored integer values.

    Args:
        im: A loaded image, e.g. from :func:`open_image`.
        path: The file it came from (for messages).
        allow_rgb: Return (H, W, 3) uint8 colours for RGB/RGBA labels instead of refusing them;
            for colour-coded data sets read through a :class:`~pspnet.data.label_maps.ColorToIndex`.

    Returns:
        (H, W) array: ``uint8`` for P (palette *indices*), L and 1 (0/1) images, ``uint16`` for
        16-bit images, ``int32`` for 32-bit integer images. With ``allow_rgb`` and an RGB(A)
        label, (H, W, 3) ``uint8``.

    Raises:
        DataError: Colour-coded labels (unless ``allow_rgb``), lossy (JPEG) labels, or modes that
            hold no integer class values.
    """
    mode = im.mode
    if im.format in _LOSSY_FORMATS:
        raise LabelFormatError(
            f"{path}: label stored as JPEG; JPEG compression changes pixel values along class "
            "borders, so labels must be lossless: export the original labels as PNG"
        )
    if mode == "P":
        # The palette indices *are* the classes (VOC, many tools). convert("L") would return
        # the luminance of the palette colours instead.
        return _owned(np.asarray(im), np.uint8)
    if mode in ("L", "1"):
        return _owned(np.asarray(im), np.uint8)
    if mode in ("LA", "PA"):
        # Editors (GIMP) add an alpha channel on export; the class is in the first channel.
        return _owned(np.asarray(im)[:, :, 0], np.uint8)
    if mode.startswith("I;16"):
        # Native byte order: Pillow gives big-endian arrays for I;16B.
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        return np.asarray(im).astype(np.int32)
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(im.convert("RGB"))
        if allow_rgb:
            return _owned(rgb, np.uint8)
        r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
        if np.array_equal(r, g) and np.array_equal(r, b):
            raise LabelFormatError(
                f"{path}: label is stored as {mode} but all three channels are equal, so it is "
                "a grayscale label saved as colour; re-save it as a single-channel (mode L) "
                "or palette PNG"
            )
        raise LabelFormatError(
            f"{path}: label is a colour-coded {mode} image; labels must hold class indices. "
            "Pass the data set's colour map (classes file with index and R G B; ColorToIndex) "
            "or convert the labels to single-channel index PNGs"
        )
    raise LabelFormatError(
        f"{path}: label image mode {mode!r} holds no integer class values; labels must be "
        "palette (P), 8-bit (L) or 16-bit grayscale PNGs"
    )


def read_label(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_rgb: bool = False,
) -> np.ndarray:
    """Read a label image as the integers stored in it (never as luminance).

    Decoding by mode: ``P`` gives the palette indices, ``L`` its values, ``I;16*``/``I`` their
    integer values, ``1`` gives 0/1. RGB/RGBA labels are refused (they are colour-coded) unless
    ``allow_rgb`` is set.

    Args:
        path: The label file.
        max_pixels: Refuse labels with more than this many pixels.
        allow_rgb: Return colour labels as (H, W, 3) uint8 (for ``ColorToIndex``).

    Returns:
        See :func:`decode_label`.

    Raises:
        DataError: See :func:`open_image` and :func:`decode_label`.
    """
    return decode_label(open_image(path, max_pixels=max_pixels), path, allow_rgb=allow_rgb)
