"""The one class-name file reader (pspnet.data.classes) and every path that uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pspnet
from pspnet.checkpoint import CheckpointError, load_model
from pspnet.cli import _read_names
from pspnet.data.classes import read_class_file, read_classes_file
from pspnet.data.io import DataError, MissingDataFileError
from pspnet.data.label_maps import ColorToIndex

NAMES = ("sky", "road user", "car")
FORMS = {
    "name": "# plain\nsky\nroad user\n\ncar\n",
    "index<TAB>name": "1\troad user\n0\tsky\n2\tcar\n255\tvoid\n",
    "index<TAB>name<TAB>R G B": "0\tsky\t128 128 128\n1\troad user\t1 2 3\n2\tcar\t64 0 128\n"
                                "255\tvoid\t0 0 0\n",
}


def _train_reader():
    """train's `data.class_names` reader: (names, palette) of the file."""
    from pspnet.data.training import _read_class_file

    def read(path: Path, num_classes: int):
        found = _read_class_file(path, num_classes)
        return found.names, found.palette

    return read


@pytest.fixture(params=sorted(FORMS))
def classes_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text(FORMS[request.param])
    return path


def test_each_form(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text(FORMS["name"])
    got = read_class_file(f)
    assert got.names == NAMES and got.palette is None and dict(got.colours) == {}

    f.write_text(FORMS["index<TAB>name"])
    got = read_class_file(f)
    assert got.names == NAMES and got.palette is None  # ordered by index; 255 is not a class

    f.write_text(FORMS["index<TAB>name<TAB>R G B"])
    got = read_class_file(f)
    assert got.names == NAMES
    assert got.palette == ((128, 128, 128), (1, 2, 3), (64, 0, 128))
    assert dict(got.colours) == {0: (128, 128, 128), 1: (1, 2, 3), 2: (64, 0, 128), 255: (0, 0, 0)}
    assert read_classes_file(f) == (NAMES, dict(got.colours))

    f.write_bytes("\ufeff0\tsky\t1 2 3\r\n1\troad\t4 5 6\r\n".encode())  # BOM, CRLF
    assert read_class_file(f).names == ("sky", "road")


def test_same_names_through_train_cli_convert_and_datasets(classes_file: Path,
                                                           tmp_path: Path) -> None:
    # train's config path (data.class_names)
    names, palette = _train_reader()(classes_file, 3)
    assert names == NAMES
    assert palette == read_class_file(classes_file).palette
    # evaluate's --class-names and data check's --classes-file
    assert _read_names(str(classes_file)) == NAMES
    # convert --classes-file
    model = pspnet.create_model("pspnet_r18", 3, head_channels=32)
    src = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, src)
    meta = load_model(pspnet.convert(src, tmp_path / "w", classes_file=classes_file)).meta
    assert meta.classes == NAMES and meta.palette == palette
    # the data sets: a colour map from the file's colours
    if palette is not None:
        assert pspnet.data.datasets.read_classes_file(classes_file)[0] == NAMES
        cmap = ColorToIndex.from_classes_file(classes_file)
        label = np.array([[[1, 2, 3], [64, 0, 128], [0, 0, 0]]], dtype=np.uint8)
        assert cmap(label).tolist() == [[1, 2, 255]]


@pytest.mark.parametrize(("text", "match"), [
    ("0 sky 1 2 3\n", r"c\.txt:1: expected `index<TAB>name<TAB>R G B`.*separate"),
    ("0\tsky\n1\troad\t1 2\n", r"c\.txt:2: expected `index<TAB>name<TAB>R G B`"),
    ("x\tsky\n", r"c\.txt:1: expected `index<TAB>name` with a whole-number index"),
    ("0\tsky\nroad\n", r"c\.txt:2: 'road' has no index but other lines have one"),
    ("0\tsky\n0\troad\n", r"c\.txt:2: index 0 appears twice"),
    ("0\tsky\n2\tcar\n", r"\[1\] are missing"),
    ("0\t\n", r"c\.txt:1: the class name is empty"),
    ("a\tb\tc\td\n", r"c\.txt:1: expected `name`, `index<TAB>name` or"),
    ("# nothing\n\n", r"lists no class names"),
    ("255\tvoid\n", r"lists no classes \(indices below 255\)"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=match):
        read_class_file(f)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(MissingDataFileError, match="classes file .*nope.txt does not exist"):
        read_class_file(tmp_path / "nope.txt")
    f = tmp_path / "c.txt"
    f.write_bytes(b"\xff\xfe\x00sky")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_class_file(f)
    # convert reports reader errors as CheckpointError, as before
    with pytest.raises(CheckpointError, match="is not UTF-8 text"):
        pspnet.convert(tmp_path / "x.pth", tmp_path / "w", classes_file=f)


def test_a_colour_map_needs_a_colour_on_every_line(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("0\tsky\t1 2 3\n1\troad\n")
    with pytest.raises(DataError, match=r"c\.txt:2: expected `index<TAB>name<TAB>R G B`"):
        read_classes_file(f)
    assert read_class_file(f).palette is None  # names only: not every class has a colour
