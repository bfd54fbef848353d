"""The pyramid pooling module (PSPNet, Sec. 3.3)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PyramidPooling", "PoolingBranch"]


class PoolingBranch(nn.Module):
    """Pool to ``bin x bin``, 1x1 conv, BN, ReLU.

    Args:
        in_channels: Channels of the input features.
        out_channels: Channels after the 1x1 conv (the paper's dimension reduction).
        bin_size: Output size of the pooling.
        pooling: ``"avg"`` (the paper's best) or ``"max"``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, bin_size: int, pooling: Literal["avg", "max"]
    ) -> None:
        super().__init__()
        self.bin_size = bin_size
        if pooling == "avg":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(bin_size)
        elif pooling == "max":
            self.pool = nn.AdaptiveMaxPool2d(bin_size)
        else:
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(self.pool(x))))  # (N, out, bin, bin)


class PyramidPooling(nn.Module):
    """Pool the features at several scales, reduce, upsample and concatenate with the input.

    The output is ``[x, branch(bin_1), ..., branch(bin_k)]`` along channels, in the order of
    ``bins`` (the authors' order; the Caffe models concatenate in reverse).

    Two pitfalls are handled here rather than left to surprise the user:
    BatchNorm on a 1x1 pooled map cannot train on one sample per device (PyTorch's error would
    not say why), and adaptive pooling is traced for one input size by exporters (see
    :mod:`pspnet.export`).

    Args:
        in_channels: Channels of the input features (C).
        bins: Pooling output sizes, (1, 2, 3, 6) in the paper.
        branch_channels: Channels per branch; None means ``C // len(bins)``.
        pooling: ``"avg"`` or ``"max"``.
        align_corners: Bilinear upsampling convention.
    """

    def __init__(
        self,
        in_channels: int,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        branch_channels: int | None = None,
        pooling: Literal["avg", "max"] = "avg",
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if branch_channels is None:
            if in_channels % len(bins):
                raise ValueError(
                    f"{in_channels} channels cannot be split evenly over {len(bins)} bins; "
                    "pass ppm_channels explicitly"
                )
            branch_channels = in_channels // len(bins)
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            PoolingBranch(in_channels, branch_channels, b, pooling) for b in bins
        )
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, C + k * branch_channels, h, w)."""
        if self.training and x.shape[0] == 1 and any(b.bin_size == 1 for b in self.branches):
            raise ValueError(
                "pyramid pooling cannot train on a batch of 1: BatchNorm after the 1x1 pooled "
                "map sees a single value per channel. Use a batch size of at least 2 per device "
                "(or SyncBatchNorm across devices), or call model.eval() for inference."
            )
        size = x.shape[-2:]
        outs = [x]
        for branch in self.branches:
            y = branch(x)
            outs.append(F.interpolate(y, size, mode="bilinear", align_corners=self.align_corners))
        return torch.cat(outs, dim=1)
