"""Label validation: one label's values (:func:`validate_labels`), one sample's sizes, and the
scan of a whole data set before training (:func:`scan_labels`).

A value outside ``[0, num_classes)`` that is not ``ignore_index`` raises
:class:`~pspnet.data.io.DataError` naming the file, the values and the likely fix.

This module imports only the standard library, numpy and :mod:`pspnet.data`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pspnet.data.io import DataError, Sample, image_size, read_image
from pspnet.data.label_maps import LabelMap

if TYPE_CHECKING:  # the dataset imports this module
    from pspnet.data.datasets import SegmentationDataset

__all__ = ["validate_labels", "check_same_size", "LabelScan", "scan_labels"]


def validate_labels(
    label: np.ndarray,
    num_classes: int,
    ignore_index: int,
    path: str | os.PathLike[str],
    *,
    label_map: LabelMap | None = None,
) -> None:
    """Raise if a (mapped) label holds values that are neither a class nor ``ignore_index``.

    Args:
        label: (H, W) integer labels, after the label map.
        num_classes: Valid classes are ``0 .. num_classes-1``.
        ignore_index: The one other allowed value.
        path: The label file, for the message.
        label_map: The map that was applied (only used to word the message).

    Raises:
        DataError: Naming the file, up to 10 bad values with pixel counts, and the likely fix.
    """
    bad = (label >= num_classes) & (label != ignore_index)
    if np.issubdtype(label.dtype, np.signedinteger):
        bad |= label < 0
    if not bad.any():
        return
    values, counts = np.unique(label[bad], return_counts=True)
    shown = ", ".join(f"{int(v)} ({int(c):,} px)" for v, c in zip(values[:10], counts[:10]))
    if values.size > 10:
        shown += f" and {values.size - 10} more values"
    mapped = f" after label map {label_map.name!r}" if label_map is not None else ""
    hint = ""
    largest = int(values.max())
    if label_map is None and values.min() == num_classes and largest == num_classes:
        hint = (
            f" The only bad value is {num_classes}: the labels look 1-based with 0 = unlabelled "
            "(as in ADE20K), which needs the label map reduce_zero_label."
        )
    elif label_map is None and num_classes == 19 and largest <= 33:
        hint = (
            " Values up to 33 look like Cityscapes labelIds, which need "
            "the label map cityscapes_label_ids."
        )
    raise DataError(
        f"{path}: label values outside classes 0..{num_classes - 1} and not the ignore index "
        f"{ignore_index}{mapped}: {shown}.{hint} Fix: check --num-classes (these values need at "
        f"least {largest + 1}), the label map (reduce_zero_label for ADE20K, "
        "cityscapes_label_ids for Cityscapes labelIds) or the ignore index (the data set's void "
        "value): `--label-map` / `--ignore-index` in evaluate and data check, `--set "
        "data.label_map=... data.ignore_index=...` in train."
    )


def check_same_size(sample: Sample, image_hw: tuple[int, ...], label_hw: tuple[int, ...]) -> None:
    """Raise :class:`DataError` naming both files when image and label sizes differ."""
    if tuple(image_hw) != tuple(label_hw):
        raise DataError(
            f"image {sample.image} is {image_hw[1]}x{image_hw[0]} (WxH) but its label "
            f"{sample.label} is {label_hw[1]}x{label_hw[0]}; they must have the same size: "
            "check that the list pairs the right files, or resize the label with "
            "nearest-neighbour interpolation"
        )


@dataclass
class LabelScan:
    """What :func:`scan_labels` found (all labels valid, or it would have raised).

    Attributes:
        n_files: Label files read.
        class_pixel_counts: Pixels per class, shape (num_classes,).
        ignore_pixels: Pixels equal to ``ignore_index`` (after the label map).
        unknown_color_pixels: Pixels of colours a :class:`~pspnet.data.label_maps.ColorToIndex`
            did not know (these are counted in ``ignore_pixels`` too).
    """

    n_files: int
    class_pixel_counts: np.ndarray
    ignore_pixels: int
    unknown_color_pixels: int = 0
    missing_classes: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    """``(sample index, error message)`` of the samples that failed (``collect_errors`` only);
    their pixels are not counted."""


def scan_labels(
    dataset: SegmentationDataset,
    *,
    workers: int | None = None,
    check_sizes: bool = True,
    progress: bool = False,
    decode_images: bool = False,
    collect_errors: bool = False,
) -> LabelScan:
    """Check every label of ``dataset`` before training; raise on the first bad file.

    Reads only the label files (plus the image *headers* when ``check_sizes``), in a thread
    pool: Pillow decodes with the GIL released. Errors are the same :class:`DataError` that
    ``dataset[i]`` would raise, reported for the first bad sample in data set order.

    Args:
        dataset: The data set to check.
        workers: Threads (default: up to 8).
        check_sizes: Also compare each label's size with its image's (header only).
        progress: Show a tqdm progress bar.
        decode_images: Also decode every image in full (finds truncated or corrupt files whose
            header reads fine; costs one full image read per sample).
        collect_errors: Record every bad sample in ``LabelScan.bad`` instead of raising.

    Returns:
        Pixel statistics of the whole data set (useful for class weights).

    Raises:
        DataError: The first bad label (unreadable, out-of-range values, size mismatch).
    """
    n_classes = dataset.num_classes

    def one(i: int) -> tuple[np.ndarray, int, int, str | None]:
        try:
            return (*_sample_stats(dataset, i, decode_images, check_sizes), None)
        except DataError as e:
            if not collect_errors:
                raise
            return np.zeros(n_classes, dtype=np.int64), 0, 0, str(e)

    totals = np.zeros(n_classes, dtype=np.int64)
    ignore = unknown_total = 0
    bad: list[tuple[int, str]] = []
    n = len(dataset)
    executor = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    try:
        results = executor.map(one, range(n))
        what = "checking images and labels" if decode_images else "scanning labels"
        bar = progress_bar(results, n, what) if progress else results
        for i, (counts, ign, unk, error) in enumerate(bar):
            if error is not None:
                bad.append((i, error))
            totals += counts
            ignore += ign
            unknown_total += unk
    finally:
        # On the first error, do not wait for the rest of a large data set to be read.
        executor.shutdown(wait=True, cancel_futures=True)
    if unknown_total:
        warnings.warn(
            f"{unknown_total:,} label pixels have colours that are not in the colour map and "
            "were set to the ignore index; run `pspnet data check` to list the files and colours",
            stacklevel=2,
        )
    return LabelScan(
        n_files=n,
        class_pixel_counts=totals,
        ignore_pixels=ignore,
        unknown_color_pixels=unknown_total,
        missing_classes=[int(c) for c in np.flatnonzero(totals == 0)],
        bad=bad,
    )


def _sample_stats(
    dataset: SegmentationDataset, i: int, decode_images: bool, check_sizes: bool
) -> tuple[np.ndarray, int, int]:
    """Read, map and check sample ``i``: (pixels per class, ignore pixels, unknown colours)."""
    label, unknown = dataset._read_mapped(i)
    sample = dataset.samples[i]
    if decode_images:
        h, w = read_image(sample.image, max_pixels=dataset.max_pixels).shape[:2]
        check_same_size(sample, (h, w), label.shape)
    elif check_sizes:
        w, h = image_size(sample.image)
        check_same_size(sample, (h, w), label.shape)
    valid = label[label != dataset.ignore_index]
    counts = np.bincount(valid.ravel(), minlength=dataset.num_classes)
    return counts, int(label.size - valid.size), unknown


def progress_bar(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    """``it`` with a tqdm bar of ``total`` files (``it`` itself where tqdm is missing)."""
    # tqdm is a declared dependency but not one of this layer's core imports: import lazily so
    # the data layer works (without a bar) where it is missing.
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with pspnet
        return it
    return tqdm(it, total=total, desc=desc, unit="file")
