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
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pspnet.benchmark import CAMVID_ENV
from pspnet.benchmark.data_pipeline import CamVidNotFoundError, require_camvid
from pspnet.engine.run_report import pick_weights
from pspnet.report import machine as _machine
from pspnet.report.camvid_page import (
    BudgetPoint,
    TestResult,
    budget_point,
    plot_budget_curve,
    plot_loss,
    plot_val_miou,
    render_markdown,
)
from pspnet.report.charts import save_confusion_png
from pspnet.report.machine import git_commit, loadavg, machine_info
from pspnet.report.overlays import overlay_grid
from pspnet.report.runlog import RUNS_FILE, TrainLog, read_config, read_log, read_runs
from pspnet.report.runlog import ReportError as BenchError
from pspnet.report.tables import pct

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "camvid_cpu.yaml"
DEFAULT_WORK_DIR = REPO / "work_dirs" / "camvid_cpu"
DEFAULT_OUT = REPO / "docs" / "results"
#: Where the scripts of this checkout look for CamVid when $PSPNET_CAMVID is not set.
DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"
ENV_VAR = CAMVID_ENV
_TRAIN_FIRST = "train first (python bench/camvid.py train ...)"

__all__ = ["BenchError", "RUNS_FILE", "find_camvid", "build_report", "evaluate_test", "main"]


# --------------------------------------------------------------------------------------------
# Locations, commands


def find_camvid(splits: Sequence[str] = ("test",)) -> Path:
    """The prepared CamVid copy: ``$PSPNET_CAMVID`` when set, else :data:`DEFAULT_CAMVID`.

    Raises:
        BenchError: The folder, its ``classes.txt`` or a split list is missing; the message
            names both places looked at.
    """
    try:
        return require_camvid(tuple(splits), default=DEFAULT_CAMVID)
    except CamVidNotFoundError as e:
        raise BenchError(str(e)) from None


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it, else absolute."""
    return _machine.display_path(path, REPO)


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
# Test-set evaluation


def _load_for_test(weights: Path, data_root: Path) -> tuple[Any, list[str], np.ndarray]:
    """The model, the class names and the (K, 3) palette; the class count must match."""
    from pspnet.checkpoint import load_model
    from pspnet.data.datasets import read_classes_file

    class_names, pal_dict = read_classes_file(data_root / "classes.txt")
    model = load_model(weights)
    k = model.meta.model.num_classes  # type: ignore[attr-defined]
    if len(class_names) != k:
        raise BenchError(
            f"{weights} predicts {k} classes but {data_root / 'classes.txt'} names "
            f"{len(class_names)}; these weights were not trained on this CamVid copy"
        )
    return model, class_names, np.array([pal_dict[i] for i in range(k)], dtype=np.uint8)


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
    from pspnet.data.datasets import SegmentationDataset, camvid_samples
    from pspnet.engine.evaluate import evaluate_model, write_metrics

    model, class_names, palette = _load_for_test(weights, data_root)
    meta = model.meta
    k = meta.model.num_classes
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
        log = read_log(wd / "log.jsonl", _TRAIN_FIRST)
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
        points.append(budget_point(wd, log, read_config(wd), test.metrics.miou, weights.name,
                                   main_cfg))  # fmt: skip
    return points


def _budget_points(work_dir: Path, log: TrainLog, cfg: dict[str, Any], test: TestResult,
                   weights: Path, budget_runs: Sequence[str | Path], data_root: Path,
                   out_dir: Path, **options: Any) -> list[BudgetPoint]:
    """This run and the other ``budget_runs`` (each once), scored on the test set."""
    if not budget_runs:
        return []
    main = budget_point(work_dir, log, cfg, test.metrics.miou, weights.name, cfg)
    # Each other run once (the main run may be listed too).
    others = list(dict.fromkeys(Path(d).resolve() for d in budget_runs))
    others = [d for d in others if d != work_dir]
    return [main, *evaluate_budget_runs(others, data_root, out_dir, cfg, **options)]


def _report_command(work_dir: Path, out_dir: Path, md_path: Path | None, precision: str,
                    limit: int | None, budget_runs: Sequence[str | Path],
                    notes: str | Path | None) -> str:
    """The ``report`` command line that regenerates the page with these arguments."""
    parts = ["python", "bench/camvid.py", "report", "--work-dir", display_path(work_dir),
             "--out", display_path(out_dir)]  # fmt: skip
    if md_path is not None:
        parts += ["--markdown", display_path(md_path)]
    if precision != "fp32":
        parts += ["--precision", precision]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if budget_runs:
        parts += ["--budget-runs", *(display_path(Path(d).resolve()) for d in budget_runs)]
    if notes is not None:
        parts += ["--notes", display_path(Path(notes).resolve())]
    return shlex.join(parts)


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
    log = read_log(work_dir / "log.jsonl", _TRAIN_FIRST)
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
    cfg = read_config(work_dir)
    budgets = _budget_points(work_dir, log, cfg, test, weights, budget_runs, data_root, out_dir,
                             precision=precision, limit=limit, progress=progress)
    if len(budgets) >= 2:  # a curve needs two points; the page shows it only then
        files["budget_curve"] = plot_budget_curve(budgets, out_dir / "budget_curve.png")
    if report_command is None:
        report_command = _report_command(work_dir, out_dir, md_path if markdown else None,
                                         precision, limit, budget_runs, notes)
    text = render_markdown(
        test=test, log=log, cfg=cfg, runs=read_runs(work_dir),
        work_dir=work_dir, out_dir=out_dir, md_path=md_path, data_root=data_root,
        report_command=report_command, commit=git_commit(REPO), machine=machine_info(),
        budgets=budgets, notes=notes_text, shown=display_path,
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
        old = read_log(log_path, _TRAIN_FIRST)
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
        "commit": git_commit(REPO), "machine": machine_info(), "data_root": str(data_root),
        "loadavg": loadavg(),
    }  # fmt: skip
    with open(work_dir / RUNS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    rc = subprocess.call(full, cwd=REPO)
    with open(work_dir / RUNS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "exit", "time": _dt.datetime.now().isoformat(
            timespec="seconds"), "returncode": rc, "loadavg": loadavg()}) + "\n")  # fmt: skip
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
    print(f"test mIoU {pct(metrics['mIoU'], 2)} on {metrics['images']} images")
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
