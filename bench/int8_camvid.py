"""CamVid test mIoU of one trained model in fp32, bf16 and int8, in one table.

fp32 is the eager model; bf16 is ``load_model(..., precision="bf16")`` (BN folded, bf16
weights, channels-last); int8 is ``load_model(..., precision="int8", calibration=...)``
calibrated on the first ``--calib`` training images (listed in ``WORK_DIR/calibration.txt``).
``onnx-int8`` and ``openvino-int8`` are the deployable files of ``pspnet export --int8``
(ONNX Runtime static quantization; OpenVINO with NNCF), exported at the size of the test images
(CamVid's 360x480) with the same calibration images into ``--export-dir`` and opened with ``load_model``. Each is scored on
the same test images (whole image, scale 1, no flip). CamVid is found through ``--data-root``
or ``$PSPNET_CAMVID``.

    PSPNET_CAMVID=DIR python bench/int8_camvid.py --weights work_dirs/camvid_r18/final --calib 32 \
        --precisions fp32,bf16,int8,onnx-int8,openvino-int8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from PIL import Image

from pspnet.checkpoint import load_model
from pspnet.data.datasets import SegmentationDataset, camvid_samples
from pspnet.engine.evaluate import evaluate_model


#: Deployable int8 files: precision name -> file name of the export.
EXPORTS = {"onnx-int8": "int8.onnx", "openvino-int8": "int8_openvino.xml"}


def _exported(precision: str, weights: Path, calib: Path, n: int, out_dir: Path,
              size: tuple[int, int]) -> object:
    """Export ``weights`` as the int8 file of ``precision`` at ``size`` (H, W) and open it like
    any export."""
    fp32 = load_model(weights)
    path = out_dir / EXPORTS[precision]
    kwargs = {"calibration": calib, "height": size[0], "width": size[1], "limit": n}
    if precision == "onnx-int8":
        from pspnet.export.int8 import export_onnx_int8

        report = export_onnx_int8(fp32, path, timing_runs=0, **kwargs)
    else:
        from pspnet.export.openvino import export_openvino

        report = export_openvino(fp32, path, timing_runs=0, **kwargs)
    print(report.format(), flush=True)
    return load_model(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--data-root", type=Path, default=os.environ.get("PSPNET_CAMVID"))
    ap.add_argument("--calib", type=int, default=32, help="calibration images (training split)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument("--export-dir", type=Path, default=None,
                    help="where the int8 exports go (default: beside --weights)")
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
        if precision in EXPORTS:
            with Image.open(test[0].image) as im:  # CamVid: every image is 480x360
                size = (im.height, im.width)
            model = _exported(precision, args.weights, calib, args.calib,
                              args.export_dir or args.weights.parent, size)
        else:
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
