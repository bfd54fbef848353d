"""The paper's Table 1 (and its aux-loss row), re-run: same data, budget and seeds for every row.

Rows (PSPNet paper, Zhao et al. 2017, Table 1 and Table 2: ResNet-50, ADE20K val mIoU)::

    fcn          dilated-FCN baseline, no pyramid pooling           paper 37.23
    b1_avg       + pyramid pooling, bin 1 only, average              paper 40.07
    b1236_avg    + bins 1,2,3,6, average, dimension reduction (DR)   paper 41.68 (PSPNet)
    b1236_max    bins 1,2,3,6, max pooling, DR                       paper 40.87
    b1236_nodr   bins 1,2,3,6, average, no DR                        paper 41.07
    aux0         PSPNet trained without the auxiliary loss           paper Table 2 (on the FCN
                                                                     baseline): 35.82 vs 37.23

The paper's orderings tested: FCN < PSPNet (its headline, 37.23 -> 41.68); FCN < B1 < B1236;
average > max; DR helps; aux 0.4 > 0.

Every row trains ``pspnet_r18`` for the same number of iterations (not minutes: a loaded
machine must not change the result) with the same seeds, then is evaluated on the validation
split (whole image, single scale). Two steps, both restartable (finished runs are kept in
``WORK/results.jsonl`` and skipped)::

    python bench/ablation.py run [--data scenes|context|camvid] [--seeds 0 1 2] [--iters N] ...
    python bench/ablation.py report [--work-dir W] [--out docs/ablation]

``report`` writes ``<out>.md`` (docs/ablation.md by default): mean +- standard deviation and the
range over the seeds for each row, the per-seed numbers, whether each of the paper's orderings
holds (and whether the difference is larger than the seed-to-seed spread), and a bar chart with
the per-seed points. Only measured numbers are reported.

``--data context`` uses the demo's context scenes (:mod:`pspnet.data.context_scenes`: the class
of a vessel is decided only by water or road at least ``--gap`` pixels away), with the demo's
shrink-only scale augmentation; its report adds the orderings on the context classes (mean of
boat and car IoU) and the vessel accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspnet.benchmark.data_pipeline import CamVidNotFoundError, require_camvid
from pspnet.report.charts import mean_sd, spread_bars
from pspnet.report.machine import format_machine, git_commit, machine_info
from pspnet.report.tables import md_table

REPO = Path(__file__).resolve().parents[1]
#: Where the scripts of this checkout look for CamVid when $PSPNET_CAMVID is not set.
DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"
DEFAULT_WORK = REPO / "work_dirs" / "ablation"
DEFAULT_OUT = REPO / "docs" / "ablation"

#: Row name -> (label, model options, train options). ``ppm_channels=None`` is the paper's
#: reduction to C/len(bins); "no reduction" keeps C (filled in from the backbone below).
ROWS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "fcn": ("dilated FCN (no PPM)", {"use_ppm": False}, {}),
    "b1_avg": ("PPM B1, avg, DR", {"bins": [1]}, {}),
    "b1236_avg": ("PPM B1236, avg, DR (PSPNet)", {}, {}),
    "b1236_max": ("PPM B1236, max, DR", {"pooling": "max"}, {}),
    "b1236_nodr": ("PPM B1236, avg, no DR", {"ppm_channels": "C"}, {}),
    "aux0": ("PSPNet, aux weight 0", {}, {"aux_weight": 0.0}),
}

#: The paper's claims, as (description, better row, worse row).
ORDERINGS: tuple[tuple[str, str, str], ...] = (
    ("PSPNet (B1236, avg, DR) beats the FCN baseline", "b1236_avg", "fcn"),
    ("B1 beats the FCN baseline", "b1_avg", "fcn"),
    ("B1236 beats B1", "b1236_avg", "b1_avg"),
    ("average beats max pooling", "b1236_avg", "b1236_max"),
    ("dimension reduction helps", "b1236_avg", "b1236_nodr"),
    ("aux loss 0.4 beats 0", "b1236_avg", "aux0"),
)

#: Backbone output channels per architecture family (for the no-reduction row).
STAGE5_CHANNELS = {"pspnet_r18": 512, "pspnet_r34": 512}


class AblationError(RuntimeError):
    """A problem the user can fix; printed without a trace."""


@dataclass(frozen=True)
class Setup:
    """What every row shares."""

    data: str
    size: int
    iters: int
    batch_size: int
    arch: str
    output_stride: int
    lr: float
    gap: int | None = None
    width: int | None = None
    min_scale: float | None = None

    def key(self) -> dict[str, Any]:
        # gap, width, min_scale only where they apply, so older setup files stay valid
        return {k: v for k, v in self.__dict__.items()
                if not (k in ("gap", "width", "min_scale") and v is None)}


def _data(setup: Setup, work: Path, n_train: int, n_val: int) -> dict[str, Any]:
    """Data section of the config (scenes are generated under WORK the first time)."""
    if setup.data == "scenes":
        from pspnet.data.scenes import generate_scenes

        root = generate_scenes(work / f"scenes_{setup.size}", n_train=n_train, n_val=n_val,
                               size=(setup.size, setup.size), seed=0, progress=False)
        return {"root": str(root), "train_list": str(root / "train.txt"),
                "val_list": str(root / "val.txt"), "class_names": str(root / "classes.txt"),
                "crop_size": setup.size, "scale": [0.75, 1.25]}
    if setup.data == "context":
        from pspnet.data.scenes import generate_scenes

        root = generate_scenes(work / f"context_{setup.size}_gap{setup.gap}", n_train=n_train,
                               n_val=n_val, size=(setup.size, setup.size), seed=0,
                               progress=False, mode="context", gap=setup.gap)
        # Shrink only: a crop must never cut away the band that decides the class (and with a
        # gap beyond the FCN's reach, --min-scale 1: shrinking would bring the band closer).
        low = 0.75 if setup.min_scale is None else setup.min_scale
        return {"root": str(root), "train_list": str(root / "train.txt"),
                "val_list": str(root / "val.txt"), "class_names": str(root / "classes.txt"),
                "crop_size": setup.size, "scale": [low, 1.0]}
    if setup.data == "camvid":
        try:
            root = require_camvid(("train", "val"), default=DEFAULT_CAMVID)
        except CamVidNotFoundError as e:
            raise AblationError(str(e)) from None
        return {"dataset": "camvid", "root": str(root), "class_names": str(root / "classes.txt"),
                "crop_size": [setup.size * 3 // 4, setup.size]}
    raise AblationError(f"--data must be scenes, context or camvid, got {setup.data!r}")


def _config(setup: Setup, row: str, seed: int, data: dict[str, Any], work: Path) -> Any:
    from pspnet.config import Config

    _, model_opts, train_opts = ROWS[row]
    model_opts = dict(model_opts)
    if model_opts.get("ppm_channels") == "C":
        if setup.arch not in STAGE5_CHANNELS:
            raise AblationError(f"no-reduction row: unknown stage-5 width of {setup.arch}")
        # stage 5 of a basic-block ResNet has 8x the base width (512 at ResNet-18's 64)
        model_opts["ppm_channels"] = STAGE5_CHANNELS[setup.arch] * (setup.width or 64) // 64
    if setup.width is not None:
        model_opts["base_width"] = setup.width
    num_classes = 11 if setup.data == "camvid" else 6
    return Config.from_dict({
        "model": {"arch": setup.arch, "num_classes": num_classes,
                  "output_stride": setup.output_stride, "head_channels": 128,
                  "aux_channels": 64, **model_opts},
        "data": {**data, "rotate": [-10, 10]},
        "optim": {"lr": setup.lr},
        "train": {"work_dir": str(work / "runs" / f"{row}_s{seed}"), "max_iter": setup.iters,
                  "batch_size": setup.batch_size, "seed": seed, "val_interval": 0,
                  "resume": "auto", "checkpoint_minutes": 2, **train_opts},
    })  # fmt: skip


def _vessel_accuracy(confusion: Any) -> float | None:
    """Of the boat/car pixels predicted boat or car, the share named right (None: no such)."""
    import numpy as np

    sub = np.asarray(confusion)[np.ix_([4, 5], [4, 5])].astype(np.float64)
    return float(np.trace(sub) / sub.sum()) if sub.sum() > 0 else None


def _done(results: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not results.is_file():
        return {}
    out = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["row"], int(r["seed"]))] = r
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.data.datasets import SegmentationDataset, list_file_samples
    from pspnet.engine.evaluate import evaluate_model
    from pspnet.engine.train import train

    ctx = args.data == "context"
    setup = Setup(args.data, args.size, args.iters, args.batch_size, args.arch,
                  args.output_stride, args.lr, args.gap if ctx else None, args.width,
                  args.min_scale if ctx else None)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    setup_file = work / "setup.json"
    if setup_file.is_file() and json.loads(setup_file.read_text()) != setup.key():
        raise AblationError(
            f"{work} holds runs of a different setup ({setup_file}); use another --work-dir"
        )
    setup_file.write_text(json.dumps(setup.key(), indent=1) + "\n")
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise AblationError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    data = _data(setup, work, args.n_train, args.n_val)
    results = work / "results.jsonl"
    done = _done(results)
    # Seed-major order: after k seeds every row has k results, so a stopped sweep is balanced.
    todo = [(r, s) for s in args.seeds for r in rows if (r, s) not in done]
    print(f"{len(todo)} runs to do ({len(done)} done) in {work}", flush=True)
    # The validation set is the same for every run: list it once.
    if setup.data in ("scenes", "context"):
        val = SegmentationDataset(list_file_samples(data["root"], data["val_list"]), 6)
    else:
        from pspnet.data.datasets import get_dataset_spec

        val = SegmentationDataset(get_dataset_spec("camvid").find_samples(data["root"], "val"), 11)
    for n, (row, seed) in enumerate(todo, 1):
        cfg = _config(setup, row, seed, data, work)
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        model = load_model(result.final_dir)
        metrics = evaluate_model(model, val, num_classes=cfg.model.num_classes, progress=False)
        rec = {
            "row": row, "seed": seed, "mIoU": metrics.miou, "mAcc": metrics.macc,
            "allAcc": metrics.all_acc, "iou": [float(x) for x in metrics.iou],
            "iterations": result.iterations, "train_s": result.elapsed_s,
            "wall_s": time.perf_counter() - t0, "final_loss": result.final_loss,
            "vessel_acc": _vessel_accuracy(metrics.confusion) if setup.data == "context" else None,
        }  # fmt: skip
        with results.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"[{n}/{len(todo)}] {row} seed {seed}: val mIoU {100 * metrics.miou:.2f} "
              f"({result.elapsed_s / 60:.1f} min)", flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Report


def _context_points(r: dict[str, Any]) -> float:
    """Mean IoU of boat (4) and car (5), the classes only context decides, in points."""
    vals = [v for v in (r["iou"][4], r["iou"][5]) if v is not None and math.isfinite(v)]
    return 100 * sum(vals) / len(vals) if vals else math.nan


def _ordering_checks(done: dict[tuple[str, int], dict[str, Any]], seeds: dict[str, list[int]],
                     per_row: dict[str, list[float]], score: Any = None) -> list[list[str]]:
    """One table row per paper's claim: the paired difference over the common seeds, of
    ``score(record)`` (default: mIoU in points)."""
    score = score or (lambda r: 100 * r["mIoU"])
    checks: list[list[str]] = []
    for desc, better, worse in ORDERINGS:
        if better not in per_row or worse not in per_row:
            checks.append([desc, "not run", "", "", ""])
            continue
        # Paired by seed: the same seed gives both rows the same data order and augmentations.
        a = {(row, s): r for (row, s), r in done.items()}
        common = sorted(set(seeds[better]) & set(seeds[worse]))
        diffs = [score(a[(better, s)]) - score(a[(worse, s)]) for s in common]
        mean, sd = mean_sd(diffs)
        wins = sum(d > 0 for d in diffs)
        verdict = "holds" if mean > 0 else "does not hold"
        if not math.isnan(sd):
            verdict += " (beyond the seed spread)" if abs(mean) > sd else " (within the seed spread)"
        checks.append([desc, f"`{better}` − `{worse}`", f"{mean:+.2f} ± {sd:.2f}",
                       f"{wins} of {len(diffs)}", verdict])
    return checks


def _runs_table(done: dict[tuple[str, int], dict[str, Any]], ctx: bool) -> list[str]:
    """Every run; boat/car columns only where classes 4 and 5 are boat and car (``ctx``)."""
    runs = [[f"`{row}`", str(seed), f"{100 * r['mIoU']:.2f}"]
            + ([f"{_context_points(r):.2f}",
                "n/a" if r.get("vessel_acc") is None else f"{r['vessel_acc']:.3f}"] if ctx else [])
            + [str(r["iterations"]), f"{r['train_s'] / 60:.1f}"]
            for (row, seed), r in sorted(done.items())]
    return md_table(["row", "seed", "val mIoU"] + (["boat/car IoU", "vessel acc."] if ctx else [])
                    + ["iterations", "train min"], runs)


def _where(args: argparse.Namespace, out: bool = False) -> str:
    """`` --work-dir W`` (and `` --out O``) where they are not the defaults, as given."""
    text = "" if Path(args.work_dir) == DEFAULT_WORK else f" --work-dir {args.work_dir}"
    if out and Path(args.out) != DEFAULT_OUT:
        text += f" --out {args.out}"
    return text


def cmd_report(args: argparse.Namespace) -> int:
    work = Path(args.work_dir)
    done = _done(work / "results.jsonl")
    if not done:
        raise AblationError(f"no finished runs in {work}; run `python bench/ablation.py run` first")
    setup = json.loads((work / "setup.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_row: dict[str, list[float]] = {}
    per_row_ctx: dict[str, list[float]] = {}
    seeds: dict[str, list[int]] = {}
    for (row, seed), r in sorted(done.items(), key=lambda kv: (list(ROWS).index(kv[0][0]), kv[0][1])):
        per_row.setdefault(row, []).append(100 * r["mIoU"])
        seeds.setdefault(row, []).append(seed)
        if setup["data"] in ("scenes", "context"):  # boat and car: the classes context decides
            per_row_ctx.setdefault(row, []).append(_context_points(r))
    # Bars: mean mIoU per row; dots: the seeds; whiskers: +- one standard deviation.
    chart = spread_bars(out / "ablation_miou.png", per_row, "val mIoU (%)")
    machine = format_machine(machine_info())
    lines = [
        "# The paper's Table 1 ablation, re-run on a CPU",
        "",
        f"Data: **{setup['data']}** ("
        + (f"crops {setup['size'] * 3 // 4}x{setup['size']}" if setup["data"] == "camvid"
           else f"{setup['size']} px")
        + f"), `{setup['arch']}`"
        + (f" of base width {setup['width']}" if setup.get("width") is not None else "")
        + f" at output stride "
        f"{setup['output_stride']}, {setup['iters']} iterations of batch {setup['batch_size']}, "
        f"lr {setup['lr']} (head x10), seeds {sorted({s for v in seeds.values() for s in v})}. "
        "Validation mIoU, whole image, single scale. Regenerate with:",
        "",
        "```sh",
        f"python bench/ablation.py run --data {setup['data']} --size {setup['size']} "
        f"--iters {setup['iters']} --batch-size {setup['batch_size']} "
        f"--output-stride {setup['output_stride']}"
        + (f" --gap {setup['gap']}" if setup.get("gap") is not None else "")
        + (f" --width {setup['width']}" if setup.get("width") is not None else "")
        + (f" --min-scale {setup['min_scale']:g}" if setup.get("min_scale") is not None else "")
        + f" --seeds {' '.join(map(str, sorted({s for v in seeds.values() for s in v})))}"
        + _where(args),
        "python bench/ablation.py report" + _where(args, out=True),
        "```",
        "",
        f"Commit `{git_commit(REPO)}`; machine: {machine}.",
        "",
        f"![val mIoU per row]({out.name}/{chart.name})",
        "",
    ]
    header = ["row", "what", "seeds", "val mIoU mean ± sd", "range"]
    if per_row_ctx:
        header.append("boat/car IoU mean ± sd")
    table = []
    for row, vs in per_row.items():
        mean, sd = mean_sd(vs)
        cells = [f"`{row}`", ROWS[row][0], str(len(vs)), f"{mean:.2f} ± {sd:.2f}",
                 f"{min(vs):.2f} – {max(vs):.2f}"]
        if per_row_ctx:
            cm, cs = mean_sd(per_row_ctx[row])
            cells.append("n/a" if math.isnan(cm) else f"{cm:.2f} ± {cs:.2f}")
        table.append(cells)
    lines += md_table(header, table) + [""]
    lines += ["## Does the paper's ordering hold?", ""]
    checks = _ordering_checks(done, seeds, per_row)
    lines += md_table(
        ["paper's claim", "rows", "paired difference (mIoU points)", "seeds where it holds",
         "here"], checks)
    if per_row_ctx:
        lines += ["", "On the context classes (mean of boat and car IoU, points):", ""]
        lines += md_table(
            ["paper's claim", "rows", "paired difference (boat/car IoU points)",
             "seeds where it holds", "here"],
            _ordering_checks(done, seeds, per_row_ctx, _context_points))
    lines += ["", "Paired difference: mean ± sd over the seeds of (better row − worse row) with "
              "the same seed. \"Beyond the seed spread\": |mean| > sd.", ""]
    lines += ["## Every run", ""]
    lines += _runs_table(done, ctx=bool(per_row_ctx))
    md = out.parent / f"{out.name}.md"
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate the rows x seeds not done yet")
    r.add_argument("--data", default="scenes", choices=["scenes", "context", "camvid"])
    r.add_argument("--gap", type=int, default=48, help="context scenes: the neutral band (px)")
    r.add_argument("--width", type=int,
                   help="backbone base width (model.base_width; default the architecture's, "
                        "64); the demo's beyond-reach scenes use 16")
    r.add_argument("--min-scale", type=float,
                   help="context scenes: smallest random scale (default 0.75; 1 with a gap "
                        "beyond the FCN's 257-px reach)")
    r.add_argument("--size", type=int, default=192, help="scene side / CamVid crop width")
    r.add_argument("--iters", type=int, default=60)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--arch", default="pspnet_r18", choices=sorted(STAGE5_CHANNELS))
    r.add_argument("--output-stride", type=int, default=8)
    r.add_argument("--lr", type=float, default=0.02)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--rows", nargs="+", help=f"subset of {list(ROWS)}")
    r.add_argument("--n-train", type=int, default=400)
    r.add_argument("--n-val", type=int, default=100)
    r.add_argument("--work-dir", default=str(DEFAULT_WORK))
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("report", help="tables, orderings and chart from the finished runs")
    s.add_argument("--work-dir", default=str(DEFAULT_WORK))
    s.add_argument("--out", default=str(DEFAULT_OUT))
    s.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AblationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
