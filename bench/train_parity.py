"""Does the fast training path follow the fp32 loss curve "within noise"?

The performance issue asks that training with the fast path (bf16 autocast + channels-last)
gives the same loss curve as fp32 within noise over 200 steps. "Noise" is measured, not
assumed: the same recipe in fp32 with another seed. Three runs of ``pspnet train`` (the
Python API, in this process) on the embedded scenes, identical except for::

    fp32_s0   fp32, NCHW, seed 0          the reference
    fp32_s1   fp32, NCHW, seed 1          the noise reference (other init, data order, augmentation)
    fast_s0   bf16 autocast + channels-last, seed 0   the fast path

Each run logs its loss every step (``train.log_interval=1``) to ``WORK/runs/<run>/log.jsonl``.
The curves are smoothed with a trailing moving average (``--window``, default 20 steps) and
compared by the mean absolute difference over all steps: the fast path is **within noise**
when ``|fast - fp32_s0| <= |fp32_s1 - fp32_s0|``. The report also gives the final smoothed
losses and the median seconds per step of each run (where the CPU lacks native bf16 the fast
run's time is emulated bf16, not a speed claim)::

    python bench/train_parity.py [--steps 200] [--size 128] [--batch-size 8] [--work-dir W]

Restartable: a finished run (its log ends at ``--steps``) is skipped, an interrupted one resumes
from its last checkpoint (``train.resume=auto``). Writes ``<out>.json``, ``<out>.md`` and
``<out>.png`` (``--out``, default ``docs/bench/train_parity``) with the command, commit and
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pspnet.report.charts import Series, line_plot
from pspnet.report.machine import display_path, format_machine, git_commit, machine_info
from pspnet.report.tables import md_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "work_dirs" / "train_parity"
DEFAULT_OUT = REPO / "docs" / "bench" / "train_parity"
NUM_CLASSES = 6  # the scenes' classes
#: Run name -> (label, precision ("fast" = --fast-precision), channels_last, seed, colour).
RUNS: dict[str, tuple[str, str, bool, int, tuple[int, int, int]]] = {
    "fp32_s0": ("fp32 seed 0 (reference)", "fp32", False, 0, (31, 119, 180)),
    "fp32_s1": ("fp32 seed 1 (noise reference)", "fp32", False, 1, (150, 150, 150)),
    "fast_s0": ("fast path seed 0", "fast", True, 0, (214, 39, 40)),
}


class ParityError(RuntimeError):
    """A problem the user can fix; printed without a trace."""


@dataclass(frozen=True)
class Setup:
    """What the three runs share (a work dir holds runs of one setup only)."""

    steps: int
    size: int
    batch_size: int
    arch: str
    output_stride: int
    head_channels: int
    aux_channels: int
    lr: float
    n_train: int
    fast_precision: str
    workers: int | None
    threads: int | None


def _config(setup: Setup, run: str, data: Path, work: Path) -> Any:
    from pspnet.config import Config

    _, precision, channels_last, seed, _ = RUNS[run]
    return Config.from_dict({
        "model": {"arch": setup.arch, "num_classes": NUM_CLASSES,
                  "output_stride": setup.output_stride, "head_channels": setup.head_channels,
                  "aux_channels": setup.aux_channels},
        "data": {"root": str(data), "train_list": str(data / "train.txt"),
                 "class_names": str(data / "classes.txt"), "crop_size": setup.size,
                 "scale": [0.75, 1.25], "rotate": [-10, 10], "num_workers": setup.workers},
        "optim": {"lr": setup.lr},
        "train": {"work_dir": str(work / "runs" / run), "max_iter": setup.steps,
                  "batch_size": setup.batch_size, "seed": seed,
                  "precision": setup.fast_precision if precision == "fast" else precision,
                  "channels_last": channels_last, "val_interval": 0, "resume": "auto",
                  "log_interval": 1, "checkpoint_interval": 50, "checkpoint_minutes": 5,
                  "threads": setup.threads},
    })  # fmt: skip


# --------------------------------------------------------------------------------------------
# Logs and curves


@dataclass
class RunLog:
    """What one run's ``log.jsonl`` says."""

    losses: dict[int, float]
    """Step (1-based) -> training loss of that step (main + aux_weight x aux)."""
    sec_per_iter: dict[int, float]
    precision: str | None
    finished_at: int | None
    """Iteration of the last ``end`` event, or None."""


