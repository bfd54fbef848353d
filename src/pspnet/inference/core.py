"""What every inference path shares: model checks, one forward pass, padding, tile grids.

Every function takes any ``nn.Module`` in eval mode whose forward maps a normalised
``(N, 3, H, W)`` float tensor to ``(N, C, h, w)`` logits, or to a dict holding them under
``"out"`` (auxiliary outputs are ignored). Outputs smaller than the input are resized
bilinearly to the input size. Work runs on the model's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.inference.options import Average, _pair
from pspnet.precision import Precision, autocast

__all__ = ["normalise_images", "default_stride", "tile_starts", "rescaled_size"]


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


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` and return its (N, C, h, w) logits as it computed them.

    A model with a ``native_logits`` method (:class:`pspnet.models.fuse.InferenceModel`) is
    asked for its logits in the dtype and memory format its network produced (bf16,
    channels-last, ...), not converted to float32 NCHW: callers convert only the part they use,
    so no full-size float32 copy is made that nobody reads. Otherwise ``model(x)`` is used,
    unwrapping ``{"out": ...}`` dicts.

    Raises:
        TypeError: The output is neither a tensor nor a mapping with an ``"out"`` tensor.
        ValueError: The output is not 4-D or its batch size differs from the input.
    """
    if _returns_labels(model):
        raise _labels_refusal(
            model, "a pass that must return per-class scores (use predict() in whole mode)"
        )
    native = getattr(model, "native_logits", None)
    out = native(x) if callable(native) else model(x)
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


def _as_float(x: Tensor) -> Tensor:
    """``x`` as float32 in the standard (NCHW) layout, in ONE copy (none if it already is).

    ``x.float().contiguous()`` makes two copies of a bf16 channels-last tensor; the standard
    layout keeps softmax and resizing on the kernels (and arithmetic) they always used.
    """
    return x.to(torch.float32, memory_format=torch.contiguous_format)


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear resize of a (N, C, h, w) tensor; returns ``x`` itself when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _native_forward(model: nn.Module, x: Tensor, *, precision: Precision) -> Tensor:
    """Logits for ``x`` as the model computed them: its dtype, layout and output size.

    ``precision`` other than fp32 runs the forward under ``torch.autocast`` on the input's
    device type. Nothing is converted or resized: see :func:`_forward` for that.
    """
    with autocast(x.device, precision):
        return _logits(model, x)


def _forward(model: nn.Module, x: Tensor, *, precision: Precision, align_corners: bool) -> Tensor:
    """Logits for ``x`` (N, 3, H, W) as float32 (N, C, H, W), at the input's resolution.

    The result is float32 so averaging and softmax happen in float32.
    """
    out = _as_float(_native_forward(model, x, precision=precision))
    # Resize logits (not probabilities) to the input, as both reference implementations do.
    return _resize(out, (x.shape[-2], x.shape[-1]), align_corners)


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


def _pad_image(
    image: Tensor, pads: tuple[int, int, int, int], pad_value: float | tuple[float, ...]
) -> Tensor:
    """Pad (1, C, H, W) by (top, bottom, left, right) with a scalar or per-channel value."""
    top, bottom, left, right = pads
    if not any(pads):
        return image
    if not isinstance(pad_value, tuple):
        return F.pad(image, (left, right, top, bottom), mode="constant", value=float(pad_value))
    n, c, h, w = image.shape
    value = torch.tensor(pad_value, dtype=image.dtype, device=image.device)
    value = value.reshape(1, -1, 1, 1)  # (1, C|1, 1, 1)
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
    tensor, which could be memory the model keeps, is copied first, and so is an inference
    tensor outside inference mode.
    """
    b = crops.shape[0]
    x = torch.cat([crops, crops.flip(-1)], dim=0) if flip else crops  # (B or 2B, 3, ch, cw)
    out = _forward(model, x, precision=precision, align_corners=align_corners)
    if out._base is not None or 0 in out.stride() or (
        out.is_inference() and not torch.is_inference_mode_enabled()
    ):
        # (An inference tensor, e.g. from a fast-path model, cannot be updated in place
        # outside inference mode.)
        out = out.clone()
    if average == "prob":
        out = _softmax_(out)
    if flip:
        out = (out[:b] + out[b:].flip(-1)) / 2
    return out
