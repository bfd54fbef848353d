"""Every bound on a size that decides how much memory pspnet asks for, in one table.

A size read from a file (``config.json`` beside weights, a checkpoint's header) or from a flag
reaches an allocation: a model with ``num_classes: 10**9`` asks for gigabytes while it is built,
a pyramid ``bins`` entry of 100000 asks for terabytes at predict time, an export of
100000x100000 pixels asks for a 40 GB input. Each such size is checked against :data:`LIMITS`
before anything is allocated, with an error that names the key, the value, the bound and the
fix (:func:`check_limit`).

The bounds are generous for real use: ADE20K-full has 3688 classes, the widest published PSPNet
layer has 4096 channels (the pyramid concat of a ResNet-50), the paper's bins are 1-6 and the
largest published crop is 713 (Cityscapes).

This module imports nothing from the rest of :mod:`pspnet` (the bottom layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pspnet.config.core import ConfigError

__all__ = ["Limit", "LIMITS", "INFERENCE_MEMORY_BYTES", "check_limit", "check_finite"]


@dataclass(frozen=True)
class Limit:
    """One bound: the largest value a size may take, what it protects and how to change it."""

    maximum: float
    """The largest accepted value (inclusive)."""
    why: str
    """What an unbounded value would allocate."""


GiB = 1 << 30

#: Every size bound, by name. Model fields are checked by :class:`pspnet.config.ModelConfig`,
#: the rest where the value enters (the flag's parser or the reader of the file).
LIMITS: dict[str, Limit] = {
    "num_classes": Limit(4096, "the classifier and the (classes x H x W) scores at predict time"),
    "channels": Limit(
        8192, "the weights of a layer of that width and its activations (head_channels, "
        "aux_channels, ppm_channels, stem_width)",
    ),
    "bin": Limit(64, "a (channels x bin x bin) pooled map per image at predict time"),
    "bins_count": Limit(16, "one pyramid branch per bin"),
    "crop": Limit(4096, "a batch of (classes x crop x crop) tile scores"),
    "scale": Limit(4.0, "the image resized by the scale (a 4x scale is 16x the pixels)"),
    "tile_batch": Limit(256, "a batch of tiles and their (classes x crop x crop) scores"),
    "resize_side": Limit(8192, "the image resized to base_size / img_scale at each scale"),
    "export_side": Limit(4096, "the traced input and every activation of the export check"),
    "checkpoint_bytes": Limit(
        16 * GiB,
        "the tensors of a checkpoint once unpacked (the largest published PSPNet is 0.3 GB)",
    ),
    "checkpoint_ratio": Limit(
        100.0, "a compressed .pth member expanding to more than this many times its size "
        "(torch.save stores tensors uncompressed; a high ratio is a decompression bomb)",
    ),
    "json_bytes": Limit(16 << 20, "a config.json or safetensors header read into memory"),
}

#: Default bound on what one prediction of ``pspnet predict`` / ``pspnet serve`` may allocate
#: besides the model and the image (``InferenceOptions.max_memory``; ``--max-memory-gb``).
#: Above it a whole-image pass runs as a sliding window (:mod:`pspnet.inference.bounds`).
INFERENCE_MEMORY_BYTES: int = 2_000_000_000


def check_limit(name: str, value: float, key: str, *, low: float = 1) -> None:
    """Refuse ``value`` outside ``[low, LIMITS[name].maximum]`` with a message naming ``key``.

    Args:
        name: A key of :data:`LIMITS`.
        value: The size to check (an int or a float; bools are refused).
        key: What the user wrote: a config key (``model.num_classes``), a flag (``--crop-size``)
            or a file and key (``w/config.json: model.bins``).
        low: The smallest accepted value.

    Raises:
        ConfigError: ``value`` is not a finite number in range; the message names ``key``, the
            value, the bound and what it protects. The bounds have no override: each is far
            above any published model, so a larger value is a damaged or hostile file.
    """
    limit = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"`{key}` must be a finite number, got {value!r}")
    if value < low:
        raise ConfigError(f"`{key}` must be at least {low:g}, got {value!r}")
    if value > limit.maximum:
        raise ConfigError(
            f"`{key}` is {value!r}, above pspnet's bound of {limit.maximum:g} (LIMITS[{name!r}] "
            f"in pspnet.config.limits: it sizes {limit.why}); use a value within the bound (a "
            "larger one comes from a damaged file or a mistyped flag)"
        )


def check_finite(values: tuple[float, ...], key: str) -> None:
    """Refuse NaN or infinite entries of ``values``, naming ``key`` and the first bad one.

    Raises:
        ConfigError: An entry is not finite.
    """
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ConfigError(f"`{key}[{i}]` must be a finite number, got {v!r} (in {values!r})")
