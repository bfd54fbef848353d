"""Class labels of bilinearly upsampled logits, computed at the logits' own resolution.

The labels paths (``predict``, ``evaluate``, ``serve``) want ``argmax`` over the classes of
``F.interpolate(coarse, (H, W), mode="bilinear")``; the network computes ``coarse`` at 1/8 of the
input's side. Upsampling every class first writes and reads C x H x W values (67 MB for 150
classes at 473x473 in bf16): on a 2-core AMX Xeon, 22 ms of upsampling inside a compiled bf16
pspnet50 and 18 ms of argmax after it, a fifth of the network's time. Most of it decides
nothing: bilinear interpolation is a convex combination of the four coarse corners of a cell,
so where one class leads at all four corners by more than the rounding can take away, it
leads at every pixel between them. Only the cells where the corners disagree, or lead by a
hair, need interpolated values, and only for the classes that can still win there.

:func:`labels_from_coarse` gives the labels of the logits that inductor's (``torch.compile``,
CPU) upsampling computes, exactly: the same float32 arithmetic in the same order (the
decomposition ``torch._decomp.decompositions._upsample_linear``: source indices in float32,
``v0 + (v1 - v0) * lambda`` along the width, then along the height; inductor's C++ is compiled
without floating-point contraction), rounded to the logits' dtype, then the first maximum as
``max(dim=1).indices`` takes it. ``tests/models/test_labels.py`` checks the labels against a
compiled ``F.interpolate`` followed by that max, ties and near-ties included.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bilinear_as_compiled", "labels_from_coarse"]

# Significand bits (with the implicit one) of the dtypes whose rounding the bound allows for.
_SIGNIFICAND_BITS = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}


def _source(out_size: int, in_size: int, align_corners: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per output position: the lower source index, the upper one and the weight of the upper.

    float32 throughout, as inductor evaluates the decomposition (the scale is a Python float
    that becomes a float32 constant in the generated code).
    """
    i = torch.arange(out_size, dtype=torch.float32)
    if align_corners:
        x = ((in_size - 1.0) / (out_size - 1.0) if out_size > 1 else 0.0) * i
    else:
        x = (in_size / out_size) * (i + 0.5) - 0.5
    x = x.clamp(min=0.0)
    x0 = x.to(torch.int64)
    x1 = (x0 + 1).clamp(max=in_size - 1)
    return x0, x1, (x - x0).clamp(0.0, 1.0)


