"""OpenVINO IR exports and their runtime, tested like the ONNX Runtime path.

Needs the ``openvino`` extra (``pip install 'pspnet[openvino]'``; the ``dev`` extra has it) and
is skipped without it. The int8 (NNCF) round trip is in tests/models/test_quantize.py, beside
the ONNX Runtime int8 test, where a model with real margins is trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pspnet
from pspnet.checkpoint import CheckpointError, WeightsMeta, load_model
from pspnet.checkpoint.files import detect_file_kind
from pspnet.inference import predict

pytest.importorskip("openvino", reason="openvino not installed: pip install 'pspnet[openvino]'")
pytest.importorskip("onnxscript", reason="onnxscript not installed: pip install 'pspnet[openvino]'")

from pspnet.export import OpenVinoSegmenter, export_openvino, is_exported, read_metadata  # noqa: E402

CLASSES = ("field", "water", "road", "rock", "boat", "car")  # the scenes' classes
SIZE = (64, 64)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = pspnet.create_model("pspnet_r18", len(CLASSES), head_channels=32, base_width=16).eval()
    m.meta = WeightsMeta(model=m.config, classes=CLASSES)
    return m


@pytest.fixture(scope="module")
def dynamic_ir(model: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("ov") / "dynamic.xml"
    return export_openvino(model, path, height=SIZE[0], width=SIZE[1], dynamic=True,
                           timing_runs=0), path


@pytest.fixture(scope="module")
def fixed_ir(model: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("ov") / "fixed.xml"
    return export_openvino(model, path, height=SIZE[0], width=SIZE[1], timing_runs=0), path


def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)["out"]


@pytest.mark.slow
def test_dynamic_ir_is_checked_and_matches_eager_at_other_sizes(model, dynamic_ir) -> None:
    report, path = dynamic_ir
    assert report.ok and report.runtime == "openvino" and report.path == path
    # the IR itself was run by OpenVINO at the export size and two others, one odd non-square
    assert [(c.height, c.width) for c in report.checks][0] == SIZE and len(report.checks) == 3
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    assert "openvino export ->" in report.format()
    runtime = load_model(path)
    assert isinstance(runtime, OpenVinoSegmenter) and is_exported(runtime)
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(3))
    ref = _eager(model, x)
    got = runtime(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) + 1e-6
    assert torch.equal(runtime(x.numpy()), got)  # numpy in, same answer


@pytest.mark.slow
def test_ir_carries_classes_and_runs_in_predict(model, dynamic_ir) -> None:
    _, path = dynamic_ir
    runtime = load_model(path)
    assert runtime.classes == CLASSES and runtime.meta is not None
    assert runtime.meta.model.num_classes == 6 and runtime.input_size is None
    doc = read_metadata(path)
    assert doc["runtime"] == "openvino" and doc["classes"] == list(CLASSES)
    assert detect_file_kind(path) == "openvino"
    assert runtime.eval() is runtime and list(runtime.parameters()) == []
    x = torch.randn(1, 3, 50, 70, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(predict(runtime, x, flip=True), predict(model, x, flip=True),
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_fixed_ir_refuses_other_sizes_naming_the_fix(fixed_ir) -> None:
    report, path = fixed_ir
    assert report.ok and not report.dynamic
    runtime = load_model(path)
    assert runtime.input_size == SIZE
    with pytest.raises(ValueError, match=r"fixed input size of 64x64.*got 48x64.*--height 48"):
        runtime(torch.zeros(1, 3, 48, 64))


@pytest.mark.slow
def test_ir_without_its_bin_names_the_missing_file(fixed_ir, tmp_path: Path) -> None:
    _, path = fixed_ir
    lone = tmp_path / "lone.xml"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=r"lone\.bin.*copy the \.xml and \.bin"):
        load_model(lone)


def test_xml_without_pspnet_metadata_is_not_an_export(tmp_path: Path) -> None:
    import openvino as ov

    param = ov.opset13.parameter([1, 3, 8, 8], ov.Type.f32, name="images")
    graph = ov.Model([ov.opset13.relu(param)], [param], "plain")
    ov.save_model(graph, str(tmp_path / "plain.xml"))
    assert detect_file_kind(tmp_path / "plain.xml") == "openvino"
    with pytest.raises(CheckpointError, match="OpenVINO IR file without pspnet export metadata"):
        load_model(tmp_path / "plain.xml")


def test_other_xml_is_text_not_openvino(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text('<?xml version="1.0"?>\n<annotation><size/></annotation>\n')
    assert detect_file_kind(tmp_path / "a.xml") == "text"


def test_missing_openvino_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    (tmp_path / "m.xml").write_text("<net ")
    with pytest.raises(ImportError, match=r"pspnet\[openvino\]"):
        OpenVinoSegmenter(tmp_path / "m.xml")


def test_export_refuses_a_non_xml_path(model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.xml file.*--out .*m\.xml"):
        export_openvino(model, tmp_path / "m.onnx", height=32, width=32)
    assert not list(tmp_path.iterdir())


def test_cli_refuses_int8_torchscript_and_dynamic_torchscript(
        model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pspnet import save_weights
    from pspnet.cli import main

    weights = save_weights(model, tmp_path / "w", model.meta)
    code = main(["export", "--weights", str(weights), "--format", "torchscript", "--int8",
                 "--calibration-list", "x.txt", "--out", str(tmp_path / "m.ts")])
    assert code != 0 and "--format onnx or --format openvino" in capsys.readouterr().err
    code = main(["export", "--weights", str(weights), "--format", "torchscript", "--dynamic",
                 "--out", str(tmp_path / "m.ts")])
    assert code != 0 and "--format onnx and openvino only" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_evaluates_the_ir(dynamic_ir, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from pspnet.cli import main
    from pspnet.data.scenes import generate_scenes

    root = generate_scenes(tmp_path / "scenes", n_train=1, n_val=2, size=(48, 48), seed=0,
                           progress=False)
    code = main(["evaluate", "--weights", str(dynamic_ir[1]), "--data-root", str(root),
                 "--val-list", str(root / "val.txt"), "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics.json").is_file()
