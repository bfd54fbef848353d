"""Inference fast paths give the eager logits (within each precision's tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pspnet
from golden import deterministic_images, fill_deterministic
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.models.fuse import default_channels_last, fold_batchnorm, optimize_for_inference


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m = pspnet.create_model("pspnet_r18", 4, head_channels=64)
    fill_deterministic(m, 7)
    return m.eval()


X = deterministic_images((2, 3, 48, 40), seed=2)


@pytest.mark.slow
def test_folding_removes_every_bn_and_keeps_logits(model: torch.nn.Module) -> None:
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original intact
    with torch.no_grad():
        torch.testing.assert_close(folded(X)["out"], model(X)["out"], rtol=1e-4, atol=1e-5)


def test_inplace_folding_converts_the_model_itself(model: torch.nn.Module) -> None:
    own = pspnet.create_model("pspnet_r18", 4, head_channels=64)
    own.load_state_dict(model.state_dict())
    folded = fold_batchnorm(own.eval(), inplace=True)
    assert folded is own  # no copy: one set of weights in memory (load_model's path)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in own.modules())
    with torch.no_grad():
        torch.testing.assert_close(own(X)["out"], model(X)["out"], rtol=1e-4, atol=1e-5)
    fast = optimize_for_inference(model, precision="fp32")
    assert fast.model is not model and any(  # the default still leaves the caller's model alone
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("bf16", 0.05)])
def test_optimized_model_matches_eager(model: torch.nn.Module, precision: str, tol: float) -> None:
    fast = optimize_for_inference(model, precision=precision)
    with torch.no_grad():
        ref = model(X)["out"]
    out = fast(X)["out"]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ((out - ref).abs().max() / ref.abs().max()).item() < tol
    with pytest.raises(RuntimeError, match="optimised for inference"):
        fast.train()


@pytest.mark.slow
def test_load_model_precision_and_compile(tmp_path: Path, model: torch.nn.Module) -> None:
    d = save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    fast = pspnet.load_model(d, precision="bf16")
    assert fast.precision == "bf16" and fast.config.arch == "pspnet_r18"
    compiled = pspnet.load_model(d, compile=True)
    with torch.no_grad():
        ref = model(X[:1])["out"]
    torch.testing.assert_close(compiled(X[:1])["out"], ref, rtol=1e-4, atol=1e-4)
    assert compiled.compile_seconds > 0


def test_default_layout_follows_the_device_and_compilation(model: torch.nn.Module) -> None:
    # NHWC where it was measured to pay: bf16/fp16 on a CPU, compiled bf16/fp16 on CUDA.
    assert default_channels_last("bf16", "cpu", compiled=False)
    assert default_channels_last("fp16", "cpu", compiled=True)
    assert not default_channels_last("fp32", "cpu", compiled=True)
    assert not default_channels_last("bf16", "cuda", compiled=False)
    assert not default_channels_last("fp16", torch.device("cuda", 0), compiled=False)
    assert default_channels_last("bf16", "cuda:0", compiled=True)
    assert not default_channels_last("fp32", "cuda", compiled=True)
    # optimize_for_inference applies it (on this CPU: bf16 is NHWC, fp32 is not)
    assert optimize_for_inference(model, precision="bf16").channels_last
    assert not optimize_for_inference(model, precision="fp32").channels_last
