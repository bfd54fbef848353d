"""The step-by-step joint transforms of the PSPNet recipe, and the argument checks they share
with the fused :class:`~pspnet.data.transforms.TrainAugment`.

Each class works on numpy arrays with PIL: the readable reference, handy for custom pipelines
and visual checks. See :mod:`pspnet.data.transforms` for the recipe and the conventions (image
``uint8 (H, W, 3)`` RGB, label integer ``(H, W)``, an explicit generator per call).

This module imports only the standard library, numpy, Pillow, torch and :mod:`pspnet.config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pspnet.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "JointTransform",
    "Compose",
    "RandScale",
    "RandRotate",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "Crop",
    "ToTensorNormalize",
    "gaussian_blur5",
]

#: A joint transform: ``(image, label, rng) -> (image, label)``.
JointTransform = Callable[..., tuple]


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _describe(x: object) -> str:
    return f"ndarray of {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


def check_pair(image: np.ndarray, label: np.ndarray | None, who: str) -> None:
    """Raise a clear error unless ``image`` is uint8 (H, W, 3) and ``label`` integer (H, W)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"{who}: image must be a numpy uint8 array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{who}: image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{who}: image is empty, shape {image.shape}")
    if label is None:
        return
    if not isinstance(label, np.ndarray) or not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"{who}: label must be an integer numpy array, got {_describe(label)}")
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"{who}: label shape {label.shape} does not match image shape {image.shape[:2]}"
        )


def check_range(lo_hi: Sequence[float], name: str, positive: bool = False) -> tuple[float, float]:
    """``(low, high)`` as floats; raise naming ``name`` unless low <= high (and > 0 if asked)."""
    if len(lo_hi) != 2:
        raise ValueError(f"`{name}` must be a pair (low, high), got {lo_hi!r}")
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"`{name}` must be finite with low <= high, got {lo_hi!r}")
    if positive and lo <= 0:
        raise ValueError(f"`{name}` must be positive, got {lo_hi!r}")
    return lo, hi


def check_prob(p: float, name: str) -> float:
    """``p`` as a float; raise naming ``name`` unless it is in [0, 1]."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {p!r}")
    return float(p)


def check_size(size: Sequence[int] | int, name: str) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair; raise naming ``name`` unless positive."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
        raise ValueError(f"`{name}` must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def check_mean_std(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Three-value RGB ``mean`` and ``std`` as float tuples; raise on bad lengths or std <= 0."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each (RGB), got {mean!r} and {std!r}")
    if not all(float(s) > 0 for s in std):
        raise ValueError(f"std must be positive, got {std!r}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)  # type: ignore[return-value]


def _fill_colour(padding: Sequence[float]) -> tuple[int, int, int]:
    """The uint8 colour closest to a (float) padding colour."""
    if len(padding) != 3:
        raise ValueError(f"padding colour needs 3 values (RGB), got {padding!r}")
    r, g, b = (int(min(255, max(0, round(float(v))))) for v in padding)
    return r, g, b


def _label_to_pil(label: np.ndarray) -> Image.Image:
    """A PIL image holding ``label`` exactly: mode 'L' for uint8, 'I' (int32) otherwise."""
    if label.dtype == np.uint8:
        return Image.fromarray(label)  # mode 'L'
    info = np.iinfo(np.int32)
    if label.size and (label.min() < info.min or label.max() > info.max):
        raise ValueError("label values must fit in int32 for resampling")
    return Image.fromarray(np.ascontiguousarray(label, dtype=np.int32))


def _label_from_pil(img: Image.Image, dtype: np.dtype) -> np.ndarray:
    # np.array, not asarray: arrays viewing PIL memory are read-only, callers may write.
    return np.array(img, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Reference (step by step) transforms
# --------------------------------------------------------------------------------------------


class Compose:
    """Apply joint transforms in order, passing the same generator along.

    Args:
        transforms: Callables ``t(image, label, rng) -> (image, label)``.
    """

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, image, label, rng: np.random.Generator | None = None):
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner}\n])"


def need_rng(rng: np.random.Generator | None, who: str) -> np.random.Generator:
    """``rng``; raise naming the transform ``who`` unless it is a numpy Generator."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{who} is random and needs an explicit numpy Generator, e.g. sample_rng(seed, epoch, "
            f"index); got {rng!r}"
        )
    return rng


def scaled_size(h: int, w: int, sx: float, sy: float) -> tuple[int, int]:
    """``(h, w)`` scaled by ``(sy, sx)`` as cv2.resize rounds it, at least 1x1."""
    # cv2.resize(fx=..., fy=...) rounds the product; never collapse to an empty image.
    return max(1, int(round(h * sy))), max(1, int(round(w * sx)))


