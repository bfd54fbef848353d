"""Folders split into training and validation: seeded, written to the work dir, reused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pspnet.config import ConfigError
from pspnet.data.io import DataError, Sample
from pspnet.data.samples import list_file_samples
from pspnet.data.split import SPLIT_FILE, folder_split, split_samples


def _folders(root: Path, names: list[str]) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 3)).save(images / f"{name}.jpg")
        Image.new("L", (4, 3)).save(labels / f"{name}.png")
    return images, labels


def _samples(names: list[str]) -> list[Sample]:
    return [Sample(Path(f"{n}.jpg"), Path(f"{n}.png"), n) for n in names]


def test_split_is_seeded_sized_and_independent_of_order() -> None:
    names = [f"s{i:02d}" for i in range(20)]
    train, val = split_samples(_samples(names), 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert {s.name for s in train} | {s.name for s in val} == set(names)
    again = split_samples(_samples(names[::-1]), 0.2, seed=0)[1]
    assert {s.name for s in again} == {s.name for s in val}  # the draw ignores input order
    other = {frozenset(s.name for s in split_samples(_samples(names), 0.2, seed=k)[1])
             for k in range(1, 6)}
    assert other != {frozenset(s.name for s in val)}  # another seed draws another split
    # At least one of each part, whatever the fraction rounds to.
    assert [len(p) for p in split_samples(_samples(["a", "b", "c"]), 0.01, 0)] == [2, 1]
    assert [len(p) for p in split_samples(_samples(["a", "b", "c"]), 0.99, 0)] == [1, 2]
    with pytest.raises(DataError, match="at least 2 image/label pairs .* found 1"):
        split_samples(_samples(["a"]), 0.5, 0)


def test_the_split_is_written_and_its_list_files_read_back(tmp_path: Path) -> None:
    images, labels = _folders(tmp_path, [f"p{i}" for i in range(10)])
    work = tmp_path / "work"
    train, val = folder_split(images, labels, val_fraction=0.3, seed=7, work_dir=work)
    assert val is not None and len(val) == 3 and len(train) == 7
    record = json.loads((work / SPLIT_FILE).read_text())
    assert record["val_fraction"] == 0.3 and record["seed"] == 7
    assert record["train"] == [s.name for s in train] and record["val"] == [s.name for s in val]
    # train.txt / val.txt are list files any verb reads (absolute paths, any data root).
    assert list_file_samples(tmp_path / "elsewhere", work / "val.txt") == val
    assert list_file_samples(".", work / "train.txt") == train


def test_a_later_run_reuses_the_recorded_split(tmp_path: Path) -> None:
    names = [f"p{i}" for i in range(10)]
    images, labels = _folders(tmp_path, names)
    work = tmp_path / "work"
    first = folder_split(images, labels, val_fraction=0.3, seed=7, work_dir=work)
    # New pairs would change a fresh draw; the recorded split is kept and they are left out.
    _folders(tmp_path, ["new1", "new2"])
    with pytest.warns(UserWarning, match=r"2 image/label pairs are not in .*split\.json .*new1"):
        again = folder_split(images, labels, val_fraction=0.3, seed=7, work_dir=work)
    assert again == first
    # Another fraction or seed for the same work dir: refused, naming both values.
    with pytest.raises(ConfigError, match=r"val_fraction` is 0\.5 but .* drawn with 0\.3"):
        folder_split(images, labels, val_fraction=0.5, seed=7, work_dir=work)
    with pytest.raises(ConfigError, match=r"train\.seed` is 1 but .* seed 7"):
        folder_split(images, labels, val_fraction=0.3, seed=1, work_dir=work)
    # Recorded pairs that are gone: an error listing them.
    (images / "p3.jpg").unlink()
    (labels / "p3.png").unlink()
    with pytest.raises(DataError, match=r"1 image/label pairs named in .* no longer .*: p3;"):
        folder_split(images, labels, val_fraction=0.3, seed=7, work_dir=work)


def test_without_a_fraction_every_pair_trains_and_the_list_is_recorded(tmp_path: Path) -> None:
    images, labels = _folders(tmp_path, ["b", "a"])
    work = tmp_path / "w"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = folder_split(images, labels, val_fraction=None, seed=0, work_dir=work)
    assert [s.name for s in train] == ["a", "b"] and val is None
    assert not (work / "val.txt").exists()
    assert folder_split(images, labels, val_fraction=None, seed=3, work_dir=work) == (train, None)


def test_a_foreign_split_file_is_refused(tmp_path: Path) -> None:
    images, labels = _folders(tmp_path, ["a", "b"])
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / SPLIT_FILE).write_text('{"something": "else"}')
    with pytest.raises(DataError, match=r"split\.json is not a split written by pspnet train"):
        folder_split(images, labels, val_fraction=0.5, seed=0, work_dir=tmp_path / "w")
