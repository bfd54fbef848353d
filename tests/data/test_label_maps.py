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
    ClassFileColors,
    ColorToIndex,
    IdentityMap,
    ReduceZeroLabel,
    make_label_map,
    run_label_map,
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


# ------------------------------------------------------------------ class files with colours

#: A class file's colours: three classes and a void colour (index 255).
COLOURS = {0: (128, 128, 128), 1: (128, 64, 128), 2: (64, 0, 128), 255: (0, 0, 0)}


def test_class_file_colours_map_masks_and_pass_index_labels() -> None:
    cmap = ClassFileColors(COLOURS, ignore_index=250, source="class file c.txt")
    rgb = np.array([[[128, 128, 128], [64, 0, 128], [0, 0, 0], [128, 64, 128]]], np.uint8)
    assert cmap(rgb).tolist() == [[0, 2, 250, 1]]  # the void colour -> the ignore index
    index = np.array([[0, 2, 250]], np.uint8)  # an index PNG (palette or L) stays as stored
    assert cmap(index).tolist() == [[0, 2, 250]]
    # Index labels go through the run's own map (ADE20K-style here).
    behind = ClassFileColors(COLOURS, index_map=ReduceZeroLabel())
    assert behind(np.array([[0, 1, 3]], np.uint8)).tolist() == [[255, 0, 2]]


def test_an_unknown_colour_is_an_error_naming_colour_count_and_fix() -> None:
    cmap = ClassFileColors(COLOURS, source="class file c.txt")
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = (250, 170, 30)
    rgb[1, 0] = (7, 7, 7)
    with pytest.raises(DataError, match=r"^4 pixels have colours that are not in class file "
                                        r"c\.txt: RGB\(250, 170, 30\) \(3 px\), RGB\(7, 7, 7\) "
                                        r"\(1 px\); add each colour .*255<TAB>void<TAB>R G B"):
        cmap(rgb)
    grey = np.full((1, 2, 3), 5, np.uint8)
    with pytest.raises(DataError, match="all grey: an index label saved as RGB"):
        cmap(grey)


def test_run_label_map_uses_the_colours_only_when_there_are_some() -> None:
    assert run_label_map(None, None) is None
    assert isinstance(run_label_map("reduce_zero_label", {}), ReduceZeroLabel)
    cmap = run_label_map("reduce_zero_label", COLOURS, ignore_index=255)
    assert isinstance(cmap, ClassFileColors) and isinstance(cmap.index_map, ReduceZeroLabel)
    with pytest.raises(ConfigError, match="unknown label map"):
        run_label_map("nope", COLOURS)


def test_colour_masks_through_the_dataset_name_the_file(tmp_path: Path, write_image) -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = COLOURS[2]
    img = write_image(tmp_path / "i.png", np.zeros((2, 3, 3), np.uint8))
    good = write_image(tmp_path / "good.png", rgb)
    rgb[1, 2] = (1, 2, 3)
    bad = write_image(tmp_path / "bad.png", rgb)
    cmap = ClassFileColors(COLOURS)
    ds = SegmentationDataset([Sample(img, good, "g"), Sample(img, bad, "b")], 3, label_map=cmap)
    assert ds[0]["label"].tolist() == [[2, 2, 2], [255, 255, 255]]
    with pytest.raises(DataError, match=r"bad\.png: 1 pixels have colours .*RGB\(1, 2, 3\)"):
        ds[1]
    with pytest.raises(DataError, match=r"bad\.png: 1 pixels"):
        scan_labels(ds)  # before training: the same error, so no step runs on a wrong class
