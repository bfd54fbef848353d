"""CamVid test mIoU of one trained model in fp32, bf16 and int8, in one table.

fp32 is the eager model; bf16 is ``load_model(..., precision="bf16")`` (BN folded, bf16
weights, channels-last); int8 is ``load_model(..., precision="int8", calibration=...)``
calibrated on the first ``--calib`` training images (listed in ``WORK_DIR/calibration.txt``).
Each is scored on the same test images (whole image, scale 1, no flip). CamVid is found through
``--data-root`` or ``$PSPNET_CAMVID``.

    PSPNET_CAMVID=DIR python bench/int8_camvid.py --weights work_dirs/camvid_r18/final --calib 32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pspnet.checkpoint import load_model
from pspnet.data.datasets import SegmentationDataset, camvid_samples
from pspnet.engine.evaluate import evaluate_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--data-root", type=Path, default=os.environ.get("PSPNET_CAMVID"))
    ap.add_argument("--calib", type=int, default=32, help="calibration images (training split)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args()
    if args.data_root is None:
        ap.error("give --data-root DIR or set PSPNET_CAMVID")
    root = args.data_root
    train = camvid_samples(root, "train")[: args.calib]
    calib = args.weights.parent / "calibration.txt"
    calib.write_text("".join(f"{s.image.resolve()}\n" for s in train))
    test = camvid_samples(root, "test")
    if args.limit:
        test = test[: args.limit]
    rows = []
    for precision in args.precisions.split(","):
        t0 = time.perf_counter()
        extra = {"calibration": calib} if precision == "int8" else {}
        model = load_model(args.weights, precision=precision, **extra)
        meta = load_model(args.weights).meta
        k = meta.model.num_classes
        ds = SegmentationDataset(test, k, ignore_index=meta.ignore_index)
        m = evaluate_model(model, ds, num_classes=k, ignore_index=meta.ignore_index,
                           mode="whole", preprocess=meta.preprocess, progress=False)
        rows.append({"precision": precision, "miou": 100 * m.miou,
                     "pixel_acc": 100 * m.all_acc, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nCamVid test ({len(test)} images), calibration {args.calib} training images")
    print("| precision | mIoU % | pixel acc % | Δ mIoU vs fp32 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['miou']:.2f} | {r['pixel_acc']:.2f} | "
              f"{r['miou'] - rows[0]['miou']:+.2f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
