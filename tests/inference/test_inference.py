"""Tests for pspnet.inference with tiny fake models (no pspnet.models needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import one_torch_thread
import torch
import torch.nn.functional as F
from torch import nn

from pspnet.inference import (
    MULTI_SCALES,
    InferenceOptions,
    PROTOCOLS,
    default_stride,
    get_protocol,
    predict,
    predict_labels,
    predict_labels_tiled,
    predict_sliding,
    predict_whole,
    rescaled_size,
    tile_starts,
)

C = 5  # classes of the fake models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _eval(m: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in m.parameters():
        nn.init.normal_(p, std=0.5)
    return m.eval()


def pointwise_model(seed: int = 0) -> nn.Module:
    """Each output pixel depends only on the same input pixel, so tiling cannot change it."""
    return _eval(nn.Conv2d(3, C, kernel_size=1), seed)


def context_model(seed: int = 0) -> nn.Module:
    """A 7x7 receptive field with zero padding: tile borders and padding change the output."""
    return _eval(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, C, 5, padding=2)),
        seed,
    )


def flip_equivariant_model(seed: int = 0) -> nn.Module:
    """Context model whose kernels are mirror-symmetric: model(flip(x)) == flip(model(x))."""
    m = context_model(seed)
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_((layer.weight + layer.weight.flip(-1)) / 2)
    return m


class LowRes(nn.Module):
    """Predicts at half resolution (ceil), like a head without its own final upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool2d(x, 2, ceil_mode=True))


class DictOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.inner(x)
        return {"out": out, "aux": out * 0}


class BatchRecorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.inner(x)


def images(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- helpers


def test_tile_starts_and_default_stride() -> None:
    assert tile_starts(10, 4, 3) == [0, 3, 6]
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]  # last tile flush with the border
    assert tile_starts(4, 4, 3) == [0]
    assert tile_starts(512, 473, 316) == [0, 39]
    assert default_stride(473) == (316, 316)  # ceil(473 * 2/3)
    assert default_stride((713, 8)) == (476, 6)
    with pytest.raises(ValueError):
        tile_starts(3, 4, 2)


def test_rescaled_size_rules() -> None:
    # semseg: long side = round(base_size * scale), short side = round(long / L * S).
    assert rescaled_size(375, 500, 1.0, base_size=512) == (384, 512)
    assert rescaled_size(375, 500, 0.75, base_size=512) == (288, 384)
    assert rescaled_size(500, 375, 1.25, base_size=512) == (640, 480)
    assert rescaled_size(1024, 2048, 0.5, base_size=2048) == (512, 1024)
    # mmseg keep-ratio: min(2048 / 500, 512 / 375) = 1.3653 -> (512, 683).
    assert rescaled_size(375, 500, 1.0, img_scale=(2048, 512)) == (512, 683)
    assert rescaled_size(1024, 2048, 1.0, img_scale=(2049, 1025)) == (1025, 2049)
    # Relative.
    assert rescaled_size(375, 500, 0.5) == (188, 250)
    assert rescaled_size(7, 9, 1.0) == (7, 9)
    with pytest.raises(ValueError):
        rescaled_size(7, 9, 1.0, base_size=5, img_scale=(5, 5))


# ------------------------------------------------------------------------- slide vs whole


@pytest.mark.parametrize("size", [(17, 23), (5, 7), (8, 8), (9, 30)])
@pytest.mark.parametrize("pad_mode", ["center", "bottom_right", "none"])
@pytest.mark.parametrize("average", ["prob", "logit"])
def test_slide_equals_whole_for_pointwise_model(size, pad_mode, average) -> None:
    model = pointwise_model()
    x = images(2, *size)
    whole = predict_whole(model, x, output=average)
    slide = predict_sliding(
        model, x, crop_size=8, num_classes=C, pad_mode=pad_mode, average=average, batch_size=3
    )
    assert slide.shape == (2, C, *size)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_context_model_shows_tiling_and_padding_effects() -> None:
    model = context_model()
    x = images(1, 17, 23)
    whole = predict_whole(model, x, output="prob")
    slide = predict_sliding(model, x, crop_size=8, stride=6)
    assert (slide - whole).abs().max() > 1e-3  # tile borders see zero padding
    # One tile covering the whole image, unpadded, is the whole-image pass.
    one = predict_sliding(model, x, crop_size=(17, 23), pad_mode="none")
    torch.testing.assert_close(one, whole, atol=1e-5, rtol=1e-5)
    # An image smaller than the crop: padding is seen through the receptive field...
    small = images(1, 6, 7)
    padded = predict_sliding(model, small, crop_size=12, pad_mode="center")
    unpadded = predict_sliding(model, small, crop_size=12, pad_mode="none")
    assert (padded - unpadded).abs().max() > 1e-4
    # ...and centred padding equals padding by hand and running the whole image.
    manual = F.pad(small, (2, 3, 3, 3))  # int(5/2)=2 left, 3 right; int(6/2)=3 top, 3 bottom
    ref = predict_whole(model, manual, output="prob")[:, :, 3:9, 2:9]
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)


