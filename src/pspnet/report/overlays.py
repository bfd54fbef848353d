"""Pictures composed with Pillow: pictures side by side, and a grid of images with their ground
truth and prediction painted over them (charts are :mod:`pspnet.report.charts`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pspnet.data.palette import draw_legend, overlay

__all__ = ["font", "text_size", "save_png", "tile_row", "overlay_grid"]


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (a bitmap font where FreeType is missing)."""
    try:
        # Pillow >= 10.1 ships a scalable default font when FreeType is available.
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn with ``font``."""
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0]), int(box[3] - box[1])


def save_png(img: Image.Image, path: str | Path, *, optimize: bool = False) -> Path:
    """Write ``img`` as PNG at ``path`` (parent folders are created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG", optimize=optimize)
    return out


def tile_row(tiles: Sequence[Image.Image], titles: Sequence[str], path: str | Path) -> Path:
    """Same-size pictures in a row, 4 px apart, each under its title (e.g. image | truth |
    each model's prediction); written as PNG."""
    w, h = tiles[0].size
    canvas = Image.new("RGB", (len(tiles) * (w + 4), h + 16), "white")
    d = ImageDraw.Draw(canvas)
    for i, (t, title) in enumerate(zip(tiles, titles)):
        canvas.paste(t, (i * (w + 4), 16))
        d.text((i * (w + 4) + 2, 2), title, fill="black")
    return save_png(canvas, path)


def overlay_grid(
    samples: Sequence[Any],
    labels: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    panel_width: int = 240,
    alpha: float = 0.6,
    ignore_index: int = 255,
) -> Path:
    """A grid with one row per image: image | ground truth | prediction, and a class legend.

    Args:
        samples: :class:`~pspnet.data.io.Sample` objects (image path and name).
        labels: The (H, W) ground-truth class maps.
        preds: The (H, W) predicted class maps.
        palette: (K, 3) uint8 class colours.
        class_names: K names for the legend.
        path: Output PNG.
        panel_width: Width of each panel in pixels (the height keeps the aspect ratio).
        alpha: Weight of the class colours over the image.
        ignore_index: Void label value (shown as the bare image).

    Returns:
        The path written.
    """
    f_head, f_cap = font(15), font(12)
    head_h, cap_h, gap = 26, 18, 6
    rows = []
    for sample, gt, pred in zip(samples, labels, preds):
        img = np.asarray(Image.open(sample.image).convert("RGB"))
        ph = max(1, round(img.shape[0] * panel_width / img.shape[1]))
        panels = [
            Image.fromarray(img),
            overlay(img, gt, palette, alpha=alpha, ignore_index=ignore_index, legend=False),
            overlay(img, pred, palette, alpha=alpha, ignore_index=ignore_index, legend=False),
        ]
        panels = [p.resize((panel_width, ph), Image.Resampling.BILINEAR) for p in panels]
        valid = gt != ignore_index
        acc = float((pred[valid] == gt[valid]).mean()) if valid.any() else math.nan
        rows.append((sample.name, acc, panels))
    grid_w = 3 * panel_width + 4 * gap
    grid_h = head_h + sum(cap_h + r[2][0].height + gap for r in rows) + gap
    legend = draw_legend(list(enumerate(class_names)), palette)
    canvas = Image.new("RGB", (grid_w + legend.width + gap, max(grid_h, legend.height + head_h)),
                       (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(("image", "ground truth", "prediction")):
        tw, _ = text_size(draw, title, f_head)
        x = gap + j * (panel_width + gap)
        draw.text((x + (panel_width - tw) / 2, 5), title, fill=(0, 0, 0), font=f_head)
    y = head_h
    for name, acc, panels in rows:
        cap = f"{name}: pixel accuracy {100 * acc:.1f}%" if math.isfinite(acc) else name
        draw.text((gap, y + 2), cap, fill=(60, 60, 60), font=f_cap)
        y += cap_h
        for j, p in enumerate(panels):
            canvas.paste(p, (gap + j * (panel_width + gap), y))
        y += panels[0].height + gap
    canvas.paste(legend, (grid_w, head_h))
    return save_png(canvas, path, optimize=True)
