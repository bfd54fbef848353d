"""A training run built, before its first step (:func:`build_run`): the resumed checkpoint
found, the data checked (every label scanned, bad samples left out within ``data.skip_bad``),
the network (seeded, on its device, SyncBatchNorm and DistributedDataParallel in a
multi-process job), for a time-budgeted run that set no crop the crop chosen from the time of a
whole-image step (:func:`time_train_step`), the optimiser and schedule, the restored state, the
outputs opened and the loader. :mod:`pspnet.engine.train` then runs the loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pspnet.checkpoint import atomic_write_bytes, load_backbone_weights
from pspnet.checkpoint.init_weights import init_from
from pspnet.config import Config, ConfigError, ModelConfig, TrainConfig
from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import DataError, image_size
from pspnet.data.training import TrainData, build_data, drop_bad, training_loader, whole_frame
from pspnet.data.validation import scan_labels
from pspnet.engine.budget import AUTO_VALIDATIONS, Budget
from pspnet.engine.defaults import (FINISH_WHOLE_SHARE, Choice, crop_for_budget, finish_choices,
                                    finish_stride, planned_steps, whole_frame_candidate)
from pspnet.engine.distributed import (
    DistInfo,
    TrainBatchSampler,
    all_gather_object,
    convert_sync_batchnorm,
    shard_indices,
)
from pspnet.engine.losses import PSPLoss, class_weights_from_counts
from pspnet.engine.optim import PolySchedule, build_optimizer
from pspnet.engine.run_config import (MIN_IMAGES_PER_PASS, check_resume, find_resume,
                                      resolve_config)
from pspnet.engine.run_log import RunLog
from pspnet.engine.safety import IgnoreStopSignals, check_work_dir, clear_run_outputs, on_main
from pspnet.engine.state import Run, TrainState, restore_state
from pspnet.models import build_model
from pspnet.precision import autocast

__all__ = ["build_network", "build_run", "check_data", "finish_ratios", "forward_flops",
           "switch_network", "time_train_step"]


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
    tc = cfg.train
    random.seed(tc.seed)
    np.random.seed(tc.seed % (1 << 32))
    torch.manual_seed(tc.seed)
    net = build_model(cfg.model)
    if state is None:
        _initialise(net, tc, log)
    if info.world_size > 1:
        # Different dropout masks per process (the weights are identical: DDP syncs them).
        torch.manual_seed(tc.seed + 1_000_003 * info.rank)
    return _place(net, cfg, info, cfg.model)


def _place(net: nn.Module, cfg: Config, info: DistInfo,
           model_cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """``(net, model)`` of :func:`build_network` for a built network of ``model_cfg``:
    SyncBatchNorm in a multi-process job, on the device, in the run's memory format, and
    wrapped in DistributedDataParallel there."""
    tc, device = cfg.train, info.device
    if info.world_size > 1 and tc.sync_bn:
        net = convert_sync_batchnorm(net, device.type, timeout_s=tc.dist_timeout)
    net.to(device)
    if tc.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.config = model_cfg  # type: ignore[assignment]
    if info.world_size == 1:
        return net, net
    model = nn.parallel.DistributedDataParallel(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        # An aux head left out of the loss gets no gradient.
        find_unused_parameters=model_cfg.aux and tc.aux_weight == 0,
    )
    return net, model


def switch_network(run: Run) -> None:
    """The run's last share trains at ``data.finish_output_stride``: a network built at that
    stride takes the weights (a stride changes no parameter shapes, only the convolutions'
    stride and dilation) and an optimizer over its parameters the momentum; the step, the
    validations, the checkpoints and ``final/`` use it from here on. Called when the share
    begins and when a run resumes inside it; nothing when the stride does not change.

    A new network rather than the old one's convolutions changed in place: every model is
    what :func:`~pspnet.models.build_model` builds from a config, the one ``final/`` records.
    """
    model_cfg = run.model_config
    if model_cfg == getattr(run.net, "config", None):
        return
    # Building draws initial weights, overwritten at once: the run's random stream (dropout)
    # goes on as if nothing had been built, so a resumed run repeats an uninterrupted one.
    with torch.random.fork_rng(devices=[]):
        net = build_model(model_cfg)
    net.load_state_dict(run.net.state_dict())
    net, model = _place(net, run.cfg, run.info, model_cfg)
    optimizer = _optimizer(net, run.cfg)
    # The same modules in the same order: parameter i of one is parameter i of the other.
    optimizer.load_state_dict(run.optimizer.state_dict())
    run.net, run.model, run.optimizer = net, model, optimizer


def _optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The run's SGD over ``net`` as ``optim`` configures it."""
    oc = cfg.optim
    return build_optimizer(
        net, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay,
        head_lr_mult=oc.head_lr_mult, nesterov=oc.nesterov,
    )  # fmt: skip


