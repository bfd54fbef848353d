"""Training PSPNet: the paper's recipe, from a two-core laptop to ``torchrun`` on many GPUs.

The recipe (Zhao et al., CVPR 2017, and the authors' ``hszhao/semseg`` code): SGD with momentum
0.9 and weight decay 1e-4; a poly learning rate ``lr * (1 - iter / max_iter) ** 0.9`` updated
every iteration, 10x on the new layers (``model.head``, ``model.aux_head``); cross-entropy with
ignore label 255 on the final logits plus 0.4 x the auxiliary (stage-4) loss; random scale
0.5-2.0, rotation +-10 degrees, Gaussian blur, horizontal flip and crop; SyncBatchNorm over the
processes.

Entry points: :func:`train` (a :class:`~pspnet.config.Config`), :func:`train_from_args` (what
``pspnet train`` calls: config file < flags < ``--set`` overrides) and :func:`main_torchrun`
(``python -m pspnet.engine.train ...``, also under ``torchrun``).

Outputs in ``WORK_DIR`` (rank 0 only writes):

* ``config.yaml``: the resolved configuration (crop, precision, workers filled in);
* ``log.jsonl``: one JSON object a line (``event``: start, plan, train, val, checkpoint,
  resume, diverged, end);
* ``checkpoints/last.pt``, ``checkpoints/prev.pt`` and ``checkpoints/latest``: see below;
* ``final/`` and ``best/`` (best validation mIoU): weight directories in our format
  (:func:`pspnet.checkpoint.save_weights`), loadable with ``pspnet.load_model``;
* ``tb/`` when TensorBoard logging is on.

Checkpoints and resuming. A checkpoint is written with ``torch.save`` to a temporary file that
is flushed to disk and then renamed over ``last.pt`` (the previous ``last.pt`` is first renamed
to ``prev.pt``); the ``latest`` pointer is replaced atomically too. A crash at any moment
leaves at least one complete checkpoint. Checkpoints hold only tensors, numbers, strings, lists
and dicts, so they load with ``torch.load(..., weights_only=True)``: the model and optimizer
state, the GradScaler, the schedule position, the Python / numpy / torch (and CUDA) random
states of every process, the epoch and the step inside it, elapsed training time, the best
score so far and the config. ``resume="auto"`` loads the newest readable checkpoint of
``WORK_DIR`` (if the newest is truncated or corrupt it warns, naming the file, and takes the
previous one) and continues bit-exactly on the CPU: same batches, same augmentations, same
dropout masks, same weights as a run that was never interrupted. Resuming refuses a different
model (``num_classes``, ``arch``, any model option), world size or batch size; the learning
rate, schedule, seed and time budget come from the checkpoint (with a warning when the config
says otherwise).

Reproducible data: the order of epoch ``e`` is ``randperm`` from a ``torch.Generator`` seeded
by ``(seed, e)``, and sample ``i`` of epoch ``e`` is augmented with
:func:`pspnet.data.transforms.sample_rng` ``(seed, e, i)``; neither depends on the global RNGs,
the number of DataLoader workers, or where a previous run stopped.

Divergence: a NaN or infinite loss stops the run before the optimizer step with
:class:`TrainingDiverged`, naming the iteration and the main / auxiliary losses; no checkpoint
is written after it, so the last good one stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pspnet.checkpoint import (
    CheckpointError,
    WeightsMeta,
    atomic_write_bytes,
    load_backbone_weights,
    save_weights,
)
from pspnet.checkpoint.training import (
    TRAIN_CHECKPOINT_FORMAT,
    TRAIN_CHECKPOINT_VERSION,
    find_checkpoint,
    load_checkpoint,
    restore_rng,
    rng_state,
    to_cpu,
    write_checkpoint,
)
from pspnet.config import (
    Config,
    ConfigError,
    DataConfig,
    _deep_merge,
    apply_overrides,
    load_yaml,
)
from pspnet.data.datasets import (
    DataError,
    SegmentationDataset,
    get_dataset_spec,
    list_file_samples,
    make_label_map,
    scan_labels,
)
from pspnet.data.classes import read_class_file
from pspnet.data.io import MissingDataFileError, image_size, read_image
from pspnet.data.palette import default_palette
from pspnet.data.transforms import eval_transform, sample_rng, train_transform
from pspnet.engine.distributed import (
    DistInfo,
    TrainBatchSampler,
    all_gather_object,
    broadcast_object,
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
    is_distributed,
    shard_indices,
)
from pspnet.engine.evaluate import evaluate_model
from pspnet.engine.losses import PSPLoss, class_weights_from_counts
from pspnet.engine.metrics import SegMetrics
from pspnet.engine.optim import PolySchedule, build_optimizer
from pspnet.models import build_model
from pspnet.precision import autocast, resolve_channels_last, resolve_precision

__all__ = [
    "TrainingDiverged",
    "TrainResult",
    "train",
    "train_from_args",
    "TrainData",
    "build_data",
    "training_loader",
    "main_torchrun",
]

log = logging.getLogger("pspnet.train")

DEFAULT_EPOCHS = 50
#: Longest side of the training crop chosen from the data when none is configured.
AUTO_CROP_MAX = 320
#: Output stride ``pspnet train`` uses on a CPU when neither a config file nor ``--set`` gives
#: one. Measured on two AVX2 cores (pspnet_r18, 240x320 crops, batch 8, fp32): ~2.3-2.9 s a
#: step at stride 16 against ~4x that at stride 8; under a time budget the 4x more steps
#: matter more than the finer features (docs/results.md uses it on CamVid).
CPU_OUTPUT_STRIDE = 16
#: Number of validations during a run when ``train.val_interval`` is not set.
AUTO_VALIDATIONS = 4


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before updating the weights.

    Attributes:
        iteration: The 1-based optimizer step whose loss was not finite.
        main_loss, aux_loss: The two parts of that loss.
        checkpoint: The last good checkpoint (left untouched), or None.
    """

    def __init__(
        self, message: str, iteration: int, main_loss: float, aux_loss: float,
        checkpoint: Path | None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.iteration = iteration
        self.main_loss = main_loss
        self.aux_loss = aux_loss
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        work_dir: The run's folder.
        final_dir: Weight directory of the final model.
        best_dir: Weight directory of the best validation model (None without validation).
        iterations: Optimizer steps done in total (including before a resume).
        max_iter: Planned total steps (the poly schedule's end).
        epochs: Iterations in epochs (fractional).
        best_miou: Best validation mIoU (fraction), or None.
        best_iteration: Iteration of the best model, or None.
        last_metrics: The last validation's :class:`SegMetrics`, or None.
        final_loss: Mean training loss of the last logged interval.
        elapsed_s: Training wall time in seconds, summed over resumes.
        stop_reason: ``"completed"`` (schedule ended; with a time budget, on budget) or
            ``"time_budget"`` (the budget ran out before the schedule ended).
        resumed_from: The checkpoint this run continued from, or None.
        config: The effective configuration.
    """

    work_dir: Path
    final_dir: Path
    best_dir: Path | None
    iterations: int
    max_iter: int
    epochs: float
    best_miou: float | None
    best_iteration: int | None
    last_metrics: SegMetrics | None
    final_loss: float | None
    elapsed_s: float
    stop_reason: str
    resumed_from: Path | None
    config: Config


# --------------------------------------------------------------------------------------------
# Small helpers


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read_class_names(path: str | Path, num_classes: int) -> tuple[tuple[str, ...], Any]:
    """Names (and a palette when the file has colours) from a class-names file."""
    try:
        found = read_class_file(path)  # a malformed file raises its own DataError
    except MissingDataFileError:
        raise ConfigError(f"`data.class_names`: file {path} does not exist") from None
    if len(found.names) != num_classes:
        raise ConfigError(
            f"`data.class_names`: {path} lists {len(found.names)} classes but model.num_classes "
            f"is {num_classes} (--num-classes)"
        )
    return found.names, found.palette


# --------------------------------------------------------------------------------------------
# Data


class _TrainSet(Dataset):
    """Training samples keyed by ``(epoch, index)``: augmented with ``sample_rng(seed, e, i)``."""

    def __init__(self, base: SegmentationDataset, augment: Any, seed: int) -> None:
        self.base = base
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        sample = self.base.samples[index]
        image = read_image(sample.image, max_pixels=self.base.max_pixels)
        label = self.base.load_label(index)
        if image.shape[:2] != label.shape[:2]:
            raise DataError(
                f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{sample.label} is {label.shape[1]}x{label.shape[0]}; they must match"
            )
        img, lab = self.augment(image, label, sample_rng(self.seed, epoch, index))
        return {"image": img, "label": lab.long(), "name": sample.name}


@dataclass
class TrainData:
    """The data sets and class metadata a config names (:func:`build_data`)."""

    train: SegmentationDataset
    val: SegmentationDataset | None
    class_names: tuple[str, ...] | None
    palette: tuple[tuple[int, int, int], ...] | None


def build_data(cfg: Config) -> TrainData:
    """The training and validation sets of ``cfg.data``, with class names and palette.

    Raises:
        ConfigError: No training list or data set is configured, or the class counts disagree.
    """
    dc: DataConfig = cfg.data
    k = cfg.model.num_classes
    spec = get_dataset_spec(dc.dataset) if dc.dataset else None
    if spec is not None and spec.num_classes != k:
        raise ConfigError(
            f"`model.num_classes` is {k} but data set {spec.name!r} has {spec.num_classes} "
            "classes (--num-classes)"
        )
    if dc.train_list:
        root = Path(dc.root) if dc.root else Path(".")
        train_samples = list_file_samples(root, dc.train_list)
        val_samples = list_file_samples(root, dc.val_list) if dc.val_list else None
    elif spec is not None:
        if not dc.root:
            raise ConfigError(f"`data.root` is required to read data set {spec.name!r}")
        train_samples = spec.find_samples(dc.root, dc.train_split)
        val_samples = spec.find_samples(dc.root, dc.val_split) if dc.val_split else None
    else:
        raise ConfigError(
            "`data.train_list` is not set: give --data-root DIR --train-list FILE (a list of "
            "`image label` lines) or data.dataset with data.root"
        )
    map_name = dc.label_map if dc.label_map is not None else (spec.label_map if spec else None)
    label_map = make_label_map(map_name, ignore_index=dc.ignore_index)
    train = SegmentationDataset(
        train_samples, k, ignore_index=dc.ignore_index, label_map=label_map
    )
    val = None
    if val_samples:
        val = SegmentationDataset(
            val_samples,
            k,
            ignore_index=dc.ignore_index,
            label_map=label_map,
            transform=eval_transform(cfg.preprocess.mean, cfg.preprocess.std),
        )
    names: tuple[str, ...] | None = None
    palette = None
    if dc.class_names:
        names, palette = _read_class_names(dc.class_names, k)
    elif spec is not None:
        names = tuple(spec.class_names)
    if palette is None:
        palette = tuple(tuple(int(v) for v in c) for c in default_palette(k))
    return TrainData(train, val, names, palette)  # type: ignore[arg-type]


def training_loader(
    cfg: Config, train: SegmentationDataset, sampler: Any, *, num_workers: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader ``pspnet train`` reads: ``train`` with the config's augmentation.

    Samples are keyed by ``(epoch, index)`` (what ``sampler``, a
    :class:`~pspnet.engine.distributed.TrainBatchSampler`, yields) and augmented with
    ``sample_rng(seed, epoch, index)``, so a batch does not depend on worker count or timing.

    Args:
        cfg: The run's config (crop, augmentation, preprocessing, seed, workers).
        train: The training set (:func:`build_data`).
        sampler: Batch sampler of ``(epoch, index)`` keys.
        num_workers: Loader workers; default ``cfg.data.num_workers``.
        pin_memory: Pin batches (for a CUDA device).
    """
    dc = cfg.data
    workers = int(dc.num_workers or 0) if num_workers is None else int(num_workers)
    augment = train_transform(
        dc.crop_size,  # type: ignore[arg-type]
        scale=dc.scale, rotate=dc.rotate, blur=dc.blur, flip=dc.flip,
        mean=cfg.preprocess.mean, std=cfg.preprocess.std, ignore_index=dc.ignore_index,
    )  # fmt: skip
    return DataLoader(
        _TrainSet(train, augment, cfg.train.seed),
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0 and dc.persistent_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the loader never draws from the global RNG
    )


def _auto_crop(train: SegmentationDataset) -> tuple[int, int]:
    """min(320, shortest side among the first 16 training images), square."""
    sides = []
    for s in train.samples[:16]:
        w, h = image_size(s.image)
        sides.append(min(w, h))
    side = max(8, min([AUTO_CROP_MAX, *sides]))
    return side, side


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


def _next_batch(data_iter: Iterator[Any]) -> Any:
    """The next batch; a bad file found by a loader worker becomes one plain DataError."""
    try:
        return next(data_iter)
    except DataError as e:
        # DataLoader re-raises a worker's exception with the worker's traceback in the message;
        # keep only our message (it names the file and the fix).
        text = str(e)
        marker = "DataError: "
        msg = text[text.rindex(marker) + len(marker):].strip() if marker in text else text
        raise DataError(
            f"{msg}\n(found while training; to leave such files out, run with --skip-bad N, "
            "which checks every image before the first step; the last checkpoint is kept)"
        ) from None


def _drop_bad(
    ds: SegmentationDataset, bad: list[tuple[int, str]], split: str, limit: int
) -> SegmentationDataset:
    """``ds`` without the bad samples; DataError when there are more than ``limit``."""
    if not bad:
        return ds
    if len(bad) > limit:
        listed = "\n".join(f"  {msg}" for _, msg in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} bad {split} samples, more than the {limit} that data.skip_bad allows:\n"
            f"{listed}{more}\nfix or remove these files, or raise the limit (--skip-bad N)"
        )
    drop = {i for i, _ in bad}
    kept = [s for i, s in enumerate(ds.samples) if i not in drop]
    if not kept:
        raise DataError(f"every {split} sample is bad; nothing is left to train on")
    return SegmentationDataset(
        kept, ds.num_classes, ignore_index=ds.ignore_index, label_map=ds.label_map,
        transform=ds.transform, max_pixels=ds.max_pixels,
    )  # fmt: skip


def _check_resume(cfg: Config, state: dict[str, Any], path: Path, world: int) -> Config:
    """Refuse incompatible resumes; take the schedule-defining values from the checkpoint."""
    old = state["config"]
    new = cfg.to_dict()
    old_model, new_model = old.get("model", {}), new["model"]
    for key in ("num_classes", "arch"):
        if old_model.get(key) != new_model.get(key):
            raise ConfigError(
                f"cannot resume from {path}: it was trained with model.{key} = "
                f"{old_model.get(key)!r} but the config now says {new_model.get(key)!r}. A "
                "checkpoint continues the same model only; use a new --work-dir to train a "
                "different one (or convert its weights and start afresh)."
            )
    diff = sorted(k for k in new_model if old_model.get(k) != new_model.get(k))
    if diff:
        shown = ", ".join(f"model.{k}: {old_model.get(k)!r} -> {new_model[k]!r}" for k in diff)
        raise ConfigError(
            f"cannot resume from {path}: the model options changed ({shown}); use a new "
            "--work-dir to train a different model"
        )
    if int(state.get("world_size", 1)) != world:
        raise ConfigError(
            f"cannot resume from {path}: it was written by a run with {state.get('world_size')} "
            f"processes, this run has {world}. Resume with the same number of processes "
            "(the data order and batch-norm statistics depend on it)."
        )
    old_train = old.get("train", {})
    if old_train.get("batch_size") != cfg.train.batch_size:
        raise ConfigError(
            f"cannot resume from {path}: train.batch_size was {old_train.get('batch_size')}, "
            f"now {cfg.train.batch_size}; the position in the epoch depends on it"
        )
    changed = []
    if old.get("optim") != new["optim"]:
        changed.append("optim.*")
    for key in ("seed", "epochs", "max_iter", "time_budget"):
        if old_train.get(key) != new["train"].get(key):
            changed.append(f"train.{key}")
    if changed:
        warnings.warn(
            f"resuming from {path}: {', '.join(changed)} differ from the checkpoint; the "
            "learning rate, schedule, seed and budget continue from the checkpoint",
            stacklevel=3,
        )
    train_section = {**new["train"], **{k: old_train.get(k) for k in
                                          ("seed", "epochs", "max_iter", "time_budget")}}
    merged = {**new, "optim": old.get("optim", new["optim"]), "train": train_section}
    return Config.from_dict(merged)


# --------------------------------------------------------------------------------------------
# The loop


class _Budget:
    """Plans ``max_iter`` so that the poly schedule ends when the time budget is spent.

    The first ``warmup`` steps of a process are not timed; after ``measure`` more, the mean step
    time ``c`` (data loading included) gives the plan: the largest ``n`` more steps with

        n * c + (validations in the next n steps, the final one included) * v
              + (checkpoints in the next n steps) * s  <=  budget - elapsed - reserve,

    where ``v`` is the cost of one validation (measured once one has run; estimated before as
    a forward pass, ~1/4 of a training step, per validation image, scaled by its size), ``s``
    the cost of a checkpoint, and ``reserve`` the final save plus a margin (1 % of the budget
    and two steps) for timing noise. The plan is
    refreshed every ~5 % of the run and after each validation (the schedule stays continuous,
    see :class:`~pspnet.engine.optim.PolySchedule`).
    """

    #: Validations may take at most this share of the time left when they are scheduled.
    VAL_SHARE = 0.25

    def __init__(self, budget_s: float, warmup: int, measure: int) -> None:
        self.budget_s = budget_s
        self.warmup = warmup
        self.measure = measure
        self.step_times: list[float] = []
        self.val_s: float | None = None
        self.val_estimate_s = 0.0
        self.ckpt_s = 1.0

    def ready(self) -> bool:
        return len(self.step_times) >= self.warmup + self.measure

    def step_time(self) -> float:
        timed = self.step_times[self.warmup :][-50:]
        return sum(timed) / max(1, len(timed))

    def val_cost(self) -> float:
        return self.val_s if self.val_s is not None else self.val_estimate_s

    def plan(
        self, it: int, elapsed: float, val_every: int | None, ckpt_every: int | None
    ) -> tuple[int, dict[str, float]]:
        """``(max_iter, details)`` for validations every ``val_every`` steps (None: none)."""
        c = max(self.step_time(), 1e-6)
        v = self.val_cost() if val_every else 0.0
        s = self.ckpt_s
        # Reserve: the final save (weights + checkpoint) and a margin for timing noise.
        avail = self.budget_s - elapsed - 2 * s - 0.01 * self.budget_s - 2 * c

        def cost(n: int) -> float:
            end = it + n
            total = n * c
            if val_every:
                vals = end // val_every - it // val_every
                if end % val_every:
                    vals += 1  # the final validation
                total += vals * v
            if ckpt_every:
                total += (end // ckpt_every - it // ckpt_every) * s
            return total

        lo, hi = 0, max(0, int(avail / c)) + 1
        while lo < hi:  # the largest n with cost(n) <= avail (cost grows with n)
            mid = (lo + hi + 1) // 2
            if cost(mid) <= avail:
                lo = mid
            else:
                hi = mid - 1
        return it + lo, {"sec_per_iter": c, "val_s": v, "ckpt_s": s, "available_s": avail}


def train(config: Config, *, progress: bool = True) -> TrainResult:
    """Train a PSPNet as configured; see the module docstring for the outputs.

    Distributed: under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
    the process group is initialised here (gloo on CPU, nccl on CUDA, with
    ``train.dist_timeout``), BatchNorm becomes synchronised (``train.sync_bn``), the model is
    wrapped in DistributedDataParallel, every process gets a disjoint slice of every batch, and
    only rank 0 writes files, logs and the progress bar.

    Time budget (``train.time_budget`` minutes): the clock runs from the start of this call
    (plus the training time of earlier runs when resuming). The first
    ``train.budget_warmup_iters`` steps are not timed; the mean time of the next
    ``train.budget_measure_iters`` steps (held at the base learning rate meanwhile) sets
    ``max_iter`` so that the steps, the expected validations and checkpoints, the final
    validation and the final save fit the remaining time (with the automatic validation
    interval, validations get at most a quarter of the time left, and none when a single pass
    over the validation set would take more). The plan is refreshed every ~5 % of
    the run and after every validation with the measured costs; a refresh only changes how
    fast the poly schedule advances from where it is, so the learning rate decays smoothly and
    reaches 0 when the budget is spent, not cut short. If the time runs out anyway (the
    machine got slower), the run stops early, cleanly, and still writes ``final/``.

    Args:
        config: The configuration (see :class:`~pspnet.config.Config`).
        progress: Show a progress bar (rank 0).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: Invalid or incompatible settings (e.g. resuming a different model).
        DataError: A bad data file (label values outside the classes fail before any step).
        CheckpointError: Unreadable checkpoints or backbone weights.
        TrainingDiverged: The loss became NaN or infinite.
    """
    info = init_distributed(config.train.device, config.train.dist_timeout)
    old_threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        with warnings.catch_warnings():
            if not info.is_main:
                warnings.simplefilter("ignore")
            return _Run(config, info, progress).run()
    finally:
        if config.train.threads:
            torch.set_num_threads(old_threads)
        cleanup(info)


@dataclass
class _Loop:
    """What the training loop reads and updates, in one place instead of a dozen locals."""

    data: TrainData
    net: nn.Module
    """The network: its weights are checkpointed, validated and saved."""
    model: nn.Module
    """What a step calls: ``net``, or its DistributedDataParallel wrapper."""
    optimizer: torch.optim.Optimizer
    scaler: Any
    """A CUDA GradScaler for fp16, else None."""
    schedule: PolySchedule
    budget: _Budget | None
    sampler: TrainBatchSampler
    criterion: PSPLoss
    precision: str
    spe: int
    """Optimizer steps per epoch."""
    val_enabled: bool
    val_every: int | None
    """Steps between validations (None: decided by the first budget plan; 0: none)."""
    ckpt_every: int
    """Steps between checkpoints (the budget plan counts their cost)."""
    resumed_from: Path | None = None
    loader: Any = None
    it: int = 0
    """Optimizer steps done (the loop's clock)."""
    next_replan: int = -1
    """Step at which the budget plan is refreshed next (-1: none pending)."""
    final_loss: float | None = None
    sums: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"loss": 0.0, "main": 0.0, "aux": 0.0, "n": 0}
    )
    t_log: float = dataclasses.field(default_factory=time.perf_counter)


