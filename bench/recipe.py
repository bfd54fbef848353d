"""``pspnet train``'s defaults against the plain loop: same data, machine and minutes.

Issue 18's measurement. Each *variant* is trained for ``--minutes`` and scored on the test
split (whole image, single scale, void ignored); results go to ``WORK/results.jsonl`` (one line
per finished run, skipped when run again) and ``report`` turns them into a table and a plot::

    python bench/recipe.py run --minutes 15 --variants plain cli "cli:model.output_stride=8"
    python bench/recipe.py report [--work-dir W] [--out docs/recipe]

Variants:

* ``plain``: ``bench/plain_loop.py`` (the baseline: no choices beyond the obvious ones);
* ``cli``: ``pspnet train`` given nothing but the images, labels, class file and
  ``--time-budget`` (the project's defaults, whatever this commit chooses), then
  ``pspnet evaluate`` on its ``final`` weights;
* ``cli:KEY=VALUE,KEY=VALUE``: the same with ``--set`` overrides (one sweep point).

``--parallel 2`` (the default on two or more CPUs) runs two variants at a time, each pinned to
its own core with one thread (``OMP_NUM_THREADS=1``): the pair shares the machine alike, and a
sweep takes half the wall time. The report says so. ``--cores 1`` gives one invocation its own
core (pinned, one thread) so that two sweeps of different budgets can share a machine, e.g. a
120-minute run on core 0 beside a 60-minute pair run one after the other on core 1. The data
is a prepared layout (``ROOT/images/<split>``, ``ROOT/labels/<split>``, ``ROOT/classes.txt``):
``--data`` or ``$PSPNET_CAMVID`` (CamVid). ``scenes`` writes the demo's generated scenes in
that layout (no test split: score them with ``--split val``)::

    python bench/recipe.py scenes --out work_dirs/scenes_448x224
    python bench/recipe.py run --minutes 5 --data work_dirs/scenes_448x224 --split val \
        --work-dir work_dirs/recipe_scenes
    python bench/recipe.py report --work-dir work_dirs/recipe_scenes --out docs/recipe/scenes
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pspnet.benchmark.data_pipeline import CamVidNotFoundError, require_camvid  # noqa: E402
from pspnet.report.machine import format_machine, git_commit, machine_info  # noqa: E402


def run_name(variant: str, minutes: float, seed: int) -> str:
    """A folder name for one run: ``cli_output_stride=8_15min_s0`` (section prefixes and
    brackets dropped)."""
    safe = variant.replace(":", "_").replace(",", "_").replace("/", "-")
    safe = safe.replace("[", "").replace("]", "").replace("model.", "").replace("optim.", "")
    safe = safe.replace("data.", "").replace("train.", "")
    return f"{safe}_{minutes:g}min_s{seed}"


def commands(variant: str, data: Path, out: Path, minutes: float, seed: int,
             split: str = "test") -> list[list[str]]:
    """The processes one variant runs, in order (train, then score on ``split``)."""
    py = sys.executable
    if variant == "plain":
        return [[py, str(REPO / "bench" / "plain_loop.py"), "--root", str(data),
                 "--train-list", str(out.parent / "train.txt"),
                 "--eval-list", str(out.parent / f"{split}.txt"),
                 "--classes", str(data / "classes.txt"), "--minutes", str(minutes),
                 "--seed", str(seed), "--out", str(out / "plain.json")]]
    if variant != "cli" and not variant.startswith("cli:"):
        raise SystemExit(f"unknown variant {variant!r}: plain, cli or cli:KEY=VALUE,...")
    sets = _split_sets(variant.partition(":")[2])
    train = [py, "-m", "pspnet", "train", "--images", str(data / "images" / "train"),
             "--labels", str(data / "labels" / "train"), "--classes-file",
             str(data / "classes.txt"), "--time-budget", str(minutes),
             "--work-dir", str(out / "run"), "--overwrite", "-q",
             "--set", f"train.seed={seed}", *sets]
    score = [py, "-m", "pspnet", "evaluate", "--weights", str(out / "run" / "final"),
             "--images", str(data / "images" / split), "--labels", str(data / "labels" / split),
             "--classes-file", str(data / "classes.txt"), "--out", str(out / split), "-q"]
    return [train, score]


def _split_sets(text: str) -> list[str]:
    """``a=1,b=[0.5,2]`` -> ``["a=1", "b=[0.5,2]"]``: commas inside brackets stay."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p]


