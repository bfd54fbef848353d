"""Training losses: pixel-wise cross-entropy with an ignore label, and PSPNet's deep supervision.

The paper trains with softmax cross-entropy on the final logits plus 0.4 times the same loss on
the auxiliary (stage-4) logits; pixels labelled ``ignore_index`` (255) count nowhere.

Unlike ``F.cross_entropy(..., reduction="mean")``, which divides by the number of labelled
pixels and returns NaN when a batch has none (0 / 0), :func:`cross_entropy` divides by
``max(count, 1)``: a batch whose pixels are all ignored gives a loss of exactly 0 with zero
gradients, so a heavily cropped or padded batch can never poison the weights. With at least one
labelled pixel the value is identical to the mean reduction.

This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cross_entropy", "PSPLoss"]


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over the labelled pixels (0, not NaN, when there are none).

    Args:
        logits: (N, C, H, W) scores (any float dtype; computed in float32).
        target: (N, H, W) integer labels in ``[0, C)`` or ``ignore_index``.
        ignore_index: Label value excluded from the loss.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: Shapes do not fit.
    """
    if logits.dim() != target.dim() + 1 or logits.shape[0] != target.shape[0] or (
        logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not fit: "
            "expected (N, C, H, W) and (N, H, W)"
        )
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum()
    return total / count.clamp(min=1).to(total.dtype)


class PSPLoss(nn.Module):
    """``main + aux_weight * aux`` cross-entropy on a PSPNet's output dict.

    Args:
        aux_weight: Weight of the auxiliary loss (the paper: 0.4).
        ignore_index: Label value excluded from the loss.

    ``forward(outputs, target)`` takes ``{"out": (N, C, H, W), "aux": (N, C, H, W)}`` (``"aux"``
    optional) and returns ``(total, {"main": ..., "aux": ...})``, all float32 scalars; the parts
    are detached. A missing ``"aux"`` reports aux as 0.
    """

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = 255) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)

    def forward(
        self, outputs: Mapping[str, Tensor] | Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Tensor):
            outputs = {"out": outputs}
        main = cross_entropy(outputs["out"], target, self.ignore_index)
        aux_logits = outputs.get("aux")
        if aux_logits is not None and self.aux_weight > 0:
            aux = cross_entropy(aux_logits, target, self.ignore_index)
            total = main + self.aux_weight * aux
        else:
            aux = torch.zeros((), dtype=main.dtype, device=main.device)
            total = main
        return total, {"main": main.detach(), "aux": aux.detach()}

    def extra_repr(self) -> str:
        return f"aux_weight={self.aux_weight}, ignore_index={self.ignore_index}"
