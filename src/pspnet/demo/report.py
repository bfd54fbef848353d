"""The demo's report: per-class IoU over seeds, the paired PSPNet - FCN differences per seed, the
seed-agreement verdict, a bar chart and both models' predictions side by side.

Writes ``report.md``, ``report.html``, ``metrics.json``, ``iou_per_class.png`` and
``compare_*.png`` into the output folder. The Markdown and the HTML are built from the same
tables.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pspnet.checkpoint import load_model
from pspnet.data.context_scenes import CONTEXT_CLASSES, CONTEXT_PALETTE
from pspnet.data.io import read_image, read_label
from pspnet.data.palette import colorize, overlay
from pspnet.data.scenes import BOAT, CAR
from pspnet.demo.agreement import SeedAgreement, seed_agreement
from pspnet.engine.predict import predict_array
from pspnet.inference import InferenceOptions
from pspnet.report.charts import grouped_bars, mean_sd
from pspnet.report.overlays import tile_row
from pspnet.report.tables import md_table

__all__ = ["context_score", "write_report"]

_NAMES = ("FCN (no pyramid)", "PSPNet (bins 1,2,3,6)")
#: Validation scenes shown side by side (the first seed's models).
_PICTURES = 6
Table = tuple[list[str], list[list[str]]]


def _iou(rec: dict[str, Any], c: int) -> float:
    v = rec["metrics"]["per_class"][c]["iou"]
    return math.nan if v is None else float(v)


def context_score(rec: dict[str, Any]) -> float:
    """Mean IoU of the two classes only context decides, boat and car (NaN-aware)."""
    vals = [v for v in (_iou(rec, BOAT), _iou(rec, CAR)) if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _num(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _scores(rec: dict[str, Any]) -> dict[str, float]:
    """The per-run numbers the paired table compares."""
    m = rec["metrics"]
    return {"context classes (mean of boat and car IoU)": context_score(rec),
            "boat IoU": _iou(rec, BOAT), "car IoU": _iou(rec, CAR),
            "vessel acc.": float(rec["vessel_acc"]) if rec["vessel_acc"] is not None else math.nan,
            "mIoU": float(m["mIoU"]) if m["mIoU"] is not None else math.nan}


def _class_table(runs: Sequence[Sequence[dict[str, Any]]]) -> Table:
    """Per class: each model's mean +- sd over the seeds."""
    def cell(values: list[float]) -> str:
        mean, sd = mean_sd(values)
        if math.isnan(mean):
            return "n/a"
        return _num(mean) + ("" if math.isnan(sd) else f" ± {sd:.3f}")

    rows = [[name] + [cell([_iou(r, c) for r in model]) for model in runs]
            for c, name in enumerate(CONTEXT_CLASSES)]
    for label, get in (("**mIoU**", lambda r: r["metrics"]["mIoU"]),
                       ("pixel acc.", lambda r: r["metrics"]["allAcc"]),
                       ("vessel acc.", lambda r: r["vessel_acc"])):
        rows.append([label] + [cell([math.nan if get(r) is None else float(get(r)) for r in model])
                               for model in runs])
    return ["class"] + list(_NAMES), rows


def _paired_table(runs: Sequence[Sequence[dict[str, Any]]]) -> tuple[Table, SeedAgreement]:
    """Per seed: PSPNet - FCN; the first row is the one the seed-agreement check uses."""
    fcn, psp = runs
    seeds = [r["seed"] for r in fcn]
    rows, agreement = [], None
    for what in _scores(fcn[0]):
        diffs = [_scores(p)[what] - _scores(f)[what] for f, p in zip(fcn, psp)]
        check = seed_agreement(diffs)
        agreement = agreement or check
        rows.append([what] + [_num(d, signed=True) for d in diffs]
                    + [f"{check.ahead} of {len(diffs)}"])
    header = (["paired PSPNet − FCN"] + [f"seed {s}" for s in seeds]
              + ["seeds where PSPNet is ahead"])
    assert agreement is not None  # _scores has rows: internal invariant, not a user error
    return (header, rows), agreement


def _runs_table(runs: Sequence[Sequence[dict[str, Any]]]) -> Table:
    rows = []
    for seed_runs in zip(*runs):
        for name, r in zip(_NAMES, seed_runs):
            sc = _scores(r)
            rows.append([str(r["seed"]), name.split(" ")[0], _num(sc["mIoU"]), _num(sc["boat IoU"]),
                         _num(sc["car IoU"]), _num(sc["vessel acc."]), str(r["iterations_done"]),
                         f"{r['train_s'] / 60:.1f}"])
    return ["seed", "model", "mIoU", "boat IoU", "car IoU", "vessel acc.", "iterations",
            "train min"], rows


def _comparison(out: Path, data: Path, weights: Sequence[Path], n: int) -> list[Path]:
    """Per validation scene: input | ground truth | each model's overlay, in one PNG."""
    models = [load_model(w) for w in weights]
    paths = []
    for name in [f"{i:05d}" for i in range(n)]:
        image = read_image(data / "images" / "val" / f"{name}.png")
        label = read_label(data / "labels" / "val" / f"{name}.png")
        tiles = [Image.fromarray(image), colorize(label, CONTEXT_PALETTE).convert("RGB")]
        for m in models:
            pred = predict_array(m, image, m.meta.preprocess, InferenceOptions(),
                                 len(CONTEXT_CLASSES))
            tiles.append(overlay(image, pred, CONTEXT_PALETTE, 0.6, CONTEXT_CLASSES, legend=False))
        paths.append(tile_row(tiles, ["image", "truth", "FCN", "PSPNet"],
                              out / f"compare_{name}.png"))
    return paths


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip('*'))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