def bilinear_as_compiled(coarse: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """``F.interpolate(coarse, size, mode="bilinear")`` as inductor computes it, in eager ops.

    Bitwise what a compiled graph returns on the CPU (checked by the tests), for when the
    compiled graph could not run (dynamo past its recompile limit). Full size, so slow: every
    class upsampled in several passes.

    Returns:
        (N, C, H, W) in ``coarse``'s dtype.
    """
    y0, y1, wy = _source(size[0], coarse.shape[-2], align_corners)
    x0, x1, wx = _source(size[1], coarse.shape[-1], align_corners)
    c = coarse.float()
    r0, r1 = c[:, :, y0], c[:, :, y1]  # (N, C, H, w)
    top = r0[..., x0] + (r0[..., x1] - r0[..., x0]) * wx
    bottom = r1[..., x0] + (r1[..., x1] - r1[..., x0]) * wx
    return (top + (bottom - top) * wy[:, None]).to(coarse.dtype)


def _ulp(magnitude: float, bits: int) -> float:
    """The spacing of a ``bits``-bit significand just below ``magnitude`` (at least 2**-100)."""
    return 2.0 ** (math.floor(math.log2(max(magnitude, 2.0**-100))) - bits + 1)


def _spans(x0: Tensor, cells: int) -> tuple[Tensor, Tensor, int]:
    """First output position and number of positions per source cell, and the largest number.

    ``x0`` never decreases along the output, so each cell's positions are one run.
    """
    count = torch.bincount(x0, minlength=cells)
    return torch.cumsum(count, 0) - count, count, int(count.max())


def _cell_positions(
    start: Tensor, count: Tensor, span: int, weight: Tensor, cells: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(U, span) output positions of the given cells, which of them exist, and their weights."""
    d = torch.arange(span)
    valid = d < count[cells][:, None]
    pos = torch.where(valid, start[cells][:, None] + d, 0)
    return pos, valid, weight[pos]


def labels_from_coarse(
    coarse: Tensor, size: tuple[int, int], align_corners: bool, *, max_work: int | None = None,
) -> Tensor | None:
    """``max(dim=1).indices`` of the bilinear upsampling of ``coarse`` to ``size``, without it.

    Args:
        coarse: (N, C, h, w) float32, bf16 or fp16 logits on the CPU, any memory format
            (channels-last is read without a copy).
        size: The output (H, W).
        align_corners: The upsampling's convention.
        max_work: Give up (return None) when the undecided cells would need more than this
            many interpolated values; default ``C * H * W // 12`` per image, beyond which
            upsampling everything is the cheaper way. Near-constant logits (an untrained
            network) get there.

    Returns:
        (N, H, W) int64 labels, or None when this way does not apply (values that are not
        finite, or too much work): the caller then upsamples and takes the argmax.
    """
    n, c, h, w = coarse.shape
    out_h, out_w = size
    bits = _SIGNIFICAND_BITS.get(coarse.dtype)
    if bits is None or coarse.device.type != "cpu":
        return None
    rows = coarse.permute(0, 2, 3, 1).float().contiguous()  # (N, h, w, C): a class vector per row
    magnitude = float(rows.abs().amax()) if rows.numel() else 0.0
    if not math.isfinite(magnitude):
        return None
    # A lead larger than this survives the float32 arithmetic (a few float32 ulps of the
    # largest value) and the rounding to the logits' dtype (one ulp of it) with room to spare:
    # the leader's rounded value stays strictly above every other class's.
    delta = 4 * _ulp(2 * magnitude, bits) + 64 * _ulp(2 * magnitude, 24)
    if c > 1:
        top2, top_idx = rows.topk(2, dim=-1)  # (N, h, w, 2)
        sure = (top2[..., 0] - top2[..., 1]) > delta
        leader = top_idx[..., 0]  # the first maximum wherever ``sure`` (the maximum is unique)
    else:
        leader = torch.zeros((n, h, w), dtype=torch.int64)
        sure = torch.ones((n, h, w), dtype=torch.bool)
    r1 = (torch.arange(h) + 1).clamp(max=h - 1)
    c1 = (torch.arange(w) + 1).clamp(max=w - 1)
    # Cell (i, j) spans corners (i, j), (i, j1), (i1, j), (i1, j1); a pixel's cell is (y0, x0).
    lead_r, sure_r = leader[:, r1], sure[:, r1]
    decided = (sure & sure[:, :, c1] & sure_r & sure_r[:, :, c1]
               & (leader == leader[:, :, c1]) & (leader == lead_r) & (leader == lead_r[:, :, c1]))
    y0, _, wy = _source(out_h, h, align_corners)
    x0, _, wx = _source(out_w, w, align_corners)
    labels = leader[:, y0][:, :, x0]  # (N, H, W): right wherever the cell is decided
    cells = (~decided).view(-1).nonzero().squeeze(1)  # flat (n * h + i) * w + j
    u = cells.shape[0]
    if u == 0:
        return labels
    row_start, row_count, span_h = _spans(y0, h)
    col_start, col_count, span_w = _spans(x0, w)
    budget = max_work if max_work is not None else n * c * out_h * out_w // 12
    # An undecided cell has at least two candidates: give up before gathering if even that
    # is too much.
    if 2 * u * span_h * span_w > budget:
        return None
    cj, ci, cn = cells % w, (cells // w) % h, cells // (h * w)
    corners = torch.stack([cells, (cn * h + ci) * w + c1[cj], (cn * h + r1[ci]) * w + cj,
                           (cn * h + r1[ci]) * w + c1[cj]])  # (4, U)
    vals = rows.view(-1, c)[corners.view(-1)].view(4, u, c)  # (4 corners, U cells, C)
    # A class can win somewhere in the cell only if its largest corner value reaches the
    # smallest value the cell's maximum can take (the best of the classes' smallest corners).
    floor = vals.amin(0).amax(1, keepdim=True)  # (U, 1)
    pairs = (vals.amax(0) >= floor - delta).view(-1).nonzero().squeeze(1)  # u * C + k, by cell
    pair_cell, pair_class = pairs // c, pairs % c
    if pairs.shape[0] * span_h * span_w > budget:
        return None
    ypos, yvalid, wyc = _cell_positions(row_start, row_count, span_h, wy, ci)  # (U, span_h)
    xpos, xvalid, wxc = _cell_positions(col_start, col_count, span_w, wx, cj)  # (U, span_w)
    v00, v01, v10, v11 = vals.view(4, -1)[:, pairs][..., None]  # 4 x (P, 1)
    wxp = wxc[pair_cell]  # (P, span_w)
    top = v00 + (v01 - v00) * wxp
    bottom = v10 + (v11 - v10) * wxp
    value = top[:, None] + (bottom - top)[:, None] * wyc[pair_cell][:, :, None]  # (P, sh, sw)
    # The network's rounding, then +0.0 so that -0.0 and 0.0 compare equal as floats do.
    value = value.to(coarse.dtype).float() + 0.0
    # One max per pixel: the value's order-preserving integer above the reversed class index,
    # so equal values go to the lower class, as max(dim=1).indices does.
    bits32 = value.view(torch.int32)
    order = torch.where(bits32 < 0, bits32 ^ 0x7FFFFFFF, bits32).to(torch.int64)
    key = (order << 32) | (c - 1 - pair_class)[:, None, None]
    best = torch.full((u, span_h * span_w), torch.iinfo(torch.int64).min).scatter_reduce(
        0, pair_cell[:, None].expand(-1, span_h * span_w), key.view(len(pairs), -1), "amax")
    winner = (c - 1) - (best & 0xFFFFFFFF)  # (U, span_h * span_w)
    valid = (yvalid[:, :, None] & xvalid[:, None, :]).view(u, -1)
    pixel = ((cn[:, None, None] * out_h + ypos[:, :, None]) * out_w + xpos[:, None, :]).view(u, -1)
    labels.view(-1)[pixel[valid]] = winner[valid]
    return labels
