"""`pspnet evaluate` and `pspnet data check` on a list of sample names (CamVid-style test.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import main


@pytest.fixture
def name_list_root(tmp_path: Path) -> Path:
    """images/test/<name>.png + labels/test/<name>.png and a test.txt of bare names."""
    root = tmp_path / "camvid_like"
    rng = np.random.default_rng(0)
    names = ["0001TP_000010", "0001TP_000020"]
    for n in names:
        (root / "images" / "test").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            root / "images" / "test" / f"{n}.png"
        )
        label = rng.integers(0, 3, (24, 32), dtype=np.uint8)
        label[0, 0] = 255  # void
        Image.fromarray(label, "L").save(root / "labels" / "test" / f"{n}.png")
    (root / "test.txt").write_text("\n".join(names) + "\n")
    return root


def test_evaluate_reads_a_name_only_list(tmp_path: Path, name_list_root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = pspnet.create_model("pspnet_r18", 3, head_channels=32)
    meta = WeightsMeta(model.config, classes=("a", "b", "c"))
    weights = save_weights(model, tmp_path / "w", meta)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--weights", str(weights), "--data-root", str(name_list_root),
               "--val-list", "test.txt", "--out", str(out), "-q", "--save-predictions"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setup"]["images"] == 2
    assert "(2 images)" in capsys.readouterr().out
    # Predictions are named after the listed names.
    written = {p.stem for p in (out / "predictions").rglob("*.png")}
    assert {"0001TP_000010", "0001TP_000020"} <= written


def test_data_check_reads_a_name_only_list(name_list_root: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    report = name_list_root / "report.json"
    rc = main(["data", "check", "--data-root", str(name_list_root), "--list", "test.txt",
               "--num-classes", "3", "-q", "--json", str(report)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert "OK - 2 samples, 0 errors" in captured.out
    doc = json.loads(report.read_text())
    assert doc["n_samples"] == 2 and doc["ignore_pixels"] == 2  # the two void pixels were read


def test_missing_name_is_a_one_line_error(name_list_root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (name_list_root / "test.txt").write_text("0001TP_000010\n0001TP_999999\n")
    rc = main(["data", "check", "--data-root", str(name_list_root), "--list", "test.txt",
               "--num-classes", "3", "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "test.txt:2: sample name '0001TP_999999' not found" in err
    assert str(name_list_root / "images" / "test" / "0001TP_999999") in err


@pytest.mark.slow
def test_evaluate_reads_a_camvid_classes_file_with_a_void_entry(
        tmp_path: Path, name_list_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--class-names classes.txt` in CamVid's form: the `255 void` line is not a class."""
    classes = tmp_path / "classes.txt"
    classes.write_text("0\tSky\t128 128 128\n1\tRoad\t128 64 128\n2\tCar\t64 0 128\n"
                       "255\tvoid\t0 0 0\n")
    model = pspnet.create_model("pspnet_r18", 3, head_channels=32)
    weights = save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    out = tmp_path / "eval"
    rc = main(["evaluate", "--weights", str(weights), "--data-root", str(name_list_root),
               "--val-list", "test.txt", "--out", str(out), "-q",
               "--class-names", str(classes)])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == ["Sky", "Road", "Car"]