def build_run(cfg: Config, info: DistInfo, log: RunLog, progress: bool, t_start: float,
              chosen: Collection[str] = ()) -> Run:
    """Everything a training run needs before its first step, in the order it is done.

    The checkpoint to resume from (and the checks that it fits this config), the work
    directory checked, the data built and every label scanned, the network, the budget's crop,
    the optimiser and the poly schedule (its length planned later when there is a time
    budget), the restored state, ``config.yaml`` and ``log.jsonl`` opened, and the loader.

    Args:
        cfg: The configuration as given; the returned run holds it resolved (crop, precision,
            workers filled in).
        info: This process's place in the job.
        log: The run's log (rank 0 writes).
        progress: Show a progress bar.
        t_start: ``time.perf_counter()`` when the run started: the time budget counts from it.
        chosen: Config keys chosen for the run (nothing set them); a resumed run takes a
            chosen batch size from its checkpoint.

    Returns:
        The :class:`~pspnet.engine.state.Run` the loop changes.

    Raises:
        ConfigError: Fewer than 2 images per forward pass, or a checkpoint of another run.
        DataError: A bad data file.
    """
    resumed = find_resume(cfg, info)
    work_dir, overwrite = Path(cfg.train.work_dir), cfg.train.overwrite
    on_main(info, lambda: check_work_dir(work_dir, resume=cfg.train.resume, overwrite=overwrite,
                                         resumed=resumed[0] if resumed else None))
    if overwrite and info.is_main:
        clear_run_outputs(work_dir)  # asked for: the previous run goes before anything is written
    if resumed is not None:
        cfg = check_resume(cfg, resumed[1], resumed[0], info.world_size, chosen)
    data = build_data(cfg)
    crop_open = cfg.data.crop_size is None
    cfg = resolve_config(cfg, data, info.device)
    tc, oc = cfg.train, cfg.optim
    per_pass = tc.batch_size // (tc.accum_steps * info.world_size)
    if per_pass < MIN_IMAGES_PER_PASS:
        # BatchNorm (and the pyramid's 1x1 bin) cannot train on one image per pass.
        raise ConfigError(
            f"`train.batch_size` {tc.batch_size} gives {per_pass} image(s) per forward pass "
            f"(over {info.world_size} process(es) and {tc.accum_steps} accumulation step(s)); "
            f"BatchNorm needs at least {MIN_IMAGES_PER_PASS}: raise --batch-size or lower "
            "train.accum_steps"
        )
    class_weights = check_data(cfg, info, data, log, progress)  # before anything is trained
    sampler = TrainBatchSampler(
        len(data.train), tc.batch_size, accum_steps=tc.accum_steps, rank=info.rank,
        world_size=info.world_size, seed=tc.seed,
    )  # fmt: skip
    net, model = build_network(cfg, info, resumed[1] if resumed else None, log)
    setup_choices: list[Choice] = []
    if crop_open and tc.time_budget and resumed is None and info.world_size == 1:
        cfg, setup_choices = _budget_crop(cfg, data, net, info, t_start,
                                          "model.output_stride" in chosen)
    optimizer = _optimizer(net, cfg)
    spe = sampler.steps_per_epoch
    budget = None
    if tc.time_budget:
        step_ratio, val_ratio = finish_ratios(cfg)
        budget = Budget(tc.time_budget * 60.0, tc.budget_warmup_iters, tc.budget_measure_iters,
                        finish_share=cfg.data.finish_share, finish_ratio=step_ratio,
                        finish_val_ratio=val_ratio)
        schedule = PolySchedule(oc.lr, None, oc.power)  # max_iter planned after timing
    else:
        schedule = PolySchedule(oc.lr, planned_steps(tc, spe), oc.power)
    val_enabled = data.val is not None and tc.val_interval != 0
    run = Run(
        cfg=cfg, info=info, log=log, t_start=t_start, data=data, net=net, model=model,
        optimizer=optimizer, scaler=_grad_scaler(tc.precision, info.device), schedule=schedule,
        budget=budget, sampler=sampler, spe=spe, val_enabled=val_enabled,
        criterion=PSPLoss(tc.aux_weight, cfg.data.ignore_index, class_weights),
        ckpt_every=min(x for x in (spe, tc.checkpoint_interval or spe) if x > 0),
        resumed_from=resumed[0] if resumed else None,
        state=TrainState(val_every=_val_every(tc, schedule.max_iter, spe) if val_enabled else None),
        setup_choices=setup_choices,
    )  # fmt: skip
    if cfg.data.finish_share and schedule.max_iter is not None:
        # Without a budget the last share is counted in steps.
        run.state.finish_at = math.ceil((1.0 - cfg.data.finish_share) * schedule.max_iter)
    if resumed is not None:
        restore_state(run, *resumed)
        switch_network(run)  # resumed inside a last share at its own output stride
    _open_outputs(run, class_weights)
    run.loader = open_loader(run)
    if budget is not None and data.val is not None:
        w, h = image_size(data.val.samples[0].image)
        crop = cfg.data.crop_size
        run.val_pixels_factor = (h * w) / (crop[0] * crop[1])  # type: ignore[index]
        run.val_images = math.ceil(len(data.val) / info.world_size)
    if progress:
        log.start_bar(schedule.max_iter, run.state.it)
    return run