def test_pad_value_tensor_matches_scalar_zero() -> None:
    model = context_model()
    x = images(1, 6, 7)
    a = predict_sliding(model, x, crop_size=10, pad_value=0.0)
    b = predict_sliding(model, x, crop_size=10, pad_value=torch.zeros(3))
    torch.testing.assert_close(a, b)
    c = predict_sliding(model, x, crop_size=10, pad_value=torch.tensor([1.0, -1.0, 0.5]))
    assert (a - c).abs().max() > 1e-4


@pytest.mark.parametrize("flip", [False, True])
def test_batching_crops_matches_batch_size_one(flip) -> None:
    model = context_model()
    x = images(2, 19, 26)
    ref = predict_sliding(model, x, crop_size=(8, 10), stride=(5, 7), batch_size=1, flip=flip)
    for bs in (2, 3, 7, 100):
        rec = BatchRecorder(model).eval()
        out = predict_sliding(rec, x, crop_size=(8, 10), stride=(5, 7), batch_size=bs, flip=flip)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        # Never more than one batch of crops (twice that with per-crop flip) in the model.
        assert max(rec.batches) <= bs * (2 if flip else 1)


def test_low_resolution_output_is_resized() -> None:
    model = _eval(LowRes())
    x = images(1, 13, 18)
    out = predict_whole(model, x)
    assert out.shape == (1, C, 13, 18)
    ac = predict_whole(model, x, align_corners=True)
    assert (out - ac).abs().max() > 1e-4  # the convention matters and is honoured
    sized = predict_whole(model, x, out_size=(26, 36), output="prob")
    assert sized.shape == (1, C, 26, 36)
    torch.testing.assert_close(sized.sum(1), torch.ones(1, 26, 36))
    slide = predict_sliding(model, x, crop_size=9, num_classes=C)
    assert slide.shape == (1, C, 13, 18)


def test_dict_and_tensor_outputs_agree() -> None:
    model = context_model()
    wrapped = DictOut(model).eval()
    x = images(2, 11, 14)
    torch.testing.assert_close(predict_whole(wrapped, x), predict_whole(model, x))
    torch.testing.assert_close(
        predict_sliding(wrapped, x, crop_size=8), predict_sliding(model, x, crop_size=8)
    )
    torch.testing.assert_close(
        predict(wrapped, x, scales=(0.5, 1.0), flip=True),
        predict(model, x, scales=(0.5, 1.0), flip=True),
    )

    class NoOut(nn.Module):
        def forward(self, x):
            return {"logits": x}

    with pytest.raises(TypeError, match="'out'"):
        predict_whole(NoOut().eval(), x)


def test_train_mode_raises() -> None:
    model = context_model().train()
    x = images(1, 8, 8)
    for fn, kwargs in [
        (predict_whole, {}),
        (predict_sliding, {"crop_size": 4}),
        (predict_labels_tiled, {"crop_size": 4}),
        (predict, {}),
    ]:
        with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
            fn(model, x, **kwargs)


