"""How much memory a prediction needs, and the mode that keeps it inside a bound.

A whole-image pass holds the (C, H, W) scores of the whole image (and their softmax) plus the
network's activations over the whole image: a 10000x10000 photo with 16 classes needs 6.4 GB
for one copy of the scores alone. The single-scale sliding window of
:func:`pspnet.inference.predict_labels_tiled` needs memory bounded by the crop and the image
width instead. :func:`bounded_options` estimates both and picks the mode: the options as given
when they fit ``options.max_memory`` (default 2 GB, ``pspnet.config.limits``), a sliding window
of :data:`AUTO_CROP` pixels when a whole-image pass does not fit but the window does, and a
:class:`MemoryBoundError` naming the fix when nothing fits.

The estimates count float32 tensors (4 bytes per value) and are meant as upper bounds of what a
prediction adds on top of the loaded model and the normalised input image (12 bytes per pixel,
plus the decoded image, 3 bytes per pixel): ``tests/reliability/test_bounds.py`` checks them
against measured peaks. Per input pixel of a view (the image resized by a scale):

* scores: ``4 * C`` per copy; a whole-image view holds two (the logits upsampled to the view and
  their softmax), and the sum over views at the input size is one more when there are several
  views or the view is resized;
* activations: ``4 * (3 + 32 + 3F/128 + 8F/s^2)`` for a backbone ending in ``F`` channels at
  output stride ``s``: the input, the stride-2 stem (64 channels at a quarter of the pixels,
  two live at once), the stride-4 stage (``F/8`` channels at a sixteenth, three live in a
  block) and everything at the output stride (the stage-4 and stage-5 features, the pyramid's
  branches and their concatenation: about eight ``F``-channel maps). A model that does not
  say ``F`` and ``s`` (an export) counts as ``F = 2048``, ``s = 8`` (PSPNet-50, the largest).

Imports only the standard library and :mod:`pspnet.inference` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pspnet.inference.core import default_stride, rescaled_size
from pspnet.inference.options import InferenceOptions

__all__ = ["AUTO_CROP", "MemoryBoundError", "MemoryPlan", "bounded_options", "estimate_bytes"]

log = logging.getLogger(__name__)

#: Tile side of the sliding window a too-large whole-image prediction switches to (the
#: authors' crops are 473 and 713; 512 sits between them).
AUTO_CROP = 512

#: What a model that does not describe itself counts as: PSPNet-50's 2048 features at stride 8.
_DEFAULT_FEATURES = (2048, 8)

#: Classes counted for a model that does not say how many it predicts (ADE20K's 150).
_UNKNOWN_CLASSES = 150

GB = 1e9


class MemoryBoundError(ValueError):
    """A prediction would need more memory than ``InferenceOptions.max_memory`` in every mode."""


@dataclass(frozen=True)
class MemoryPlan:
    """The options a prediction runs with and what they were estimated to need."""

    options: InferenceOptions
    estimate: int
    """Estimated bytes of the chosen options (besides the model and the input)."""
    notice: str = ""
    """One line saying why the mode changed; empty when the options run as given."""


def model_features(model: Any) -> tuple[int, int]:
    """``(F, s)``: the channels of the backbone's last features and its output stride.

    Read from a PSPNet (``model.backbone.out_channels["out"]``, ``model.config.output_stride``),
    also inside an optimised copy (``model.model``); :data:`_DEFAULT_FEATURES` otherwise.
    """
    inner = getattr(model, "model", None)
    for m in (model, inner):
        channels = getattr(getattr(m, "backbone", None), "out_channels", None)
        stride = getattr(getattr(m, "config", None), "output_stride", None)
        if isinstance(channels, dict) and isinstance(channels.get("out"), int) and stride:
            return int(channels["out"]), int(stride)
    return _DEFAULT_FEATURES


def _num_classes(model: Any) -> int:
    inner = getattr(model, "model", None)
    for m in (model, inner):
        n = getattr(getattr(m, "config", None), "num_classes", None) or getattr(
            m, "num_classes", None)
        if isinstance(n, int) and n > 0:
            return n
    return _UNKNOWN_CLASSES


def _activations_per_pixel(features: tuple[int, int]) -> float:
    f, s = features
    return 4.0 * (3 + 32 + 3 * f / 128 + 8 * f / (s * s))


def estimate_bytes(
    opts: InferenceOptions, height: int, width: int, num_classes: int,
    features: tuple[int, int] = _DEFAULT_FEATURES,
) -> int:
    """Estimated bytes a prediction with ``opts`` adds for one ``height`` x ``width`` image.

    Args:
        opts: The prediction's options (mode, scales, flip, crop, stride, batch size).
        height: Image height in pixels.
        width: Image width in pixels.
        num_classes: Classes the model predicts (``C``).
        features: ``(F, s)`` of :func:`model_features`.

    Returns:
        The estimate in bytes (see the module docstring for the terms).
    """
    c, px = num_classes, height * width
    views = [rescaled_size(height, width, s, base_size=opts.base_size, img_scale=opts.img_scale)
             for s in opts.scales]
    view_px = max(h * w for h, w in views)
    n_views = len(views) * (2 if opts.flip and not _tile_flip(opts) else 1)
    resized = any((h, w) != (height, width) for h, w in views)
    total = 4 * c * px if (n_views > 1 or resized) else 0  # the sum over views
    labels = 8 * px  # argmax indices
    if opts.mode == "whole":
        per_view = 8 * c * view_px + _activations_per_pixel(features) * view_px
        return int(total + labels + per_view)
    window = _window_bytes(opts, views, c, features)
    if _labels_path(opts):  # the block-by-block labels: no (C, H, W) tensor at all
        return int(window + px)
    # predict(): each view's (C, h, w) scores, and their softmax at the input size
    return int(total + labels + 8 * c * view_px + window)


def _tile_flip(opts: InferenceOptions) -> bool:
    return opts.mode == "slide" and opts.flip and opts.flip_mode == "crop"


def _labels_path(opts: InferenceOptions) -> bool:
    """Whether file prediction runs these options block by block (``predict_array``)."""
    return opts.mode == "slide" and opts.scales == (1.0,)


def _window_bytes(
    opts: InferenceOptions, views: Sequence[tuple[int, int]], c: int, features: tuple[int, int]
) -> float:
    """A sliding window's own memory: a batch of tiles, their scores, the carried overlap rows
    and one column of tiles (:mod:`pspnet.inference.window`)."""
    ch, cw = opts.crop_size or (AUTO_CROP, AUTO_CROP)
    sh, sw = opts.stride or default_stride((ch, cw))
    widest = max(w for _, w in views)
    # A batch holds at most as many tiles as the largest view has (one, for a small image).
    n_tiles = max(_count(h, ch, sh) * _count(w, cw, sw) for h, w in views)
    batch = min(opts.batch_size, n_tiles) * (2 if _tile_flip(opts) else 1)
    tiles = batch * ch * cw * (3 * 4 * c + _activations_per_pixel(features))
    carry = 4 * c * (ch - sh) * widest
    column = 4 * c * (ch + sh) * cw * 2
    return tiles + carry + column


def _fit_batch(
    opts: InferenceOptions, height: int, width: int, c: int, feats: tuple[int, int], bound: int,
) -> tuple[InferenceOptions, int]:
    """``opts`` with the largest tile batch (halving from ``opts.batch_size``) whose estimate
    fits ``bound``, or batch 1 when none does; and that estimate. The batch changes only how
    many tiles run at once, never the result."""
    batch = opts.batch_size
    while True:
        cand = opts if batch == opts.batch_size else opts.replace(batch_size=batch)
        need = estimate_bytes(cand, height, width, c, feats)
        if need <= bound or batch == 1:
            return cand, need
        batch = max(1, batch // 2)


def _count(length: int, crop: int, stride: int) -> int:
    """Tiles along one side (:func:`pspnet.inference.tile_starts`; one when it fits a crop)."""
    return 1 if length <= crop else -(-(length - crop) // stride) + 1


def bounded_options(
    model: Any, height: int, width: int, num_classes: int | None, opts: InferenceOptions,
) -> MemoryPlan:
    """The options that predict one ``height`` x ``width`` image within ``opts.max_memory``.

    The one decision of the prediction mode by memory (called by
    :func:`pspnet.engine.predict.predict_array`, which ``pspnet predict`` and ``pspnet serve``
    run). A whole-image prediction estimated above the bound becomes a sliding window of
    :data:`AUTO_CROP` pixels when that fits, with a one-line notice (logged, and in
    :attr:`MemoryPlan.notice`).

    Args:
        model: The model (read for :func:`model_features` and ``model.output``).
        height: Image height.
        width: Image width.
        num_classes: Classes the model predicts; None: the model's own (``model.config`` or
            ``model.num_classes``), else :data:`_UNKNOWN_CLASSES`.
        opts: The requested options.

    Raises:
        MemoryBoundError: No mode fits the bound; the message gives the estimate, the bound and
            the fixes.
    """
    bound = opts.max_memory
    c = num_classes or _num_classes(model)
    feats = model_features(model)
    need = estimate_bytes(opts, height, width, c, feats)
    if bound is None or need <= bound:
        return MemoryPlan(opts, need)
    size = f"{width}x{height} image with {c} classes"
    labels_only = getattr(model, "output", None) == "labels"
    tried = ""
    slide = None
    if opts.mode == "whole" and not labels_only:
        crop = (min(AUTO_CROP, max(height, 1)), min(AUTO_CROP, max(width, 1)))
        slide = opts.replace(mode="slide", crop_size=crop, stride=None)
    elif opts.mode == "slide" and not labels_only:
        slide = opts
    if slide is not None:
        slide, slide_need = _fit_batch(slide, height, width, c, feats, bound)
        ch, cw = slide.crop_size or (0, 0)
        if slide_need <= bound:
            notice = (
                f"note: a whole-image pass over this {size} needs about {need / GB:.1f} GB, "
                f"above the {bound / GB:.1f} GB bound (--max-memory-gb); predicting with a "
                f"{ch}x{cw} sliding window instead (--mode slide --crop-size N chooses the "
                "tile)" if opts.mode == "whole" else
                f"note: {opts.batch_size} tiles per pass over this {size} need about "
                f"{need / GB:.1f} GB, above the {bound / GB:.1f} GB bound (--max-memory-gb); "
                f"running {slide.batch_size} per pass instead (--tile-batch)"
            )
            log.info(notice)
            return MemoryPlan(slide, slide_need, notice)
        tried = f" (a {ch}x{cw} sliding window, one tile per pass: about {slide_need / GB:.1f} GB)"
    fixes = ["shrink the image", "raise --max-memory-gb if this machine has the memory"]
    if not labels_only:
        fixes.insert(0, "a smaller --tile-batch or --crop-size with --mode slide")
    if opts.scales != (1.0,) and not labels_only:
        fixes.insert(0, "predict at one scale (--scales 1) with --mode slide, whose memory is "
                        "bounded by the tile and the image width")
    raise MemoryBoundError(
        f"predicting this {size} with mode={opts.mode}, scales={list(opts.scales)}"
        f"{', flip' if opts.flip else ''} needs about {need / GB:.1f} GB{tried}, above the "
        f"{bound / GB:.1f} GB bound (--max-memory-gb). Fixes: " + "; ".join(fixes)
    )