def finish_ratios(cfg: Config) -> tuple[float, float]:
    """``(step, validation)`` for the budget's plan: the expected cost of a step on
    ``data.finish_crop_size`` over one on ``data.crop_size``, both at the run's own output
    stride, and of a validation after the switch to ``data.finish_output_stride`` over one
    before it. Ratios of forward FLOPs, counted rather than timed (nothing runs).

    The step ratio leaves a finer ``finish_output_stride`` out on purpose: the schedule of the
    steps before the last share is then that of a run that keeps its stride, and once the
    share begins its real steps are timed and the rest of the schedule is fitted to the time
    left: the schedule the stride-8 finish was measured with. Counting the stride up front
    planned fewer steps in all, so the learning rate had decayed to ~0.002 instead of ~0.005
    at the switch (CamVid, 30 minutes, seeds 3 and 4: -2.6 and +2.0 mIoU, -1.7 and +0.1 pixel
    accuracy against this plan; two seeds, mixed; docs/recipe.md)."""
    fc, crop = cfg.data.finish_crop_size, cfg.data.crop_size
    if not fc or not crop:
        return 1.0, 1.0
    before, after = cfg.model, cfg.finish_model()
    finish = forward_flops(before, fc)
    val = 1.0 if after == before else forward_flops(after, fc) / finish
    return finish / forward_flops(before, crop), val


def forward_flops(model_cfg: ModelConfig, size: tuple[int, int]) -> float:
    """FLOPs (convolutions and matrix products) of a training forward pass of two images of
    ``size`` (height, width) through the network of ``model_cfg``, counted on the meta device:
    nothing is computed or allocated, and no random number is drawn."""
    with torch.device("meta"):
        net = build_model(model_cfg)
    net.train()  # the auxiliary head too
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(2, 3, *size, device="meta"))
    return float(counter.get_total_flops())


def open_loader(run: Run) -> Any:
    """The run's training loader at the crop it trains on now (:func:`current_crop`); its
    workers ignore SIGINT / SIGTERM (see :class:`~pspnet.engine.safety.StopSignals`)."""
    loader = training_loader(run.cfg, run.data.train, run.sampler,
                             pin_memory=run.info.device.type == "cuda", crop_size=current_crop(run))
    loader.worker_init_fn = IgnoreStopSignals(loader.worker_init_fn)
    return loader


