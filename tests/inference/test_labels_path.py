"""The labels-only path and the native-logits fast path give today's results without the copies.

The reference, :func:`full_size_predict`, is the previous implementation of ``predict``: every
view's logits converted to float32 NCHW at full size, softmaxed, resized and summed into a
zero-filled tensor. The fast paths must give the same labels (``torch.equal``) and the same
probabilities within float32 rounding, for fp32 and bf16 (emulated on a CPU without native
bf16: correctness only), channels-last on and off, whole and slide, flip and multi-scale.
"""

from __future__ import annotations

import copy
import math

import pytest
from helpers import one_torch_thread
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import pspnet
from golden import deterministic_images, fill_deterministic
from pspnet.inference import InferenceOptions, predict, predict_labels, predict_sliding
from pspnet.inference.core import rescaled_size
from pspnet.models.fuse import PRECISIONS, optimize_for_inference
from pspnet.precision import autocast

K = 6  # classes of the tiny network


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    m = pspnet.create_model("pspnet_r18", K, head_channels=16, aux_channels=16, ppm_channels=8,
                            output_stride=16)
    fill_deterministic(m, 3)
    return m.eval()


X = deterministic_images((2, 3, 37, 45), seed=5)


def _old_logits(model: nn.Module, x: Tensor, opts: InferenceOptions) -> Tensor:
    """What every path got before: full-size float32 NCHW logits at the input's size."""
    with torch.no_grad(), autocast(x.device, opts.precision):
        if hasattr(model, "native_logits"):  # the old InferenceModel.forward
            out = model.native_logits(x).float().contiguous()
        else:
            out = model(x)["out"].float()
    if tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
        out = F.interpolate(out, x.shape[-2:], mode="bilinear",
                            align_corners=bool(opts.align_corners))
    return out


def full_size_predict(model: nn.Module, images: Tensor, opts: InferenceOptions) -> Tensor:
    """The previous ``predict``: every view at full size in float32, summed into zeros."""
    h, w = images.shape[-2:]
    images = images.to(next(model.parameters()).dtype)  # as predict(): the weights' dtype
    total, views = torch.zeros(()), 0
    crop_flip = opts.flip and opts.mode == "slide" and opts.flip_mode == "crop"
    for scale in opts.scales:
        size = rescaled_size(h, w, scale, base_size=opts.base_size, img_scale=opts.img_scale)
        x = images if size == (h, w) else F.interpolate(images, size, mode="bilinear",
                                                        align_corners=False)
        for mirrored in (False, True) if opts.flip and not crop_flip else (False,):
            xi = x.flip(-1) if mirrored else x
            if opts.mode == "slide":
                out = predict_sliding(model, xi, opts.replace(flip=crop_flip))
            else:
                out = _old_logits(model, xi, opts)
                out = out.softmax(1) if opts.average == "prob" else out
            out = out.flip(-1) if mirrored else out
            if tuple(out.shape[-2:]) != (h, w):
                out = F.interpolate(out, (h, w), mode="bilinear",
                                    align_corners=opts.restore_align_corners)
            total = total + (out.softmax(1) if opts.average == "logit" else out)
            views += 1
    return total / views


OPTIONS = {
    "whole": InferenceOptions(),
    "whole-logit": InferenceOptions(average="logit"),
    "flip": InferenceOptions(flip=True),
    "multiscale-flip": InferenceOptions(scales=(0.75, 1.0, 1.25), flip=True),
    "multiscale-logit": InferenceOptions(scales=(0.5, 1.5), average="logit",
                                         restore_align_corners=True),
    "slide": InferenceOptions(mode="slide", crop_size=(24, 24), stride=(16, 16), flip=True),
    "slide-multiscale": InferenceOptions(mode="slide", crop_size=(24, 24), scales=(0.75, 1.25),
                                         flip=True, flip_mode="image"),
}

VARIANTS = {  # name -> (make the model from the eager one, autocast precision of the options)
    "fp32-eager": (lambda m: m, "fp32"),
    "bf16-autocast": (lambda m: m, "bf16"),
    "fp32-folded": (lambda m: optimize_for_inference(m, precision="fp32"), "fp32"),
    "fp32-channels-last": (
        lambda m: optimize_for_inference(m, precision="fp32", channels_last=True), "fp32"),
    "bf16-channels-last": (lambda m: optimize_for_inference(m, precision="bf16"), "fp32"),
    "bf16-nchw": (
        lambda m: optimize_for_inference(m, precision="bf16", channels_last=False), "fp32"),
}


