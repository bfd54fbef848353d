"""The PSPNet segmentor: backbone -> PSP head -> bilinear upsampling to the input size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.models.backbone import ResNet
from pspnet.models.heads import FCNHead, PSPHead

__all__ = ["PSPNet"]


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network.

    ``forward`` returns logits at the input resolution, always as a dict: ``{"out": ...}`` and,
    in training mode with an auxiliary head, ``"aux"`` (stage-4 logits, also at input size).
    Losses live in :mod:`pspnet.engine.losses`, never here.

    Any input size works: the logits are resized to exactly (H, W) of the input, so the authors'
    "8n+1" rule is not needed. At 8n+1 sizes with ``align_corners=True`` this is bit-for-bit the
    authors' computation.

    Args:
        backbone: Feature extractor returning ``{"aux": c4, "out": c5}``.
        head: The PSP (or FCN-baseline) head on ``c5``.
        aux_head: Optional auxiliary head on ``c4`` (training only).
        align_corners: Bilinear convention of the final upsampling.
    """

    def __init__(
        self,
        backbone: ResNet,
        head: PSPHead,
        aux_head: FCNHead | None = None,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.align_corners = align_corners

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Segment a batch.

        Args:
            images: (N, 3, H, W) float, normalised (RGB, ImageNet mean/std on the 0..255 scale).

        Returns:
            ``{"out": (N, K, H, W)}``, plus ``"aux": (N, K, H, W)`` in training mode.
        """
        _check_images(images)
        size = images.shape[-2:]
        feats = self.backbone(images)
        out = F.interpolate(
            self.head(feats["out"]), size, mode="bilinear", align_corners=self.align_corners
        )
        result = {"out": out}
        if self.training and self.aux_head is not None:
            result["aux"] = F.interpolate(
                self.aux_head(feats["aux"]), size, mode="bilinear", align_corners=self.align_corners
            )
        return result

    def coarse_logits(self, images: Tensor) -> Tensor:
        """The logits before the final upsampling: (N, K, ceil(H/s), ceil(W/s)) at stride s.

        ``forward(images)["out"]`` is ``F.interpolate(coarse_logits(images), (H, W),
        mode="bilinear", align_corners=self.align_corners)``. Inference paths that want the
        full-size logits in another dtype or layout than the network's convert these (small)
        ones first and upsample once, instead of converting a full-size copy.
        """
        _check_images(images)
        return self.head(self.backbone(images)["out"])


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        hint = " add a batch dimension with images.unsqueeze(0)." if images.dim() == 3 else ""
        raise ValueError(
            f"expected images of shape (N, 3, H, W), got {tuple(images.shape)};{hint}"
        )
