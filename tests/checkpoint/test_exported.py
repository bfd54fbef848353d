"""pspnet.checkpoint.exported: load_model opens exports, refuses what cannot apply to them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import TinySegmenter
from torch import nn

import pspnet
from pspnet.checkpoint import CheckpointError, WeightsMeta, load_model
from pspnet.checkpoint.exported import TorchScriptSegmenter, is_exported, load_exported
from pspnet.config import ModelConfig
from pspnet.export import export_torchscript

CLASSES = ("sky", "road", "tree")
HW = (20, 30)


@pytest.fixture(scope="module")
def ts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net: nn.Module = TinySegmenter(len(CLASSES)).eval()
    net.meta = WeightsMeta(ModelConfig(arch="pspnet_r18", num_classes=len(CLASSES)),
                           classes=CLASSES)
    path = tmp_path_factory.mktemp("exports") / "model.pt"  # .pt, like a training checkpoint
    export_torchscript(net, path, height=HW[0], width=HW[1], timing_runs=0)
    return path


def test_load_model_opens_an_export_by_content(ts_file: Path) -> None:
    model = pspnet.load_model(ts_file)
    assert isinstance(model, TorchScriptSegmenter) and is_exported(model)
    assert model.meta is not None and model.meta.classes == CLASSES
    assert model.input_size == HW and not model.training
    x = torch.randn(1, 3, *HW)
    assert torch.equal(model(x), load_exported(ts_file)(x))
    # arch and num_classes are checked against the file's metadata
    assert is_exported(load_model(ts_file, "pspnet_r18", len(CLASSES)))
    with pytest.raises(CheckpointError, match=r"has 3 classes, not 4 \(--num-classes\)"):
        load_model(ts_file, num_classes=4)
    with pytest.raises(CheckpointError, match=r"holds a pspnet_r18, not a pspnet50 \(--arch\)"):
        load_model(ts_file, "pspnet50")


def test_optimisations_and_options_are_refused_for_an_export(ts_file: Path) -> None:
    for kwargs, named in (({"precision": "bf16"}, "precision='bf16'"),
                          ({"compile": True}, "compile=True")):
        with pytest.raises(CheckpointError) as err:
            load_model(ts_file, **kwargs)
        msg = str(err.value)
        assert msg.startswith(f"{named} optimise PyTorch weights, but {ts_file} is an exported")
        assert msg.endswith("leave the argument out")
    with pytest.raises(CheckpointError, match=r"model options \(align_corners\) apply to foreign"):
        load_model(ts_file, align_corners=True)


def test_missing_onnxruntime_is_one_error_naming_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    path = tmp_path / "m.bin"  # recognised by content, whatever the suffix
    path.write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError, match=rf"^cannot run {path}: .*pspnet\[onnx\]"):
        load_model(path)


def test_info_prints_an_exports_metadata(ts_file: Path, capsys) -> None:
    from pspnet.cli import main

    assert main(["info", str(ts_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "pspnet-export" and doc["runtime"] == "torchscript"
    assert doc["classes"] == list(CLASSES) and doc["input_size"] == list(HW)