class _Run:
    """One training process (state shared by the helpers of :func:`train`)."""

    def __init__(self, cfg: Config, info: DistInfo, progress: bool) -> None:
        self.t_start = time.perf_counter()
        self.cfg = cfg
        self.info = info
        self.progress = progress
        self.work_dir = Path(cfg.train.work_dir)
        self.device = info.device
        self.log_file: Any = None
        self.tb: Any = None
        self.bar: Any = None
        self.elapsed_before = 0.0
        self.best_miou = -1.0
        self.best_iter = -1
        self.last_val_iter = -1
        self.last_metrics: SegMetrics | None = None
        self.last_ckpt_path: Path | None = None
        self.last_ckpt_iter = -1
        self.last_ckpt_time = time.perf_counter()

    # -- utilities ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_start)

    def event(self, kind: str, **fields: Any) -> None:
        if not self.info.is_main or self.log_file is None:
            return
        rec = {"event": kind, "time": round(time.time(), 3), **fields}
        self.log_file.write(json.dumps(_json_safe(rec)) + "\n")
        self.log_file.flush()

    def say(self, msg: str) -> None:
        if not self.info.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            log.info(msg)

    # -- set-up ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()
            if self.log_file is not None:
                self.log_file.close()

    def _resume_state(self) -> tuple[Path, dict[str, Any]] | None:
        resume = self.cfg.train.resume
        if not resume:
            return None
        found: tuple[Path, dict[str, Any]] | None = None
        path_str: str | None = None
        if self.info.is_main:
            if resume == "auto":
                found = find_checkpoint(self.work_dir)
            else:
                p = Path(resume)
                found = find_checkpoint(p) if p.is_dir() else (p, load_checkpoint(p))
            path_str = str(found[0]) if found else None
        path_str = broadcast_object(path_str)
        if path_str is None:
            return None
        if found is None:  # the other ranks read the file rank 0 chose
            found = (Path(path_str), load_checkpoint(path_str))
        return found

    def _run(self) -> TrainResult:
        resumed = self._resume_state()
        loop = self._setup(resumed)
        stop_reason = self._loop(loop)
        return self._finish(loop, stop_reason)

    def _setup(self, resumed: tuple[Path, dict[str, Any]] | None) -> _Loop:
        """Config, data checks, model, optimiser, schedule, restored state, outputs, loader."""
        info = self.info
        state = resumed[1] if resumed else None
        cfg = self.cfg
        if resumed is not None:
            cfg = _check_resume(cfg, resumed[1], resumed[0], info.world_size)
        data = build_data(cfg)
        # Fill in what the config left to the data and the machine, so config.yaml and the
        # checkpoints say what actually ran.
        crop = cfg.data.crop_size or _auto_crop(data.train)
        precision = resolve_precision(cfg.train.precision, self.device)
        workers = cfg.data.num_workers if cfg.data.num_workers is not None else min(2, _cpu_count())
        cfg = self.cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, crop_size=tuple(crop), num_workers=workers),
            train=dataclasses.replace(
                cfg.train, precision=precision,  # type: ignore[arg-type]
                channels_last=resolve_channels_last(cfg.train.channels_last, self.device, precision),
            ),
        )
        tc = cfg.train
        per_pass = tc.batch_size // (tc.accum_steps * info.world_size)
        if per_pass < 2:
            # BatchNorm (and the pyramid's 1x1 bin) cannot train on one image per pass.
            raise ConfigError(
                f"`train.batch_size` {tc.batch_size} gives {per_pass} image(s) per forward pass "
                f"(over {info.world_size} process(es) and {tc.accum_steps} accumulation step(s)); "
                "BatchNorm needs at least 2: raise --batch-size or lower train.accum_steps"
            )
        class_weights = self._check_data(data)  # before anything is trained or written
        sampler = TrainBatchSampler(
            len(data.train), tc.batch_size, accum_steps=tc.accum_steps, rank=info.rank,
            world_size=info.world_size, seed=tc.seed,
        )  # fmt: skip
        net, model = self._build_model(state)
        oc = cfg.optim
        optimizer = build_optimizer(
            net, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay,
            head_lr_mult=oc.head_lr_mult, nesterov=oc.nesterov,
        )  # fmt: skip
        scaler = (
            torch.amp.GradScaler("cuda") if precision == "fp16" and self.device.type == "cuda"
            else None
        )  # fmt: skip
        spe = sampler.steps_per_epoch
        budget = None
        if tc.time_budget:
            budget = _Budget(tc.time_budget * 60.0, tc.budget_warmup_iters, tc.budget_measure_iters)
            schedule = PolySchedule(oc.lr, None, oc.power)  # max_iter planned after timing
        else:
            schedule = PolySchedule(oc.lr, tc.max_iter or (tc.epochs or DEFAULT_EPOCHS) * spe,
                                    oc.power)  # fmt: skip
        val_enabled = data.val is not None and tc.val_interval != 0
        loop = _Loop(
            data=data, net=net, model=model, optimizer=optimizer, scaler=scaler,
            schedule=schedule, budget=budget, sampler=sampler, spe=spe, precision=precision,
            criterion=PSPLoss(tc.aux_weight, cfg.data.ignore_index, class_weights),
            val_enabled=val_enabled,
            val_every=self._val_every(schedule.max_iter, spe) if val_enabled else None,
            ckpt_every=min(x for x in (spe, tc.checkpoint_interval or spe) if x > 0),
            resumed_from=resumed[0] if resumed else None,
        )  # fmt: skip
        if resumed is not None:
            self._restore(loop, *resumed)
        self._open_outputs(loop, class_weights)
        loop.loader = self._loader(data, sampler)
        if budget is not None and data.val is not None:
            w, h = image_size(data.val.samples[0].image)
            self._val_pixels_factor = (h * w) / (crop[0] * crop[1])
            self._n_val = len(data.val)
        if info.is_main and self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=schedule.max_iter, initial=loop.it, desc="training",
                            unit="it", dynamic_ncols=True)  # fmt: skip
        return loop

    def _check_data(self, data: TrainData) -> tuple[float, ...] | None:
        """Scan every label (and, with ``data.skip_bad``, decode every image); drop the bad
        samples within the limit; return the class weights of the loss."""
        cfg, info = self.cfg, self.info
        weights = cfg.train.class_weights
        skip = cfg.data.skip_bad
        if not (cfg.data.scan_labels or isinstance(weights, str) or skip):
            return weights  # type: ignore[return-value]
        counts, bad_train = _scan(data.train, info, self.progress, skip)
        bad_val: list[tuple[int, str]] = []
        if data.val is not None and (cfg.data.scan_labels or skip):
            bad_val = _scan(data.val, info, self.progress, skip)[1]
        if bad_train or bad_val:
            self._report_skipped(data, bad_train, bad_val)
            data.train = _drop_bad(data.train, bad_train, "training", skip)
            if data.val is not None:
                data.val = _drop_bad(data.val, bad_val, "validation", skip - len(bad_train))
        if isinstance(weights, str):
            return tuple(class_weights_from_counts(counts, weights))
        return weights

    def _build_model(self, state: dict[str, Any] | None) -> tuple[nn.Module, nn.Module]:
        """``(net, model)``: the network, and what the step calls (``net`` or its DDP wrapper)."""
        cfg, tc, info = self.cfg, self.cfg.train, self.info
        random.seed(tc.seed)
        np.random.seed(tc.seed % (1 << 32))
        torch.manual_seed(tc.seed)
        net = build_model(cfg.model)
        if state is None and tc.backbone_weights:
            load_backbone_weights(net, tc.backbone_weights)
        if info.world_size > 1:
            # Different dropout masks per process (the weights are identical: DDP syncs them).
            torch.manual_seed(tc.seed + 1_000_003 * info.rank)
            if tc.sync_bn:
                net = convert_sync_batchnorm(net, self.device.type, timeout_s=tc.dist_timeout)
        net.to(self.device)
        if tc.channels_last:
            net = net.to(memory_format=torch.channels_last)
        net.config = cfg.model  # type: ignore[assignment]
        if info.world_size == 1:
            return net, net
        model = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # An aux head left out of the loss gets no gradient.
            find_unused_parameters=cfg.model.aux and tc.aux_weight == 0,
        )
        return net, model

    def _restore(self, loop: _Loop, path: Path, state: dict[str, Any]) -> None:
        """Load a checkpoint's weights, optimiser, schedule, plan, scores and RNG states."""
        loop.net.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        if loop.scaler is not None and state.get("scaler"):
            loop.scaler.load_state_dict(state["scaler"])
        loop.schedule.load_state_dict(state["schedule"])
        loop.it = int(state["iteration"])
        plan = state.get("plan", {})
        loop.next_replan = int(plan.get("next_replan", -1))
        if loop.val_enabled and int(plan.get("val_every", -1)) >= 0:
            loop.val_every = int(plan["val_every"])  # 0: switched off by the budget
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.best_miou = float(state.get("best_miou", -1.0))
        self.best_iter = int(state.get("best_iter", -1))
        self.last_val_iter = int(state.get("last_val_iter", -1))
        if int(state.get("steps_per_epoch", loop.spe)) != loop.spe:
            warnings.warn(
                f"the training set changed size since {path}: an epoch was "
                f"{state.get('steps_per_epoch')} steps, now {loop.spe}; the data order after "
                "resuming differs from an uninterrupted run",
                stacklevel=2,
            )
        rng = state["rng"]
        restore_rng(rng[self.info.rank] if isinstance(rng, list) else rng)
        self.last_ckpt_path = path
        self.last_ckpt_iter = loop.it

    def _open_outputs(self, loop: _Loop, class_weights: tuple[float, ...] | None) -> None:
        """config.yaml, log.jsonl (and TensorBoard) on rank 0; the start/resume event."""
        cfg, data = self.cfg, loop.data
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.work_dir / "config.yaml", cfg.to_yaml().encode())
            self.log_file = open(self.work_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if cfg.train.tensorboard:
                self.tb = _tensorboard(self.work_dir / "tb")
        self.event(
            "resume" if loop.resumed_from else "start",
            iteration=loop.it,
            max_iter=loop.schedule.max_iter,
            steps_per_epoch=loop.spe,
            world_size=self.info.world_size,
            precision=loop.precision,
            crop_size=list(cfg.data.crop_size),  # type: ignore[arg-type]
            checkpoint=str(loop.resumed_from) if loop.resumed_from else None,
            train_images=len(data.train),
            val_images=len(data.val) if data.val is not None else 0,
            class_weights=list(class_weights) if class_weights is not None else None,
        )
        if loop.resumed_from:
            self.say(f"resumed from {loop.resumed_from} at iteration {loop.it}")

    def _loader(self, data: TrainData, sampler: TrainBatchSampler) -> DataLoader:
        return training_loader(self.cfg, data.train, sampler, pin_memory=self.device.type == "cuda")

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self, loop: _Loop) -> str:
        """Train until the schedule ends or the budget is spent; returns the stop reason."""
        tc, schedule, budget = self.cfg.train, loop.schedule, loop.budget
        data_iter: Iterator[Any] | None = None
        loop.model.train()
        while schedule.max_iter is None or loop.it < schedule.max_iter:
            t_step = time.perf_counter()
            epoch = loop.it // loop.spe
            if data_iter is None or (loop.it % loop.spe == 0 and loop.sampler.epoch != epoch):
                # The order of each epoch depends only on (seed, epoch): resuming mid-epoch
                # starts the same permutation at the step where the run stopped.
                loop.sampler.set_epoch(epoch, loop.it % loop.spe)
                data_iter = iter(loop.loader)
            lr = schedule.apply(loop.optimizer, loop.it)
            main, aux, (ckpt_now, stop_now) = self._step(loop, data_iter, epoch)
            loop.it += 1
            if budget is not None:
                budget.step_times.append(time.perf_counter() - t_step)
            self._log_step(loop, lr, main, aux)

            # Time budget: plan / re-plan max_iter (rank 0 decides, everyone follows).
            if budget is not None and budget.ready() and (
                schedule.max_iter is None
                or (loop.next_replan >= 0 and loop.next_replan <= loop.it < schedule.max_iter)
            ):
                self._replan(loop)
            if stop_now:
                self.say(
                    f"time budget of {tc.time_budget} min spent at iteration {loop.it}; "
                    "stopping early and saving the final model"
                )
                return "time_budget"
            if loop.val_enabled and loop.val_every and (
                loop.it % loop.val_every == 0 or loop.it == schedule.max_iter
            ) and self._val_fits(budget):
                self._validate(loop)
                if budget is not None and schedule.max_iter is not None and (
                    loop.it < schedule.max_iter
                ):
                    self._replan(loop)  # with the measured cost of a validation
            if (
                loop.it % loop.spe == 0
                or (tc.checkpoint_interval and loop.it % tc.checkpoint_interval == 0)
                or ckpt_now
                or loop.it == schedule.max_iter
            ):
                self._checkpoint(loop)
        return "completed"

    def _step(
        self, loop: _Loop, data_iter: Iterator[Any], epoch: int
    ) -> tuple[float, float, tuple[bool, bool]]:
        """One optimizer step over ``accum_steps`` micro-batches.

        Returns:
            ``(main, aux, (checkpoint_now, stop_now))``: the losses averaged over the
            processes and micro-batches, and rank 0's clock decisions, shared with every rank
            in the same all-reduce as the losses (one collective per micro-batch).

        Raises:
            TrainingDiverged: A non-finite loss on any process, before the weights change.
        """
        tc, info = self.cfg.train, self.info
        model, optimizer, scaler = loop.model, loop.optimizer, loop.scaler
        optimizer.zero_grad(set_to_none=True)
        flags = [0.0, 0.0]
        main_v = aux_v = 0.0
        f_ckpt = f_stop = 0.0
        for m in range(tc.accum_steps):
            batch = _next_batch(data_iter)
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last_micro = m == tc.accum_steps - 1
            sync = (
                model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel)
                and not last_micro else contextlib.nullcontext()
            )  # fmt: skip
            with sync:
                with autocast(self.device, loop.precision):
                    outputs = model(images)
                loss, parts = loop.criterion(outputs, labels)
                if last_micro and info.is_main:
                    flags = self._time_flags(loop.budget)
                stats = torch.stack([
                    parts["main"].float(), parts["aux"].float(),
                    (~torch.isfinite(loss)).float(),
                    torch.tensor(flags[0], device=loss.device),
                    torch.tensor(flags[1], device=loss.device),
                ])  # fmt: skip
                if is_distributed():
                    torch.distributed.all_reduce(stats)
                s_main, s_aux, bad, f_ckpt, f_stop = stats.tolist()
                w = info.world_size
                if bad > 0:
                    self._diverged(loop.it, epoch, s_main / w, s_aux / w, loss)
                main_v += s_main / w / tc.accum_steps
                aux_v += s_aux / w / tc.accum_steps
                (scaler.scale(loss / tc.accum_steps) if scaler is not None
                 else loss / tc.accum_steps).backward()  # fmt: skip
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return main_v, aux_v, (f_ckpt > 0, f_stop > 0)

    def _log_step(self, loop: _Loop, lr: float, main: float, aux: float) -> None:
        """Progress bar every step; a ``train`` record (means since the last) every
        ``log_interval`` steps, after the first and after the last."""
        tc, it = self.cfg.train, loop.it
        total = main + tc.aux_weight * aux
        sums = loop.sums
        sums["loss"] += total
        sums["main"] += main
        sums["aux"] += aux
        sums["n"] += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", refresh=False)
        if not (it % tc.log_interval == 0 or it == 1 or it == loop.schedule.max_iter):
            return
        n = max(1, sums["n"])
        loop.final_loss = sums["loss"] / n
        now = time.perf_counter()
        rec = {
            "iter": it, "epoch": round(it / loop.spe, 4), "lr": lr,
            "loss": loop.final_loss, "loss_main": sums["main"] / n,
            "loss_aux": sums["aux"] / n, "sec_per_iter": (now - loop.t_log) / n,
            "elapsed_s": self.elapsed(), "max_iter": loop.schedule.max_iter,
            "progress": loop.schedule.progress(it),
        }  # fmt: skip
        self.event("train", **rec)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loop.final_loss, it)
            self.tb.add_scalar("train/loss_main", rec["loss_main"], it)
            self.tb.add_scalar("train/loss_aux", rec["loss_aux"], it)
            self.tb.add_scalar("train/lr", lr, it)
        loop.sums = {"loss": 0.0, "main": 0.0, "aux": 0.0, "n": 0}
        loop.t_log = now

    def _finish(self, loop: _Loop, stop_reason: str) -> TrainResult:
        """Last validation and checkpoint, ``final/`` weights, the ``end`` event."""
        it, info = loop.it, self.info
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if (
            loop.val_enabled
            and loop.val_every != 0
            and self.last_val_iter != it
            and stop_reason == "completed"
            and it > 0
        ):
            if self._val_fits(loop.budget):
                self._validate(loop)
            else:
                self.event("val_skipped", iter=it, reason="no time left in the budget")
        if self.last_ckpt_iter != it:
            self._checkpoint(loop)
        final_dir = self.work_dir / "final"
        if info.is_main:
            save_weights(loop.net, final_dir, self._meta(loop.data, f"final, iteration {it}"))
        best = self.best_iter >= 0
        self.event(
            "end", iteration=it, reason=stop_reason, elapsed_s=self.elapsed(),
            best_mIoU=self.best_miou if best else None, best_iter=self.best_iter if best else None,
        )  # fmt: skip
        if is_distributed():
            torch.distributed.barrier()
        return TrainResult(
            work_dir=self.work_dir,
            final_dir=final_dir,
            best_dir=self.work_dir / "best" if best else None,
            iterations=it,
            max_iter=loop.schedule.max_iter or it,
            epochs=it / loop.spe,
            best_miou=self.best_miou if best else None,
            best_iteration=self.best_iter if best else None,
            last_metrics=self.last_metrics,
            final_loss=loop.final_loss,
            elapsed_s=self.elapsed(),
            stop_reason=stop_reason,
            resumed_from=loop.resumed_from,
            config=self.cfg,
        )

    # -- pieces of the loop -----------------------------------------------------------------

    def _report_skipped(
        self, data: TrainData, bad_train: list[tuple[int, str]], bad_val: list[tuple[int, str]]
    ) -> None:
        """Write ``skipped.json`` and say what is left out (rank 0), before any limit check."""
        report = {
            "train": [{"image": str(data.train.samples[i].image), "error": m} for i, m in bad_train],
            "val": [
                {"image": str(data.val.samples[i].image), "error": m}  # type: ignore[union-attr]
                for i, m in bad_val
            ],
            "limit": self.cfg.data.skip_bad,
        }
        n = len(bad_train) + len(bad_val)
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.work_dir / "skipped.json", json.dumps(report, indent=1).encode())
            for _, msg in (bad_train + bad_val)[:10]:
                self.say(f"skipping bad sample: {msg}")
            self.say(
                f"{n} bad samples ({len(bad_train)} training, {len(bad_val)} validation; limit "
                f"{self.cfg.data.skip_bad}) listed in {self.work_dir / 'skipped.json'}"
            )

    def _val_every(self, max_iter: int | None, spe: int) -> int | None:
        tc = self.cfg.train
        if tc.val_interval is None:
            if max_iter is None:
                return None  # decided with the first budget plan
            return max(1, math.ceil(max_iter / AUTO_VALIDATIONS))
        return tc.val_interval * (spe if tc.val_unit == "epoch" else 1)

    def _time_flags(self, budget: _Budget | None) -> list[float]:
        """[checkpoint now, stop now] decided by rank 0 from the clocks."""
        tc = self.cfg.train
        ckpt = 0.0
        if tc.checkpoint_minutes > 0:
            if time.perf_counter() - self.last_ckpt_time >= tc.checkpoint_minutes * 60:
                ckpt = 1.0
        stop = 0.0
        if budget is not None and self.elapsed() >= budget.budget_s:
            stop = 1.0
        return [ckpt, stop]

    def _replan(self, loop: _Loop) -> None:
        """Plan (or re-plan) max_iter on rank 0 and share the decision."""
        budget, schedule, it = loop.budget, loop.schedule, loop.it
        val_every, val_enabled, ckpt_every = loop.val_every, loop.val_enabled, loop.ckpt_every
        assert budget is not None  # internal invariant: only called with a time budget
        decision = None
        if self.info.is_main:
            if val_enabled and budget.val_s is None:
                factor = getattr(self, "_val_pixels_factor", 1.0)
                micro = max(1, self.cfg.train.batch_size // (self.cfg.train.accum_steps
                                                              * self.info.world_size))
                # A forward pass (~1/4 of a training step) per image at the val images' size.
                budget.val_estimate_s = (
                    self._val_images_local() * budget.step_time() / micro * factor / 4.0
                )
            vi = val_every
            note = None
            if val_enabled and vi is None:
                # Auto interval, decided once: up to AUTO_VALIDATIONS evenly spaced, using at
                # most VAL_SHARE of the remaining time; none if even one does not fit.
                left = budget.budget_s - self.elapsed()
                v = budget.val_cost()
                k = AUTO_VALIDATIONS if v <= 0 else min(
                    AUTO_VALIDATIONS, int(budget.VAL_SHARE * left // v))
                if k <= 0:
                    vi = 0
                    note = (
                        f"validation skipped: one pass over the validation set takes ~{v:.0f} s "
                        f"of the {left:.0f} s left (more than {budget.VAL_SHARE:.0%})"
                    )
                else:
                    first, _ = budget.plan(it, self.elapsed(), None, ckpt_every)
                    vi = max(1, math.ceil(max(1, first - it) / k))
            new_max, details = budget.plan(
                it, self.elapsed(), vi if val_enabled and vi else None, ckpt_every
            )
            remaining = max(0, new_max - it)
            nxt = it + max(10, remaining // 20)
            decision = (new_max, nxt, vi, details, note)
        new_max, nxt, vi, details, note = broadcast_object(decision)
        first_plan = schedule.max_iter is None
        schedule.replan(it, new_max)
        if self.bar is not None:
            self.bar.total = new_max
            self.bar.refresh()
        self.event("plan", iter=it, max_iter=new_max, first=first_plan, val_every=vi, **details)
        if note:
            self.event("val_skipped", iter=it, reason=note)
            self.say(note)
        if first_plan:
            self.say(
                f"time budget: {details['sec_per_iter']:.3f} s per iteration measured, "
                f"planning {new_max} iterations"
            )
        loop.next_replan, loop.val_every = nxt, vi

    def _val_fits(self, budget: _Budget | None) -> bool:
        """Whether a validation fits in the time budget (always True without a budget)."""
        if budget is None:
            return True
        return self.elapsed() + budget.val_cost() <= budget.budget_s

    def _val_images_local(self) -> int:
        n = getattr(self, "_n_val", 0)
        return math.ceil(n / self.info.world_size)

    def _validate(self, loop: _Loop) -> None:
        """Whole-image validation; keeps ``best/`` and feeds the budget the measured cost."""
        net, data, it, spe, budget = loop.net, loop.data, loop.it, loop.spe, loop.budget
        assert data.val is not None  # internal invariant: val_enabled implies a val set
        t0 = time.perf_counter()
        metrics = evaluate_model(
            net,
            data.val,
            num_classes=self.cfg.model.num_classes,
            ignore_index=self.cfg.data.ignore_index,
            mode="whole",
            precision=loop.precision,
            num_workers=0,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        if budget is not None:
            budget.val_s = seconds
        self.last_val_iter = it
        self.last_metrics = metrics
        improved = math.isfinite(metrics.miou) and metrics.miou > self.best_miou
        if improved:
            self.best_miou = float(metrics.miou)
            self.best_iter = it
            if self.info.is_main:
                save_weights(
                    net, self.work_dir / "best",
                    self._meta(data, f"best, iteration {it}, val mIoU {metrics.miou:.4f}"),
                )  # fmt: skip
        self.event(
            "val", iter=it, epoch=round(it / spe, 4), mIoU=metrics.miou, mAcc=metrics.macc,
            allAcc=metrics.all_acc, iou=[float(x) for x in metrics.iou], seconds=seconds,
            best=improved,
        )  # fmt: skip
        if self.tb is not None:
            self.tb.add_scalar("val/mIoU", metrics.miou, it)
            self.tb.add_scalar("val/mAcc", metrics.macc, it)
            self.tb.add_scalar("val/allAcc", metrics.all_acc, it)
        self.say(
            f"iteration {it}: val mIoU {metrics.miou:.4f}, mAcc {metrics.macc:.4f}, allAcc "
            f"{metrics.all_acc:.4f} ({seconds:.1f} s)" + (" (best)" if improved else "")
        )

    def _checkpoint(self, loop: _Loop) -> None:
        """Everything an exact resume needs (rank 0 writes; every rank gives its RNG state)."""
        net, optimizer, scaler, schedule = loop.net, loop.optimizer, loop.scaler, loop.schedule
        it, spe, budget = loop.it, loop.spe, loop.budget
        next_replan, val_every = loop.next_replan, loop.val_every
        t0 = time.perf_counter()
        rng = all_gather_object(rng_state())
        if self.info.is_main:
            state = {
                "format": TRAIN_CHECKPOINT_FORMAT,
                "version": TRAIN_CHECKPOINT_VERSION,
                "iteration": it,
                "epoch": it // spe,
                "epoch_step": it % spe,
                "steps_per_epoch": spe,
                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": to_cpu(optimizer.state_dict()),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "schedule": schedule.state_dict(),
                "plan": {"next_replan": int(next_replan),
                         "val_every": -1 if val_every is None else int(val_every)},
                "rng": rng,
                "elapsed_s": self.elapsed(),
                "best_miou": float(self.best_miou),
                "best_iter": int(self.best_iter),
                "last_val_iter": int(self.last_val_iter),
                "world_size": self.info.world_size,
                "config": self.cfg.to_dict(),
            }
            path = write_checkpoint(self.work_dir, state)
            self.last_ckpt_path = path
            seconds = time.perf_counter() - t0
            if budget is not None:
                budget.ckpt_s = seconds
            self.event("checkpoint", iter=it, path=str(path), seconds=seconds)
        self.last_ckpt_iter = it
        self.last_ckpt_time = time.perf_counter()

    def _diverged(self, it: int, epoch: int, main: float, aux: float, loss: Tensor) -> None:
        ck = self.last_ckpt_path
        where = (
            f"The last good checkpoint {ck} (iteration {self.last_ckpt_iter}) was kept."
            if ck is not None else "No checkpoint had been written yet."
        )  # fmt: skip
        msg = (
            f"training diverged: the loss is {float(loss.detach()):.6g} at iteration {it + 1} "
            f"(epoch {epoch}; main loss {main:.6g}, aux loss {aux:.6g}). {where} Lower the "
            "learning rate (optim.lr), check the data, or train in fp32 (train.precision=fp32)."
        )
        self.event("diverged", iter=it + 1, loss_main=main, loss_aux=aux,
                   checkpoint=str(ck) if ck else None)  # fmt: skip
        raise TrainingDiverged(msg, it + 1, main, aux, ck)

    def _meta(self, data: TrainData, what: str) -> WeightsMeta:
        return WeightsMeta(
            model=self.cfg.model,
            classes=data.class_names,
            palette=data.palette,
            preprocess=self.cfg.preprocess,
            ignore_index=self.cfg.data.ignore_index,
            source=f"pspnet train {self.work_dir} ({what})",
        )


def _tensorboard(log_dir: Path) -> Any:
    """A SummaryWriter, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(
            "train.tensorboard is on but the tensorboard package is not installed "
            "(pip install 'pspnet[tensorboard]'); logging to log.jsonl only",
            stacklevel=3,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


# --------------------------------------------------------------------------------------------
# Command-line style entry points


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def build_config(
    data_root: str | os.PathLike[str] | None = None,
    train_list: str | os.PathLike[str] | None = None,
    val_list: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    class_names: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    crop_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    time_budget: float | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    resume: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    skip_bad: int | None = None,
) -> Config:
    """The :class:`Config` of ``pspnet train``: defaults < config file < flags < overrides.

    Without a config file, on a CPU, ``model.output_stride`` defaults to
    :data:`CPU_OUTPUT_STRIDE` (16) unless ``--set model.output_stride=...`` says otherwise; with
    a config file its values (the paper's 8 in ``configs/``) are used as written.
    """
    tree: dict[str, Any] = load_yaml(config_file) if config_file else {}
    flags: dict[str, Any] = {}
    for dotted, value in (
        ("data.root", data_root),
        ("data.train_list", train_list),
        ("data.val_list", val_list),
        ("model.num_classes", num_classes),
        ("data.class_names", class_names),
        ("model.arch", arch),
        ("data.crop_size", list(crop_size) if isinstance(crop_size, (list, tuple)) else crop_size),
        ("train.batch_size", batch_size),
        ("train.epochs", epochs),
        ("train.time_budget", time_budget),
        ("train.work_dir", work_dir),
        ("train.resume", resume),
        ("data.skip_bad", skip_bad),
    ):
        if value is not None:
            _set(flags, dotted, str(value) if isinstance(value, os.PathLike) else value)
    tree = _deep_merge(tree, flags)
    tree = apply_overrides(tree, list(overrides))
    model = tree.setdefault("model", {})
    if model.get("num_classes") is None:
        dataset = tree.get("data", {}).get("dataset")
        if not dataset:
            # The dataclass default (21) would silently train a VOC-sized head on any data.
            raise ConfigError(
                "`model.num_classes` is not set: give --num-classes K (the number of classes in "
                "the labels, the ignore value not counted) or use a config file that sets it"
            )
        model["num_classes"] = get_dataset_spec(str(dataset)).num_classes
    if not config_file and "output_stride" not in model and _trains_on_cpu(tree):
        model["output_stride"] = CPU_OUTPUT_STRIDE  # a CPU default, written to config.yaml
    return Config.from_dict(tree)


def _trains_on_cpu(tree: dict[str, Any]) -> bool:
    device = str(tree.get("train", {}).get("device", "auto"))
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def train_from_args(
    data_root: str | os.PathLike[str] | None,
    train_list: str | os.PathLike[str] | None,
    val_list: str | os.PathLike[str] | None,
    num_classes: int | None,
    class_names: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    crop_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    time_budget: float | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    resume: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    skip_bad: int | None = None,
) -> TrainResult:
    """``pspnet train``: build the config (file < flags < ``--set`` overrides) and train.

    Works the same under ``torchrun`` (each process calls this; see :func:`train`).

    Args:
        data_root: Root the list files' paths are relative to (--data-root).
        train_list: Training list file of ``image label`` lines (--train-list).
        val_list: Validation list file (--val-list); None: no validation.
        num_classes: Number of classes (--num-classes).
        class_names: File of class names (--class-names).
        arch: Architecture (--arch; default pspnet_r18).
        crop_size: Training crop, one side or (h, w) (--crop-size; default from the data).
        batch_size: Images per optimizer step over all processes (--batch-size; default 8).
        epochs: Epochs (--epochs; default 50).
        time_budget: Minutes for the whole run (--time-budget); overrides epochs.
        work_dir: Output folder (--work-dir).
        resume: ``auto`` or a checkpoint path (--resume).
        config_file: YAML config (--config).
        overrides: ``key=value`` strings (--set), e.g. ``optim.lr=0.02``.
        progress: Show progress bars.
        skip_bad: Bad samples to leave out (--skip-bad; ``data.skip_bad``).
    """
    cfg = build_config(
        data_root, train_list, val_list, num_classes, class_names, arch, crop_size, batch_size,
        epochs, time_budget, work_dir, resume, config_file, overrides, skip_bad,
    )  # fmt: skip
    return train(cfg, progress=progress)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pspnet.engine.train",
        description="Train a PSPNet (also under torchrun --nproc-per-node N).",
    )
    p.add_argument("--data-root")
    p.add_argument("--train-list")
    p.add_argument("--val-list")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--class-names")
    p.add_argument("--arch")
    p.add_argument("--crop-size", type=int, nargs="+")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--time-budget", type=float, metavar="MIN")
    p.add_argument("--work-dir")
    p.add_argument("--resume", metavar="auto|PATH")
    p.add_argument("--config")
    p.add_argument("--skip-bad", type=int, nargs="?", const=10, metavar="N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    return p


def main_torchrun(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``python -m pspnet.engine.train`` or under ``torchrun``).

    Returns:
        0 on success; 1 on a configuration, data or checkpoint error; 2 when training diverged.
    """
    args = _parser().parse_args(argv)
    crop = args.crop_size
    if crop is not None:
        crop = crop[0] if len(crop) == 1 else tuple(crop)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = train_from_args(
            args.data_root, args.train_list, args.val_list, args.num_classes,
            class_names=args.class_names, arch=args.arch, crop_size=crop,
            batch_size=args.batch_size, epochs=args.epochs, time_budget=args.time_budget,
            work_dir=args.work_dir, resume=args.resume, config_file=args.config,
            overrides=args.overrides, progress=not args.no_progress, skip_bad=args.skip_bad,
        )  # fmt: skip
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {result.iterations} iterations ({result.stop_reason}); final weights in "
            f"{result.final_dir}"
            + (f"; best val mIoU {result.best_miou:.4f} in {result.best_dir}"
               if result.best_dir else "")  # fmt: skip
        )
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    sys.exit(main_torchrun())
