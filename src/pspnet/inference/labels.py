"""The labels-only sliding window: an (N, H, W) label map without a (C, H, W) score tensor.

For very large images (a 6000x4000 photo with 150 classes would need 14 GB of scores): blocks
finished by the sliding window (:mod:`pspnet.inference.window`) are reduced by argmax as soon
as every overlapping tile has been summed into them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pspnet.inference.core import (
    _check_eval, _check_images, _labels_refusal, _model_device_dtype, _pad_image, _returns_labels,
    _run_labels, _tile_pads,
)
from pspnet.inference.options import InferenceOptions, resolve_options
from pspnet.inference.window import _as_probs, _slide_blocks, _sum_views, _Window, _window

__all__ = ["predict_labels_tiled"]


def _one_tile_labels(
    model: nn.Module, images: Tensor, opts: InferenceOptions, num_classes: int | None
) -> tuple[Tensor, int]:
    """Sliding-window labels of a labels-only model where the window grid is a single tile.

    One tile (the image padded to the crop as the sliding window pads it) has nothing to
    average, so its labels, cropped back, are exactly the argmax a logits model would give.

    Raises:
        ValueError: No ``crop_size``, or an image that needs more than one tile (their scores
            would be averaged).
    """
    if opts.crop_size is None:
        raise ValueError("a sliding window needs crop_size (--crop-size N), got None")
    ch, cw = opts.crop_size
    _, _, h, w = images.shape
    if opts.pad_mode == "none":
        ch, cw = min(ch, h), min(cw, w)
    if h > ch or w > cw:
        raise _labels_refusal(
            model, f"a sliding window over several tiles (a {h}x{w} image in {ch}x{cw} tiles)"
        )
    top, left, pad_h, pad_w = _tile_pads(h, w, (ch, cw), opts.pad_mode)
    padded = _pad_image(images, (top, pad_h - top, left, pad_w - left), opts.pad_value)
    labels, c = _run_labels(model, padded, num_classes)
    return labels[:, top : top + h, left : left + w], c


def _label_dtype(asked: torch.dtype | None, num_classes: int) -> torch.dtype:
    """``asked``, or uint8 for up to 256 classes and int64 above; refuses a too-small uint8."""
    dtype = asked or (torch.uint8 if num_classes <= 256 else torch.int64)
    if dtype == torch.uint8 and num_classes > 256:
        raise ValueError(f"label_dtype uint8 cannot hold {num_classes} classes")
    return dtype


def predict_labels_tiled(
    model: nn.Module, images: Tensor, options: InferenceOptions | None = None, *,
    num_classes: int | None = None, label_dtype: torch.dtype | None = None, **overrides: Any,
) -> Tensor:
    """Sliding-window label map, computed block by block without a (C, H, W) score tensor.

    Tiles are visited strip by strip; as soon as a block of pixels has received every
    overlapping tile it is averaged, turned into probabilities, combined over flips and reduced
    by argmax. Memory therefore stays at one batch of crop activations, the float32 sums of the
    rows where tile rows overlap (C x (crop_h - stride_h) x W), one column of tiles and the
    label map, whatever the image height. The result equals
    ``predict(model, images, options.replace(mode="slide", scales=(1.0,))).argmax(1)`` for the
    same options (single scale, no resizing; ``mode``, ``scales`` and the resizing options are
    not used here).

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch.
        options: The settings (:class:`InferenceOptions`; ``crop_size`` required). With
            ``flip``, ``flip_mode="crop"`` mirrors each tile (semseg) and ``"image"`` runs the
            mirrored image as a second sliding pass (mmseg); both block by block.
        num_classes: Expected channel count (checked); inferred from the model when None.
        label_dtype: dtype of the labels; default uint8 for up to 256 classes, else int64.
        **overrides: :class:`InferenceOptions` fields on top of ``options``. Without
            ``options``, ``flip_mode`` defaults to ``"crop"`` here.

    Returns:
        (N, H, W) class indices on ``accumulate_device`` (default the model's device).

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Bad sizes or options, or a label dtype too small for the classes.
    """
    opts = resolve_options(options, overrides, flip_mode="crop")
    _check_eval(model)
    _check_images(images)
    if _returns_labels(model):
        if opts.flip:
            raise _labels_refusal(model, "flip (--flip)")
        device, _ = _model_device_dtype(model, images.device)
        labels, c = _one_tile_labels(model, images.to(device), opts, num_classes)
        return labels.to(opts.accumulate_device or device, _label_dtype(label_dtype, c))
    win = _window(opts, tile_flip=opts.flip and opts.flip_mode == "crop",
                  acc_device=opts.accumulate_device, num_classes=num_classes)
    image_flip = opts.flip and opts.flip_mode == "image"
    device, dtype = _model_device_dtype(model, images.device)
    labels: Tensor | None = None
    with torch.no_grad():
        for n in range(images.shape[0]):
            image = images[n : n + 1].to(device=device, dtype=dtype or images.dtype)
            labels = _labels_of_image(model, image, win, image_flip, labels, n, images.shape[0],
                                      label_dtype)
    if labels is None:
        raise ValueError("images is an empty batch")
    return labels


def _labels_of_image(
    model: nn.Module, image: Tensor, win: _Window, image_flip: bool, labels: Tensor | None,
    n: int, n_img: int, label_dtype: torch.dtype | None,
) -> Tensor | None:
    """Write image ``n``'s labels into ``labels`` (N, H, W), allocated on the first block."""
    _, _, h, w = image.shape
    # Same arithmetic as predict(): each view's probabilities, summed, then divided.
    # The mirrored view runs on the mirrored grid without copying the image, and
    # finishes the same rows as the plain one, so the sum stays block by block.
    streams = [
        _as_probs(_slide_blocks(model, image, win, mirrored=mirrored), win.opts.average)
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
    return labels
