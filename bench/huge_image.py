"""Peak memory of sliding-window prediction on a very large image (default 6000x4000).

Usage:
    python bench/huge_image.py [--arch pspnet50] [--size 6000 4000] [--crop 473] [--workdir DIR]

Saves a randomly initialised model of ``--arch`` (weights do not change memory use), writes a
smooth synthetic photo of the given size, runs ``pspnet predict --mode slide`` on it in a child
process and prints the child's peak resident memory (``ru_maxrss``) and wall time.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="pspnet50")
    ap.add_argument("--num-classes", type=int, default=19)
    ap.add_argument("--size", type=int, nargs=2, default=[6000, 4000], metavar=("W", "H"))
    ap.add_argument("--crop", type=int, default=473)
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
    cmd = [sys.executable, "-m", "pspnet", "predict", "--weights", str(weights),
           str(work / "huge.png"), "--out", str(work / "out"), "--mode", "slide",
           "--crop-size", str(args.crop), "--no-overlay", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    mask = np.asarray(Image.open(work / "out" / "huge.png"))
    print(f"{args.arch} {w}x{h} crop {args.crop}: mask {mask.shape[1]}x{mask.shape[0]}, "
          f"peak RSS {peak_mib:.0f} MiB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
