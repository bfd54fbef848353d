"""Tests for pspnet.data.validation: label values, and the scan of a whole data set."""

from __future__ import annotations

import numpy as np
import pytest

from pspnet.data.datasets import SegmentationDataset
from pspnet.data.io import DataError, Sample
from pspnet.data.validation import scan_labels, validate_labels

# ------------------------------------------------------------------------------ one label


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
