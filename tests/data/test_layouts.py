"""Tests for pspnet.data.layouts: the registered data-set layouts and their registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pspnet.config import ConfigError
from pspnet.data.datasets import make_dataset
from pspnet.data.io import DataError, MissingDataFileError
from pspnet.data.label_maps import (
    CityscapesLabelIds,
    ReduceZeroLabel,
)
from pspnet.data.layouts import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    DATASETS,
    VOC_CLASSES,
    ade20k_samples,
    camvid_samples,
    cityscapes_samples,
    get_dataset_spec,
    voc_samples,
)

# ------------------------------------------------------------------------------ layouts


def _fake_camvid(root: Path) -> None:
    for split, names in (("train", ["f1", "f2"]), ("val", ["f3"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for n in names:
            Image.new("RGB", (4, 3)).save(root / "images" / split / f"{n}.png")
            Image.new("L", (4, 3), 3).save(root / "labels" / split / f"{n}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "classes.txt").write_text("0\tSky\t128 128 128\n")


def test_camvid_layout(tmp_path: Path) -> None:
    _fake_camvid(tmp_path)
    samples = camvid_samples(tmp_path, "train")
    assert [s.name for s in samples] == ["f1", "f2"]
    assert samples[1].label == tmp_path / "labels" / "train" / "f2.png"
    with pytest.raises(MissingDataFileError, match="splits found .*: train, val"):
        camvid_samples(tmp_path, "test")
    (tmp_path / "labels" / "val" / "f3.png").unlink()
    with pytest.raises(MissingDataFileError, match=r"val\.txt:1: label file .*f3\.png"):
        camvid_samples(tmp_path, "val")
    ds = make_dataset("camvid", tmp_path, "train")
    assert ds.num_classes == 11 and ds.label_map is None and ds[0]["label"].unique().tolist() == [3]


def test_ade20k_layout(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("training", "validation"):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
    Image.new("RGB", (3, 2)).save(root / "images/training/ADE_train_00000001.jpg")
    Image.new("L", (3, 2), 1).save(root / "annotations/training/ADE_train_00000001.png")
    samples = ade20k_samples(tmp_path, "train")  # the parent folder works too
    assert [s.name for s in samples] == ["ADE_train_00000001"]
    ds = make_dataset("ade20k", root, "training")
    assert isinstance(ds.label_map, ReduceZeroLabel) and ds[0]["label"].unique().tolist() == [0]
    with pytest.raises(ConfigError, match="choose one of"):
        ade20k_samples(root, "test")


def test_voc_layout_and_train_aug_leak_check(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for n in ("2007_000032", "2007_000033", "2008_000001"):
        Image.new("RGB", (3, 2)).save(root / "JPEGImages" / f"{n}.jpg")
        Image.new("P", (3, 2), 1).save(root / "SegmentationClass" / f"{n}.png")
        Image.new("L", (3, 2), 1).save(root / "SegmentationClassAug" / f"{n}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    train = voc_samples(tmp_path, "train")
    assert train[0].label == root / "SegmentationClass" / "2007_000032.png"
    with pytest.raises(MissingDataFileError, match="train_aug.txt"):
        voc_samples(root, "train_aug")
    # The authors' two-path format, with DeepLab's leading slashes.
    (root / "train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n"
    )
    assert [s.name for s in voc_samples(root, "train_aug")] == ["2007_000032", "2008_000001"]
    (root / "train_aug.txt").write_text("2007_000032\n2007_000033\n")
    with pytest.raises(DataError, match="1 val images are in the training list"):
        voc_samples(root, "train_aug")


def test_cityscapes_layout(tmp_path: Path) -> None:
    img_dir = tmp_path / "leftImg8bit" / "val" / "lindau"
    gt_dir = tmp_path / "gtFine" / "val" / "lindau"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(img_dir / "lindau_000000_000019_leftImg8bit.png")
    Image.new("L", (4, 2), 26).save(gt_dir / "lindau_000000_000019_gtFine_labelIds.png")
    samples = cityscapes_samples(tmp_path, "val")
    assert samples[0].name == "lindau_000000_000019"
    ds = make_dataset("cityscapes", tmp_path, "val")
    assert ds[0]["label"].unique().tolist() == [13]  # labelId 26 (car) -> trainId 13
    Image.new("RGB", (4, 2)).save(img_dir / "lindau_000001_000019_leftImg8bit.png")
    with pytest.raises(MissingDataFileError, match="lindau/lindau_000001_000019"):
        cityscapes_samples(tmp_path, "val")


def test_registry() -> None:
    assert set(DATASETS) == {"camvid", "ade20k", "voc2012", "cityscapes"}
    for spec in DATASETS.values():
        assert len(spec.class_names) == spec.num_classes
    assert (len(ADE20K_CLASSES), len(VOC_CLASSES), len(CITYSCAPES_CLASSES)) == (150, 21, 19)
    assert len(CAMVID_CLASSES) == 11
    assert isinstance(get_dataset_spec("Cityscapes").make_label_map(), CityscapesLabelIds)
    with pytest.raises(ConfigError, match="choose one of camvid, ade20k, voc2012, cityscapes"):
        get_dataset_spec("coco")
    with pytest.raises(TypeError):
        DATASETS["coco"] = DATASETS["camvid"]  # type: ignore[index]
