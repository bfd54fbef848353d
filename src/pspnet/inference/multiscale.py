"""Whole-image prediction and test-time augmentation (multi-scale, flip) over any mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from pspnet.inference.core import (
    _as_float,
    _check_eval,
    _check_images,
    _forward,
    _labels_refusal,
    _model_device_dtype,
    _native_forward,
    _resize,
    _returns_labels,
    _run_labels,
    rescaled_size,
)
from pspnet.inference.labels import _one_tile_labels, predict_labels_tiled
from pspnet.inference.options import Average, InferenceOptions, _choice, _pair, resolve_options
from pspnet.inference.window import _sliding, _window, _Window
from pspnet.precision import PRECISIONS, Precision

__all__ = ["predict_whole", "predict", "predict_labels"]


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
    opts, images, acc_device = _prepare(model, images, options, overrides)
    if _returns_labels(model):
        return _predict_labels_model(model, images, opts, num_classes, acc_device)
    crop_flip = opts.flip and opts.mode == "slide" and opts.flip_mode == "crop"
    win = None
    if opts.mode == "slide":
        win = _window(opts, tile_flip=crop_flip, acc_device=acc_device, num_classes=num_classes)
    with torch.no_grad():
        return _average_views(model, images, opts, win, num_classes, acc_device,
                              image_flip=opts.flip and not crop_flip)


#: Rows per block where a view's scores are converted and reduced (a multiple of 8, the
#: float32 vector width, so blocks of a row-major map start on a vector boundary).
_BLOCK_ROWS = 64

#: One block of a view's probabilities: rows ``[r0, r1)`` at the input size, (N, C, r1 - r0, W).
_Rows = tuple[int, int, Tensor]


def _average_views(
    model: nn.Module, images: Tensor, opts: InferenceOptions, win: _Window | None,
    num_classes: int | None, acc_device: torch.device, *, image_flip: bool,
) -> Tensor:
    """The mean of the probabilities of every (scale, image flip) view, at the input size.

    The sum is ONE preallocated (N, C, H, W) tensor in ``accumulate_dtype``; each view's
    probabilities are added into it block of rows by block (:func:`_view_rows`).
    """
    n_img, _, h, w = images.shape
    total: Tensor | None = None
    views = 0
    for rows in _views(model, images, opts, win, num_classes, acc_device, image_flip=image_flip):
        for r0, r1, probs in rows:
            if total is None:
                total = torch.empty((n_img, probs.shape[1], h, w), dtype=opts.accumulate_dtype,
                                    device=acc_device)
            if views == 0:
                total[:, :, r0:r1] = probs  # = 0 + probs, rounded to accumulate_dtype
            else:
                total[:, :, r0:r1] += probs
        views += 1
    if total is None:  # scales is never empty (checked by InferenceOptions)
        raise RuntimeError("no view was predicted")
    if views > 1:
        total /= views
    return total


def _views(
    model: nn.Module, images: Tensor, opts: InferenceOptions, win: _Window | None,
    num_classes: int | None, acc_device: torch.device, *, image_flip: bool,
) -> Iterator[Iterator[_Rows]]:
    """Every (scale, image flip) view, as an iterator over blocks of its probability rows.

    A view is predicted when its iterator is first advanced; consume each before the next.
    """
    h, w = images.shape[-2:]
    for scale in opts.scales:
        size = rescaled_size(h, w, scale, base_size=opts.base_size, img_scale=opts.img_scale)
        # Image resizing always uses the half-pixel convention (cv2 / PIL / mmcv).
        x = _resize(images, size, align_corners=False)
        for mirrored in (False, True) if image_flip else (False,):
            yield _view_rows(model, x, (h, w), mirrored, opts, win, num_classes, acc_device)


def _view_scores(
    model: nn.Module, x: Tensor, mirrored: bool, opts: InferenceOptions, win: _Window | None,
) -> tuple[Tensor, bool, bool]:
    """Scores of one resized batch at its own size: ``(scores, softmaxed, still_mirrored)``.

    A sliding window returns float sums already averaged (softmaxed when ``average="prob"``)
    and mirrored back. A whole-image pass returns the network's own logits (any dtype and
    memory format; resized to ``x`` only if the network returns a smaller map), still of the
    mirrored image when ``mirrored``.
    """
    if win is not None:
        # The mirrored view without a flipped copy of the image, and with the same
        # arithmetic as predict_labels_tiled's (so its argmax equals ours exactly).
        return _sliding(model, x, win, mirrored=mirrored), opts.average == "prob", False
    out = _native_forward(model, x.flip(-1) if mirrored else x, precision=opts.precision)
    if tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
        out = _resize(_as_float(out), tuple(x.shape[-2:]), bool(opts.align_corners))
    return out, False, mirrored


def _view_rows(
    model: nn.Module, x: Tensor, size: tuple[int, int], mirrored: bool, opts: InferenceOptions,
    win: _Window | None, num_classes: int | None, acc_device: torch.device,
) -> Iterator[_Rows]:
    """One view's float32 probabilities at ``size``, block of rows by block of rows.

    Per view the order is the one :func:`predict` documents: average in the ``average`` space
    -> mirror back -> resize to the input size -> softmax if logits. A view at the input size
    (scale 1, the common case) is converted from the network's own logits (bf16,
    channels-last, ...) one block of rows at a time, so no full-size float32 copy of them is
    made; a view that must be resized is resized whole (bilinear resizing is not reproducible
    block by block) on ``acc_device``, then reduced block by block.
    """
    scores, softmaxed, flip = _view_scores(model, x, mirrored, opts, win)
    c = scores.shape[1]
    if num_classes is not None and c != num_classes:
        raise ValueError(f"num_classes={num_classes} but the model returned {c} channels")
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = _as_float(scores.to(acc_device))
        if not softmaxed and opts.average == "prob":
            scores, softmaxed = scores.softmax(dim=1), True  # semseg: probabilities resized
        if flip:
            scores, flip = scores.flip(-1), False
        scores = _resize(scores, size, opts.restore_align_corners)  # (N, C, H, W)
    for r0 in range(0, size[0], _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, size[0])
        block = _as_float(scores[:, :, r0:r1].to(acc_device))  # (N, C, rows, W)
        if not softmaxed:
            block = block.softmax(dim=1)
        yield r0, r1, block.flip(-1) if flip else block


def predict_labels(
    model: nn.Module, images: Tensor, options: InferenceOptions | None = None, *,
    num_classes: int | None = None, **overrides: Any,
) -> Tensor:
    """Class indices at the input size: ``predict(...).argmax(1)`` without full-size logits.

    What ``pspnet predict``, ``pspnet evaluate`` and ``pspnet serve`` need. A whole-image
    pass at scale 1 without flip takes the argmax of the network's own logits (bf16 or
    channels-last as computed: no float32 copy, no softmax; softmax keeps the order of the
    scores, so the labels are those of the probabilities). A single-scale sliding window
    without resizing runs :func:`predict_labels_tiled` (block by block). Other settings sum
    the views' probabilities into one (N, C, H, W) tensor, block of rows by block of rows
    (:func:`predict`), and take its argmax.

    Args:
        model: Segmentation model in eval mode (or a labels-only export).
        images: Normalised (N, 3, H, W) float batch.
        options: Every setting (:class:`InferenceOptions`), as for :func:`predict`.
        num_classes: Expected number of classes (checked); inferred when None.
        **overrides: :class:`InferenceOptions` fields on top of ``options``.

    Returns:
        (N, H, W) int64 class indices on ``accumulate_device`` (default the model's device).

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: As :func:`predict`.
    """
    opts, images, acc_device = _prepare(model, images, options, overrides)
    resized = opts.scales != (1.0,) or opts.base_size is not None or opts.img_scale is not None
    if _returns_labels(model):
        return _labels_of_labels_model(model, images, opts, num_classes)[0].to(acc_device)
    if opts.mode == "slide" and not resized:
        return predict_labels_tiled(model, images, opts, num_classes=num_classes,
                                    label_dtype=torch.int64)
    exact_sum = opts.accumulate_dtype in (torch.float32, torch.float64)
    with torch.no_grad():
        if opts.mode == "whole" and not resized and not opts.flip and exact_sum:
            fast = _native_labels(model, images, opts)
            if fast is None:  # the argmax of the network's own full-size logits
                out = _native_forward(model, images, precision=opts.precision)
                if tuple(out.shape[-2:]) != tuple(images.shape[-2:]):
                    out = _resize(_as_float(out), tuple(images.shape[-2:]),
                                  bool(opts.align_corners))
                fast = _channel_argmax(out), int(out.shape[1])
            labels, c = fast
            if num_classes is not None and c != num_classes:
                raise ValueError(f"num_classes={num_classes} but the model returned {c} channels")
            return labels.to(acc_device)
        return _channel_argmax(predict(model, images, opts, num_classes=num_classes))


def _native_labels(
    model: nn.Module, images: Tensor, opts: InferenceOptions,
) -> tuple[Tensor, int] | None:
    """The labels of the model's native logits from its own labels method, where it has one.

    :meth:`pspnet.models.fuse.InferenceModel.native_labels` (compiled, CPU) finds them at the
    coarse resolution without full-size logits; None where the model has no such method, it
    does not apply, or autocast is asked for (the compiled graph was traced without it).
    """
    method = getattr(model, "native_labels", None)
    if not callable(method) or opts.precision != "fp32":
        return None
    result: tuple[Tensor, int] | None = method(images)
    return result


def _channel_argmax(scores: Tensor) -> Tensor:
    """``scores.argmax(dim=1)``, computed as ``max(dim=1).indices``: the same first-maximum
    rule, 2.3-3.4x faster (measured on a 2-core AMX Xeon, (1, 150, 473, 473) logits in fp32
    and bf16, NCHW and channels-last: 21-48 ms against 48-161 ms), which is a quarter of a
    compiled bf16 pspnet50's time at 473."""
    return scores.max(dim=1).indices


def _labels_of_labels_model(
    model: nn.Module, images: Tensor, opts: InferenceOptions, num_classes: int | None,
) -> tuple[Tensor, int]:
    """The (N, H, W) labels of a labels-only model and its class count.

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
        return _run_labels(model, images, num_classes)
    return _one_tile_labels(model, images, opts, num_classes)


def _predict_labels_model(
    model: nn.Module, images: Tensor, opts: InferenceOptions, num_classes: int | None,
    acc_device: torch.device,
) -> Tensor:
    """:func:`predict` for a labels-only model: its labels as one-hot probabilities."""
    labels, c = _labels_of_labels_model(model, images, opts, num_classes)
    # One-hot probabilities: their argmax is the labels, exactly.
    n_img, _, h, w = images.shape
    labels = labels.to(acc_device)
    onehot = torch.zeros((n_img, c, h, w), dtype=opts.accumulate_dtype, device=acc_device)
    return onehot.scatter_(1, labels[:, None], 1)


def _prepare(
    model: nn.Module, images: torch.Tensor, options: Any, overrides: dict[str, Any]
) -> tuple[InferenceOptions, torch.Tensor, torch.device]:
    """The checked options, the images on the model's device and dtype, and where to sum."""
    opts = resolve_options(options, overrides)
    _check_eval(model)
    _check_images(images)
    if opts.mode == "slide" and opts.crop_size is None:
        raise ValueError("mode='slide' needs crop_size, e.g. crop_size=(473, 473)")
    device, dtype = _model_device_dtype(model, images.device)
    acc_device = opts.accumulate_device if opts.accumulate_device is not None else device
    # Rescale on the model's device (the GPU, usually), not wherever the batch was loaded.
    return opts, images.to(device=device, dtype=dtype or images.dtype), acc_device