def write_lists(data: Path, out: Path, split: str = "test") -> None:
    """``train.txt`` and ``<split>.txt`` of ``image label`` lines for the plain loop."""
    for name in ("train", split):
        stems = sorted(p.stem for p in (data / "images" / name).glob("*.png"))
        lines = [f"images/{name}/{n}.png labels/{name}/{n}.png" for n in stems]
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")


def collect(variant: str, out: Path, split: str = "test") -> dict[str, Any]:
    """mIoU, pixel accuracy, steps and epochs of a finished run."""
    if variant == "plain":
        doc = json.loads((out / "plain.json").read_text())
        return {"mIoU": doc["mIoU"], "pixel_acc": doc["pixel_acc"], "steps": doc["steps"],
                "epochs": doc["epochs"], "precision": doc["precision"]}
    import yaml

    metrics = json.loads((out / split / "metrics.json").read_text())
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    events = {}  # the log's start, defaults and end records (one pass over the log)
    for line in (out / "run" / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") in ("start", "defaults", "end"):
            events[rec["event"]] = rec
    start, steps = events["start"], int(events["end"]["iteration"])
    chosen = events.get("defaults", {}).get("chosen", [])
    return {"mIoU": metrics["mIoU"], "pixel_acc": metrics["allAcc"], "steps": steps,
            "epochs": steps * cfg["train"]["batch_size"] / max(start["train_images"], 1),
            "precision": start["precision"],
            "chosen": [f"{c['key']} = {c['value']}" for c in chosen]}


def run(args: argparse.Namespace) -> None:
    data = require_camvid(("train", args.split), root=args.data, default=REPO.parent /
                          "shared" / "data" / "camvid")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    write_lists(data, work, args.split)
    results = work / "results.jsonl"
    done = ({json.loads(x)["name"] for x in results.read_text().splitlines()}
            if results.exists() else set())
    todo = [(v, s) for s in args.seeds for v in args.variants
            if run_name(v, args.minutes, s) not in done]
    cores = args.cores or sorted(os.sched_getaffinity(0))
    slots = max(1, min(args.parallel, len(cores)))
    pinned = slots > 1 or bool(args.cores)  # --cores: another sweep owns the other core(s)
    print(f"{len(todo)} run(s) of {args.minutes:g} min, {slots} at a time; "
          f"{format_machine(machine_info())}", flush=True)
    # (variant, seed, out, its commands, index of the one running, process, core, start time)
    running: list[tuple[str, int, Path, list[list[str]], int, subprocess.Popen, int, float]] = []
    commit = git_commit(REPO)  # the code the runs start with (a later edit does not count)
    free = list(cores[:slots])
    while todo or running:
        while todo and free:
            variant, seed = todo.pop(0)
            out = work / run_name(variant, args.minutes, seed)
            out.mkdir(exist_ok=True)
            cmds = commands(variant, data, out, args.minutes, seed, args.split)
            core = free.pop(0)
            running.append((variant, seed, out, cmds, 0, _start(cmds[0], out, core, pinned),
                            core, time.time()))
            print(f"start {out.name} on core {core}", flush=True)
        time.sleep(5)
        for item in list(running):
            variant, seed, out, cmds, i, proc, core, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                free.append(core)
                print(f"FAILED {out.name} (exit {proc.returncode}): see {out}/stderr.txt")
                continue
            if i + 1 < len(cmds):  # the next step of this variant (scoring) on the same core
                running.append((variant, seed, out, cmds, i + 1,
                                _start(cmds[i + 1], out, core, pinned), core, t0))
                continue
            free.append(core)
            rec = {"name": out.name, "variant": variant, "minutes": args.minutes, "seed": seed,
                   **collect(variant, out, args.split), "data": data.name,
                   "split": args.split, "wall_s": round(time.time() - t0),
                   "parallel": slots, "threads": 1 if pinned else None,
                   "cores": [core] if pinned else None,
                   "commit": commit, "machine": machine_info(),
                   "date": time.strftime("%Y-%m-%d %H:%M"),
                   "commands": [shlex.join(c) for c in cmds]}
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"done {out.name}: mIoU {100 * rec['mIoU']:.1f}, pixel acc "
                  f"{100 * rec['pixel_acc']:.1f}, {rec['steps']} steps", flush=True)