def test_bad_arguments_raise() -> None:
    model = context_model()
    with pytest.raises(ValueError, match="unsqueeze"):
        predict_whole(model, torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        predict_whole(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="stride"):
        predict_sliding(model, images(1, 8, 8), crop_size=4, stride=5)
    with pytest.raises(ValueError, match="num_classes"):
        predict_sliding(model, images(1, 8, 8), crop_size=4, num_classes=C + 1)
    with pytest.raises(ValueError, match=f"num_classes={C + 1} but the model returned {C}"):
        predict_labels(model, images(1, 8, 8), num_classes=C + 1)
    with pytest.raises(ValueError, match="crop_size"):
        predict(model, images(1, 8, 8), mode="slide")
    with pytest.raises(ValueError, match="pad_mode"):
        predict_sliding(model, images(1, 8, 8), crop_size=4, pad_mode="reflect")


# ---------------------------------------------------------------------------------- TTA


def test_flip_on_equivariant_model_equals_no_flip() -> None:
    model = flip_equivariant_model()
    x = images(2, 12, 17)
    # Symmetric kernels really make the model mirror-equivariant.
    torch.testing.assert_close(
        predict_whole(model, x.flip(-1)), predict_whole(model, x).flip(-1), atol=1e-5, rtol=1e-5
    )
    plain = predict(model, x)
    torch.testing.assert_close(predict(model, x, flip=True), plain, atol=1e-5, rtol=1e-5)
    slide = predict(model, x, mode="slide", crop_size=8)
    torch.testing.assert_close(
        predict(model, x, mode="slide", crop_size=8, flip=True, flip_mode="crop"),
        slide,
        atol=1e-5,
        rtol=1e-5,
    )
    # Image flip in slide mode equals no flip when the tile grid is itself symmetric:
    # width 20 = 8 + 2 * 6 gives starts [0, 6, 12], the mirror of themselves.
    x20 = images(1, 14, 20)
    kw = dict(mode="slide", crop_size=8, stride=6, pad_mode="none")
    torch.testing.assert_close(
        predict(model, x20, flip=True, flip_mode="image", **kw),
        predict(model, x20, **kw),
        atol=1e-5,
        rtol=1e-5,
    )


def test_flip_is_average_with_mirrored_prediction() -> None:
    model = context_model()
    x = images(1, 10, 13)
    plain = predict_whole(model, x, output="prob")
    mirrored = predict_whole(model, x.flip(-1), output="prob").flip(-1)
    assert (plain - mirrored).abs().max() > 1e-3
    torch.testing.assert_close(predict(model, x, flip=True), (plain + mirrored) / 2)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_multiscale_returns_input_size_probabilities(mode) -> None:
    model = _eval(LowRes())
    x = images(2, 15, 22)
    for kwargs in ({}, {"base_size": 20}, {"img_scale": (30, 12)}):
        out = predict(
            model, x, mode=mode, scales=(0.5, 0.75, 1.0, 1.5), flip=True, crop_size=9, **kwargs
        )
        assert out.shape == (2, C, 15, 22)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.sum(1), torch.ones(2, 15, 22), atol=1e-5, rtol=0)
    # One scale at 1.0 with probabilities is just the softmax.
    torch.testing.assert_close(
        predict(model, x, average="logit"), predict_whole(model, x, output="prob")
    )


def test_accumulate_options_and_precision() -> None:
    model = context_model()
    x = images(1, 21, 18)
    ref = predict_sliding(model, x, crop_size=8)
    half = predict_sliding(model, x, crop_size=8, accumulate_dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, atol=2e-3, rtol=0)
    cpu = predict_sliding(model, x, crop_size=8, accumulate_device="cpu")
    assert cpu.device.type == "cpu"
    torch.testing.assert_close(cpu, ref)
    for precision in ("bf16", "fp16"):
        try:
            out = predict(model, x, mode="slide", crop_size=8, precision=precision)
        except RuntimeError as err:  # an autocast dtype this CPU build lacks
            pytest.skip(f"{precision} autocast unavailable on CPU: {err}")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="precision"):
        predict(model, x, precision="int8")


# -------------------------------------------------------------------- band-wise labels


