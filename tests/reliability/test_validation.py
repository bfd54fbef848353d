"""Loaded weights and configs are validated: one clear error, never a wrong answer with exit 0.

Each case damages one value of a tiny weight directory (or a foreign checkpoint) the way a
careless or hostile user would, then runs ``pspnet predict`` on it. Before these checks, NaN
preprocessing or weights, and integer weight tensors, predicted class 0 everywhere with exit
code 0; a palette value of 300, a string ``version`` and deeply nested JSON ended in
tracebacks. Now each is exit code 2 with one ``error:`` line naming the file, the key, the
value and the fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from _weights_dir import copy_weights, edit_config, edit_tensors, make_weights, run_cli
from layouts import to_mmseg
from pspnet.checkpoint import CheckpointError, load_model, read_foreign, read_meta
from pspnet.config import ConfigError, Preprocessing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undamaged weight directory (read only); ``photo.png`` lies beside it."""
    return make_weights(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def weights(tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny weights for one test to damage."""
    return copy_weights(tiny, tmp_path / "w")


def _predict(capsys: pytest.CaptureFixture[str], weights: Path, tiny: Path,
             tmp_path: Path) -> tuple[int, str]:
    return run_cli(capsys, "predict", str(tiny.parent / "photo.png"), "--weights", str(weights),
                   "--out", str(tmp_path / "out"), "-q")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_the_undamaged_weights_predict(capsys: pytest.CaptureFixture[str], weights: Path,
                                       tiny: Path, tmp_path: Path) -> None:
    """The control: the copy predicts with exit 0, so each refusal below is the damage's."""
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    assert rc == 0, err
    assert (tmp_path / "out" / "photo.png").is_file()


@pytest.mark.parametrize(
    ("key", "index", "value"),
    [("mean", 0, math.nan), ("mean", 2, math.inf), ("std", 1, math.nan), ("std", 0, math.inf),
     ("std", 2, 0.0), ("std", 0, -1.0)],
)  # fmt: skip
def test_non_finite_or_non_positive_preprocessing_is_refused(
    capsys: pytest.CaptureFixture[str], weights: Path, tiny: Path, tmp_path: Path, key: str,
    index: int, value: float,
) -> None:
    """``preprocess.mean`` NaN used to normalise every pixel to NaN: class 0 everywhere, exit
    0. The mean and std must be finite and the std positive."""
    def change(doc: dict[str, Any]) -> None:
        doc["preprocess"][key][index] = value

    cfg = edit_config(weights, change)
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert str(cfg) in line and f"preprocess.{key}" in line, line
    assert not (tmp_path / "out" / "photo.png").exists()


def test_preprocessing_alone_refuses_nan_mean() -> None:
    with pytest.raises(ConfigError, match=r"preprocess\.mean\[1\]` must be a finite number"):
        Preprocessing(mean=(1.0, math.nan, 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused(capsys: pytest.CaptureFixture[str], weights: Path,
                                        tiny: Path, tmp_path: Path, value: float) -> None:
    """NaN classifier weights used to load and predict class 0 everywhere with exit 0."""
    def change(sd: dict[str, torch.Tensor]) -> None:
        sd["head.classifier.weight"][1, 3] = value

    edit_tensors(weights, change)
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert "head.classifier.weight" in line and "non-finite" in line, line
    assert "model.safetensors" in line and "earlier checkpoint" in line, line


@pytest.mark.slow
def test_integer_weight_tensors_are_refused(capsys: pytest.CaptureFixture[str], weights: Path,
                                            tiny: Path, tmp_path: Path) -> None:
    """An integer tensor where the model holds floats used to be cast silently (the weights
    rounded to whole numbers); it is a damaged or wrongly converted file."""
    def change(sd: dict[str, torch.Tensor]) -> None:
        sd["head.conv.weight"] = sd["head.conv.weight"].round().to(torch.int64)

    edit_tensors(weights, change)
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert "head.conv.weight" in line and "int64" in line and "floating point" in line, line


@pytest.mark.slow
def test_integer_batchnorm_counters_still_load(weights: Path) -> None:
    """BatchNorm's step counter is an integer in the model too: it is not refused."""
    model = load_model(weights)
    assert any(k.endswith("num_batches_tracked") for k in model.state_dict())


@pytest.mark.parametrize(
    ("colour", "says"),
    [([300, 0, 0], "0..255"), ([0, -1, 0], "0..255"), ([0, 0, 12.5], "must be an integer"),
     ([1, 2], "must have 3 values")],
)  # fmt: skip
def test_palette_outside_0_255_is_refused(capsys: pytest.CaptureFixture[str], weights: Path,
                                          tiny: Path, tmp_path: Path, colour: list[Any],
                                          says: str) -> None:
    """A palette value of 300 used to pass validation and crash in predict (a traceback)."""
    def change(doc: dict[str, Any]) -> None:
        doc["palette"] = [[0, 0, 0], colour, [0, 0, 255], [9, 9, 9]]

    cfg = edit_config(weights, change)
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert str(cfg) in line and "palette[1]" in line and says in line, line


@pytest.mark.parametrize("version", ["1", 1.5, None, [1], True])
def test_config_version_of_the_wrong_type_is_refused(
    capsys: pytest.CaptureFixture[str], weights: Path, tiny: Path, tmp_path: Path, version: Any,
) -> None:
    """A string ``version`` used to end in ``TypeError: '>' not supported`` (a traceback)."""
    def change(doc: dict[str, Any]) -> None:
        doc["version"] = version

    cfg = edit_config(weights, change)
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert str(cfg) in line and "`version`" in line and repr(version) in line, line


def test_deeply_nested_json_is_refused(capsys: pytest.CaptureFixture[str], weights: Path,
                                       tiny: Path, tmp_path: Path) -> None:
    """100000 nested lists in config.json used to raise RecursionError (a traceback)."""
    cfg = weights / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[:-2] + ', "source": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    rc, err = _predict(capsys, weights, tiny, tmp_path)
    line = _one_error_line(err)
    assert rc == 2
    assert str(cfg) in line and "nests its values too deeply" in line, line


def test_oversized_config_json_is_refused(weights: Path) -> None:
    cfg = weights / "config.json"
    with cfg.open("a") as f:
        f.write(" " * (17 << 20))
    with pytest.raises(CheckpointError, match=r"config\.json is .* bytes, above"):
        read_meta(weights)


@pytest.mark.slow
def test_nan_in_a_foreign_checkpoint_is_refused(weights: Path, tmp_path: Path) -> None:
    """The same tensor checks hold for every loader: here an mmsegmentation .pth file."""
    model = load_model(weights)
    mm = to_mmseg({k: v.clone() for k, v in model.state_dict().items()})
    mm["decode_head.conv_seg.weight"][0, 0] = math.nan
    path = tmp_path / "pspnet_mmseg.pth"
    torch.save({"state_dict": mm, "meta": {}}, path)
    with pytest.raises(CheckpointError, match=r"head\.classifier\.weight` has 1 non-finite"):
        load_model(path, "pspnet_r18")


def test_palette_in_a_foreign_checkpoint_is_checked(tmp_path: Path) -> None:
    """An mmsegmentation file's meta PALETTE with 300 is refused naming the file (it used to
    reach the mask writer)."""
    path = tmp_path / "mm.pth"
    sd = {"decode_head.conv_seg.weight": torch.zeros(2, 4, 1, 1)}
    torch.save({"state_dict": sd, "meta": {"PALETTE": [[0, 0, 0], [300, 0, 0]]}}, path)
    pattern = rf"{re.escape(str(path))}: the palette .*palette\[1\]"
    with pytest.raises(CheckpointError, match=pattern):
        read_foreign(path)


@pytest.mark.slow
def test_nan_in_fine_tuning_weights_is_refused(weights: Path, tmp_path: Path) -> None:
    """Initialising a training run from a foreign file checks the tensors it copies too."""
    from pspnet.checkpoint.init_weights import init_from
    from pspnet.models.registry import create_model

    model = load_model(weights)
    mm = to_mmseg({k: v.clone() for k, v in model.state_dict().items()})
    mm["backbone.layer1.0.conv1.weight"][0, 0, 0, 0] = math.inf
    path = tmp_path / "init_mmseg.pth"
    torch.save({"state_dict": mm, "meta": {}}, path)
    fresh = create_model("pspnet_r18", 7, head_channels=16, ppm_channels=8, aux=False)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight` has 1 non-finite"):
        init_from(fresh, path)
