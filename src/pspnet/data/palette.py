"""Colour palettes, palette PNGs and overlays with a legend.

A label map is saved as a palette ('P' mode) PNG whose pixel values *are* the class indices, the
convention of Pascal VOC, ADE20K tools and the authors' code: one file is both a picture you can
look at and the exact machine-readable mask (``np.asarray(Image.open(path))`` gives the
indices back). Ignore pixels are stored as 255 and shown in white, which no class of the default
palette uses for the first 255 classes (class 0, VOC's background, is black).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "IGNORE_COLOR",
    "default_palette",
    "colorize",
    "save_mask_png",
    "present_classes",
    "legend_entries",
    "draw_legend",
    "overlay",
]

#: Display colour of ignore pixels (stored as index 255 in palette PNGs).
IGNORE_COLOR: tuple[int, int, int] = (255, 255, 255)

# A 'P' image has 256 palette slots and slot 255 is reserved for ignore.
_MAX_P_CLASSES = 255


def default_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette: class ``i``'s bits spread over the high bits of R, G and B.

    Bit ``3j + c`` of the index becomes bit ``7 - j`` of channel ``c``, so neighbouring indices
    get very different colours (1 -> dark red, 2 -> dark green, 15 -> VOC "person" pink) and all
    ``2**24`` indices are distinct.

    Args:
        n: Number of colours.

    Returns:
        ``(n, 3)`` uint8 array.

    Raises:
        ValueError: If ``n`` is negative or larger than ``2**24``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 1 << 24:
        raise ValueError(f"default_palette: n must be an integer in [0, 2**24], got {n!r}")
    code = np.arange(n, dtype=np.int64)  # (n,)
    pal = np.zeros((n, 3), np.int64)
    for j in range(8):
        for c in range(3):
            pal[:, c] |= ((code >> c) & 1) << (7 - j)
        code >>= 3
    return pal.astype(np.uint8)


def _as_palette(palette: np.ndarray | Sequence[Sequence[int]] | None) -> np.ndarray:
    if palette is None:
        return default_palette(256)
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 1:
        raise ValueError(f"palette must have shape (n, 3), got {pal.shape}")
    if not np.issubdtype(pal.dtype, np.integer) or pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette values must be integers in 0..255")
    return pal.astype(np.uint8)


def _as_mask(mask) -> np.ndarray:
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"mask image must be a single-channel index image, got {mask.mode}")
        mask = np.asarray(mask)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"mask must hold integer class indices, got dtype {arr.dtype}")
    return arr


def _check_values(mask: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray:
    """Return the ignore mask; raise if any other value is not a valid class index."""
    ignore = mask == ignore_index
    bad = ~ignore & ((mask < 0) | (mask >= n_classes))
    if bad.any():
        values = np.unique(mask[bad])[:10].tolist()
        raise ValueError(
            f"mask has values {values} outside the {n_classes} classes (and not the ignore "
            f"index {ignore_index})"
        )
    return ignore


def colorize(
    mask,
    palette: np.ndarray | None = None,
    ignore_index: int = 255,
) -> Image.Image:
    """A palette ('P') image whose pixel values are the class indices.

    Args:
        mask: ``(H, W)`` integer class indices (numpy array, tensor on CPU, or 'L'/'P' image).
        palette: ``(n, 3)`` uint8 colours; ``None`` uses :func:`default_palette`. At most 255
            classes fit a palette image (slot 255 is ignore).
        ignore_index: Pixels with this value are stored as 255 and shown in
            :data:`IGNORE_COLOR`.

    Returns:
        A mode 'P' image of size ``(W, H)``.

    Raises:
        ValueError: For values that are neither a class of the palette nor ``ignore_index``.
    """
    arr = _as_mask(mask)
    pal = _as_palette(palette)
    n = min(len(pal), _MAX_P_CLASSES)
    ignore = _check_values(arr, n, ignore_index)
    idx = np.where(ignore, 255, arr).astype(np.uint8)  # (H, W) indices; ignore -> 255
    # frombytes keeps the bytes as they are; convert('P') from 'L' would re-quantise them.
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    flat = np.zeros((256, 3), np.uint8)
    flat[:n] = pal[:n]
    flat[255] = IGNORE_COLOR
    img.putpalette(flat.reshape(-1).tolist())
    return img


def save_mask_png(
    path: str | Path,
    mask,
    palette: np.ndarray | None = None,
    ignore_index: int = 255,
) -> Path:
    """Save ``mask`` as a palette PNG (viewable, and ``np.asarray(Image.open(path))`` == mask).

    Parent directories are created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colorize(mask, palette, ignore_index).save(path, format="PNG")
    return path


