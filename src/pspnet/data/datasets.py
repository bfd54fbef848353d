"""Segmentation data sets: the validating torch Dataset, and the public data-set API.

Label maps (:mod:`pspnet.data.label_maps`) are applied **exactly once, in one place**:
:meth:`SegmentationDataset.load_label`. Every label is validated after mapping
(:mod:`pspnet.data.validation`): a value outside ``[0, num_classes)`` that is not
``ignore_index`` raises :class:`~pspnet.data.io.DataError` naming the file, the values and the
likely fix. :func:`~pspnet.data.validation.scan_labels` runs the same checks over all label files
before training starts.

The concerns live in their own modules, and their public names are importable from here too:

* :mod:`pspnet.data.label_maps`: ``LabelMap`` and its kinds, ``make_label_map``;
* :mod:`pspnet.data.validation`: ``validate_labels``, ``scan_labels``, ``LabelScan``;
* :mod:`pspnet.data.samples`: list files and folder pairs (``list_file_samples``,
  ``folder_samples``);
* :mod:`pspnet.data.layouts`: the registered layouts (``get_dataset_spec``, ``DATASETS``,
  ``camvid_samples`` ...).

This module imports only the standard library, numpy, torch, :mod:`pspnet.config` and
:mod:`pspnet.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pspnet.data.classes import read_classes_file
from pspnet.data.io import (
    DEFAULT_MAX_PIXELS,
    DataError,
    Sample,
    read_image,
    read_label,
)
from pspnet.data.label_maps import (
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    LABEL_MAPS,
    CityscapesLabelIds,
    ColorToIndex,
    IdentityMap,
    LabelMap,
    ReduceZeroLabel,
    make_label_map,
)
from pspnet.data.layouts import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    DATASETS,
    VOC_CLASSES,
    DatasetSpec,
    ade20k_samples,
    camvid_samples,
    cityscapes_samples,
    get_dataset_spec,
    voc_samples,
)
from pspnet.data.samples import folder_samples, list_file_samples
from pspnet.data.validation import LabelScan, check_same_size, scan_labels, validate_labels

# Defined here, then the data-set API that callers and docs import from this module, by home.
__all__ = [
    "SegmentationDataset", "Transform", "make_dataset",
    "read_classes_file",  # classes
    "DataError", "Sample",  # io
    "LabelMap", "IdentityMap", "ReduceZeroLabel", "CityscapesLabelIds", "ColorToIndex",
    "LABEL_MAPS", "make_label_map", "CITYSCAPES_LABEL_TO_TRAIN_ID",  # label_maps
    "validate_labels", "LabelScan", "scan_labels",  # validation
    "list_file_samples", "folder_samples",  # samples
    "camvid_samples", "ade20k_samples", "voc_samples", "cityscapes_samples", "DatasetSpec",
    "DATASETS", "get_dataset_spec", "CAMVID_CLASSES", "ADE20K_CLASSES", "VOC_CLASSES",
    "CITYSCAPES_CLASSES",  # layouts
]  # fmt: skip

# --------------------------------------------------------------------------------------------
# The dataset.

#: (image HxWx3 uint8 RGB, label HxW int64) -> (image tensor, label tensor).
Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Image/label pairs as tensors, with labels mapped once and validated.

    Args:
        samples: The samples; each must have a label file.
        num_classes: Number of classes; valid labels are ``0 .. num_classes-1``.
        ignore_index: Label value excluded from loss and metrics; must not be a class index.
        label_map: Applied to every raw label exactly once (here, in :meth:`load_label`).
        transform: ``(image uint8 HxWx3 RGB, label int64 HxW) -> (image, label)`` tensors
            (augmentation, normalisation). When None, the image is returned as a float32
            (3, H, W) tensor of raw 0..255 RGB values and the label as int64 (H, W).
        max_pixels: Decompression-bomb limit for every file read.

    Each item is ``{"image": Tensor, "label": int64 Tensor, "name": str}``.

    Raises:
        DataError: No samples, or samples without a label file.
        ValueError: ``num_classes`` or ``ignore_index`` out of range.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        *,
        ignore_index: int = 255,
        label_map: LabelMap | None = None,
        transform: Transform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is also a class index (num_classes {num_classes}); "
                "use a value outside 0..num_classes-1, usually 255"
            )
        self.samples: list[Sample] = list(samples)
        if not self.samples:
            raise DataError("the data set has no samples; check the data root and the split")
        unlabeled = [s.name for s in self.samples if s.label is None]
        if unlabeled:
            raise DataError(
                f"{len(unlabeled)} samples have no label file (first: {unlabeled[0]!r}, image "
                f"{next(s.image for s in self.samples if s.label is None)}); training and "
                "evaluation need labels: use a labelled split"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def _read_mapped(self, index: int) -> tuple[np.ndarray, int]:
        """Read, map (the one place label maps are applied) and validate one label."""
        sample = self.samples[index]
        path = sample.label
        if path is None:  # excluded by __init__ unless `samples` was modified afterwards
            raise DataError(f"sample {sample.name!r} ({sample.image}) has no label file")
        rgb = self.label_map is not None and self.label_map.input_kind == "rgb"
        raw = read_label(path, max_pixels=self.max_pixels, allow_rgb=rgb)
        if self.label_map is None:
            label, unknown = raw.astype(np.int64, copy=False), 0
        else:
            try:
                label, unknown = self.label_map.map_with_stats(raw)
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
        validate_labels(label, self.num_classes, self.ignore_index, path, label_map=self.label_map)
        return label, unknown

    def load_label(self, index: int) -> np.ndarray:
        """The label of sample ``index``: read, mapped once, validated; int64 (H, W)."""
        return self._read_mapped(index)[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = read_image(sample.image, max_pixels=self.max_pixels)
        label = self.load_label(index)
        check_same_size(sample, image.shape[:2], label.shape[:2])
        if self.transform is None:
            image_t = torch.from_numpy(image).permute(2, 0, 1).contiguous().float()
            label_t = torch.from_numpy(label)
        else:
            image_t, label_t = self.transform(image, label)
            if not isinstance(image_t, torch.Tensor) or not isinstance(label_t, torch.Tensor):
                raise TypeError(
                    f"transform {self.transform!r} must return two tensors (image, label), got "
                    f"{type(image_t).__name__} and {type(label_t).__name__}"
                )
            label_t = label_t.long()
        return {"image": image_t, "label": label_t, "name": sample.name}

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({len(self)} samples, num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, label_map={self.label_map!r})"
        )


def make_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    *,
    transform: Transform | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SegmentationDataset:
    """Build the :class:`SegmentationDataset` of a registered data set with its defaults."""
    spec = get_dataset_spec(name)
    return SegmentationDataset(
        spec.find_samples(root, split),
        spec.num_classes,
        ignore_index=spec.ignore_index,
        label_map=spec.make_label_map(),
        transform=transform,
        max_pixels=max_pixels,
    )
