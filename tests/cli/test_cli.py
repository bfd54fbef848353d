"""The command line: help, one-line errors with exit code 2, and predict end to end."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TinySegmenter
import torch
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import build_parser, main
from pspnet.config import ModelConfig, Preprocessing
from pspnet.config.flags import DeprecatedAlias
from pspnet.engine.predict import to_tensor


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_tile_batch_reaches_the_sliding_window(tmp_path: Path, weights: Path, monkeypatch,
                                                capsys) -> None:
    import pspnet.engine.predict as predict_mod

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "im.png")
    seen = []
    real = predict_mod.predict_labels_tiled

    def spy(model, x, options, **kwargs):  # the InferenceOptions travel as one object
        seen.append(options.batch_size)
        return real(model, x, options, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_labels_tiled", spy)
    argv = ["predict", "--weights", str(weights), str(tmp_path / "im.png"), "--out",
            str(tmp_path / "o"), "--mode", "slide", "--crop-size", "32", "-q"]
    assert main([*argv, "--tile-batch", "1"]) == 0
    assert main(argv) == 0
    assert seen == [1, 4]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--tile-batch", "0"])
    assert e.value.code == 2
    assert "--tile-batch" in capsys.readouterr().err


@pytest.mark.slow
def test_fast_and_compile_flags_predict_like_the_eager_model(tmp_path: Path, weights: Path,
                                                            capsys) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), np.uint8)).save(tmp_path / "im.png")
    masks = {}
    for name, extra in (("eager", []), ("fast", ["--fast"]), ("compile", ["--compile"])):
        out = tmp_path / name
        assert main(["predict", "--weights", str(weights), str(tmp_path / "im.png"), "--out",
                     str(out), "--no-overlay", "-q", *extra]) == 0
        masks[name] = np.asarray(Image.open(out / "im.png"))
        err = capsys.readouterr().err
        # The compile time is reported (once per input shape), and only when compiling.
        assert ("torch.compile:" in err) == (name == "compile"), err
    # Folding BatchNorm changes float rounding only: (nearly) every pixel keeps its class.
    assert (masks["fast"] == masks["eager"]).mean() > 0.99
    assert (masks["compile"] == masks["eager"]).mean() > 0.99


def test_fast_flag_refuses_an_exported_model(tmp_path: Path, tiny, capsys) -> None:
    from pspnet.export import export_torchscript

    path = tmp_path / "m.ts"
    export_torchscript(tiny, path, height=32, width=48, timing_runs=0)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "im.png")
    for flag in ("--fast", "--compile"):
        assert main(["predict", "--weights", str(path), str(tmp_path / "im.png"), "--out",
                     str(tmp_path / "o"), flag]) == 2
        err = capsys.readouterr().err
        assert flag in err and "exported" in err and "leave the flag out" in err


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


@pytest.mark.slow
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


def _walk(parser: argparse.ArgumentParser, path: str = "pspnet"):
    """Every (command path, action) of a parser and its subparsers, recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                assert name in helped, f"{path} {name} has no help line"
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_flag_of_every_verb_has_help() -> None:
    actions = list(_walk(build_parser()))
    assert len({p for p, _ in actions}) >= 13  # every verb was visited
    # A deprecated alias is hidden on purpose: its new spelling has the help.
    missing = [f"{p} {'/'.join(a.option_strings) or a.dest}" for p, a in actions
               if (not a.help or a.help == argparse.SUPPRESS)
               and not isinstance(a, DeprecatedAlias)]
    assert missing == []


@pytest.mark.parametrize("argv", [
    ["convert", "--set", "align_corners=true", "num_classes=3", "a.pth", "out"],
    ["convert", "a.pth", "out", "--set", "align_corners=true", "num_classes=3"],
    ["convert", "a.pth", "--set", "align_corners=true", "num_classes=3", "out"],
    ["convert", "--set", "align_corners=true", "--set", "num_classes=3", "a.pth", "out"],
    ["convert", "--set=align_corners=true", "num_classes=3", "a.pth", "out"],
    ["convert", "--set", "align_corners=true", "num_classes=3", "--", "a.pth", "out"],
])
def test_set_before_between_or_after_positionals(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.src, args.dst) == ("a.pth", "out")
    assert args.set == ["align_corners=true", "num_classes=3"]


def test_set_on_info_and_train() -> None:
    parser = build_parser()
    args = parser.parse_args(["info", "--set", "align_corners=false", "w/final"])
    assert args.path == "w/final" and args.set == ["align_corners=false"]
    args = parser.parse_args(["train", "--set", "optim.lr=-0.1", "data.crop_size=[240,320]",
                              "-q", "--set", "train.max_iter=2"])
    assert args.set == ["optim.lr=-0.1", "data.crop_size=[240,320]", "train.max_iter=2"]
    assert args.quiet
    assert parser.parse_args(["train"]).set == []


