"""CamVid from scratch on a CPU: train, then regenerate the results page from nothing.

Two steps, both restartable::

    python bench/camvid.py train --minutes 30 [--work-dir work_dirs/camvid_cpu] [--set k=v ...]
    python bench/camvid.py report [--work-dir work_dirs/camvid_cpu] [--out docs/results]
                                  [--budget-runs work_dirs/camvid_30min ...]

``train`` runs (or continues: ``train.resume=auto``) ``pspnet train --config
configs/camvid_cpu.yaml`` on the prepared CamVid copy found through the environment variable
``PSPNET_CAMVID`` or at ``<repo>/../shared/data/camvid``, with ``train.time_budget`` set to
``--minutes``. Each launch is recorded in ``WORK_DIR/bench_runs.jsonl`` (command line, commit,
machine) so that the report can quote it.

``report`` evaluates ``WORK_DIR/best`` (the weights with the best validation mIoU; ``final`` when
no validation ran) on the 233 CamVid test images (whole image, single scale, no flip, void
ignored) and writes, under ``--out`` (``docs/results`` by default):

* ``test_metrics.json`` (:func:`pspnet.engine.evaluate.write_metrics`) and ``confusion.png``;
* ``loss.png`` and ``val_miou.png``: training loss and validation mIoU against training minutes,
  read from ``WORK_DIR/log.jsonl`` and drawn with Pillow only;
* ``test_overlays.png``: a grid of test images with the ground truth and the prediction;

and the Markdown page ``<out>/../results.md`` (``docs/results.md``) with the commands, commit,
machine, training length, per-class test IoU, the plots, the overlays and the published CamVid
numbers next to ours. With ``--budget-runs DIR ...`` (other finished runs of the recipe
with other ``--minutes``) the page also tabulates and plots test mIoU against the training
budget (``budget_curve.png``). Only measured numbers are reported, except one marked
extrapolation (the hours 60 mIoU would take at the last measured gain per doubling).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pspnet.bench import CAMVID_ENV, DEFAULT_CAMVID_ROOT, camvid_missing

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "camvid_cpu.yaml"
DEFAULT_WORK_DIR = REPO / "work_dirs" / "camvid_cpu"
DEFAULT_OUT = REPO / "docs" / "results"
DEFAULT_CAMVID = DEFAULT_CAMVID_ROOT  # the location rule lives in pspnet.bench (one place)
ENV_VAR = CAMVID_ENV
RUNS_FILE = "bench_runs.jsonl"
TARGET_MIOU = 60.0  # percent; SegNet's published CamVid test mIoU, the bar this page checks

#: Published CamVid-11 test mIoU (SegNet split, 233 test images), copied from the data set's
#: README (``shared/data/camvid/README.md``): (method, pretraining, test mIoU as printed).
PUBLISHED: tuple[tuple[str, str, str], ...] = (
    ("SegNet (Badrinarayanan et al., TPAMI 2017)", "ImageNet VGG16", "60.1 (46.4 in older tables)"),
    ("Dilation8 (Yu & Koltun)", "ImageNet", "65.3"),
    ("FC-DenseNet103 (Jegou et al., 2017)", "none, from scratch", "66.9 (global acc 91.5)"),
    ("PSPNet50 (as reported in the ICNet paper, Zhao et al., 2018)", "ImageNet", "69.1"),
    ("ICNet", "ImageNet", "67.1"),
)


class BenchError(RuntimeError):
    """A problem the user can fix (missing data, no weights, no log); printed without a trace."""


# --------------------------------------------------------------------------------------------
# Locations, commands, machine


def find_camvid(splits: Sequence[str] = ("test",)) -> Path:
    """Locate the prepared CamVid copy.

    Args:
        splits: Splits whose ``<split>.txt`` must exist.

    Returns:
        ``$PSPNET_CAMVID`` when set, else ``<repo>/../shared/data/camvid``.

    Raises:
        BenchError: The folder, its ``classes.txt`` or a split list is missing; the message
            names both places looked at.
    """
    root, missing = camvid_missing(tuple(splits))
    env = os.environ.get(ENV_VAR)
    if missing:
        where = (
            f"{ENV_VAR}={env} (from the environment)" if env
            else f"{root} (the default; {ENV_VAR} is not set)"
        )  # fmt: skip
        raise BenchError(
            f"CamVid not found: {where} lacks {', '.join(missing)}. Put the prepared CamVid copy "
            f"(images/, labels/, train.txt, val.txt, test.txt, classes.txt) at {DEFAULT_CAMVID} "
            f"or point the environment variable {ENV_VAR} at it."
        )
    return root.resolve()


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def git_commit() -> str:
    """``git rev-parse --short HEAD`` of the repository, plus a note when files are modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True, timeout=20,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
            capture_output=True, text=True, check=True, timeout=20,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} (with uncommitted changes)" if dirty else sha


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, torch version and threads of this machine."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    try:
        from pspnet.precision import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()
    except ImportError:  # pragma: no cover
        bf16 = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": bf16,
        "python": platform.python_version(),
    }


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (how busy the machine was), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_machine(m: dict[str, Any]) -> str:
    bf16 = {True: "native bf16", False: "no native bf16 (fp32)", None: "bf16 unknown"}
    return (
        f"{m.get('cpu', '?')}, {m.get('usable_cpus', '?')} usable of "
        f"{m.get('logical_cpus', '?')} logical CPUs, {bf16.get(m.get('native_bf16'))}; "
        f"torch {m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), "
        f"Python {m.get('python', '?')}"
    )


def train_command(
    minutes: float, work_dir: Path, data_root: Path, config: Path, sets: Sequence[str] = ()
) -> list[str]:
    """The ``pspnet train`` argument list (after the program) that ``train`` runs.

    One ``--set`` takes all overrides (the CLI's ``--set`` is a single ``nargs="*"`` option);
    the user's ``sets`` come last so they win.
    """
    overrides = [
        f"data.root={data_root}",
        f"data.class_names={data_root / 'classes.txt'}",
        f"train.time_budget={minutes:g}",
        "train.resume=auto",
        f"train.work_dir={work_dir}",
        *sets,
    ]
    return ["train", "--config", str(config), "--set", *overrides]


# --------------------------------------------------------------------------------------------
# The training log


