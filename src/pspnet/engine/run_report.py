"""The report of a training run: ``pspnet report WORK_DIR``, also written when training ends.

:func:`write_report` reads ``WORK_DIR/log.jsonl`` (loss and validation-mIoU curves) and
``WORK_DIR/config.yaml``, scores the run's weights (``best/``, else ``final/``) on up to
``max_images`` validation images of the data the config names, and writes
``WORK_DIR/report/index.html`` with its pictures beside it: the curves, per-class IoU bars,
the confusion matrix and a grid of overlays (image | ground truth | prediction). Drawing is
:mod:`pspnet.report`'s; this module only gathers the numbers.

:func:`report_after_training` is the one call at the end of :func:`pspnet.engine.train.train`:
a report that cannot be drawn (matplotlib missing, data moved) is a warning there, never a
failed training.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from pspnet.checkpoint import load_model
from pspnet.checkpoint.weights import is_weight_dir
from pspnet.config import Config, ConfigError
from pspnet.data.io import DataError
from pspnet.data.training import build_data
from pspnet.engine.evaluate import evaluate_model
from pspnet.engine.metrics import SegMetrics
from pspnet.engine.state import Run
from pspnet.report.charts import class_bars, require_matplotlib, save_confusion_png
from pspnet.report.overlays import overlay_grid
from pspnet.report.run_page import PICTURES, ValPictures, write_run_page
from pspnet.report.runlog import ReportError, read_config, read_log

__all__ = ["REPORT_DIR", "pick_weights", "write_report", "report_after_training"]

#: The report folder inside a work directory.
REPORT_DIR = "report"


class _NoValidationSet(ReportError):
    """The run was trained without validation data: nothing to score, and nothing wrong."""


def pick_weights(work_dir: Path) -> Path:
    """``WORK_DIR/best`` when it holds weights (the best validation), else ``WORK_DIR/final``.

    Raises:
        ReportError: Neither holds weights.
    """
    for name in ("best", "final"):
        if is_weight_dir(work_dir / name):
            return work_dir / name
    raise ReportError(
        f"no weights in {work_dir} (neither best/ nor final/ holds a config.json): the run has "
        "not saved any yet; let `pspnet train` finish (or resume it) first"
    )


def write_report(work_dir: str | Path, *, device: str = "cpu", max_images: int = 100,
                 num_overlays: int = 4, progress: bool = False,
                 scored: SegMetrics | None = None, score: bool = True) -> Path:
    """Write ``WORK_DIR/report/index.html`` and its pictures; returns the page's path.

    What cannot be drawn from the validation images (no validation set configured, data
    moved, no weights yet) is said on the page (and warned) instead; the curves are drawn
    whenever ``log.jsonl`` exists.

    Args:
        work_dir: A ``pspnet train`` work directory.
        device: Where the weights run (``cpu``, ``cuda``, ...).
        max_images: Validation images scored at most (evenly spaced over the set).
        num_overlays: Rows of the overlay grid.
        progress: Show a progress bar while scoring.
        scored: The metrics of the chosen weights on the whole validation set when the caller
            has them (the end of training): then only the overlay images are predicted.
        score: Score the weights when ``scored`` is None (False: overlays only, for a run
            trained with validation off, whose report should not cost a validation).

    Raises:
        ReportError: ``WORK_DIR/log.jsonl`` does not exist.
        ValueError: ``max_images`` or ``num_overlays`` is below 1.
        ModuleNotFoundError: matplotlib is not installed (the message names the extra).
    """
    if max_images < 1 or num_overlays < 1:
        raise ValueError(f"max_images and num_overlays must be at least 1, got {max_images} and "
                         f"{num_overlays}")  # fmt: skip
    require_matplotlib()  # before any scoring: a missing extra fails in a second, not after
    wd = Path(work_dir)
    log = read_log(wd / "log.jsonl", f"{wd} is not a training work directory (no log.jsonl); "
                   "give the --work-dir of a `pspnet train` run")  # fmt: skip
    cfg = read_config(wd)
    out = wd / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    val, notes = None, []
    try:
        val = _validation_pictures(wd, cfg, out, device, (max_images, num_overlays), progress,
                                   scored if scored is not None or not score else _SCORE)
    except _NoValidationSet as e:
        notes.append(f"No validation pictures: {e}.")
    except (ReportError, ConfigError, DataError, OSError, ValueError) as e:
        notes.append(f"No validation pictures: {e}")
        warnings.warn(f"report of {wd}: no validation pictures: {e}", stacklevel=2)
    return write_run_page(out, log, cfg, work_dir_name=wd.resolve().name, val=val, notes=notes)


#: ``_validation_pictures(scored=_SCORE)``: score the weights here (None: do not score).
_SCORE = "score"


def _spaced(n: int, k: int) -> list[int]:
    """At most ``k`` indices evenly spaced over ``range(n)`` (first and last included)."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))}) if n else []