@pytest.mark.parametrize(
    "size,crop,stride,bs",
    [
        ((29, 23), 8, None, 1),
        ((29, 23), (8, 6), (3, 4), 5),
        ((5, 6), 8, None, 2),
        ((40, 9), 9, 2, 3),
    ],
)
@pytest.mark.parametrize(
    "flip,flip_mode,average",
    [
        (False, "crop", "prob"),
        (False, "crop", "logit"),
        (True, "crop", "prob"),
        (True, "image", "logit"),
        (True, "image", "prob"),
    ],
)
def test_labels_tiled_equal_full_argmax(size, crop, stride, bs, flip, flip_mode, average) -> None:
    model = context_model(seed=3)
    x = images(2, *size, seed=4)
    kw = dict(crop_size=crop, stride=stride, batch_size=bs, average=average, pad_mode="center")
    labels = predict_labels_tiled(model, x, flip=flip, flip_mode=flip_mode, **kw)
    full = predict(model, x, mode="slide", flip=flip, flip_mode=flip_mode, **kw)
    assert labels.shape == (2, *size) and labels.dtype == torch.uint8
    assert torch.equal(labels.long(), full.argmax(1))


def test_labels_tiled_options() -> None:
    model = context_model()
    x = images(1, 30, 11)
    a = predict_labels_tiled(
        model, x, crop_size=7, label_dtype=torch.int64, accumulate_device="cpu"
    )
    assert a.dtype == torch.int64 and a.device.type == "cpu"
    b = predict_labels_tiled(model, x, crop_size=7, batch_size=1, pad_mode="bottom_right")
    assert b.shape == (1, 30, 11)
    assert torch.equal(
        b.long(), predict_sliding(model, x, crop_size=7, pad_mode="bottom_right").argmax(1)
    )


# ------------------------------------------------------------------------------ protocols


def _semseg_reference(model, image, *, base_size, crop, scales):
    """hszhao/semseg tool/test.py re-expressed as a plain loop on normalised tensors."""
    _, _, h, w = image.shape
    total = 0
    for scale in scales:
        long_size = round(scale * base_size)
        nh, nw = long_size, long_size
        if h > w:
            nw = round(long_size / float(h) * w)
        else:
            nh = round(long_size / float(w) * h)
        img = F.interpolate(image, (nh, nw), mode="bilinear", align_corners=False)
        pad_h, pad_w = max(crop - nh, 0), max(crop - nw, 0)
        ph, pw = int(pad_h / 2), int(pad_w / 2)
        img = F.pad(img, (pw, pad_w - pw, ph, pad_h - ph))  # 0 = mean after normalising
        new_h, new_w = img.shape[-2:]
        stride = int(math.ceil(crop * 2 / 3))
        grid_h = int(math.ceil(float(new_h - crop) / stride) + 1)
        grid_w = int(math.ceil(float(new_w - crop) / stride) + 1)
        pred = torch.zeros(C, new_h, new_w)
        count = torch.zeros(new_h, new_w)
        for ih in range(grid_h):
            for iw in range(grid_w):
                e_h = min(ih * stride + crop, new_h)
                e_w = min(iw * stride + crop, new_w)
                s_h, s_w = e_h - crop, e_w - crop
                x = img[:, :, s_h:e_h, s_w:e_w]
                out = model(torch.cat([x, x.flip(3)], 0))
                if out.shape[-2:] != x.shape[-2:]:
                    out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
                out = F.softmax(out, dim=1)
                pred[:, s_h:e_h, s_w:e_w] += (out[0] + out[1].flip(2)) / 2
                count[s_h:e_h, s_w:e_w] += 1
        pred = (pred / count)[:, ph : ph + nh, pw : pw + nw]
        total = total + F.interpolate(pred[None], (h, w), mode="bilinear", align_corners=False)
    return total / len(scales)


