"""Segmentation heads: the PSP head (pyramid pooling + fusion) and the FCN auxiliary head."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from pspnet.models.ppm import PyramidPooling

__all__ = ["PSPHead", "FCNHead"]


class FCNHead(nn.Module):
    """3x3 conv, BN, ReLU, Dropout2d, 1x1 classifier.

    Used as the auxiliary head on stage 4 (256 channels in the paper) and, behind a pyramid, as
    the fusion part of :class:`PSPHead`.

    Args:
        in_channels: Input channels.
        num_classes: Output classes.
        channels: Width of the 3x3 conv.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in, h, w) -> logits (N, num_classes, h, w)."""
        return self.classifier(self.dropout(self.relu(self.bn(self.conv(x)))))


class PSPHead(FCNHead):
    """Pyramid pooling, then the 3x3 fusion conv and the classifier.

    With ``use_ppm=False`` this is the paper's dilated-FCN baseline: the same fusion conv applied
    to the backbone features alone.

    Args:
        in_channels: Channels of the backbone's last stage (2048 for ResNet-50).
        num_classes: Output classes.
        bins: Pyramid bin sizes.
        pooling: ``"avg"`` or ``"max"``.
        ppm_channels: Channels per pyramid branch (None: ``in_channels // len(bins)``).
        channels: Width of the fusion conv (512 in the paper).
        dropout: Dropout2d probability before the classifier.
        use_ppm: Build the pyramid (False gives the FCN baseline).
        align_corners: Bilinear convention inside the pyramid.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        pooling: Literal["avg", "max"] = "avg",
        ppm_channels: int | None = None,
        channels: int = 512,
        dropout: float = 0.1,
        use_ppm: bool = True,
        align_corners: bool = True,
    ) -> None:
        ppm = (
            PyramidPooling(in_channels, bins, ppm_channels, pooling, align_corners)
            if use_ppm
            else None
        )
        super().__init__(ppm.out_channels if ppm else in_channels, num_classes, channels, dropout)
        # Registered after FCNHead's layers; state-dict keys do not depend on the order.
        self.ppm = ppm

    def forward(self, x: Tensor) -> Tensor:
        """(N, in, h, w) -> logits (N, num_classes, h, w)."""
        if self.ppm is not None:
            x = self.ppm(x)
        return super().forward(x)