def draw_scale(
    rng: np.random.Generator, scale: tuple[float, float], aspect: tuple[float, float] | None
) -> tuple[float, float]:
    """Draw (sx, sy) exactly as the authors' RandScale does (uniform scale, sqrt aspect)."""
    s = scale[0] + (scale[1] - scale[0]) * rng.random()
    if aspect is None:
        return s, s
    ar = math.sqrt(aspect[0] + (aspect[1] - aspect[0]) * rng.random())
    return s * ar, s / ar


class RandScale:
    """Resize by a random factor: bilinear for the image, nearest for the label.

    Args:
        scale: Range ``(low, high)`` of the scale factor (the paper: 0.5 to 2.0).
        aspect_ratio: Optional range of the aspect ratio; ``None`` keeps the aspect ratio.
    """

    def __init__(
        self,
        scale: Sequence[float] = (0.5, 2.0),
        aspect_ratio: Sequence[float] | None = None,
    ) -> None:
        self.scale = check_range(scale, "scale", positive=True)
        self.aspect_ratio = (
            None if aspect_ratio is None else check_range(aspect_ratio, "aspect_ratio", True)
        )

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        check_pair(image, label, "RandScale")
        rng = need_rng(rng, "RandScale")
        sx, sy = draw_scale(rng, self.scale, self.aspect_ratio)
        h, w = label.shape
        nh, nw = scaled_size(h, w, sx, sy)
        if (nh, nw) == (h, w):
            return image, label
        image = np.array(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        lab = _label_to_pil(label).resize((nw, nh), Image.Resampling.NEAREST)
        return image, _label_from_pil(lab, label.dtype)

    def __repr__(self) -> str:
        return f"RandScale(scale={self.scale}, aspect_ratio={self.aspect_ratio})"


class RandRotate:
    """Rotate by a random angle (degrees, counter-clockwise) about the centre, with probability p.

    The canvas keeps its size (corners are cut, new corners filled): the image with the
    ``padding`` colour (the dataset mean, which normalises to ~0), the label with ``ignore_index``
    so the loss never trains on invented pixels.

    Args:
        rotate: Range ``(low, high)`` of the angle in degrees (the paper: -10 to 10).
        padding: RGB fill colour on the 0..255 scale (rounded to uint8).
        ignore_index: Label fill value.
        p: Probability of rotating.
    """

    def __init__(
        self,
        rotate: Sequence[float] = (-10.0, 10.0),
        padding: Sequence[float] = IMAGENET_MEAN,
        ignore_index: int = 255,
        p: float = 0.5,
    ) -> None:
        self.rotate = check_range(rotate, "rotate")
        self.fill = _fill_colour(padding)
        self.ignore_index = int(ignore_index)
        self.p = check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        check_pair(image, label, "RandRotate")
        rng = need_rng(rng, "RandRotate")
        if not rng.random() < self.p:
            return image, label
        angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * rng.random()
        img = Image.fromarray(image).rotate(
            angle, resample=Image.Resampling.BILINEAR, fillcolor=self.fill
        )
        if label.dtype == np.uint8 and not 0 <= self.ignore_index <= 255:
            raise ValueError(
                f"RandRotate: ignore_index {self.ignore_index} does not fit a uint8 label"
            )
        lab = _label_to_pil(label).rotate(
            angle, resample=Image.Resampling.NEAREST, fillcolor=self.ignore_index
        )
        return np.array(img), _label_from_pil(lab, label.dtype)

    def __repr__(self) -> str:
        return f"RandRotate(rotate={self.rotate}, fill={self.fill}, p={self.p})"


def gaussian_blur5(image: np.ndarray) -> np.ndarray:
    """OpenCV's ``GaussianBlur(image, (5, 5), 0)`` for uint8 RGB images.

    For a 5x5 kernel with sigma 0 OpenCV uses the fixed binomial taps [1, 4, 6, 4, 1] / 16 and
    reflect-101 borders; the separable sum is done as four pairwise additions per axis in
    uint16 (max 16 * 16 * 255 = 65280, no overflow), which is exact and fast.

    Args:
        image: ``(H, W, 3)`` uint8.

    Returns:
        ``(H, W, 3)`` uint8, rounded to nearest.
    """
    mode = "reflect" if min(image.shape[:2]) > 2 else "edge"  # reflect-101 needs >= 3 pixels
    acc = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode=mode).astype(np.uint16)  # (H+4, W+4, 3)
    for _ in range(4):  # binomial of order 4 along H: (H+4) -> H rows
        acc = acc[:-1] + acc[1:]
    for _ in range(4):  # and along W
        acc = acc[:, :-1] + acc[:, 1:]
    acc += 128
    acc >>= 8
    return acc.astype(np.uint8)


