"""Peak memory of sliding-window prediction on a very large image (default 6000x4000).

Usage:
    python bench/huge_image.py [--arch pspnet50] [--size 6000 4000] [--crop 473]
        [--tile-batch 4] [--flip] [--workdir DIR]

Saves a randomly initialised model of ``--arch`` (weights do not change memory use), writes a
smooth synthetic photo of the given size, runs ``pspnet predict --mode slide`` on it in a child
process and prints the child's peak resident memory and wall time.

The peak is the child's own ``VmHWM`` (read from ``/proc/self/status`` as it exits, Linux), not
``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the latter also takes the high-water mark of this
parent's address space at the moment the child is spawned (vfork/exec), so the parent's large
temporary arrays (building the photo) showed up as ~1.75 GiB of "child" memory before.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights


#: Runs the pspnet CLI and, as it exits, prints its own high-water mark of resident memory.
_REPORT_PEAK = """
import runpy, sys
sys.argv = ["pspnet", *sys.argv[1:]]
try:
    runpy.run_module("pspnet", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f:
        print(next(line for line in f if line.startswith("VmHWM")).strip(), file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="pspnet50")
    ap.add_argument("--num-classes", type=int, default=19)
    ap.add_argument("--size", type=int, nargs=2, default=[6000, 4000], metavar=("W", "H"))
    ap.add_argument("--crop", type=int, default=473)
    ap.add_argument("--tile-batch", type=int, default=4, help="crops per forward pass")
    ap.add_argument("--flip", action="store_true", help="also the mirrored view (--flip)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pspnet-huge-"))
    work.mkdir(parents=True, exist_ok=True)
    model = pspnet.create_model(args.arch, args.num_classes, aux=False)
    weights = save_weights(model, work / "weights", WeightsMeta(model.config))
    w, h = args.size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(work / "huge.png")
    del img, yy, xx
    cmd = [sys.executable, "-c", _REPORT_PEAK, "predict", "--weights", str(weights),
           str(work / "huge.png"), "--out", str(work / "out"), "--mode", "slide",
           "--crop-size", str(args.crop), "--tile-batch", str(args.tile_batch), "--no-overlay",
           "-q", *(["--flip"] if args.flip else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pspnet predict failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM")]
    if not peaks:
        raise SystemExit(f"the child reported no peak memory:\n{proc.stderr[-2000:]}")
    peak_mib = int(peaks[-1]) / 1024  # kB -> MiB
    mask = np.asarray(Image.open(work / "out" / "huge.png"))
    print(f"{args.arch} {w}x{h} crop {args.crop}, tile batch {args.tile_batch}"
          f"{', flip' if args.flip else ''}: mask {mask.shape[1]}x{mask.shape[0]}, "
          f"peak RSS {peak_mib:.0f} MiB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