def read_run_log(path: Path) -> RunLog:
    """Per-step losses and times of a run; a step redone after a resume keeps its last value."""
    losses: dict[int, float] = {}
    secs: dict[int, float] = {}
    precision = None
    end = None
    if not path.is_file():
        return RunLog(losses, secs, precision, end)
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        kind = ev.get("event")
        if kind == "train" and isinstance(ev.get("loss"), (int, float)):
            it = int(ev["iter"])
            losses[it] = float(ev["loss"])
            secs[it] = float(ev.get("sec_per_iter") or math.nan)
            end = None
        elif kind in ("start", "resume"):
            precision = ev.get("precision", precision)
        elif kind == "end":
            end = int(ev.get("iteration", 0))
    return RunLog(losses, secs, precision, end)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def compare(logs: dict[str, RunLog], steps: int, window: int) -> dict[str, Any]:
    """Smoothed curves, their mean absolute differences to ``fp32_s0``, and the verdict."""
    curves: dict[str, list[float]] = {}
    for run, log in logs.items():
        missing = [s for s in range(1, steps + 1) if s not in log.losses]
        if missing:
            raise ParityError(
                f"run {run} has no loss for {len(missing)} of the {steps} steps (first: step "
                f"{missing[0]}); its log is incomplete: delete its folder and rerun")
        curves[run] = moving_average([log.losses[s] for s in range(1, steps + 1)], window)
    ref = curves["fp32_s0"]

    def mad(run: str) -> float:
        return statistics.fmean(abs(a - b) for a, b in zip(curves[run], ref))

    fast, noise = mad("fast_s0"), mad("fp32_s1")
    per_run = {}
    for run, log in logs.items():
        timed = [t for s, t in sorted(log.sec_per_iter.items()) if s > 2 and math.isfinite(t)]
        timed = timed or [t for t in log.sec_per_iter.values() if math.isfinite(t)]
        per_run[run] = {
            "label": RUNS[run][0], "precision": log.precision,
            "channels_last": RUNS[run][2], "seed": RUNS[run][3],
            "final_smoothed_loss": curves[run][-1], "first_loss": log.losses[1],
            "mad_vs_fp32_s0": mad(run), "sec_per_step": statistics.median(timed) if timed else None,
        }
    within = fast <= noise
    verdict = (
        f"{'within noise' if within else 'NOT within noise'}: the fast path's smoothed loss "
        f"differs from fp32's by {fast:.4f} on average, another fp32 seed by {noise:.4f}"
    )
    return {"window": window, "mad_fast": fast, "mad_seed": noise, "within_noise": within,
            "verdict": verdict, "runs": per_run, "smoothed": curves}


# --------------------------------------------------------------------------------------------
# Report


def plot(curves: dict[str, list[float]], window: int, path: Path) -> Path:
    """The three smoothed loss curves against the step (Pillow only)."""
    series = [
        # The reference is drawn wide so that the fast path on top of it leaves it visible.
        Series(RUNS[run][0], list(range(1, len(ys) + 1)), ys, color=RUNS[run][4],
                       width=5 if run == "fp32_s0" else 2)
        for run, ys in curves.items()
    ]
    return line_plot(path, series, title="Training loss: fast path vs fp32",
                             xlabel="step", ylabel=f"loss (moving average of {window})",
                             y_from_zero=False)


