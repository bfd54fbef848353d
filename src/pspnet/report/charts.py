"""Charts drawn with Pillow only (no matplotlib): lines, bars and the confusion matrix.

Every chart is drawn with the same few helpers (:func:`font`, :func:`text_size`,
:func:`rotated_text`, :func:`nice_ticks`, :func:`save_png`). This module imports nothing else
from pspnet, so any layer (the engine's evaluation, the demo, the benchmarks) may use it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["font", "text_size", "rotated_text", "save_png", "nice_ticks", "Series", "line_plot",
           "grouped_bars", "mean_sd", "spread_bars", "save_confusion_png", "tile_row"]

_BLACK = (0, 0, 0)
_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# The shared helpers


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


def rotated_text(text: str, font: Any, box: tuple[int, int], at: tuple[float, float]) -> Image.Image:
    """``text`` drawn at ``at`` on a white ``box`` (width, height), turned to read bottom-up."""
    strip = Image.new("RGB", box, _WHITE)
    ImageDraw.Draw(strip).text(at, text, fill=_BLACK, font=font)
    return strip.rotate(90, expand=True)  # (height, width)


def save_png(img: Image.Image, path: str | Path, *, optimize: bool = False) -> Path:
    """Write ``img`` as PNG at ``path`` (parent folders are created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG", optimize=optimize)
    return out


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (steps 1, 2, 2.5 or 5 x 10^k).

    The first tick is <= ``lo`` and the last >= ``hi``, so they make good axis limits.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= m * mag * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while True:
        t = start + k * step
        ticks.append(round(t, 10))
        if t >= hi - 1e-9 * step:
            break
        k += 1
    return ticks


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step < 1 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


# --------------------------------------------------------------------------------------------
# Line plots


@dataclass
class Series:
    """One line of a plot."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int] = (31, 119, 180)
    width: int = 2
    markers: bool = False


@dataclass(frozen=True)
class _Axes:
    """The plot area (pixels) and the data range it shows, with their tick values."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    xt: list[float]
    yt: list[float]

    def px(self, x: float) -> float:
        x0, _, x1, _ = self.box
        return x0 + (x - self.xt[0]) / (self.xt[-1] - self.xt[0]) * (x1 - x0)

    def py(self, y: float) -> float:
        _, y0, _, y1 = self.box
        return y1 - (y - self.yt[0]) / (self.yt[-1] - self.yt[0]) * (y1 - y0)


def _line_axes(box: tuple[int, int, int, int], pts: list[list[tuple[float, float]]],
               hlines: Sequence[tuple[float, str]], y_from_zero: bool,
               y_max: float | None) -> _Axes:
    """Axis limits from the data: x from 0, y from 0 (or the minimum) to the top or ``y_max``."""
    all_x = [x for ps in pts for x, _ in ps]
    all_y = [y for ps in pts for _, y in ps] + [y for y, _ in hlines]
    xt = nice_ticks(0.0, max(all_x) if all_x else 1.0)
    y_lo = 0.0 if y_from_zero or not all_y else min(all_y)
    y_hi = y_max if y_max is not None else (1.04 * max(all_y) if all_y else 1.0)
    yt = nice_ticks(y_lo, y_hi)
    if y_max is not None:
        yt = [t for t in yt if t <= y_max + 1e-9]
        if yt[-1] < y_max:
            yt.append(y_max)
    return _Axes(box, xt, yt)


def _draw_grid(draw: ImageDraw.ImageDraw, ax: _Axes, f_tick: Any) -> None:
    """Grid lines, ticks and tick labels, and the frame of the plot area."""
    x0, y0, x1, y1 = ax.box
    xstep = ax.xt[1] - ax.xt[0] if len(ax.xt) > 1 else 1.0
    ystep = ax.yt[1] - ax.yt[0] if len(ax.yt) > 1 else 1.0
    for t in ax.xt:
        x = ax.px(t)
        draw.line([(x, y0), (x, y1)], fill=(232, 232, 232))
        draw.line([(x, y1), (x, y1 + 5)], fill=_BLACK)
        s = _tick_label(t, xstep)
        tw, _ = text_size(draw, s, f_tick)
        draw.text((x - tw / 2, y1 + 8), s, fill=_BLACK, font=f_tick)
    for t in ax.yt:
        y = ax.py(t)
        draw.line([(x0, y), (x1, y)], fill=(232, 232, 232))
        draw.line([(x0 - 5, y), (x0, y)], fill=_BLACK)
        s = _tick_label(t, ystep)
        tw, th = text_size(draw, s, f_tick)
        draw.text((x0 - 9 - tw, y - th / 2 - 2), s, fill=_BLACK, font=f_tick)
    draw.rectangle([x0, y0, x1, y1], outline=_BLACK)


def _draw_titles(img: Image.Image, draw: ImageDraw.ImageDraw, ax: _Axes, title: str,
                 xlabel: str, ylabel: str) -> None:
    """The title on top, the x label below, the y label rotated on the left."""
    w, h = img.size
    x0, y0, x1, y1 = ax.box
    f_title, f_label = font(17), font(14)
    tw, _ = text_size(draw, title, f_title)
    draw.text(((w - tw) / 2, 12), title, fill=_BLACK, font=f_title)
    tw, _ = text_size(draw, xlabel, f_label)
    draw.text((x0 + (x1 - x0 - tw) / 2, h - 26), xlabel, fill=_BLACK, font=f_label)
    tw, th = text_size(draw, ylabel, f_label)
    lab = rotated_text(ylabel, f_label, (tw + 4, th + 8), (2, 0))
    img.paste(lab, (8, int(y0 + (y1 - y0 - lab.height) / 2)))


def _draw_hlines(draw: ImageDraw.ImageDraw, ax: _Axes, hlines: Sequence[tuple[float, str]],
                 f_tick: Any) -> None:
    """Dashed red reference lines with their label at the right end."""
    x0, _, x1, _ = ax.box
    for yv, text in hlines:
        if not ax.yt[0] <= yv <= ax.yt[-1]:
            continue
        y = ax.py(yv)
        x = x0
        while x < x1:
            draw.line([(x, y), (min(x + 8, x1), y)], fill=(200, 40, 40), width=1)
            x += 14
        tw, th = text_size(draw, text, f_tick)
        draw.text((x1 - tw - 6, y - th - 6), text, fill=(200, 40, 40), font=f_tick)


def _draw_series(draw: ImageDraw.ImageDraw, ax: _Axes, series: Sequence[Series],
                 pts: list[list[tuple[float, float]]], annotate_last: bool, f_tick: Any) -> None:
    """The lines, their markers and (optionally) the last value of each."""
    x1 = ax.box[2]
    for s, ps in zip(series, pts):
        xy = [(ax.px(x), ax.py(y)) for x, y in ps]
        if len(xy) > 1:
            draw.line(xy, fill=s.color, width=s.width, joint="curve")
        if s.markers or len(xy) == 1:
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=s.color, outline=_BLACK)
        if annotate_last and xy:
            txt = f"{ps[-1][1]:.1f}"
            tw, th = text_size(draw, txt, f_tick)
            tx = min(xy[-1][0] + 6, x1 - tw - 2)
            draw.text((tx, xy[-1][1] - th - 8), txt, fill=s.color, font=f_tick)


