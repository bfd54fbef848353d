"""The data pipeline case of ``pspnet benchmark``: can the training DataLoader feed the step?

:func:`bench_data_pipeline` times the loader ``pspnet train`` builds (the real data set and
augmentation: CamVid when a copy is given, else generated scenes) with 0, 1 and 2 workers and
sets its images/s against a training step's at the same crop and batch.

The CamVid copy is never looked for beside the installed package: it comes from the
``camvid_root`` argument (``pspnet benchmark --camvid-root``) or the ``PSPNET_CAMVID``
environment variable (:func:`camvid_location`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pspnet.benchmark.timing import (
    BenchResult,
    bench_train_step,
    matmul_peak,
    peak_rss_mib,
    reset_peak_rss,
)
from pspnet.precision import cpu_has_native_bf16
from pspnet.report.machine import usable_cpus

__all__ = ["CAMVID_ENV", "camvid_location", "camvid_missing", "find_camvid_root", "require_camvid",
           "CamVidNotFoundError", "bench_data_pipeline", "CPU_RECIPE_MODEL", "CAMVID_CROP",
           "CPU_RECIPE_BATCH", "SCENES_SIZE", "DATA_SOURCES"]

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


def camvid_location(root: str | Path | None = None,
                    default: str | Path | None = None) -> Path | None:
    """Where the CamVid copy is: ``root`` when given, else ``$PSPNET_CAMVID``, else ``default``.

    Args:
        root: An explicit location (e.g. ``--camvid-root``).
        default: The caller's own fallback (scripts of a checkout pass the folder beside it);
            None: no place is assumed.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(CAMVID_ENV)
    if env:
        return Path(env).expanduser()
    return Path(default) if default is not None else None


