"""Semantic-segmentation metrics from a confusion matrix.

Everything here is derived from one integer ``(K, K)`` confusion matrix (rows = ground truth,
columns = prediction), so results accumulated over batches, processes or machines are exact:
counts add, ratios do not.

Two conventions for classes that never occur are offered, because published numbers differ on
it (see :meth:`ConfusionMatrix.compute`):

* ``"nan"`` (default): a class absent from both the ground truth and the prediction has an
  undefined IoU (NaN) and is left out of the mean; its accuracy is NaN when it is absent from
  the ground truth. mmseg (``np.nanmean`` over ``intersect / union``) reports this.
* ``"semseg"``: the PSPNet authors' evaluation (``hszhao/semseg``, ``util/util.py``
  ``intersectionAndUnion`` followed by ``intersection / (union + 1e-10)``): every ratio gets
  ``1e-10`` added to its denominator, so absent classes score 0 and still count in the mean.

This module imports only the standard library, numpy and torch; the confusion-matrix picture
(:func:`save_confusion_png`) is drawn by :mod:`pspnet.report.charts` and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from pspnet.report.charts import save_confusion_png

__all__ = [
    "ConfusionMatrix",
    "SegMetrics",
    "metrics_from_confusion",
    "save_confusion_png",
]

Convention = Literal["nan", "semseg"]

#: The authors' denominator guard (hszhao/semseg tool/test.py ``cal_acc``).
_SEMSEG_EPS = 1e-10


def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN (not a RuntimeWarning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_float(value: float) -> float | None:
    """Python float, with NaN/inf written as None so ``json.dumps`` emits valid JSON."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SegMetrics:
    """Scores computed from one confusion matrix.

    Attributes:
        miou: Mean IoU over classes, a fraction in [0, 1] (NaN entries of ``iou`` skipped).
        macc: Mean per-class pixel accuracy (recall), a fraction (NaN entries skipped).
        all_acc: Overall pixel accuracy: correct pixels / labelled pixels.
        iou: (K,) float64 per-class IoU. With the ``"nan"`` convention, NaN for a class absent
            from both ground truth and prediction.
        acc: (K,) float64 per-class accuracy. With ``"nan"``, NaN for a class absent from the
            ground truth.
        confusion: (K, K) int64 matrix, rows = ground truth, columns = prediction.
        convention: ``"nan"`` or ``"semseg"``; see :meth:`ConfusionMatrix.compute`.
    """

    miou: float
    macc: float
    all_acc: float
    iou: np.ndarray = field(repr=False)
    acc: np.ndarray = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    convention: Convention = "nan"

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return int(self.confusion.shape[0])

    def to_dict(
        self, class_names: Sequence[str] | None = None, *, include_confusion: bool = False
    ) -> dict[str, Any]:
        """JSON-safe summary (NaN written as ``None``, i.e. ``null``).

        Args:
            class_names: K names for ``per_class``; ``None`` uses ``"class_<i>"``.
            include_confusion: Also add the raw matrix as nested lists under ``"confusion"``.

        Returns:
            ``{"mIoU", "mAcc", "allAcc", "num_classes", "convention",
            "per_class": [{"index", "name", "iou", "acc", "gt_pixels", "pred_pixels"}, ...]}``
            with fractions in [0, 1] (or None), plus ``"confusion"`` when asked.

        Raises:
            ValueError: ``class_names`` does not have K entries.
        """
        k = self.num_classes
        if class_names is None:
            class_names = [f"class_{i}" for i in range(k)]
        if len(class_names) != k:
            raise ValueError(f"class_names has {len(class_names)} names but there are {k} classes")
        gt_pixels = self.confusion.sum(axis=1)
        pred_pixels = self.confusion.sum(axis=0)
        out: dict[str, Any] = {
            "mIoU": _json_float(self.miou),
            "mAcc": _json_float(self.macc),
            "allAcc": _json_float(self.all_acc),
            "num_classes": k,
            "convention": self.convention,
            "per_class": [
                {
                    "index": i,
                    "name": str(class_names[i]),
                    "iou": _json_float(self.iou[i]),
                    "acc": _json_float(self.acc[i]),
                    "gt_pixels": int(gt_pixels[i]),
                    "pred_pixels": int(pred_pixels[i]),
                }
                for i in range(k)
            ],
        }
        if include_confusion:
            out["confusion"] = self.confusion.astype(np.int64).tolist()
        return out


