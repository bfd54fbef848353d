"""Peak memory of one prediction per engine, fp32 against int8, each in a fresh process.

Peak resident memory (``VmHWM``) is per process and never goes down, so every variant runs in
a process of its own: it imports what it needs, notes its resident memory (the baseline), builds
the model, predicts one image (twice where the first call compiles) and reports its peak. The
ONNX files are written first, by another process, so that exporting and quantizing are not
counted against the ONNX Runtime variants (a deployment loads the quantized file):

* ``fp32 eager`` / ``fp32 compiled`` (BN folded, inductor) / ``bf16 compiled`` (the same in
  bf16 channels-last: ``load_model(..., precision="bf16", compile=True)``) / ``int8 pt2e``
  (torchao PT2E, quantized and compiled in the process: that is how
  ``load_model(..., precision="int8")`` runs) on a randomly initialised PSPNet;
* ``fp32 ort`` / ``int8 ort``: ONNX Runtime on the project's export and on its static int8
  quantization (``pspnet.export.int8.quantize_onnx``); these processes import no torch.
* ``fp32 ov`` / ``int8 ov``: OpenVINO on the same graph converted to IR and on its NNCF
  quantization (what ``pspnet export --format openvino [--int8]`` writes); no torch either.

Weights and calibration images are random: memory does not depend on them.

``--labels``: the prediction of the PyTorch variants is ``predict_labels(model, x)`` (what
``pspnet predict`` / ``evaluate`` / ``serve`` run: class labels, which compiled CPU models and
the int8 model find without full-size logits) instead of the logits ``model(x)``.

    python bench/int8_memory.py --arch pspnet50 --size 713 --classes 150 --out mem.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("fp32 eager", "fp32 compiled", "bf16 compiled", "int8 pt2e", "fp32 ort",
            "int8 ort", "fp32 ov", "int8 ov")


def _mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _torch_model(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from pspnet import create_model

    torch.manual_seed(0)
    return torch, create_model(args.arch, args.classes).eval()


def _prepare(args: argparse.Namespace) -> None:
    """Write ``fp32.onnx`` and ``int8.onnx`` (and with ``--openvino`` ``fp32.xml`` and
    ``int8.xml``) into ``args.dir``."""
    torch, model = _torch_model(args)
    from pspnet.export import export_onnx
    from pspnet.export.int8 import quantize_onnx

    src, dst = Path(args.dir) / "fp32.onnx", Path(args.dir) / "int8.onnx"
    export_onnx(model, src, height=args.size, width=args.size, check=False)
    calib = [torch.randn(1, 3, args.size, args.size).numpy() for _ in range(args.calib)]
    quantize_onnx(src, dst, calib)
    if args.openvino:
        import nncf
        import openvino as ov

        graph = ov.convert_model(str(src))
        ov.save_model(graph, str(Path(args.dir) / "fp32.xml"), compress_to_fp16=False)
        int8 = nncf.quantize(graph, nncf.Dataset(calib), subset_size=len(calib))
        ov.save_model(int8, str(Path(args.dir) / "int8.xml"), compress_to_fp16=False)


def _child(args: argparse.Namespace) -> dict[str, float]:
    """Run one variant; its baseline, peak and time of the last prediction."""
    name = args.child
    if name.endswith(" ov"):
        import numpy as np
        import openvino as ov

        base = _mib("VmRSS")
        path = Path(args.dir) / ("int8.xml" if name.startswith("int8") else "fp32.xml")
        # as pspnet's OpenVinoSegmenter compiles it: float layers in fp32
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)
        runs = [lambda: request.infer({0: x})]
    elif name.endswith(" ort"):
        import numpy as np
        import onnxruntime as ort

        base = _mib("VmRSS")
        path = Path(args.dir) / ("int8.onnx" if name.startswith("int8") else "fp32.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)
        runs = [lambda: sess.run(None, {"images": x})]
    else:
        import torch  # before the baseline: the import is not the model's memory

        base = _mib("VmRSS")
        _, model = _torch_model(args)
        x = torch.randn(1, 3, args.size, args.size)
        if name == "fp32 eager":
            fn = model
        elif name in ("fp32 compiled", "bf16 compiled"):
            from pspnet.models.fuse import optimize_for_inference

            # inplace, as load_model / the CLI do: they own the model they read
            fn = optimize_for_inference(model, precision=name[:4], compile=True, inplace=True)
        else:
            from pspnet.models.quantize import quantize_pt2e

            calib = [torch.randn(1, 3, args.size, args.size) for _ in range(args.calib)]
            fn = quantize_pt2e(model, calib, inplace=True)
            # as load_model / the CLI: they return the int8 model and keep no float one
            del model, calib
        if args.labels:
            from pspnet.inference import predict_labels

            def predict(fn=fn):  # noqa: ANN001, ANN202
                return predict_labels(fn, x)
        else:
            def predict(fn=fn):  # noqa: ANN001, ANN202
                return fn(x)
        runs = [predict] * (1 if name == "fp32 eager" else 2)  # compile, then run
        torch.set_grad_enabled(False)
    for run in runs:
        t0 = time.perf_counter()
        run()
    return {"baseline_mib": round(base, 1), "peak_mib": round(_mib("VmHWM"), 1),
            "rss_after_mib": round(_mib("VmRSS"), 1),  # what serving the model keeps
            "last_run_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="pspnet_r18")
    ap.add_argument("--size", type=int, default=473)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated variant names to run")
    ap.add_argument("--labels", action="store_true",
                    help="PyTorch variants predict labels (predict_labels), not logits")
    ap.add_argument("--out", default=None, help="write the results here (JSON)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--openvino", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:
        return _prepare(args)
    if args.child:
        print(json.dumps(_child(args)))
        return None
    only = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
    common = ["--arch", args.arch, "--size", str(args.size), "--classes", str(args.classes),
              "--calib", str(args.calib), *(["--labels"] if args.labels else [])]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        me = [sys.executable, __file__, *common, "--dir", tmp]
        files = [v for v in only if v.endswith((" ort", " ov"))]
        if files:
            print("exporting and quantizing the ONNX (and OpenVINO) files ...", flush=True)
            ov = ["--openvino"] if any(v.endswith(" ov") for v in files) else []
            subprocess.run([*me, "--prepare", *ov], check=True)
        for name in only:
            out = subprocess.run([*me, "--child", name], check=True, capture_output=True,
                                 text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
            r = results[name]
            print(f"{name:14s} peak {r['peak_mib']:7.0f} MiB, resident after "
                  f"{r['rss_after_mib']:5.0f} MiB  (process before the model "
                  f"{r['baseline_mib']:5.0f} MiB; one prediction {r['last_run_s']:.2f} s)",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"arch": args.arch, "size": args.size,
                                              "classes": args.classes, "labels": args.labels,
                                              "results": results}, indent=2) + "\n")
    return None


if __name__ == "__main__":
    main()
