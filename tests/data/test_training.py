"""A run's data from two folders: pairs, the recorded split, colour masks via the class file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_folders
from PIL import Image

from pspnet.config import Config, ConfigError
from pspnet.data.io import DataError
from pspnet.data.training import build_data


def _config(data: dict[str, Path], work: Path, **extra: object) -> Config:
    return Config.from_dict({
        "model": {"num_classes": 3},
        "data": {"images_dir": str(data["images"]), "labels_dir": str(data["labels"]),
                 "class_names": str(data["classes"]), **extra},
        "train": {"work_dir": str(work), "seed": 3},
    })  # fmt: skip


def test_folders_with_colour_masks_train_and_validate(tmp_path: Path) -> None:
    data = colour_folders(tmp_path, 10)
    work = tmp_path / "work"
    td = build_data(_config(data, work, val_fraction=0.2))
    assert len(td.train) == 8 and td.val is not None and len(td.val) == 2
    assert td.class_names == ("sky", "road", "car")
    assert td.palette == ((70, 130, 180), (128, 64, 128), (0, 0, 142))  # the tool's colours
    label = td.train.load_label(0)
    assert label[0, 0] == 255 and label[0, 5] == 0 and label[-1, -1] == 1 and (label == 2).any()
    record = json.loads((work / "split.json").read_text())
    assert sorted(record["train"] + record["val"]) == sorted(f"shot_{i}" for i in range(10))
    assert [s.name for s in td.val.samples] == record["val"]

    # A resumed run (same work dir) trains on the same samples even after the folder grew.
    more = colour_folders(tmp_path / "more", 1)
    (more["images"] / "shot_0.jpg").rename(data["images"] / "zz_new.jpg")
    (more["labels"] / "shot_0.png").rename(data["labels"] / "zz_new.png")
    with pytest.warns(UserWarning, match="1 image/label pairs are not in"):
        again = build_data(_config(data, work, val_fraction=0.2))
    assert [s.name for s in again.train.samples] == [s.name for s in td.train.samples]
    assert [s.name for s in again.val.samples] == record["val"]


def test_an_unknown_colour_stops_before_training_naming_file_and_colour(tmp_path: Path) -> None:
    data = colour_folders(tmp_path, 2)
    mask = np.asarray(Image.open(data["labels"] / "shot_1.png")).copy()
    mask[:2, :2] = (255, 255, 0)  # a class the class file forgot
    Image.fromarray(mask).save(data["labels"] / "shot_1.png")
    td = build_data(_config(data, tmp_path / "w"))
    td.train.load_label(0)
    with pytest.raises(DataError, match=r"shot_1\.png: 4 pixels .*not in class file "
                                        r".*classes\.txt: RGB\(255, 255, 0\) \(4 px\)"):
        td.train.load_label(1)


def test_folders_conflict_with_list_files(tmp_path: Path) -> None:
    data = colour_folders(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"`data.train_list` \(--train-list\) cannot be combined "
                                          r"with image and label folders"):
        _config(data, tmp_path / "w", train_list="t.txt")