def _mmseg_slide_reference(model, img, *, crop, stride, align_corners):
    """mmseg EncoderDecoder.slide_inference + resize + softmax, as a plain loop."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = torch.zeros(1, C, h_img, w_img)
    count = torch.zeros(1, 1, h_img, w_img)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            logit = model(crop_img)
            logit = F.interpolate(
                logit, crop_img.shape[-2:], mode="bilinear", align_corners=align_corners
            )
            preds[:, :, y1:y2, x1:x2] += logit
            count[:, :, y1:y2, x1:x2] += 1
    return F.softmax(preds / count, dim=1)


def test_semseg_protocol_matches_reference_loop() -> None:
    model = _eval(LowRes(), seed=5)
    x = images(1, 21, 30, seed=6)
    with torch.no_grad():
        for name, scales in (("semseg", (1.0,)), ("semseg-ms", MULTI_SCALES)):
            proto = PROTOCOLS[name].replace(base_size=32, crop_size=(19, 19))
            ours = proto.predict(model, x, batch_size=3)
            ref = _semseg_reference(model, x, base_size=32, crop=19, scales=scales)
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_mmseg_slide_protocol_matches_reference_loop() -> None:
    model = _eval(LowRes(), seed=7)
    x = images(1, 12, 40, seed=8)  # shorter than the crop: mmseg runs a 12-row tile unpadded
    proto = PROTOCOLS["mmseg-slide"].replace(crop_size=(16, 16), stride=(11, 11))
    with torch.no_grad():
        ours = proto.predict(model, x, batch_size=2)
        ref = _mmseg_slide_reference(model, x, crop=(16, 16), stride=(11, 11), align_corners=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_mmseg_whole_protocol_with_img_scale() -> None:
    model = _eval(LowRes(), seed=9)
    x = images(1, 15, 20)
    proto = PROTOCOLS["mmseg-whole"].replace(img_scale=(40, 24))
    ours = proto.predict(model, x)
    # factor = min(40/20, 24/15) = 1.6 -> (24, 32); logits back to (15, 20), then softmax.
    with torch.no_grad():
        y = F.interpolate(x, (24, 32), mode="bilinear", align_corners=False)
        logit = F.interpolate(model(y), (24, 32), mode="bilinear", align_corners=False)
        ref = F.softmax(F.interpolate(logit, (15, 20), mode="bilinear", align_corners=False), 1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_protocol_descriptions_agree_with_their_settings() -> None:
    # docs/evaluation.md prints these descriptions: a multi-scale preset must not say "one scale".
    for name, proto in PROTOCOLS.items():
        text = proto.description
        multi = len(proto.scales) > 1
        assert name.endswith("-ms") == multi, name
        if multi:
            assert "one scale" not in text and str(proto.scales) in text, name
        if name.startswith("mmseg"):
            assert ("one scale" in text) != multi, name
            assert ("No flip" in text) != proto.flip, name
            assert ("with horizontal flip" in text) == proto.flip, name
    doc = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
    if doc.is_file():  # the page quotes each description in full
        lines = doc.read_text().splitlines()
        for name, proto in PROTOCOLS.items():
            assert f"- **`{name}`**: {proto.description}" in lines, name


def test_protocol_presets_and_lookup() -> None:
    assert {"semseg", "semseg-ms", "mmseg-whole", "mmseg-slide"} <= set(PROTOCOLS)
    for proto in PROTOCOLS.values():
        assert isinstance(proto, InferenceOptions) and proto.description and proto.source
    semseg = PROTOCOLS["semseg"]
    assert semseg.scales == (1.0,) and semseg.flip and semseg.mode == "slide"
    assert PROTOCOLS["semseg-ms"].scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert PROTOCOLS["mmseg-whole"].flip is False and PROTOCOLS["mmseg-whole"].average == "logit"
    ade = get_protocol("semseg", "ade20k")
    assert ade.base_size == 512 and ade.crop_size == (473, 473)
    city = get_protocol("semseg-ms", "cityscapes")
    assert city.base_size == 2048 and city.crop_size == (713, 713) and len(city.scales) == 6
    assert get_protocol("mmseg-slide", "cityscapes").stride == (513, 513)
    assert get_protocol("semseg", "voc", crop_size=(9, 9)).crop_size == (9, 9)
    with pytest.raises(ValueError):
        get_protocol("nope")
    with pytest.raises(ValueError):
        get_protocol("mmseg-slide", "ade20k")
    model, x = pointwise_model(), images(1, 8, 8)
    with pytest.raises(ValueError, match="crop_size"):
        semseg.predict(model, x)
    with pytest.raises(ValueError, match="base_size"):
        semseg.replace(crop_size=(4, 4)).predict(model, x)
    with pytest.raises(TypeError, match="replace"):
        ade.predict(model, x, flip=False)
    with pytest.raises(dataclasses_frozen_error()):
        semseg.flip = False  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("block_cols", [1, 3, 64])
def test_column_blocks_do_not_change_results(monkeypatch, block_cols) -> None:
    import pspnet.inference.window as inference

    model = context_model(seed=2)
    x = images(1, 70, 12, seed=5)
    kw = dict(crop_size=(9, 8), stride=(4, 5), batch_size=3)
    ref = predict_sliding(model, x, **kw)
    monkeypatch.setattr(inference, "_YIELD_COLS", block_cols)
    torch.testing.assert_close(predict_sliding(model, x, **kw), ref, atol=0, rtol=0)
    labels = predict_labels_tiled(model, x, flip=True, flip_mode="image", **kw)
    full = predict(model, x, mode="slide", flip=True, flip_mode="image", **kw)
    assert torch.equal(labels.long(), full.argmax(1))


def test_normalise_images_honours_channel_order():
    from pspnet.config import Preprocessing
    from pspnet.inference import normalise_images

    images = torch.arange(3, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2) * 100
    rgb = Preprocessing(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), channel_order="RGB")
    bgr = Preprocessing(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), channel_order="BGR")
    # RGB pixel (0, 100, 200): as given; BGR: (200, 100, 0) before the per-channel mean/std.
    assert normalise_images(images, rgb)[0, :, 0, 0].tolist() == [-5.0, 20.0, 34.0]
    assert normalise_images(images, bgr)[0, :, 0, 0].tolist() == [95.0, 20.0, -6.0]


@pytest.mark.parametrize("pad_mode", ["center", "bottom_right", "none"])
@pytest.mark.parametrize("size", [(29, 23), (5, 6), (12, 40)])
def test_mirrored_view_equals_predicting_the_flipped_image(pad_mode, size) -> None:
    """The flip view is run on the mirrored grid without a flipped copy of the image; it must
    equal predicting the flipped image (its own padding and tiles) and flipping back."""
    import pspnet.inference.window as inference
    from pspnet.inference import InferenceOptions

    model = context_model(seed=6)
    x = images(1, *size, seed=7)
    kw = dict(crop_size=(8, 7), stride=(5, 3), batch_size=3, pad_mode=pad_mode, average="logit")
    ref = predict_sliding(model, x.flip(-1), **kw).flip(-1)
    win = inference._window(
        InferenceOptions(**kw, pad_value=0.0, flip=False, align_corners=False, precision="fp32"),
        tile_flip=False, acc_device=None, num_classes=None,
    )  # fmt: skip
    got = inference._sliding(model, x, win, mirrored=True)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_last_tile_row_joins_the_previous_strip() -> None:
    from pspnet.inference.window import _strips

    # Regular rows stay apart: the carry between them is crop - stride rows.
    assert _strips([0, 5, 10], crop_h=8, stride_h=5) == [[0], [5], [10]]
    # A last row aligned to the border less than a stride below the previous one would carry
    # up to crop - 1 rows; it joins the previous strip instead.
    assert _strips([0, 5, 7], crop_h=8, stride_h=5) == [[0], [5, 7]]
    assert _strips([0], crop_h=8, stride_h=5) == [[0]]


def test_sliding_window_never_writes_into_a_models_kept_output() -> None:
    """The tiling works in place on the model's output; a model that returns a view of memory
    it keeps (here a broadcast buffer) must find it unchanged and get the same result as one
    that returns fresh tensors."""

    class Kept(nn.Module):
        def __init__(self, fresh: bool) -> None:
            super().__init__()
            self.fresh = fresh
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("logits", torch.randn(1, C, 6, 6, generator=gen))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.logits.expand(x.shape[0], -1, -1, -1)
            return out.clone() if self.fresh else out

    kept, fresh = Kept(False).eval(), Kept(True).eval()
    before = kept.logits.clone()
    x = images(1, 10, 13)
    for average in ("prob", "logit"):
        got = predict_sliding(kept, x, crop_size=6, stride=4, average=average)
        ref = predict_sliding(fresh, x, crop_size=6, stride=4, average=average)
        assert torch.equal(got, ref)
        assert torch.equal(kept.logits, before)
