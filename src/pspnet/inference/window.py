"""The sliding window: overlapping tiles averaged by a count map, in bounded memory.

:func:`predict_sliding` returns (N, C, H, W) scores. Underneath, :func:`_slide_blocks` hands
out finished blocks of one image strip by strip, so the labels-only path
(:mod:`pspnet.inference.labels`) never holds a (C, H, W) tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pspnet.inference.core import (
    _check_eval, _check_images, _labels_refusal, _model_device_dtype, _pad_image, _returns_labels,
    _tile_pads, _tile_scores, default_stride, tile_starts,
)
from pspnet.inference.options import InferenceOptions, resolve_options

__all__ = ["predict_sliding"]

#: Widest block the sliding window hands out (bounds the consumer's temporaries to
#: C x (crop_h + stride_h) x 64).
_YIELD_COLS = 64

#: A finished block: rows [r0, r1) and columns [c0, c1) of the image and their (C, rows, cols)
#: scores.
Block = tuple[int, int, int, int, Tensor]


@dataclass(frozen=True)
class _Window:
    """Validated options of one sliding-window run plus what its caller decided.

    ``tile_flip``: every crop is also run mirrored inside the tile (semseg's flip), which is
    ``opts.flip`` only in ``flip_mode="crop"``; an image flip is a separate view instead.
    """

    opts: InferenceOptions
    crop: tuple[int, int]
    tile_flip: bool
    acc_device: torch.device | None
    num_classes: int | None


def _window(
    opts: InferenceOptions, *, tile_flip: bool, acc_device: torch.device | None,
    num_classes: int | None,
) -> _Window:
    """Check what a sliding window needs beyond the options themselves.

    Raises:
        ValueError: No ``crop_size``, or a bad ``num_classes``.
    """
    if opts.crop_size is None:
        raise ValueError("a sliding window needs crop_size (--crop-size N), got None")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    return _Window(opts, opts.crop_size, bool(tile_flip), acc_device, num_classes)


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
    model: nn.Module, padded: Tensor, tiles: list[tuple[int, int]], win: _Window,
    crop: tuple[int, int], mirrored: bool,
) -> Iterator[Tensor]:
    """Scores (C, ch, cw) float32 of ``tiles`` of ``padded``, in order, ``batch_size`` per pass.

    With ``mirrored`` every crop is run mirrored and its scores mirrored back: the tile of the
    mirrored image at the mirrored position, seen the right way round.
    """
    ch, cw = crop
    opts = win.opts
    acc_device = win.acc_device or padded.device
    for start in range(0, len(tiles), opts.batch_size):
        batch = tiles[start : start + opts.batch_size]
        crops = torch.cat([padded[:, :, y : y + ch, x : x + cw] for y, x in batch])  # (B,3,ch,cw)
        if mirrored:
            crops = crops.flip(-1)
        scores = _tile_scores(
            model,
            crops,
            flip=win.tile_flip,
            average=opts.average,
            precision=opts.precision,
            align_corners=bool(opts.align_corners),
        ).to(acc_device)  # (B, C, ch, cw)
        del crops
        if mirrored:
            scores = scores.flip(-1)
        c = scores.shape[1]
        if win.num_classes is not None and c != win.num_classes:
            raise ValueError(f"num_classes={win.num_classes} but the model returned {c} channels")
        yield from scores
        del scores


@dataclass
class _Grid:
    """The padded image of one sliding-window run and its tile grid."""

    padded: Tensor
    top: int
    left: int
    h: int
    w: int
    crop: tuple[int, int]
    strips: list[list[int]]
    xs: list[int]
    rows_cover: Tensor  # (hp,): how many tile rows cover each padded row
    cols_cover: Tensor  # (wp,): how many tile columns cover each padded column


def _grid(image: Tensor, win: _Window, mirrored: bool) -> _Grid:
    """Pad ``image`` (1, 3, H, W) and lay out its tiles (see :func:`_slide_blocks`)."""
    opts = win.opts
    _, _, h, w = image.shape
    ch, cw = win.crop
    if opts.pad_mode == "none":
        # mmseg: an image smaller than the crop is decoded as one smaller patch, unpadded.
        ch, cw = min(ch, h), min(cw, w)
    sh, sw = opts.stride if opts.stride is not None else default_stride((ch, cw))
    sh, sw = min(sh, ch), min(sw, cw)  # a crop shrunk by pad_mode='none' keeps full coverage
    top, left, pad_h, pad_w = _tile_pads(h, w, (ch, cw), opts.pad_mode)
    if mirrored:
        left = pad_w - left  # the mirrored image's left padding is on the right
    padded = _pad_image(image, (top, pad_h - top, left, pad_w - left), opts.pad_value)
    hp, wp = padded.shape[-2:]
    ys = tile_starts(hp, ch, sh)
    xs = tile_starts(wp, cw, sw)
    if mirrored:
        xs = [wp - cw - x for x in reversed(xs)]
    # The count map is separable (every tile row holds the same columns), so keep two vectors
    # instead of an (H, W) map: count[y, x] = rows_cover[y] * cols_cover[x].
    acc_device = win.acc_device or image.device
    rows_cover = torch.zeros(hp, dtype=torch.float32, device=acc_device)
    cols_cover = torch.zeros(wp, dtype=torch.float32, device=acc_device)
    for y in ys:
        rows_cover[y : y + ch] += 1
    for x in xs:
        cols_cover[x : x + cw] += 1
    return _Grid(padded, top, left, h, w, (ch, cw), _strips(ys, ch, sh), xs, rows_cover,
                 cols_cover)


def _column(scores: Iterator[Tensor], strip: list[int], rows: int, cw: int) -> Tensor:
    """The next column of ``strip``'s tiles summed into (C, rows, cw) (rows: the strip's)."""
    col: Tensor | None = None
    for y in strip:
        s = next(scores)
        if len(strip) == 1:
            col = s  # used once: summed into in place (no zero-filled copy)
        else:
            if col is None:
                col = s.new_zeros((s.shape[0], rows, cw))
            col[:, y - strip[0] : y - strip[0] + s.shape[1]] += s
        del s  # the last tile of a batch would keep the whole batch alive
    if col is None:
        raise RuntimeError("a strip without tile rows")  # a bug: strips are never empty
    return col


def _carry_down(carry: Tensor | None, block: Tensor, rows: tuple[int, int], cols: tuple[int, int],
                width: int) -> Tensor:
    """Store ``block``'s rows ``[done, done + n)`` for the next strip in ``carry`` (C, >=n, W)."""
    done, n = rows
    x, end = cols
    if carry is None or carry.shape[1] < n:
        # Allocated once in practice: every strip but the last carries the same rows.
        grown = block.new_zeros((block.shape[0], n, width))
        if carry is not None:
            grown[:, : carry.shape[1]] = carry
        carry = grown
    carry[:, :n, x:end] = block[:, done:]
    return carry