#: The FCN row's whole receptive field: the farthest input pixel (up/left; 249 down/right)
#: whose value changes an output pixel's logits, for ``pspnet_r18`` at output stride 8 at any
#: ``base_width`` (measured in ``tests/test_demo.py``).
FCN_REACH_PX = 257


def scene_label(s: dict[str, Any]) -> str:
    """``448`` (square) or ``448x224`` (height x width) from a run's settings (folder names,
    the report)."""
    w = s.get("scene_width")
    return str(s["size"]) if w is None else f"{s['size']}x{w}"


def _intro(s: dict[str, Any], seeds: list[int]) -> str:
    low = s.get("min_scale", 0.75)
    scale = "no random scaling" if low == 1.0 else f"scale {low:g}-1.0"
    reach = (f"The gap is beyond the FCN's whole receptive field ({FCN_REACH_PX} px): its "
             "logits on a vessel are the same on water and on road, so it can only guess."
             if s["gap"] > FCN_REACH_PX else
             f"The gap is within the FCN's receptive field ({FCN_REACH_PX} px): a long enough "
             "training lets the FCN read the context too.")
    return (
        f"Both models: `pspnet_r18` of base width {s.get('width', 64)}, output stride 8, head "
        f"128 / aux 64, the same recipe (lr 0.02, batch {s['batch_size']}, {scale}, rotation "
        f"±10°, fp32) and "
        f"**{s['iterations']} iterations** per run, for seeds {', '.join(map(str, seeds))}. Data: "
        f"{s['n_train']} training and {s['n_val']} held-out validation context scenes of "
        f"{scene_label(s)} px, generated with seed 0: a boat and a car are the same sprites, and "
        f"only the water or road at least {s['gap']} px away decides the class. Evaluated on the "
        f"validation scenes (whole image). {reach} \"vessel acc.\": of the pixels that are "
        "boat or car and predicted boat or car, the share named right (0.5 = chance)."
    )


_RULE = ("The check: the claim holds when PSPNet is ahead on the context classes on every seed "
         "and the mean paired difference exceeds the seed spread, the sample standard deviation "
         "of the paired differences.")


def _write_html(out: Path, intro: str, line: str, tables: list[tuple[str, Table]],
                chart: Path, pictures: list[Path]) -> Path:
    parts = "".join(f"<h2>{html.escape(t)}</h2>{_html_table(tab)}" for t, tab in tables)
    imgs = "".join(f'<p><img src="{html.escape(p.name)}"></p>' for p in pictures)
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>pspnet demo</title>"
        "<style>body{font-family:sans-serif;max-width:64em;margin:2em auto}"
        "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}</style></head>"
        "<body><h1>pspnet demo: what pyramid pooling adds</h1>"
        f"<p>{html.escape(intro.replace('**', '').replace('`', ''))}</p>"
        f"<p><b>{html.escape(line)}</b></p><p>{html.escape(_RULE)}</p>{parts}"
        f'<p><img src="{html.escape(chart.name)}"></p><h2>Validation scenes</h2>'
        f"<p>image | ground truth | FCN | PSPNet (seed of the first run)</p>{imgs}</body></html>\n"
    )
    return out / "report.html"


def write_report(out: Path, data: Path, runs: Sequence[Sequence[dict[str, Any]]],
                 settings: dict[str, Any]) -> tuple[Path, SeedAgreement]:
    """Write the report files from the finished runs.

    Args:
        out: The demo's output folder (the runs' ``weights`` are relative to it).
        data: The scenes folder (for the pictures).
        runs: ``[fcn_runs, pspnet_runs]``, each one ``results.jsonl`` record per seed, the seeds
            in the same order.
        settings: The demo's settings (``DemoSettings`` as a dict).

    Returns:
        ``report.html`` and the seed-agreement check on the context classes.
    """
    seeds = [r["seed"] for r in runs[0]]
    paired, agreement = _paired_table(runs)
    line = agreement.line()
    tables = [("Per-class IoU: mean ± sd over the seeds", _class_table(runs)),
              ("Paired differences per seed", paired), ("Every run", _runs_table(runs))]
    means = [[float(np.nanmean([_iou(r, c) for r in model])) if any(
        math.isfinite(_iou(r, c)) for r in model) else math.nan
        for c in range(len(CONTEXT_CLASSES))] for model in runs]
    chart = grouped_bars(out / "iou_per_class.png", CONTEXT_CLASSES,
                         [(f"{name.split(' ')[0]}: mean IoU over {len(seeds)} seeds", m)
                          for name, m in zip(_NAMES, means)])
    pictures = _comparison(out, data, [out / r["weights"] for r in (runs[0][0], runs[1][0])],
                           min(_PICTURES, int(settings["n_val"])))
    intro = _intro(settings, seeds)
    md = ["# pspnet demo: what pyramid pooling adds", "", intro, "", f"**{line}**", "", _RULE, ""]
    for title, (header, rows) in tables:
        md += [f"## {title}", ""] + md_table(header, rows) + [""]
    md += [f"![per-class IoU]({chart.name})", ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "metrics.json").write_text(json.dumps({
        "settings": settings, "verdict": line,
        "agreement": {"diffs": list(agreement.diffs), "ahead": agreement.ahead,
                      "mean": agreement.mean, "spread": agreement.spread,
                      "holds": agreement.holds},
        "runs": [r for model in runs for r in model]}, indent=1, allow_nan=True) + "\n")
    return _write_html(out, intro, line, tables, chart, pictures), agreement
