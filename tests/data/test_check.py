"""Tests for pspnet.data.check: the whole-data-set report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.data.check import check_dataset
from pspnet.data.io import Sample
from pspnet.data.label_maps import ColorToIndex, ReduceZeroLabel


def _messy_dataset(tmp_path: Path, make_pair, write_image) -> list[Sample]:
    samples = []
    # 1. good: 6 px of class 0, 3 of class 1, 3 ignore
    label = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [255, 255, 255, 1]], np.uint8)
    samples.append(Sample(*make_pair("good", label), "good"))
    # 2. out-of-range values (7 x2) next to 10 px of class 2
    label = np.full((3, 4), 2, np.uint8)
    label[0, :2] = 7
    samples.append(Sample(*make_pair("range", label), "range"))
    # 3. size mismatch (image 5x3, label 4x3); its label still counts: 12 px of class 1
    samples.append(Sample(*make_pair("size", np.ones((3, 4), np.uint8), image_size=(5, 3)), "size"))
    # 4. truncated photo; label fine: 12 px of class 0
    img, lbl = make_pair("trunc", np.zeros((3, 4), np.uint8))
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    samples.append(Sample(img, lbl, "trunc"))
    # 5. colour-coded label
    img = write_image(tmp_path / "images" / "rgb.png", np.zeros((3, 4, 3), np.uint8))
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0] = (200, 10, 10)
    lbl = write_image(tmp_path / "labels" / "rgb.png", rgb)
    samples.append(Sample(img, lbl, "rgb"))
    # 6. EXIF-rotated JPEG photo (a warning only) with a palette label: 12 px of class 2
    exif = Image.Exif()
    exif[0x0112] = 8
    img = tmp_path / "images" / "rot.jpg"
    Image.new("RGB", (4, 3)).save(img, exif=exif.tobytes())
    lbl = tmp_path / "labels" / "rot.png"
    pal = Image.fromarray(np.full((3, 4), 2, np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(lbl)
    samples.append(Sample(img, lbl, "rot"))
    # 7. oversized photo (above the max_pixels used below); label: 12 px of class 0
    samples.append(
        Sample(*make_pair("big", np.zeros((3, 4), np.uint8), image_size=(40, 30)), "big")
    )
    # 8. label file missing
    img, lbl = make_pair("gone", np.zeros((3, 4), np.uint8))
    lbl.unlink()
    samples.append(Sample(img, lbl, "gone"))
    return samples


def test_check_dataset_counts_everything(tmp_path: Path, make_pair, write_image) -> None:
    samples = _messy_dataset(tmp_path, make_pair, write_image)
    report = check_dataset(
        samples, num_classes=3, max_pixels=1000, progress=False, class_names=["a", "b", "c"]
    )
    assert report.n_samples == 8
    assert not report.ok
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == sorted(
        ["label_values", "size_mismatch", "unreadable", "label_format", "exif_orientation",
         "oversized", "missing"]
    )  # fmt: skip
    # class 0: good 6 + trunc 12 + big 12; class 1: good 3 + size 12; class 2: range 10 + rot 12
    assert report.class_pixel_counts.tolist() == [30, 15, 22]
    assert report.ignore_pixels == 3
    assert report.out_of_range_pixels == {7: 2}
    assert report.label_encodings == {"L": 5, "P": 1, "RGB": 1}
    assert report.exif_rotated == [(str(samples[5].image), 8)]
    assert report.size_mismatches == [
        (str(samples[2].image), str(samples[2].label), (5, 3), (4, 3))
    ]
    assert report.oversized == [str(samples[6].image)]
    assert report.unreadable == [str(samples[3].image), str(samples[7].label)]
    assert [p.kind for p in report.warnings] == ["exif_orientation"]

    text = report.format()
    assert "PROBLEMS FOUND" in text and "8 samples" in text
    assert "a " in text and "44.78%" in text  # 30 / 67 labelled pixels
    assert "label_values" in text and "range.png" in text
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["class_pixel_counts"] == {"a": 30, "b": 15, "c": 22}
    assert as_json["ok"] is False and as_json["n_errors"] == 6


def test_check_dataset_clean_with_label_map(tmp_path: Path, make_pair) -> None:
    samples = [
        Sample(*make_pair(f"s{i}", np.array([[0, 1, 2, 3]], np.uint8)), f"s{i}") for i in range(3)
    ]
    report = check_dataset(samples, 3, label_map=ReduceZeroLabel(), progress=False)
    assert report.ok and report.problems == []
    assert report.class_pixel_counts.tolist() == [3, 3, 3] and report.ignore_pixels == 3
    assert "OK" in report.format() and "<- never seen" not in report.format()


def test_check_dataset_reports_unknown_colours(tmp_path: Path, write_image) -> None:
    img = write_image(tmp_path / "i.png", np.zeros((2, 2, 3), np.uint8))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (5, 6, 7)
    lbl = write_image(tmp_path / "l.png", rgb)
    report = check_dataset(
        [Sample(img, lbl, "x")], 2, label_map=ColorToIndex([(0, 0, 0), (1, 1, 1)]), progress=False
    )
    assert report.ok  # unknown colours are a warning: they become ignore
    (problem,) = report.problems
    assert problem.kind == "unknown_colors" and "RGB(5, 6, 7) (1 px)" in problem.message
    assert report.ignore_pixels == 1 and report.class_pixel_counts.tolist() == [3, 0]
    assert "<- never seen" in report.format()


def test_check_dataset_validates_class_names(make_pair) -> None:
    sample = Sample(*make_pair("a", np.zeros((2, 2), np.uint8)), "a")
    with pytest.raises(ValueError, match="2 names but num_classes is 3"):
        check_dataset([sample], 3, class_names=["x", "y"], progress=False)