def current_crop(run: Run) -> tuple[int, int]:
    """The crop the run trains on now: ``data.finish_crop_size`` once its share has begun."""
    dc = run.cfg.data
    if dc.finish_crop_size is not None and run.state.finish_from >= 0:
        return dc.finish_crop_size
    return dc.crop_size  # type: ignore[return-value]


def _budget_crop(cfg: Config, data: TrainData, net: nn.Module, info: DistInfo,
                 t_start: float, stride_chosen: bool) -> tuple[Config, list[Choice]]:
    """A time-budgeted run that set no crop: the whole image instead of the square crop when
    the budget affords enough epochs of it (:func:`~pspnet.engine.defaults.crop_for_budget`),
    decided by timing one whole-image step here (one process only: the ranks of a distributed
    run would have to agree on one timing, so they keep the square crop). A run that keeps the
    square crop trains the last :data:`~pspnet.engine.defaults.FINISH_WHOLE_SHARE` of its
    budget on whole images (``data.finish_crop_size``) unless the config set a share, at the
    paper's output stride when the run's own was chosen for the CPU
    (:func:`~pspnet.engine.defaults.finish_stride`). Returns the config and the choices made."""
    square = tuple(cfg.data.crop_size)  # type: ignore[arg-type]
    whole = whole_frame(data.train)
    if not whole_frame_candidate(square, whole):  # type: ignore[arg-type]
        return cfg, []
    tc = cfg.train
    step_s = time_train_step(net, cfg, info.device, whole)  # type: ignore[arg-type]
    left = tc.time_budget * 60.0 - (time.perf_counter() - t_start)  # type: ignore[operator]
    if data.val is not None and tc.val_interval != 0:
        left *= 1.0 - Budget.VAL_SHARE  # what validations may take at most
    crop, choice = crop_for_budget(square, whole, step_s, left,  # type: ignore[arg-type]
                                   tc.batch_size, len(data.train))
    dc, choices = dataclasses.replace(cfg.data, crop_size=crop), [choice]
    if tuple(crop) != tuple(whole) and not dc.finish_share:  # type: ignore[arg-type]
        # The square crop, then the last share on whole images (unless the config set a share).
        stride = finish_stride(cfg, stride_chosen)
        dc = dataclasses.replace(dc, finish_crop_size=whole, finish_share=FINISH_WHOLE_SHARE,
                                 finish_output_stride=stride)
        choices += finish_choices(whole, stride=stride)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, data=dc), choices


def _grad_scaler(precision: str, device: torch.device) -> Any:
    """A GradScaler for fp16 on CUDA (bf16 and fp32 need none), else None."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None


def _val_every(tc: TrainConfig, max_iter: int | None, spe: int) -> int | None:
    """Steps between validations; None: decided with the first budget plan."""
    if tc.val_interval is None:
        if max_iter is None:
            return None
        return max(1, math.ceil(max_iter / AUTO_VALIDATIONS))
    return tc.val_interval * (spe if tc.val_unit == "epoch" else 1)


def _open_outputs(run: Run, class_weights: tuple[float, ...] | None) -> None:
    """config.yaml, log.jsonl (and TensorBoard) on rank 0; the start/resume event."""
    cfg, data, st = run.cfg, run.data, run.state
    run.log.open(run.work_dir, cfg.to_yaml(), cfg.train.tensorboard)
    run.log.event(
        "resume" if run.resumed_from else "start",
        iteration=st.it, max_iter=run.schedule.max_iter, steps_per_epoch=run.spe,
        world_size=run.info.world_size, precision=run.precision,
        crop_size=list(cfg.data.crop_size),  # type: ignore[arg-type]
        checkpoint=str(run.resumed_from) if run.resumed_from else None,
        train_images=len(data.train),
        val_images=len(data.val) if data.val is not None else 0,
        class_weights=list(class_weights) if class_weights is not None else None,
    )
    if run.resumed_from:
        run.log.say(f"resumed from {run.resumed_from} at iteration {st.it}")
