"""`pspnet train` then `pspnet evaluate`, as a user runs them (the CLI contract of the issues)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_tiny import NUM_CLASSES, make_tiny_dataset
from PIL import Image

from pspnet.cli import main


@pytest.mark.slow
def test_train_then_evaluate_with_saved_predictions(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", n_train=6, n_val=3)
    work = tmp_path / "run"
    rc = main([
        "train", "--data-root", str(data["root"]), "--train-list", str(data["train"]),
        "--val-list", str(data["val"]), "--num-classes", str(NUM_CLASSES), "--crop-size", "32",
        "--batch-size", "2", "--epochs", "1", "--work-dir", str(work), "-q",
        "--set", "model.head_channels=32", "model.aux_channels=16", "train.precision=fp32",
        "data.num_workers=0",
    ])
    assert rc == 0
    assert (work / "final" / "model.safetensors").is_file() and (work / "config.yaml").is_file()

    out = tmp_path / "eval"
    rc = main(["evaluate", "--weights", str(work / "final"), "--data-root", str(data["root"]),
               "--val-list", str(data["val"]), "--out", str(out), "--save-predictions", "-q"])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert {"mIoU", "mAcc", "allAcc", "per_class"} <= set(doc)
    assert all({"name", "iou", "acc"} <= set(c) for c in doc["per_class"])
    assert (out / "confusion.png").is_file()
    # The reported metrics equal what one recomputes from the written PNGs.
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for line in Path(data["val"]).read_text().split("\n"):
        if not line.strip():
            continue
        img_rel, lab_rel = line.split()
        gt = np.asarray(Image.open(data["root"] / lab_rel)).astype(np.int64)
        pred = np.asarray(Image.open(out / "predictions" / f"{Path(img_rel).stem}.png")).astype(np.int64)
        assert pred.shape == gt.shape
        keep = gt != 255
        np.add.at(cm, (gt[keep], pred[keep]), 1)
    assert doc["allAcc"] == np.trace(cm) / cm.sum()
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert abs(doc["mIoU"] - np.nanmean(iou)) < 1e-12


def test_train_flag_errors_name_the_flag(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data-root", str(tmp_path), "--train-list", str(tmp_path / "no.txt"),
               "--num-classes", "3", "--work-dir", str(tmp_path / "w"), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no.txt" in err


def test_train_input_errors_are_one_line(tmp_path: Path, capsys) -> None:
    """Missing --num-classes, a batch of 1 and a CUDA device on a CPU machine: `error: ...`,
    exit 2, no traceback, nothing trained."""
    data = make_tiny_dataset(tmp_path / "d", n_train=2, n_val=1)
    base = ["train", "--data-root", str(data["root"]), "--train-list", str(data["train"]),
            "--work-dir", str(tmp_path / "w"), "-q"]  # fmt: skip
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--num-classes" in err and "Traceback" not in err
    assert main([*base, "--num-classes", "3", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "at least 2" in err
    if not torch.cuda.is_available():
        assert main([*base, "--num-classes", "3", "--set", "train.device=cuda"]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_evaluate_protocol_presets_take_their_sizes(tmp_path: Path, capsys) -> None:
    """--protocol semseg needs sizes: from --crop-size/--base-size (or --dataset); the
    effective settings are recorded in metrics.json."""
    from pspnet.checkpoint import WeightsMeta, save_weights
    from pspnet.config import ModelConfig
    from pspnet.models import build_model

    data = make_tiny_dataset(tmp_path / "data", n_train=1, n_val=2)
    mc = ModelConfig(arch="pspnet_r18", num_classes=NUM_CLASSES, output_stride=32,
                     head_channels=16, aux=False)  # fmt: skip
    save_weights(build_model(mc).eval(), tmp_path / "w", WeightsMeta(model=mc))
    base = ["evaluate", "--weights", str(tmp_path / "w"), "--data-root", str(data["root"]),
            "--val-list", str(data["val"]), "-q", "--protocol", "semseg"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "e0")]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main([*base, "--crop-size", "32", "--base-size", "48", "--out", str(tmp_path / "e1")]) == 0
    setup = json.loads((tmp_path / "e1" / "metrics.json").read_text())["setup"]
    assert setup["protocol_settings"]["crop_size"] == [32, 32]
    assert setup["protocol_settings"]["base_size"] == 48 and setup["protocol_settings"]["flip"]
