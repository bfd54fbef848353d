"""Charts drawn with matplotlib: line plots, bar charts and the confusion matrix.

matplotlib is an optional extra (``pip install 'pspnet[report]'``; ``scripts/setup.sh``
installs it). It is imported when a chart is drawn, never when this module is imported, and
only through :class:`matplotlib.figure.Figure`, which renders with the Agg canvas: no pyplot,
no global state, no display needed. Without matplotlib every chart function raises
:class:`ModuleNotFoundError` naming the extra to install.

This module imports nothing else from pspnet, so any layer (the engine's evaluation, the
demo, the benchmarks, the run report) may use it. Sizes are in pixels (100 dots per inch).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REPORT_EXTRA", "require_matplotlib", "Series", "line_plot", "grouped_bars",
           "class_bars", "mean_sd", "spread_bars", "save_confusion_png"]

#: The optional extra that installs matplotlib.
REPORT_EXTRA = "report"

_DPI = 100
#: The confusion matrix runs from white (0) to this dark blue (1), the end of matplotlib's
#: "Blues"; a row without ground-truth pixels is drawn in _NO_DATA.
_DARK_BLUE = (8, 48, 107)
_NO_DATA = (225, 225, 225)


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """0..255 RGB -> matplotlib's 0..1."""
    return (colour[0] / 255.0, colour[1] / 255.0, colour[2] / 255.0)


def require_matplotlib() -> None:
    """Check that charts can be drawn.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message names the extra).
    """
    try:
        import matplotlib.figure  # noqa: F401 - only whether it imports
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"drawing charts needs matplotlib: pip install 'pspnet[{REPORT_EXTRA}]' "
            "(scripts/setup.sh installs it)", name="matplotlib",
        ) from None


def _figure(size: tuple[int, int]) -> Any:
    """A matplotlib Figure of ``size`` (width, height) pixels, rendered by Agg.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message names the extra).
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI)


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG at ``path`` (parent folders are created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    return out


# --------------------------------------------------------------------------------------------
# Line plots


@dataclass
class Series:
    """One line of a plot; ``color`` is 0..255 RGB."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int] = (31, 119, 180)
    width: int = 2
    markers: bool = False


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
    legend_below: bool = False,
) -> Path:
    """Draw a line plot with axes, grid, labels and a legend; save it as PNG.

    Args:
        path: Output file (parent folders are created).
        series: The lines; NaN points are skipped.
        title, xlabel, ylabel: Texts of the plot.
        y_from_zero: Start the y axis at 0 (else at the data minimum).
        y_max: Fixed upper y limit (else from the data and ``hlines``).
        hlines: Dashed horizontal reference lines ``(y, label)``.
        annotate_last: Print the y value next to the last point of each series.
        empty_message: Text drawn when no series has a finite point.
        size: Image size (width, height) in pixels; with ``legend_below``, the height of the
            part above the legend.
        legend_below: Put the legend under the plot, one line per series, the image growing
            to hold it (for many series with long labels, which a legend inside the axes
            would cover).

    Returns:
        The path written.
    """
    width, height = size
    finite = [[(float(x), float(y)) for x, y in zip(s.xs, s.ys)
               if math.isfinite(x) and math.isfinite(y)] for s in series]  # fmt: skip
    n_drawn = sum(1 for pts in finite if pts)
    # Pixels under the axes for the legend: one 20 px row per series that has a point.
    legend_px = 20 * n_drawn + 16 if legend_below and n_drawn else 0
    total = height + legend_px
    fig = _figure((width, total))
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.1, right=0.97, top=1 - 0.1 * height / total,
                        bottom=(0.13 * height + legend_px) / total)
    for s, pts in zip(series, finite):
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=_rgb(s.color), linewidth=s.width, label=s.label,
                marker="o" if s.markers or len(pts) == 1 else None, markersize=5)
        if annotate_last:
            ax.annotate(f"{ys[-1]:.1f}", (xs[-1], ys[-1]), textcoords="offset points",
                        xytext=(4, 6), color=_rgb(s.color), fontsize=9)
    for y, text in hlines:
        ax.axhline(y, color=(0.78, 0.16, 0.16), linestyle="--", linewidth=1)
        ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 4),
                    textcoords="offset points", ha="right", color=(0.78, 0.16, 0.16), fontsize=9)
    if legend_px:
        fig.legend(loc="lower left", bbox_to_anchor=(0.02, 4 / total), fontsize=9, frameon=False)
    elif n_drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, empty_message, transform=ax.transAxes, ha="center", va="center",
                color=(0.47, 0.47, 0.47))
    if y_from_zero:
        ax.set_ylim(bottom=0.0)
    if y_max is not None:
        ax.set_ylim(top=y_max)
    ax.set_xlim(left=0.0)
    ax.grid(True, color=(0.91, 0.91, 0.91))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Bar charts


