"""Own data from the command line: folders instead of list files, colour masks through the
class file, one class-file flag name, ``pspnet --version``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_folders
from PIL import Image

import pspnet
from pspnet.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"pspnet {pspnet.__version__}"


@pytest.mark.parametrize("verb", [
    ["train"], ["evaluate", "--weights", "w", "--out", "o"], ["data", "check"],
    ["convert", "a.pth", "out"],
])  # fmt: skip
def test_one_class_file_flag_on_every_verb_and_the_old_one_still_works(
    verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert parser.parse_args([*verb, "--classes-file", "c.txt"]).classes_file == "c.txt"
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*verb, "--class-names", "c.txt"]).classes_file == "c.txt"
    err = capsys.readouterr().err
    assert err == "note: --class-names is deprecated, use --classes-file (same meaning)\n"


def test_data_check_reads_colour_masks_through_the_class_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = colour_folders(tmp_path, 3)
    argv = ["data", "check", "--images", str(data["images"]), "--labels", str(data["labels"]),
            "--classes-file", str(data["classes"]), "-q"]  # fmt: skip
    assert main(argv) == 0  # the class count comes from the class file
    out = capsys.readouterr().out
    assert "Data set check: OK - 3 samples" in out and "car" in out
    mask = np.asarray(Image.open(data["labels"] / "shot_2.png")).copy()
    mask[-1, -1] = (1, 2, 3)
    Image.fromarray(mask).save(data["labels"] / "shot_2.png")
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "shot_2.png: 1 pixels have colours that are not in class file" in out
    assert "RGB(1, 2, 3) (1 px)" in out


def test_folder_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = colour_folders(tmp_path, 2)
    (data["labels"] / "shot_1.png").unlink()
    assert main(["data", "check", "--images", str(data["images"]), "--labels",
                 str(data["labels"]), "--num-classes", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 2 images in ") and ": shot_1;" in err
    base = ["evaluate", "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    assert main([*base, "--images", str(data["images"])]) == 2
    assert "--images needs --labels" in capsys.readouterr().err
    assert main([*base, "--images", "a", "--labels", "b", "--val-list", "v.txt"]) == 2
    assert "give --val-list FILE or --images DIR --labels DIR, not both" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_colour_mask_folders_then_evaluate_the_held_out_part(tmp_path: Path) -> None:
    data = colour_folders(tmp_path / "mine", 10, size=(32, 40))
    work = tmp_path / "run"
    folders = ["--images", str(data["images"]), "--labels", str(data["labels"])]
    rc = main([
        "train", *folders, "--val-fraction", "0.2", "--classes-file", str(data["classes"]),
        "--num-classes", "3", "--crop-size", "32", "--batch-size", "2", "--set", "train.max_iter=2",
        "--work-dir", str(work), "-q", "--set", "model.head_channels=32",
        "model.aux_channels=16", "train.precision=fp32", "data.num_workers=0",
    ])  # fmt: skip
    assert rc == 0
    split = json.loads((work / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 8
    meta = pspnet.load_model(work / "final").meta
    assert meta.classes == ("sky", "road", "car")
    assert tuple(map(tuple, meta.palette)) == ((70, 130, 180), (128, 64, 128), (0, 0, 142))

    # The held-out part, by the list file the run wrote (no --data-root needed) ...
    out = tmp_path / "eval_val"
    assert main(["evaluate", "--weights", str(work / "final"), "--val-list",
                 str(work / "val.txt"), "--out", str(out), "--classes-file",
                 str(data["classes"]), "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text())["setup"]["images"] == 2
    # ... and every pair of the folders.
    out = tmp_path / "eval_all"
    assert main(["evaluate", "--weights", str(work / "final"), *folders, "--out", str(out),
                 "--classes-file", str(data["classes"]), "-q"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["setup"]["images"] == 10 and [c["name"] for c in doc["per_class"]] == [
        "sky", "road", "car"]