@pytest.mark.parametrize("argv, bad", [
    (["convert", "--set", "align_corners", "a.pth", "out"], "align_corners"),
    (["info", "--set", "=true", "w"], "=true"),
    (["train", "--set", "max_iter"], "max_iter"),
])
def test_malformed_set_is_a_usage_error_naming_the_value(
    argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --set: {bad!r} is not KEY=VALUE" in err and "Traceback" not in err


def test_info_with_set_before_the_path_reaches_the_path(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The path is not swallowed by --set: load_model gets it, and refuses to override the
    # options of a weight directory (they come from its config.json).
    assert main(["info", "--set", "align_corners=false", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights} is a pspnet weight directory")
    assert "(align_corners)" in err
    assert main(["info", str(weights)]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] > 0


def test_demo_refuses_bad_settings_before_any_work(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--out", str(tmp_path / "demo"), "--size", "64", "--seeds", "0", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--seeds must be an integer >= 1, got 0" in err
    assert not (tmp_path / "demo").exists()  # refused before any work


# --------------------------------------------------------------------------------------------
# Exports made with --output labels (class indices, not logits)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    net = TinySegmenter(num_classes=3).eval()
    net.meta = WeightsMeta(ModelConfig(num_classes=3), classes=("a", "b", "c"))
    return net


def _labelled_data(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """Images and random labels under ``root``, and their ``image label`` list file."""
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    lines = []
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (h, w), np.uint8)).save(root / "lab" / f"{i}.png")
        lines.append(f"img/{i}.png lab/{i}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root / "val.txt"


def _check_against_eager(net: torch.nn.Module, image_path: Path, mask_path: Path) -> None:
    """The mask equals the eager argmax wherever the eager top-two probabilities differ by
    more than 1e-3 (far above the export parity tolerance), on a clear-cut image."""
    image = np.array(Image.open(image_path).convert("RGB"))
    with torch.no_grad():
        probs = net(to_tensor(image, Preprocessing()))["out"][0].softmax(0)
    top2 = probs.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-3).numpy()
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == image.shape[:2] and clear.mean() > 0.9
    assert np.array_equal(mask[clear], probs.argmax(0).numpy()[clear])


def _confusion(pred_dir: Path, lab_dir: Path, n: int) -> np.ndarray:
    cm = np.zeros((3, 3), np.int64)
    for i in range(n):
        pred = np.asarray(Image.open(pred_dir / f"{i}.png")).ravel()
        lab = np.asarray(Image.open(lab_dir / f"{i}.png")).ravel()
        np.add.at(cm, (lab, pred), 1)
    return cm


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="onnx/onnxscript/onnxruntime not installed: pip install 'pspnet[onnx]'",
)
@pytest.mark.slow
def test_labels_export_predicts_and_evaluates_whole_images(tmp_path: Path, tiny) -> None:
    from pspnet.export import export_onnx

    path = tmp_path / "labels.onnx"
    export_onnx(tiny, path, height=32, width=48, dynamic=True, output="labels", timing_runs=0)
    val = _labelled_data(tmp_path / "d", [(37, 53), (24, 40)])
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(path), str(tmp_path / "d" / "img"), "--out",
                 str(out), "-q"]) == 0
    for i in range(2):
        _check_against_eager(tiny, tmp_path / "d" / "img" / f"{i}.png", out / f"{i}.png")
    ev = tmp_path / "eval"
    assert main(["evaluate", "--weights", str(path), "--data-root", str(tmp_path / "d"),
                 "--val-list", str(val), "--out", str(ev), "--save-predictions", "-q"]) == 0
    doc = json.loads((ev / "metrics.json").read_text())
    for i in range(2):  # evaluate predicts what predict predicts
        assert np.array_equal(np.asarray(Image.open(ev / "predictions" / f"{i}.png")),
                              np.asarray(Image.open(out / f"{i}.png")))
    assert doc["confusion"] == _confusion(ev / "predictions", tmp_path / "d" / "lab", 2).tolist()


def test_labels_export_refuses_what_needs_logits(tmp_path: Path, tiny,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pspnet.export import export_torchscript

    path = tmp_path / "labels.ts"  # TorchScript: fixed size, 32x48
    export_torchscript(tiny, path, height=32, width=48, output="labels", timing_runs=0)
    val = _labelled_data(tmp_path / "d", [(32, 48), (32, 48)])
    img = tmp_path / "d" / "img" / "0.png"
    # Images of its size are one window: predicted and evaluated exactly.
    assert main(["predict", "--weights", str(path), str(img), "--out", str(tmp_path / "p"),
                 "-q"]) == 0
    _check_against_eager(tiny, img, tmp_path / "p" / "0.png")
    ev = tmp_path / "eval"
    assert main(["evaluate", "--weights", str(path), "--data-root", str(tmp_path / "d"),
                 "--val-list", str(val), "--out", str(ev), "--save-predictions", "-q"]) == 0
    doc = json.loads((ev / "metrics.json").read_text())
    assert doc["confusion"] == _confusion(ev / "predictions", tmp_path / "d" / "lab", 2).tolist()
    capsys.readouterr()
    # What needs averaged logits is refused with one line naming the file and the fix.
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(big)
    common = ["--data-root", str(tmp_path / "d"), "--val-list", str(val), "--out",
              str(tmp_path / "e2"), "-q"]
    for argv, what in [
        (["predict", "--weights", str(path), str(img), "--out", str(tmp_path / "o"), "--flip"],
         "flip (--flip)"),
        (["predict", "--weights", str(path), str(big), "--out", str(tmp_path / "o")],
         "several tiles (a 40x60 image in 32x48 tiles)"),
        (["evaluate", "--weights", str(path), *common, "--scales", "1", "0.5"],
         "scales [1.0, 0.5] (--scales)"),
        (["evaluate", "--weights", str(path), *common, "--mode", "slide", "--crop-size", "16"],
         "several tiles (a 32x48 image in 16x16 tiles)"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {path} returns class labels"), err
        assert what in err and "--output logits" in err and "Traceback" not in err