def _draw_legend(draw: ImageDraw.ImageDraw, ax: _Axes, series: Sequence[Series],
                 pts: list[list[tuple[float, float]]], f_tick: Any) -> None:
    """A legend box in the top right corner naming the series that have points."""
    _, y0, x1, _ = ax.box
    labels = [s.label for s, ps in zip(series, pts) if ps]
    colours = [s.color for s, ps in zip(series, pts) if ps]
    lw = max(text_size(draw, t, f_tick)[0] for t in labels) + 40
    lh = 18 * len(labels) + 8
    lx, ly = x1 - lw - 10, y0 + 10
    draw.rectangle([lx, ly, lx + lw, ly + lh], fill=_WHITE, outline=(160, 160, 160))
    for i, (t, c) in enumerate(zip(labels, colours)):
        yy = ly + 6 + 18 * i + 7
        draw.line([(lx + 8, yy), (lx + 28, yy)], fill=c, width=3)
        draw.text((lx + 34, yy - 8), t, fill=_BLACK, font=f_tick)


def line_plot(
    path: str | Path,
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    y_from_zero: bool = True,
    y_max: float | None = None,
    hlines: Sequence[tuple[float, str]] = (),
    annotate_last: bool = False,
    empty_message: str = "no data",
    size: tuple[int, int] = (820, 480),
) -> Path:
    """Draw a line plot with axes, ticks, grid, labels and a legend; save it as PNG.

    Args:
        path: Output file (parent folders are created).
        series: The lines; NaN points are skipped.
        title, xlabel, ylabel: Texts of the plot.
        y_from_zero: Start the y axis at 0 (else at the data minimum).
        y_max: Fixed upper y limit (else from the data and ``hlines``).
        hlines: Dashed horizontal reference lines ``(y, label)``.
        annotate_last: Print the y value next to the last point of each series.
        empty_message: Text drawn when no series has a finite point.
        size: Image size (width, height) in pixels.

    Returns:
        The path written.
    """
    w, h = size
    img = Image.new("RGB", size, _WHITE)
    draw = ImageDraw.Draw(img)
    f_label, f_tick = font(14), font(12)
    left, right, top, bottom = 78, 24, 44, 62
    pts = [
        [(float(x), float(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
        for s in series
    ]
    ax = _line_axes((left, top, w - right, h - bottom), pts, hlines, y_from_zero, y_max)
    _draw_grid(draw, ax, f_tick)
    _draw_titles(img, draw, ax, title, xlabel, ylabel)
    _draw_hlines(draw, ax, hlines, f_tick)
    _draw_series(draw, ax, series, pts, annotate_last, f_tick)
    if not any(pts):
        x0, y0, x1, y1 = ax.box
        tw, th = text_size(draw, empty_message, f_label)
        draw.text((x0 + (x1 - x0 - tw) / 2, y0 + (y1 - y0 - th) / 2), empty_message,
                  fill=(120, 120, 120), font=f_label)  # fmt: skip
    else:
        _draw_legend(draw, ax, series, pts, f_tick)
    return save_png(img, path, optimize=True)


# --------------------------------------------------------------------------------------------
# Bar charts


def grouped_bars(path: str | Path, groups: Sequence[str],
                 bars: Sequence[tuple[str, Sequence[float]]],
                 colours: Sequence[tuple[int, int, int]] = ((150, 150, 150), (214, 39, 40))) -> Path:
    """Bars of values in [0, 1], one bar per series in each group, a legend line below.

    Args:
        path: Output PNG.
        groups: Names of the groups along the x axis (e.g. classes).
        bars: ``(legend text, one value per group)`` per series; NaN is drawn as 0.
        colours: Bar colours, used in turn.

    Returns:
        The path written.
    """
    n = len(groups)
    w, h, left, bottom, top = 90 * n + 80, 320, 50, 50, 20
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    plot_h = h - bottom - top
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - frac)
        d.line([(left, y), (w - 10, y)], fill=(225, 225, 225))
        d.text((5, y - 6), f"{frac:.2f}", fill="black")
    for c, name in enumerate(groups):
        x0 = left + 10 + c * 90
        for r, (_, values) in enumerate(bars):
            v = 0.0 if np.isnan(values[c]) else float(values[c])
            bx = x0 + r * 34
            d.rectangle([bx, top + plot_h * (1 - v), bx + 30, top + plot_h],
                        fill=colours[r % len(colours)])
        d.text((x0, h - bottom + 8), name, fill="black")
    for r, (label, _) in enumerate(bars):
        d.rectangle([left + 10 + r * 220, h - 18, left + 22 + r * 220, h - 6],
                    fill=colours[r % len(colours)])
        d.text((left + 28 + r * 220, h - 19), label, fill="black")
    return save_png(img, path)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN where there are none)."""
    vals = [float(v) for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def spread_bars(path: str | Path, per_bar: dict[str, list[float]], ylabel: str) -> Path:
    """Bars of the mean of each list, its values as dots and +- one standard deviation.

    Args:
        path: Output PNG.
        per_bar: Bar name -> its values (e.g. one per seed).
        ylabel: Text at the top left, naming the values.

    Returns:
        The path written.
    """
    big, small = font(15), font(12)
    names = list(per_bar)
    w, h, left, bottom, top = 140 * len(names) + 100, 420, 70, 90, 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    vals = [v for vs in per_bar.values() for v in vs]
    tops = [m + sd for m, sd in map(mean_sd, per_bar.values()) if math.isfinite(m + sd)]
    lo = max(0.0, math.floor(min(vals) / 5) * 5 - 5)
    hi = math.ceil(max(vals + tops) / 5) * 5 + 2

    def py(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (h - top - bottom)

    for t in [t for t in nice_ticks(lo, hi, 6) if lo <= t <= hi]:
        y = py(t)
        d.line([(left, y), (w - 20, y)], fill=(225, 225, 225))
        d.text((8, y - 7), f"{t:g}", fill="black", font=small)
    d.text((8, 4), ylabel, fill="black", font=small)
    for i, name in enumerate(names):
        vs = per_bar[name]
        mean, sd = mean_sd(vs)
        x0 = left + 20 + i * 140
        d.rectangle([x0, py(mean), x0 + 90, py(lo)], fill=(110, 150, 210))
        if not math.isnan(sd):
            d.line([(x0 + 45, py(mean - sd)), (x0 + 45, py(mean + sd))], fill="black", width=2)
        for j, v in enumerate(vs):
            cx = x0 + 25 + 20 * (j % 3)
            d.ellipse([cx - 4, py(v) - 4, cx + 4, py(v) + 4], fill=(200, 60, 40))
        d.text((x0, h - bottom + 8), name, fill="black", font=big)
        d.text((x0, h - bottom + 28), f"{mean:.1f}", fill="black", font=small)
    return save_png(img, path)


# --------------------------------------------------------------------------------------------
# Pictures side by side


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


# --------------------------------------------------------------------------------------------
# The confusion matrix


def _row_normalised(matrix: Any) -> np.ndarray:
    """(K, K) counts -> fractions of each row (NaN for a row without pixels)."""
    if hasattr(matrix, "detach"):  # a torch tensor
        matrix = matrix.detach().cpu().numpy()
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"matrix must be square (K, K), got shape {cm.shape}")
    row_sum = cm.sum(axis=1, keepdims=True)  # (K, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(row_sum > 0, cm / np.where(row_sum > 0, row_sum, 1.0), np.nan)  # (K, K)


def _confusion_cells(draw: ImageDraw.ImageDraw, norm: np.ndarray, origin: tuple[int, int],
                     cell: int, font_px: int, f: Any) -> None:
    """Shade each cell white (0) to dark blue (1); print percentages in large cells."""
    left, top = origin
    k = norm.shape[0]
    lo, hi = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            v = norm[i, j]
            if np.isnan(v):
                color: tuple[int, ...] = (225, 225, 225)
            else:
                color = tuple(int(round(c)) for c in lo + (hi - lo) * float(v))
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color)
            if cell >= 28 and not np.isnan(v):
                text = f"{100 * v:.0f}"
                tw = draw.textlength(text, font=f)
                draw.text((x0 + (cell - tw) / 2, y0 + (cell - font_px) / 2), text,
                          fill="white" if v > 0.5 else "black", font=f)
    draw.rectangle([left - 1, top - 1, left + k * cell, top + k * cell], outline="black")


def save_confusion_png(
    matrix: Any,
    class_names: Sequence[str] | None,
    path: str | Path,
    *,
    cell_size: int | None = None,
    title: str | None = None,
) -> Path:
    """Draw the row-normalised confusion matrix as a PNG (no matplotlib needed).

    Each cell ``(i, j)`` is shaded by the fraction of ground-truth class ``i`` pixels predicted as
    ``j`` (white = 0, dark blue = 1), so the diagonal shows per-class accuracy. Rows without any
    ground-truth pixel are drawn light grey. Row labels (ground truth) go on the left, column
    labels (prediction) on top, rotated; percentages are printed when cells are large enough.

    Args:
        matrix: (K, K) counts, rows = ground truth (a NumPy array or a torch tensor, e.g.
            ``ConfusionMatrix.numpy()``).
        class_names: K labels, or None for indices.
        path: Output file; parent folders are created.
        cell_size: Pixel size of one cell (default: scaled so the grid is ~800 px, 6..48).
        title: Optional caption drawn in the top-left corner.

    Returns:
        The path written.

    Raises:
        ValueError: Not a square matrix, or wrong number of class names.
    """
    norm = _row_normalised(matrix)
    k = norm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names but the matrix has {k} classes")
    cell = cell_size if cell_size is not None else int(min(48, max(6, 800 // k)))
    font_px = int(min(14, max(8, cell - 2)))
    f = font(font_px)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_w = max(int(probe.textlength(n, font=f)) for n in names) + 8
    label_w = min(label_w, 240)  # very long names are clipped rather than dwarfing the grid
    margin = 8
    left = margin + label_w
    top = margin + (font_px + 8 if title else 0) + label_w
    footer = "rows: ground truth, columns: prediction (row-normalised)"
    width = max(left + k * cell, margin + int(probe.textlength(footer, font=f))) + margin
    img = Image.new("RGB", (width, top + k * cell + margin + font_px + 8), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((margin, margin), title, fill="black", font=f)
    _confusion_cells(draw, norm, (left, top), cell, font_px, f)
    if cell >= 8:  # smaller cells cannot hold a readable label per row
        for i, name in enumerate(names):
            draw.text((margin, top + i * cell + (cell - font_px) / 2), name[:40], fill="black",
                      font=f)
            # Column labels: drawn horizontally on a strip turned to read bottom-up.
            strip = rotated_text(name[:40], f, (label_w, cell), (2, (cell - font_px) / 2))
            img.paste(strip, (left + i * cell, top - label_w))
    draw.text((margin, top + k * cell + 4), footer, fill="black", font=f)
    return save_png(img, path)