@dataclass
class TrainPoint:
    """One ``train`` event of ``log.jsonl``."""

    iter: int
    epoch: float
    minutes: float
    loss: float
    loss_main: float
    loss_aux: float
    lr: float
    sec_per_iter: float


@dataclass
class ValPoint:
    """One ``val`` event; ``minutes`` is the training time when the weights were validated."""

    iter: int
    epoch: float
    minutes: float
    miou: float
    macc: float | None
    all_acc: float | None
    best: bool
    seconds: float | None


@dataclass
class TrainLog:
    """What ``log.jsonl`` says about the latest run in a work directory."""

    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    sessions: int = 0
    iterations: int = 0
    epochs: float = 0.0
    minutes: float = 0.0
    finished: bool = False
    stop_reason: str | None = None
    precision: str | None = None
    crop_size: list[int] | None = None
    steps_per_epoch: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    max_iter: int | None = None
    first_plan: int | None = None  # steps the budget planned at the start (idle-machine pace)
    skipped_vals: int = 0
    bad_lines: int = 0

    @property
    def best_val(self) -> ValPoint | None:
        """The validation with the highest mIoU (the one ``best/`` holds), or None."""
        return max(self.val, key=lambda v: v.miou) if self.val else None

    @property
    def median_sec_per_iter(self) -> float | None:
        """Median seconds per optimizer step over the logged intervals."""
        vals = [p.sec_per_iter for p in self.train if p.sec_per_iter and p.iter > 1]
        return float(np.median(vals)) if vals else None


def _num(value: Any) -> float | None:
    """A finite float, or None (NaN is logged as null)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _num_or(event: dict[str, Any], key: str, default: float = math.nan) -> float:
    """``event[key]`` as a finite float, else ``default`` (0.0 stays 0.0)."""
    v = _num(event.get(key))
    return default if v is None else v


def read_log(path: str | Path) -> TrainLog:
    """Parse a training ``log.jsonl`` into curves and totals.

    Only the latest fresh run counts (events from its last ``start`` on); a ``resume`` drops the
    points logged after the iteration it resumed from (they were redone). A truncated or damaged
    line is skipped and counted. Validation events carry no elapsed time, so it is taken from the
    preceding ``train`` event of the same session plus the wall-clock time between the two
    (less the validation's own duration).

    Args:
        path: The ``log.jsonl`` file.

    Returns:
        The parsed :class:`TrainLog`.

    Raises:
        BenchError: The file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{p} does not exist: train first (python bench/camvid.py train ...)")
    events: list[dict[str, Any]] = []
    bad = 0
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "event" in rec:
            events.append(rec)
        else:
            bad += 1
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    if starts:
        events = events[starts[-1]:]
    log = TrainLog(bad_lines=bad)
    anchor: tuple[float, float] | None = None  # (elapsed_s, wall time) of the last train event
    end: dict[str, Any] | None = None
    for e in events:
        kind = e["event"]
        if kind in ("start", "resume"):
            log.sessions += 1
            anchor = None
            end = None
            log.finished = False
            if kind == "resume":
                r = int(e.get("iteration") or 0)
                log.train = [t for t in log.train if t.iter <= r]
                log.val = [v for v in log.val if v.iter <= r]
            log.precision = e.get("precision", log.precision)
            log.crop_size = e.get("crop_size", log.crop_size)
            log.steps_per_epoch = e.get("steps_per_epoch", log.steps_per_epoch)
            log.train_images = e.get("train_images", log.train_images)
            log.val_images = e.get("val_images", log.val_images)
            log.max_iter = e.get("max_iter", log.max_iter) or log.max_iter
        elif kind == "train":
            elapsed = _num(e.get("elapsed_s")) or 0.0
            log.train.append(TrainPoint(
                iter=int(e["iter"]), epoch=_num_or(e, "epoch", 0.0), minutes=elapsed / 60.0,
                loss=_num_or(e, "loss"), loss_main=_num_or(e, "loss_main"),
                loss_aux=_num_or(e, "loss_aux"), lr=_num_or(e, "lr", 0.0),
                sec_per_iter=_num_or(e, "sec_per_iter", 0.0),
            ))  # fmt: skip
            if _num(e.get("time")) is not None:
                anchor = (elapsed, float(e["time"]))
        elif kind == "val":
            miou = _num(e.get("mIoU", e.get("miou")))
            if miou is None:
                continue
            seconds = _num(e.get("seconds"))
            t = _num(e.get("time"))
            if anchor is not None and t is not None:
                elapsed = anchor[0] + max(0.0, t - (seconds or 0.0) - anchor[1])
            else:
                elapsed = log.train[-1].minutes * 60.0 if log.train else 0.0
            log.val.append(ValPoint(
                iter=int(e["iter"]), epoch=float(e.get("epoch") or 0.0), minutes=elapsed / 60.0,
                miou=miou, macc=_num(e.get("mAcc")), all_acc=_num(e.get("allAcc")),
                best=bool(e.get("best")), seconds=seconds,
            ))  # fmt: skip
        elif kind == "val_skipped":
            log.skipped_vals += 1
        elif kind == "plan":
            log.max_iter = e.get("max_iter", log.max_iter) or log.max_iter
            if e.get("first") and log.first_plan is None:
                log.first_plan = log.max_iter
        elif kind == "end":
            end = e
            log.finished = True
            log.stop_reason = e.get("reason")
    last_train = log.train[-1] if log.train else None
    if end is not None:
        log.iterations = int(end.get("iteration") or (last_train.iter if last_train else 0))
        log.minutes = (_num(end.get("elapsed_s")) or 0.0) / 60.0
    else:
        log.iterations = max([t.iter for t in log.train] + [v.iter for v in log.val] + [0])
        log.minutes = max([t.minutes for t in log.train] + [v.minutes for v in log.val] + [0.0])
    if log.steps_per_epoch:
        log.epochs = log.iterations / log.steps_per_epoch
    elif last_train is not None:
        log.epochs = last_train.epoch
    return log


# --------------------------------------------------------------------------------------------
# Plots (Pillow only)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0]), int(box[3] - box[1])


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


@dataclass
class Series:
    """One line of a plot."""

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
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    f_title, f_label, f_tick = font(17), font(14), font(12)
    left, right, top, bottom = 78, 24, 44, 62
    x0, y0, x1, y1 = left, top, w - right, h - bottom  # plot area

    pts = [
        [(float(x), float(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
        for s in series
    ]
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
    xmin, xmax, ymin, ymax = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)

    # Grid, ticks and tick labels.
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    for t in xt:
        x = px(t)
        draw.line([(x, y0), (x, y1)], fill=(232, 232, 232))
        draw.line([(x, y1), (x, y1 + 5)], fill=(0, 0, 0))
        s = _tick_label(t, xstep)
        tw, _ = _text_size(draw, s, f_tick)
        draw.text((x - tw / 2, y1 + 8), s, fill=(0, 0, 0), font=f_tick)
    for t in yt:
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=(232, 232, 232))
        draw.line([(x0 - 5, y), (x0, y)], fill=(0, 0, 0))
        s = _tick_label(t, ystep)
        tw, th = _text_size(draw, s, f_tick)
        draw.text((x0 - 9 - tw, y - th / 2 - 2), s, fill=(0, 0, 0), font=f_tick)
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))

    # Titles and axis labels (the y label rotated).
    tw, _ = _text_size(draw, title, f_title)
    draw.text(((w - tw) / 2, 12), title, fill=(0, 0, 0), font=f_title)
    tw, _ = _text_size(draw, xlabel, f_label)
    draw.text((x0 + (x1 - x0 - tw) / 2, h - 26), xlabel, fill=(0, 0, 0), font=f_label)
    tw, th = _text_size(draw, ylabel, f_label)
    lab = Image.new("RGB", (tw + 4, th + 8), (255, 255, 255))
    ImageDraw.Draw(lab).text((2, 0), ylabel, fill=(0, 0, 0), font=f_label)
    lab = lab.rotate(90, expand=True)
    img.paste(lab, (8, int(y0 + (y1 - y0 - lab.height) / 2)))

    # Reference lines.
    for yv, text in hlines:
        if not ymin <= yv <= ymax:
            continue
        y = py(yv)
        x = x0
        while x < x1:
            draw.line([(x, y), (min(x + 8, x1), y)], fill=(200, 40, 40), width=1)
            x += 14
        tw, th = _text_size(draw, text, f_tick)
        draw.text((x1 - tw - 6, y - th - 6), text, fill=(200, 40, 40), font=f_tick)

    # Data.
    for s, ps in zip(series, pts):
        xy = [(px(x), py(y)) for x, y in ps]
        if len(xy) > 1:
            draw.line(xy, fill=s.color, width=s.width, joint="curve")
        if s.markers or len(xy) == 1:
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=s.color, outline=(0, 0, 0))
        if annotate_last and xy:
            txt = f"{ps[-1][1]:.1f}"
            tw, th = _text_size(draw, txt, f_tick)
            tx = min(xy[-1][0] + 6, x1 - tw - 2)
            draw.text((tx, xy[-1][1] - th - 8), txt, fill=s.color, font=f_tick)

    if not all_x:
        tw, th = _text_size(draw, empty_message, f_label)
        draw.text((x0 + (x1 - x0 - tw) / 2, y0 + (y1 - y0 - th) / 2), empty_message,
                  fill=(120, 120, 120), font=f_label)  # fmt: skip
    else:  # legend, top right
        labels = [s.label for s, ps in zip(series, pts) if ps]
        colours = [s.color for s, ps in zip(series, pts) if ps]
        lw = max(_text_size(draw, t, f_tick)[0] for t in labels) + 40
        lh = 18 * len(labels) + 8
        lx, ly = x1 - lw - 10, y0 + 10
        draw.rectangle([lx, ly, lx + lw, ly + lh], fill=(255, 255, 255), outline=(160, 160, 160))
        for i, (t, c) in enumerate(zip(labels, colours)):
            yy = ly + 6 + 18 * i + 7
            draw.line([(lx + 8, yy), (lx + 28, yy)], fill=c, width=3)
            draw.text((lx + 34, yy - 8), t, fill=(0, 0, 0), font=f_tick)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG", optimize=True)
    return out