#: Every variant runs these; the sliding windows (the same tiles for every variant) run on two.
WHOLE = ("whole", "whole-logit", "flip", "multiscale-flip", "multiscale-logit")
SLIDING_VARIANTS = ("fp32-eager", "bf16-channels-last")


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_labels_and_probabilities_equal_the_full_size_path(net: nn.Module, variant: str) -> None:
    make, precision = VARIANTS[variant]
    model = make(net)
    names = list(OPTIONS) if variant in SLIDING_VARIANTS else WHOLE
    for name in names:
        base = OPTIONS[name]
        opts = base.replace(precision=precision)
        ref = full_size_predict(model, X, opts)
        probs = predict(model, X, opts)
        labels = predict_labels(model, X, opts)
        assert labels.dtype == torch.int64 and labels.shape == (2, 37, 45), name
        assert torch.equal(labels, ref.argmax(1)), f"{variant} {name}"
        # Same network output, same formulas: only float32 rounding of softmax may differ.
        torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6, msg=f"{variant} {name}")
        assert torch.equal(probs.argmax(1), labels), f"{variant} {name}"


_Made = list[tuple[torch.dtype, tuple[int, ...], bool]]  # (dtype, shape, is a view) each


class _NewTensors(TorchDispatchMode):
    """Records (dtype, shape, is a view) of every new tensor an operation creates."""

    def __init__(self) -> None:
        super().__init__()
        self.made: _Made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, Tensor)]
        for t in out if isinstance(out, (tuple, list)) else (out,):
            new = not any(t is a for a in inputs)  # an in-place op returns its input
            if isinstance(t, Tensor) and new:
                self.made.append((t.dtype, tuple(t.shape), t._base is not None))
        return out


def _new_tensors(model: nn.Module, x: Tensor, fn) -> _Made:
    with _NewTensors() as rec:
        fn(model, x)
    return rec.made


def _full_size_logits(model: nn.Module, x: Tensor, fn) -> list[torch.dtype]:
    """The dtypes of the full-size logit tensors, (N, K, H, W), ``fn`` creates, in order."""
    shape = (x.shape[0], K, x.shape[2], x.shape[3])
    return [dtype for dtype, s, _ in _new_tensors(model, x, fn) if s == shape]


def _full_size_float32(model: nn.Module, x: Tensor, fn) -> int:
    """How many float32 tensors (not views) of at least (N, C, H, W) elements ``fn`` creates."""
    full = x.shape[0] * K * x.shape[2] * x.shape[3]
    return sum(dtype == torch.float32 and not view and math.prod(s) >= full
               for dtype, s, view in _new_tensors(model, x, fn))


@pytest.mark.slow
def test_labels_path_makes_no_full_size_float32_tensor(net: nn.Module) -> None:
    bf16 = optimize_for_inference(net, precision="bf16")  # bf16 channels-last network
    x = deterministic_images((1, 3, 150, 24), seed=6)  # taller than a block of rows
    flip = InferenceOptions(flip=True)
    # Whole image, one view: the argmax of the network's own bf16 logits, nothing in float32.
    assert _full_size_float32(bf16, x, lambda m, x: predict_labels(m, x)) == 0
    # Probabilities asked for: only the result is full-size. The previous path converted the
    # logits (twice), softmaxed them and added them to a zero-filled sum.
    assert _full_size_float32(bf16, x, lambda m, x: predict(m, x).argmax(1)) == 1
    assert _full_size_float32(
        bf16, x, lambda m, x: full_size_predict(m, x, InferenceOptions()).argmax(1)) >= 3
    # Two views: only the sum of their probabilities is full-size.
    assert _full_size_float32(bf16, x, lambda m, x: predict_labels(m, x, flip)) == 1
    # The logits a caller asks for: converted once.
    assert _full_size_float32(bf16, x, lambda m, x: m(x)["out"]) == 1