class RandomGaussianBlur:
    """Blur the image (never the label) with OpenCV's 5x5 Gaussian, with probability p.

    The authors' ``RandomGaussianBlur(radius=5)`` calls ``cv2.GaussianBlur(image, (5, 5), 0)``:
    "radius" is the kernel size and sigma follows from it (the binomial taps, sigma ~1.1).

    Args:
        p: Probability of blurring.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        check_pair(image, label, "RandomGaussianBlur")
        rng = need_rng(rng, "RandomGaussianBlur")
        if rng.random() < self.p:
            image = gaussian_blur5(image)
        return image, label

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(kernel_size=5, p={self.p})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        check_pair(image, label, "RandomHorizontalFlip")
        rng = need_rng(rng, "RandomHorizontalFlip")
        if rng.random() < self.p:
            # Copies: negative-stride views would be rejected by torch.from_numpy later.
            image = np.ascontiguousarray(image[:, ::-1])
            label = np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def crop_geometry(
    h: int, w: int, crop: tuple[int, int], crop_type: str, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """Return ``(top_pad, left_pad, h_off, w_off)`` the way the authors' Crop computes them.

    The padded canvas is ``max(h, ch) x max(w, cw)`` with the image centred in it (the extra
    odd pixel goes to the bottom/right); the window offset is drawn uniformly (``rand``) or
    centred (``center``). Random offsets are drawn even when there is no freedom, so the random
    stream consumed does not depend on the image size.
    """
    ch, cw = crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    top, left = pad_h // 2, pad_w // 2
    hh, ww = h + pad_h, w + pad_w
    if crop_type == "rand":
        if rng is None:
            raise TypeError("a random crop needs a numpy Generator")
        h_off = int(rng.integers(0, hh - ch + 1))
        w_off = int(rng.integers(0, ww - cw + 1))
    else:
        h_off, w_off = (hh - ch) // 2, (ww - cw) // 2
    return top, left, h_off, w_off


class Crop:
    """Crop a fixed-size window; pad first (image: mean colour, label: ignore) when too small.

    Args:
        size: ``(height, width)`` of the output, or an int for a square.
        crop_type: ``"rand"`` (training) or ``"center"``.
        padding: RGB fill colour on the 0..255 scale (rounded to uint8).
        ignore_index: Label fill value.
    """

    def __init__(
        self,
        size: Sequence[int] | int,
        crop_type: Literal["rand", "center"] = "rand",
        padding: Sequence[float] = IMAGENET_MEAN,
        ignore_index: int = 255,
    ) -> None:
        self.size = check_size(size, "size")
        if crop_type not in ("rand", "center"):
            raise ValueError(f"crop_type must be 'rand' or 'center', got {crop_type!r}")
        self.crop_type = crop_type
        self.fill = _fill_colour(padding)
        self.ignore_index = int(ignore_index)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ):
        check_pair(image, label, "Crop")
        if self.crop_type == "rand":
            rng = need_rng(rng, "Crop(crop_type='rand')")
        h, w = label.shape
        ch, cw = self.size
        top, left, h_off, w_off = crop_geometry(h, w, self.size, self.crop_type, rng)
        if top or left or h < ch or w < cw:
            hh, ww = max(h, ch), max(w, cw)
            canvas = np.empty((hh, ww, 3), np.uint8)
            canvas[...] = self.fill
            canvas[top : top + h, left : left + w] = image
            if label.dtype == np.uint8 and not 0 <= self.ignore_index <= 255:
                raise ValueError(
                    f"Crop: ignore_index {self.ignore_index} does not fit a uint8 label"
                )
            lab = np.full((hh, ww), self.ignore_index, label.dtype)
            lab[top : top + h, left : left + w] = label
            image, label = canvas, lab
        image = np.ascontiguousarray(image[h_off : h_off + ch, w_off : w_off + cw])
        label = np.ascontiguousarray(label[h_off : h_off + ch, w_off : w_off + cw])
        return image, label

    def __repr__(self) -> str:
        return f"Crop(size={self.size}, crop_type={self.crop_type!r}, fill={self.fill})"


class ToTensorNormalize:
    """uint8 ``(H, W, 3)`` RGB -> float32 ``(3, H, W)`` ``(x - mean) / std``; label -> int64.

    Mean and std are on the 0..255 scale, as in the authors' code (``value_scale = 255``).
    Deterministic: the generator argument is accepted and ignored. ``label`` may be ``None``
    (inference), in which case ``None`` is returned in its place.

    Args:
        mean: Per-channel mean, RGB, 0..255 scale.
        std: Per-channel standard deviation, RGB, 0..255 scale.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean, self.std = check_mean_std(mean, std)
        self._mean = np.asarray(self.mean, np.float32)
        self._inv_std = (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_pair(image, label, "ToTensorNormalize")
        x = image.astype(np.float32)  # (H, W, 3)
        x -= self._mean
        x *= self._inv_std
        img = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H, W)
        if label is None:
            return img, None
        return img, torch.from_numpy(label.astype(np.int64))  # (H, W)

    def __repr__(self) -> str:
        return f"ToTensorNormalize(mean={self.mean}, std={self.std})"