def grouped_bars(path: str | Path, groups: Sequence[str],
                 bars: Sequence[tuple[str, Sequence[float]]],
                 colours: Sequence[tuple[int, int, int]] = ((150, 150, 150), (214, 39, 40)),
                 ) -> Path:
    """Bars of values in [0, 1], one bar per series in each group, with a legend.

    Args:
        path: Output PNG.
        groups: Names of the groups along the x axis (e.g. classes).
        bars: ``(legend text, one value per group)`` per series; NaN is drawn as 0.
        colours: Bar colours (0..255 RGB), used in turn.

    Returns:
        The path written.
    """
    n, m = len(groups), max(len(bars), 1)
    fig = _figure((90 * n + 80, 320))
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.08 if n > 3 else 0.2, right=0.98, top=0.95, bottom=0.2)
    width = 0.8 / m
    for r, (label, values) in enumerate(bars):
        vals = [0.0 if not math.isfinite(float(v)) else float(v) for v in values]
        xs = [c - 0.4 + width * (r + 0.5) for c in range(n)]
        ax.bar(xs, vals, width=width * 0.9, color=_rgb(colours[r % len(colours)]), label=label)
    ax.set_xticks(range(n), [str(g) for g in groups])
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, axis="y", color=(0.88, 0.88, 0.88))
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=m, fontsize=8, frameon=False)
    return _save(fig, path)


