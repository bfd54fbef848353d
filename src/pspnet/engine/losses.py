"""Training losses: pixel-wise cross-entropy with an ignore label, and PSPNet's deep supervision.

The paper trains with softmax cross-entropy on the final logits plus 0.4 times the same loss on
the auxiliary (stage-4) logits; pixels labelled ``ignore_index`` (255) count nowhere.

Unlike ``F.cross_entropy(..., reduction="mean")``, which divides by the number of labelled
pixels and returns NaN when a batch has none (0 / 0), :func:`cross_entropy` divides by
``max(count, 1)``: a batch whose pixels are all ignored gives a loss of exactly 0 with zero
gradients, so a heavily cropped or padded batch can never poison the weights. With at least one
labelled pixel the value is identical to the mean reduction.

Class weighting (``train.class_weights``) re-weights each labelled pixel by its class's weight;
the mean is then taken over the weights (what ``F.cross_entropy(weight=..., reduction="mean")``
does), so the loss stays on the same scale. :func:`class_weights_from_counts` turns the training
set's per-class pixel counts into weights: ``enet`` (Paszke et al., 2016: ``1 / ln(1.02 + p)``,
bounded at ~50, the usual choice for CamVid from scratch) or ``median_freq`` (Eigen & Fergus,
SegNet: ``median(p) / p``).

This module imports only torch and numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cross_entropy", "PSPLoss", "class_weights_from_counts", "CLASS_WEIGHTINGS"]

#: Names accepted by :func:`class_weights_from_counts` (and ``train.class_weights``).
CLASS_WEIGHTINGS = ("enet", "median_freq")


def cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy over the labelled pixels (0, not NaN, when there are none).

    Args:
        logits: (N, C, H, W) scores (any float dtype; computed in float32).
        target: (N, H, W) integer labels in ``[0, C)`` or ``ignore_index``.
        ignore_index: Label value excluded from the loss.
        weight: Optional (C,) per-class weights; the mean is then weighted (divided by the sum
            of the labelled pixels' weights, as ``F.cross_entropy`` does).

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
    if weight is not None and weight.shape != (logits.shape[1],):
        raise ValueError(
            f"class weights have shape {tuple(weight.shape)}, expected ({logits.shape[1]},)"
        )
    target = target.long()
    valid = target != ignore_index
    if weight is None:
        total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        count = valid.sum().to(total.dtype)
    else:
        weight = weight.to(device=logits.device, dtype=torch.float32)
        total = F.cross_entropy(
            logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum"
        )
        # Sum of the labelled pixels' weights (ignored pixels index class 0 but are masked out).
        count = (weight[target.clamp(0, logits.shape[1] - 1)] * valid).sum()
    return total / count.clamp(min=1e-12) if weight is not None else total / count.clamp(min=1)


def class_weights_from_counts(counts: np.ndarray | list[int], method: str) -> list[float]:
    """Per-class loss weights from the training set's pixel counts.

    Args:
        counts: (C,) labelled pixels per class.
        method: ``enet`` (``1 / ln(1.02 + p)``, p the class's pixel fraction) or
            ``median_freq`` (``median(p) / p`` over the classes present).

    Returns:
        C positive floats. A class with no pixels gets weight 1.0 (it cannot contribute to
        the loss anyway, and a huge weight would only matter if it appeared at test time).

    Raises:
        ValueError: Unknown method, or no labelled pixels at all.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.sum() <= 0:
        raise ValueError("class weights need per-class pixel counts with at least one pixel")
    p = c / c.sum()
    present = c > 0
    if method == "enet":
        w = 1.0 / np.log(1.02 + p)
    elif method == "median_freq":
        w = np.ones_like(p)
        w[present] = np.median(p[present]) / p[present]
    else:
        raise ValueError(
            f"unknown class weighting {method!r}; choose one of {list(CLASS_WEIGHTINGS)}")
    w[~present] = 1.0
    return [float(v) for v in w]


class PSPLoss(nn.Module):
    """``main + aux_weight * aux`` cross-entropy on a PSPNet's output dict.

    Args:
        aux_weight: Weight of the auxiliary loss (the paper: 0.4).
        ignore_index: Label value excluded from the loss.
        class_weights: Optional per-class weights for both losses.

    ``forward(outputs, target)`` takes ``{"out": (N, C, H, W), "aux": (N, C, H, W)}`` (``"aux"``
    optional) and returns ``(total, {"main": ..., "aux": ...})``, all float32 scalars; the parts
    are detached. A missing ``"aux"`` reports aux as 0.
    """

    def __init__(
        self,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        class_weights: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.class_weights: Tensor | None = (
            torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        )

    def forward(
        self, outputs: Mapping[str, Tensor] | Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Tensor):
            outputs = {"out": outputs}
        main = cross_entropy(outputs["out"], target, self.ignore_index, self.class_weights)
        aux_logits = outputs.get("aux")
        if aux_logits is not None and self.aux_weight > 0:
            aux = cross_entropy(aux_logits, target, self.ignore_index, self.class_weights)
            total = main + self.aux_weight * aux
        else:
            aux = torch.zeros((), dtype=main.dtype, device=main.device)
            total = main
        return total, {"main": main.detach(), "aux": aux.detach()}

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return (f"aux_weight={self.aux_weight}, ignore_index={self.ignore_index}, "
                f"weighted={weighted}")
