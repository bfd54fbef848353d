"""Tests for pspnet.data.label_maps: each map, applied exactly once, and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet.config import ConfigError
from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import DataError, Sample
from pspnet.data.label_maps import (
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    CityscapesLabelIds,
    ColorToIndex,
    IdentityMap,
    ReduceZeroLabel,
    make_label_map,
)
from pspnet.data.validation import scan_labels

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
