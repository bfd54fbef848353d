"""The results page of ``bench/camvid.py``: CamVid from scratch on a CPU.

:func:`render_markdown` writes the page from the test evaluation, the training log and the
saved config; :func:`plot_loss`, :func:`plot_val_miou` and :func:`plot_budget_curve` draw its
curves. Paths are printed through the caller's ``shown`` (e.g. relative to a checkout).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspnet.report import run_page
from pspnet.report.charts import Series, line_plot
from pspnet.report.machine import format_machine
from pspnet.report.runlog import TrainLog, recipe_diff
from pspnet.report.tables import duration, md_table, pct

__all__ = ["TARGET_MIOU", "PUBLISHED", "TestResult", "BudgetPoint", "budget_point", "plot_loss",
           "plot_val_miou", "plot_budget_curve", "budget_section", "recipe_lines",
           "render_markdown"]

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


def plot_loss(log: TrainLog, path: Path) -> Path:
    """Training loss (total and main head) against training minutes."""
    return run_page.plot_loss(log, path, title="CamVid training loss", x="minutes")


def plot_val_miou(log: TrainLog, path: Path) -> Path:
    """Validation mIoU (%) against training minutes, with the 60 mIoU line."""
    return run_page.plot_val_miou(
        log, path, title="CamVid validation mIoU during training", x="minutes",
        target=(TARGET_MIOU, f"{TARGET_MIOU:g} mIoU (SegNet, test)"),
        empty_message="no validation in log.jsonl (the budget left no time for one)",
    )  # fmt: skip


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


def budget_point(work_dir: Path, log: TrainLog, cfg: dict[str, Any], test_miou: float,
                 weights: str, main_cfg: dict[str, Any]) -> BudgetPoint:
    """Bundle one run's numbers (see :class:`BudgetPoint`)."""
    budget = (cfg.get("train") or {}).get("time_budget")
    return BudgetPoint(
        work_dir=work_dir, budget=float(budget) if budget else None, log=log, weights=weights,
        test_miou=test_miou, recipe_diff=recipe_diff(cfg, main_cfg),
    )  # fmt: skip


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


#: Beyond this many doublings of the training time, no extrapolation is written.
_MAX_DOUBLINGS = 20


