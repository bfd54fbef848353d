"""What the sliding window itself costs per crop, apart from the network.

Usage:
    python bench/tiling_overhead.py [--classes 150 19] [--crop 473] [--size 1500 3000]

A stand-in network returns fixed full-resolution logits at once, so the time measured is the
tiling's own work: copying crops, softmax (``average="prob"``), summing overlaps, dividing by the
tile count and the argmax of :func:`pspnet.inference.predict_labels_tiled`. Compare it with the
network's time per crop (``pspnet benchmark``: pspnet50 at 473x473 takes ~2.2 s on two AVX2
cores) to see what share of a sliding-window prediction the tiling takes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pspnet.inference import default_stride, predict_labels_tiled, tile_starts


class FixedLogits(nn.Module):
    """Returns the same (B, C, crop, crop) logits for any batch of crops, in no time."""

    def __init__(self, num_classes: int, crop: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.randn(1, num_classes, crop, crop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A fresh tensor per call, as a real network's output is (the tiling may sum into it).
        return self.logits.expand(x.shape[0], -1, -1, -1).clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[150, 19])
    ap.add_argument("--crop", type=int, default=473)
    ap.add_argument("--size", type=int, nargs=2, default=[1500, 3000], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=4, help="crops per forward pass")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    h, w = args.size
    sh, sw = default_stride(args.crop)
    crops = len(tile_starts(h, args.crop, sh)) * len(tile_starts(w, args.crop, sw))
    x = torch.randn(1, 3, h, w)
    print(f"{h}x{w} image, crop {args.crop}, {crops} crops, batch {args.batch}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    for c in args.classes:
        model = FixedLogits(c, args.crop).eval()
        for average in ("prob", "logit"):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    predict_labels_tiled(model, x, crop_size=args.crop, batch_size=args.batch,
                                         average=average)
                times.append(time.perf_counter() - t0)
            t = sorted(times)[len(times) // 2]
            print(f"  {c:4d} classes, average={average}: {1e3 * t / crops:6.1f} ms per crop "
                  f"({t:.2f} s)")


if __name__ == "__main__":
    main()
