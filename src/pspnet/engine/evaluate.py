"""Evaluate a segmentation model on a labelled data set: mIoU, mAcc, allAcc, per-class scores.

:func:`evaluate_model` runs :func:`pspnet.inference.predict` (whole image by default, or any
sliding-window / multi-scale / flip setting, or a named protocol such as the authors'
``semseg``) on every image at its original size, takes the argmax, and accumulates one
:class:`~pspnet.engine.metrics.ConfusionMatrix`. Under ``torchrun`` each process evaluates the
disjoint strided shard ``rank, rank + world, ...`` of the data set (no padding, so no image is
counted twice) and the confusion matrices are summed with an all-reduce: every process returns
the same metrics.

With ``save_predictions_dir``, each prediction is written as ``<dir>/<sample name>.png``, a
palette PNG whose pixel values are the predicted class indices at the original image size (a
16-bit greyscale PNG when there are more than 255 classes). The metrics are exactly what one
recomputes from those files and the labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from pspnet.config import Preprocessing
from pspnet.data.palette import default_palette, save_mask_png
from pspnet.engine.distributed import get_rank, get_world_size, shard_indices
from pspnet.engine.metrics import ConfusionMatrix, Convention, SegMetrics
from pspnet.engine.optim import unwrap_model
from pspnet.inference import Protocol, get_protocol, normalise_images, predict

__all__ = ["evaluate_model", "save_prediction_png", "write_metrics"]


def _first(items: list[Any]) -> Any:
    """Collate for batch size 1 (images of different sizes cannot be stacked)."""
    return items[0]


def _as_batch(item: Any, index: int) -> tuple[Tensor, Tensor, list[str]]:
    """(images (N,3,H,W), labels (N,H,W), names) from a dataset item or a loader batch."""
    if isinstance(item, dict):
        image, label, names = item["image"], item["label"], item.get("name")
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        image, label = item[0], item[1]
        names = item[2] if len(item) > 2 else None
    else:
        raise TypeError(
            f"evaluation items must be dicts with 'image' and 'label' (SegmentationDataset) or "
            f"(image, label) pairs, got {type(item).__name__}"
        )
    image, label = torch.as_tensor(image), torch.as_tensor(label)
    if image.dim() == 3:
        image, label = image.unsqueeze(0), label.unsqueeze(0)
    n = image.shape[0]
    if names is None:
        names = [f"{index + i:06d}" for i in range(n)]
    elif isinstance(names, str):
        names = [names]
    return image, label, [str(x) for x in names]


def save_prediction_png(
    path: str | Path, pred: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray | None
) -> Path:
    """Write one (H, W) class-index map: palette PNG (<= 255 classes) or 16-bit PNG."""
    path = Path(path)
    if pred.size and int(pred.max()) >= 255:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred.astype(np.uint16)).save(path, format="PNG")
        return path
    pal = np.asarray(palette, dtype=np.uint8) if palette is not None else default_palette(256)
    return save_mask_png(path, pred.astype(np.uint8), pal, ignore_index=255)


def evaluate_model(
    model: nn.Module,
    data: Dataset | DataLoader | Iterable[Any],
    *,
    num_classes: int,
    ignore_index: int = 255,
    protocol: str | Protocol | None = None,
    mode: str = "whole",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    base_size: int | None = None,
    img_scale: tuple[int, int] | None = None,
    precision: str = "fp32",
    tile_batch_size: int = 4,
    convention: Convention = "nan",
    save_predictions_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    preprocess: Preprocessing | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> SegMetrics:
    """Score ``model`` on labelled data.

    Args:
        model: A segmentation model (a DDP wrapper is unwrapped). It is put in eval mode for
            the evaluation and restored afterwards.
        data: A map-style dataset whose items are ``{"image", "label", "name"}`` dicts (a
            :class:`~pspnet.data.SegmentationDataset`) or ``(image, label)`` pairs; or a
            DataLoader / iterable of such batches. A dataset is sharded across ``torchrun``
            processes automatically; a loader is used as given (shard it yourself). Images
            must be normalised, except that a SegmentationDataset without a transform (raw
            0..255 images) is normalised here with ``preprocess``.
        num_classes: Number of classes K.
        ignore_index: Label value left out of the metrics.
        protocol: A :data:`pspnet.inference.PROTOCOLS` name or a Protocol; replaces
            ``mode``/``scales``/``flip``/sizes.
        mode, scales, flip, crop_size, stride, base_size, img_scale: Passed to
            :func:`pspnet.inference.predict` (``mode="whole"``, one scale, no flip by default).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the forward passes.
        tile_batch_size: Tiles per forward pass in sliding-window mode.
        convention: ``"nan"`` or ``"semseg"`` for classes that never occur.
        save_predictions_dir: Write ``<dir>/<name>.png`` prediction maps (original size).
        class_names: Only used to check the count (names go in :func:`write_metrics`).
        palette: Colours of the prediction PNGs (default: the VOC palette).
        preprocess: Normalisation for raw datasets (default: ImageNet mean/std, RGB).
        num_workers: DataLoader workers when ``data`` is a dataset.
        progress: Show a tqdm bar (rank 0 only).

    Returns:
        The :class:`~pspnet.engine.metrics.SegMetrics` of the whole data set (all processes).
    """
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    net = unwrap_model(model)
    if protocol is not None:
        proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
        kwargs = proto.predict_kwargs()
    else:
        ac = bool(getattr(net, "align_corners", False))
        kwargs = {
            "mode": mode,
            "scales": tuple(scales),
            "flip": flip,
            "crop_size": crop_size,
            "stride": stride,
            "base_size": base_size,
            "img_scale": img_scale,
            "align_corners": ac,
        }

    rank, world = get_rank(), get_world_size()
    normalise: Preprocessing | None = None
    loader: Iterable[Any]
    total: int | None = None
    if isinstance(data, Dataset) and hasattr(data, "__len__") and not isinstance(data, DataLoader):
        if getattr(data, "transform", "given") is None and hasattr(data, "samples"):
            normalise = preprocess or Preprocessing()
        idx = shard_indices(len(data), rank, world)  # type: ignore[arg-type]
        subset = Subset(data, list(idx)) if world > 1 else data
        total = len(idx)
        loader = DataLoader(
            subset,
            batch_size=1,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_first,
            generator=torch.Generator(),  # never draw from the global RNG
        )
    else:
        loader = data
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]

    out_dir = Path(save_predictions_dir) if save_predictions_dir is not None else None
    pal = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        pal = np.asarray(palette, dtype=np.uint8) if palette is not None else default_palette(256)
        if pal.ndim != 2 or pal.shape[1] != 3 or (num_classes <= 255 and len(pal) < num_classes):
            raise ValueError(f"palette must have at least {num_classes} RGB colours")

    # Exported runtimes (ONNX, TorchScript wrappers) have no parameters: they run on the CPU.
    device = next(iter(net.parameters()), torch.empty(0)).device
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    was_training = net.training
    net.eval()
    bar = None
    if progress and rank == 0:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="evaluating", unit="img", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    seen = 0
    try:
        for item in loader:
            images, labels, names = _as_batch(item, seen)
            images = images.float()
            if normalise is not None:
                images = normalise_images(images, normalise)
            probs = predict(
                net,
                images.to(device),
                num_classes=num_classes,
                batch_size=tile_batch_size,
                precision=precision,  # type: ignore[arg-type]
                **kwargs,
            )
            pred = probs.argmax(dim=1).cpu()  # (N, H, W)
            del probs
            if pred.shape != labels.shape:
                raise ValueError(
                    f"prediction {tuple(pred.shape)} and label {tuple(labels.shape)} differ in "
                    f"size for {names[0]!r}; evaluation runs at the original image size"
                )
            cm.update(pred, labels)
            if out_dir is not None:
                for i, name in enumerate(names):
                    save_prediction_png(out_dir / f"{name}.png", pred[i].numpy(), pal)
            seen += len(names)
            if bar is not None:
                bar.update(len(names))
    finally:
        if bar is not None:
            bar.close()
        net.train(was_training)
    cm.all_reduce()
    return cm.compute(convention)


def write_metrics(
    path: str | Path,
    metrics: SegMetrics,
    class_names: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``metrics.to_dict(class_names)`` (plus ``extra``) as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = metrics.to_dict(class_names, include_confusion=True)
    if extra:
        doc.update(extra)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
