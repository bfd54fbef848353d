"""ONNX / TorchScript export: shape-generic pooling, parity with eager, fixed-size refusal.

The ONNX tests need the ``onnx`` extra (``pip install 'pspnet[onnx]'``) and are skipped without
it; the pooling property tests and the TorchScript tests always run. Exports are made once per
module (an ONNX export of pspnet_r18 takes 10-25 s on a laptop CPU).
"""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pspnet
from pspnet.export import onnx as ex
from pspnet.checkpoint import WeightsMeta
from pspnet.export import (
    ExactAdaptivePool2d,
    ExportCheckError,
    OnnxSegmenter,
    TorchScriptSegmenter,
    export_onnx,
    export_torchscript,
    exportable_copy,
    load_exported,
    read_metadata,
)
from pspnet.inference import predict



def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


HAS_ONNX = _has_onnx()
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="onnx/onnxscript/onnxruntime not installed: pip install 'pspnet[onnx]'"
)

CLASSES = ("sky", "road", "car")
SIZE = (64, 64)
OTHER = [(72, 96), (57, 83)]


def _images(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = pspnet.create_model("pspnet_r18", len(CLASSES), head_channels=32).eval()
    m.meta = WeightsMeta(model=m.config, classes=CLASSES)
    return m


def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)["out"]


# --------------------------------------------------------------------------------------------
# Exact, shape-generic adaptive pooling (eager; always runs)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    bh=st.integers(1, 8),
    bw=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_exact_pooling_matches_adaptive_pooling(
    h: int, w: int, bh: int, bw: int, seed: int
) -> None:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    avg = ExactAdaptivePool2d((bh, bw), "avg")(x)
    torch.testing.assert_close(avg, nn.AdaptiveAvgPool2d((bh, bw))(x), rtol=1e-5, atol=1e-6)
    # Max pooling is a selection: bit-exact.
    assert torch.equal(ExactAdaptivePool2d((bh, bw), "max")(x), nn.AdaptiveMaxPool2d((bh, bw))(x))


@pytest.mark.parametrize("length,bins", [(1, 8), (2, 3), (3, 6), (5, 7), (7, 3), (8, 6)])
def test_exact_pooling_smaller_than_bins_and_overlaps(length: int, bins: int) -> None:
    x = torch.arange(length * length, dtype=torch.float32).reshape(1, 1, length, length)
    torch.testing.assert_close(
        ExactAdaptivePool2d(bins)(x), F.adaptive_avg_pool2d(x, bins), rtol=1e-6, atol=1e-6
    )
    assert torch.equal(ExactAdaptivePool2d(bins, "max")(x), F.adaptive_max_pool2d(x, bins))


def test_exact_pooling_none_keeps_axis() -> None:
    x = torch.randn(1, 2, 7, 9)
    torch.testing.assert_close(
        ExactAdaptivePool2d((None, 4))(x), nn.AdaptiveAvgPool2d((None, 4))(x)
    )