def _slide_blocks(
    model: nn.Module, image: Tensor, win: _Window, *, mirrored: bool = False
) -> Iterator[Block]:
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
        (probabilities or logits per ``opts.average``). Each strip's blocks cover its rows for
        the full width, left to right, at most ``_YIELD_COLS`` columns each; strips come top
        to bottom.
    """
    g = _grid(image, win, mirrored)
    (ch, cw), strips, xs = g.crop, g.strips, g.xs
    hp, wp = g.padded.shape[-2:]
    tiles = [(y, x) for strip in strips for x in xs for y in strip]
    scores = _scored_tiles(model, g.padded, tiles, win, (ch, cw), mirrored)
    carry: Tensor | None = None  # (C, rows, wp): sums carried down to the next strip
    carry_rows = 0
    for k, strip in enumerate(strips):
        s_top, s_bottom = strip[0], strip[-1] + ch
        next_top = strips[k + 1][0] if k + 1 < len(strips) else hp
        done_rows, new_carry_rows = next_top - s_top, s_bottom - next_top
        # Image rows finished by this strip, relative to the strip's top (padding dropped).
        out_r0, out_r1 = max(s_top, g.top) - s_top, min(next_top, g.top + g.h) - s_top
        leftover: Tensor | None = None  # (C, strip rows, n): columns [x, x + n) already summed
        for j, x in enumerate(xs):
            col = _column(scores, strip, s_bottom - s_top, cw)  # (C, s_bottom - s_top, cw)
            if leftover is not None:
                col[:, :, : leftover.shape[-1]] += leftover
            end = xs[j + 1] if j + 1 < len(xs) else wp  # columns left of the next tile column
            leftover = col[:, :, end - x :].clone()
            block = col[:, :, : end - x]  # (C, strip rows, end - x): final for this strip
            if carry_rows:
                block[:, :carry_rows] += carry[:, :carry_rows, x:end]  # type: ignore[index]
            if new_carry_rows:
                carry = _carry_down(carry, block, (done_rows, new_carry_rows), (x, end), wp)
            c0, c1 = max(x, g.left), min(end, g.left + g.w)
            if out_r1 > out_r0 and c1 > c0:
                yield from _split_block(g, block, s_top, (out_r0, out_r1), (c0, c1), x)
            del col, block
        carry_rows = new_carry_rows


def _split_block(g: _Grid, block: Tensor, s_top: int, out_rows: tuple[int, int],
                 cols: tuple[int, int], x: int) -> Iterator[Block]:
    """Average ``block``'s finished part and hand it out in narrow image-space blocks.

    Args:
        g: The grid (tile counts, padding offsets).
        block: (C, strip rows, n) sums of padded columns ``[x, x + n)`` of the strip at
            padded row ``s_top``.
        out_rows: The image rows it finishes, relative to ``s_top``.
        cols: The padded columns ``[c0, c1)`` of the image it finishes.
    """
    out_r0, out_r1 = out_rows
    c0, c1 = cols
    # Small column blocks keep the consumer's softmax / argmax temporaries small.
    for b0 in range(c0, c1, _YIELD_COLS):
        b1 = min(b0 + _YIELD_COLS, c1)
        count = (
            g.rows_cover[s_top + out_r0 : s_top + out_r1, None] * g.cols_cover[None, b0:b1]
        )  # (rows, cols)
        part = block[:, out_r0:out_r1, b0 - x : b1 - x] / count
        yield s_top + out_r0 - g.top, s_top + out_r1 - g.top, b0 - g.left, b1 - g.left, part


def _sum_views(
    streams: Sequence[Iterator[Block]],
) -> Iterator[Block]:
    """Blocks of several :func:`_slide_blocks` streams of one image, summed pixel by pixel.

    The streams cover the same strips in the same order but may cut columns differently (a
    mirrored view has a mirrored tile grid); each yielded block is the overlap of the streams'
    current blocks, so only one block per stream is ever pending.
    """
    if len(streams) == 1:
        yield from streams[0]
        return
    pending: list[Block | None] = [None] * len(streams)
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
    blocks: Iterator[Block], average: str
) -> Iterator[Block]:
    """Blocks of averaged scores as probabilities (softmax over classes for averaged logits)."""
    for r0, r1, c0, c1, scores in blocks:
        yield r0, r1, c0, c1, scores.softmax(dim=0) if average == "logit" else scores




def predict_sliding(model: nn.Module, images: Tensor, options: InferenceOptions | None = None,
                    *, num_classes: int | None = None, **overrides: Any) -> Tensor:
    """Sliding-window inference with overlapping tiles averaged by a count map.

    Each image is padded to at least the crop size, covered by a grid of tiles
    (:func:`tile_starts`: stride steps, the last tile aligned to the border), the tiles are run
    ``batch_size`` at a time, their softmax (or logits) summed and divided by how many tiles
    cover each pixel, and the padding is cropped away. ``mode``, ``scales`` and the resizing
    options are not used here (see :func:`pspnet.inference.predict`).

    Memory: besides the padded image and one batch of crop activations, only float32 sums of
    the ``crop_h - stride_h`` rows where tile rows overlap (C x that x W) and one column of
    tiles are held, plus the (N, C, H, W) result in ``accumulate_dtype``. For a 6000x4000 image
    with 11 classes the fp32 result is ~1 GB; ``accumulate_dtype=torch.float16`` halves it
    (overlaps are still summed in float32, only the finished average is rounded), and
    :func:`pspnet.inference.predict_labels_tiled` avoids it.

    Args:
        model: Segmentation model in eval mode.
        images: Normalised (N, 3, H, W) float batch; moved to the model's device.
        options: The settings (:class:`InferenceOptions`; ``crop_size`` required); ``flip``
            here mirrors every crop (semseg's per-crop flip) whatever ``flip_mode`` says.
        num_classes: Expected channel count (checked); inferred from the model when None.
        **overrides: :class:`InferenceOptions` fields, applied on top of ``options`` (or of the
            defaults), e.g. ``crop_size=473, stride=316``.

    Returns:
        (N, C, H, W) averaged probabilities (``average="prob"``) or logits.

    Raises:
        RuntimeError: The model is in training mode.
        ValueError: Bad sizes or options, or ``num_classes`` disagrees with the model.
    """
    opts = resolve_options(options, overrides)
    _check_eval(model)
    _check_images(images)
    if _returns_labels(model):
        raise _labels_refusal(model, "a sliding window (--mode slide, --crop-size)")
    win = _window(opts, tile_flip=opts.flip, acc_device=opts.accumulate_device,
                  num_classes=num_classes)
    return _sliding(model, images, win)


def _sliding(model: nn.Module, images: Tensor, win: _Window, *, mirrored: bool = False) -> Tensor:
    """:func:`predict_sliding` for a checked window; ``mirrored``: see :func:`_slide_blocks`."""
    device, dtype = _model_device_dtype(model, images.device)
    n_img = images.shape[0]
    out: Tensor | None = None
    with torch.no_grad():
        for n in range(n_img):
            image = images[n : n + 1].to(device=device, dtype=dtype or images.dtype)  # (1,3,H,W)
            h, w = image.shape[-2:]
            for r0, r1, c0, c1, scores in _slide_blocks(model, image, win, mirrored=mirrored):
                if out is None:
                    out = torch.empty(
                        (n_img, scores.shape[0], h, w), dtype=win.opts.accumulate_dtype,
                        device=scores.device,
                    )
                out[n, :, r0:r1, c0:c1] = scores
    if out is None:  # only reachable with N == 0
        raise ValueError("images is an empty batch")
    return out
