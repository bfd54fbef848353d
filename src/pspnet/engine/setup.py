"""The pieces a training run is built from, before the first step: the data checked (every
label scanned, bad samples left out within ``data.skip_bad``), the network (seeded, on its
device, SyncBatchNorm and DistributedDataParallel in a multi-process job) and, for a
time-budgeted run that set no crop, the time of a whole-image step (:func:`time_train_step`).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pspnet.checkpoint import atomic_write_bytes, load_backbone_weights
from pspnet.checkpoint.init_weights import init_from
from pspnet.config import Config, TrainConfig
from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import DataError
from pspnet.data.training import TrainData, drop_bad
from pspnet.data.validation import scan_labels
from pspnet.engine.distributed import (
    DistInfo,
    all_gather_object,
    convert_sync_batchnorm,
    shard_indices,
)
from pspnet.engine.losses import PSPLoss, class_weights_from_counts
from pspnet.engine.run_log import RunLog
from pspnet.models import build_model
from pspnet.precision import autocast

__all__ = ["build_network", "check_data", "time_train_step"]


def time_train_step(net: nn.Module, cfg: Config, device: torch.device, size: tuple[int, int],
                    passes: int = 2) -> float:
    """Seconds of one optimizer step of ``net`` on ``size`` (height, width) inputs: forward and
    backward of ``batch_size / accum_steps`` random images with the run's precision and memory
    format, timed over ``passes`` passes after one untimed, times ``accum_steps``.

    The run is left as it was: no optimizer step, gradients cleared, BatchNorm statistics
    restored and the random generators untouched (dropout draws in a forked RNG).
    """
    tc = cfg.train
    h, w = size
    per_pass = max(2, tc.batch_size // tc.accum_steps)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(per_pass, 3, h, w, generator=gen).to(device)
    if tc.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, cfg.model.num_classes, (per_pass, h, w), generator=gen).to(device)
    criterion = PSPLoss(tc.aux_weight, cfg.data.ignore_index)
    saved = {name: b.detach().clone() for name, b in net.named_buffers()}
    net.train()
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(passes + 1):
            t0 = time.perf_counter()
            with autocast(device, tc.precision):
                outputs = net(images)
            loss, _ = criterion(outputs, labels)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:  # the first pass allocates and warms the kernels' caches
                times.append(time.perf_counter() - t0)
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in net.named_buffers():
            b.copy_(saved[name])
    return tc.accum_steps * sum(times) / len(times)


def check_data(
    cfg: Config, info: DistInfo, data: TrainData, log: RunLog, progress: bool
) -> tuple[float, ...] | None:
    """Scan every label (and, with ``data.skip_bad``, decode every image); drop the bad
    samples within the limit (``data`` is updated); return the class weights of the loss."""
    weights = cfg.train.class_weights
    skip = cfg.data.skip_bad
    if not (cfg.data.scan_labels or isinstance(weights, str) or skip):
        return weights  # type: ignore[return-value]
    counts, bad_train = _scan(data.train, info, progress, skip)
    bad_val: list[tuple[int, str]] = []
    if data.val is not None and (cfg.data.scan_labels or skip):
        bad_val = _scan(data.val, info, progress, skip)[1]
    if bad_train or bad_val:
        _report_skipped(cfg, log, data, bad_train, bad_val)
        data.train = drop_bad(data.train, bad_train, "training", skip)
        if data.val is not None:
            data.val = drop_bad(data.val, bad_val, "validation", skip - len(bad_train))
    if isinstance(weights, str):
        return tuple(class_weights_from_counts(counts, weights))
    return weights


def _report_skipped(
    cfg: Config, log: RunLog, data: TrainData, bad_train: list[tuple[int, str]],
    bad_val: list[tuple[int, str]],
) -> None:  # fmt: skip
    """Write ``skipped.json`` and say what is left out (rank 0), before any limit check."""
    work_dir = Path(cfg.train.work_dir)
    report = {
        "train": [{"image": str(data.train.samples[i].image), "error": m} for i, m in bad_train],
        "val": [
            {"image": str(data.val.samples[i].image), "error": m}  # type: ignore[union-attr]
            for i, m in bad_val
        ],
        "limit": cfg.data.skip_bad,
    }
    n = len(bad_train) + len(bad_val)
    if log.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(work_dir / "skipped.json", json.dumps(report, indent=1).encode())
        for _, msg in (bad_train + bad_val)[:10]:
            log.say(f"skipping bad sample: {msg}")
        log.say(
            f"{n} bad samples ({len(bad_train)} training, {len(bad_val)} validation; limit "
            f"{cfg.data.skip_bad}) listed in {work_dir / 'skipped.json'}"
        )


def _scan(
    ds: SegmentationDataset, info: DistInfo, progress: bool, skip_bad: int = 0
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Check every sample's label (sharded over processes) before anything is trained.

    Args:
        ds: The data set.
        info: This process's place in the job.
        progress: Show a bar (rank 0).
        skip_bad: 0: every process raises the first error. > 0: decode the images in full
            too and return the bad samples instead of raising (the caller applies the limit).

    Returns:
        ``(counts, bad)``: (C,) labelled pixels per class over the good samples (summed over
        the processes) and the sorted ``(index, message)`` of the bad samples.
    """
    idx = shard_indices(len(ds), info.rank, info.world_size)
    shard = ds
    if info.world_size > 1:
        shard = SegmentationDataset(
            [ds.samples[i] for i in idx] or ds.samples[:1],
            ds.num_classes,
            ignore_index=ds.ignore_index,
            label_map=ds.label_map,
            max_pixels=ds.max_pixels,
        )
    message = None
    counts = np.zeros(ds.num_classes, dtype=np.int64)
    bad: list[tuple[int, str]] = []
    try:
        if len(idx) > 0:
            scan = scan_labels(
                shard, progress=progress and info.is_main,
                decode_images=skip_bad > 0, collect_errors=skip_bad > 0,
            )  # fmt: skip
            counts = scan.class_pixel_counts
            bad = [(int(idx[i]), msg) for i, msg in scan.bad]  # shard index -> data set index
    except DataError as e:
        message = str(e)
    gathered = all_gather_object((message, counts.tolist(), bad))
    first = next((m for m, _, _ in gathered if m), None)
    if first:
        raise DataError(first)
    total = np.sum([np.asarray(c, dtype=np.int64) for _, c, _ in gathered], axis=0)
    return total, sorted(b for _, _, part in gathered for b in part)