def class_bars(path: str | Path, names: Sequence[str], values: Sequence[float], *,
               title: str, xlabel: str = "IoU") -> Path:
    """One horizontal bar per class (values in [0, 1]; NaN written as ``n/a``), top to bottom.

    Horizontal so that any number of classes stays readable: the picture grows 18 px a class.

    Args:
        path: Output PNG.
        names: Class names.
        values: One value per class.
        title: The chart's title.
        xlabel: What the values are.

    Returns:
        The path written.

    Raises:
        ValueError: ``names`` and ``values`` differ in length.
    """
    if len(names) != len(values):
        raise ValueError(f"{len(names)} class names but {len(values)} values")
    k = len(names)
    height = 90 + 18 * k
    fig = _figure((720, height))
    ax = fig.add_subplot()
    label_w = min(0.4, 0.03 + 0.011 * max((len(str(n)) for n in names), default=1))
    fig.subplots_adjust(left=label_w, right=0.93, top=1 - 40 / height, bottom=45 / height)
    vals = [float(v) for v in values]
    ys = list(range(k))
    ax.barh(ys, [v if math.isfinite(v) else 0.0 for v in vals], color=_rgb((44, 160, 44)))
    for y, v in zip(ys, vals):
        ax.text(v + 0.01 if math.isfinite(v) else 0.01, y, f"{v:.2f}" if math.isfinite(v)
                else "n/a", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(ys, [str(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.08)
    ax.set_ylim(k - 0.5, -0.5)
    ax.grid(True, axis="x", color=(0.88, 0.88, 0.88))
    ax.set_axisbelow(True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _save(fig, path)


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
        ylabel: The y axis label, naming the values.

    Returns:
        The path written.
    """
    names = list(per_bar)
    fig = _figure((140 * len(names) + 100, 420))
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.18 if len(names) < 3 else 0.1, right=0.97, top=0.95, bottom=0.12)
    vals = [v for vs in per_bar.values() for v in vs if math.isfinite(v)]
    for i, name in enumerate(names):
        mean, sd = mean_sd(per_bar[name])
        ax.bar(i, mean if math.isfinite(mean) else 0.0, width=0.65, color=_rgb((110, 150, 210)),
               yerr=None if math.isnan(sd) else sd, capsize=6)
        xs = [i - 0.15 + 0.15 * (j % 3) for j in range(len(per_bar[name]))]
        ax.scatter(xs, per_bar[name], color=_rgb((200, 60, 40)), zorder=3, s=16)
        if math.isfinite(mean):
            ax.annotate(f"{mean:.1f}", (i, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize=9)
    ax.set_xticks(range(len(names)), names)
    if vals:
        tops = [m + s for m, s in map(mean_sd, per_bar.values()) if math.isfinite(m + s)]
        lo = max(0.0, math.floor(min(vals) / 5) * 5 - 5)
        ax.set_ylim(lo, math.ceil(max(vals + tops) / 5) * 5 + 2)
    ax.grid(True, axis="y", color=(0.88, 0.88, 0.88))
    ax.set_axisbelow(True)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


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


def save_confusion_png(
    matrix: Any,
    class_names: Sequence[str] | None,
    path: str | Path,
    *,
    cell_size: int | None = None,
    title: str | None = None,
) -> Path:
    """Draw the row-normalised confusion matrix as a PNG.

    Each cell ``(i, j)`` is shaded by the fraction of ground-truth class ``i`` pixels predicted
    as ``j`` (white = 0, dark blue = 1), so the diagonal shows per-class accuracy. Rows without
    any ground-truth pixel are light grey. Row labels (ground truth) go on the left, column
    labels (prediction) at the bottom, turned; percentages are printed when cells are large
    enough to hold them.

    Args:
        matrix: (K, K) counts, rows = ground truth (a NumPy array or a torch tensor, e.g.
            ``ConfusionMatrix.numpy()``).
        class_names: K labels, or None for indices.
        path: Output file; parent folders are created.
        cell_size: Pixel size of one cell (default: scaled so the grid is ~800 px, 6..48).
        title: Optional caption above the matrix.

    Returns:
        The path written.

    Raises:
        ValueError: Not a square matrix, or wrong number of class names.
        ModuleNotFoundError: matplotlib is not installed.
    """
    norm = _row_normalised(matrix)
    k = norm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names but the matrix has {k} classes")
    cell = cell_size if cell_size is not None else int(min(48, max(6, 800 // k)))
    labels = cell >= 8  # smaller cells cannot hold a readable label per row
    font_pt = min(10.0, max(5.0, 0.6 * cell))
    label_px = (min(240, 8 + int(0.62 * font_pt * max(len(n[:40]) for n in names))) if labels
                else 10)  # fmt: skip
    left, top, bottom = label_px + 56, 16 + (24 if title else 0), label_px + 44
    width = max(left + k * cell + 20, left + 210)  # room for the axis label under a small grid
    height = top + k * cell + bottom
    fig = _figure((width, height))
    ax = fig.add_axes((left / width, bottom / height, k * cell / width, k * cell / height))
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("white_blue", [(1, 1, 1), _rgb(_DARK_BLUE)])
    cmap = cmap.with_extremes(bad=_rgb(_NO_DATA))
    ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0,
              interpolation="nearest", aspect="auto", extent=(-0.5, k - 0.5, k - 0.5, -0.5))
    if cell >= 28:
        for i, j in zip(*np.nonzero(np.isfinite(norm))):
            v = norm[i, j]
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=font_pt,
                    color="white" if v > 0.5 else "black")
    ax.set_xticks(range(k), [n[:40] for n in names] if labels else [], rotation=90,
                  fontsize=font_pt)
    ax.set_yticks(range(k), [n[:40] for n in names] if labels else [], fontsize=font_pt)
    ax.set_ylabel("ground truth")
    ax.set_xlabel("prediction (% of the row)")
    if title:
        fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    return _save(fig, path)
