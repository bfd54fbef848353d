"""The page of one training run: curves from ``log.jsonl``, per-class IoU, confusion, overlays.

:func:`plot_loss` and :func:`plot_val_miou` draw a run's curves (the CamVid results page uses
them too); :func:`write_run_page` writes ``index.html`` with its pictures beside it. The
validation pictures come from the caller (:mod:`pspnet.engine.run_report` evaluates the run's
weights); this module only draws and writes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pspnet.report.charts import Series, line_plot
from pspnet.report.runlog import TrainLog
from pspnet.report.tables import pct

__all__ = ["PAGE", "PICTURES", "ValPictures", "plot_loss", "plot_val_miou", "write_run_page"]

#: The page's file name inside the report folder.
PAGE = "index.html"
#: The pictures the page shows, by section (file names inside the report folder).
PICTURES = {"loss": "loss.png", "val_miou": "val_miou.png", "class_iou": "class_iou.png",
            "confusion": "confusion.png", "overlays": "overlays.png"}  # fmt: skip

XAxis = Literal["iter", "minutes"]
_X_LABEL = {"iter": "iteration", "minutes": "training time (minutes)"}


def plot_loss(log: TrainLog, path: Path, *, title: str = "Training loss",
              x: XAxis = "iter") -> Path:
    """Training loss (total and main head) against iterations or training minutes."""
    xs = [float(t.iter) if x == "iter" else t.minutes for t in log.train]
    return line_plot(
        path,
        [
            Series("loss (main + aux)", xs, [t.loss for t in log.train], (31, 119, 180)),
            Series("main head", xs, [t.loss_main for t in log.train], (255, 127, 14), width=1),
        ],
        title=title,
        xlabel=_X_LABEL[x],
        ylabel="cross-entropy loss",
        empty_message="no train events in log.jsonl",
    )


def plot_val_miou(log: TrainLog, path: Path, *, title: str = "Validation mIoU during training",
                  x: XAxis = "iter", target: tuple[float, str] | None = None,
                  empty_message: str = "no validation in log.jsonl") -> Path:
    """Validation mIoU (%) against iterations or training minutes, with an optional target
    line ``(mIoU in %, label)``."""
    return line_plot(
        path,
        [Series(f"val mIoU ({log.val_images or '?'} val images)",
                [float(v.iter) if x == "iter" else v.minutes for v in log.val],
                [100.0 * v.miou for v in log.val], (44, 160, 44), markers=True)],  # fmt: skip
        title=title,
        xlabel=_X_LABEL[x],
        ylabel="mIoU (%)",
        hlines=[target] if target else [],
        annotate_last=True,
        empty_message=empty_message,
    )


@dataclass(frozen=True)
class ValPictures:
    """What scoring the run's weights on validation images gave, and the pictures drawn."""

    weights: str
    """The weight folder scored (``best`` or ``final``)."""
    source: str
    """Where the weights come from (their metadata)."""
    images: int
    """Validation images scored."""
    total: int
    """Images in the validation set."""
    overlay_images: int
    """Rows of the overlay grid."""
    scores: tuple[float, float, float] | None = None
    """mIoU, mAcc and allAcc on the ``images`` scored; None when none were."""
    pictures: tuple[str, ...] = field(default=("class_iou", "confusion", "overlays"))
    """Keys of :data:`PICTURES` written."""


_STYLE = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em}"
          "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
          "img{max-width:100%}.note{color:#a33}")  # fmt: skip


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>'


def _run_rows(log: TrainLog, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's facts: model, data, length, how it ended, the best validation."""
    m, t = cfg.get("model") or {}, cfg.get("train") or {}
    best = log.best_val
    init = t.get("init_weights") or t.get("backbone_weights")
    return [
        ("model", f"{m.get('arch', '?')}, {m.get('num_classes', '?')} classes"),
        ("initial weights", str(init) if init else "none (trained from scratch)"),
        ("images", f"{log.train_images or '?'} training, {log.val_images or 0} validation"),
        ("iterations", f"{log.iterations:,}" + (f" of {log.max_iter:,} planned"
                                                if log.max_iter else "")),
        ("epochs", f"{log.epochs:.2f}"),
        ("training time", f"{log.minutes:.1f} min"),
        ("finished", f"yes ({log.stop_reason})" if log.finished else "no (no end event yet)"),
        ("best validation mIoU",
         f"{pct(best.miou, 2)} % at iteration {best.iter:,}" if best else "no validation"),
    ]  # fmt: skip


def _val_section(val: ValPictures | None, notes: Sequence[str]) -> list[str]:
    """Scores, per-class IoU, confusion matrix and overlays of the chosen weights."""
    parts = ["<h2>Validation images with the run's weights</h2>"]
    if val is not None:
        scope = (f"all {val.total}" if val.images == val.total
                 else f"{val.images} of the {val.total} (evenly spaced)")
        weights = (f"<p>Weights <code>{html.escape(val.weights)}/</code> "
                   f"({html.escape(val.source or 'no source recorded')})")
        if val.scores is None:
            parts.append(f"{weights}, not scored: validation was off in this run "
                         "(<code>pspnet report WORK_DIR</code> scores them).</p>")
        else:
            miou, macc, all_acc = val.scores
            parts.append(
                f"{weights}, scored on {scope} validation images, whole image at the original "
                f"size, label 255 ignored: mIoU {pct(miou, 2)} %, mAcc {pct(macc, 2)} %, "
                f"allAcc {pct(all_acc, 2)} %.</p>"
            )
        alts = {"class_iou": "per-class IoU", "confusion": "confusion matrix",
                "overlays": "validation overlays: image, ground truth, prediction"}
        heads = {"class_iou": "Per-class IoU", "confusion": "Confusion matrix",
                 "overlays": f"Overlays ({val.overlay_images} validation images: image | "
                             "ground truth | prediction)"}  # fmt: skip
        for key in val.pictures:
            parts += [f"<h3>{html.escape(heads[key])}</h3>", _img(PICTURES[key], alts[key])]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    return parts


def write_run_page(out_dir: Path, log: TrainLog, cfg: dict[str, Any], *, work_dir_name: str,
                   val: ValPictures | None, notes: Sequence[str] = ()) -> Path:
    """Draw the curves and write ``out_dir/index.html`` (pictures beside it).

    Args:
        out_dir: The report folder (created).
        log: The run's :class:`TrainLog`.
        cfg: The run's saved config (``config.yaml`` as a mapping; may be empty).
        work_dir_name: How the page names the work directory (its title).
        val: The validation pictures already drawn into ``out_dir``, or None.
        notes: Sentences saying what could not be drawn and why.

    Returns:
        The page's path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_loss(log, out_dir / PICTURES["loss"])
    plot_val_miou(log, out_dir / PICTURES["val_miou"])
    title = f"pspnet training run: {work_dir_name}"
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _table(_run_rows(log, cfg)),
        "<h2>Training loss</h2>", _img(PICTURES["loss"], "training loss"),
        "<h2>Validation mIoU during training</h2>", _img(PICTURES["val_miou"], "validation mIoU"),
        *_val_section(val, notes),
        "<p>Written by <code>pspnet report</code> from <code>log.jsonl</code>, "
        "<code>config.yaml</code> and the run's weights; run it again to redraw.</p>",
        "</body></html>",
    ]  # fmt: skip
    if log.bad_lines:
        lines.insert(-2, f'<p class="note">{log.bad_lines} damaged lines of log.jsonl skipped.</p>')
    page = out_dir / PAGE
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return page

