"""``pspnet benchmark``: every fast path next to a plain fp32 eager run, in one process.

For each case the report gives the median latency over ``repeats`` timed runs after
``warmup`` runs, GFLOP/s (FLOPs counted once with ``torch.utils.flop_counter``), the fraction of
the matrix-multiply peak this process measures itself (fp32 or bf16 GEMM, 4096^3, all threads),
and peak resident memory during the case (Linux: VmHWM, reset between cases through
``/proc/self/clear_refs``). Variants take turns per repeat, so drift of a noisy host hits all of
them alike.

The data pipeline case (:func:`bench_data_pipeline`) times the training DataLoader (the real
data set and augmentation, CamVid when found, else generated scenes) with 0, 1 and 2 workers
and sets its images/s against a training step's at the same crop and batch.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.precision import cpu_has_native_bf16
from pspnet.inference import predict_sliding
from pspnet.models import create_model
from pspnet.models.fuse import optimize_for_inference

__all__ = ["BenchResult", "matmul_peak", "count_flops", "run_benchmark", "format_markdown",
           "bench_data_pipeline", "find_camvid_root"]

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


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured GEMM throughput in GFLOP/s for ``dtype`` (median of ``repeats``)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up (oneDNN/AMX kernel selection)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


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


def _inference_variant(model: nn.Module, variant: str) -> nn.Module:
    if variant == "fp32-eager":
        return model
    if variant == "fp32-folded":
        return optimize_for_inference(model, precision="fp32")
    if variant == "fp32-compile":
        return optimize_for_inference(model, precision="fp32", compile=True)
    if variant == "bf16-cl":
        return optimize_for_inference(model, precision="bf16", fold_bn=False)
    if variant == "bf16-folded":
        return optimize_for_inference(model, precision="bf16")
    if variant == "bf16-compile":
        return optimize_for_inference(model, precision="bf16", compile=True)
    if variant == "fp16-compile":
        return optimize_for_inference(model, precision="fp16", compile=True)
    raise ValueError(f"unknown variant {variant!r}; choices: {', '.join(INFERENCE_VARIANTS)}")


def bench_inference(
    arch: str, size: int, variants: tuple[str, ...], *, num_classes: int, warmup: int,
    repeats: int, peaks: dict[str, float], device: str = "cpu",
) -> list[BenchResult]:
    """Batch-1 inference at ``size`` x ``size`` for each variant (fp32 eager is the baseline)."""
    model = create_model(arch, num_classes, aux=False).eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode():
        flops = count_flops(lambda: model(x))
    results = []
    base_ms = None
    for variant in ("fp32-eager",) + tuple(v for v in variants if v != "fp32-eager"):
        m = _inference_variant(model, variant)
        _reset_peak_rss()

        def run(m: nn.Module = m) -> None:
            with torch.inference_mode():
                m(x)["out"]
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        t = _time({variant: run}, warmup, repeats)[variant]
        ms = statistics.median(t) * 1e3
        base_ms = base_ms or ms
        peak = peaks["bf16" if "bf16" in variant or "fp16" in variant else "fp32"]
        results.append(BenchResult(
            case=f"{arch} inference {size}x{size} b1", variant=variant, ms=ms,
            ms_min=min(t) * 1e3, ms_max=max(t) * 1e3, gflop=flops / 1e9,
            gflops=flops / 1e9 / (ms / 1e3), peak_fraction=flops / (ms / 1e3) / (peak * 1e9),
            peak_rss_mib=_peak_rss_mib(), speedup=base_ms / ms,
            extra={"compile_s": round(getattr(m, "compile_seconds", 0.0), 1)},
        ))
        del m
    return results


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
        _reset_peak_rss()

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
            peak_rss_mib=_peak_rss_mib(), speedup=base_ms / ms,
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
        _reset_peak_rss()
        t = _time({variant: step}, warmup, repeats)[variant]
        ms = statistics.median(t) * 1e3
        base_ms = base_ms or ms
        peak = peaks["bf16" if amp else "fp32"]
        results.append(BenchResult(
            case=f"{arch} train step {crop[0]}x{crop[1]} b{batch}", variant=variant, ms=ms,
            ms_min=min(t) * 1e3, ms_max=max(t) * 1e3, gflop=flops / 1e9,
            gflops=flops / 1e9 / (ms / 1e3), peak_fraction=flops / (ms / 1e3) / (peak * 1e9),
            peak_rss_mib=_peak_rss_mib(), speedup=base_ms / ms,
            extra={"ms_per_image": round(ms / batch, 1)},
        ))
    return results


#: The CPU recipe's training step (configs/camvid_cpu.yaml): what the data pipeline must feed.
CPU_RECIPE_MODEL: dict[str, Any] = {"arch": "pspnet_r18", "output_stride": 16,
                                    "head_channels": 256, "aux_channels": 256}
#: The CPU recipe's crop on CamVid (height, width) and its batch.
CAMVID_CROP = (240, 320)
CPU_RECIPE_BATCH = 8
#: Side of the generated scenes when CamVid is not available (the demo's default size).
SCENES_SIZE = 256
DATA_SOURCES = ("auto", "camvid", "scenes")


#: Environment variable naming the prepared CamVid copy.
CAMVID_ENV = "PSPNET_CAMVID"
#: Where CamVid is looked for when ``$PSPNET_CAMVID`` is not set: beside the checkout.
DEFAULT_CAMVID_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"


def camvid_missing(splits: tuple[str, ...] = ("train",)) -> tuple[Path, list[str]]:
    """Where CamVid is looked for and what it lacks (empty when usable).

    The place is ``$PSPNET_CAMVID`` when set, else :data:`DEFAULT_CAMVID_ROOT`; a usable copy
    holds ``classes.txt``, ``<split>.txt`` for each of ``splits``, ``images/`` and ``labels/``.
    ``bench/*.py`` and the data pipeline case share this rule.
    """
    env = os.environ.get(CAMVID_ENV)
    root = Path(env).expanduser() if env else DEFAULT_CAMVID_ROOT
    needed = ["classes.txt", *(f"{s}.txt" for s in splits), "images", "labels"]
    return root, [n for n in needed if not (root / n).exists()]


def find_camvid_root(splits: tuple[str, ...] = ("train",)) -> Path | None:
    """The prepared CamVid copy holding ``splits`` (see :func:`camvid_missing`), or None."""
    root, missing = camvid_missing(splits)
    return None if missing else root


def _train_pipeline(
    source: str, crop: tuple[int, int] | None, scenes_size: int, scenes_dir: Path | None,
    n_images: int,
) -> tuple[Any, Any, str, Path, tuple[int, int], int]:
    """``(config, train set, source, root, crop, num_classes)``: what ``pspnet train`` loads.

    The config is ``pspnet train``'s defaults for that data (the paper's random scale 0.5-2,
    rotation +-10 degrees, blur, flip, crop and normalisation), the set is the one the training
    loop builds from it; :func:`pspnet.data.training.training_loader` reads it as training does.
    """
    from pspnet.config import Config
    from pspnet.data.training import build_data

    if source not in DATA_SOURCES:
        raise ValueError(f"data source {source!r} is not one of {', '.join(DATA_SOURCES)} "
                         "(pspnet benchmark --data-source)")
    camvid = find_camvid_root() if source in ("auto", "camvid") else None
    if source == "camvid" and camvid is None:
        raise ValueError(
            "--data-source camvid: no prepared CamVid copy found (set PSPNET_CAMVID to its folder, "
            "which holds images/, labels/, train.txt and classes.txt, or put it at "
            "<repo>/../shared/data/camvid); or use --data-source scenes"
        )
    if camvid is not None:
        source, root, k = "camvid", camvid, 11
        crop = crop or CAMVID_CROP
        data = {"dataset": "camvid", "root": str(root), "train_split": "train", "val_split": ""}
    else:
        from pspnet.data.scenes import generate_scenes

        source, k = "scenes", 6
        crop = crop or (scenes_size, scenes_size)
        where = scenes_dir or Path(tempfile.gettempdir()) / "pspnet_bench"
        root = generate_scenes(where / f"scenes_{scenes_size}_{n_images}", n_train=n_images,
                               n_val=0, size=(scenes_size, scenes_size), progress=False)
        data = {"root": str(root), "train_list": str(root / "train.txt")}
    cfg = Config.from_dict({"model": {"num_classes": k}, "data": {**data, "crop_size": list(crop)}})
    return cfg, build_data(cfg).train, source, root, crop, k


def bench_data_pipeline(
    *,
    source: str = "auto",
    crop: tuple[int, int] | None = None,
    batch: int = CPU_RECIPE_BATCH,
    workers: tuple[int, ...] = (0, 1, 2),
    batches: int = 24,
    warmup_batches: int = 2,
    scenes_size: int = SCENES_SIZE,
    scenes_dir: str | Path | None = None,
    step_model: dict[str, Any] | None = None,
    step_repeats: int = 2,
    peaks: dict[str, float] | None = None,
) -> tuple[list[BenchResult], dict[str, Any]]:
    """Images/s of the training DataLoader with 0, 1, 2 workers next to the training step's.

    The loader is the one ``pspnet train`` builds (same data set, augmentation, batch sampler
    and DataLoader options), read on its own (no step beside it), so each number is the most
    that many workers deliver; ``batches`` batches are timed after ``warmup_batches`` (the first
    batch, which includes starting the workers, is reported separately as ``first_batch_s``).
    The training step (the CPU recipe's model, same crop and batch, forward + backward + SGD
    update; bf16 autocast + channels-last where the CPU has native bf16, as training's
    ``precision: auto``) is timed in the same process.

    A loader with ``w >= 1`` workers keeps up when it delivers at least the step's images/s
    (the workers run beside the step; on a small machine they share its cores, which this
    standalone number does not show). With 0 workers loading is serial: its time is added to
    every step (``step_share`` of the step + load time).

    Args:
        source: ``auto`` (CamVid when found, else generated scenes), ``camvid`` or ``scenes``.
        crop: Training crop (height, width); default the CPU recipe's (CamVid 240x320,
            scenes ``scenes_size`` square).
        batch: Images per batch (the recipe's 8).
        workers: DataLoader worker counts to time.
        batches: Batches timed per worker count.
        warmup_batches: Batches read before the timing starts.
        scenes_size: Side of the generated scenes.
        scenes_dir: Where generated scenes are cached (default: the temp folder).
        step_model: Model of the training step (default :data:`CPU_RECIPE_MODEL`).
        step_repeats: Timed training steps.
        peaks: GEMM peaks (for the step's % of peak); measured small when not given.

    Returns:
        ``(rows, summary)``: one :class:`BenchResult` per worker count and one for the step;
        the summary holds the images/s, the verdict and the data set used.
    """
    if batch < 2:
        raise ValueError(f"data pipeline batch must be at least 2 (BatchNorm), got {batch}")
    if batches < 1 or warmup_batches < 0 or not workers or any(w < 0 for w in workers):
        raise ValueError(f"need batches >= 1, warmup_batches >= 0 and at least one worker count "
                         f">= 0, got {batches}, {warmup_batches}, {tuple(workers)}")
    from pspnet.engine.distributed import TrainBatchSampler
    from pspnet.data.training import training_loader

    n_needed = (batches + warmup_batches) * batch
    cfg, train_set, source, root, crop, k = _train_pipeline(
        source, crop, scenes_size, Path(scenes_dir) if scenes_dir else None, n_needed)
    crop = (int(crop[0]), int(crop[1]))
    case = f"data pipeline {source} {crop[0]}x{crop[1]} b{batch}"
    rows: list[BenchResult] = []
    loader_stats = []
    for w in workers:
        sampler = TrainBatchSampler(len(train_set), batch, seed=0)
        loader = training_loader(cfg, train_set, sampler, num_workers=w)
        per_batch: list[float] = []
        epoch = 0
        _reset_peak_rss()
        t_start = time.perf_counter()
        sampler.set_epoch(epoch)
        it = iter(loader)
        first_s = None
        for i in range(warmup_batches + batches):
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:  # a small data set: the next epoch, as training does
                epoch += 1
                sampler.set_epoch(epoch)
                it = iter(loader)
                next(it)
            if first_s is None:
                first_s = time.perf_counter() - t_start
            if i >= warmup_batches:
                per_batch.append(time.perf_counter() - t0)
        del it, loader
        total = sum(per_batch)
        ips = batches * batch / total
        loader_stats.append({"workers": w, "images_per_s": ips,
                             "ms_per_batch": 1e3 * total / batches,
                             "first_batch_s": first_s, "epochs_started": epoch + 1})
        rows.append(BenchResult(
            case=case, variant=f"loader {w} worker{'s' if w != 1 else ''}",
            ms=1e3 * total / batches, ms_min=1e3 * min(per_batch), ms_max=1e3 * max(per_batch),
            gflop=0.0, gflops=0.0, peak_fraction=0.0, peak_rss_mib=_peak_rss_mib(),
            extra={"images_per_s": round(ips, 1), "first_batch_s": round(first_s or 0.0, 2)},
        ))
    # The step that consumes these batches.
    model = dict(step_model or CPU_RECIPE_MODEL)
    arch = model.pop("arch", "pspnet_r18")
    head = model.pop("head_channels", 256)
    if peaks is None:
        peaks = {"fp32": matmul_peak(torch.float32, 512)}
        # As run_benchmark: the bf16 step's "% of peak" needs the bf16 peak where bf16 is native.
        peaks["bf16"] = (matmul_peak(torch.bfloat16, 512) if cpu_has_native_bf16()
                         else peaks["fp32"])
    steps = bench_train_step(arch, num_classes=k, crop=crop, batch=batch, warmup=1,
                             repeats=step_repeats, peaks=peaks, head_channels=head, **model)
    step = steps[-1]  # what `precision: auto` trains with: bf16 where native, else fp32
    step_ips = batch / (step.ms / 1e3)
    for s in steps:
        s.case = f"{case} train step {arch}"
        s.extra["images_per_s"] = round(batch / (s.ms / 1e3), 2)
    for st, row in zip(loader_stats, rows):
        load_s = batch / st["images_per_s"]
        if st["workers"] == 0:
            st["step_share"] = load_s / (load_s + step.ms / 1e3)
            st["keeps_up"] = None  # serial: it cannot starve the step, it lengthens it
        else:
            st["keeps_up"] = st["images_per_s"] >= step_ips
        st["x_step"] = st["images_per_s"] / step_ips
        row.extra["x_step"] = round(st["x_step"], 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    default_w = min(2, cores)  # what `pspnet train` uses when data.num_workers is not set
    parallel = [s for s in loader_stats if s["workers"] >= 1]
    # Judged at the timed worker count nearest to what training uses on this machine.
    chosen = min(parallel, key=lambda s: (abs(s["workers"] - default_w), -s["workers"]),
                 default=None)
    if chosen is None:
        verdict = (f"only 0 workers timed: loading adds {100 * loader_stats[0]['step_share']:.0f}% "
                   "to each step")
    elif chosen["keeps_up"]:
        verdict = (f"the loader never starves the step: {chosen['workers']} worker(s) deliver "
                   f"{chosen['images_per_s']:.1f} images/s, {chosen['x_step']:.1f}x the "
                   f"{step_ips:.1f} images/s the training step consumes")
    else:
        verdict = (f"the loader STARVES the step: {chosen['workers']} worker(s) deliver "
                   f"{chosen['images_per_s']:.1f} images/s, less than the {step_ips:.1f} images/s "
                   "the training step consumes")
    summary = {
        "source": source, "root": str(root), "images": len(train_set), "crop": list(crop),
        "batch": batch, "batches_timed": batches,
        "augmentation": "random scale 0.5-2.0, rotate +-10 deg (p=0.5), 5x5 Gaussian blur "
                        "(p=0.5), horizontal flip (p=0.5), crop, normalise",
        "train_step": {"arch": arch, "variant": step.variant, "ms": step.ms,
                       "images_per_s": step_ips, "model": {"head_channels": head, **model}},
        "loader": loader_stats, "default_workers": default_w,
        "verdict_workers": chosen["workers"] if chosen else 0, "verdict": verdict,
    }
    return rows + steps, summary


ALLOCATORS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}


def allocator_path(name: str) -> str | None:
    """Path of a malloc replacement library (Debian: libtcmalloc-minimal4, libjemalloc2)."""
    import glob

    for lib in ALLOCATORS.get(name, ()):
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"):
            hits = glob.glob(f"{d}/{lib}")
            if hits:
                return hits[0]
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
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
) -> dict[str, Any]:
    """Run the selected cases; returns ``{"machine", "peaks", "results"}``.

    With ``data`` the training data pipeline is timed too (:func:`bench_data_pipeline`, called
    with ``data_options``); its summary and verdict are under ``"data_pipeline"``.
    """
    say = progress or (lambda s: None)
    native_bf16 = cpu_has_native_bf16()
    if not native_bf16:
        # Emulated bf16 is several times slower than fp32: timing it only wastes the run.
        dropped = [v for v in variants if v.startswith("bf16")]
        variants = tuple(v for v in variants if not v.startswith("bf16"))
        if dropped:
            say(f"this CPU has no native bf16 (no AVX512-BF16/AMX): skipping {', '.join(dropped)}")
    peaks = {"fp32": matmul_peak(torch.float32, gemm_size)}
    peaks["bf16"] = matmul_peak(torch.bfloat16, gemm_size) if native_bf16 else peaks["fp32"]
    say(f"GEMM peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
        + ("" if native_bf16 else " (bf16 not native: fp32 peak used)"))
    results: list[BenchResult] = []

    def add(rs: list[BenchResult]) -> None:
        for r in rs:
            say(f"{r.case:<42} {r.variant:<18} {r.ms:9.1f} ms  x{r.speedup:4.2f}  "
                f"{r.gflops:7.0f} GFLOP/s  {100 * r.peak_fraction:5.1f}% peak  "
                f"{r.peak_rss_mib or 0:7.0f} MiB")
        results.extend(rs)

    for size in sizes:
        add(bench_inference(arch, size, variants, num_classes=num_classes, warmup=warmup,
                            repeats=repeats, peaks=peaks))
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


def format_markdown(doc: dict[str, Any]) -> str:
    """A Markdown table of a :func:`run_benchmark` result."""
    m = doc["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']} "
        f"({m['cpu_capability']}, native bf16: {m.get('native_bf16')}), {m['date']}.",
        f"Measured GEMM peak: fp32 {doc['peaks']['fp32']:.0f} GFLOP/s, bf16 "
        f"{doc['peaks']['bf16']:.0f} GFLOP/s.",
        "",
        "| case | variant | ms (median) | min-max | speed-up vs fp32 eager | GFLOP/s | % of peak | "
        "peak RSS MiB | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if r["variant"].startswith("loader "):
            continue  # the data pipeline's own table below
        notes = ", ".join(f"{k} {v}" for k, v in r["extra"].items() if v)
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['ms']:.0f} | {r['ms_min']:.0f}-{r['ms_max']:.0f}"
            f" | {r['speedup']:.2f}x | {r['gflops']:.0f} | {100 * r['peak_fraction']:.0f}% | "
            f"{(r['peak_rss_mib'] or 0):.0f} | {notes} |"
        )
    if doc.get("data_pipeline"):
        lines += ["", *_data_pipeline_markdown(doc["data_pipeline"])]
    return "\n".join(lines) + "\n"


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