def _validation_pictures(wd: Path, cfg: dict[str, Any], out: Path, device: str,
                         counts: tuple[int, int], progress: bool,
                         scored: SegMetrics | str | None) -> ValPictures:
    """Score the run's weights on validation images; draw per-class IoU, confusion, overlays."""
    if not cfg:
        raise ReportError(f"{wd / 'config.yaml'} is missing or unreadable")
    config = Config.from_dict(cfg)
    data = build_data(config)
    if data.val is None:
        raise _NoValidationSet("the run has no validation set (train with --val-list, or a "
                               "data set with a validation split)")  # fmt: skip
    weights = pick_weights(wd)
    model = load_model(weights, device=device)
    meta = getattr(model, "meta", None)
    k, ignore, val = config.model.num_classes, config.data.ignore_index, data.val
    names = list(data.class_names or (meta.classes if meta and meta.classes else None)
                 or [str(i) for i in range(k)])  # fmt: skip
    palette = np.asarray(data.palette, dtype=np.uint8)
    metrics: SegMetrics | None = None
    picks: list[int] = []
    if isinstance(scored, SegMetrics):  # the caller scored the whole validation set
        metrics, picks = scored, list(range(len(val)))
    elif scored == _SCORE:
        picks = _spaced(len(val), counts[0])
        metrics = evaluate_model(model, Subset(val, picks), num_classes=k, ignore_index=ignore,
                                 mode="whole", progress=progress)
    rows = _spaced(len(val), counts[1])
    with tempfile.TemporaryDirectory() as tmp:
        evaluate_model(model, Subset(val, rows), num_classes=k, ignore_index=ignore,
                       mode="whole", save_predictions_dir=tmp, palette=palette, progress=False)
        preds = [np.asarray(Image.open(Path(tmp) / f"{val.samples[i].name}.png")) for i in rows]
    if metrics is not None:
        scope = f"{len(picks)} validation images"
        class_bars(out / PICTURES["class_iou"], names, list(metrics.iou),
                   title=f"IoU per class ({scope}), mIoU {100 * metrics.miou:.1f}%")
        save_confusion_png(metrics.confusion, names, out / PICTURES["confusion"],
                           title=f"Confusion matrix ({scope})")
    overlay_grid([val.samples[i] for i in rows], [val.load_label(i) for i in rows], preds,
                 palette, names, out / PICTURES["overlays"], ignore_index=ignore)
    return ValPictures(
        weights=weights.name, source=meta.source if meta else "", images=len(picks),
        total=len(val), overlay_images=len(rows),
        scores=None if metrics is None else (metrics.miou, metrics.macc, metrics.all_acc),
        pictures=("class_iou", "confusion", "overlays") if metrics is not None else ("overlays",),
    )  # fmt: skip


def report_after_training(run: Run) -> Path | None:
    """The report at the end of a training run (rank 0 of a single process); never raises.

    The last validation's metrics are reused when they scored the weights the report shows
    (``best/`` at the last validated iteration, or ``final/`` when there is no ``best/``);
    otherwise the report scores them itself, unless validation was off in the run (then only
    the overlays are drawn: the report never costs a validation nobody asked for). Under
    ``torchrun`` the report is left to ``pspnet report WORK_DIR``: scoring on one process
    while the others wait would need a collective they are not in. The global random state is
    left as it was.

    Returns:
        The page's path, or None when it was not written (a warning says why).
    """
    info, st = run.info, run.state
    if not info.is_main:
        return None
    if info.world_size > 1:
        warnings.warn(f"no report drawn under torchrun: run `pspnet report {run.work_dir}` "
                      "after training", stacklevel=2)  # fmt: skip
        return None
    same = st.last_val_iter == st.it and st.best_iter in (-1, st.it)
    try:
        with torch.random.fork_rng(devices=[]):
            page = write_report(run.work_dir, device=str(info.device),
                                scored=st.last_metrics if same else None,
                                score=run.val_enabled and st.val_every != 0)
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished training
        warnings.warn(f"training finished, but its report was not written: {e}", stacklevel=2)
        return None
    run.log.say(f"report: {page}")
    return page