def _initialise(net: nn.Module, tc: TrainConfig, log: RunLog | None) -> None:
    """Load ``train.init_weights`` (saying what was loaded, reset and missing) or, without
    them, ``train.backbone_weights`` into the freshly built network."""
    if not tc.init_weights:
        if tc.backbone_weights:
            load_backbone_weights(net, tc.backbone_weights)
        return
    report = init_from(net, tc.init_weights)
    if log is None:
        return
    if tc.backbone_weights:
        log.say(f"train.backbone_weights ({tc.backbone_weights}) not loaded: "
                "train.init_weights initialises the backbone too")  # fmt: skip
    for line in report.lines():
        log.say(line)
    log.event("init_weights", **report.to_dict())


def build_network(
    cfg: Config, info: DistInfo, state: dict[str, Any] | None, log: RunLog | None = None
) -> tuple[nn.Module, nn.Module]:
    """``(net, model)``: the network, and what the step calls (``net`` or its DDP wrapper).

    A new run (``state`` None) starts from ``train.init_weights`` or ``train.backbone_weights``
    when set; ``log`` tells what the former loaded (rank 0).
    """
    tc, device = cfg.train, info.device
    random.seed(tc.seed)
    np.random.seed(tc.seed % (1 << 32))
    torch.manual_seed(tc.seed)
    net = build_model(cfg.model)
    net.config = cfg.model  # type: ignore[assignment]
    if state is None:
        _initialise(net, tc, log)
    if info.world_size > 1:
        # Different dropout masks per process (the weights are identical: DDP syncs them).
        torch.manual_seed(tc.seed + 1_000_003 * info.rank)
        if tc.sync_bn:
            net = convert_sync_batchnorm(net, device.type, timeout_s=tc.dist_timeout)
    net.to(device)
    if tc.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.config = cfg.model  # type: ignore[assignment]
    if info.world_size == 1:
        return net, net
    model = nn.parallel.DistributedDataParallel(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        # An aux head left out of the loss gets no gradient.
        find_unused_parameters=cfg.model.aux and tc.aux_weight == 0,
    )
    return net, model
