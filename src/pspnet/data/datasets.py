"""Segmentation data sets: sample discovery, label maps, and a validating torch Dataset.

Label maps (ADE20K's reduce-zero, Cityscapes labelIds -> trainIds, colour -> index) are applied
**exactly once, in one place**: :meth:`SegmentationDataset.load_label`. Transforms never apply
them. As a second guard, the maps refuse ``int64`` input: raw labels are never ``int64``
(:func:`~pspnet.data.io.read_label` gives uint8/uint16/int32) and mapped labels always are, so a
second application fails loudly instead of silently shifting every class.

Every label is validated after mapping: a value outside ``[0, num_classes)`` that is not
``ignore_index`` raises :class:`~pspnet.data.io.DataError` naming the file, the values and the
likely fix. :func:`scan_labels` runs the same checks over all label files before training starts.

This module imports only the standard library, numpy, Pillow, torch and :mod:`pspnet.config`.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from pspnet.config import ConfigError
from pspnet.data.classes import read_classes_file
from pspnet.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DataError,
    MissingDataFileError,
    Sample,
    image_size,
    read_image,
    read_label,
    read_list_file,
)

__all__ = [
    "DataError",
    "Sample",
    "LabelMap",
    "IdentityMap",
    "ReduceZeroLabel",
    "CityscapesLabelIds",
    "ColorToIndex",
    "LABEL_MAPS",
    "make_label_map",
    "validate_labels",
    "SegmentationDataset",
    "LabelScan",
    "scan_labels",
    "list_file_samples",
    "folder_samples",
    "read_classes_file",
    "camvid_samples",
    "ade20k_samples",
    "voc_samples",
    "cityscapes_samples",
    "DatasetSpec",
    "DATASETS",
    "get_dataset_spec",
    "make_dataset",
    "CAMVID_CLASSES",
    "ADE20K_CLASSES",
    "VOC_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
]

# --------------------------------------------------------------------------------------------
# Class names.

#: CamVid-11 (SegNet split); void is 255 in the prepared data.
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip

#: Pascal VOC 2012: background + 20 object classes; 255 marks object borders (ignored).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: Cityscapes 19 evaluation classes, in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

#: ADE20K SceneParsing (ADEChallengeData2016) 150 classes, index = stored value - 1.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

#: The official Cityscapes labelId -> trainId table (cityscapesscripts/helpers/labels.py);
#: every labelId not listed here is ignored.
CITYSCAPES_LABEL_TO_TRAIN_ID: Mapping[int, int] = MappingProxyType({
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Label maps.


class LabelMap:
    """Maps raw stored label values to training classes (``ignore_index`` for ignored pixels).

    Subclasses set :attr:`name` and implement :meth:`map_with_stats`. Input is the raw array
    from :func:`~pspnet.data.io.read_label`; output is ``int64``. Maps are applied by
    :class:`SegmentationDataset` only, exactly once.
    """

    name: ClassVar[str] = "label_map"
    #: "index": takes (H, W) integer labels; "rgb": takes (H, W, 3) colour labels.
    input_kind: ClassVar[Literal["index", "rgb"]] = "index"
    #: Whether applying the map to its own output is harmless (only true for the identity).
    idempotent: ClassVar[bool] = False

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, label: np.ndarray) -> np.ndarray:
        """Map a raw label array; see :meth:`map_with_stats`."""
        return self.map_with_stats(label)[0]

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        """Map a raw label array.

        Returns:
            The mapped ``int64`` array, and the number of pixels the map could not interpret
            and set to ``ignore_index`` (unknown colours; 0 for the other maps).
        """
        raise NotImplementedError

    def _check_raw(self, label: np.ndarray) -> None:
        if not self.idempotent and label.dtype == np.int64:
            raise DataError(
                f"label map {self.name!r} was given an int64 array, which is what label maps "
                "return: it is being applied a second time, which would shift every class. "
                "Apply label maps only through SegmentationDataset, never in transforms"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ignore_index={self.ignore_index})"


class IdentityMap(LabelMap):
    """Keeps stored values unchanged (labels already hold 0..num_classes-1 and ignore)."""

    name = "none"
    idempotent = True

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        if label.ndim != 2:
            raise DataError(f"label map 'none' expects (H, W) labels, got shape {label.shape}")
        return label.astype(np.int64, copy=False), 0


class ReduceZeroLabel(LabelMap):
    """ADE20K's convention: stored 0 ("other") becomes ignore, every other value v becomes v-1.

    Stored values already equal to ``ignore_index`` stay ignored (as in mmsegmentation).
    Applied exactly once, by the dataset; applying it twice would turn class 0 ("wall") into
    ignore and shift all classes, which the int64 guard refuses.
    """

    name = "reduce_zero_label"

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        self._check_raw(label)
        raw = label.astype(np.int64)
        out = raw - 1
        out[(raw == 0) | (raw == self.ignore_index)] = self.ignore_index
        return out, 0


class CityscapesLabelIds(LabelMap):
    """Cityscapes ``*_gtFine_labelIds.png`` values -> the 19 trainIds; all other ids ignored.

    Uses the official table :data:`CITYSCAPES_LABEL_TO_TRAIN_ID`.
    """

    name = "cityscapes_label_ids"

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__(ignore_index)
        lut = np.full(256, self.ignore_index, dtype=np.int64)
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
            lut[label_id] = train_id
        lut.flags.writeable = False
        self._lut = lut

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        self._check_raw(label)
        raw = label.astype(np.int64)
        inside = (raw >= 0) & (raw < self._lut.size)
        out = np.where(inside, self._lut[np.clip(raw, 0, self._lut.size - 1)], self.ignore_index)
        return out.astype(np.int64, copy=False), 0


class ColorToIndex(LabelMap):
    """Colour-coded (RGB) labels -> class indices, by exact colour match.

    Colours not in the palette become ``ignore_index``; :meth:`map_with_stats` and
    :meth:`unknown_colors` report how many pixels that affected (``pspnet data check`` lists them).

    Args:
        colors: Index -> (R, G, B), as a mapping or a sequence (position = index). Entries may
            map to ``ignore_index`` (e.g. CamVid's void colour).
        ignore_index: Value for unknown colours.
    """

    name = "color_to_index"
    input_kind = "rgb"

    def __init__(
        self,
        colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
        ignore_index: int = 255,
    ) -> None:
        super().__init__(ignore_index)
        items = list(colors.items()) if isinstance(colors, Mapping) else list(enumerate(colors))
        if not items:
            raise DataError("ColorToIndex needs at least one colour; pass the data set's palette")
        keys, values, seen = [], [], {}
        for index, rgb in items:
            rgb = tuple(int(c) for c in rgb)
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise DataError(
                    f"ColorToIndex: colour {rgb} for class {index} must be three values in 0..255"
                )
            key = _rgb_key(rgb)
            if key in seen and seen[key] != index:
                raise DataError(
                    f"ColorToIndex: colour {rgb} is given to both class {seen[key]} and class "
                    f"{index}; each colour must name one class"
                )
            seen[key] = index
            keys.append(key)
            values.append(int(index))
        order = np.argsort(keys)
        self._keys = np.asarray(keys, dtype=np.int64)[order]
        self._values = np.asarray(values, dtype=np.int64)[order]
        self._keys.flags.writeable = False
        self._values.flags.writeable = False
        self.colors: dict[int, tuple[int, int, int]] = {
            int(i): tuple(int(c) for c in rgb) for i, rgb in items  # type: ignore[misc]
        }

    @classmethod
    def from_classes_file(
        cls, path: str | os.PathLike[str], ignore_index: int = 255
    ) -> ColorToIndex:
        """Build the map from a ``classes.txt`` (:func:`~pspnet.data.classes.read_classes_file`)."""
        _, palette = read_classes_file(path)
        return cls(palette, ignore_index=ignore_index)

    def _match(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DataError(
                f"colour map expects (H, W, 3) colour labels, got shape {rgb.shape}; the labels "
                "are not colour-coded, so drop the colour map"
            )
        keys = _rgb_key_array(rgb)
        pos = np.clip(np.searchsorted(self._keys, keys), 0, self._keys.size - 1)
        found = self._keys[pos] == keys
        return np.where(found, self._values[pos], self.ignore_index), found

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        out, found = self._match(label)
        return out.astype(np.int64, copy=False), int(found.size - np.count_nonzero(found))

    def unknown_colors(self, rgb: np.ndarray) -> dict[tuple[int, int, int], int]:
        """Colours of ``rgb`` that are not in the palette, with their pixel counts."""
        _, found = self._match(rgb)
        if found.all():
            return {}
        keys, counts = np.unique(_rgb_key_array(rgb)[~found], return_counts=True)
        return {
            (int(k >> 16), int((k >> 8) & 255), int(k & 255)): int(c)
            for k, c in zip(keys, counts)
        }

    def __repr__(self) -> str:
        return f"ColorToIndex({len(self.colors)} colours, ignore_index={self.ignore_index})"


def _rgb_key(rgb: tuple[int, ...]) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def _rgb_key_array(rgb: np.ndarray) -> np.ndarray:
    a = rgb.astype(np.int64)
    return (a[:, :, 0] << 16) | (a[:, :, 1] << 8) | a[:, :, 2]


#: Label maps selectable by name (for configs and the command line).
LABEL_MAPS: Mapping[str, type[LabelMap]] = MappingProxyType({
    IdentityMap.name: IdentityMap,
    ReduceZeroLabel.name: ReduceZeroLabel,
    CityscapesLabelIds.name: CityscapesLabelIds,
})  # fmt: skip


def make_label_map(name: str | None, *, ignore_index: int = 255) -> LabelMap | None:
    """Build a label map from its name (``none``, ``reduce_zero_label``, ``cityscapes_label_ids``).

    ``None`` and ``"none"`` give None (no mapping). Colour maps need a palette: build
    :class:`ColorToIndex` directly.

    Raises:
        ConfigError: Unknown name; the message lists the choices.
    """
    if name is None or name == IdentityMap.name:
        return None
    if name not in LABEL_MAPS:
        raise ConfigError(
            f"unknown label map {name!r}{_did_you_mean(name, LABEL_MAPS)}; choose one of "
            f"{', '.join(LABEL_MAPS)}"
        )
    return LABEL_MAPS[name](ignore_index=ignore_index)


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------
# Validation.


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
        _check_same_size(sample, image.shape[:2], label.shape[:2])
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


def _check_same_size(sample: Sample, image_hw: tuple[int, ...], label_hw: tuple[int, ...]) -> None:
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
        unknown_color_pixels: Pixels of colours a :class:`ColorToIndex` did not know (these
            are counted in ``ignore_pixels`` too).
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

    def check(i: int) -> tuple[np.ndarray, int, int]:
        label, unknown = dataset._read_mapped(i)
        sample = dataset.samples[i]
        if decode_images:
            h, w = read_image(sample.image, max_pixels=dataset.max_pixels).shape[:2]
            _check_same_size(sample, (h, w), label.shape)
        elif check_sizes:
            w, h = image_size(sample.image)
            _check_same_size(sample, (h, w), label.shape)
        valid = label[label != dataset.ignore_index]
        counts = np.bincount(valid.ravel(), minlength=n_classes)
        return counts, int(label.size - valid.size), unknown

    def one(i: int) -> tuple[np.ndarray, int, int, str | None]:
        try:
            return (*check(i), None)
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
        bar = _progress(results, n, what) if progress else results
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


def _progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    # tqdm is a declared dependency but not one of this layer's core imports: import lazily so
    # the data layer works (without a bar) where it is missing.
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with pspnet
        return it
    return tqdm(it, total=total, desc=desc, unit="file")


# --------------------------------------------------------------------------------------------
# Sample discovery.


def list_file_samples(
    root: str | os.PathLike[str],
    list_file: str | os.PathLike[str],
    *,
    resolver: Callable[[str], tuple[Path, Path | None]] | None = None,
) -> list[Sample]:
    """Samples from a list file of ``image_path label_path`` lines (paths relative to ``root``)
    or of sample names, one a line.

    A relative ``list_file`` that does not exist from the working directory is also looked for
    under ``root``. Without ``resolver``, names are found under ``root`` in the conventional
    layouts (``images/<list stem>/<name>.<ext>``, then ``images/<name>.<ext>``, labels in
    ``labels/`` or ``annotations/``; see :class:`~pspnet.data.io.LayoutResolver`). See
    :func:`~pspnet.data.io.read_list_file` for the format.
    """
    lf = Path(list_file)
    if not lf.is_absolute() and not lf.exists() and (Path(root) / lf).exists():
        lf = Path(root) / lf
    return read_list_file(lf, root, resolver=resolver)


def _image_files(directory: Path, recursive: bool) -> dict[str, Path]:
    """Files with an allowed image extension, keyed by relative path without extension."""
    pattern = "**/*" if recursive else "*"
    found: dict[str, Path] = {}
    for p in sorted(directory.glob(pattern)):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        key = p.relative_to(directory).with_suffix("").as_posix()
        if key in found:
            raise DataError(
                f"{directory}: two files share the name {key!r} ({found[key].name} and "
                f"{p.name}); keep one of them so images and labels pair unambiguously"
            )
        found[key] = p
    return found


def _names_preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def folder_samples(
    image_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    *,
    label_suffix: str = "",
    recursive: bool = False,
) -> list[Sample]:
    """Pair images and labels in two folders by file name without extension.

    Args:
        image_dir: Folder of images (allowed extensions only; other files are skipped).
        label_dir: Folder of labels.
        label_suffix: Extra text at the end of label stems (``a.jpg`` pairs with
            ``a_mask.png`` for ``label_suffix="_mask"``).
        recursive: Also look in sub-folders (pairing by relative path).

    Returns:
        Samples sorted by name.

    Raises:
        MissingDataFileError: A folder does not exist.
        DataError: No images, or images without a label (listed by name). Labels without an
            image only give a warning (they are unused).
    """
    img_dir, lbl_dir = Path(image_dir), Path(label_dir)
    for what, d in (("image", img_dir), ("label", lbl_dir)):
        if not d.is_dir():
            raise MissingDataFileError(f"{what} folder {d} does not exist; check the path")
    images = _image_files(img_dir, recursive)
    if not images:
        raise DataError(
            f"{img_dir}: no images found (allowed extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); check the path"
        )
    labels = _image_files(lbl_dir, recursive)
    if label_suffix:
        labels = {
            k[: -len(label_suffix)]: v for k, v in labels.items() if k.endswith(label_suffix)
        }
    missing = sorted(k for k in images if k not in labels)
    if missing:
        raise DataError(
            f"{len(missing)} of {len(images)} images in {img_dir} have no label in {lbl_dir} "
            f"(expected <name>{label_suffix}.png): {_names_preview(missing)}; add the labels, "
            "remove those images, or set the label suffix"
        )
    extra = sorted(k for k in labels if k not in images)
    if extra:
        warnings.warn(
            f"{len(extra)} labels in {lbl_dir} have no image in {img_dir} and are unused: "
            f"{_names_preview(extra)}",
            stacklevel=2,
        )
    return [Sample(image=images[k], label=labels[k], name=k) for k in sorted(images)]


def _require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise MissingDataFileError(
            f"{dataset}: folder {path} does not exist; the {dataset} root must contain {layout}"
        )


def _split_list(
    root: Path, list_path: Path, dataset: str, split: str, available: Sequence[str]
) -> None:
    if not list_path.is_file():
        raise MissingDataFileError(
            f"{dataset}: split file {list_path} for split {split!r} does not exist; "
            f"splits found under {root}: {', '.join(available) or 'none'}; check the root and split"
        )


def camvid_samples(root: str | os.PathLike[str], split: str) -> list[Sample]:
    """CamVid in the prepared layout (``images/<split>/<name>.png``, ``labels/<split>/<name>.png``,
    ``<split>.txt`` with one name a line).
    """
    r = Path(root)
    _require_dir(r, "CamVid", "images/, labels/ and <split>.txt")
    available = sorted(p.stem for p in r.glob("*.txt") if p.stem != "classes")
    list_path = r / f"{split}.txt"
    _split_list(r, list_path, "CamVid", split, available)

    def resolve(name: str) -> tuple[Path, Path | None]:
        return r / "images" / split / f"{name}.png", r / "labels" / split / f"{name}.png"

    return read_list_file(list_path, r, resolver=resolve)


_ADE_SPLITS = {"train": "training", "training": "training", "val": "validation",
               "validation": "validation"}  # fmt: skip


def ade20k_samples(root: str | os.PathLike[str], split: str) -> list[Sample]:
    """ADE20K SceneParsing (``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png``). ``split`` is train/training or val/validation.
    ``root`` may be the ``ADEChallengeData2016`` folder or its parent.
    """
    r = Path(root)
    if (r / "ADEChallengeData2016").is_dir():
        r = r / "ADEChallengeData2016"
    if split not in _ADE_SPLITS:
        raise ConfigError(
            f"ADE20K split {split!r} is unknown; choose one of {', '.join(_ADE_SPLITS)}"
        )
    sub = _ADE_SPLITS[split]
    layout = "images/{training,validation} and annotations/{training,validation}"
    _require_dir(r / "images" / sub, "ADE20K", layout)
    _require_dir(r / "annotations" / sub, "ADE20K", layout)
    return folder_samples(r / "images" / sub, r / "annotations" / sub)


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise MissingDataFileError(
        f"VOC2012: no JPEGImages folder in {root}, {root / 'VOC2012'} or "
        f"{root / 'VOCdevkit' / 'VOC2012'}; point the root at VOCdevkit/VOC2012"
    )


_VOC_AUG_LISTS = (
    "ImageSets/Segmentation/train_aug.txt",
    "ImageSets/SegmentationAug/train_aug.txt",
    "list/train_aug.txt",
    "train_aug.txt",
)


def voc_samples(root: str | os.PathLike[str], split: str) -> list[Sample]:
    """Pascal VOC 2012 segmentation.

    Splits ``train``/``val``/``trainval`` use ``ImageSets/Segmentation/<split>.txt``,
    ``JPEGImages`` and ``SegmentationClass`` (palette PNGs, read as indices). ``train_aug`` is
    the 10,582-image set with SBD labels: ``SegmentationClassAug`` plus a ``train_aug.txt`` list
    (names or ``image label`` lines) in one of: ImageSets/Segmentation/, ImageSets/SegmentationAug/,
    list/, or the root. It is checked to contain no ``val`` image.
    """
    r = _voc_root(Path(root))
    seg_sets = r / "ImageSets" / "Segmentation"
    if split == "train_aug":
        label_dir = r / "SegmentationClassAug"
        if not label_dir.is_dir():
            raise MissingDataFileError(
                f"VOC2012 train_aug: {label_dir} does not exist; build it from the SBD data set "
                "(e.g. mmsegmentation's tools/dataset_converters/voc_aug.py) or use split 'train'"
            )
        list_path = next((r / c for c in _VOC_AUG_LISTS if (r / c).is_file()), None)
        if list_path is None:
            raise MissingDataFileError(
                f"VOC2012 train_aug: no train_aug.txt found in {r} (looked for "
                f"{', '.join(_VOC_AUG_LISTS)}); put the SBD augmented list there"
            )
    else:
        label_dir = r / "SegmentationClass"
        list_path = seg_sets / f"{split}.txt"
        available = sorted(p.stem for p in seg_sets.glob("*.txt")) if seg_sets.is_dir() else []
        _split_list(r, list_path, "VOC2012", split, available + ["train_aug"])

    def resolve(name: str) -> tuple[Path, Path | None]:
        return r / "JPEGImages" / f"{name}.jpg", label_dir / f"{name}.png"

    samples = read_list_file(list_path, r, resolver=resolve)
    val_list = seg_sets / "val.txt"
    if split == "train_aug" and val_list.is_file():
        # The aug list is easy to build wrongly; val images in it make val scores meaningless.
        val = {ln.strip() for ln in val_list.read_text().splitlines() if ln.strip()}
        leaked = sorted(s.name for s in samples if s.name in val)
        if leaked:
            raise DataError(
                f"{list_path}: {len(leaked)} val images are in the training list "
                f"({_names_preview(leaked)}); remove them (train_aug must exclude "
                f"{val_list})"
            )
    return samples


def cityscapes_samples(root: str | os.PathLike[str], split: str) -> list[Sample]:
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (map with :class:`CityscapesLabelIds`).
    """
    r = Path(root)
    layout = "leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/"
    _require_dir(r / "leftImg8bit" / split, "Cityscapes", layout)
    _require_dir(r / "gtFine" / split, "Cityscapes", layout)
    suffix = "_leftImg8bit.png"
    samples, missing = [], []
    for img in sorted((r / "leftImg8bit" / split).glob(f"*/*{suffix}")):
        base = img.name[: -len(suffix)]
        label = r / "gtFine" / split / img.parent.name / f"{base}_gtFine_labelIds.png"
        if not label.is_file():
            missing.append(f"{img.parent.name}/{base}")
            continue
        samples.append(Sample(image=img, label=label, name=base))
    if missing:
        raise MissingDataFileError(
            f"Cityscapes {split}: {len(missing)} images have no *_gtFine_labelIds.png in "
            f"{r / 'gtFine' / split}: {_names_preview(missing)}; download gtFine_trainvaltest"
        )
    if not samples:
        raise DataError(f"Cityscapes: no *{suffix} images in {r / 'leftImg8bit' / split}")
    return samples


# --------------------------------------------------------------------------------------------
# Registry.


@dataclass(frozen=True)
class DatasetSpec:
    """A known data set layout.

    Attributes:
        name: Registry key.
        num_classes: Classes (ignore excluded).
        class_names: One name per class.
        splits: Split names the discovery function accepts.
        find_samples: ``(root, split) -> list[Sample]``.
        label_map: Name of the default label map in :data:`LABEL_MAPS` (``none`` = no mapping).
        ignore_index: The ignore value after mapping.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    find_samples: Callable[[str | os.PathLike[str], str], list[Sample]]
    label_map: str = "none"
    ignore_index: int = 255

    def make_label_map(self) -> LabelMap | None:
        """The default label map (None when the labels need none)."""
        return make_label_map(self.label_map, ignore_index=self.ignore_index)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "camvid": DatasetSpec("camvid", 11, CAMVID_CLASSES, ("train", "val", "test"),
                          camvid_samples),
    "ade20k": DatasetSpec("ade20k", 150, ADE20K_CLASSES, ("train", "val"), ade20k_samples,
                          label_map=ReduceZeroLabel.name),
    "voc2012": DatasetSpec("voc2012", 21, VOC_CLASSES, ("train", "val", "trainval", "train_aug"),
                           voc_samples),
    "cityscapes": DatasetSpec("cityscapes", 19, CITYSCAPES_CLASSES, ("train", "val", "test"),
                              cityscapes_samples, label_map=CityscapesLabelIds.name),
})  # fmt: skip


def get_dataset_spec(name: str) -> DatasetSpec:
    """Look up a registered data set.

    Raises:
        ConfigError: Unknown name; the message lists the choices.
    """
    key = name.lower().strip()
    if key not in DATASETS:
        raise ConfigError(
            f"unknown data set {name!r}{_did_you_mean(key, DATASETS)}; choose one of "
            f"{', '.join(DATASETS)}, or give a list file / image and label folders"
        )
    return DATASETS[key]


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