def metrics_from_confusion(
    confusion: np.ndarray | torch.Tensor, convention: Convention = "nan"
) -> SegMetrics:
    """Compute :class:`SegMetrics` from a (K, K) count matrix (rows = ground truth).

    Args:
        confusion: Non-negative integer counts.
        convention: ``"nan"`` or ``"semseg"``; see :meth:`ConfusionMatrix.compute`.

    Returns:
        The scores.

    Raises:
        ValueError: Not a square 2-D matrix, or an unknown convention.
    """
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    cm = np.asarray(confusion).astype(np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    if convention not in ("nan", "semseg"):
        raise ValueError(f"convention must be 'nan' or 'semseg', got {convention!r}")

    # float64 so counts up to 2**53 (any data set) divide exactly enough.
    tp = np.diag(cm).astype(np.float64)  # (K,)
    gt = cm.sum(axis=1).astype(np.float64)  # (K,) pixels labelled as each class
    pred = cm.sum(axis=0).astype(np.float64)  # (K,) pixels predicted as each class
    union = gt + pred - tp  # (K,)
    total = float(gt.sum())

    if convention == "semseg":
        # The authors add 1e-10 to every denominator: absent classes get 0 and stay in the mean.
        iou = tp / (union + _SEMSEG_EPS)
        acc = tp / (gt + _SEMSEG_EPS)
        return SegMetrics(
            miou=float(iou.mean()),
            macc=float(acc.mean()),
            all_acc=float(tp.sum() / (total + _SEMSEG_EPS)),
            iou=iou,
            acc=acc,
            confusion=cm,
            convention="semseg",
        )

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
        acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1.0), np.nan)
    return SegMetrics(
        miou=_nanmean(iou),
        macc=_nanmean(acc),
        all_acc=float(tp.sum() / total) if total > 0 else math.nan,
        iou=iou,
        acc=acc,
        confusion=cm,
        convention="nan",
    )


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix; rows = ground truth, columns = prediction.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
        >>> round(cm.compute().all_acc, 3)
        0.667

    Args:
        num_classes: Number of classes K (the ignore label is not a class).
        ignore_index: Ground-truth value that is skipped (``None``: nothing is skipped).
        device: Where the matrix lives. Under NCCL it may stay on the CPU;
            :meth:`all_reduce` moves it to the GPU for the collective only.

    Raises:
        ValueError: ``num_classes`` is not a positive integer.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(
            (num_classes, num_classes), dtype=torch.int64, device=device
        )  # (K, K)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.matrix.sum())})"
        )

    # -- accumulation ------------------------------------------------------------------------

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch of label maps.

        Args:
            pred: Integer class indices, any shape (e.g. (N, H, W)). Not logits: take the argmax
                over the class dimension first.
            target: Integer ground truth, same shape; ``ignore_index`` pixels are skipped.

        Raises:
            TypeError: A float tensor was passed (most likely logits or probabilities).
            ValueError: Shapes differ, or a non-ignored target or prediction lies outside
                [0, K); the message lists the offending values.
        """
        pred_t = torch.as_tensor(pred)
        target_t = torch.as_tensor(target)
        if pred_t.shape != target_t.shape:
            raise ValueError(
                f"pred and target must have the same shape, got {tuple(pred_t.shape)} and "
                f"{tuple(target_t.shape)} (take the argmax of logits over the class dimension)"
            )
        for name, t in (("pred", pred_t), ("target", target_t)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(
                    f"{name} must hold integer class indices, got dtype {t.dtype}; "
                    "pass logits.argmax(dim=1) rather than scores"
                )
        k = self.num_classes
        # int64 before comparing: uint8 label maps cannot hold negative values or K >= 256.
        pred_flat = pred_t.reshape(-1).to(torch.int64)  # (P,)
        target_flat = target_t.reshape(-1).to(pred_flat.device, torch.int64)  # (P,)
        if self.ignore_index is not None:
            keep = target_flat != self.ignore_index
            pred_flat = pred_flat[keep]
            target_flat = target_flat[keep]
        self._check_range("target", target_flat)
        self._check_range("pred", pred_flat)
        # One bincount over gt*K+pred is the confusion matrix flattened row-major.
        counts = torch.bincount(target_flat * k + pred_flat, minlength=k * k)  # (K*K,)
        self.matrix += counts.reshape(k, k).to(self.matrix.device)

    def _check_range(self, name: str, values: torch.Tensor) -> None:
        bad = (values < 0) | (values >= self.num_classes)
        if bool(bad.any()):
            uniq = torch.unique(values[bad]).tolist()
            shown = ", ".join(str(v) for v in uniq[:10]) + (", ..." if len(uniq) > 10 else "")
            hint = (
                f" (the ignore label is {self.ignore_index})"
                if name == "target"
                else " (predictions must be class indices)"
            )
            raise ValueError(
                f"{name} has values outside [0, {self.num_classes}) that are not ignored: "
                f"{shown}{hint}"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (in place) and return ``self``.

        Raises:
            ValueError: The two were built for different classes or ignore labels.
        """
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge ConfusionMatrix(num_classes={other.num_classes}, "
                f"ignore_index={other.ignore_index}) into ConfusionMatrix("
                f"num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.matrix.device)
        out.matrix = self.matrix.clone()
        return out.merge(other)

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrix over all processes (in place) when torch.distributed is initialised.

        A no-op in a single process, so evaluation code can call it unconditionally.

        Args:
            group: Optional process group (default: the world).

        Returns:
            ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        tensor = self.matrix
        if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":
            # NCCL only reduces CUDA tensors; borrow the current GPU for the collective.
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        if tensor is not self.matrix:
            self.matrix.copy_(tensor.to(self.matrix.device))
        return self

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    # -- results -----------------------------------------------------------------------------

    def numpy(self) -> np.ndarray:
        """The counts as a (K, K) int64 numpy array (a copy)."""
        return self.matrix.detach().cpu().numpy().astype(np.int64, copy=True)

    def compute(self, convention: Convention = "nan") -> SegMetrics:
        """Scores from the counts so far.

        Args:
            convention: How classes that do not occur are scored.

                * ``"nan"``: IoU is NaN for a class absent from both ground truth and prediction
                  (0/0), accuracy is NaN for a class absent from the ground truth; means skip
                  NaN. A class that is predicted but never labelled gets IoU 0 and counts.
                * ``"semseg"``: the PSPNet authors' ``cal_acc`` (``hszhao/semseg``): every
                  denominator gets ``+1e-10``, so those classes score 0 and are averaged in
                  (their mIoU is lower whenever a class is absent from the evaluated images).
                  On full benchmark validation sets every class occurs, and the two agree to
                  ~1e-10.

        Returns:
            The metrics.
        """
        return metrics_from_confusion(self.matrix, convention)
