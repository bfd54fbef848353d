"""Which int8 engine is fastest on this CPU: fp32 eager/compiled against three int8 engines.

Times, alternately in one process (each round runs every variant once; medians reported, with
the ratio to fp32 eager of the same rounds), a PSPNet at one size, batch 1:

* ``fp32 eager``: the eager network; ``fp32 compiled``: ``load_model(..., compile=True)``'s path
  (:func:`pspnet.models.fuse.optimize_for_inference`: BN folded, inductor with freezing);
* ``int8 pt2e``: torchao's PT2E flow with ``X86InductorQuantizer``, compiled by inductor;
* ``int8 ort``: ONNX Runtime static quantization (QDQ, per-channel, u8 activations / s8
  weights) of the project's ONNX export;
* ``ov fp32`` / ``int8 ov``: OpenVINO on the same ONNX file, int8 via NNCF post-training
  quantization;
* where the CPU computes bf16 natively (AVX512-BF16 / AMX) also ``bf16 compiled``
  (``load_model(..., precision="bf16", compile=True)``'s path), ``ov bf16`` and
  ``int8 ov bf16`` (OpenVINO with its bf16 precision hint, its own default on such CPUs).

With ``int8 ort`` timed, the GEMM rates of ONNX Runtime's own kernels are measured too (fp32
``MatMul`` and int8 ``MatMulInteger``): their ratio is the most int8 arithmetic can gain on this
CPU (1.09-1.14x on a Zen 1 EPYC without VNNI), and the ``int8 ort`` row's share of peak is of
that int8 rate.

Engines that are not installed are skipped (named in the output). Calibration uses random
normalised images: this script measures speed only; accuracy is ``bench/int8_camvid.py``'s.

    python bench/int8_engines.py --arch pspnet_r18 --size 473 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import numpy as np
import torch

from pspnet import create_model
from pspnet.benchmark import count_flops, int8_conv_peak, int8_gemm_is_fast, matmul_peak
from pspnet.export import export_onnx
from pspnet.inference import predict_labels
from pspnet.models.fuse import optimize_for_inference
from pspnet.precision import cpu_has_native_bf16


def _pt2e(model: torch.nn.Module, x: torch.Tensor, calib: list[torch.Tensor],
          keep: dict[str, Any]) -> Callable:
    from pspnet.models.quantize import quantize_pt2e

    fast = keep["int8"] = quantize_pt2e(model, calib)
    return lambda: fast(x)


def _ort(onnx_path: Path, x: np.ndarray, calib: list[np.ndarray], threads: int) -> Callable:
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"images": c} for c in calib])

        def get_next(self):  # noqa: ANN201
            return next(self.it, None)

    out = onnx_path.with_name("int8.onnx")
    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"images": x})


def _openvino(onnx_path: Path, x: np.ndarray, calib: list[np.ndarray], threads: int,
              int8: bool, hint: str = "f32") -> Callable:
    import openvino as ov

    core = ov.Core()
    model = ov.convert_model(str(onnx_path))
    if int8:
        import nncf

        model = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def int8_peak(n: int = 2048) -> float | None:
    """torch's int8 peak (GOP/s): the faster of ``torch._int_mm`` and oneDNN's quantized 1x1
    convolution (``int8_conv_peak``: AMX-INT8 where ``_int_mm`` is not), or None where this
    build has neither."""
    conv = int8_conv_peak(n) or None
    if not int8_gemm_is_fast():  # a fallback kernel: no int8 rate, and minutes to time at n
        return conv
    return max(matmul_peak(torch.int8, n), conv or 0.0)


def ort_gemm_peaks(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float] | None:
    """GEMM rates through ONNX Runtime's own kernels (MLAS): fp32 ``MatMul`` and int8
    ``MatMulInteger`` (u8 activations x s8 constant weights -> s32, the kernel its quantized
    convolutions run), in G(FL)OP/s; None without onnxruntime/onnx.

    Where ``torch._int_mm`` has no fast kernel (an AVX2 CPU without VNNI), this is the int8
    rate the ``int8 ort`` row can be held to, and its ratio to fp32 is the most int8 can gain.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    rates = {}
    for name, op, a, b, out_type in (
        ("fp32", "MatMul", rng.standard_normal((n, n), dtype=np.float32),
         rng.standard_normal((n, n), dtype=np.float32), TensorProto.FLOAT),
        ("int8", "MatMulInteger", rng.integers(0, 256, (n, n), dtype=np.uint8),
         rng.integers(-64, 64, (n, n), dtype=np.int8), TensorProto.INT32),  # 7-bit, as exported
    ):
        a_type = helper.np_dtype_to_tensor_dtype(a.dtype)
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["c"])], "gemm",
            [helper.make_tensor_value_info("a", a_type, [n, n])],
            [helper.make_tensor_value_info("c", out_type, [n, n])],
            initializer=[numpy_helper.from_array(b, "b")])  # constant: prepacked, like weights
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        sess.run(None, {"a": a})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            times.append(time.perf_counter() - t0)
        rates[name] = 2 * n**3 / statistics.median(times) / 1e9
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="pspnet_r18")
    ap.add_argument("--size", type=int, default=473)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated variant names to run")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    native_bf16 = cpu_has_native_bf16()  # bf16 rows only where bf16 is not emulated
    torch.manual_seed(0)
    model = create_model(args.arch, args.classes).eval()
    s = args.size
    x = torch.randn(1, 3, s, s)
    calib = [torch.randn(1, 3, s, s) for _ in range(args.calib)]
    xn, calibn = x.numpy(), [c.numpy() for c in calib]
    variants: dict[str, Callable] = {}
    only = set(filter(None, args.only.split(",")))
    tmp = Path(tempfile.mkdtemp())
    onnx_path = tmp / "fp32.onnx"

    def add(name: str, build: Callable[[], Callable]) -> None:
        if only and name not in only:
            return
        t0 = time.perf_counter()
        try:
            fn = build()
            with torch.inference_mode():
                fn()
                fn()  # compiles / warms up
        except ImportError as e:
            print(f"{name}: skipped ({e})")
            return
        print(f"{name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
        variants[name] = fn

    add("fp32 eager", lambda: (lambda: model(x)))
    fast = optimize_for_inference(model, compile=True)
    add("fp32 compiled", lambda: (lambda: fast(x)))
    if native_bf16:
        bf16 = optimize_for_inference(model, precision="bf16", compile=True)
        add("bf16 compiled", lambda: (lambda: bf16(x)))
        # Labels (predict / evaluate / serve): found at the coarse resolution.
        add("bf16 compiled labels", lambda: (lambda: predict_labels(bf16, x)))
    keep: dict[str, Any] = {}
    add("int8 pt2e", lambda: _pt2e(model, x, calib, keep))
    if "int8" in keep:
        int8 = keep["int8"]
        add("int8 pt2e labels", lambda: (lambda: predict_labels(int8, x)))
        add("int8 pt2e logits argmax", lambda: (lambda: int8(x)["out"].max(dim=1).indices))
        if "int8 pt2e labels" in variants and "int8 pt2e logits argmax" in variants:
            with torch.inference_mode():
                differ = int((predict_labels(int8, x) != int8(x)["out"].argmax(1)).sum())
            print(f"int8 labels that differ from the argmax of the int8 logits: {differ} of "
                  f"{s * s}")
    if not only or only & {"int8 ort", "ov fp32", "int8 ov"}:
        export_onnx(model, onnx_path, height=s, width=s, check=False)
    add("int8 ort", lambda: _ort(onnx_path, xn, calibn, threads))
    add("ov fp32", lambda: _openvino(onnx_path, xn, calibn, threads, int8=False))
    add("int8 ov", lambda: _openvino(onnx_path, xn, calibn, threads, int8=True))
    if native_bf16:  # OpenVINO's default on such CPUs; the project's files ask for f32
        add("ov bf16", lambda: _openvino(onnx_path, xn, calibn, threads, False, "bf16"))
        add("int8 ov bf16", lambda: _openvino(onnx_path, xn, calibn, threads, True, "bf16"))
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times.get("fp32 eager", [float("nan")]))
    # The share of the machine's peak for the arithmetic each path uses: the network's
    # conv/matmul FLOPs (one count; int8 paths do the same multiply-adds in int8) over the
    # median time, against the measured fp32 or int8 GEMM peak of this process.
    with torch.inference_mode():
        flops = count_flops(lambda: model(x))
    peaks = {"fp32": matmul_peak(torch.float32), "int8": int8_peak(),
             "bf16": matmul_peak(torch.bfloat16) if native_bf16 else None}
    if peaks["int8"] is not None and peaks["int8"] < peaks["fp32"]:
        # torch._int_mm below fp32 is a fallback kernel, not the CPU's int8 rate (seen on an
        # AVX2 CPU without VNNI: 0 GOP/s); no share of it means anything.
        print(f"int8 GEMM (torch._int_mm, oneDNN's int8 convolution) ran at "
              f"{peaks['int8']:.1f} GOP/s, below fp32: no fast "
              f"int8 GEMM for this CPU in this build, so no int8 peak")
        peaks["int8"] = None
    ort_peaks = ort_gemm_peaks(threads) if "int8 ort" in times else None
    if ort_peaks:
        peaks["ort int8"] = ort_peaks["int8"]
        # The other int8 rows are held to the best int8 GEMM this process saw: torch._int_mm
        # varies by a third from run to run on a Zen 5 (1440-2093 GOP/s at 2048), and OpenVINO
        # ran above its lower readings.
        peaks["int8"] = max(p for p in (peaks["int8"], ort_peaks["int8"]) if p is not None)
        print(f"ONNX Runtime GEMM at 2048: fp32 {ort_peaks['fp32']:.0f} GFLOP/s, int8 "
              f"(u8 x s8) {ort_peaks['int8']:.0f} GOP/s = {ort_peaks['int8'] / ort_peaks['fp32']:.2f}x "
              f"fp32: the most its int8 convolutions can gain over fp32 arithmetic")
    print(f"\n{args.arch} {s}x{s}, {args.classes} classes, batch 1, {threads} threads, "
          f"{args.rounds} alternating rounds; {flops / 1e9:.1f} GFLOP per image; measured "
          f"GEMM peak fp32 {peaks['fp32']:.0f} GFLOP/s, int8 "
          + ("n/a" if peaks["int8"] is None else f"{peaks['int8']:.0f} GOP/s")
          + ("" if peaks["bf16"] is None else f", bf16 {peaks['bf16']:.0f} GFLOP/s"))
    print("| path | median ms | min ms | vs fp32 eager | G(FL)OP/s | % of peak |\n"
          "|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = flops / (med / 1e3) / 1e9
        peak = peaks.get("ort int8") if name == "int8 ort" else peaks[
            "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"]
        share = "n/a" if peak is None else f"{100 * rate / peak:.0f}%"
        print(f"| {name} | {med:.0f} | {min(ts):.0f} | {base / med:.2f}x | {rate:.0f} | "
              f"{share} |")


if __name__ == "__main__":
    main()