def _start(cmd: list[str], out: Path, core: int, pinned: bool) -> subprocess.Popen:
    env = dict(os.environ)
    if pinned:  # one core and one thread each: runs side by side share the machine alike
        env["OMP_NUM_THREADS"] = "1"
    preexec = (lambda: os.sched_setaffinity(0, {core})) if pinned else None
    log = (out / "stdout.txt").open("a")
    err = (out / "stderr.txt").open("a")
    return subprocess.Popen(cmd, stdout=log, stderr=err, env=env, preexec_fn=preexec,
                            cwd=str(REPO))


def scenes(args: argparse.Namespace) -> None:
    """The demo's data (``pspnet demo``'s defaults: 400 + 60 context scenes, 448x224, the
    context 264 px from every vessel) as a prepared layout; ``run --data OUT --split val``."""
    from pspnet.data.scenes import generate_scenes
    from pspnet.demo.run import DATA_SEED, DemoSettings

    s = DemoSettings()
    out = generate_scenes(args.out, n_train=s.n_train, n_val=s.n_val, size=s.scene_size,
                          seed=DATA_SEED, mode="context", gap=s.gap)
    print(f"scenes: {out} (train {s.n_train}, val {s.n_val}, {s.scene_size[0]}x"
          f"{s.scene_size[1]}, gap {s.gap})")