def test_inference_model_forward_is_float32_nchw_and_native_is_as_computed(
        net: nn.Module) -> None:
    bf16 = optimize_for_inference(net, precision="bf16")
    x = X[:1]
    native = bf16.native_logits(x)
    assert native.dtype == torch.bfloat16
    assert native.is_contiguous(memory_format=torch.channels_last)
    out = bf16(x)["out"]
    assert out.dtype == torch.float32 and out.is_contiguous()
    # forward upsamples the converted coarse logits in float32, once: the same bilinear
    # formula on the same bf16 values, rounded once (to float32) instead of twice.
    with torch.no_grad():
        coarse = bf16.model.coarse_logits(x.to(torch.bfloat16)).float().contiguous()
    expected = F.interpolate(coarse, x.shape[-2:], mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, native.float(), rtol=2e-2, atol=2e-2)
    # ... which is no further from the float32 network than the bf16 upsampling was.
    with torch.no_grad():
        ref = net(x)["out"]
    assert (out - ref).abs().mean() <= (native.float() - ref).abs().mean()
    # The only full-size logits forward makes are its float32 result (no bf16 ones before it).
    assert _full_size_logits(bf16, x, lambda m, x: m(x)["out"]) == [torch.float32]
    assert _full_size_logits(bf16, x, lambda m, x: m.native_logits(x)) == [torch.bfloat16]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("compiled", [False, True])
def test_low_precision_forward_on_cuda_upsamples_once_in_float32(
        net: nn.Module, precision: str, compiled: bool) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    fast = optimize_for_inference(net, precision=precision, device="cuda", compile=compiled)
    x = X[:1].cuda()
    native = fast.native_logits(x)
    assert native.dtype == PRECISIONS[precision]
    out = fast(x)["out"]
    assert out.dtype == torch.float32 and out.is_contiguous() and out.is_cuda
    torch.testing.assert_close(out, native.float(), rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        ref = copy.deepcopy(net).cuda()(x)["out"]
    assert (out - ref).abs().mean() <= (native.float() - ref).abs().mean() * 1.01
    if not compiled:  # (a compiled graph's intermediates are inductor's buffers, not ops)
        assert _full_size_logits(fast, x, lambda m, x: m(x)["out"]) == [torch.float32]


def test_coarse_logits_upsampled_are_forward(net: nn.Module) -> None:
    x = X[:1]
    with torch.no_grad():
        full = net(x)["out"]
        coarse = net.coarse_logits(x)
    assert coarse.shape == (1, K, 3, 3)  # ceil(37 / 16), ceil(45 / 16)
    up = F.interpolate(coarse, x.shape[-2:], mode="bilinear", align_corners=net.align_corners)
    assert torch.equal(up, full)
    with pytest.raises(ValueError, match="unsqueeze"):
        net.coarse_logits(x[0])


@pytest.mark.slow
def test_compiled_fast_path_equals_the_compiled_network(net: nn.Module) -> None:
    for precision in ("fp32", "bf16"):
        fast = optimize_for_inference(net, precision=precision, compile=True)
        x = X[:1]
        native = fast.native_logits(x)  # the compiled network, nothing after it
        old = native.float().contiguous()  # what forward returned before
        labels = predict_labels(fast, x)
        assert torch.equal(labels, old.softmax(1).argmax(1)), precision
        # forward converts inside the compiled graph: the same logits within the precision.
        tol = {"fp32": 1e-5, "bf16": 2e-2}[precision]
        torch.testing.assert_close(fast(x)["out"], old, rtol=tol, atol=tol)
        assert fast.compile_seconds > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_argmax_is_argmax_with_its_tie_rule(dtype: torch.dtype,
                                                    channels_last: bool) -> None:
    from pspnet.inference.multiscale import _channel_argmax

    g = torch.Generator().manual_seed(0)
    # few distinct values: many ties, where the first maximal channel must win, as in argmax
    scores = torch.randint(0, 3, (2, 7, 9, 11), generator=g).to(dtype)
    if channels_last:
        scores = scores.contiguous(memory_format=torch.channels_last)
    got = _channel_argmax(scores)
    assert got.dtype == torch.int64 and torch.equal(got, scores.argmax(dim=1))
