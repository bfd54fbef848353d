"""Tests for pspnet.data.datasets: the validating dataset, the classes file, real CamVid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.data.datasets import SegmentationDataset, read_classes_file
from pspnet.data.io import DataError, Sample, read_label
from pspnet.data.layouts import (
    CAMVID_CLASSES,
    camvid_samples,
)
from pspnet.data.validation import scan_labels

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