def camvid_missing(splits: tuple[str, ...] = ("train",), root: str | Path | None = None,
                   default: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """Where CamVid is looked for (:func:`camvid_location`) and what it lacks (empty: usable).

    A usable copy holds ``classes.txt``, ``<split>.txt`` for each of ``splits``, ``images/``
    and ``labels/``. With no place to look, the place is None and everything is missing.
    """
    where = camvid_location(root, default)
    needed = ["classes.txt", *(f"{s}.txt" for s in splits), "images", "labels"]
    if where is None:
        return None, needed
    return where, [n for n in needed if not (where / n).exists()]


def find_camvid_root(splits: tuple[str, ...] = ("train",), root: str | Path | None = None,
                     default: str | Path | None = None) -> Path | None:
    """The prepared CamVid copy holding ``splits`` (see :func:`camvid_missing`), or None."""
    where, missing = camvid_missing(splits, root, default)
    return None if missing else where


def _camvid_or_none(source: str, camvid_root: str | Path | None) -> Path | None:
    """The CamVid copy the case uses, None for scenes; raises when ``camvid`` has none."""
    if source not in DATA_SOURCES:
        raise ValueError(f"data source {source!r} is not one of {', '.join(DATA_SOURCES)} "
                         "(pspnet benchmark --data-source)")
    if source == "scenes":
        return None
    where, missing = camvid_missing(("train",), camvid_root)
    if source == "camvid" and missing:
        found = f"{where} lacks {', '.join(missing)}" if where else "no location given"
        raise ValueError(
            f"--data-source camvid: no prepared CamVid copy found ({found}; pass --camvid-root "
            f"DIR or set {CAMVID_ENV} to its folder, which holds images/, labels/, train.txt and "
            "classes.txt); or use --data-source scenes"
        )
    return None if missing else where


def _train_pipeline(
    source: str, crop: tuple[int, int] | None, scenes_size: int, scenes_dir: Path | None,
    n_images: int, camvid_root: str | Path | None = None,
) -> tuple[Any, Any, str, Path, tuple[int, int], int]:
    """``(config, train set, source, root, crop, num_classes)``: what ``pspnet train`` loads.

    The config is ``pspnet train``'s defaults for that data (the paper's random scale 0.5-2,
    rotation +-10 degrees, blur, flip, crop and normalisation), the set is the one the training
    loop builds from it; :func:`pspnet.data.training.training_loader` reads it as training does.
    """
    from pspnet.config import Config
    from pspnet.data.training import build_data

    camvid = _camvid_or_none(source, camvid_root)
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


def _time_loader(cfg: Any, train_set: Any, workers: int, batch: int, batches: int,
                 warmup_batches: int, case: str) -> tuple[dict[str, Any], BenchResult]:
    """Read ``warmup_batches + batches`` batches with ``workers`` workers; time the last ones."""
    from pspnet.engine.distributed import TrainBatchSampler
    from pspnet.data.training import training_loader

    sampler = TrainBatchSampler(len(train_set), batch, seed=0)
    loader = training_loader(cfg, train_set, sampler, num_workers=workers)
    per_batch: list[float] = []
    epoch = 0
    reset_peak_rss()
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
    stats = {"workers": workers, "images_per_s": ips, "ms_per_batch": 1e3 * total / batches,
             "first_batch_s": first_s, "epochs_started": epoch + 1}
    row = BenchResult(
        case=case, variant=f"loader {workers} worker{'s' if workers != 1 else ''}",
        ms=1e3 * total / batches, ms_min=1e3 * min(per_batch), ms_max=1e3 * max(per_batch),
        gflop=0.0, gflops=0.0, peak_fraction=0.0, peak_rss_mib=peak_rss_mib(),
        extra={"images_per_s": round(ips, 1), "first_batch_s": round(first_s or 0.0, 2)},
    )
    return stats, row


def _time_step(step_model: dict[str, Any] | None, k: int, crop: tuple[int, int], batch: int,
               step_repeats: int, peaks: dict[str, float] | None,
               case: str) -> tuple[list[BenchResult], str, int, dict[str, Any]]:
    """The training step that consumes the batches: ``(rows, arch, head channels, options)``."""
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
    for s in steps:
        s.case = f"{case} train step {arch}"
        s.extra["images_per_s"] = round(batch / (s.ms / 1e3), 2)
    return steps, arch, head, model


def _verdict(loader_stats: list[dict[str, Any]], rows: list[BenchResult], step: BenchResult,
             batch: int) -> tuple[int, dict[str, Any] | None, str]:
    """Mark each worker count against the step; ``(default workers, judged stats, verdict)``."""
    step_ips = batch / (step.ms / 1e3)
    for st, row in zip(loader_stats, rows):
        load_s = batch / st["images_per_s"]
        if st["workers"] == 0:
            st["step_share"] = load_s / (load_s + step.ms / 1e3)
            st["keeps_up"] = None  # serial: it cannot starve the step, it lengthens it
        else:
            st["keeps_up"] = st["images_per_s"] >= step_ips
        st["x_step"] = st["images_per_s"] / step_ips
        row.extra["x_step"] = round(st["x_step"], 1)
    default_w = min(2, usable_cpus())  # what `pspnet train` uses when data.num_workers is not set
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
    return default_w, chosen, verdict


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
    camvid_root: str | Path | None = None,
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
        camvid_root: The prepared CamVid copy (default: ``$PSPNET_CAMVID``; none: scenes).

    Returns:
        ``(rows, summary)``: one :class:`BenchResult` per worker count and one for the step;
        the summary holds the images/s, the verdict and the data set used.
    """
    if batch < 2:
        raise ValueError(f"data pipeline batch must be at least 2 (BatchNorm), got {batch}")
    if batches < 1 or warmup_batches < 0 or not workers or any(w < 0 for w in workers):
        raise ValueError(f"need batches >= 1, warmup_batches >= 0 and at least one worker count "
                         f">= 0, got {batches}, {warmup_batches}, {tuple(workers)}")
    n_needed = (batches + warmup_batches) * batch
    cfg, train_set, source, root, crop, k = _train_pipeline(
        source, crop, scenes_size, Path(scenes_dir) if scenes_dir else None, n_needed, camvid_root)
    crop = (int(crop[0]), int(crop[1]))
    case = f"data pipeline {source} {crop[0]}x{crop[1]} b{batch}"
    timed = [_time_loader(cfg, train_set, w, batch, batches, warmup_batches, case) for w in workers]
    loader_stats, rows = [t[0] for t in timed], [t[1] for t in timed]
    steps, arch, head, model = _time_step(step_model, k, crop, batch, step_repeats, peaks, case)
    step = steps[-1]  # what `precision: auto` trains with: bf16 where native, else fp32
    default_w, chosen, verdict = _verdict(loader_stats, rows, step, batch)
    summary = {
        "source": source, "root": str(root), "images": len(train_set), "crop": list(crop),
        "batch": batch, "batches_timed": batches,
        "augmentation": "random scale 0.5-2.0, rotate +-10 deg (p=0.5), 5x5 Gaussian blur "
                        "(p=0.5), horizontal flip (p=0.5), crop, normalise",
        "train_step": {"arch": arch, "variant": step.variant, "ms": step.ms,
                       "images_per_s": batch / (step.ms / 1e3),
                       "model": {"head_channels": head, **model}},
        "loader": loader_stats, "default_workers": default_w,
        "verdict_workers": chosen["workers"] if chosen else 0, "verdict": verdict,
    }
    return rows + steps, summary


class CamVidNotFoundError(FileNotFoundError):
    """No usable CamVid copy where :func:`camvid_location` points."""


def require_camvid(splits: tuple[str, ...] = ("test",), root: str | Path | None = None,
                   default: str | Path | None = None) -> Path:
    """The prepared CamVid copy holding ``splits``, resolved.

    Args:
        splits: Splits whose ``<split>.txt`` must exist.
        root: An explicit location; else ``$PSPNET_CAMVID``, else ``default``.
        default: The caller's fallback (named in the message as the default place).

    Raises:
        CamVidNotFoundError: The folder, its ``classes.txt`` or a split list is missing; the
            message names the place looked at and where else a copy may be put.
    """
    where, missing = camvid_missing(tuple(splits), root, default)
    if not missing and where is not None:
        return where.resolve()
    env = os.environ.get(CAMVID_ENV)
    if root is not None:
        place = f"{where} (camvid_root)"
    elif env:
        place = f"{CAMVID_ENV}={env} (from the environment)"
    elif where is not None:
        place = f"{where} (the default; {CAMVID_ENV} is not set)"
    else:
        place = f"no location ({CAMVID_ENV} is not set)"
    put = f"at {default} or point" if default is not None else "somewhere and point"
    raise CamVidNotFoundError(
        f"CamVid not found: {place} lacks {', '.join(missing)}. Put the prepared CamVid copy "
        f"(images/, labels/, train.txt, val.txt, test.txt, classes.txt) {put} the environment "
        f"variable {CAMVID_ENV} at it."
    )