def plot_loss(log: TrainLog, path: Path) -> Path:
    """Training loss (total and main head) against training minutes."""
    xs = [t.minutes for t in log.train]
    return line_plot(
        path,
        [
            Series("loss (main + aux)", xs, [t.loss for t in log.train], (31, 119, 180)),
            Series("main head", xs, [t.loss_main for t in log.train], (255, 127, 14), width=1),
        ],
        title="CamVid training loss",
        xlabel="training time (minutes)",
        ylabel="cross-entropy loss",
        empty_message="no train events in log.jsonl",
    )


def plot_val_miou(log: TrainLog, path: Path) -> Path:
    """Validation mIoU (%) against training minutes, with the 60 mIoU line."""
    return line_plot(
        path,
        [Series(f"val mIoU ({log.val_images or '?'} val images)",
                [v.minutes for v in log.val], [100.0 * v.miou for v in log.val],
                (44, 160, 44), markers=True)],  # fmt: skip
        title="CamVid validation mIoU during training",
        xlabel="training time (minutes)",
        ylabel="mIoU (%)",
        hlines=[(TARGET_MIOU, f"{TARGET_MIOU:g} mIoU (SegNet, test)")],
        annotate_last=True,
        empty_message="no validation in log.jsonl (the budget left no time for one)",
    )


# --------------------------------------------------------------------------------------------
# Test-set evaluation and overlays


def _palette_array(palette: dict[int, tuple[int, int, int]], k: int) -> np.ndarray:
    return np.array([palette[i] for i in range(k)], dtype=np.uint8)


def pick_weights(work_dir: Path) -> Path:
    """``WORK_DIR/best`` when it holds weights, else ``WORK_DIR/final``.

    Raises:
        BenchError: Neither holds weights.
    """
    for name in ("best", "final"):
        d = work_dir / name
        if (d / "config.json").is_file():
            return d
    raise BenchError(
        f"no weights in {work_dir} (neither best/ nor final/ has a config.json): train first "
        "(python bench/camvid.py train --minutes M) or pass the right --work-dir"
    )


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
    from pspnet.data.palette import draw_legend, overlay

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
        tw, _ = _text_size(draw, title, f_head)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", optimize=True)
    return path


@dataclass
class TestResult:
    """The test-set evaluation of one weight directory."""

    metrics: Any  # pspnet.engine.metrics.SegMetrics
    summary: dict[str, Any]  # SegMetrics.to_dict(class_names)
    weights: Path
    weights_source: str
    class_names: tuple[str, ...]
    num_images: int
    total_images: int
    seconds: float


