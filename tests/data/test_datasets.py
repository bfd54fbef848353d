"""Tests for pspnet.data.datasets: label maps, validation, discovery and the registry."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.config import ConfigError
from pspnet.data.datasets import SegmentationDataset, make_dataset, read_classes_file
from pspnet.data.io import DataError, MissingDataFileError, Sample, read_label
from pspnet.data.label_maps import (
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    CityscapesLabelIds,
    ColorToIndex,
    IdentityMap,
    ReduceZeroLabel,
    make_label_map,
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
from pspnet.data.samples import folder_samples
from pspnet.data.validation import scan_labels, validate_labels

# ------------------------------------------------------------------------------ the dataset


def test_item_without_transform(make_pair) -> None:
    label = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    img, lbl = make_pair("a", label)
    ds = SegmentationDataset([Sample(img, lbl, "a")], num_classes=3)
    item = ds[0]
    assert item["name"] == "a"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 2, 3)
    assert item["image"].max() > 1.0  # raw 0..255, not normalised
    expected = torch.from_numpy(np.array(Image.open(img))).permute(2, 0, 1).float()
    assert torch.equal(item["image"], expected)
    assert item["label"].dtype == torch.int64
    assert item["label"].tolist() == label.astype(int).tolist()


def test_item_with_transform(make_pair) -> None:
    img, lbl = make_pair("a", np.zeros((4, 4), np.uint8))
    seen = {}

    def transform(image: np.ndarray, label: np.ndarray):
        seen["dtypes"] = (image.dtype, label.dtype)
        return torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.uint8)

    item = SegmentationDataset([Sample(img, lbl, "a")], 2, transform=transform)[0]
    assert seen["dtypes"] == (np.uint8, np.int64)
    assert item["image"].shape == (3, 2, 2) and item["label"].dtype == torch.int64


def test_out_of_range_label_names_file_values_and_fix(make_pair) -> None:
    label = np.zeros((4, 5), np.uint8)
    label[0, :3] = 7
    label[1, 0] = 200
    label[2, :] = 255  # ignore: fine
    img, lbl = make_pair("bad", label)
    ds = SegmentationDataset([Sample(img, lbl, "bad")], num_classes=5)
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert str(lbl) in msg
    assert "7 (3 px)" in msg and "200 (1 px)" in msg and "255 (" not in msg
    assert "--num-classes" in msg and "--label-map" in msg


def test_validate_labels_hints_reduce_zero_for_one_based_labels() -> None:
    label = np.array([[1, 150], [150, 3]], dtype=np.int64)
    with pytest.raises(DataError, match="reduce_zero_label"):
        validate_labels(label, 150, 255, "x.png")
    validate_labels(np.array([[0, 149, 255]]), 150, 255, "x.png")  # valid: no error
    with pytest.raises(DataError, match=r"-1 \(1 px\)"):
        validate_labels(np.array([[-1, 0]]), 3, 255, "x.png")


def test_many_bad_values_are_summarised() -> None:
    label = np.arange(20, 40, dtype=np.int64).reshape(4, 5)
    with pytest.raises(DataError, match="and 10 more values"):
        validate_labels(label, 5, 255, "x.png")


def test_size_mismatch_names_both_files_and_sizes(make_pair) -> None:
    img, lbl = make_pair("m", np.zeros((4, 6), np.uint8), image_size=(8, 5))
    ds = SegmentationDataset([Sample(img, lbl, "m")], num_classes=2)
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert str(img) in msg and str(lbl) in msg and "8x5" in msg and "6x4" in msg
    with pytest.raises(DataError, match="8x5"):
        scan_labels(ds)


def test_dataset_rejects_bad_arguments(make_pair) -> None:
    img, lbl = make_pair("a", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="ignore_index 1 is also a class"):
        SegmentationDataset([Sample(img, lbl, "a")], 3, ignore_index=1)
    with pytest.raises(DataError, match="no samples"):
        SegmentationDataset([], 3)
    with pytest.raises(DataError, match="no label file"):
        SegmentationDataset([Sample(img, None, "a")], 3)


# ------------------------------------------------------------------------------ label maps


def test_ade_reduce_zero_applied_exactly_once_through_dataset(make_pair) -> None:
    raw = np.arange(151, dtype=np.uint8).reshape(1, 151)  # ADE stores 0 (other) .. 150
    img, lbl = make_pair("ade", raw)
    ds = SegmentationDataset(
        [Sample(img, lbl, "ade")], num_classes=150, label_map=ReduceZeroLabel()
    )
    first = ds[0]["label"]
    assert first[0, 0] == 255
    assert first[0, 1:].tolist() == list(range(150))
    assert torch.equal(ds[0]["label"], first)  # same file read twice: same result
    scan = scan_labels(ds)
    assert scan.class_pixel_counts.tolist() == [1] * 150 and scan.ignore_pixels == 1
    # A second application is refused instead of silently shifting every class.
    with pytest.raises(DataError, match="applied a second time"):
        ReduceZeroLabel()(ds.load_label(0))


def test_reduce_zero_keeps_existing_ignore() -> None:
    out = ReduceZeroLabel()(np.array([[0, 1, 255]], np.uint8))
    assert out.tolist() == [[255, 0, 255]] and out.dtype == np.int64


def test_cityscapes_label_ids_to_train_ids() -> None:
    ids = np.arange(-1, 40, dtype=np.int32).reshape(1, -1)
    out = CityscapesLabelIds()(ids)
    for label_id, got in zip(ids[0].tolist(), out[0].tolist()):
        assert got == CITYSCAPES_LABEL_TO_TRAIN_ID.get(label_id, 255), label_id
    assert sorted(CITYSCAPES_LABEL_TO_TRAIN_ID.values()) == list(range(19))
    assert CityscapesLabelIds()(np.array([[7, 33, 0]], np.uint8)).tolist() == [[0, 18, 255]]


def test_color_to_index_exact_match_and_unknown_counted() -> None:
    cmap = ColorToIndex({0: (128, 128, 128), 1: (128, 0, 0), 255: (0, 0, 0)})
    rgb = np.array([[[128, 128, 128], [128, 0, 0], [0, 0, 0], [128, 0, 1], [128, 0, 1]]], np.uint8)
    out, unknown = cmap.map_with_stats(rgb)
    assert out.tolist() == [[0, 1, 255, 255, 255]] and unknown == 2
    assert cmap.unknown_colors(rgb) == {(128, 0, 1): 2}
    with pytest.raises(DataError, match="given to both class 0 and class 1"):
        ColorToIndex([(1, 2, 3), (1, 2, 3)])


def test_color_labels_through_dataset_and_scan(tmp_path: Path, write_image) -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = (128, 0, 0)
    rgb[1, 0] = (9, 9, 9)  # unknown colour -> ignore, reported
    img = write_image(tmp_path / "i.png", np.zeros((2, 3, 3), np.uint8))
    lbl = write_image(tmp_path / "l.png", rgb)
    ds = SegmentationDataset(
        [Sample(img, lbl, "c")], 2, label_map=ColorToIndex([(0, 0, 0), (128, 0, 0)])
    )
    assert ds[0]["label"].tolist() == [[1, 1, 1], [255, 0, 0]]
    with pytest.warns(UserWarning, match="1 label pixels have colours that are not in the"):
        scan = scan_labels(ds)
    assert scan.unknown_color_pixels == 1 and scan.class_pixel_counts.tolist() == [2, 3]


def test_label_map_registry() -> None:
    assert make_label_map(None) is None and make_label_map("none") is None
    assert isinstance(make_label_map("reduce_zero_label"), ReduceZeroLabel)
    with pytest.raises(ConfigError, match="did you mean 'reduce_zero_label'"):
        make_label_map("reduce_zero")
    assert IdentityMap()(np.array([[1]], np.uint8)).dtype == np.int64


# ------------------------------------------------------------------------------ scanning


def test_scan_labels_raises_on_first_bad_file_in_order(make_pair) -> None:
    samples = []
    for i in range(6):
        label = np.full((3, 3), i % 3, np.uint8)
        if i in (2, 4):
            label[0, 0] = 9
        img, lbl = make_pair(f"s{i}", label)
        samples.append(Sample(img, lbl, f"s{i}"))
    ds = SegmentationDataset(samples, num_classes=3)
    with pytest.raises(DataError, match="s2.png"):
        scan_labels(ds, workers=4)
    good = SegmentationDataset([s for i, s in enumerate(samples) if i not in (2, 4)], 3)
    scan = scan_labels(good)
    assert scan.n_files == 4 and scan.class_pixel_counts.tolist() == [18, 9, 9]
    assert scan.missing_classes == []


# ------------------------------------------------------------------------------ discovery


def test_folder_pairing_by_stem(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for name in ("b", "a", "c"):
        Image.new("RGB", (2, 2)).save(tmp_path / "img" / f"{name}.jpg")
    for name in ("a", "b", "c", "orphan"):
        Image.new("L", (2, 2)).save(tmp_path / "lbl" / f"{name}.png")
    (tmp_path / "img" / "README.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="1 labels .* no image .*orphan"):
        samples = folder_samples(tmp_path / "img", tmp_path / "lbl")
    assert [s.name for s in samples] == ["a", "b", "c"]
    assert samples[0] == Sample(tmp_path / "img/a.jpg", tmp_path / "lbl/a.png", "a")

    (tmp_path / "lbl" / "c.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* have no label .*: c;"):
        folder_samples(tmp_path / "img", tmp_path / "lbl")


def test_folder_pairing_with_label_suffix(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "img" / "x.png")
    Image.new("L", (2, 2)).save(tmp_path / "lbl" / "x_mask.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = folder_samples(tmp_path / "img", tmp_path / "lbl", label_suffix="_mask")
    assert samples[0].label == tmp_path / "lbl" / "x_mask.png"


def test_read_classes_file(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("0\tSky\t128 128 128\n1\tRoad user\t1 2 3\n255\tvoid\t0 0 0\n")
    names, palette = read_classes_file(f)
    assert names == ("Sky", "Road user")
    assert palette == {0: (128, 128, 128), 1: (1, 2, 3), 255: (0, 0, 0)}
    f.write_text("0\tSky\t128 128 128\n2\tCar\t1 2 3\n")
    with pytest.raises(DataError, match=r"\[1\] are missing"):
        read_classes_file(f)
    f.write_text("0 Sky 128 128 128\n")
    with pytest.raises(DataError, match=r"classes\.txt:1: expected `index<TAB>name<TAB>R G B`"):
        read_classes_file(f)


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


# ------------------------------------------------------------------------------ real CamVid


def test_camvid_real_sample(camvid: Path) -> None:
    names, palette = read_classes_file(camvid / "classes.txt")
    assert names == CAMVID_CLASSES and palette[255] == (0, 0, 0)
    samples = camvid_samples(camvid, "val")
    ds = SegmentationDataset(samples[:1], num_classes=11)
    item = ds[0]
    assert item["image"].shape == (3, 360, 480)
    values = set(item["label"].unique().tolist())
    assert values <= set(range(11)) | {255} and len(values) > 1
    assert read_label(samples[0].label).dtype == np.uint8