def test_exportable_copy_replaces_only_in_the_copy(model: nn.Module) -> None:
    clone = exportable_copy(model)
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert len(pools) == 4  # bins (1, 2, 3, 6): the user's model is untouched
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in clone.modules())
    assert sum(isinstance(m, ExactAdaptivePool2d) for m in clone.modules()) == 4
    x = _images(1, 57, 83)
    torch.testing.assert_close(_eager(clone.eval(), x), _eager(model, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# TorchScript (always runs)


@pytest.fixture(scope="module")
def ts_export(model: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    return export_torchscript(model, path, height=SIZE[0], width=SIZE[1], timing_runs=1), path


@pytest.mark.slow
def test_torchscript_matches_eager_at_export_size(model, ts_export) -> None:
    report, path = ts_export
    assert report.ok and report.runtime == "torchscript" and not report.dynamic
    (c,) = report.checks
    assert (c.height, c.width, c.batch) == (*SIZE, 2)
    assert c.max_abs_diff <= 1e-5 and c.label_agreement == 1.0
    assert c.eager_ms is not None and c.runtime_ms is not None
    seg = load_exported(path)
    assert isinstance(seg, TorchScriptSegmenter)
    x = _images(2, *SIZE)
    torch.testing.assert_close(seg(x), _eager(model, x), rtol=1e-5, atol=1e-5)
    assert seg.classes == CLASSES and seg.input_size == SIZE


@pytest.mark.slow
def test_torchscript_refuses_other_sizes(ts_export) -> None:
    _, path = ts_export
    seg = load_exported(path)
    with pytest.raises(ValueError, match=r"fixed input size of 64x64.*got 72x96.*--height 72"):
        seg(_images(1, 72, 96))
    # The file itself refuses too, for users who load it with plain torch.jit.load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        raw = torch.jit.load(str(path))
    with pytest.raises(torch.jit.Error, match=r"fixed input size of 64x64.*got 57x83"):
        raw(_images(1, 57, 83))


@pytest.mark.slow
def test_torchscript_runtime_is_a_model_for_predict(model, ts_export) -> None:
    """A fixed-size export serves sliding-window inference with crop_size = export size."""
    _, path = ts_export
    seg = load_exported(path).eval()
    assert seg.training is False
    x = _images(1, 80, 100)
    kw = dict(mode="slide", crop_size=SIZE, num_classes=len(CLASSES))
    torch.testing.assert_close(predict(seg, x, **kw), predict(model, x, **kw), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        seg.train()


@pytest.mark.slow
def test_torchscript_metadata(ts_export) -> None:
    _, path = ts_export
    doc = read_metadata(path)
    assert doc["classes"] == list(CLASSES) and doc["input_size"] == list(SIZE)
    assert doc["preprocess"]["channel_order"] == "RGB" and doc["model"]["arch"] == "pspnet_r18"


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ImportError, match=r"pspnet\[onnx\]"):
        OnnxSegmenter(tmp_path / "m.onnx")


# --------------------------------------------------------------------------------------------
# ONNX


@pytest.fixture(scope="module")
def dynamic_export(model: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("onnx") / "dynamic.onnx"
    report = export_onnx(model, path, height=SIZE[0], width=SIZE[1], dynamic=True, timing_runs=1)
    return report, path


@pytest.fixture(scope="module")
def fixed_labels_export(model: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("onnx") / "fixed_labels.onnx"
    report = export_onnx(model, path, height=SIZE[0], width=SIZE[1], output="labels",
                         timing_runs=0)
    return report, path


@pytest.mark.slow
@needs_onnx
def test_onnx_dynamic_matches_eager_at_three_sizes(model, dynamic_export) -> None:
    report, path = dynamic_export
    assert report.ok and report.dynamic and report.replaced_pools == 4
    sizes = [(c.height, c.width) for c in report.checks]
    assert sizes == [SIZE, *OTHER]  # export size, larger, non-square odd
    assert "57x83" in report.format() and json.loads(json.dumps(report.to_dict()))["ok"]
    for c in report.checks:
        assert c.max_abs_diff <= 1e-4, c.format()
        assert c.runtime_ms is not None
    seg = load_exported(path)
    assert isinstance(seg, OnnxSegmenter) and seg.input_size is None
    for h, w in [SIZE, *OTHER, (33, 120)]:
        x = _images(2, h, w, seed=h)
        out = seg(x)
        assert out.shape == (2, len(CLASSES), h, w) and out.dtype == torch.float32
        torch.testing.assert_close(out, _eager(model, x), rtol=1e-4, atol=1e-4)
    # numpy in, tensor out
    x = _images(1, 40, 50)
    torch.testing.assert_close(seg(x.numpy()), _eager(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_onnx
def test_onnx_runtime_is_a_model_for_predict(model, dynamic_export) -> None:
    _, path = dynamic_export
    seg = OnnxSegmenter(path).eval()
    assert seg.training is False and list(seg.parameters()) == []
    x = _images(1, 57, 83)
    torch.testing.assert_close(predict(seg, x, flip=True), predict(model, x, flip=True),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_onnx
def test_onnx_metadata_carries_classes_and_preprocessing(dynamic_export) -> None:
    _, path = dynamic_export
    doc = read_metadata(path)
    assert doc["classes"] == list(CLASSES)
    assert doc["dynamic"] is True and doc["input_size"] is None
    assert doc["export_size"] == list(SIZE) and doc["num_classes"] == len(CLASSES)
    assert len(doc["preprocess"]["mean"]) == 3
    seg = OnnxSegmenter(path)
    assert seg.classes == CLASSES and seg.meta is not None and seg.meta.classes == CLASSES
    assert seg.meta.model.arch == "pspnet_r18"
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["pspnet.input_size"] == "dynamic" and '"car"' in props["pspnet.classes"]


@pytest.mark.slow
@needs_onnx
def test_onnx_fixed_export_refuses_other_sizes(fixed_labels_export) -> None:
    report, path = fixed_labels_export
    assert report.ok and not report.dynamic and len(report.checks) == 1
    seg = OnnxSegmenter(path)
    assert seg.input_size == SIZE
    for h, w in OTHER:
        with pytest.raises(ValueError) as err:
            seg(_images(1, h, w))
        msg = str(err.value)
        assert "fixed input size of 64x64" in msg and f"got {h}x{w}" in msg
        assert f"--height {h} --width {w}" in msg and "--dynamic" in msg
    assert read_metadata(path)["input_size"] == list(SIZE)


@pytest.mark.slow
@needs_onnx
def test_onnx_labels_output_is_argmax(model, fixed_labels_export) -> None:
    _, path = fixed_labels_export
    seg = OnnxSegmenter(path)
    assert seg.output == "labels"
    x = _images(3, *SIZE, seed=7)
    labels = seg(x)
    assert labels.shape == (3, *SIZE) and labels.dtype == torch.int64
    assert torch.equal(labels, _eager(model, x).argmax(1))


class _PoolNet(nn.Module):
    """A tiny segmenter whose output depends on adaptive pooling (quick to export)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = pool
        self.mix = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.conv(x)
        p = F.interpolate(self.pool(f), f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.mix(torch.cat([f, p], 1))
        return {"out": F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)}


@pytest.mark.slow
@needs_onnx
def test_onnx_dynamic_max_pooling_is_exact(tmp_path) -> None:
    torch.manual_seed(0)
    net = _PoolNet(nn.AdaptiveMaxPool2d(3)).eval()
    report = export_onnx(net, tmp_path / "max.onnx", height=64, width=64, dynamic=True,
                         timing_runs=0)
    assert report.ok and len(report.checks) == 3 and report.max_abs_diff < 1e-5


@pytest.mark.slow
@needs_onnx
def test_naive_dynamic_export_is_caught_not_written(tmp_path, monkeypatch) -> None:
    """Without the exact pooling a dynamic graph is wrong or crashes off-size: check refuses."""
    torch.manual_seed(0)
    net = _PoolNet(nn.AdaptiveAvgPool2d(3)).eval()
    monkeypatch.setattr(ex, "exportable_copy", lambda m: m)  # simulate a plain export
    path = tmp_path / "naive.onnx"
    with pytest.raises(ExportCheckError, match="does not reproduce eager") as err:
        export_onnx(net, path, height=64, width=64, dynamic=True, timing_runs=0)
    assert not path.exists() and not list(tmp_path.iterdir())
    bad = [c for c in err.value.report.checks if not c.ok]
    assert bad and all((c.height, c.width) != (64, 64) for c in bad)


def test_bad_arguments() -> None:
    net = _PoolNet(nn.AdaptiveAvgPool2d(2)).eval()
    with pytest.raises(ValueError, match="output must be"):
        export_torchscript(net, "x.pt", height=8, width=8, output="probs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="height must be a positive integer"):
        export_torchscript(net, "x.pt", height=0, width=8)
