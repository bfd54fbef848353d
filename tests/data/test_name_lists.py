"""List files of sample names (one name a line) resolved through the conventional layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pspnet.data.datasets import list_file_samples
from pspnet.data.io import DataError, MissingDataFileError, Sample
from pspnet.data.samples import LayoutResolver, read_list_file


def _img(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (3, 2)).save(path)
    return path


def test_names_resolve_in_split_folders(tmp_path: Path) -> None:
    for n in ("a", "b"):
        _img(tmp_path / "images" / "test" / f"{n}.png")
        _img(tmp_path / "labels" / "test" / f"{n}.png", "L")
    _img(tmp_path / "images" / "a.png")  # the flat layout comes second: not used
    (tmp_path / "test.txt").write_text("b\n# comment\na\n")
    # The list file is found under the data root, its stem is the split.
    samples = list_file_samples(tmp_path, "test.txt")
    root = tmp_path
    assert samples == [
        Sample(root / "images/test/b.png", root / "labels/test/b.png", "b"),
        Sample(root / "images/test/a.png", root / "labels/test/a.png", "a"),
    ]


def test_names_resolve_in_flat_folders_any_extension_and_annotations(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "x.JPG")
    _img(tmp_path / "annotations" / "x.png", "L")
    _img(tmp_path / "images" / "sub" / "y.jpeg")
    _img(tmp_path / "annotations" / "sub" / "y.png", "L")
    lst = tmp_path / "lists" / "val.txt"  # no images/val/ folder: the flat layout is used
    lst.parent.mkdir()
    lst.write_text("x\nsub/y\n")
    samples = read_list_file(lst, tmp_path)
    assert [(s.image, s.label, s.name) for s in samples] == [
        (tmp_path / "images/x.JPG", tmp_path / "annotations/x.png", "x"),
        (tmp_path / "images/sub/y.jpeg", tmp_path / "annotations/sub/y.png", "sub/y"),
    ]


def test_missing_name_error_names_list_line_name_and_places(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "test" / "a.png")
    _img(tmp_path / "labels" / "test" / "a.png", "L")
    lst = tmp_path / "test.txt"
    lst.write_text("a\n\nnope\n")
    with pytest.raises(MissingDataFileError) as e:
        read_list_file(lst, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{lst}:3: sample name 'nope' not found")
    assert str(tmp_path / "images" / "test" / "nope") + ".<" in msg
    assert str(tmp_path / "images" / "nope") + ".<" in msg
    assert "png" in msg and "jpg" in msg
    assert isinstance(e.value, FileNotFoundError)  # still catchable as a missing file


def test_missing_label_in_existing_label_folder_is_an_error(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "val" / "a.png")
    (tmp_path / "labels" / "val").mkdir(parents=True)
    lst = tmp_path / "val.txt"
    lst.write_text("a\n")
    with pytest.raises(MissingDataFileError, match=r"val\.txt:1: sample name 'a': image .* found "
                       r"but no label .*labels/val/a\.<.*annotations/val/a\.<"):
        read_list_file(lst, tmp_path)


def test_unlabelled_split_gives_image_only_samples(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "test" / "a.png")  # no labels/ or annotations/ at all
    lst = tmp_path / "test.txt"
    lst.write_text("a\n")
    assert read_list_file(lst, tmp_path) == [Sample(tmp_path / "images/test/a.png", None, "a")]


def test_ambiguous_extension_is_an_error(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "train" / "a.jpg")
    _img(tmp_path / "images" / "train" / "a.png")
    _img(tmp_path / "labels" / "train" / "a.png", "L")
    lst = tmp_path / "train.txt"
    lst.write_text("a\n")
    with pytest.raises(DataError, match=r"train\.txt:1: sample name 'a' is ambiguous: .*a\.jpg, "
                       r".*a\.png; keep one"):
        read_list_file(lst, tmp_path)


def test_ambiguous_label_is_an_error(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "a.jpg")
    _img(tmp_path / "labels" / "a.png", "L")
    _img(tmp_path / "annotations" / "a.png", "L")
    lst = tmp_path / "all.txt"
    lst.write_text("a\n")
    with pytest.raises(DataError, match=r"all\.txt:1: sample name 'a' has an ambiguous label"):
        read_list_file(lst, tmp_path)


def test_existing_path_keeps_its_meaning_and_pairs_still_work(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "labels" / "a.png", "L")
    _img(tmp_path / "images" / "b.png")
    _img(tmp_path / "labels" / "b.png", "L")
    lst = tmp_path / "mixed.txt"
    # A path (image only), a pair and a name, in one list.
    lst.write_text("images/a.png\nimages/b.png labels/b.png\na\n")
    with pytest.raises(DataError, match=r"mixed\.txt:3: sample 'a' is listed again"):
        read_list_file(lst, tmp_path)
    lst.write_text("images/a.png\nimages/b.png labels/b.png\n")
    assert read_list_file(lst, tmp_path) == [
        Sample(tmp_path / "images/a.png", None, "a"),
        Sample(tmp_path / "images/b.png", tmp_path / "labels/b.png", "b"),
    ]


def test_an_explicit_resolver_still_wins(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "labels" / "a.png", "L")
    lst = tmp_path / "x.txt"
    lst.write_text("images/a.png\n")
    seen: list[str] = []

    def resolve(name: str) -> tuple[Path, Path | None]:
        seen.append(name)
        return tmp_path / "images" / "a.png", tmp_path / "labels" / "a.png"

    assert read_list_file(lst, tmp_path, resolver=resolve)[0].label == tmp_path / "labels/a.png"
    assert seen == ["images/a.png"]


def test_layout_resolver_lists_each_folder_once(tmp_path: Path, monkeypatch) -> None:
    import os

    for n in ("a", "b", "c"):
        _img(tmp_path / "images" / f"{n}.png")
        _img(tmp_path / "labels" / f"{n}.png", "L")
    calls: list[str] = []
    real = os.scandir

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    r = LayoutResolver(tmp_path, "train")
    assert [r(n)[0].name for n in ("a", "b", "c")] == ["a.png", "b.png", "c.png"]
    assert len(calls) == len(set(calls))