def present_classes(mask, ignore_index: int = 255) -> list[int]:
    """Sorted class indices that occur in ``mask`` (ignore excluded)."""
    arr = _as_mask(mask)
    values = np.unique(arr)
    return [int(v) for v in values if v != ignore_index]


def legend_entries(
    mask,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> list[tuple[int, str]]:
    """``(index, name)`` for each class present in ``mask``, in index order.

    Without ``class_names`` the name is the index itself.

    Raises:
        ValueError: If a present class has no name in ``class_names``.
    """
    entries = []
    for c in present_classes(mask, ignore_index):
        if class_names is None:
            entries.append((c, str(c)))
        elif 0 <= c < len(class_names):
            entries.append((c, str(class_names[c])))
        else:
            raise ValueError(f"class {c} occurs in the mask but class_names has {len(class_names)}")
    return entries


_SWATCH = 12  # px, side of a colour square
_GAP = 4  # px between swatch and text, and around entries


def draw_legend(
    entries: Sequence[tuple[int, str]],
    palette: np.ndarray | None = None,
    height: int | None = None,
) -> Image.Image:
    """A white RGB panel listing ``entries`` as colour swatches with names.

    Entries fill columns top to bottom; with ``height`` given, as many columns as needed are
    used so the panel is exactly that tall (so it can sit beside an image).

    Args:
        entries: ``(class index, name)`` pairs.
        palette: ``(n, 3)`` colours indexed by class; ``None`` uses :func:`default_palette`.
        height: Panel height in pixels; ``None`` fits one column.

    Returns:
        The legend image (mode 'RGB').
    """
    pal = _as_palette(palette)
    font = ImageFont.load_default()
    row_h = _SWATCH + _GAP
    # The text height of the default font is ~11 px, the swatch sets the row pitch.
    text_w = [int(np.ceil(font.getbbox(name)[2])) if name else 0 for _, name in entries]
    col_w = _GAP + _SWATCH + _GAP + max(text_w, default=0) + 2 * _GAP
    n = len(entries)
    if height is None:
        rows = max(n, 1)
        height = _GAP + rows * row_h
    else:
        rows = max(1, (height - _GAP) // row_h)
    cols = max(1, -(-n // rows))  # ceil
    panel = Image.new("RGB", (cols * col_w, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, (c, name) in enumerate(entries):
        if not 0 <= c < len(pal):
            raise ValueError(f"class {c} has no colour in a palette of {len(pal)}")
        x = (k // rows) * col_w + _GAP
        y = _GAP + (k % rows) * row_h
        colour = tuple(int(v) for v in pal[c])
        draw.rectangle((x, y, x + _SWATCH - 1, y + _SWATCH - 1), fill=colour)
        draw.text((x + _SWATCH + _GAP, y), name, fill=(0, 0, 0), font=font)
    return panel


def overlay(
    image_rgb,
    mask,
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    legend: bool = True,
) -> Image.Image:
    """Blend the class colours over an image, with a legend of the classes present at the right.

    Ignore pixels show the image unchanged.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 array or a PIL image (converted to RGB).
        mask: ``(H, W)`` integer class indices.
        palette: ``(n, 3)`` colours; ``None`` uses :func:`default_palette`.
        alpha: Weight of the class colour, in ``[0, 1]``.
        class_names: Names indexed by class, for the legend; ``None`` prints indices.
        ignore_index: Value of unlabelled pixels.
        legend: Append the legend panel (only classes present in ``mask`` are listed; nothing
            is appended when no class is present).

    Returns:
        An RGB image of width ``W + legend width`` and height ``H``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if isinstance(image_rgb, Image.Image):
        image_rgb = np.asarray(image_rgb.convert("RGB"))
    img = np.asarray(image_rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    arr = _as_mask(mask)
    if arr.shape != img.shape[:2]:
        raise ValueError(f"mask shape {arr.shape} does not match image shape {img.shape[:2]}")
    pal = _as_palette(palette)
    ignore = _check_values(arr, len(pal), ignore_index)
    colours = pal[np.where(ignore, 0, arr)].astype(np.float32)  # (H, W, 3)
    blend = img.astype(np.float32) * (1.0 - alpha) + colours * alpha
    out = np.where(ignore[..., None], img, np.rint(blend).astype(np.uint8))
    picture = Image.fromarray(out)
    if not legend:
        return picture
    entries = legend_entries(arr, class_names, ignore_index)
    if not entries:
        return picture
    panel = draw_legend(entries, pal, height=picture.height)
    canvas = Image.new("RGB", (picture.width + panel.width, picture.height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(panel, (picture.width, 0))
    return canvas
