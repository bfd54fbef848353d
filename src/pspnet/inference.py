"""Inference on normalised image tensors: whole image, sliding window, multi-scale and flip.

Every function takes any ``nn.Module`` in eval mode whose forward maps a normalised
``(N, 3, H, W)`` float tensor to ``(N, C, h, w)`` logits, or to a dict holding them under
``"out"`` (auxiliary outputs are ignored). Outputs smaller than the input (a stride-8 head
without its own upsampling) are resized bilinearly to the input size. Work runs on the model's
device; nothing here moves a model or calls ``.cuda()``.

Images are expected *normalised* (``(x - mean) / std``), so padding with 0 pads with the mean
colour, which is what the authors do (``cv2.copyMakeBorder(..., value=mean)`` before
normalising). Because bilinear resizing is linear with weights summing to one, resizing the
normalised tensor equals normalising the resized image (up to float rounding), so multi-scale
inference can start from the same tensor.

Main entry points:

* :func:`predict_whole` - one forward pass per image batch.
* :func:`predict_sliding` - tiles with overlap averaged by a count map, memory bounded by the
  rows where tile rows overlap (C x (crop_h - stride_h) x W) plus the (C, H, W) result.
* :func:`predict_labels_tiled` - the same, but returns only the (H, W) argmax label map and never
  holds a (C, H, W) score tensor (for very large images).
* :func:`predict` - multi-scale and flip test-time augmentation; returns probabilities.
* :data:`PROTOCOLS` - named, documented evaluation presets (the authors' ``semseg`` test script
  and mmsegmentation's ``whole``/``slide`` modes).

Imports only torch and the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MULTI_SCALES",
    "PROTOCOLS",
    "DATASET_SETTINGS",
    "Protocol",
    "get_protocol",
    "default_stride",
    "tile_starts",
    "rescaled_size",
    "predict_whole",
    "predict_sliding",
    "predict_labels_tiled",
    "predict",
]

Precision = Literal["fp32", "bf16", "fp16"]
PadMode = Literal["center", "bottom_right", "none"]
PAD_MODES = ("center", "bottom_right", "none")
Average = Literal["prob", "logit"]
FlipMode = Literal["image", "crop"]
Mode = Literal["whole", "slide"]

#: The scale set of the authors' (and mmseg's) multi-scale evaluation.
MULTI_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Widest block the sliding window hands out (bounds the consumer's temporaries to
#: C x (crop_h + stride_h) x 64).
_YIELD_COLS = 64


# -------------------------------------------------------------------------------------------
# Small helpers
# -------------------------------------------------------------------------------------------


def _model_device_dtype(model: nn.Module, fallback: torch.device) -> tuple[torch.device, Any]:
    """Device of the model's first parameter/buffer and its floating dtype (if any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        dtype = t.dtype if t.is_floating_point() else None
        return t.device, dtype
    # A parameter-free model (e.g. a test double) runs wherever the images are.
    return fallback, None


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise RuntimeError(
            "the model is in training mode (dropout active, batch-norm statistics updated); "
            "call model.eval() before inference"
        )


def _returns_labels(model: nn.Module) -> bool:
    """Whether ``model`` returns (N, H, W) class indices instead of logits.

    Exported runtimes made with ``output="labels"`` (:mod:`pspnet.export`) say so with
    ``model.output == "labels"``; read by attribute so that this module imports only torch.
    """
    return getattr(model, "output", None) == "labels"


def _labels_refusal(model: nn.Module, uses: str) -> ValueError:
    """The error for asking a labels-only model for something that needs its logits.

    Args:
        model: The labels-only model (an exported runtime names its file in ``.path``).
        uses: What was asked for, e.g. ``"a sliding window (--mode slide)"``.
    """
    src = str(getattr(model, "path", None) or "this model")
    fixed = getattr(model, "input_size", None)
    msg = (
        f"{src} returns class labels, not logits (it was exported with --output labels), so it "
        f"cannot run {uses}: tiles, flipped and rescaled views are combined by averaging class "
        "probabilities, which labels do not have. "
    )
    if fixed:
        fh, fw = int(fixed[0]), int(fixed[1])
        msg += (
            f"It is also a fixed-size export ({fh}x{fw} inputs only): an image up to that size "
            "is padded into one tile, a larger one needs several. Re-export with --output "
            "logits (a fixed-size logits export runs as a sliding window of its size), or with "
            "--output labels --dynamic (ONNX) to predict whole images of any size."
        )
    else:
        msg += (
            "Predict whole images at scale 1 without flip (--mode whole, no --flip, --scales or "
            "--crop-size, no sliding --protocol), or re-export with --output logits."
        )
    return ValueError(msg)


def _run_labels(model: nn.Module, images: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    """One pass of a labels-only model: its (N, H, W) int64 labels, checked, and the class count.

    Raises:
        ValueError: The output is not (N, H, W) integer labels in ``[0, C)``, or ``C`` is unknown.
    """
    src = str(getattr(model, "path", None) or "the model")
    with torch.no_grad():
        labels = model(images)
    if isinstance(labels, Mapping):
        labels = labels.get("out")
    n, _, h, w = images.shape
    if (not isinstance(labels, Tensor) or labels.is_floating_point()
            or tuple(labels.shape) != (n, h, w)):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"{src} says it returns class labels (output='labels') but returned {got} for an "
            f"input of shape {tuple(images.shape)}; expected ({n}, {h}, {w}) integer class "
            "indices. Re-export it with pspnet export."
        )
    c = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    if not c:
        raise ValueError(
            f"{src} returns class labels and does not record its number of classes; pass "
            "num_classes (--num-classes)"
        )
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(
            f"{src} returned class indices {int(labels.min())}..{int(labels.max())} but has "
            f"{c} classes; check num_classes (--num-classes)"
        )
    return labels, int(c)


def _one_tile_labels(
    model: nn.Module,
    images: Tensor,
    *,
    crop_size: int | Sequence[int],
    pad_value: Tensor | float,
    pad_mode: str,
    num_classes: int | None,
) -> tuple[Tensor, int]:
    """Sliding-window labels of a labels-only model where the window grid is a single tile.

    One tile (the image padded to the crop as :func:`_slide_rows` pads it) has nothing to
    average, so its labels, cropped back, are exactly the argmax a logits model would give.

    Raises:
        ValueError: No ``crop_size``, an unknown ``pad_mode``, or an image that needs more than
            one tile (their scores would be averaged).
    """
    if crop_size is None:
        raise ValueError("a sliding window needs crop_size (--crop-size N), got None")
    _choice(pad_mode, PAD_MODES, "pad_mode")
    ch, cw = _pair(crop_size, "crop_size")
    _, _, h, w = images.shape
    if pad_mode == "none":
        ch, cw = min(ch, h), min(cw, w)
    if h > ch or w > cw:
        raise _labels_refusal(
            model, f"a sliding window over several tiles (a {h}x{w} image in {ch}x{cw} tiles)"
        )
    top, left, pad_h, pad_w = _tile_pads(h, w, (ch, cw), pad_mode)
    padded = _pad_image(images, (top, pad_h - top, left, pad_w - left), pad_value)
    labels, c = _run_labels(model, padded, num_classes)
    return labels[:, top : top + h, left : left + w], c


