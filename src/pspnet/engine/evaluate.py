"""Evaluate a segmentation model on a labelled data set: mIoU, mAcc, allAcc, per-class scores.

:func:`evaluate_model` runs :func:`pspnet.inference.predict` with one
:class:`~pspnet.inference.InferenceOptions` (whole image by default, or any sliding-window /
multi-scale / flip setting, or a named protocol such as the authors' ``semseg``) on every
image at its original size, takes the argmax, and accumulates one
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
from pspnet.inference import InferenceOptions, get_protocol, normalise_images, predict_labels
from pspnet.inference.options import resolve_options

__all__ = ["evaluate_model", "resolved_options", "save_prediction_png", "write_metrics"]


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
    options: InferenceOptions | str | None = None,
    *,
    num_classes: int,
    ignore_index: int = 255,
    protocol: InferenceOptions | str | None = None,
    convention: Convention = "nan",
    save_predictions_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    preprocess: Preprocessing | None = None,
    num_workers: int = 0,
    progress: bool = True,
    **overrides: Any,
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
        options: How to predict: an :class:`~pspnet.inference.InferenceOptions`, or the name
            of a :data:`pspnet.inference.PROTOCOLS` preset. Default: one whole-image pass at
            scale 1 without flip. ``align_corners`` left None is the model's own.
        num_classes: Number of classes K.
        ignore_index: Label value left out of the metrics.
        protocol: The older name of ``options`` (give one of them).
        convention: ``"nan"`` or ``"semseg"`` for classes that never occur.
        save_predictions_dir: Write ``<dir>/<name>.png`` prediction maps (original size).
        class_names: Only used to check the count (names go in :func:`write_metrics`).
        palette: Colours of the prediction PNGs (default: the VOC palette).
        preprocess: Normalisation for raw datasets (default: ImageNet mean/std, RGB).
        num_workers: DataLoader workers when ``data`` is a dataset.
        progress: Show a tqdm bar (rank 0 only).
        **overrides: :class:`~pspnet.inference.InferenceOptions` fields applied on top of
            ``options``, e.g. ``mode="slide", crop_size=473`` or ``precision="bf16"``.

    Returns:
        The :class:`~pspnet.engine.metrics.SegMetrics` of the whole data set (all processes).
    """
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    net = unwrap_model(model)
    opts = _options(net, options, protocol, overrides)
    rank = get_rank()
    loader, total, normalise = _loader(data, preprocess, num_workers)
    out_dir = Path(save_predictions_dir) if save_predictions_dir is not None else None
    pal = _prediction_palette(out_dir, palette, num_classes)
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    was_training = net.training
    net.eval()
    bar = _progress_bar(total) if progress and rank == 0 else None
    try:
        _score(net, loader, opts, cm, normalise=normalise, out=(out_dir, pal), bar=bar)
    finally:
        if bar is not None:
            bar.close()
        net.train(was_training)
    cm.all_reduce()
    return cm.compute(convention)


def _options(
    net: nn.Module, options: InferenceOptions | str | None,
    protocol: InferenceOptions | str | None, overrides: dict[str, Any],
) -> InferenceOptions:
    """The evaluation's inference options: a preset or given options, then ``overrides``."""
    if options is not None and protocol is not None:
        raise TypeError("give options or protocol (its older name), not both")
    chosen = options if options is not None else protocol
    return resolved_options(net, chosen, **overrides)


def resolved_options(
    model: nn.Module, options: InferenceOptions | str | None = None, **overrides: Any
) -> InferenceOptions:
    """The options :func:`evaluate_model` runs ``model`` with, for the record (``metrics.json``).

    A preset name is looked up, ``overrides`` are applied, and an ``align_corners`` left None
    becomes the model's own.
    """
    base = get_protocol(options) if isinstance(options, str) else options
    opts = resolve_options(base, overrides)
    net = unwrap_model(model)
    return opts.with_align_corners(bool(getattr(net, "align_corners", False)))


def _loader(
    data: Dataset | DataLoader | Iterable[Any], preprocess: Preprocessing | None,
    num_workers: int,
) -> tuple[Iterable[Any], int | None, Preprocessing | None]:
    """``(batches, their count if known, normalisation for raw images or None)``.

    A map-style dataset is sharded across ``torchrun`` processes and loaded one image at a
    time (sizes differ); anything else is used as given.
    """
    if not (isinstance(data, Dataset) and hasattr(data, "__len__")
            and not isinstance(data, DataLoader)):
        return data, len(data) if hasattr(data, "__len__") else None, None  # type: ignore[arg-type]
    normalise = None
    if getattr(data, "transform", "given") is None and hasattr(data, "samples"):
        normalise = preprocess or Preprocessing()
    rank, world = get_rank(), get_world_size()
    idx = shard_indices(len(data), rank, world)  # type: ignore[arg-type]
    subset = Subset(data, list(idx)) if world > 1 else data
    loader = DataLoader(
        subset,
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_first,
        generator=torch.Generator(),  # never draw from the global RNG
    )
    return loader, len(idx), normalise


def _prediction_palette(
    out_dir: Path | None, palette: Sequence[Sequence[int]] | np.ndarray | None, num_classes: int
) -> np.ndarray | None:
    """Create ``out_dir`` and check the colours of its prediction PNGs (None: no PNGs)."""
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    pal = np.asarray(palette, dtype=np.uint8) if palette is not None else default_palette(256)
    if pal.ndim != 2 or pal.shape[1] != 3 or (num_classes <= 255 and len(pal) < num_classes):
        raise ValueError(f"palette must have at least {num_classes} RGB colours")
    return pal


def _progress_bar(total: int | None) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="evaluating", unit="img", leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


def _score(
    net: nn.Module, loader: Iterable[Any], opts: InferenceOptions, cm: ConfusionMatrix, *,
    normalise: Preprocessing | None, out: tuple[Path | None, np.ndarray | None], bar: Any,
) -> None:
    """Predict every batch of ``loader`` into ``cm`` (and the prediction PNGs of ``out``)."""
    out_dir, pal = out
    # Exported runtimes (ONNX, TorchScript wrappers) have no parameters: they run on the CPU.
    device = next(iter(net.parameters()), torch.empty(0)).device
    seen = 0
    for item in loader:
        images, labels, names = _as_batch(item, seen)
        images = images.float()
        if normalise is not None:
            images = normalise_images(images, normalise)
        # Labels only: no full-size float32 logits or probabilities are made for them.
        pred = predict_labels(net, images.to(device), opts, num_classes=cm.num_classes).cpu()
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
