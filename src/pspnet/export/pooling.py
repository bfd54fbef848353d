"""Shape-generic adaptive pooling: the exact replacement that makes dynamic ONNX exports correct.

PyTorch's ``nn.AdaptiveAvgPool2d`` is recorded by the exporters for the traced feature size
(see :mod:`pspnet.export`). :class:`ExactAdaptivePool2d` computes the same windows from the
*runtime* size with shape-generic ops; :func:`exportable_copy` swaps it in, in a copy only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ExactAdaptivePool2d", "exportable_copy"]


def _windows(length: int | Tensor, bins: int, device: torch.device) -> Tensor:
    """(bins, length) bool: row i marks PyTorch's adaptive window i over ``length`` positions.

    Window i is ``[floor(i * L / b), ceil((i + 1) * L / b))`` (ATen's ``start_index`` /
    ``end_index``). Built from ``arange`` of the runtime length, so it exports dynamically.
    Non-negative integers only: floor and truncating division agree, whatever an exporter uses.
    """
    i = torch.arange(bins, device=device)
    start = (i * length) // bins
    end = ((i + 1) * length + (bins - 1)) // bins
    j = torch.arange(length, device=device)
    return (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])


def _max_over(x: Tensor, bins: int, dim: int) -> Tensor:
    """Adaptive max pooling along one axis (``dim`` = -1 or -2) with symbolic slice bounds."""
    length = x.shape[dim]
    parts = []
    for i in range(bins):
        start = (i * length) // bins
        end = ((i + 1) * length + bins - 1) // bins
        parts.append(x.narrow(dim, start, end - start).amax(dim, keepdim=True))
    return torch.cat(parts, dim)


class ExactAdaptivePool2d(nn.Module):
    """Adaptive average/max pooling that stays correct for every input size after export.

    Computes exactly what ``nn.AdaptiveAvgPool2d`` / ``nn.AdaptiveMaxPool2d`` compute (same
    windows, including overlapping windows when the input is smaller than the output), but with
    ops whose shapes follow the runtime input: ``torch.export`` / ONNX graphs built from it are
    valid at any size. Max pooling is bit-exact; average pooling equals PyTorch up to float
    summation order (~1e-7 relative).

    Args:
        output_size: ``b`` or ``(b_h, b_w)``; ``None`` in a position keeps that input size.
        mode: ``"avg"`` or ``"max"``.
    """

    def __init__(
        self, output_size: int | Sequence[int | None], mode: Literal["avg", "max"] = "avg"
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            size: tuple[int | None, int | None] = (output_size, output_size)
        else:
            size = tuple(output_size)  # type: ignore[assignment]
        if len(size) != 2 or any(b is not None and (not isinstance(b, int) or b < 1) for b in size):
            raise ValueError(f"output_size must be a positive int or a pair, got {output_size!r}")
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        self.output_size = size
        self.mode = mode

    @classmethod
    def from_module(cls, module: nn.Module) -> ExactAdaptivePool2d:
        """The replacement for an ``nn.AdaptiveAvgPool2d`` or ``nn.AdaptiveMaxPool2d``."""
        if isinstance(module, nn.AdaptiveMaxPool2d):
            if module.return_indices:
                raise ValueError("AdaptiveMaxPool2d(return_indices=True) cannot be replaced")
            return cls(module.output_size, "max")  # type: ignore[arg-type]
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return cls(module.output_size, "avg")  # type: ignore[arg-type]
        raise TypeError(f"not an adaptive 2-D pooling module: {type(module).__name__}")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, mode={self.mode!r}"

    def forward(self, x: Tensor) -> Tensor:
        """(..., H, W) -> (..., b_h, b_w)."""
        bh, bw = self.output_size
        if self.mode == "max":
            if bw is not None:
                x = _max_over(x, bw, -1)
            if bh is not None:
                x = _max_over(x, bh, -2)
            return x
        if bw is not None:
            mw = _windows(x.shape[-1], bw, x.device).to(x.dtype)  # (bw, W)
            x = (x @ mw.transpose(0, 1)) / mw.sum(1)  # (..., H, bw)
        if bh is not None:
            mh = _windows(x.shape[-2], bh, x.device).to(x.dtype)  # (bh, H)
            x = (mh @ x) / mh.sum(1)[:, None]  # (..., bh, bw)
        return x


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose adaptive 2-D pooling layers are :class:`ExactAdaptivePool2d`.

    Module replacement on a copy, at export time only: ``model`` itself (and
    :mod:`pspnet.models.ppm`) stay as they are. The copy computes the same function for every
    input size, and so do the graphs exported from it.
    """
    clone = copy.deepcopy(model)
    targets = [
        (name, m)
        for name, m in clone.named_modules()
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    ]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, attr, ExactAdaptivePool2d.from_module(m))
    return clone

