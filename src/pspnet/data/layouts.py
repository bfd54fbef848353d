"""The registered data-set layouts (CamVid, ADE20K, VOC2012, Cityscapes): their class names,
sample discovery and default label maps.

To add a layout: write ``<name>_samples(root, split) -> list[Sample]`` here and register a
:class:`DatasetSpec` in :data:`DATASETS`.

This module imports only the standard library, :mod:`pspnet.config` and :mod:`pspnet.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pspnet.config import ConfigError
from pspnet.data.io import DataError, MissingDataFileError, Sample
from pspnet.data.label_maps import (
    CityscapesLabelIds,
    LabelMap,
    ReduceZeroLabel,
    did_you_mean,
    make_label_map,
)
from pspnet.data.samples import folder_samples, names_preview, read_list_file

__all__ = [
    "camvid_samples",
    "ade20k_samples",
    "voc_samples",
    "cityscapes_samples",
    "DatasetSpec",
    "DATASETS",
    "get_dataset_spec",
    "CAMVID_CLASSES",
    "ADE20K_CLASSES",
    "VOC_CLASSES",
    "CITYSCAPES_CLASSES",
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
                f"({names_preview(leaked)}); remove them (train_aug must exclude "
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
            f"{r / 'gtFine' / split}: {names_preview(missing)}; download gtFine_trainvaltest"
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
            f"unknown data set {name!r}{did_you_mean(key, DATASETS)}; choose one of "
            f"{', '.join(DATASETS)}, or give a list file / image and label folders"
        )
    return DATASETS[key]
