"""Training data: the data sets, class names and palette a config names, and the loader of
augmented training samples that ``pspnet train`` reads.

Samples are keyed by ``(epoch, index)`` and augmented with
:func:`pspnet.data.transforms.sample_rng` ``(seed, epoch, index)``, so a batch depends neither
on the global RNGs nor on the number of DataLoader workers (bit-exact resume relies on it).
The batch sampler that yields those keys is the engine's
(:class:`pspnet.engine.distributed.TrainBatchSampler`); this module takes any.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pspnet.config import Config, ConfigError, DataConfig
from pspnet.data.classes import ClassFile, read_class_file
from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import DataError, MissingDataFileError, Sample, image_size, read_image
from pspnet.data.label_maps import run_label_map
from pspnet.data.layouts import DatasetSpec, get_dataset_spec
from pspnet.data.palette import default_palette
from pspnet.data.samples import list_file_samples
from pspnet.data.split import folder_split
from pspnet.data.transforms import eval_transform, sample_rng, train_transform

__all__ = [
    "AUTO_CROP_MAX", "TrainData", "auto_crop", "build_data", "drop_bad", "next_batch",
    "training_loader", "whole_frame",
]  # fmt: skip

#: Longest side of the training crop chosen from the data when none is configured.
AUTO_CROP_MAX = 320


def _read_class_file(path: str | Path, num_classes: int) -> ClassFile:
    """The class file of ``data.class_names``: names, palette and colours."""
    try:
        found = read_class_file(path)  # a malformed file raises its own DataError
    except MissingDataFileError:
        raise ConfigError(f"`data.class_names`: file {path} does not exist") from None
    if len(found.names) != num_classes:
        raise ConfigError(
            f"`data.class_names`: {path} lists {len(found.names)} classes but model.num_classes "
            f"is {num_classes} (--num-classes)"
        )
    return found


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
    train_samples, val_samples = _find_samples(cfg, spec)
    class_file = _read_class_file(dc.class_names, k) if dc.class_names else None
    map_name = dc.label_map if dc.label_map is not None else (spec.label_map if spec else None)
    label_map = run_label_map(
        map_name, class_file.colours if class_file else None, ignore_index=dc.ignore_index,
        source=f"class file {dc.class_names}",
    )  # fmt: skip
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
    if class_file is not None:
        names, palette = class_file.names, class_file.palette
    elif spec is not None:
        names = tuple(spec.class_names)
    if palette is None:
        palette = tuple(tuple(int(v) for v in c) for c in default_palette(k))
    return TrainData(train, val, names, palette)  # type: ignore[arg-type]


def _find_samples(
    cfg: Config, spec: DatasetSpec | None
) -> tuple[list[Sample], list[Sample] | None]:
    """(train, val or None) samples from list files, image/label folders or a data set."""
    dc = cfg.data
    if dc.train_list:
        root = Path(dc.root) if dc.root else Path(".")
        val = list_file_samples(root, dc.val_list) if dc.val_list else None
        return list_file_samples(root, dc.train_list), val
    if dc.images_dir and dc.labels_dir:
        return folder_split(
            dc.images_dir, dc.labels_dir, val_fraction=dc.val_fraction, seed=cfg.train.seed,
            work_dir=cfg.train.work_dir,
        )  # fmt: skip
    if spec is not None:
        if not dc.root:
            raise ConfigError(f"`data.root` is required to read data set {spec.name!r}")
        val = spec.find_samples(dc.root, dc.val_split) if dc.val_split else None
        return spec.find_samples(dc.root, dc.train_split), val
    raise ConfigError(
        "`data.train_list` is not set: give --images DIR --labels DIR (image and label "
        "folders), --data-root DIR --train-list FILE (a list of `image label` lines) or "
        "data.dataset with data.root"
    )


def training_loader(
    cfg: Config, train: SegmentationDataset, sampler: Any, *, num_workers: int | None = None,
    pin_memory: bool = False, crop_size: tuple[int, int] | None = None,
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
        crop_size: The crop (height, width); default ``cfg.data.crop_size`` (the run's last
            share trains on ``cfg.data.finish_crop_size`` instead).
    """
    dc = cfg.data
    workers = int(dc.num_workers or 0) if num_workers is None else int(num_workers)
    augment = train_transform(
        crop_size or dc.crop_size,  # type: ignore[arg-type]
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


def auto_crop(train: SegmentationDataset) -> tuple[int, int]:
    """min(320, shortest side among the first 16 training images), square."""
    sides = []
    for s in train.samples[:16]:
        w, h = image_size(s.image)
        sides.append(min(w, h))
    side = max(8, min([AUTO_CROP_MAX, *sides]))
    return side, side


def whole_frame(train: SegmentationDataset) -> tuple[int, int] | None:
    """``(height, width)`` shared by the first 16 training images, or None when they differ
    (then no single crop is "the whole image")."""
    sizes = {image_size(s.image) for s in train.samples[:16]}
    if len(sizes) != 1:
        return None
    w, h = sizes.pop()
    return h, w


def drop_bad(
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


def stop_workers(loader: DataLoader, data_iter: Iterator[Any] | None = None) -> None:
    """Stop the loader's worker processes now, not when the loader is garbage-collected.

    After an error the traceback keeps the loader (and its iterator) alive, and with them the
    worker processes: in a notebook, or a test session, they would outlive the failed run.

    Args:
        loader: The training DataLoader (its persistent iterator, if any, is stopped).
        data_iter: The iterator the loop was reading, if it is not the persistent one.
    """
    for it in (data_iter, getattr(loader, "_iterator", None)):
        shutdown = getattr(it, "_shutdown_workers", None)  # only multi-process iterators
        if shutdown is not None:
            shutdown()
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator = None  # a later iter(loader) starts fresh workers


def next_batch(data_iter: Iterator[Any]) -> Any:
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
