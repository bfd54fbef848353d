"""The one declaration of every inference setting: :class:`InferenceOptions`.

``predict``, ``predict_sliding``, ``predict_labels_tiled``, evaluation, file prediction, the
server and the benchmark all take one of these (or keyword overrides that build one), and the
evaluation presets of :mod:`pspnet.inference.protocols` are instances of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from pspnet.config.limits import INFERENCE_MEMORY_BYTES, check_limit
from pspnet.precision import PRECISIONS, Precision

if TYPE_CHECKING:
    from torch import nn

__all__ = ["InferenceOptions", "MULTI_SCALES", "PAD_MODES", "resolve_options"]

PadMode = Literal["center", "bottom_right", "none"]
PAD_MODES = ("center", "bottom_right", "none")
Average = Literal["prob", "logit"]
FlipMode = Literal["image", "crop"]
Mode = Literal["whole", "slide"]

#: The scale set of the authors' (and mmseg's) multi-scale evaluation.
MULTI_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: The fields that define *what* is predicted (a protocol); the others only change how the
#: work is done (precision, batching, where sums live) or document a preset.
DEFINITION_FIELDS = (
    "mode", "scales", "flip", "flip_mode", "crop_size", "stride", "base_size", "img_scale",
    "pad_mode", "average", "align_corners", "restore_align_corners",
)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if len(pair) != 2 or any(v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _pad_value(value: Any) -> float | tuple[float, ...]:
    """A scalar, or a per-channel tuple (a tensor is read into one: options stay hashable)."""
    if isinstance(value, Tensor):
        return tuple(float(v) for v in value.detach().reshape(-1).tolist())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"pad_value must be a number or per-channel numbers, got {value!r}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """How to run a segmentation model on an image: every inference setting, validated once.

    Dataset-dependent sizes (``base_size``, ``crop_size``, ``img_scale``) may be left None in a
    preset; fill them with :meth:`for_dataset` or :meth:`replace`. Invalid values raise
    ``ValueError`` naming the field.
    """

    mode: Mode = "whole"
    """``"whole"`` (one pass per image) or ``"slide"`` (overlapping tiles)."""
    scales: tuple[float, ...] = (1.0,)
    """Test scales; see :func:`pspnet.inference.rescaled_size` for what a scale means."""
    flip: bool = False
    """Horizontal-flip test-time augmentation."""
    flip_mode: FlipMode = "image"
    """``"image"``: the mirrored image is a separate view (mmseg); ``"crop"``: in slide mode,
    every tile is also run mirrored and averaged inside the tile (semseg)."""
    crop_size: tuple[int, int] | None = None
    """Tile size of the sliding window (an int means a square); required for ``mode="slide"``."""
    stride: tuple[int, int] | None = None
    """Tile step; default ``ceil(2/3 * crop)`` (the authors')."""
    base_size: int | None = None
    """semseg rule: long side = ``round(base_size * scale)``."""
    img_scale: tuple[int, int] | None = None
    """mmseg 0.x keep-ratio rule, e.g. ``(2048, 512)``."""
    pad_mode: PadMode = "center"
    """``"center"`` (semseg: ``pad // 2`` before, rest after), ``"bottom_right"``, or ``"none"``
    (mmseg: an image smaller than the crop is run as one smaller tile)."""
    average: Average = "prob"
    """``"prob"`` averages softmax over tiles and views (semseg), ``"logit"`` logits (mmseg)."""
    align_corners: bool | None = None
    """Convention for upsampling low-resolution model outputs to their input. None: False in
    :mod:`pspnet.inference`; evaluation and file prediction use the model's own setting."""
    restore_align_corners: bool = False
    """Convention for resizing each scale's result to the input size (semseg uses cv2, i.e.
    False; mmseg uses the model's ``align_corners``)."""
    precision: Precision = "fp32"
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the forward passes; results are fp32."""
    batch_size: int = 4
    """Tiles per forward pass in slide mode (flip in crop mode doubles the model batch)."""
    pad_value: float | tuple[float, ...] = 0.0
    """Padding in normalised space: 0 (the mean colour) or per-channel values (a tensor is
    accepted and read into a tuple)."""
    accumulate_device: torch.device | None = None
    """Where tile sums and the result live (e.g. ``"cpu"`` to bound GPU memory); default the
    model's device."""
    accumulate_dtype: torch.dtype = torch.float32
    """dtype of the sliding-window score tensors and of the returned probabilities."""
    max_memory: int | None = INFERENCE_MEMORY_BYTES
    """Bound, in bytes, on what one prediction of :func:`pspnet.engine.predict.predict_array`
    (``pspnet predict``, ``pspnet serve``) may allocate besides the model and the image
    (:mod:`pspnet.inference.bounds`): a whole-image pass estimated above it runs as a sliding
    window instead, with a notice, and settings that no mode fits are refused. None: no bound
    (whole-image passes of any size). Default 2 GB (``pspnet.config.limits``)."""
    name: str = ""
    """A preset's name (:data:`pspnet.inference.PROTOCOLS`); empty for ad-hoc options."""
    source: str = ""
    """Where a preset's procedure comes from (repository and file)."""
    description: str = ""
    """What a preset does, step by step."""

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise the fields in place once
        fix(self, "scales", tuple(float(s) for s in self.scales))
        for key in ("crop_size", "stride", "img_scale"):
            value = getattr(self, key)
            if value is not None:
                fix(self, key, _pair(value, key))
        fix(self, "flip", bool(self.flip))
        fix(self, "pad_value", _pad_value(self.pad_value))
        if self.accumulate_device is not None:
            fix(self, "accumulate_device", torch.device(self.accumulate_device))
        _choice(self.mode, ("whole", "slide"), "mode")
        _choice(self.flip_mode, ("image", "crop"), "flip_mode")
        _choice(self.pad_mode, PAD_MODES, "pad_mode")
        _choice(self.average, ("prob", "logit"), "average")
        _choice(self.precision, PRECISIONS, "precision")
        if not self.scales:
            raise ValueError("scales must contain at least one scale, e.g. (1.0,)")
        if any(not s > 0 for s in self.scales):  # `not >`: NaN is refused too
            raise ValueError(f"scales must be positive, got {self.scales!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self._check_bounds()
        if self.base_size is not None and self.img_scale is not None:
            raise ValueError("give base_size (semseg rule) or img_scale (mmseg rule), not both")
        crop, stride = self.crop_size, self.stride
        if crop is not None and stride is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
            raise ValueError(
                f"stride {stride} is larger than crop_size {crop}: pixels between tiles would "
                "never be predicted"
            )

    def _check_bounds(self) -> None:
        """Sizes that decide allocations, against :data:`pspnet.config.LIMITS`.

        Raises:
            ConfigError: (a ``ValueError``) naming the field, its flag, the value and the bound.
        """
        for s in self.scales:
            check_limit("scale", s, "scales (--scales)", low=0)
        for key, label in (("crop_size", "crop_size (--crop-size)"), ("stride", "stride")):
            for side in getattr(self, key) or ():
                check_limit("crop", side, label)
        check_limit("tile_batch", self.batch_size, "batch_size (--tile-batch)")
        if self.base_size is not None:
            check_limit("resize_side", self.base_size, "base_size (--base-size)")
        for side in self.img_scale or ():
            check_limit("resize_side", side, "img_scale")
        if self.max_memory is not None and (
            isinstance(self.max_memory, bool) or not isinstance(self.max_memory, int)
            or self.max_memory < 1
        ):
            raise ValueError(
                f"max_memory must be a positive number of bytes or None, got {self.max_memory!r}"
            )

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with some fields changed (e.g. ``crop_size=(713, 713)``), validated again."""
        return dataclasses.replace(self, **changes)

    def with_align_corners(self, value: bool) -> InferenceOptions:
        """These options with ``align_corners`` set to ``value`` where it was left None."""
        return self if self.align_corners is not None else self.replace(align_corners=value)

    def for_dataset(self, dataset: str) -> InferenceOptions:
        """Fill a preset's published sizes for a data set (see :data:`DATASET_SETTINGS`).

        Raises:
            ValueError: The preset's source has no published setting for that data set.
        """
        from pspnet.inference.protocols import dataset_sizes

        return self.replace(**dataset_sizes(self.name, dataset))

    def predict_kwargs(self) -> dict[str, Any]:
        """The fields that define the prediction (a protocol's settings), as a dict."""
        return {key: getattr(self, key) for key in DEFINITION_FIELDS}

    def predict(
        self, model: nn.Module, images: Tensor, *, num_classes: int | None = None,
        **runtime: Any,
    ) -> Tensor:
        """Run :func:`pspnet.inference.predict` with these options (a protocol, usually).

        Args:
            model: Segmentation model in eval mode.
            images: Normalised (N, 3, H, W) batch at its original size.
            num_classes: Expected number of classes (checked); inferred when None.
            **runtime: Options that do not change the result's definition: ``batch_size``,
                ``pad_value``, ``precision``, ``accumulate_device``, ``accumulate_dtype``.

        Returns:
            (N, C, H, W) probabilities at the input size.

        Raises:
            TypeError: A runtime keyword would redefine the protocol (use :meth:`replace`).
            ValueError: A required size is missing (call :meth:`for_dataset`).
        """
        from pspnet.inference.multiscale import predict

        clash = sorted(set(runtime) & set(DEFINITION_FIELDS))
        if clash:
            raise TypeError(
                f"{clash} are part of protocol {self.name!r}; use protocol.replace(...) instead"
            )
        if self.mode == "slide" and self.crop_size is None:
            raise ValueError(
                f"protocol {self.name!r} needs crop_size: use "
                f"PROTOCOLS[{self.name!r}].for_dataset('ade20k') or .replace(crop_size=...)"
            )
        if self.name.startswith("semseg") and self.base_size is None:
            raise ValueError(
                f"protocol {self.name!r} needs base_size (512 for ADE20K/VOC, 2048 for "
                "Cityscapes): use .for_dataset(...) or .replace(base_size=...)"
            )
        return predict(model, images, self.replace(**runtime), num_classes=num_classes)


def resolve_options(
    options: InferenceOptions | None, overrides: Mapping[str, Any], **defaults: Any
) -> InferenceOptions:
    """``options`` with keyword ``overrides`` applied, or new options from them.

    Args:
        options: Given options, or None.
        overrides: Field values from a caller's keywords (unknown names raise ``TypeError``).
        **defaults: Field values that differ from :class:`InferenceOptions`' defaults for this
            caller, used only when ``options`` is None.

    Raises:
        TypeError: ``options`` is not an :class:`InferenceOptions`, or an unknown field.
    """
    if options is None:
        return InferenceOptions(**{**defaults, **overrides})
    if not isinstance(options, InferenceOptions):
        raise TypeError(f"options must be an InferenceOptions, got {type(options).__name__}")
    return options.replace(**overrides) if overrides else options
