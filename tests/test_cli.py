"""The command line: help, one-line errors with exit code 2, and predict end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import main


def test_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("list-models", "zoo", "convert", "info", "predict", "data", "demo"):
        assert verb in out


def test_python_dash_m_works() -> None:
    r = subprocess.run([sys.executable, "-m", "pspnet", "list-models"], capture_output=True,
                       text=True, check=True)
    assert "pspnet50" in r.stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
    (tmp_path / "x.txt").write_text("hello")
    assert main(["predict", "--weights", str(tmp_path), str(tmp_path / "x.txt"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "neither an image" in capsys.readouterr().err


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    model = pspnet.create_model("pspnet_r18", 3, head_channels=32)
    return save_weights(model, tmp_path / "w", WeightsMeta(model.config, classes=("a", "b", "c")))


def test_predict_writes_index_pngs_and_overlays_at_original_size(tmp_path: Path, weights: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, (h, w) in enumerate([(37, 53), (64, 48)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), np.uint8)).save(
            imgs / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights), str(imgs), "--out", str(out), "-q"]) == 0
    for i, (h, w) in enumerate([(37, 53), (64, 48)]):
        mask = np.asarray(Image.open(out / f"im{i}.png"))
        assert mask.shape == (h, w) and mask.max() < 3
        assert Image.open(out / f"im{i}_overlay.png").size[1] == h
    assert len(json.loads((out / "summary.json").read_text())["written"]) == 2
    # sliding window + flip + bf16 run too
    assert main(["predict", "--weights", str(weights), str(imgs / "im0.png"), "--out",
                 str(tmp_path / "o2"), "--mode", "slide", "--crop-size", "32", "--flip",
                 "--precision", "bf16", "-q"]) == 0


def test_predict_skip_bad_reports_and_keeps_going(tmp_path: Path, weights: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(imgs / "good.png")
    (imgs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights), str(imgs), "--out", str(out)]) == 2
    assert main(["predict", "--weights", str(weights), str(imgs), "--out", str(out),
                 "--skip-bad", "-q"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(f["input"]).name for f in summary["failed"]] == ["bad.png"]
    assert (out / "good.png").is_file()


def test_predict_on_a_video(tmp_path: Path, weights: Path) -> None:
    cv2 = pytest.importorskip("cv2", reason="video needs pip install 'pspnet[video]'")
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights), str(video), "--out", str(out), "-q"]) == 0
    masks = sorted((out / "clip").glob("*.png"))
    assert len(masks) == 4
    assert all(np.asarray(Image.open(m)).shape == (48, 64) for m in masks)
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 4
    rec = json.loads((out / "summary.json").read_text())["written"][0]
    assert rec["frames"] == 4
    # --no-overlay: masks only, no overlay video.
    bare = tmp_path / "bare"
    assert main(["predict", "--weights", str(weights), str(video), "--out", str(bare), "-q",
                 "--no-overlay"]) == 0  # fmt: skip
    assert len(list((bare / "clip").glob("*.png"))) == 4
    assert not (bare / "clip_overlay.mp4").exists()