def report(args: argparse.Namespace) -> None:
    from pspnet.report.charts import Series, line_plot

    work = Path(args.work_dir)
    recs = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the split the runs were scored on names the score column (the scenes have no test split)
    split = "/".join(sorted({r.get("split", "test") for r in recs}))
    lines = ["<!-- written by: python bench/recipe.py report -->", "",
             f"| variant | what ran | minutes | seed | {split} mIoU | pixel acc | steps | epochs | "
             "precision | run side by side | commit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in recs:  # `cli` meant different defaults at different commits: say what ran
        r["recipe"] = recipe_of(r, work)
    for r in sorted(recs, key=lambda r: (r["minutes"], r["variant"], r["seed"])):
        lines.append(f"| `{r['variant']}` | {r['recipe']} | {r['minutes']:g} | {r['seed']} | "
                     f"{100 * r['mIoU']:.1f} | {100 * r['pixel_acc']:.1f} | {r['steps']} | "
                     f"{r['epochs']:.1f} | {r['precision']} | "
                     f"{_side_by_side(r)} | {r['commit']} |")
    machines = sorted({format_machine(r["machine"]) for r in recs})
    lines += ["", "Machine(s): " + "; ".join(machines)]
    # Distinct colours for up to 14 recipes (a sweep has ten and more), then they repeat.
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
               (0, 0, 0), (174, 199, 232), (152, 223, 138), (255, 187, 120)]
    series = []
    for i, label in enumerate(sorted({r["recipe"] for r in recs})):
        by_minutes: dict[float, list[float]] = {}
        for r in recs:
            if r["recipe"] == label:
                by_minutes.setdefault(r["minutes"], []).append(100 * r["mIoU"])
        xs = sorted(by_minutes)  # one point per budget: the mean over its seeds
        series.append(Series(label=label, xs=xs,
                             ys=[sum(by_minutes[x]) / len(by_minutes[x]) for x in xs],
                             color=palette[i % len(palette)], markers=True))
    scored = sorted({f"{r.get('data', 'camvid')} {r.get('split', 'test')}" for r in recs})
    line_plot(out / "sweep.png", series, title=f"{', '.join(scored)} mIoU against training "
              "minutes (mean over seeds)",
              xlabel="training budget (minutes)", ylabel=f"{split} mIoU (%)", y_from_zero=False,
              legend_below=True)
    lines += ["", f"![{split} mIoU against minutes](sweep.png)"]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def recipe_of(rec: dict[str, Any], work: Path) -> str:
    """What a run trained with, in a few words: the plain loop, or the stride, crop, batch, lr
    and scale range of ``pspnet train``'s saved config (``run/config.yaml``)."""
    if rec["variant"] == "plain":
        return "plain loop"
    cfg_path = work / rec["name"] / "run" / "config.yaml"
    if not cfg_path.is_file():
        return rec["variant"]
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text())
    (h, w), (lo, hi) = cfg["data"]["crop_size"], cfg["data"]["scale"]
    batch = cfg.get("train", {}).get("batch_size")
    text = (f"stride {cfg['model']['output_stride']}, crop {h}x{w}, "
            + (f"batch {batch}, " if batch is not None else "")
            + f"lr {cfg['optim']['lr']:g}, scale {lo:g}-{hi:g}")
    from pspnet.config.training import OptimConfig

    if cfg["optim"]["head_lr_mult"] != OptimConfig().head_lr_mult:  # only when not the default
        text += f", head lr x{cfg['optim']['head_lr_mult']:g}"
    if list(cfg["data"]["rotate"]) == [0, 0] and not cfg["data"]["blur"]:
        text += ", no rotation or blur"
    if cfg["optim"].get("weight_decay", OptimConfig().weight_decay) != OptimConfig().weight_decay:
        text += f", weight decay {cfg['optim']['weight_decay']:g}"
    if cfg["data"].get("finish_share"):
        fh, fw = cfg["data"]["finish_crop_size"]
        text += f", the last {cfg['data']['finish_share']:.0%} on {fh}x{fw}"
        if cfg["data"].get("finish_output_stride"):
            text += f" at stride {cfg['data']['finish_output_stride']}"
    return text


def _side_by_side(rec: dict[str, Any]) -> str:
    """How a run shared the machine, for the report's table."""
    if rec["parallel"] > 1:
        return "2 x 1 core"
    if rec.get("cores"):
        return f"core {rec['cores'][0]} (another sweep on the other)"
    return "alone"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--variants", nargs="+", default=["plain", "cli"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--cores", type=int, nargs="+", default=None,
                   help="run only on these cores, pinned, one thread each (default: all, "
                        "pinned when --parallel > 1)")
    r.add_argument("--data", default=None, help="prepared data root (default: $PSPNET_CAMVID)")
    r.add_argument("--split", default="test",
                   help="the split every run is scored on (default: test; a data set without "
                        "one, e.g. generated scenes: val)")
    r.add_argument("--work-dir", default="work_dirs/recipe")
    g = sub.add_parser("scenes", help="write the demo's context scenes as a prepared data set")
    g.add_argument("--out", default="work_dirs/scenes_448x224")
    q = sub.add_parser("report")
    q.add_argument("--work-dir", default="work_dirs/recipe")
    q.add_argument("--out", default="docs/recipe")
    args = p.parse_args(argv)
    try:
        {"run": run, "scenes": scenes, "report": report}[args.cmd](args)
    except CamVidNotFoundError as e:
        print(f"skipped: {e}")
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
