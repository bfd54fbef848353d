"""Conflicting or ignored options are errors, and ``metrics.json`` records what ran.

The cases of the issue: ``evaluate --protocol mmseg-whole --mode slide --flip`` ran whole
images without flip and recorded ``mode: slide, flip: true``; ``predict --crop-size`` without
``--mode slide`` was ignored. The others are flags that were ignored the same way: ``--alpha``
with ``--no-overlay``, ``--precision`` on an exported model, ``--base-size`` without a semseg
protocol, ``--split`` without a ``--dataset`` layout, a second sample source in ``data check``,
data-pipeline flags with ``benchmark --no-data``, ``zoo --allow-unverified`` without
``--download``. Each is refused before any work, with one line naming the flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import main
from pspnet.config import ModelConfig


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = pspnet.create_model("pspnet_r18", 3, head_channels=16)
    return save_weights(model, tmp_path_factory.mktemp("options") / "w",
                        WeightsMeta(model.config, classes=("a", "b", "c")))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(path)
    return path


def _evaluate(weights: Path, data: dict[str, Path], out: Path, *flags: str) -> list[str]:
    return ["evaluate", "--weights", str(weights), "--data-root", str(data["root"]),
            "--val-list", str(data["val"]), "--out", str(out), "-q", *flags]


# --------------------------------------------------------------------------------------------
# evaluate


def test_protocol_with_window_flags_is_refused_and_writes_nothing(
        weights: Path, tiny_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "ev"
    assert main(_evaluate(weights, tiny_data, out, "--protocol", "mmseg-whole", "--mode",
                          "slide", "--flip")) == 2
    line = _error(capsys)
    assert "--protocol mmseg-whole" in line and "--mode slide --flip" in line
    assert "mode whole" in line and "flip off" in line
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("flags, named", [
    (["--crop-size", "32"], "--crop-size 32"),  # whole image: the crop would be ignored
    (["--base-size", "48"], "--base-size 48"),  # no protocol: ignored
    (["--protocol", "mmseg-whole", "--crop-size", "32"], "--crop-size 32"),
    (["--protocol", "mmseg-slide", "--crop-size", "32", "--base-size", "48"], "--base-size 48"),
    (["--protocol", "semseg", "--scales", "1", "--crop-size", "32"], "--scales 1"),
    (["--dataset", "ade20k"], "--dataset"),
])
def test_evaluate_flags_that_would_be_ignored_are_refused(
        flags: list[str], named: str, weights: Path, tiny_data: dict[str, Path],
        tmp_path: Path, capsys) -> None:
    assert main(_evaluate(weights, tiny_data, tmp_path / "ev", *flags)) == 2
    assert named in _error(capsys)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the options every prediction of the evaluation runs with."""
    import pspnet.engine.evaluate as evaluate

    seen: list[Any] = []
    real = evaluate.predict_labels

    def spy(net: Any, images: torch.Tensor, opts: Any, **kw: Any) -> torch.Tensor:
        seen.append(opts)
        return real(net, images, opts, **kw)

    monkeypatch.setattr(evaluate, "predict_labels", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--mode", "slide", "--crop-size", "32", "--flip", "--scales", "1"],
    ["--protocol", "mmseg-whole"],
    ["--protocol", "semseg", "--crop-size", "32", "--base-size", "40"],
])
def test_metrics_json_records_the_options_that_ran(
        flags: list[str], weights: Path, tiny_data: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch)
    out = tmp_path / "ev"
    assert main(_evaluate(weights, tiny_data, out, *flags)) == 0
    ran = {o.predict_kwargs().__repr__() for o in seen}
    assert len(ran) == 1, "one set of options for every image"
    opts = seen[0]
    setup = json.loads((out / "metrics.json").read_text())["setup"]
    assert setup["mode"] == opts.mode and setup["flip"] == opts.flip
    assert setup["scales"] == list(opts.scales)
    assert setup["crop_size"] == (list(opts.crop_size) if opts.crop_size else None)
    recorded = setup["inference"]
    for key, value in opts.predict_kwargs().items():
        assert recorded[key] == (list(value) if isinstance(value, tuple) else value), key


# --------------------------------------------------------------------------------------------
# predict


def test_predict_crop_size_without_the_window_is_refused(weights: Path, image: Path,
                                                         tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(out),
                 "--crop-size", "32"]) == 2
    line = _error(capsys)
    assert "--crop-size 32" in line and "--mode slide" in line
    assert not out.exists()


@pytest.mark.parametrize("flags, named", [
    (["--alpha", "0.3", "--no-overlay"], "--alpha 0.3"),
    (["--alpha", "1.5"], "--alpha 1.5"),
    (["--mode", "slide"], "--mode slide needs --crop-size"),
])
def test_predict_overlay_and_window_conflicts(flags: list[str], named: str, weights: Path,
                                              image: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", "--weights", str(weights), str(image), "--out",
                 str(tmp_path / "o"), *flags]) == 2
    assert named in _error(capsys)


def test_precision_on_an_exported_model_is_refused(tmp_path: Path, image: Path,
                                                   capsys) -> None:
    # an export runs in its own runtime: autocast would do nothing to it
    from helpers import TinySegmenter

    from pspnet.export import export_torchscript

    torch.manual_seed(0)
    net = TinySegmenter(num_classes=3).eval()
    net.meta = WeightsMeta(ModelConfig(num_classes=3), classes=("a", "b", "c"))
    path = tmp_path / "m.ts"
    export_torchscript(net, path, height=40, width=48, timing_runs=0)
    assert main(["predict", "--weights", str(path), str(image), "--out", str(tmp_path / "o"),
                 "--precision", "bf16"]) == 2
    line = _error(capsys)
    assert "--precision bf16" in line and "exported" in line


# --------------------------------------------------------------------------------------------
# data check, benchmark, zoo, export


@pytest.mark.parametrize("argv, named", [
    (["data", "check", "--list", "l.txt", "--images", "i", "--labels", "l",
      "--num-classes", "3"], "not both"),
    (["data", "check", "--images", "i", "--num-classes", "3"], "--images needs --labels"),
    (["data", "check", "--list", "l.txt", "--split", "val", "--num-classes", "3"],
     "--split val"),
    (["benchmark", "--no-data", "--camvid-root", "c"], "--camvid-root c"),
    (["benchmark", "--data-source", "scenes", "--camvid-root", "c"], "--camvid-root c"),
    (["benchmark", "--repeats", "0"], "--repeats 0"),
    (["zoo", "--allow-unverified"], "--allow-unverified"),
    (["zoo", "--download", "x", "--verbose"], "--verbose"),
    (["export", "--weights", "missing", "--format", "torchscript", "--dynamic", "--out",
      "m.ts"], "--dynamic"),
])
def test_other_verbs_refuse_flags_they_would_ignore(argv: list[str], named: str,
                                                    tmp_path: Path, monkeypatch,
                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is created, but if it were, it would be here
    assert main(argv) == 2
    assert named in _error(capsys)
    assert list(tmp_path.iterdir()) == []