def budget_section(points: Sequence[BudgetPoint], plot_rel: str,
                   shown: Callable[[Path], str] = str) -> list[str]:
    """Markdown: the table and plot of test mIoU per budget, and what each extra hour bought.

    ``shown`` writes a work directory as the page prints it (e.g. relative to a checkout).
    """
    pts = sorted(points, key=lambda p: p.hours)
    rows, prev = [], None
    for p in pts:
        first = p.log.first_plan
        replanned = first and first != p.log.iterations
        planned = f" ({first:,} planned at the start)" if replanned else ""
        gain = per_hour = ""
        if prev is not None:
            d = 100 * (p.test_miou - prev.test_miou)
            gain = f"{d:+.2f}"
            per_hour = f"{d / (p.hours - prev.hours):+.2f}" if p.hours > prev.hours else ""
        rows.append([
            f"{p.budget:g}" if p.budget else "?", f"{p.log.minutes:.1f}",
            f"{p.log.iterations:,}{planned}", f"{p.log.epochs:.1f}", p.weights,
            pct(p.test_miou, 2), gain, per_hour, f"`{shown(p.work_dir)}`",
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
        lines.append(f"Note: `{shown(p.work_dir)}` differs from the main run in "
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
        doublings = (TARGET_MIOU - now) / per_doubling if per_doubling > 0 else math.inf
        if now < TARGET_MIOU and doublings <= _MAX_DOUBLINGS:
            need = b.hours * 2**doublings
            lines.append(
                f"*Extrapolation, not a measurement:* if every further doubling bought as much, "
                f"{TARGET_MIOU:g} mIoU would take about {need:.0f} hours of training on this "
                "machine with this recipe; from-scratch curves usually flatten, so read this as "
                "a lower bound."
            )
        elif now < TARGET_MIOU:
            # A tiny or negative gain per doubling: 2**doublings would overflow, and an
            # extrapolation over more than a million-fold of the time says nothing anyway.
            lines.append(f"At this rate {TARGET_MIOU:g} mIoU is out of reach of this recipe on "
                         f"this machine (over {_MAX_DOUBLINGS} more doublings of the time).")
        lines.append("")
    return lines


def recipe_lines(cfg: dict[str, Any]) -> list[str]:
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


@dataclass(frozen=True)
class _Page:
    """Everything the sections of the page read, with the numbers derived once."""

    test: TestResult
    log: TrainLog
    cfg: dict[str, Any]
    runs: Sequence[dict[str, Any]]
    work_dir: Path
    out_dir: Path
    md_path: Path
    data_root: Path
    report_command: str
    commit: str
    machine: dict[str, Any]
    budgets: Sequence[BudgetPoint]
    notes: str
    shown: Callable[[Path], str]

    def rel(self, name: str) -> str:
        """A figure's link, relative to the page."""
        return Path(os.path.relpath(self.out_dir / name, self.md_path.parent)).as_posix()

    @property
    def s(self) -> dict[str, Any]:
        """The test summary (``SegMetrics.to_dict``)."""
        return self.test.summary

    @property
    def miou(self) -> float | None:
        """Test mIoU as a fraction (None when undefined)."""
        return self.s["mIoU"]

    @property
    def miou_pct(self) -> float:
        """Test mIoU in percent (NaN when undefined)."""
        return 100 * self.miou if self.miou is not None else math.nan

    @property
    def reached(self) -> bool:
        """Whether the test mIoU reaches :data:`TARGET_MIOU`."""
        return math.isfinite(self.miou_pct) and self.miou_pct >= TARGET_MIOU

    @property
    def minutes(self) -> float:
        """Measured training minutes."""
        return self.log.minutes

    @property
    def pretrained(self) -> bool:
        """Whether the backbone started from ImageNet weights."""
        return bool((self.cfg.get("train") or {}).get("backbone_weights"))

    @property
    def arch(self) -> str:
        """The architecture trained."""
        return (self.cfg.get("model") or {}).get("arch") or "pspnet"

    @property
    def partial(self) -> bool:
        """Whether only part of the test split was evaluated (``--limit``)."""
        return self.test.num_images < self.test.total_images


def _head(pg: _Page) -> list[str]:
    """Title, the verdict and the commands that regenerate the page."""
    (test, log, cfg, runs, work_dir, report_command, s, miou, miou_pct, reached, minutes,
     pretrained, arch, partial, shown) = (
        pg.test, pg.log, pg.cfg, pg.runs, pg.work_dir, pg.report_command, pg.s, pg.miou,
        pg.miou_pct, pg.reached, pg.minutes, pg.pretrained, pg.arch, pg.partial, pg.shown)
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
        f"**{pct(miou, 2)} mIoU** on the {test.num_images} CamVid test images "
        f"(mAcc {pct(s['mAcc'], 2)}, allAcc {pct(s['allAcc'], 2)}).",
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
                     f"--work-dir {shown(work_dir)}  # (reconstructed)")  # fmt: skip
    lines += [report_command, "```", ""]
    pspnet_cmds = list(dict.fromkeys(r["pspnet_command"] for r in runs if r.get("pspnet_command")))
    if pspnet_cmds:
        lines += ["`train` runs (each launch, resumed automatically where it stopped):", "",
                  "```sh", *pspnet_cmds, "```", ""]  # fmt: skip
    return lines


def _setup(pg: _Page) -> list[str]:
    """Where the data came from, the commit, the machines and the recipe."""
    (test, log, cfg, runs, data_root, commit, machine) = (
        pg.test, pg.log, pg.cfg, pg.runs, pg.data_root, pg.commit, pg.machine)
    lines: list[str] = []
    lines += [
        f"The CamVid copy is found through `PSPNET_CAMVID` or at `../shared/data/camvid` (used: "
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
    lines += [f"  - {r}" for r in recipe_lines(cfg)]
    lines += [
        f"- Data: CamVid-11, SegNet split ({log.train_images or '?'} train / "
        f"{log.val_images or '?'} val / {test.total_images} test images, 480x360), void ignored",
        "",
        "## Training",
        "",
    ]
    return lines


def _training(pg: _Page) -> list[str]:
    """The training table and the notes written by hand."""
    log, notes, minutes = pg.log, pg.notes, pg.minutes
    lines: list[str] = []
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
        ("best val mIoU", f"{pct(best.miou, 2)} at iteration {best.iter} "
         f"({best.minutes:.1f} min)" if best else "n/a"),
    ]  # fmt: skip
    lines += md_table(["quantity", "value"], rows, "ll")
    if notes.strip():
        lines += ["", "### Conditions and observations (written by hand, not by the script)", "",
                  notes.strip()]  # fmt: skip
    return lines


def _test_set(pg: _Page) -> list[str]:
    """The training plots, the test metrics and the per-class table."""
    test, s, rel, shown = pg.test, pg.s, pg.rel, pg.shown
    lines: list[str] = []
    lines += [
        "",
        f"![training loss]({rel('loss.png')})",
        "",
        f"![validation mIoU]({rel('val_miou.png')})",
        "",
        "## Test set",
        "",
        f"Weights: `{shown(test.weights)}` ({test.weights_source or 'no source recorded'}"
        + ("; the best validation mIoU of the run, chosen on the validation set, never on test"
           if test.weights.name == "best" else "; the last weights: no validation saved best/")
        + "). Protocol: whole image at the original "
        "480x360, single scale, no flip, void ignored, IoU per class over the whole test set "
        f"(one confusion matrix), mean over the {len(test.class_names)} classes. "
        f"{test.num_images} images evaluated in {duration(test.seconds)}.",
        "",
    ]
    lines += md_table(["mIoU", "mAcc", "allAcc"],
                       [[pct(s["mIoU"], 2), pct(s["mAcc"], 2), pct(s["allAcc"], 2)]], "rrr")
    lines += [""]
    total_px = sum(c["gt_pixels"] for c in s["per_class"]) or 1
    lines += md_table(
        ["class", "IoU (%)", "accuracy (%)", "share of test pixels (%)"],
        [[c["name"], pct(c["iou"]), pct(c["acc"]), f"{100 * c['gt_pixels'] / total_px:.2f}"]
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
    return lines


def _comparison(pg: _Page) -> list[str]:
    """Our test mIoU among the published CamVid results."""
    (test, miou_pct, reached, minutes, pretrained, arch, partial) = (
        pg.test, pg.miou_pct, pg.reached, pg.minutes, pg.pretrained, pg.arch, pg.partial)
    lines: list[str] = []
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
    return lines


def _extra_hours(pg: _Page) -> list[str]:
    """What more training time buys (only while the target is not reached)."""
    log, cfg, budgets, reached, rel = pg.log, pg.cfg, pg.budgets, pg.reached, pg.rel
    lines: list[str] = []
    if not reached:
        lines += ["## What each extra hour buys", ""]
        if len(budgets) >= 2:
            lines += budget_section(budgets, rel("budget_curve.png"), pg.shown)
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
                              f"{v.epoch:.1f}", pct(v.miou, 2), delta])  # fmt: skip
                prev = v
            lines += md_table(
                ["training minutes", "hours", "iteration", "epoch", "val mIoU (%)",
                 "change since previous point"], vrows)  # fmt: skip
        else:
            lines.append("No validation ran in this budget, so there is no curve to show.")
        lines.append("")
    return lines


def _footer(pg: _Page) -> list[str]:
    """The overlays and the line naming the generator."""
    rel = pg.rel
    lines: list[str] = []
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
    return lines


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
    shown: Callable[[Path], str] = str,
) -> str:
    """The results page as Markdown (image links relative to ``md_path``).

    ``budgets``, when it holds two or more runs (this one included), adds the test mIoU per
    training budget (``budget_curve.png``) to the section on what extra hours buy. ``notes``
    (Markdown written by a person: the run's conditions, observations) is printed after the
    training table under its own heading. ``shown`` writes a path as the page prints it.
    """
    pg = _Page(test, log, cfg, runs, work_dir, out_dir, md_path, data_root, report_command,
               commit, machine, budgets, notes, shown)
    lines: list[str] = []
    for section in (_head, _setup, _training, _test_set, _comparison, _extra_hours, _footer):
        lines += section(pg)
    return "\n".join(lines)
