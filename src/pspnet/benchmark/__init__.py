"""``pspnet benchmark``: every fast path next to a plain fp32 eager run, in one process.

For each case the report gives the median latency over ``repeats`` timed runs after
``warmup`` runs, GFLOP/s (FLOPs counted once with ``torch.utils.flop_counter``), the fraction of
the matrix-multiply peak this process measures itself (fp32 or bf16 GEMM, 4096^3, all threads),
and peak resident memory during the case (Linux: VmHWM, reset between cases through
``/proc/self/clear_refs``). Variants take turns per repeat, so drift of a noisy host hits all of
them alike.

The cases live in :mod:`pspnet.benchmark.timing`; the data pipeline case
(:func:`bench_data_pipeline`, :mod:`pspnet.benchmark.data_pipeline`) times the training
DataLoader (the real data set and augmentation: CamVid when ``camvid_root`` or
``$PSPNET_CAMVID`` names a copy, else generated scenes) with 0, 1 and 2 workers and sets its
images/s against a training step's at the same crop and batch. This module runs them and
writes the report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pspnet.benchmark.data_pipeline import (
    CAMVID_ENV,
    bench_data_pipeline,
    camvid_location,
    camvid_missing,
    find_camvid_root,
)
from pspnet.benchmark.timing import (
    INFERENCE_VARIANTS,
    BenchResult,
    bench_inference,
    bench_sliding,
    bench_train_step,
    count_flops,
    int8_conv_peak,
    int8_gemm_is_fast,
    matmul_peak,
)
from pspnet.precision import cpu_has_native_bf16
from pspnet.report.machine import cpu_model

__all__ = ["BenchResult", "int8_conv_peak", "int8_gemm_is_fast", "matmul_peak", "count_flops",
           "run_benchmark",
           "format_markdown", "bench_data_pipeline", "find_camvid_root", "camvid_missing",
           "camvid_location", "CAMVID_ENV", "INFERENCE_VARIANTS", "bench_inference",
           "bench_sliding",
           "bench_train_step", "allocator_path", "machine_info", "save"]


ALLOCATORS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}


def allocator_path(name: str) -> str | None:
    """Path of a malloc replacement library (Debian: libtcmalloc-minimal4, libjemalloc2)."""
    import glob

    for lib in ALLOCATORS.get(name, ()):
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib",
                  "/usr/local/lib"):
            hits = glob.glob(f"{d}/{lib}")
            if hits:
                return hits[0]
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_model(platform.processor() or ""),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "allocator_preload": os.environ.get("LD_PRELOAD", ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_benchmark(
    *,
    arch: str = "pspnet50",
    sizes: tuple[int, ...] = (473, 713),
    variants: tuple[str, ...] = INFERENCE_VARIANTS,
    sliding: bool = True,
    train: bool = True,
    cpu_archs: bool = True,
    num_classes: int = 150,
    warmup: int = 2,
    repeats: int = 5,
    gemm_size: int = 4096,
    progress: Callable[[str], None] | None = print,
    data: bool = True,
    data_options: dict[str, Any] | None = None,
    device: str = "cpu",
    labels: bool = False,
) -> dict[str, Any]:
    """Run the selected cases; returns ``{"machine", "peaks", "results"}``.

    With ``labels`` every inference variant is timed predicting labels too
    (:func:`bench_inference`).

    With ``data`` the training data pipeline is timed too (:func:`bench_data_pipeline`, called
    with ``data_options``); its summary and verdict are under ``"data_pipeline"``. On a CUDA
    ``device`` only the inference cases run there (fp16 too); the sliding, training and data
    cases are CPU cases and are skipped.
    """
    say = progress or (lambda s: None)
    if device.startswith("cuda"):
        return _run_cuda(arch, sizes, variants, num_classes, warmup, repeats, gemm_size, say,
                         device, labels)
    native_bf16 = cpu_has_native_bf16()
    if not native_bf16:
        # Emulated bf16 is several times slower than fp32: timing it only wastes the run.
        dropped = [v for v in variants if v.startswith("bf16")]
        variants = tuple(v for v in variants if not v.startswith("bf16"))
        if dropped:
            say(f"this CPU has no native bf16 (no AVX512-BF16/AMX): skipping {', '.join(dropped)}")
    peaks = {"fp32": matmul_peak(torch.float32, gemm_size)}
    peaks["bf16"] = matmul_peak(torch.bfloat16, gemm_size) if native_bf16 else peaks["fp32"]
    if "int8-compile" in variants:
        peaks["int8"] = int8_peak(gemm_size, peaks["fp32"])
    say(f"GEMM peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
        + ("" if native_bf16 else " (bf16 not native: fp32 peak used)")
        + (f", int8 {peaks['int8']:.0f} GOP/s" if "int8" in peaks else ""))
    results: list[BenchResult] = []

    def add(rs: list[BenchResult]) -> None:
        for r in rs:
            say(f"{r.case:<42} {r.variant:<18} {r.ms:9.1f} ms  x{r.speedup:4.2f}  "
                f"{r.gflops:7.0f} GFLOP/s  {100 * r.peak_fraction:5.1f}% peak  "
                f"{r.peak_rss_mib or 0:7.0f} MiB")
        results.extend(rs)

    for size in sizes:
        add(bench_inference(arch, size, variants, num_classes=num_classes, warmup=warmup,
                            repeats=repeats, peaks=peaks, labels=labels))
    fast = "bf16-folded" if native_bf16 else "fp32-folded"
    if sliding:
        add(bench_sliding(arch, num_classes=19, variants=("fp32-eager", fast),
                          warmup=warmup, repeats=repeats))
    if train:
        add(bench_train_step(arch, num_classes=num_classes, crop=(473, 473), batch=2,
                             warmup=1, repeats=max(2, repeats // 2), peaks=peaks))
    if cpu_archs:
        add(bench_train_step("pspnet_r18", num_classes=11, crop=(320, 320), batch=8,
                             warmup=1, repeats=max(2, repeats // 2), peaks=peaks,
                             head_channels=256))
    pipeline = None
    if data:
        rows, pipeline = bench_data_pipeline(peaks=peaks, **(data_options or {}))
        add(rows)
        say(f"data pipeline ({pipeline['source']}): {pipeline['verdict']}")
    info = {**machine_info(), "native_bf16": native_bf16}
    doc = {"machine": info, "peaks": peaks, "results": [asdict(r) for r in results]}
    if pipeline is not None:
        doc["data_pipeline"] = pipeline
    return doc


def _run_cuda(
    arch: str, sizes: tuple[int, ...], variants: tuple[str, ...], num_classes: int, warmup: int,
    repeats: int, gemm_size: int, say: Callable[[str], None], device: str, labels: bool = False,
) -> dict[str, Any]:
    """:func:`run_benchmark`'s inference cases on a CUDA device (GEMM peaks measured there)."""
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available in this torch build "
                         f"({torch.__version__}); use --device cpu or install a CUDA build")
    # cuDNN runs float32 convolutions on TF32 tensor cores unless told not to (PyTorch's
    # default), so the fp32 peak is measured with the same arithmetic: a plain-fp32 GEMM peak
    # would put fp32 eager above 100% of it.
    tf32 = torch.backends.cudnn.allow_tf32
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        peaks = {d: matmul_peak(getattr(torch, t), gemm_size, device=device)
                 for d, t in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    say("GEMM peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + (" (fp32 as TF32, as cuDNN runs fp32 convolutions)" if tf32 else ""))
    results: list[BenchResult] = []
    for size in sizes:
        for r in bench_inference(arch, size, variants, num_classes=num_classes, warmup=warmup,
                                 repeats=repeats, peaks=peaks, device=device, labels=labels):
            say(f"{r.case:<42} {r.variant:<18} {r.ms:9.1f} ms  x{r.speedup:4.2f}  "
                f"{100 * r.peak_fraction:5.1f}% peak")
            results.append(r)
    info = {**machine_info(), "device": torch.cuda.get_device_name(device),
            "native_bf16": torch.cuda.is_bf16_supported(), "fp32_as_tf32": tf32}
    return {"machine": info, "peaks": peaks, "results": [asdict(r) for r in results]}


def format_markdown(doc: dict[str, Any]) -> str:
    """A Markdown table of a :func:`run_benchmark` result."""
    m = doc["machine"]
    gpu = bool(m.get("device"))
    if gpu:  # a CUDA run: the GPU did the work, the CPU only fed it
        machine = (f"Device: {m['device']} (host: {m['cpu']}, {m['threads']} threads), "
                   f"torch {m['torch']}, {m['date']}.")
    else:
        machine = (f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']} "
                   f"({m['cpu_capability']}, native bf16: {m.get('native_bf16')}), {m['date']}.")
    peaks = ", ".join(f"{k} {v:.0f} {'GOP/s' if k == 'int8' else 'GFLOP/s'}"
                      for k, v in doc["peaks"].items())
    lines = [
        machine,
        f"Measured GEMM peak: {peaks}"
        + (" (fp32 as TF32, the arithmetic cuDNN uses for fp32 convolutions)."
           if m.get("fp32_as_tf32") else "."),
        "",
        "| case | variant | ms (median) | min-max | speed-up vs fp32 eager | GFLOP/s | % of peak | "
        f"{'GPU peak MiB' if gpu else 'peak RSS MiB'} | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if r["variant"].startswith("loader "):
            continue  # the data pipeline's own table below
        notes = ", ".join(f"{k} {v}" for k, v in r["extra"].items() if v and k != "gpu_peak_mib")
        # On a GPU the device's memory is the one that runs out, not the host's resident set.
        mem = r["extra"].get("gpu_peak_mib") if gpu else r["peak_rss_mib"]
        lines.append(
            f"| {r['case']} | {r['variant']} | {_ms(r['ms'])} | "
            f"{_ms(r['ms_min'])}-{_ms(r['ms_max'])} | {r['speedup']:.2f}x | {r['gflops']:.0f} | "
            f"{100 * r['peak_fraction']:.0f}% | "
            f"{(mem or 0):.0f} | {notes} |"
        )
    if doc.get("data_pipeline"):
        lines += ["", *_data_pipeline_markdown(doc["data_pipeline"])]
    return "\n".join(lines) + "\n"


def int8_peak(gemm_size: int, fp32: float) -> float:
    """The peak an int8 row is held to: the faster of two int8 GEMMs, and never below fp32's.

    ``torch._int_mm`` (s8 x s8 -> s32) and oneDNN's quantized 1x1 convolution
    (:func:`~pspnet.benchmark.timing.int8_conv_peak`; AMX-INT8 on Xeons that have it, where
    ``_int_mm`` runs at half its rate). ``_int_mm`` is skipped where it is slower than fp32 at
    a small size (a fallback kernel, not the CPU's int8 rate, and minutes to time at full size:
    seen on an AVX2 CPU without VNNI). ``fp32`` is the fp32 GEMM peak already measured: the
    floor, where this build has no int8 kernel faster than fp32.
    """
    conv = int8_conv_peak(gemm_size)
    if not int8_gemm_is_fast():
        return max(conv, fp32)
    return max(matmul_peak(torch.int8, gemm_size), conv, fp32)


def _ms(ms: float) -> str:
    """Milliseconds with the digits that matter: whole ms on a CPU, tenths or hundredths on a
    GPU."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _data_pipeline_markdown(p: dict[str, Any]) -> list[str]:
    """The data pipeline section: loader images/s per worker count against the step's."""
    step = p["train_step"]
    crop = f"{p['crop'][0]}x{p['crop'][1]}"
    lines = [
        f"Data pipeline: the training DataLoader on {p['source']} ({p['images']} images in "
        f"`{p['root']}`), crop {crop}, batch {p['batch']}, {p['augmentation']}; "
        f"{p['batches_timed']} batches timed per row, the loader read on its own (no training "
        "step beside it). Training step: "
        f"{step['arch']} ({', '.join(f'{k} {v}' for k, v in step['model'].items())}), "
        f"{step['variant']}, {step['ms']:.0f} ms = **{step['images_per_s']:.1f} images/s**.",
        "",
        "| workers | images/s | ms per batch | first batch s | x the step's images/s | "
        "keeps up |",
        "|---|---|---|---|---|---|",
    ]
    for s in p["loader"]:
        if s["workers"] == 0:
            keeps = f"serial: adds {100 * s['step_share']:.0f}% to each step"
        else:
            keeps = "yes" if s["keeps_up"] else "**no**"
        lines.append(f"| {s['workers']} | {s['images_per_s']:.1f} | {s['ms_per_batch']:.0f} | "
                     f"{s['first_batch_s']:.2f} | {s['x_step']:.1f}x | {keeps} |")
    lines += ["", f"Verdict at {p['verdict_workers']} worker(s) (pspnet train's default here: "
              f"{p['default_workers']}): {p['verdict']}. Workers share the cores with the step, "
              "which these standalone numbers do not include."]
    return lines


def save(doc: dict[str, Any], json_path: str | Path | None, md_path: str | Path | None) -> None:
    """Write the JSON and/or Markdown forms."""
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if md_path:
        Path(md_path).write_text(format_markdown(doc))
