"""The timed cases of ``pspnet benchmark``: inference variants, sliding window, training step.

Each case gives the median latency over ``repeats`` timed runs after ``warmup`` runs, GFLOP/s
(FLOPs counted once with ``torch.utils.flop_counter``), the fraction of the measured GEMM peak
and the peak resident memory during the case (Linux: VmHWM, reset between cases through
``/proc/self/clear_refs``); on a CUDA device also the device memory each inference case held
at its peak.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.inference import predict_labels, predict_sliding
from pspnet.models import create_model
from pspnet.models.fuse import optimize_for_inference
from pspnet.precision import cpu_has_native_bf16

__all__ = ["BenchResult", "INFERENCE_VARIANTS", "matmul_peak", "count_flops", "bench_inference",
           "bench_sliding", "bench_train_step", "reset_peak_rss", "peak_rss_mib"]

INFERENCE_VARIANTS = ("fp32-eager", "fp32-folded", "fp32-compile", "bf16-cl", "bf16-folded",
                      "bf16-compile")


@dataclass
class BenchResult:
    """One timed case."""

    case: str
    variant: str
    ms: float
    ms_min: float
    ms_max: float
    gflop: float
    gflops: float
    peak_fraction: float
    peak_rss_mib: float | None
    speedup: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GEMM throughput in G(FL)OP/s for ``dtype`` on ``device`` (best of ``repeats``).

    The best run, not the median: a peak is what the arithmetic can reach, and on a shared host
    the median of the same GEMM wandered by a quarter between runs (Zen 5, fp32: 381-541).

    ``torch.int8``: s8 x s8 products summed in int32 through ``torch._int_mm``, the oneDNN
    kernel PT2E's quantized convolutions also reach (GOP/s). Floating point on the CPU: the
    faster of ``a @ b`` and a GEMM run as a channels-last 1x1 convolution (n pixels, n/4
    channels in and out), because the network's convolutions run in oneDNN while ``a @ b``
    runs in MKL, which on AMD CPUs takes a slower code path (Zen 5, AVX-512, 2 cores: fp32
    ``a @ b`` at 4096 217 GFLOP/s, the convolution 515, the network's compiled convolutions
    379; a peak below what the network reaches would put its share above 100 %).

    Raises:
        RuntimeError: ``torch.int8`` where this build has no int8 matmul on ``device``.
    """
    if dtype == torch.int8:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        return _gemm_rate(lambda: torch._int_mm(a, b), 2 * n**3, repeats, device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    rate = _gemm_rate(lambda: torch.matmul(a, b), 2 * n**3, repeats, device)
    if device != "cpu":
        return rate
    # n pixels of k = n/4 channels through a (k, k, 1, 1) weight: k x k weights stay in cache as
    # the network's do (at n = 4096 an n x n fp32 weight of 64 MB does not: 417 against 515
    # GFLOP/s on the Zen 5 above).
    k = max(n // 4, 1)
    x = torch.randn(1, 1, n, k).to(dtype).permute(0, 3, 1, 2)  # (1, k, 1, n), channels-last
    w = torch.randn(k, k, 1, 1).to(dtype)
    # At least 10 runs: one takes ~20 ms at n = 4096, and the best of 5 still varied 410-525.
    conv = _gemm_rate(lambda: F.conv2d(x, w), 2 * n * k * k, max(repeats, 10), device)
    return max(rate, conv)


def _gemm_rate(mm: Callable[[], torch.Tensor], flops: float, repeats: int, device: str) -> float:
    """G(FL)OP/s of ``mm``, which does ``flops`` operations (a multiply-add counts 2): the
    best of ``repeats`` after a warm-up."""
    mm()  # warm-up (oneDNN/AMX kernel selection)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        mm()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return flops / min(times) / 1e9


def int8_conv_peak(n: int = 4096, repeats: int = 10) -> float:
    """The int8 rate (GOP/s) of oneDNN's quantized 1x1 convolution, or 0.0 where there is none.

    u8 activations (n pixels, channels-last) times s8 weights (n/4 channels in and out), the
    kernel PT2E's int8 convolutions run. ``torch._int_mm`` is not the CPU's int8 rate
    everywhere: on an AMX Xeon it ran at 2501-3275 GOP/s, about bf16's rate, while this
    convolution reached 5321 (AMX-INT8) and OpenVINO's int8 network 2226 GOP/s over the whole
    network (2026-12-05): held to ``_int_mm`` alone, int8 rows read about twice their share.
    Reached through ``torch.ao.nn.quantized``, the one public API that calls it directly.
    """
    try:
        import torch.ao.nn.quantized as nnq
    except ImportError:
        return 0.0
    engine = next((e for e in ("onednn", "x86") if e in torch.backends.quantized.supported_engines),
                  None)
    if engine is None:
        return 0.0
    k = max(n // 4, 1)
    before = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            # Quantized tensors are deprecated for new models; here they only reach the kernel.
            warnings.simplefilter("ignore")
            conv = nnq.Conv2d(k, k, 1)
            conv.set_weight_bias(
                torch.quantize_per_tensor(torch.randn(k, k, 1, 1), 0.01, 0, torch.qint8), None)
            x = torch.quantize_per_tensor(torch.rand(1, k, 1, n), 0.01, 0, torch.quint8)
            x = x.contiguous(memory_format=torch.channels_last)  # (1, k, 1, n), NHWC
            return _gemm_rate(lambda: conv(x), 2 * n * k * k, max(repeats, 10), "cpu")
    except (RuntimeError, NotImplementedError):
        return 0.0
    finally:
        torch.backends.quantized.engine = before


def int8_gemm_is_fast(probe: int = 256) -> bool:
    """Whether ``torch._int_mm`` beats fp32 on this CPU at a small size (cheap to ask).

    Where it does not (an AVX2 CPU without VNNI ran a fallback kernel at under 1 GOP/s), its
    large-size peak is no int8 rate and would take minutes to measure.
    """
    try:
        return matmul_peak(torch.int8, probe, repeats=3) > matmul_peak(torch.float32, probe,
                                                                       repeats=3)
    except RuntimeError:
        return False


def _sync(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (convs and matmuls; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _time(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: host noise hits every variant alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


#: optimize_for_inference options of each variant but the baseline (fp32 eager: the model as is).
_VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    "fp32-folded": {"precision": "fp32"},
    "fp32-compile": {"precision": "fp32", "compile": True},
    "bf16-cl": {"precision": "bf16", "fold_bn": False},
    "bf16-folded": {"precision": "bf16"},
    "bf16-compile": {"precision": "bf16", "compile": True},
    "fp16-folded": {"precision": "fp16"},
    "fp16-compile": {"precision": "fp16", "compile": True},
}


def _inference_variant(model: nn.Module, variant: str, x: torch.Tensor | None = None, *,
                       inplace: bool = False) -> nn.Module:
    """``model`` as ``variant`` runs it; ``inplace``: convert ``model`` itself (the caller's
    copy)."""
    if variant == "fp32-eager":
        return model
    if variant == "int8-compile" and x is not None:
        # Calibrated on the timing input itself: this case measures speed; accuracy is
        # bench/int8_camvid.py's (real calibration images).
        from pspnet.models.quantize import quantize_pt2e

        return quantize_pt2e(model, [x.cpu()])
    if variant in _VARIANT_OPTIONS:
        return optimize_for_inference(model, **_VARIANT_OPTIONS[variant], inplace=inplace)
    raise ValueError(f"unknown variant {variant!r}; choices: {', '.join(INFERENCE_VARIANTS)}")


def bench_inference(
    arch: str, size: int, variants: tuple[str, ...], *, num_classes: int, warmup: int,
    repeats: int, peaks: dict[str, float], device: str = "cpu", labels: bool = False,
) -> list[BenchResult]:
    """Batch-1 inference at ``size`` x ``size`` for each variant (fp32 eager is the baseline).

    ``labels``: each variant is also timed predicting class labels with
    :func:`pspnet.inference.predict_labels` (what ``pspnet predict`` / ``evaluate`` / ``serve``
    run; compiled CPU and int8 models find them without full-size logits), as the case
    ``"<arch> labels <size>x<size> b1"``, its speed-up against fp32 eager's labels.

    On a CUDA ``device`` each variant is built from its own copy of the weights moved there, and
    the case's ``extra["gpu_peak_mib"]`` is the device memory it held at its peak in the timed
    calls: its weights plus the activations of one call (nothing of the other variants, which
    are freed first, nor the warm-up's one-off compiling and algorithm search).
    """
    cuda = device.startswith("cuda")
    # On a GPU the baseline weights stay on the host, so one variant's memory is its own.
    model = create_model(arch, num_classes, aux=False).eval().to("cpu" if cuda else device)
    x = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode():
        flops = count_flops(lambda: (copy.deepcopy(model).to(device) if cuda else model)(x))
    results: list[BenchResult] = []
    label_results: list[BenchResult] = []
    base_ms = None
    for variant in ("fp32-eager",) + tuple(v for v in variants if v != "fp32-eager"):
        if cuda:
            # Converted in place: the copy is this variant's own, a second one is not needed.
            m = _inference_variant(copy.deepcopy(model).to(device), variant, x, inplace=True)
        else:
            m = _inference_variant(model, variant, x)
        reset_peak_rss()

        def run(m: nn.Module = m) -> None:
            with torch.inference_mode():
                m(x)["out"]
            if cuda:
                torch.cuda.synchronize()

        for _ in range(warmup):
            run()
        if cuda:
            # After the warm-up: compiling and cuDNN's first-call algorithm search allocate
            # once; the peak that matters is the one every call reaches.
            torch.cuda.reset_peak_memory_stats(device)
        t = _time({variant: run}, 0, repeats)[variant]
        extra = {"compile_s": round(getattr(m, "compile_seconds", 0.0), 1)}
        if cuda:
            extra["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        arith = variant.split("-")[0]
        peak = peaks.get(arith, peaks["bf16" if arith == "fp16" else "fp32"])
        results.append(_row(f"{arch} inference {size}x{size} b1", variant, t, flops, peak,
                            base_ms, extra))
        base_ms = base_ms or results[0].ms
        if labels:
            label_results.append(_time_labels(m, x, variant, f"{arch} labels {size}x{size} b1",
                                              flops, peak, warmup, repeats, cuda, label_results))
        del m
        if cuda:
            # A compiled graph keeps its frozen weights alive in dynamo's cache until reset.
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
    return results + label_results


def _time_labels(
    m: nn.Module, x: torch.Tensor, variant: str, case: str, flops: float, peak: float,
    warmup: int, repeats: int, cuda: bool, earlier: list[BenchResult],
) -> BenchResult:
    """One variant predicting labels; the speed-up is against the first (fp32 eager) row."""
    reset_peak_rss()  # the row's peak: these calls, over what the variant holds

    def run() -> None:
        with torch.inference_mode():
            predict_labels(m, x)
        if cuda:
            torch.cuda.synchronize()

    t = _time({variant: run}, warmup, repeats)[variant]
    return _row(case, variant, t, flops, peak, earlier[0].ms if earlier else None,
                {"compile_s": round(getattr(m, "compile_seconds", 0.0), 1)})


def _row(case: str, variant: str, times: list[float], flops: float, peak: float,
         base_ms: float | None, extra: dict[str, Any]) -> BenchResult:
    """One inference row from its timed runs (s); ``base_ms`` None: this row is the base."""
    ms = statistics.median(times) * 1e3
    return BenchResult(
        case=case, variant=variant, ms=ms, ms_min=min(times) * 1e3, ms_max=max(times) * 1e3,
        gflop=flops / 1e9, gflops=flops / 1e9 / (ms / 1e3),
        peak_fraction=flops / (ms / 1e3) / (peak * 1e9), peak_rss_mib=peak_rss_mib(),
        speedup=(base_ms or ms) / ms, extra=extra,
    )


def bench_sliding(
    arch: str, *, num_classes: int, variants: tuple[str, ...], warmup: int, repeats: int,
    height: int = 1024, width: int = 2048, crop: int = 713, batch_size: int = 2,
) -> list[BenchResult]:
    """Sliding-window inference of one large image (crop 713, stride 2/3, crops batched)."""
    model = create_model(arch, num_classes, aux=False).eval()
    x = torch.randn(1, 3, height, width)
    results = []
    base_ms = None
    for variant in variants:
        m = _inference_variant(model, variant)
        reset_peak_rss()

        def run(m: nn.Module = m) -> None:
            with torch.inference_mode():
                predict_sliding(m, x, crop_size=(crop, crop), num_classes=num_classes,
                                batch_size=batch_size)

        t = _time({variant: run}, min(warmup, 1), max(1, repeats // 2))[variant]
        ms = statistics.median(t) * 1e3
        base_ms = base_ms or ms
        results.append(BenchResult(
            case=f"{arch} sliding {width}x{height} crop {crop}", variant=variant, ms=ms,
            ms_min=min(t) * 1e3, ms_max=max(t) * 1e3, gflop=0.0, gflops=0.0, peak_fraction=0.0,
            peak_rss_mib=peak_rss_mib(), speedup=base_ms / ms,
        ))
        del m
    return results


def bench_train_step(
    arch: str, *, num_classes: int, crop: tuple[int, int], batch: int, warmup: int,
    repeats: int, peaks: dict[str, float], head_channels: int = 512, **model_options: Any,
) -> list[BenchResult]:
    """One SGD step (forward with aux, loss, backward, update): fp32 eager vs bf16 autocast+CL.

    ``model_options`` are further :class:`~pspnet.config.ModelConfig` fields (e.g.
    ``output_stride=16`` for the CPU recipe).
    """
    results = []
    base_ms = None
    torch.manual_seed(0)
    x = torch.randn(batch, 3, *crop)
    y = torch.randint(0, num_classes, (batch, *crop))
    flops = None
    train_variants = ["fp32-eager"] + (["bf16-autocast-cl"] if cpu_has_native_bf16() else [])
    for variant in train_variants:
        torch.manual_seed(0)
        model = create_model(arch, num_classes, head_channels=head_channels,
                             **model_options).train()
        xx = x
        if variant != "fp32-eager":
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        amp = variant != "fp32-eager"

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt, xx: torch.Tensor = xx,
                 amp: bool = amp) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(xx)
                loss = F.cross_entropy(out["out"].float(), y, ignore_index=255) + 0.4 * \
                    F.cross_entropy(out["aux"].float(), y, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if flops is None:
            flops = count_flops(step)
        reset_peak_rss()
        t = _time({variant: step}, warmup, repeats)[variant]
        ms = statistics.median(t) * 1e3
        base_ms = base_ms or ms
        peak = peaks["bf16" if amp else "fp32"]
        results.append(BenchResult(
            case=f"{arch} train step {crop[0]}x{crop[1]} b{batch}", variant=variant, ms=ms,
            ms_min=min(t) * 1e3, ms_max=max(t) * 1e3, gflop=flops / 1e9,
            gflops=flops / 1e9 / (ms / 1e3), peak_fraction=flops / (ms / 1e3) / (peak * 1e9),
            peak_rss_mib=peak_rss_mib(), speedup=base_ms / ms,
            extra={"ms_per_image": round(ms / batch, 1)},
        ))
    return results
