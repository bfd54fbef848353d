"""Tests for pspnet.data.samples: list files, the layout resolver's callers, folder pairing."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from pspnet.data.io import DataError, MissingDataFileError, Sample
from pspnet.data.samples import folder_samples, read_list_file

# ------------------------------------------------------------------------------ list files


def _touch_pair(root: Path, name: str) -> None:
    (root / "img").mkdir(exist_ok=True)
    (root / "lbl").mkdir(exist_ok=True)
    Image.new("RGB", (2, 2)).save(root / "img" / f"{name}.jpg")
    Image.new("L", (2, 2)).save(root / "lbl" / f"{name}.png")


def test_list_file_two_paths_comments_and_leading_slash(tmp_path: Path) -> None:
    _touch_pair(tmp_path, "a")
    _touch_pair(tmp_path, "b")
    lst = tmp_path / "train.txt"
    lst.write_text("# comment\n\nimg/a.jpg lbl/a.png\n/img/b.jpg\t/lbl/b.png\n")
    samples = read_list_file(lst, tmp_path)
    assert samples == [
        Sample(tmp_path / "img/a.jpg", tmp_path / "lbl/a.png", "a"),
        Sample(tmp_path / "img/b.jpg", tmp_path / "lbl/b.png", "b"),
    ]


def test_list_file_bad_line_number(tmp_path: Path) -> None:
    _touch_pair(tmp_path, "a")
    lst = tmp_path / "train.txt"
    lst.write_text("img/a.jpg lbl/a.png\n# ok\nimg/a.jpg lbl/a.png extra\n")
    with pytest.raises(DataError, match=r"train\.txt:3: expected `image_path label_path`"):
        read_list_file(lst, tmp_path)


def test_list_file_missing_file_names_path_and_line(tmp_path: Path) -> None:
    _touch_pair(tmp_path, "a")
    lst = tmp_path / "val.txt"
    lst.write_text("img/a.jpg lbl/a.png\nimg/a.jpg lbl/zzz.png\n")
    with pytest.raises(MissingDataFileError) as e:
        read_list_file(lst, tmp_path)
    assert "val.txt:2" in str(e.value) and "zzz.png" in str(e.value)


def test_list_file_names_use_resolver_or_conventional_layouts(tmp_path: Path) -> None:
    _touch_pair(tmp_path, "a")  # img/ and lbl/: not a conventional layout
    lst = tmp_path / "names.txt"
    lst.write_text("a\n")
    with pytest.raises(MissingDataFileError, match=r"names\.txt:1: sample name 'a' not found"):
        read_list_file(lst, tmp_path)

    def resolve(name: str) -> tuple[Path, Path | None]:
        return tmp_path / "img" / f"{name}.jpg", tmp_path / "lbl" / f"{name}.png"

    assert read_list_file(lst, tmp_path, resolver=resolve)[0].name == "a"
    lst.write_text("a\na\n")
    with pytest.raises(DataError, match=r"names\.txt:2: .*listed again \(first on line 1\)"):
        read_list_file(lst, tmp_path, resolver=resolve)


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


def test_unmatched_stems_are_counted_and_the_first_few_named(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for i in range(14):
        Image.new("RGB", (2, 2)).save(tmp_path / "img" / f"im{i:02d}.jpg")
    for i in range(2):
        Image.new("L", (2, 2)).save(tmp_path / "lbl" / f"im{i:02d}.png")
    with pytest.raises(DataError) as e:
        folder_samples(tmp_path / "img", tmp_path / "lbl")
    msg = str(e.value)
    assert msg.startswith("12 of 14 images in ") and "have no label in" in msg
    assert "im02, im03," in msg and "im11 and 2 more;" in msg and "im12" not in msg
