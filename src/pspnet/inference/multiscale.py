"""Whole-image prediction and test-time augmentation (multi-scale, flip) over any mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pspnet.inference.core import (
    _check_eval,
    _check_images,
    _forward,
    _labels_refusal,
    _model_device_dtype,
    _resize,
    _returns_labels,
    _run_labels,
    rescaled_size,
)
from pspnet.inference.labels import _one_tile_labels
from pspnet.inference.options import Average, InferenceOptions, _choice, _pair, resolve_options
from pspnet.inference.window import _sliding, _window, _Window
from pspnet.precision import PRECISIONS, Precision

__all__ = ["predict_whole", "predict"]


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
    """One forward pass over whole images (the primitive under :func:`predict`'s whole mode).

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
    _choice(precision, PRECISIONS, "precision")
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


def predict(model: nn.Module, images: Tensor, options: InferenceOptions | None = None, *,
            num_classes: int | None = None, **overrides: Any) -> Tensor:
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
        options: Every setting (:class:`InferenceOptions`, e.g. a protocol preset); default
            one whole-image pass at scale 1 without flip.
        num_classes: Expected number of classes (checked); inferred when None.
        **overrides: :class:`InferenceOptions` fields on top of ``options`` (or the defaults),
            e.g. ``mode="slide", crop_size=473, flip=True``.

    Returns:
        (N, C, H, W) probabilities (summing to 1 over C) at the input size.

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Unknown options, slide mode without ``crop_size``, or a labels-only model
            asked for more than one whole view at scale 1.
    """
    opts = resolve_options(options, overrides)
    _check_eval(model)
    _check_images(images)
    if opts.mode == "slide" and opts.crop_size is None:
        raise ValueError("mode='slide' needs crop_size, e.g. crop_size=(473, 473)")
    device, dtype = _model_device_dtype(model, images.device)
    acc_device = opts.accumulate_device if opts.accumulate_device is not None else device
    # Rescale on the model's device (the GPU, usually), not wherever the batch was loaded.
    images = images.to(device=device, dtype=dtype or images.dtype)
    if _returns_labels(model):
        return _predict_labels_model(model, images, opts, num_classes, acc_device)
    crop_flip = opts.flip and opts.mode == "slide" and opts.flip_mode == "crop"
    win = None
    if opts.mode == "slide":
        win = _window(opts, tile_flip=crop_flip, acc_device=acc_device, num_classes=num_classes)
    with torch.no_grad():
        return _average_views(model, images, opts, win, num_classes, acc_device,
                              image_flip=opts.flip and not crop_flip)


def _average_views(
    model: nn.Module, images: Tensor, opts: InferenceOptions, win: _Window | None,
    num_classes: int | None, acc_device: torch.device, *, image_flip: bool,
) -> Tensor:
    """The mean of the probabilities of every (scale, image flip) view, at the input size."""
    n_img, _, h, w = images.shape
    total: Tensor | None = None
    views = 0
    for scale in opts.scales:
        size = rescaled_size(h, w, scale, base_size=opts.base_size, img_scale=opts.img_scale)
        # Image resizing always uses the half-pixel convention (cv2 / PIL / mmcv).
        x = _resize(images, size, align_corners=False)
        for mirrored in (False, True) if image_flip else (False,):
            scores = _one_view(model, x, mirrored, opts, win, acc_device).float()
            scores = _resize(scores, (h, w), opts.restore_align_corners)  # (N, C, H, W)
            probs = scores.softmax(dim=1) if opts.average == "logit" else scores
            if num_classes is not None and probs.shape[1] != num_classes:
                got = probs.shape[1]
                raise ValueError(f"num_classes={num_classes} but the model returned {got} channels")
            if total is None:
                total = torch.zeros((n_img, probs.shape[1], h, w),
                                    dtype=opts.accumulate_dtype, device=acc_device)
            total += probs
            views += 1
            del scores, probs
    if total is None:  # scales is never empty (checked by InferenceOptions)
        raise RuntimeError("no view was predicted")
    if views > 1:
        total /= views
    return total


def _one_view(
    model: nn.Module, x: Tensor, mirrored: bool, opts: InferenceOptions, win: _Window | None,
    acc_device: torch.device,
) -> Tensor:
    """Scores of one resized batch (of its mirror image, mirrored back), ``average`` space."""
    if win is not None:
        # The mirrored view without a flipped copy of the image, and with the same
        # arithmetic as predict_labels_tiled's (so its argmax equals ours exactly).
        return _sliding(model, x, win, mirrored=mirrored)
    out = predict_whole(
        model, x.flip(-1) if mirrored else x, output=opts.average,
        align_corners=bool(opts.align_corners), precision=opts.precision,
    )
    return (out.flip(-1) if mirrored else out).to(acc_device)


def _predict_labels_model(
    model: nn.Module, images: Tensor, opts: InferenceOptions, num_classes: int | None,
    acc_device: torch.device,
) -> Tensor:
    """:func:`predict` for a labels-only model: its labels as one-hot probabilities.

    Raises:
        ValueError: The options need averaging (scales, flip, resizing), which labels lack.
    """
    # Labels cannot be averaged: only the one view that needs no averaging is possible.
    asked = [
        text for bad, text in (
            (opts.scales != (1.0,), f"scales {list(opts.scales)} (--scales)"),
            (opts.flip, "flip (--flip)"),
            (opts.base_size is not None or opts.img_scale is not None,
             "resized inference (base_size / img_scale, from --protocol --dataset)"),
        ) if bad
    ]
    if asked:
        raise _labels_refusal(model, " and ".join(asked))
    if opts.mode == "whole":
        labels, c = _run_labels(model, images, num_classes)
    else:
        labels, c = _one_tile_labels(model, images, opts, num_classes)
    # One-hot probabilities: their argmax is the labels, exactly.
    n_img, _, h, w = images.shape
    labels = labels.to(acc_device)
    onehot = torch.zeros((n_img, c, h, w), dtype=opts.accumulate_dtype, device=acc_device)
    return onehot.scatter_(1, labels[:, None], 1)