def evaluate_test(
    weights: Path,
    data_root: Path,
    out_dir: Path,
    pred_dir: Path,
    *,
    precision: str = "fp32",
    limit: int | None = None,
    num_overlays: int = 6,
    progress: bool = True,
) -> TestResult:
    """Evaluate ``weights`` on the CamVid test split; write metrics, confusion and overlays.

    Args:
        weights: A pspnet weight directory.
        data_root: The prepared CamVid folder.
        out_dir: Where ``test_metrics.json``, ``confusion.png`` and ``test_overlays.png`` go.
        pred_dir: Where the predicted class maps are written (one PNG per test image).
        precision: Autocast precision of the forward passes (``fp32`` is exact).
        limit: Evaluate only the first ``limit`` test images (a smoke test, not a result).
        num_overlays: Rows of the overlay grid (evenly spaced over the evaluated images).
        progress: Show a progress bar.

    Returns:
        The :class:`TestResult`.

    Raises:
        BenchError: The weights' class count does not match ``classes.txt``.
    """
    import time

    from pspnet.checkpoint import load_model
    from pspnet.data.datasets import SegmentationDataset, camvid_samples, read_classes_file
    from pspnet.engine.evaluate import evaluate_model, write_metrics
    from pspnet.engine.metrics import save_confusion_png

    class_names, pal_dict = read_classes_file(data_root / "classes.txt")
    model = load_model(weights)
    meta = model.meta  # type: ignore[attr-defined]
    k = meta.model.num_classes
    if len(class_names) != k:
        raise BenchError(
            f"{weights} predicts {k} classes but {data_root / 'classes.txt'} names "
            f"{len(class_names)}; these weights were not trained on this CamVid copy"
        )
    palette = _palette_array(pal_dict, k)
    samples = camvid_samples(data_root, "test")
    total = len(samples)
    if limit is not None:
        samples = samples[: max(1, limit)]
    ds = SegmentationDataset(samples, k, ignore_index=meta.ignore_index)
    t0 = time.perf_counter()
    metrics = evaluate_model(
        model, ds, num_classes=k, ignore_index=meta.ignore_index, mode="whole",
        precision=precision, save_predictions_dir=pred_dir, class_names=class_names,
        palette=palette, preprocess=meta.preprocess, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    extra = {
        "dataset": "CamVid-11 (SegNet split)",
        "split": "test",
        "images": len(samples),
        "split_images": total,
        "weights": display_path(weights),
        "weights_source": meta.source,
        "protocol": "whole image at original size, single scale, no flip; void (255) ignored",
        "precision": precision,
        "seconds": round(seconds, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir / "test_metrics.json", metrics, class_names, extra)
    save_confusion_png(
        metrics.confusion, class_names, out_dir / "confusion.png",
        title=f"CamVid test ({len(samples)} images), mIoU {100 * metrics.miou:.1f}%",
    )  # fmt: skip

    n = min(num_overlays, len(samples))
    if n:
        picks = sorted({int(round(i)) for i in np.linspace(0, len(samples) - 1, n)})
        gts = [ds.load_label(i) for i in picks]
        preds = [np.asarray(Image.open(pred_dir / f"{samples[i].name}.png")) for i in picks]
        overlay_grid([samples[i] for i in picks], gts, preds, palette, class_names,
                     out_dir / "test_overlays.png", ignore_index=meta.ignore_index)  # fmt: skip
    return TestResult(
        metrics=metrics, summary=metrics.to_dict(class_names), weights=weights,
        weights_source=meta.source, class_names=tuple(class_names), num_images=len(samples),
        total_images=total, seconds=seconds,
    )  # fmt: skip


@dataclass
class BudgetPoint:
    """One finished run of the recipe with its own time budget, scored on the test set."""

    work_dir: Path
    budget: float | None  # train.time_budget, minutes
    log: TrainLog
    weights: str  # "best" or "final"
    test_miou: float
    recipe_diff: tuple[str, ...]  # config keys that differ from the main run's (budget aside)

    @property
    def hours(self) -> float:
        """Measured training time in hours."""
        return self.log.minutes / 60.0


#: Config keys that may differ between the runs of one budget curve.
_RUN_KEYS = ("train.time_budget", "train.work_dir", "train.resume", "data.root",
             "data.class_names")  # fmt: skip


def _flat(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _normalised(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every default filled in, so that keys added to the config after a run was
    saved do not count as differences; the raw mapping when it does not validate."""
    try:
        from pspnet.config import Config

        return Config.from_dict(cfg).to_dict()
    except Exception:  # noqa: BLE001 - an old or foreign config is compared as written
        return cfg


def recipe_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    """Keys (dotted) whose values differ between two saved configs, run-specific keys aside."""
    fa, fb = _flat(_normalised(a)), _flat(_normalised(b))
    return tuple(sorted(k for k in set(fa) | set(fb)
                        if k not in _RUN_KEYS and fa.get(k) != fb.get(k)))  # fmt: skip


def budget_point(work_dir: Path, log: TrainLog, cfg: dict[str, Any], test_miou: float,
                 weights: str, main_cfg: dict[str, Any]) -> BudgetPoint:
    """Bundle one run's numbers (see :class:`BudgetPoint`)."""
    budget = (cfg.get("train") or {}).get("time_budget")
    return BudgetPoint(
        work_dir=work_dir, budget=float(budget) if budget else None, log=log, weights=weights,
        test_miou=test_miou, recipe_diff=recipe_diff(cfg, main_cfg),
    )  # fmt: skip


def evaluate_budget_runs(
    work_dirs: Sequence[str | Path],
    data_root: Path,
    out_dir: Path,
    main_cfg: dict[str, Any],
    *,
    precision: str = "fp32",
    limit: int | None = None,
    progress: bool = True,
) -> list[BudgetPoint]:
    """Score other finished runs (other ``--minutes``) on the test set, for the budget curve.

    Each run's metrics and confusion matrix go to ``out_dir/budgets/<work dir name>/``.

    Raises:
        BenchError: A run is missing, unfinished or has no weights.
    """
    points = []
    for wd in work_dirs:
        wd = Path(wd).resolve()
        log = read_log(wd / "log.jsonl")
        if not log.finished:
            raise BenchError(
                f"{wd} holds an unfinished run ({log.iterations} iterations); finish it "
                "(python bench/camvid.py train --minutes M --work-dir DIR resumes it) or leave "
                "it out of --budget-runs"
            )
        weights = pick_weights(wd)
        test = evaluate_test(weights, data_root, out_dir / "budgets" / wd.name,
                             wd / "test_predictions", precision=precision, limit=limit,
                             num_overlays=0, progress=progress)  # fmt: skip
        points.append(budget_point(wd, log, _read_config(wd), test.metrics.miou, weights.name,
                                   main_cfg))  # fmt: skip
    return points


def plot_budget_curve(points: Sequence[BudgetPoint], path: Path) -> Path:
    """Test mIoU (%) of each run against its training hours, with the 60 mIoU line."""
    pts = sorted(points, key=lambda p: p.hours)
    return line_plot(
        path,
        [Series("test mIoU, one run per budget", [p.hours for p in pts],
                [100.0 * p.test_miou for p in pts], (214, 39, 40), markers=True)],
        title="CamVid test mIoU against the training budget (one full run each)",
        xlabel="training time (hours)",
        ylabel="test mIoU (%)",
        hlines=[(TARGET_MIOU, f"{TARGET_MIOU:g} mIoU (SegNet, ImageNet-pretrained)")],
        annotate_last=True,
    )


def budget_section(points: Sequence[BudgetPoint], plot_rel: str) -> list[str]:
    """Markdown: the table and plot of test mIoU per budget, and what each extra hour bought."""
    pts = sorted(points, key=lambda p: p.hours)
    rows, prev = [], None
    for p in pts:
        first = p.log.first_plan
        planned = f" ({first:,} planned at the start)" if first and first != p.log.iterations else ""
        gain = per_hour = ""
        if prev is not None:
            d = 100 * (p.test_miou - prev.test_miou)
            gain = f"{d:+.2f}"
            per_hour = f"{d / (p.hours - prev.hours):+.2f}" if p.hours > prev.hours else ""
        rows.append([
            f"{p.budget:g}" if p.budget else "?", f"{p.log.minutes:.1f}",
            f"{p.log.iterations:,}{planned}", f"{p.log.epochs:.1f}", p.weights,
            _pct(p.test_miou, 2), gain, per_hour, f"`{display_path(p.work_dir)}`",
        ])  # fmt: skip
        prev = p
    lines = [
        "### Test mIoU against the training budget",
        "",
        "One complete run per budget (the same recipe, its own poly schedule planned for its "
        "budget), each scored on the test set with the weights its validation chose. "
        "`iterations` is what the machine delivered; the budget plans its steps from the "
        "pace of the first ones and re-plans when steps slow down (a shared machine).",
        "",
        *md_table(["budget (min)", "trained (min)", "iterations", "epochs", "weights",
                    "test mIoU (%)", "change", "change per extra hour", "work dir"], rows,
                   "rrrrlrrrl"),
        "",
        f"![test mIoU against the budget]({plot_rel})",
        "",
    ]  # fmt: skip
    diffs = [p for p in pts if p.recipe_diff]
    for p in diffs:
        lines.append(f"Note: `{display_path(p.work_dir)}` differs from the main run in "
                     + ", ".join(f"`{k}`" for k in p.recipe_diff) + ".")  # fmt: skip
    if diffs:
        lines.append("")
    if len(pts) >= 2 and pts[-1].hours > pts[-2].hours > 0:
        a, b = pts[-2], pts[-1]
        per_doubling = 100 * (b.test_miou - a.test_miou) / math.log2(b.hours / a.hours)
        now = 100 * b.test_miou
        lines.append(
            f"From {a.hours:.2f} h to {b.hours:.2f} h the test mIoU changed by "
            f"{100 * (b.test_miou - a.test_miou):+.2f} points, {per_doubling:+.2f} per doubling "
            "of the training time."
        )
        if per_doubling > 0 and now < TARGET_MIOU:
            need = b.hours * 2 ** ((TARGET_MIOU - now) / per_doubling)
            lines.append(
                f"*Extrapolation, not a measurement:* if every further doubling bought as much, "
                f"{TARGET_MIOU:g} mIoU would take about {need:.0f} hours of training on this "
                "machine with this recipe; from-scratch curves usually flatten, so read this as "
                "a lower bound."
            )
        lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# The Markdown page


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _read_runs(work_dir: Path) -> list[dict[str, Any]]:
    p = work_dir / RUNS_FILE
    runs = []
    if p.is_file():
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("event") == "launch":
                runs.append(rec)
    return runs


def _read_config(work_dir: Path) -> dict[str, Any]:
    p = work_dir / "config.yaml"
    if not p.is_file():
        return {}
    try:
        from pspnet.config import load_yaml

        return load_yaml(p)
    except Exception:  # noqa: BLE001 - the page is still useful without the recipe
        return {}


def _recipe(cfg: dict[str, Any]) -> list[str]:
    m, d = cfg.get("model", {}) or {}, cfg.get("data", {}) or {}
    t, o = cfg.get("train", {}) or {}, cfg.get("optim", {}) or {}
    if not cfg:
        return ["(WORK_DIR/config.yaml not found)"]
    crop = d.get("crop_size")
    crop_s = "x".join(str(c) for c in crop) if isinstance(crop, list) else str(crop)
    return [
        f"model `{m.get('arch')}`, output stride {m.get('output_stride')}, head "
        f"{m.get('head_channels')} / aux {m.get('aux_channels')} channels, "
        f"{m.get('num_classes')} classes",
        f"crops {crop_s} after random scaling {d.get('scale')} and rotation {d.get('rotate')}, "
        f"batch {t.get('batch_size')}",
        f"SGD lr {o.get('lr')} (head x{o.get('head_lr_mult')}), momentum {o.get('momentum')}, "
        f"weight decay {o.get('weight_decay')}, poly power {o.get('power')}",
        f"loss: cross-entropy + {t.get('aux_weight', 0.4)} x aux, "
        + (f"class weights `{t['class_weights']}` (from the training labels' pixel counts)"
           if isinstance(t.get("class_weights"), str)
           else "explicit class weights" if t.get("class_weights") else "unweighted"),
        f"time budget {t.get('time_budget')} min, precision {t.get('precision')}, seed "
        f"{t.get('seed')}",
        "backbone initialisation: "
        + (f"ImageNet weights from `{t['backbone_weights']}`" if t.get("backbone_weights")
           else "none (random, trained from scratch)"),  # fmt: skip
    ]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(
    *,
    test: TestResult,
    log: TrainLog,
    cfg: dict[str, Any],
    runs: Sequence[dict[str, Any]],
    work_dir: Path,
    out_dir: Path,
    md_path: Path,
    data_root: Path,
    report_command: str,
    commit: str,
    machine: dict[str, Any],
    budgets: Sequence[BudgetPoint] = (),
    notes: str = "",
) -> str:
    """The results page as Markdown (image links relative to ``md_path``).

    ``budgets``, when it holds two or more runs (this one included), adds the test mIoU per
    training budget (``budget_curve.png``) to the section on what extra hours buy. ``notes``
    (Markdown written by a person: the run's conditions, observations) is printed after the
    training table under its own heading.
    """

    def rel(name: str) -> str:
        return Path(os.path.relpath(out_dir / name, md_path.parent)).as_posix()

    s = test.summary
    miou = s["mIoU"]
    miou_pct = 100 * miou if miou is not None else math.nan
    reached = math.isfinite(miou_pct) and miou_pct >= TARGET_MIOU
    minutes = log.minutes
    pretrained = bool((cfg.get("train") or {}).get("backbone_weights"))
    arch = (cfg.get("model") or {}).get("arch") or "pspnet"
    partial = test.num_images < test.total_images
    lines: list[str] = ["# Results: CamVid from scratch on a CPU", ""]
    if partial:
        lines += [
            f"> **Smoke test only**: {test.num_images} of the {test.total_images} test images "
            "were evaluated (`--limit`). These numbers are not a CamVid result.", "",
        ]  # fmt: skip
    lines += [
        f"PSPNet (`{arch}`, {'ImageNet-initialised backbone' if pretrained else 'no pretraining'})"
        f" trained for **{minutes:.1f} minutes** on a CPU ({log.iterations:,} iterations, "
        f"{log.epochs:.1f} epochs over the {log.train_images or 367} training images) reaches "
        f"**{_pct(miou, 2)} mIoU** on the {test.num_images} CamVid test images "
        f"(mAcc {_pct(s['mAcc'], 2)}, allAcc {_pct(s['allAcc'], 2)}).",
        "",
        f"**{TARGET_MIOU:g} mIoU reached: {'yes' if reached else 'no'}.** "
        + (f"The test mIoU is {miou_pct:.1f}, at or above SegNet's {TARGET_MIOU:g}."
           if reached else
           f"The test mIoU is {miou_pct:.1f}, {TARGET_MIOU - miou_pct:.1f} points short of "
           f"{TARGET_MIOU:g} (SegNet, ImageNet-pretrained). See "
           "[What each extra hour buys](#what-each-extra-hour-buys) for the measured curve."),
        "",
        "Everything on this page is regenerated by the commands below; all numbers are "
        "measured, and the one extrapolation is marked as such.",
        "",
        "## Commands",
        "",
        "```sh",
    ]  # fmt: skip
    bench_cmds = list(dict.fromkeys(r["command"] for r in runs if r.get("command")))
    if bench_cmds:
        lines += bench_cmds
    else:
        budget = (cfg.get("train") or {}).get("time_budget")
        lines.append(f"python bench/camvid.py train --minutes {budget if budget else 'M'} "
                     f"--work-dir {display_path(work_dir)}  # (reconstructed)")  # fmt: skip
    lines += [report_command, "```", ""]
    pspnet_cmds = list(dict.fromkeys(r["pspnet_command"] for r in runs if r.get("pspnet_command")))
    if pspnet_cmds:
        lines += ["`train` runs (each launch, resumed automatically where it stopped):", "",
                  "```sh", *pspnet_cmds, "```", ""]  # fmt: skip
    lines += [
        f"The CamVid copy is found through `{ENV_VAR}` or at `../shared/data/camvid` (used: "
        f"`{data_root}`).",
        "",
        "## Setup",
        "",
        f"- Commit: `{commit}`",
    ]
    train_machines = list(dict.fromkeys(format_machine(r["machine"]) for r in runs
                                        if isinstance(r.get("machine"), dict)))  # fmt: skip
    for tm in train_machines:
        lines.append(f"- Training machine: {tm}")
    lines.append(f"- Report machine (test evaluation): {format_machine(machine)}")
    lines.append("- Recipe (`configs/camvid_cpu.yaml`, as saved in the work dir):")
    lines += [f"  - {r}" for r in _recipe(cfg)]
    lines += [
        f"- Data: CamVid-11, SegNet split ({log.train_images or '?'} train / "
        f"{log.val_images or '?'} val / {test.total_images} test images, 480x360), void ignored",
        "",
        "## Training",
        "",
    ]
    spi = log.median_sec_per_iter
    best = log.best_val
    rows = [
        ("training time (wall clock, incl. validation)", f"{minutes:.1f} min"),
        ("iterations (optimizer steps)", f"{log.iterations:,}"
         + (f" of {log.max_iter:,} planned" if log.max_iter else "")),
        ("epochs", f"{log.epochs:.2f}"),
        ("sessions (start + resumes)", str(log.sessions)),
        ("finished", f"yes ({log.stop_reason})" if log.finished else "no (log has no end event)"),
        ("precision", str(log.precision)),
        ("training crop", "x".join(map(str, log.crop_size)) if log.crop_size else "?"),
        ("median time per iteration", f"{spi:.2f} s" if spi else "?"),
        ("validations", f"{len(log.val)}" + (f" ({log.skipped_vals} skipped for lack of time)"
                                             if log.skipped_vals else "")),
        ("best val mIoU", f"{_pct(best.miou, 2)} at iteration {best.iter} "
         f"({best.minutes:.1f} min)" if best else "n/a"),
    ]  # fmt: skip
    lines += md_table(["quantity", "value"], rows, "ll")
    if notes.strip():
        lines += ["", "### Conditions and observations (written by hand, not by the script)", "",
                  notes.strip()]  # fmt: skip
    lines += [
        "",
        f"![training loss]({rel('loss.png')})",
        "",
        f"![validation mIoU]({rel('val_miou.png')})",
        "",
        "## Test set",
        "",
        f"Weights: `{display_path(test.weights)}` ({test.weights_source or 'no source recorded'}"
        + ("; the best validation mIoU of the run, chosen on the validation set, never on test"
           if test.weights.name == "best" else "; the last weights: no validation saved best/")
        + "). Protocol: whole image at the original "
        "480x360, single scale, no flip, void ignored, IoU per class over the whole test set "
        f"(one confusion matrix), mean over the {len(test.class_names)} classes. "
        f"{test.num_images} images evaluated in {_duration(test.seconds)}.",
        "",
    ]
    lines += md_table(["mIoU", "mAcc", "allAcc"],
                       [[_pct(s["mIoU"], 2), _pct(s["mAcc"], 2), _pct(s["allAcc"], 2)]], "rrr")
    lines += [""]
    total_px = sum(c["gt_pixels"] for c in s["per_class"]) or 1
    lines += md_table(
        ["class", "IoU (%)", "accuracy (%)", "share of test pixels (%)"],
        [[c["name"], _pct(c["iou"]), _pct(c["acc"]), f"{100 * c['gt_pixels'] / total_px:.2f}"]
         for c in s["per_class"]],
    )  # fmt: skip
    lines += [
        "",
        f"![confusion matrix]({rel('confusion.png')})",
        "",
        f"Metrics as JSON: [`{rel('test_metrics.json')}`]({rel('test_metrics.json')}).",
        "",
        "## Comparison with published CamVid results",
        "",
        "Test mIoU on the same 11-class, 233-image split (from the data set's README; "
        "resolutions, backbones and pretraining differ):",
        "",
    ]
    ours = (
        f"**PSPNet `{arch}` (this repository, CPU, {minutes:.1f} min"
        + (f", {test.num_images} of {test.total_images} test images" if partial else "")
        + ")**"
    )
    pre = "ImageNet (train.backbone_weights)" if pretrained else "none, from scratch"
    lines += md_table(
        ["method", "pretraining", "test mIoU"],
        [*PUBLISHED, (ours, pre, f"**{miou_pct:.1f}**")],
        "llr",
    )
    lines += [
        "",
        f"{TARGET_MIOU:g} mIoU {'was' if reached else 'was not'} reached"
        + (f" ({miou_pct:.1f})." if reached else
           f": {miou_pct:.1f} after {minutes:.1f} minutes of CPU training "
           + ("from an ImageNet-initialised backbone." if pretrained else "without pretraining.")),
        "",
    ]  # fmt: skip
    if not reached:
        lines += ["## What each extra hour buys", ""]
        if len(budgets) >= 2:
            lines += budget_section(budgets, rel("budget_curve.png"))
            lines += ["### Validation mIoU during the main run", ""]
        lines += [
            f"Measured only. Every validation of this run ({log.val_images or '?'} val images, "
            "whole image) with the training time at which the weights were validated. The "
            "learning rate follows one poly schedule planned to reach 0 at the end of the "
            f"{(cfg.get('train') or {}).get('time_budget', '?')}-minute budget, so a mid-run "
            "point is not the score of a run given only that many minutes; nothing beyond the "
            "last point was measured. To see what more time buys, train with a larger "
            "`--minutes` in a new `--work-dir` and regenerate this page.",
            "",
        ]
        if log.val:
            vrows, prev = [], None
            for v in log.val:
                delta = "" if prev is None else f"{100 * (v.miou - prev.miou):+.2f}"
                vrows.append([f"{v.minutes:.1f}", f"{v.minutes / 60:.2f}", f"{v.iter:,}",
                              f"{v.epoch:.1f}", _pct(v.miou, 2), delta])  # fmt: skip
                prev = v
            lines += md_table(
                ["training minutes", "hours", "iteration", "epoch", "val mIoU (%)",
                 "change since previous point"], vrows)  # fmt: skip
        else:
            lines.append("No validation ran in this budget, so there is no curve to show.")
        lines.append("")
    lines += [
        "## Test overlays",
        "",
        "Evenly spaced test images: the image, the ground truth and the prediction over it "
        "(void shown as the bare image), with the pixel accuracy of each image.",
        "",
        f"![test overlays]({rel('test_overlays.png')})",
        "",
        "---",
        f"Generated by `bench/camvid.py` on {_dt.date.today().isoformat()}.",
        "",
    ]
    return "\n".join(lines)


def build_report(
    work_dir: str | Path = DEFAULT_WORK_DIR,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    markdown: str | Path | None = None,
    precision: str = "fp32",
    limit: int | None = None,
    num_overlays: int = 6,
    report_command: str | None = None,
    progress: bool = True,
    budget_runs: Sequence[str | Path] = (),
    notes: str | Path | None = None,
) -> dict[str, Path]:
    """Evaluate on the test set, draw the plots and overlays, write the Markdown page.

    Args:
        work_dir: The training work directory (``log.jsonl``, ``best/`` or ``final/``).
        out_dir: Folder of the figures and ``test_metrics.json``.
        markdown: The page to write; default ``<out_dir>/../results.md``.
        precision: Forward-pass precision for the test evaluation.
        limit: Evaluate only the first ``limit`` test images (the page says it is a smoke test).
        num_overlays: Rows of the overlay grid.
        report_command: The command quoted on the page (default: rebuilt from the arguments).
        progress: Show a progress bar during evaluation.
        budget_runs: Other finished work dirs of the same recipe with other budgets; their
            test mIoU, with this run's, makes the budget curve (``budget_curve.png``).
        notes: A Markdown file of hand-written notes on the runs, printed on the page.

    Returns:
        Name -> path of every file written.

    Raises:
        BenchError: Missing data, log or weights.
    """
    work_dir, out_dir = Path(work_dir).resolve(), Path(out_dir).resolve()
    md_path = Path(markdown).resolve() if markdown else out_dir.parent / "results.md"
    if notes is not None and not Path(notes).is_file():
        raise BenchError(f"--notes {notes} does not exist; give a Markdown file or leave it out")
    notes_text = Path(notes).read_text(encoding="utf-8") if notes is not None else ""
    data_root = find_camvid(("test",))
    log = read_log(work_dir / "log.jsonl")
    weights = pick_weights(work_dir)
    test = evaluate_test(
        weights, data_root, out_dir, work_dir / "test_predictions", precision=precision,
        limit=limit, num_overlays=num_overlays, progress=progress,
    )  # fmt: skip
    files = {
        "metrics": out_dir / "test_metrics.json",
        "confusion": out_dir / "confusion.png",
        "overlays": out_dir / "test_overlays.png",
        "loss": plot_loss(log, out_dir / "loss.png"),
        "val_miou": plot_val_miou(log, out_dir / "val_miou.png"),
    }
    cfg = _read_config(work_dir)
    budgets: list[BudgetPoint] = []
    if budget_runs:
        main = budget_point(work_dir, log, cfg, test.metrics.miou, weights.name, cfg)
        # Each other run once (the main run may be listed too).
        others = list(dict.fromkeys(Path(d).resolve() for d in budget_runs))
        others = [d for d in others if d != work_dir]
        budgets = [main, *evaluate_budget_runs(others, data_root, out_dir, cfg,
                                               precision=precision, limit=limit,
                                               progress=progress)]  # fmt: skip
        if len(budgets) >= 2:  # a curve needs two points; the page shows it only then
            files["budget_curve"] = plot_budget_curve(budgets, out_dir / "budget_curve.png")
    if report_command is None:
        parts = ["python", "bench/camvid.py", "report", "--work-dir", display_path(work_dir),
                 "--out", display_path(out_dir)]  # fmt: skip
        if markdown:
            parts += ["--markdown", display_path(md_path)]
        if precision != "fp32":
            parts += ["--precision", precision]
        if limit is not None:
            parts += ["--limit", str(limit)]
        if budget_runs:
            parts += ["--budget-runs", *(display_path(Path(d).resolve()) for d in budget_runs)]
        if notes is not None:
            parts += ["--notes", display_path(Path(notes).resolve())]
        report_command = shlex.join(parts)
    text = render_markdown(
        test=test, log=log, cfg=cfg, runs=_read_runs(work_dir),
        work_dir=work_dir, out_dir=out_dir, md_path=md_path, data_root=data_root,
        report_command=report_command, commit=git_commit(), machine=machine_info(),
        budgets=budgets, notes=notes_text,
    )  # fmt: skip
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    files["markdown"] = md_path
    return files


# --------------------------------------------------------------------------------------------
# Command line


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run (or resume) ``pspnet train`` on CamVid; record the launch in the work dir."""
    data_root = find_camvid(("train", "val"))
    work_dir = Path(args.work_dir).resolve()
    config = Path(args.config).resolve()
    if not config.is_file():
        raise BenchError(f"config file {config} does not exist")
    if args.minutes <= 0:
        raise BenchError(f"--minutes must be positive, got {args.minutes}")
    log_path = work_dir / "log.jsonl"
    if log_path.is_file() and not args.dry_run:
        old = read_log(log_path)
        if old.finished:
            raise BenchError(
                f"{work_dir} holds a finished run ({old.iterations} iterations, "
                f"{old.minutes:.1f} min, {old.stop_reason}); resuming cannot extend it (the "
                "budget is part of its schedule). Train in a new --work-dir, or run `report`."
            )
    cmd = train_command(args.minutes, work_dir, data_root, config, args.set)
    full = [sys.executable, "-m", "pspnet", *cmd]
    shown_bench = shlex.join(["python", "bench/camvid.py", *argv])
    shown_pspnet = shlex.join(["pspnet", *[display_path(Path(c)) if c == str(config) else c
                                           for c in cmd]])  # fmt: skip
    print(f"running: {shown_pspnet}", flush=True)
    if args.dry_run:
        return 0
    work_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "event": "launch", "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": shown_bench, "pspnet_command": shown_pspnet, "minutes": args.minutes,
        "commit": git_commit(), "machine": machine_info(), "data_root": str(data_root),
        "loadavg": _loadavg(),
    }  # fmt: skip
    with open(work_dir / RUNS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    rc = subprocess.call(full, cwd=REPO)
    with open(work_dir / RUNS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "exit", "time": _dt.datetime.now().isoformat(
            timespec="seconds"), "returncode": rc, "loadavg": _loadavg()}) + "\n")  # fmt: skip
    if rc == 0:
        print(f"done; now: python bench/camvid.py report --work-dir {display_path(work_dir)}")
    return rc


def cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Evaluate on test, draw the figures and write the Markdown page."""
    files = build_report(
        args.work_dir, args.out, markdown=args.markdown, precision=args.precision,
        limit=args.limit, num_overlays=args.overlays,
        report_command=shlex.join(["python", "bench/camvid.py", *argv]),
        progress=not args.quiet, budget_runs=args.budget_runs, notes=args.notes,
    )  # fmt: skip
    metrics = json.loads(files["metrics"].read_text())
    print(f"test mIoU {_pct(metrics['mIoU'], 2)} on {metrics['images']} images")
    for name, path in files.items():
        print(f"  {name}: {display_path(path)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``bench/camvid.py`` argument parser (``train`` and ``report``)."""
    p = argparse.ArgumentParser(
        prog="python bench/camvid.py",
        description="CamVid from scratch on a CPU: train, then write the results page.",
        epilog=f"The CamVid copy is read from ${ENV_VAR} or {DEFAULT_CAMVID}.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run or resume pspnet train on CamVid with a time budget")
    t.add_argument("--minutes", type=float, required=True,
                   help="training budget in minutes (train.time_budget) of the run")
    t.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                   help="run folder (default: work_dirs/camvid_cpu); an unfinished run there "
                        "is resumed")  # fmt: skip
    t.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe (configs/camvid_cpu.yaml)")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="more pspnet train overrides, e.g. train.threads=2")
    t.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    r = sub.add_parser("report", help="evaluate on the test set and write docs/results.md")
    r.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    r.add_argument("--out", default=str(DEFAULT_OUT),
                   help="figures and test_metrics.json (default docs/results)")
    r.add_argument("--markdown", help="the page (default: <out>/../results.md)")
    r.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    r.add_argument("--limit", type=int, help="evaluate only N test images (smoke test)")
    r.add_argument("--overlays", type=int, default=6, help="rows of the overlay grid")
    r.add_argument("--budget-runs", nargs="+", default=[], metavar="WORK_DIR",
                   help="other finished runs of the recipe with other --minutes: the page adds "
                        "their test mIoU against training time (budget_curve.png)")
    r.add_argument("--notes", metavar="FILE",
                   help="Markdown notes written by hand (run conditions, observations), printed "
                        "after the training table, e.g. docs/results_notes.md")
    r.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Returns:
        The exit status: 0 on success, 2 on a problem the message explains, else the status of
        ``pspnet train``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return cmd_report(args, argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