def normalise_images(images: Tensor, preprocess: Any) -> Tensor:
    """Raw images to the model's input: channel order, then ``(x - mean) / std``.

    Args:
        images: (N, 3, H, W) RGB on the 0..255 scale, any float or integer dtype.
        preprocess: A :class:`pspnet.config.Preprocessing` (``mean``, ``std`` on the 0..255
            scale, ``channel_order`` ``"RGB"`` or ``"BGR"``).

    Returns:
        A new float32 (N, 3, H, W) tensor.
    """
    x = images.float()
    if preprocess.channel_order == "BGR":
        x = x.flip(1)  # (N, 3, H, W): RGB -> BGR along the channel axis
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _tile_pads(h: int, w: int, crop: tuple[int, int], pad_mode: str) -> tuple[int, int, int, int]:
    """``(top, left, pad_h, pad_w)``: padding that brings an ``h`` x ``w`` image up to ``crop``.

    ``center`` is semseg's ``int(pad / 2)`` before and the rest after (an odd pad puts the extra
    pixel last); the other modes pad after the image only.
    """
    pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
    top, left = (pad_h // 2, pad_w // 2) if pad_mode == "center" else (0, 0)
    return top, left, pad_h, pad_w


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must be a normalised (N, 3, H, W) batch, got shape {tuple(images.shape)}; "
            "use images.unsqueeze(0) for a single image"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be a normalised float tensor, got dtype {images.dtype} "
            "(subtract the mean and divide by the std first)"
        )


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if len(pair) != 2 or any(v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` and return its (N, C, h, w) logits, unwrapping ``{"out": ...}`` dicts.

    Raises:
        TypeError: The output is neither a tensor nor a mapping with an ``"out"`` tensor.
        ValueError: The output is not 4-D or its batch size differs from the input.
    """
    if _returns_labels(model):
        raise _labels_refusal(
            model, "a pass that must return per-class scores (use predict() in whole mode)"
        )
    out = model(x)
    if isinstance(out, Mapping):
        if "out" not in out:
            raise TypeError(
                f"the model returned a dict without an 'out' entry (keys: {sorted(out)}); "
                "inference needs the main logits under 'out'"
            )
        out = out["out"]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model must return a logits tensor or a dict with 'out', got {type(out).__name__}"
        )
    if out.dim() != 4 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return (N, C, h, w) logits for an input of shape "
            f"{tuple(x.shape)}, got {tuple(out.shape)}"
        )
    return out


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear resize of a (N, C, h, w) tensor; returns ``x`` itself when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _forward(model: nn.Module, x: Tensor, *, precision: Precision, align_corners: bool) -> Tensor:
    """Logits for ``x`` (N, 3, H, W) as float32 (N, C, H, W), at the input's resolution.

    ``precision`` other than fp32 runs the forward under ``torch.autocast`` on the input's
    device type; the result is upcast so averaging and softmax happen in float32.
    """
    ctx: contextlib.AbstractContextManager[Any]
    if precision == "fp32":
        ctx = contextlib.nullcontext()
    else:
        ctx = torch.autocast(device_type=x.device.type, dtype=_AUTOCAST_DTYPES[precision])
    with ctx:
        out = _logits(model, x)
    # Resize logits (not probabilities) to the input, as both reference implementations do.
    return _resize(out.float(), (x.shape[-2], x.shape[-1]), align_corners)


def default_stride(crop_size: int | Sequence[int]) -> tuple[int, int]:
    """The authors' stride: ``ceil(crop * 2/3)`` per side (473 -> 316, 713 -> 476)."""
    ch, cw = _pair(crop_size, "crop_size")
    # Integer arithmetic: ceil(2c/3) without float rounding surprises.
    return (-(-2 * ch // 3), -(-2 * cw // 3))


def tile_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the tiles covering ``[0, length)`` with ``crop``-long tiles.

    ``ceil((length - crop) / stride) + 1`` tiles at ``i * stride``, the last one shifted back so
    it ends exactly at the border (hszhao/semseg ``scale_process``; mmseg's ``slide_inference``
    builds the same grid). Requires ``crop <= length``.

    Raises:
        ValueError: ``crop > length`` or non-positive sizes.
    """
    if crop < 1 or stride < 1 or length < crop:
        raise ValueError(
            f"need 1 <= crop <= length and stride >= 1; got {length=}, {crop=}, {stride=}"
        )
    n = -(-(length - crop) // stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def rescaled_size(
    height: int,
    width: int,
    scale: float,
    *,
    base_size: int | None = None,
    img_scale: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Size an image is resized to for one test scale.

    Three rules, matching the sources of :data:`PROTOCOLS`:

    * ``base_size`` set (hszhao/semseg ``tool/test.py``): the LONG side becomes
      ``round(base_size * scale)`` and the short side ``round(long / L * S)``, with Python's
      ``round`` (banker's rounding) exactly as the script.
    * ``img_scale=(a, b)`` set (mmseg 0.x ``MultiScaleFlipAug`` + keep-ratio ``Resize``): target
      edges ``(int(a * scale), int(b * scale))``; the image is scaled by
      ``min(long_target / long_side, short_target / short_side)`` and each side becomes
      ``int(side * factor + 0.5)``.
    * neither: each side becomes ``int(side * scale + 0.5)`` (scale 1.0 keeps the size).

    Returns:
        ``(new_height, new_width)``, each at least 1.
    """
    if scale <= 0:
        raise ValueError(f"scales must be positive, got {scale!r}")
    if base_size is not None and img_scale is not None:
        raise ValueError("give base_size (semseg rule) or img_scale (mmseg rule), not both")
    if base_size is not None:
        long_size = round(scale * base_size)
        if height > width:
            new_h, new_w = long_size, round(long_size / float(height) * width)
        else:
            new_h, new_w = round(long_size / float(width) * height), long_size
    elif img_scale is not None:
        a, b = (int(img_scale[0] * scale), int(img_scale[1] * scale))
        factor = min(max(a, b) / max(height, width), min(a, b) / min(height, width))
        new_h, new_w = int(height * factor + 0.5), int(width * factor + 0.5)
    else:
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    return max(1, new_h), max(1, new_w)


def _pad_image(image: Tensor, pads: tuple[int, int, int, int], pad_value: Tensor | float) -> Tensor:
    """Pad (1, C, H, W) by (top, bottom, left, right) with a scalar or per-channel value."""
    top, bottom, left, right = pads
    if not any(pads):
        return image
    if not isinstance(pad_value, Tensor):
        return F.pad(image, (left, right, top, bottom), mode="constant", value=float(pad_value))
    n, c, h, w = image.shape
    value = pad_value.to(image.device, image.dtype).reshape(1, -1, 1, 1)  # (1, C|1, 1, 1)
    out = value.expand(n, c, h + top + bottom, w + left + right).clone()
    out[:, :, top : top + h, left : left + w] = image
    return out


def _softmax_(x: Tensor) -> Tensor:
    """Softmax over dim 1 of a float tensor, in place.

    A batch of full-resolution tile scores is the largest temporary of a sliding window
    (4 x 150 classes x 473 x 473 floats = 537 MB); ``Tensor.softmax`` would hold a second one.
    """
    x -= x.amax(dim=1, keepdim=True)
    x.exp_()
    x /= x.sum(dim=1, keepdim=True)
    return x


def _tile_scores(
    model: nn.Module,
    crops: Tensor,
    *,
    flip: bool,
    average: Average,
    precision: Precision,
    align_corners: bool,
) -> Tensor:
    """Scores for a batch of crops (B, 3, ch, cw) -> (B, C, ch, cw) float32.

    With ``flip`` the horizontally mirrored crops run in the same batch and their scores,
    mirrored back, are averaged in the ``average`` space (semseg's ``net_process``).

    The result may be the model's own output tensor: the sliding window softmaxes and sums
    into it in place (a second copy would be the largest temporary). A view or a broadcast
    tensor, which could be memory the model keeps, is copied first.
    """
    b = crops.shape[0]
    x = torch.cat([crops, crops.flip(-1)], dim=0) if flip else crops  # (B or 2B, 3, ch, cw)
    out = _forward(model, x, precision=precision, align_corners=align_corners)
    if out._base is not None or 0 in out.stride():
        out = out.clone()
    if average == "prob":
        out = _softmax_(out)
    if flip:
        out = (out[:b] + out[b:].flip(-1)) / 2
    return out


# -------------------------------------------------------------------------------------------
# Whole image
# -------------------------------------------------------------------------------------------


def predict_whole(
    model: nn.Module,
    images: Tensor,
    *,
    out_size: tuple[int, int] | None = None,
    output: Average = "logit",
    align_corners: bool = False,
    out_align_corners: bool | None = None,
    precision: Precision = "fp32",
) -> Tensor:
    """One forward pass over whole images.

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch; moved to the model's device.
        out_size: Resize the result to ``(h, w)`` (e.g. the original image size). Default: H, W.
        output: ``"logit"`` or ``"prob"`` (softmax over classes, taken before ``out_size``
            resizing as in semseg; for mmseg's order resize logits and softmax yourself).
        align_corners: Bilinear convention for resizing low-resolution model outputs to H, W.
        out_align_corners: Convention for the ``out_size`` resize (default: ``align_corners``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; result is float32).

    Returns:
        (N, C, H, W) float32 logits or probabilities on the model's device
        ((N, C, *out_size) when given).

    Raises:
        RuntimeError: The model is in training mode.
    """
    _check_eval(model)
    _check_images(images)
    _choice(output, ("logit", "prob"), "output")
    _choice(precision, ("fp32", "bf16", "fp16"), "precision")
    device, dtype = _model_device_dtype(model, images.device)
    x = images.to(device=device, dtype=dtype or images.dtype)
    with torch.no_grad():
        out = _forward(model, x, precision=precision, align_corners=align_corners)  # (N,C,H,W)
        if output == "prob":
            out = out.softmax(dim=1)
        if out_size is not None:
            oac = align_corners if out_align_corners is None else out_align_corners
            out = _resize(out, _pair(out_size, "out_size"), oac)
    return out


# -------------------------------------------------------------------------------------------
# Sliding window
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SlideSpec:
    crop: tuple[int, int]
    stride: tuple[int, int] | None
    batch_size: int
    pad_value: Tensor | float
    pad_mode: PadMode
    average: Average
    flip: bool
    align_corners: bool
    precision: Precision
    acc_device: torch.device | None
    num_classes: int | None


def _make_spec(
    *,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    batch_size: int,
    pad_value: Tensor | float,
    pad_mode: str,
    average: str,
    flip: bool,
    align_corners: bool,
    precision: str,
    accumulate_device: torch.device | str | None,
    num_classes: int | None,
) -> _SlideSpec:
    crop = _pair(crop_size, "crop_size")
    stride_pair = None if stride is None else _pair(stride, "stride")
    if stride_pair is not None and (stride_pair[0] > crop[0] or stride_pair[1] > crop[1]):
        raise ValueError(
            f"stride {stride_pair} is larger than crop_size {crop}: pixels between tiles would "
            "never be predicted"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _choice(pad_mode, PAD_MODES, "pad_mode")
    _choice(average, ("prob", "logit"), "average")
    _choice(precision, ("fp32", "bf16", "fp16"), "precision")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    return _SlideSpec(
        crop=crop,
        stride=stride_pair,
        batch_size=batch_size,
        pad_value=pad_value,
        pad_mode=pad_mode,  # type: ignore[arg-type]
        average=average,  # type: ignore[arg-type]
        flip=bool(flip),
        align_corners=align_corners,
        precision=precision,  # type: ignore[arg-type]
        acc_device=None if accumulate_device is None else torch.device(accumulate_device),
        num_classes=num_classes,
    )


def _strips(ys: list[int], crop_h: int, stride_h: int) -> list[list[int]]:
    """Group tile rows into *strips* processed together, so the carry between strips stays small.

    Every tile row is its own strip, except that the last row (aligned to the bottom border, so
    it may start less than a stride below the previous one and overlap it by up to
    ``crop_h - 1`` rows) joins the previous strip. The rows carried from one strip to the next
    are then never more than the regular overlap, ``crop_h - stride_h``.
    """
    strips = [[y] for y in ys]
    if len(ys) > 1 and ys[-1] - ys[-2] < stride_h:
        strips[-2:] = [[ys[-2], ys[-1]]]
    return strips


def _scored_tiles(
    model: nn.Module, padded: Tensor, tiles: list[tuple[int, int]], spec: _SlideSpec,
    crop: tuple[int, int], mirrored: bool,
) -> Iterator[Tensor]:
    """Scores (C, ch, cw) float32 of ``tiles`` of ``padded``, in order, ``batch_size`` per pass.

    With ``mirrored`` every crop is run mirrored and its scores mirrored back: the tile of the
    mirrored image at the mirrored position, seen the right way round.
    """
    ch, cw = crop
    acc_device = spec.acc_device or padded.device
    for start in range(0, len(tiles), spec.batch_size):
        batch = tiles[start : start + spec.batch_size]
        crops = torch.cat([padded[:, :, y : y + ch, x : x + cw] for y, x in batch])  # (B,3,ch,cw)
        if mirrored:
            crops = crops.flip(-1)
        scores = _tile_scores(
            model,
            crops,
            flip=spec.flip,
            average=spec.average,
            precision=spec.precision,
            align_corners=spec.align_corners,
        ).to(acc_device)  # (B, C, ch, cw)
        del crops
        if mirrored:
            scores = scores.flip(-1)
        c = scores.shape[1]
        if spec.num_classes is not None and c != spec.num_classes:
            raise ValueError(f"num_classes={spec.num_classes} but the model returned {c} channels")
        yield from scores
        del scores


def _slide_blocks(
    model: nn.Module, image: Tensor, spec: _SlideSpec, *, mirrored: bool = False
) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Sliding-window scores of one image, yielded as finished blocks, strip by strip.

    Memory is bounded by the crop, not by the image: tiles are visited strip by strip
    (:func:`_strips`: a strip is one row of tiles) and, inside a strip, column by column. The
    tiles of one column are summed into a column buffer (C, strip height, crop_w); the part of
    the previous column that overlaps it is added; the columns left of the next tile column are
    then final *for this strip*. Their top rows receive what the strip above carried down,
    their rows above the next strip are divided by the tile count and handed out, and the rows
    the next strip will overlap are kept in the *carry* (C, crop_h - stride_h, W). So besides
    one batch of tiles, only the carry, one column buffer and the block being handed out are
    held; never a (C, H, W) or (C, crop_h, W) tensor.

    Every pixel's sum is formed in the same order whatever ``batch_size`` is, so the result
    does not depend on how tiles are grouped into forward passes.

    Args:
        image: (1, 3, H, W) on the model's device.
        mirrored: Predict the horizontally mirrored image and return its scores mirrored back,
            without copying the image: the mirrored image's padding and tile grid, mirrored,
            with every crop run mirrored (this is what a flip test-time view needs).

    Yields:
        ``(r0, r1, c0, c1, scores)``: scores (C, r1 - r0, c1 - c0) float32 of rows ``[r0, r1)``
        and columns ``[c0, c1)`` of the unpadded image, averaged over overlapping tiles
        (probabilities or logits per ``spec.average``). Each strip's blocks cover its rows for
        the full width, left to right, at most ``_YIELD_COLS`` columns each; strips come top
        to bottom.
    """
    _, _, h, w = image.shape
    ch, cw = spec.crop
    if spec.pad_mode == "none":
        # mmseg: an image smaller than the crop is decoded as one smaller patch, unpadded.
        ch, cw = min(ch, h), min(cw, w)
    sh, sw = spec.stride if spec.stride is not None else default_stride((ch, cw))
    sh, sw = min(sh, ch), min(sw, cw)  # a crop shrunk by pad_mode='none' keeps full coverage
    top, left, pad_h, pad_w = _tile_pads(h, w, (ch, cw), spec.pad_mode)
    if mirrored:
        left = pad_w - left  # the mirrored image's left padding is on the right
    padded = _pad_image(image, (top, pad_h - top, left, pad_w - left), spec.pad_value)
    hp, wp = padded.shape[-2:]

    ys = tile_starts(hp, ch, sh)
    xs = tile_starts(wp, cw, sw)
    if mirrored:
        xs = [wp - cw - x for x in reversed(xs)]
    # The count map is separable (every tile row holds the same columns), so keep two vectors
    # instead of an (H, W) map: count[y, x] = rows_cover[y] * cols_cover[x].
    acc_device = spec.acc_device or image.device
    rows_cover = torch.zeros(hp, dtype=torch.float32, device=acc_device)
    cols_cover = torch.zeros(wp, dtype=torch.float32, device=acc_device)
    for y in ys:
        rows_cover[y : y + ch] += 1
    for x in xs:
        cols_cover[x : x + cw] += 1

    strips = _strips(ys, ch, sh)
    tiles = [(y, x) for strip in strips for x in xs for y in strip]
    scores = _scored_tiles(model, padded, tiles, spec, (ch, cw), mirrored)
    carry: Tensor | None = None  # (C, rows, wp): sums carried down to the next strip
    carry_rows = 0
    for k, strip in enumerate(strips):
        s_top, s_bottom = strip[0], strip[-1] + ch
        next_top = strips[k + 1][0] if k + 1 < len(strips) else hp
        done_rows, new_carry_rows = next_top - s_top, s_bottom - next_top
        # Image rows finished by this strip, relative to the strip's top (padding dropped).
        out_r0, out_r1 = max(s_top, top) - s_top, min(next_top, top + h) - s_top
        leftover: Tensor | None = None  # (C, strip rows, n): columns [x, x + n) already summed
        for j, x in enumerate(xs):
            col: Tensor | None = None  # (C, s_bottom - s_top, cw)
            for y in strip:
                s = next(scores)
                if len(strip) == 1:
                    col = s  # used once: summed into in place (no zero-filled copy)
                else:
                    if col is None:
                        col = s.new_zeros((s.shape[0], s_bottom - s_top, cw))
                    col[:, y - s_top : y - s_top + ch] += s
                del s  # the last tile of a batch would keep the whole batch alive
            assert col is not None  # a strip holds at least one tile row
            if leftover is not None:
                col[:, :, : leftover.shape[-1]] += leftover
            end = xs[j + 1] if j + 1 < len(xs) else wp  # columns left of the next tile column
            leftover = col[:, :, end - x :].clone()
            block = col[:, :, : end - x]  # (C, strip rows, end - x): final for this strip
            if carry_rows:
                block[:, :carry_rows] += carry[:, :carry_rows, x:end]  # type: ignore[index]
            if new_carry_rows:
                if carry is None or carry.shape[1] < new_carry_rows:
                    # Allocated once in practice: every strip but the last carries the same rows.
                    grown = block.new_zeros((block.shape[0], new_carry_rows, wp))
                    if carry is not None:
                        grown[:, : carry.shape[1]] = carry
                    carry = grown
                carry[:, :new_carry_rows, x:end] = block[:, done_rows:]
            c0, c1 = max(x, left), min(end, left + w)
            if out_r1 > out_r0 and c1 > c0:
                # Small column blocks keep the consumer's softmax / argmax temporaries small.
                for b0 in range(c0, c1, _YIELD_COLS):
                    b1 = min(b0 + _YIELD_COLS, c1)
                    count = (
                        rows_cover[s_top + out_r0 : s_top + out_r1, None]
                        * cols_cover[None, b0:b1]
                    )  # (rows, cols)
                    part = block[:, out_r0:out_r1, b0 - x : b1 - x] / count
                    yield s_top + out_r0 - top, s_top + out_r1 - top, b0 - left, b1 - left, part
            del col, block
        carry_rows = new_carry_rows


def _sum_views(
    streams: Sequence[Iterator[tuple[int, int, int, int, Tensor]]],
) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Blocks of several :func:`_slide_blocks` streams of one image, summed pixel by pixel.

    The streams cover the same strips in the same order but may cut columns differently (a
    mirrored view has a mirrored tile grid); each yielded block is the overlap of the streams'
    current blocks, so only one block per stream is ever pending.
    """
    if len(streams) == 1:
        yield from streams[0]
        return
    pending: list[tuple[int, int, int, int, Tensor] | None] = [None] * len(streams)
    while True:
        for k, stream in enumerate(streams):
            if pending[k] is None:
                pending[k] = next(stream, None)
        if all(p is None for p in pending):
            return
        parts = [p for p in pending if p is not None]
        r0, r1, c0 = parts[0][:3]
        if len(parts) != len(streams) or any(p[:3] != (r0, r1, c0) for p in parts):
            raise RuntimeError("sliding-window views finished different blocks")  # a bug
        c1 = min(p[3] for p in parts)
        total = parts[0][4][..., : c1 - c0].clone()
        for p in parts[1:]:
            total += p[4][..., : c1 - c0]
        yield r0, r1, c0, c1, total
        pending = [
            None if p[3] == c1 else (r0, r1, c1, p[3], p[4][..., c1 - c0 :]) for p in parts
        ]


def _as_probs(
    blocks: Iterator[tuple[int, int, int, int, Tensor]], average: str
) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Blocks of averaged scores as probabilities (softmax over classes for averaged logits)."""
    for r0, r1, c0, c1, scores in blocks:
        yield r0, r1, c0, c1, scores.softmax(dim=0) if average == "logit" else scores


def predict_sliding(
    model: nn.Module,
    images: Tensor,
    *,
    crop_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    batch_size: int = 4,
    pad_value: Tensor | float = 0.0,
    pad_mode: PadMode = "center",
    average: Average = "prob",
    flip: bool = False,
    align_corners: bool = False,
    precision: Precision = "fp32",
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sliding-window inference with overlapping tiles averaged by a count map.

    Each image is padded to at least the crop size, covered by a grid of tiles
    (:func:`tile_starts`: stride steps, the last tile aligned to the border), the tiles are run
    ``batch_size`` at a time, their softmax (or logits) summed and divided by how many tiles
    cover each pixel, and the padding is cropped away.

    Memory: besides the padded image and one batch of crop activations, only float32 sums of
    the ``crop_h - stride_h`` rows where tile rows overlap (C x that x W) and one column of
    tiles are held, plus the (N, C, H, W) result in ``accumulate_dtype``. For a 6000x4000 image
    with 11 classes the fp32 result is ~1 GB; ``accumulate_dtype=torch.float16`` halves it
    (overlaps are still summed in float32, only the finished average is rounded), and
    :func:`predict_labels_tiled` avoids it.

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch; moved to the model's device.
        crop_size: Tile size, int or (h, w).
        stride: Tile step, int or (h, w); default ``ceil(2/3 * crop)`` (the authors').
        num_classes: Expected channel count (checked); inferred from the model when None.
        batch_size: Tiles per forward pass (flip doubles the model batch).
        pad_value: Padding in normalised space: 0 (the mean colour) or a per-channel (3,) tensor.
        pad_mode: ``"center"`` (semseg: ``pad // 2`` before, rest after), ``"bottom_right"``, or
            ``"none"`` (mmseg: an image smaller than the crop is run as one smaller tile).
        average: ``"prob"`` averages softmax over overlaps (semseg), ``"logit"`` averages logits
            (mmseg).
        flip: Also run each crop mirrored and average it back in (semseg's per-crop flip).
        align_corners: Convention for resizing low-resolution model outputs to the crop size.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the forward passes.
        accumulate_device: Where the sums and result live (e.g. ``"cpu"`` to bound GPU memory);
            default the model's device.
        accumulate_dtype: dtype of the returned (N, C, H, W) tensor.

    Returns:
        (N, C, H, W) averaged probabilities (``average="prob"``) or logits.

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Bad sizes or options, or ``num_classes`` disagrees with the model.
    """
    _check_eval(model)
    _check_images(images)
    if _returns_labels(model):
        raise _labels_refusal(model, "a sliding window (--mode slide, --crop-size)")
    spec = _make_spec(
        crop_size=crop_size,
        stride=stride,
        batch_size=batch_size,
        pad_value=pad_value,
        pad_mode=pad_mode,
        average=average,
        flip=flip,
        align_corners=align_corners,
        precision=precision,
        accumulate_device=accumulate_device,
        num_classes=num_classes,
    )
    return _sliding(model, images, spec, accumulate_dtype=accumulate_dtype)


def _sliding(
    model: nn.Module, images: Tensor, spec: _SlideSpec, *, accumulate_dtype: torch.dtype,
    mirrored: bool = False,
) -> Tensor:
    """:func:`predict_sliding` for a validated spec; ``mirrored``: see :func:`_slide_blocks`."""
    device, dtype = _model_device_dtype(model, images.device)
    n_img = images.shape[0]
    out: Tensor | None = None
    with torch.no_grad():
        for n in range(n_img):
            image = images[n : n + 1].to(device=device, dtype=dtype or images.dtype)  # (1,3,H,W)
            h, w = image.shape[-2:]
            for r0, r1, c0, c1, scores in _slide_blocks(model, image, spec, mirrored=mirrored):
                if out is None:
                    out = torch.empty(
                        (n_img, scores.shape[0], h, w), dtype=accumulate_dtype, device=scores.device
                    )
                out[n, :, r0:r1, c0:c1] = scores
    if out is None:  # only reachable with N == 0
        raise ValueError("images is an empty batch")
    return out


def _label_dtype(asked: torch.dtype | None, num_classes: int) -> torch.dtype:
    """``asked``, or uint8 for up to 256 classes and int64 above; refuses a too-small uint8."""
    dtype = asked or (torch.uint8 if num_classes <= 256 else torch.int64)
    if dtype == torch.uint8 and num_classes > 256:
        raise ValueError(f"label_dtype uint8 cannot hold {num_classes} classes")
    return dtype


def predict_labels_tiled(
    model: nn.Module,
    images: Tensor,
    *,
    crop_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    batch_size: int = 4,
    pad_value: Tensor | float = 0.0,
    pad_mode: PadMode = "center",
    average: Average = "prob",
    flip: bool = False,
    flip_mode: FlipMode = "crop",
    align_corners: bool = False,
    precision: Precision = "fp32",
    accumulate_device: torch.device | str | None = None,
    label_dtype: torch.dtype | None = None,
) -> Tensor:
    """Sliding-window label map, computed block by block without a (C, H, W) score tensor.

    Tiles are visited strip by strip (:func:`_slide_blocks`); as soon as a block of pixels has
    received every overlapping tile it is averaged, turned into probabilities, combined over
    flips and reduced by argmax. Memory therefore stays at one batch of crop activations, the
    float32 sums of the rows where tile rows overlap (C x (crop_h - stride_h) x W), one column
    of tiles and the label map, whatever the image height. The result equals
    ``predict(model, images, mode="slide", scales=(1.0,), flip=flip, flip_mode=flip_mode,
    ...).argmax(1)`` for the same options (single scale, no resizing).

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch.
        crop_size, stride, num_classes, batch_size, pad_value, pad_mode, average, align_corners,
            precision, accumulate_device: As in :func:`predict_sliding`.
        flip: Horizontal-flip test-time augmentation.
        flip_mode: ``"crop"`` mirrors each tile (semseg), ``"image"`` runs the mirrored image
            as a second sliding pass (mmseg); both are processed block by block.
        label_dtype: dtype of the labels; default uint8 for up to 256 classes, else int64.

    Returns:
        (N, H, W) class indices on ``accumulate_device`` (default the model's device).

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Bad sizes or options, or a label dtype too small for the classes.
    """
    _check_eval(model)
    _check_images(images)
    _choice(flip_mode, ("crop", "image"), "flip_mode")
    if _returns_labels(model):
        if flip:
            raise _labels_refusal(model, "flip (--flip)")
        device, _ = _model_device_dtype(model, images.device)
        labels, c = _one_tile_labels(
            model, images.to(device), crop_size=crop_size, pad_value=pad_value,
            pad_mode=pad_mode, num_classes=num_classes,
        )
        return labels.to(accumulate_device or device, _label_dtype(label_dtype, c))
    spec = _make_spec(
        crop_size=crop_size,
        stride=stride,
        batch_size=batch_size,
        pad_value=pad_value,
        pad_mode=pad_mode,
        average=average,
        flip=flip and flip_mode == "crop",
        align_corners=align_corners,
        precision=precision,
        accumulate_device=accumulate_device,
        num_classes=num_classes,
    )
    image_flip = flip and flip_mode == "image"
    device, dtype = _model_device_dtype(model, images.device)
    n_img, _, h, w = images.shape
    labels: Tensor | None = None
    with torch.no_grad():
        for n in range(n_img):
            image = images[n : n + 1].to(device=device, dtype=dtype or images.dtype)
            # Same arithmetic as predict(): each view's probabilities, summed, then divided.
            # The mirrored view runs on the mirrored grid without copying the image, and
            # finishes the same rows as the plain one, so the sum stays block by block.
            streams = [
                _as_probs(_slide_blocks(model, image, spec, mirrored=mirrored), spec.average)
                for mirrored in ((False, True) if image_flip else (False,))
            ]
            for r0, r1, c0, c1, total in _sum_views(streams):
                if len(streams) > 1:
                    total = total / len(streams)
                if labels is None:
                    ldt = _label_dtype(label_dtype, total.shape[0])
                    labels = torch.empty((n_img, h, w), dtype=ldt, device=total.device)
                # max().indices: the same first-maximum rule as argmax, 2x faster over dim 0
                # on CPU (measured: 2.4 vs 5.7 ms for 150 x 316 x 64).
                labels[n, r0:r1, c0:c1] = total.max(dim=0).indices.to(labels.dtype)
    if labels is None:
        raise ValueError("images is an empty batch")
    return labels


# -------------------------------------------------------------------------------------------
# Test-time augmentation
# -------------------------------------------------------------------------------------------


def predict(
    model: nn.Module,
    images: Tensor,
    *,
    mode: Mode = "whole",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    flip_mode: FlipMode = "image",
    crop_size: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    base_size: int | None = None,
    img_scale: tuple[int, int] | None = None,
    num_classes: int | None = None,
    batch_size: int = 4,
    pad_value: Tensor | float = 0.0,
    pad_mode: PadMode = "center",
    average: Average = "prob",
    align_corners: bool = False,
    restore_align_corners: bool = False,
    precision: Precision = "fp32",
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Class probabilities at the input size, with optional multi-scale and flip augmentation.

    For every scale the batch is resized (bilinear, ``align_corners=False``, no antialiasing:
    what ``cv2.resize(INTER_LINEAR)`` does in both reference pipelines) to
    :func:`rescaled_size`, predicted whole or by sliding window, brought back to the input size,
    and its probabilities are summed; the sum is divided by the number of (scale, flip) views.

    Per scale the order of operations is: average over overlapping tiles in the ``average``
    space -> resize that result to the input size with ``restore_align_corners`` -> softmax if
    it was logits. ``average="prob"`` is semseg's order (softmax, then resize probabilities);
    ``average="logit"`` is mmseg's (resize logits, then softmax).

    Flip: the horizontally mirrored image's prediction, mirrored back, is averaged in as a
    separate view (``flip_mode="image"``, mmseg), or, in slide mode with
    ``flip_mode="crop"``, every tile is run mirrored and averaged inside the tile (semseg). Both
    average softmax probabilities (with ``average="logit"`` the crop mode averages logits).

    A model that returns class labels instead of logits (``model.output == "labels"``: an
    export made with ``output="labels"``) runs in whole mode at scale 1 without flip or
    resizing only; its labels come back one-hot, so ``argmax`` gives them exactly. Any other
    setting raises ``ValueError`` (labels cannot be averaged).

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch.
        mode: ``"whole"`` or ``"slide"``.
        scales: Test scales; see :func:`rescaled_size` for what a scale means.
        flip: Horizontal-flip augmentation.
        flip_mode: ``"image"`` or ``"crop"`` (see above; identical in whole mode).
        crop_size: Tile size for ``mode="slide"`` (required there).
        stride: Tile step; default ``ceil(2/3 * crop)``.
        base_size: semseg rule: long side = ``round(base_size * scale)``.
        img_scale: mmseg 0.x keep-ratio rule, e.g. ``(2048, 512)``.
        num_classes: Expected number of classes (checked); inferred when None.
        batch_size: Tiles per forward pass in slide mode.
        pad_value: Normalised-space padding value (0 = mean colour) in slide mode.
        pad_mode: ``"center"``, ``"bottom_right"`` or ``"none"`` (slide mode).
        average: ``"prob"`` or ``"logit"`` (see above).
        align_corners: Convention for upsampling low-resolution model outputs to their input.
        restore_align_corners: Convention for resizing each scale's result to the input size
            (semseg uses cv2, i.e. False; mmseg uses the model's ``align_corners``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast; results are float32.
        accumulate_device: Device for tile accumulation and the result (default: model's).
        accumulate_dtype: dtype of the per-scale slide result and of the returned sum.

    Returns:
        (N, C, H, W) probabilities (summing to 1 over C) at the input size.

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Unknown options, no scales, slide mode without ``crop_size``, or a
            labels-only model asked for more than one whole view at scale 1.
    """
    _check_eval(model)
    _check_images(images)
    _choice(mode, ("whole", "slide"), "mode")
    _choice(flip_mode, ("image", "crop"), "flip_mode")
    _choice(average, ("prob", "logit"), "average")
    _choice(precision, ("fp32", "bf16", "fp16"), "precision")
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must contain at least one scale, e.g. (1.0,)")
    if mode == "slide" and crop_size is None:
        raise ValueError("mode='slide' needs crop_size, e.g. crop_size=(473, 473)")
    device, dtype = _model_device_dtype(model, images.device)
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    # Rescale on the model's device (the GPU, usually), not wherever the batch was loaded.
    images = images.to(device=device, dtype=dtype or images.dtype)
    n_img, _, h, w = images.shape
    if _returns_labels(model):
        # Labels cannot be averaged: only the one view that needs no averaging is possible.
        asked = [
            text for bad, text in (
                (scales != (1.0,), f"scales {list(scales)} (--scales)"),
                (flip, "flip (--flip)"),
                (base_size is not None or img_scale is not None,
                 "resized inference (base_size / img_scale, from --protocol --dataset)"),
            ) if bad
        ]
        if asked:
            raise _labels_refusal(model, " and ".join(asked))
        if mode == "whole":
            labels, c = _run_labels(model, images, num_classes)
        else:
            labels, c = _one_tile_labels(
                model, images, crop_size=crop_size,  # type: ignore[arg-type]
                pad_value=pad_value, pad_mode=pad_mode, num_classes=num_classes,
            )
        # One-hot probabilities: their argmax is the labels, exactly.
        labels = labels.to(acc_device)
        onehot = torch.zeros((n_img, c, h, w), dtype=accumulate_dtype, device=acc_device)
        return onehot.scatter_(1, labels[:, None], 1)
    crop_flip = flip and mode == "slide" and flip_mode == "crop"
    image_flip = flip and not crop_flip

    spec = None
    if mode == "slide":
        spec = _make_spec(
            crop_size=crop_size,  # type: ignore[arg-type]
            stride=stride,
            batch_size=batch_size,
            pad_value=pad_value,
            pad_mode=pad_mode,
            average=average,
            flip=crop_flip,
            align_corners=align_corners,
            precision=precision,
            accumulate_device=acc_device,
            num_classes=num_classes,
        )

    def one_view(x: Tensor, mirrored: bool) -> Tensor:
        """Scores of one resized batch (of its mirror image, mirrored back), ``average`` space."""
        if spec is not None:
            # The mirrored view without a flipped copy of the image, and with the same
            # arithmetic as predict_labels_tiled's (so its argmax equals ours exactly).
            return _sliding(model, x, spec, accumulate_dtype=accumulate_dtype, mirrored=mirrored)
        out = predict_whole(
            model, x.flip(-1) if mirrored else x, output=average, align_corners=align_corners,
            precision=precision,
        )
        return (out.flip(-1) if mirrored else out).to(acc_device)

    total: Tensor | None = None
    views = 0
    with torch.no_grad():
        for scale in scales:
            size = rescaled_size(h, w, scale, base_size=base_size, img_scale=img_scale)
            # Image resizing always uses the half-pixel convention (cv2 / PIL / mmcv).
            x = _resize(images, size, align_corners=False)
            for mirrored in (False, True) if image_flip else (False,):
                scores = one_view(x, mirrored).float()  # (N, C, h_s, w_s)
                scores = _resize(scores, (h, w), restore_align_corners)
                probs = scores.softmax(dim=1) if average == "logit" else scores
                if num_classes is not None and probs.shape[1] != num_classes:
                    got = probs.shape[1]
                    raise ValueError(
                        f"num_classes={num_classes} but the model returned {got} channels"
                    )
                if total is None:
                    total = torch.zeros(
                        (n_img, probs.shape[1], h, w), dtype=accumulate_dtype, device=acc_device
                    )
                total += probs
                views += 1
                del scores, probs
    assert total is not None
    if views > 1:
        total /= views
    return total


# -------------------------------------------------------------------------------------------
# Protocols
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """A named, fully specified evaluation procedure (the arguments of :func:`predict`).

    Dataset-dependent sizes (``base_size``, ``crop_size``, ``img_scale``) may be left None in a
    preset; fill them with :meth:`for_dataset` or :meth:`replace`.
    """

    name: str
    source: str
    """Where the procedure comes from (repository and file)."""
    mode: Mode
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    flip_mode: FlipMode = "image"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    base_size: int | None = None
    img_scale: tuple[int, int] | None = None
    pad_mode: PadMode = "center"
    average: Average = "prob"
    align_corners: bool = False
    restore_align_corners: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        for key in ("crop_size", "stride", "img_scale"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _pair(value, key))
        _choice(self.mode, ("whole", "slide"), "mode")
        _choice(self.flip_mode, ("image", "crop"), "flip_mode")
        _choice(self.pad_mode, PAD_MODES, "pad_mode")
        _choice(self.average, ("prob", "logit"), "average")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and non-empty, got {self.scales!r}")

    def replace(self, **changes: Any) -> Protocol:
        """A copy with some fields changed (e.g. ``crop_size=(713, 713)``)."""
        return dataclasses.replace(self, **changes)

    def for_dataset(self, dataset: str) -> Protocol:
        """Fill the source's sizes for a data set (see :data:`DATASET_SETTINGS`).

        Raises:
            ValueError: The source has no published setting for that data set.
        """
        family = self.name.removesuffix("-ms")
        table = DATASET_SETTINGS.get(family, {})
        key = _DATASET_ALIASES.get(dataset.lower(), dataset.lower())
        if key not in table:
            raise ValueError(
                f"protocol {self.name!r} has no setting for data set {dataset!r}; "
                f"known: {sorted(table)} (or set sizes with .replace(...))"
            )
        return self.replace(**table[key])

    def predict_kwargs(self) -> dict[str, Any]:
        """The keyword arguments this protocol passes to :func:`predict`."""
        return {
            "mode": self.mode,
            "scales": self.scales,
            "flip": self.flip,
            "flip_mode": self.flip_mode,
            "crop_size": self.crop_size,
            "stride": self.stride,
            "base_size": self.base_size,
            "img_scale": self.img_scale,
            "pad_mode": self.pad_mode,
            "average": self.average,
            "align_corners": self.align_corners,
            "restore_align_corners": self.restore_align_corners,
        }

    def predict(self, model: nn.Module, images: Tensor, **runtime: Any) -> Tensor:
        """Run :func:`predict` with this protocol.

        Args:
            model: Segmentation model in eval mode.
            images: Normalised (N, 3, H, W) batch at its original size.
            **runtime: Options that do not change the result's definition: ``num_classes``,
                ``batch_size``, ``pad_value``, ``precision``, ``accumulate_device``,
                ``accumulate_dtype``.

        Returns:
            (N, C, H, W) probabilities at the input size.

        Raises:
            TypeError: A runtime keyword would redefine the protocol (use :meth:`replace`).
            ValueError: A required size is missing (call :meth:`for_dataset`).
        """
        clash = sorted(set(runtime) & set(self.predict_kwargs()))
        if clash:
            raise TypeError(
                f"{clash} are part of protocol {self.name!r}; use protocol.replace(...) instead"
            )
        if self.mode == "slide" and self.crop_size is None:
            raise ValueError(
                f"protocol {self.name!r} needs crop_size: use "
                f"PROTOCOLS[{self.name!r}].for_dataset('ade20k') or .replace(crop_size=...)"
            )
        if self.name.startswith("semseg") and self.base_size is None:
            raise ValueError(
                f"protocol {self.name!r} needs base_size (512 for ADE20K/VOC, 2048 for "
                "Cityscapes): use .for_dataset(...) or .replace(base_size=...)"
            )
        return predict(model, images, **self.predict_kwargs(), **runtime)


_SEMSEG_DOC = (
    "hszhao/semseg tool/test.py. For each scale s the image is resized so its LONG side is "
    "round(base_size * s), keeping the aspect ratio (bilinear). It is padded to at least "
    "crop x crop with the mean colour, int(pad/2) before and the rest after, and tiled with "
    "stride ceil(2/3 crop), the last tile flush with the border. Every tile is ALWAYS run "
    "together with its horizontal mirror; the softmax of the two (mirror flipped back) is "
    "averaged, then averaged over overlapping tiles with a count map. The padding is cropped, "
    "the probabilities are resized bilinearly (cv2 convention, align_corners=False) to the "
    "original size and averaged over scales; the prediction is their argmax. Model outputs "
    "smaller than a tile are upsampled with align_corners=True. Sizes: base_size 512 / crop 473 "
    "for ADE20K and VOC2012, base_size 2048 / crop 713 for Cityscapes."
)

_MMSEG_WHOLE_DOC = (
    "mmsegmentation EncoderDecoder.whole_inference (test_cfg mode='whole'). The image, resized "
    "by the dataset pipeline (keep-ratio Resize to img_scale, e.g. (2048, 512) for ADE20K/VOC, "
    "(2048, 1024) for Cityscapes) or, with img_scale None, used as given, goes through the "
    "network whole; the logits are resized (model align_corners, False for mmseg's PSPNet) to "
    "the original size and soft-maxed."
)

_MMSEG_SLIDE_DOC = (
    "mmsegmentation EncoderDecoder.slide_inference (test_cfg mode='slide', used for its "
    "769x769 Cityscapes models: crop (769, 769), stride (513, 513), align_corners=True). Tiles "
    "step by the stride with the last one flush with the border; logits are summed and divided "
    "by the count map; the averaged logits are resized to the original size and soft-maxed. An "
    "image smaller than the crop is NOT padded: it runs as one smaller tile (mmseg's "
    "documented behaviour), pad_mode='none'; use .replace(pad_mode='bottom_right') for "
    "zero (mean) padding at the bottom/right instead."
)

#: The single-scale mmseg presets; the ``-ms`` ones end with :data:`_MS_DOC` instead.
_ONE_VIEW_DOC = " No flip, one scale."

_MS_DOC = (
    " Multi-scale variant: scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) with horizontal flip, "
    "softmax probabilities averaged over every (scale, flip) view."
)


#: Evaluation presets named after their source. ``"<name>"`` is single-scale (scale 1.0 only;
#: for ``semseg`` that still includes the flip the script always does), ``"<name>-ms"`` adds
#: the scales in :data:`MULTI_SCALES` (and flip, for mmseg).
PROTOCOLS: dict[str, Protocol] = {
    "semseg": Protocol(
        name="semseg",
        source="hszhao/semseg tool/test.py (test, scale_process, net_process)",
        mode="slide",
        scales=(1.0,),
        flip=True,
        flip_mode="crop",
        pad_mode="center",
        average="prob",
        align_corners=True,
        restore_align_corners=False,
        description=_SEMSEG_DOC,
    ),
    "semseg-ms": Protocol(
        name="semseg-ms",
        source="hszhao/semseg tool/test.py with scales [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]",
        mode="slide",
        scales=MULTI_SCALES,
        flip=True,
        flip_mode="crop",
        pad_mode="center",
        average="prob",
        align_corners=True,
        restore_align_corners=False,
        description=_SEMSEG_DOC + " Multi-scale: scales (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).",
    ),
    "mmseg-whole": Protocol(
        name="mmseg-whole",
        source="open-mmlab/mmsegmentation mmseg/models/segmentors/encoder_decoder.py",
        mode="whole",
        average="logit",
        align_corners=False,
        restore_align_corners=False,
        description=_MMSEG_WHOLE_DOC + _ONE_VIEW_DOC,
    ),
    "mmseg-whole-ms": Protocol(
        name="mmseg-whole-ms",
        source="mmsegmentation encoder_decoder.py aug_test / MultiScaleFlipAug",
        mode="whole",
        scales=MULTI_SCALES,
        flip=True,
        flip_mode="image",
        average="logit",
        align_corners=False,
        restore_align_corners=False,
        description=_MMSEG_WHOLE_DOC + _MS_DOC,
    ),
    "mmseg-slide": Protocol(
        name="mmseg-slide",
        source="open-mmlab/mmsegmentation mmseg/models/segmentors/encoder_decoder.py",
        mode="slide",
        pad_mode="none",
        average="logit",
        align_corners=True,
        restore_align_corners=True,
        description=_MMSEG_SLIDE_DOC + _ONE_VIEW_DOC,
    ),
    "mmseg-slide-ms": Protocol(
        name="mmseg-slide-ms",
        source="mmsegmentation encoder_decoder.py aug_test / MultiScaleFlipAug",
        mode="slide",
        scales=MULTI_SCALES,
        flip=True,
        flip_mode="image",
        pad_mode="none",
        average="logit",
        align_corners=True,
        restore_align_corners=True,
        description=_MMSEG_SLIDE_DOC + _MS_DOC,
    ),
}

#: Published sizes per protocol family and data set, applied by :meth:`Protocol.for_dataset`.
DATASET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # hszhao/semseg config/*/*_pspnet50.yaml: base_size, test_h/test_w.
    "semseg": {
        "ade20k": {"base_size": 512, "crop_size": (473, 473)},
        "voc2012": {"base_size": 512, "crop_size": (473, 473)},
        "cityscapes": {"base_size": 2048, "crop_size": (713, 713)},
    },
    # mmseg configs/_base_/datasets/*.py test pipeline Resize(scale=..., keep_ratio=True).
    "mmseg-whole": {
        "ade20k": {"img_scale": (2048, 512)},
        "voc2012": {"img_scale": (2048, 512)},
        "cityscapes": {"img_scale": (2048, 1024)},
    },
    # mmseg configs/pspnet/*_769x769_*.py test_cfg.
    "mmseg-slide": {
        "cityscapes": {"img_scale": (2049, 1025), "crop_size": (769, 769), "stride": (513, 513)},
    },
}

_DATASET_ALIASES = {
    "ade": "ade20k",
    "ade20k": "ade20k",
    "voc": "voc2012",
    "voc2012": "voc2012",
    "pascal_voc": "voc2012",
    "cityscapes": "cityscapes",
}


def get_protocol(name: str, dataset: str | None = None, **overrides: Any) -> Protocol:
    """Look up a preset, optionally fill its data-set sizes, then apply overrides.

    Args:
        name: A key of :data:`PROTOCOLS`.
        dataset: ``"ade20k"``, ``"voc2012"`` or ``"cityscapes"`` (see :data:`DATASET_SETTINGS`).
        **overrides: Field changes, e.g. ``crop_size=(713, 713)``.

    Raises:
        ValueError: Unknown protocol or data set.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    if dataset is not None:
        proto = proto.for_dataset(dataset)
    return proto.replace(**overrides) if overrides else proto
