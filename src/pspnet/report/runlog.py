"""Reading a training run back: ``log.jsonl`` curves and totals, launch records, the config.

``pspnet train`` writes one JSON event per line to ``WORK_DIR/log.jsonl`` (``start``, ``resume``,
``plan``, ``train``, ``val``, ``val_skipped``, ``end``); :func:`read_log` turns the latest run
into a :class:`TrainLog`. :func:`recipe_diff` compares the saved configs of two runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReportError", "TrainPoint", "ValPoint", "TrainLog", "read_log", "read_runs",
           "read_config", "recipe_diff", "RUNS_FILE"]

#: The launch records a benchmark script appends to a work directory.
RUNS_FILE = "bench_runs.jsonl"


class ReportError(RuntimeError):
    """A problem the user can fix (missing data, no weights, no log); printed without a trace."""


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


def _events(p: Path) -> tuple[list[dict[str, Any]], int]:
    """The events of the latest fresh run (from its last ``start`` on) and the bad line count."""
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
    return (events[starts[-1]:] if starts else events), bad


def _session(log: TrainLog, e: dict[str, Any]) -> None:
    """A ``start`` or ``resume``: a new session; a resume drops the points it redoes."""
    log.sessions += 1
    log.finished = False
    if e["event"] == "resume":
        r = int(e.get("iteration") or 0)
        log.train = [t for t in log.train if t.iter <= r]
        log.val = [v for v in log.val if v.iter <= r]
    log.precision = e.get("precision", log.precision)
    log.crop_size = e.get("crop_size", log.crop_size)
    log.steps_per_epoch = e.get("steps_per_epoch", log.steps_per_epoch)
    log.train_images = e.get("train_images", log.train_images)
    log.val_images = e.get("val_images", log.val_images)
    log.max_iter = e.get("max_iter", log.max_iter) or log.max_iter


def _train_point(e: dict[str, Any]) -> TrainPoint:
    elapsed = _num(e.get("elapsed_s")) or 0.0
    return TrainPoint(
        iter=int(e["iter"]), epoch=_num_or(e, "epoch", 0.0), minutes=elapsed / 60.0,
        loss=_num_or(e, "loss"), loss_main=_num_or(e, "loss_main"),
        loss_aux=_num_or(e, "loss_aux"), lr=_num_or(e, "lr", 0.0),
        sec_per_iter=_num_or(e, "sec_per_iter", 0.0),
    )  # fmt: skip


def _val_point(log: TrainLog, e: dict[str, Any],
               anchor: tuple[float, float] | None) -> ValPoint | None:
    """A ``val`` event, its training time taken from ``anchor`` (the last train event's
    ``(elapsed_s, wall time)``) plus the wall-clock time since, less the validation's own."""
    miou = _num(e.get("mIoU", e.get("miou")))
    if miou is None:
        return None
    seconds = _num(e.get("seconds"))
    t = _num(e.get("time"))
    if anchor is not None and t is not None:
        elapsed = anchor[0] + max(0.0, t - (seconds or 0.0) - anchor[1])
    else:
        elapsed = log.train[-1].minutes * 60.0 if log.train else 0.0
    return ValPoint(
        iter=int(e["iter"]), epoch=float(e.get("epoch") or 0.0), minutes=elapsed / 60.0,
        miou=miou, macc=_num(e.get("mAcc")), all_acc=_num(e.get("allAcc")),
        best=bool(e.get("best")), seconds=seconds,
    )  # fmt: skip


def _totals(log: TrainLog, end: dict[str, Any] | None) -> None:
    """Iterations, minutes and epochs: from the ``end`` event, else from the last points."""
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


def read_log(path: str | Path, missing_hint: str = "train first") -> TrainLog:
    """Parse a training ``log.jsonl`` into curves and totals.

    Only the latest fresh run counts (events from its last ``start`` on); a ``resume`` drops the
    points logged after the iteration it resumed from (they were redone). A truncated or damaged
    line is skipped and counted. Validation events carry no elapsed time, so it is taken from the
    preceding ``train`` event of the same session plus the wall-clock time between the two
    (less the validation's own duration).

    Args:
        path: The ``log.jsonl`` file.
        missing_hint: What the error says to do when the file does not exist.

    Returns:
        The parsed :class:`TrainLog`.

    Raises:
        ReportError: The file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"{p} does not exist: {missing_hint}")
    events, bad = _events(p)
    log = TrainLog(bad_lines=bad)
    anchor: tuple[float, float] | None = None  # (elapsed_s, wall time) of the last train event
    end: dict[str, Any] | None = None
    for e in events:
        kind = e["event"]
        if kind in ("start", "resume"):
            _session(log, e)
            anchor = end = None
        elif kind == "train":
            log.train.append(_train_point(e))
            if _num(e.get("time")) is not None:
                anchor = (_num(e.get("elapsed_s")) or 0.0, float(e["time"]))
        elif kind == "val":
            v = _val_point(log, e, anchor)
            if v is not None:
                log.val.append(v)
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
    _totals(log, end)
    return log


def read_runs(work_dir: Path) -> list[dict[str, Any]]:
    """The ``launch`` records of ``WORK_DIR/bench_runs.jsonl`` (damaged lines skipped)."""
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


def read_config(work_dir: Path) -> dict[str, Any]:
    """``WORK_DIR/config.yaml`` as a mapping; empty when missing or unreadable."""
    p = work_dir / "config.yaml"
    if not p.is_file():
        return {}
    try:
        from pspnet.config import load_yaml

        return load_yaml(p)
    except Exception:  # noqa: BLE001 - the page is still useful without the recipe
        return {}


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
