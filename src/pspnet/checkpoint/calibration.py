"""Calibration images for int8: file paths in, normalised tensors of one size out.

int8 post-training quantization observes the network's activation ranges on a few real
images (usually 16-64 training images). ``calibration`` is given as a sequence of image paths,
a folder of images, or a list file (one image path per line, the first column; relative paths
are relative to the list file's folder, so a data set's ``image label`` list works from there).
Images are resized to one size (the first image's, or ``size``), normalised with the model's
preprocessing and returned as (1, 3, H, W) float32 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pspnet.checkpoint.files import CheckpointError
from pspnet.config import Preprocessing
from pspnet.data.io import DataError, read_image

__all__ = ["Calibration", "calibration_paths", "calibration_images", "CALIBRATION_FIX"]

#: What a calibration argument may be.
Calibration = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

#: How to give calibration images (appended to every error about them).
CALIBRATION_FIX = (
    "pass calibration images: calibration=[paths] / a folder / a list file "
    "(one image path per line), e.g. 32 training images (--calibration-list FILE on the "
    "command line)"
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _from_list_file(path: Path) -> list[Path]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.split()[0] if line.split() else ""
        if token and not token.startswith("#"):
            p = Path(token)
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def calibration_paths(calibration: Calibration | None, limit: int | None = None) -> list[Path]:
    """The image files ``calibration`` names (at most ``limit``), each checked to exist.

    Raises:
        CheckpointError: None / empty, a missing path or listed image (named with the fix).
    """
    if calibration is None:
        raise CheckpointError(f"int8 needs calibration images and none were given; "
                              f"{CALIBRATION_FIX}")
    if isinstance(calibration, (str, os.PathLike)):
        p = Path(calibration)
        if p.is_dir():
            paths = sorted(f for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix.lower() not in _IMAGE_SUFFIXES:
            paths = _from_list_file(p)
        elif p.is_file():
            paths = [p]
        else:
            raise CheckpointError(f"calibration {p} does not exist; {CALIBRATION_FIX}")
    else:
        paths = [Path(c) for c in calibration]
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise CheckpointError(f"calibration {calibration!r} names no images; {CALIBRATION_FIX}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"calibration image {missing[0]} does not exist "
                              f"({len(missing)} of {len(paths)} missing); {CALIBRATION_FIX}")
    return paths


def calibration_images(
    calibration: Calibration | None,
    preprocess: Preprocessing,
    *,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> list[Tensor]:
    """Read, resize (bilinear) and normalise the calibration images.

    Args:
        calibration: Paths, a folder or a list file (module docstring).
        preprocess: The model's preprocessing (mean/std on the 0..255 scale, channel order).
        size: (H, W) every image is resized to; default the first image's size.
        limit: Use at most this many images.

    Returns:
        (1, 3, H, W) float32 tensors, all of one size.
    """
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
    out: list[Tensor] = []
    for path in calibration_paths(calibration, limit):
        try:
            rgb = read_image(path)
        except DataError as e:
            raise CheckpointError(f"calibration image {path}: {e}") from None
        if preprocess.channel_order == "BGR":
            rgb = rgb[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        if size is None:
            size = (int(x.shape[2]), int(x.shape[3]))
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out.append((x - mean) / std)
    return out