def render_markdown(doc: dict[str, Any], png_name: str) -> str:
    """The Markdown page of a finished comparison."""
    s, r = doc["setup"], doc["result"]
    native = doc["machine"].get("native_bf16")
    lines = [
        "# Fast training path: same loss curve within noise?",
        "",
        f"`{s['arch']}` (output stride {s['output_stride']}, head {s['head_channels']}, aux "
        f"{s['aux_channels']}) on {s['n_train']} generated scenes of {s['size']} px, batch "
        f"{s['batch_size']}, lr {s['lr']} (poly over {s['steps']} steps), the paper's optimiser "
        "and augmentation; loss = main + 0.4 x aux, logged every step. Regenerate with:",
        "",
        "```sh",
        doc["command"],
        "```",
        "",
        f"Commit `{doc['commit']}`; machine: {format_machine(doc['machine'])}.",
        "",
        f"![smoothed loss curves]({png_name})",
        "",
    ]
    rows = []
    for run, x in r["runs"].items():
        sec = "" if x["sec_per_step"] is None else f"{x['sec_per_step']:.3f}"
        if run == "fast_s0" and x["precision"] == "bf16" and not native:
            sec += " (emulated bf16)"
        rows.append([f"`{run}`", x["label"], str(x["precision"]),
                     "yes" if x["channels_last"] else "no", str(x["seed"]),
                     f"{x['first_loss']:.4f}", f"{x['final_smoothed_loss']:.4f}",
                     "0 (reference)" if run == "fp32_s0" else f"{x['mad_vs_fp32_s0']:.4f}", sec])
    lines += md_table(
        ["run", "what", "precision", "channels-last", "seed", "loss at step 1",
         f"final loss (mean of last {r['window']})", "mean abs. difference to fp32 seed 0",
         "s / step (median)"], rows)
    lines += [
        "",
        f"Smoothing: trailing moving average over {r['window']} steps; difference: mean over "
        f"all {s['steps']} steps of |smoothed run - smoothed fp32 seed 0|. Within noise means "
        "the fast path is no further from fp32 seed 0 than fp32 with another seed is.",
        "",
        f"**Verdict: {r['verdict']}.**",
    ]
    if native is False and s["fast_precision"] == "bf16":
        lines += ["", "This CPU has no native bf16 (no AVX512-BF16 / AMX): the fast run's bf16 "
                  "is emulated, so its losses are what a bf16 machine computes but its time is "
                  "**not a speed claim**."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Train what is missing, compare, write the outputs; returns the JSON document."""
    from pspnet.data.scenes import generate_scenes
    from pspnet.engine.train import train

    for flag, value, low in (("--steps", args.steps, 2), ("--size", args.size, 32),
                             ("--batch-size", args.batch_size, 2), ("--window", args.window, 1)):
        if value < low:
            raise ParityError(f"{flag} must be at least {low}, got {value}")
    if args.n_train < args.batch_size:
        raise ParityError(f"--n-train {args.n_train} is smaller than one batch "
                          f"(--batch-size {args.batch_size}); raise --n-train")
    setup = Setup(args.steps, args.size, args.batch_size, args.arch, args.output_stride,
                  args.head_channels, args.aux_channels, args.lr, args.n_train,
                  args.fast_precision, args.workers, args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    setup_file = work / "setup.json"
    if setup_file.is_file() and json.loads(setup_file.read_text()) != asdict(setup):
        raise ParityError(f"{work} holds runs of a different setup ({setup_file}); use another "
                          "--work-dir or delete that one")
    setup_file.write_text(json.dumps(asdict(setup), indent=1) + "\n")
    data = generate_scenes(work / f"scenes_{args.size}", n_train=args.n_train, n_val=0,
                           size=(args.size, args.size), seed=0, progress=False)
    logs = {}
    for i, name in enumerate(RUNS, 1):
        log_path = work / "runs" / name / "log.jsonl"
        log = read_run_log(log_path)
        if log.finished_at == args.steps:
            print(f"[{i}/{len(RUNS)}] {name}: finished earlier, skipped", flush=True)
        else:
            print(f"[{i}/{len(RUNS)}] {name}: training {args.steps} steps "
                  f"({RUNS[name][0]})", flush=True)
            t0 = time.perf_counter()
            train(_config(setup, name, data, work), progress=not args.quiet)
            print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
            log = read_run_log(log_path)
        logs[name] = log
    result = compare(logs, args.steps, args.window)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(result["smoothed"], args.window, Path(f"{out}.png"))
    doc = {
        "setup": asdict(setup), "result": result,
        "command": shlex.join(["python", "bench/train_parity.py", *argv]),
        "commit": git_commit(REPO), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "work_dir": display_path(work, REPO),
    }
    Path(f"{out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(f"{out}.md").write_text(render_markdown(doc, png.name))
    for name, x in result["runs"].items():
        sec = "?" if x["sec_per_step"] is None else f"{x['sec_per_step']:.3f}"
        print(f"{name}: final smoothed loss {x['final_smoothed_loss']:.4f}, difference to fp32 "
              f"seed 0 {x['mad_vs_fp32_s0']:.4f}, {sec} s/step")
    print(f"verdict: {result['verdict']}\nwrote {out}.json, {out}.md and {png}")
    return doc


def build_parser() -> argparse.ArgumentParser:
    """The ``bench/train_parity.py`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python bench/train_parity.py",
        description="fp32 vs fast-path (bf16 + channels-last) training loss curves, with a "
                    "second fp32 seed as the noise reference.")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run (200)")
    p.add_argument("--size", type=int, default=128, help="scene side and crop in px (128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--arch", default="pspnet_r18")
    p.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32))
    p.add_argument("--head-channels", type=int, default=128, help="the demo's 128")
    p.add_argument("--aux-channels", type=int, default=64, help="the demo's 64")
    p.add_argument("--lr", type=float, default=0.02, help="the demo's 0.02")
    p.add_argument("--n-train", type=int, default=400, help="generated training scenes")
    p.add_argument("--fast-precision", default="bf16", choices=("bf16", "fp16", "fp32"),
                   help="autocast precision of the fast run (fp16 needs CUDA)")
    p.add_argument("--window", type=int, default=20, help="moving-average window in steps")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: pspnet train's)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK),
                   help="runs and generated scenes (default work_dirs/train_parity)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="output prefix: <out>.json, .md, .png (default docs/bench/train_parity)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; 0 on success, 2 on a problem the message explains."""
    from pspnet.config import ConfigError
    from pspnet.data.datasets import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except (ParityError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
