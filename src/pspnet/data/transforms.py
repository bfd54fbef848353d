"""Joint image/label augmentations of the PSPNet paper, and per-sample seeding.

The training recipe follows the authors' code (``hszhao/semseg``, ``tool/train.py``)::

    RandScale([0.5, 2.0])                 # bilinear image, nearest label
    RandRotate([-10, 10], p=0.5)          # image padded with the mean colour, label with ignore
    RandomGaussianBlur(kernel_size=5)     # p=0.5, OpenCV's GaussianBlur((5, 5), 0); image only
    RandomHorizontalFlip(p=0.5)
    Crop(crop_size, crop_type="rand")     # pad (mean / ignore) when smaller, else random window
    ToTensor + Normalize(mean, std)       # RGB, (x - mean) / std on the 0..255 scale

Two implementations are provided:

* The individual classes (:class:`RandScale`, :class:`RandRotate`, ... composed with
  :class:`Compose`) work step by step on numpy arrays with PIL. They are the readable reference,
  handy for custom pipelines and visual checks.
* :class:`TrainAugment` (what :func:`train_transform` returns by default) draws *the same random
  numbers in the same order* but folds scale, rotation, flip, padding and cropping into one affine
  map and samples only the output window once with :func:`torch.nn.functional.grid_sample`. That
  is several times faster (the work is proportional to the crop, not to the scaled image) and
  interpolates once instead of twice. Like OpenCV's ``INTER_LINEAR`` (what the authors used) it
  does not low-pass filter when shrinking, whereas PIL's resize in :class:`RandScale` does.

Conventions: an *image* is ``np.uint8`` of shape ``(H, W, 3)`` in RGB order; a *label* is an
integer array of shape ``(H, W)`` (``uint8`` or wider; values other than ``ignore_index`` are class
indices). Labels are only ever resampled with nearest neighbour and never blurred, and
``ignore_index`` pixels stay ``ignore_index``. Every random transform is called as
``t(image, label, rng)`` with an explicit :class:`numpy.random.Generator`; nothing here touches a
global random state.

Reproducible data loading: the training loop creates one generator per sample with
:func:`sample_rng` ``(seed, epoch, index)``. The augmentation of a sample then depends only on
those three numbers, never on which worker process handled it or on what that worker did before,
so a run gives the same batches with 0, 2 or 16 DataLoader workers (no ``worker_init_fn`` games)
and resuming at epoch ``e`` replays epoch ``e`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
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
    "TrainAugment",
    "train_transform",
    "eval_transform",
    "sample_rng",
    "gaussian_blur5",
]

#: A joint transform: ``(image, label, rng) -> (image, label)``.
JointTransform = Callable[..., tuple]

# Labels go through float32 in the fused path; integers up to 2**24 are exact in float32.
_FLOAT_EXACT = 1 << 24


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for one sample of one epoch.

    ``np.random.default_rng([seed, epoch, index])`` hashes the three integers through
    :class:`numpy.random.SeedSequence`, so streams for different triples are independent and the
    result depends on nothing else: not on the worker that loads the sample, not on the order in
    which workers run, not on how many samples a worker loaded before. That makes data
    augmentation reproducible regardless of ``num_workers`` by construction.

    Args:
        seed: The run's seed (non-negative).
        epoch: Epoch number (non-negative).
        index: Index of the sample in the dataset (non-negative).

    Returns:
        A fresh generator.

    Raises:
        ValueError: If any argument is negative or not an integer.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"sample_rng: `{name}` must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _describe(x: object) -> str:
    return f"ndarray of {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


def _check_pair(image: np.ndarray, label: np.ndarray | None, who: str) -> None:
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


def _check_range(lo_hi: Sequence[float], name: str, positive: bool = False) -> tuple[float, float]:
    if len(lo_hi) != 2:
        raise ValueError(f"`{name}` must be a pair (low, high), got {lo_hi!r}")
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"`{name}` must be finite with low <= high, got {lo_hi!r}")
    if positive and lo <= 0:
        raise ValueError(f"`{name}` must be positive, got {lo_hi!r}")
    return lo, hi


def _check_prob(p: float, name: str) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_size(size: Sequence[int] | int, name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
        raise ValueError(f"`{name}` must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_mean_std(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


def _need_rng(rng: np.random.Generator | None, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{who} is random and needs an explicit numpy Generator, e.g. sample_rng(seed, epoch, "
            f"index); got {rng!r}"
        )
    return rng


def _scaled_size(h: int, w: int, sx: float, sy: float) -> tuple[int, int]:
    # cv2.resize(fx=..., fy=...) rounds the product; never collapse to an empty image.
    return max(1, int(round(h * sy))), max(1, int(round(w * sx)))


def _draw_scale(
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
        self.scale = _check_range(scale, "scale", positive=True)
        self.aspect_ratio = (
            None if aspect_ratio is None else _check_range(aspect_ratio, "aspect_ratio", True)
        )

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check_pair(image, label, "RandScale")
        rng = _need_rng(rng, "RandScale")
        sx, sy = _draw_scale(rng, self.scale, self.aspect_ratio)
        h, w = label.shape
        nh, nw = _scaled_size(h, w, sx, sy)
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
        self.rotate = _check_range(rotate, "rotate")
        self.fill = _fill_colour(padding)
        self.ignore_index = int(ignore_index)
        self.p = _check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check_pair(image, label, "RandRotate")
        rng = _need_rng(rng, "RandRotate")
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
        self.p = _check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check_pair(image, label, "RandomGaussianBlur")
        rng = _need_rng(rng, "RandomGaussianBlur")
        if rng.random() < self.p:
            image = gaussian_blur5(image)
        return image, label

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(kernel_size=5, p={self.p})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_prob(p, "p")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check_pair(image, label, "RandomHorizontalFlip")
        rng = _need_rng(rng, "RandomHorizontalFlip")
        if rng.random() < self.p:
            # Copies: negative-stride views would be rejected by torch.from_numpy later.
            image = np.ascontiguousarray(image[:, ::-1])
            label = np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _crop_geometry(
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
        self.size = _check_size(size, "size")
        if crop_type not in ("rand", "center"):
            raise ValueError(f"crop_type must be 'rand' or 'center', got {crop_type!r}")
        self.crop_type = crop_type
        self.fill = _fill_colour(padding)
        self.ignore_index = int(ignore_index)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ):
        _check_pair(image, label, "Crop")
        if self.crop_type == "rand":
            rng = _need_rng(rng, "Crop(crop_type='rand')")
        h, w = label.shape
        ch, cw = self.size
        top, left, h_off, w_off = _crop_geometry(h, w, self.size, self.crop_type, rng)
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
        self.mean, self.std = _check_mean_std(mean, std)
        self._mean = np.asarray(self.mean, np.float32)
        self._inv_std = (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_pair(image, label, "ToTensorNormalize")
        x = image.astype(np.float32)  # (H, W, 3)
        x -= self._mean
        x *= self._inv_std
        img = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H, W)
        if label is None:
            return img, None
        return img, torch.from_numpy(label.astype(np.int64))  # (H, W)

    def __repr__(self) -> str:
        return f"ToTensorNormalize(mean={self.mean}, std={self.std})"


# --------------------------------------------------------------------------------------------
# Fused, fast training transform
# --------------------------------------------------------------------------------------------


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


class TrainAugment:
    """The paper's training augmentation in one resampling pass, returning tensors.

    Draws the random numbers of ``Compose([RandScale, RandRotate, RandomGaussianBlur,
    RandomHorizontalFlip, Crop('rand')])`` in the same order, so both pipelines make the same
    decisions for the same generator. The geometric steps (scale, rotation about the scaled
    image's centre, flip, centred padding, crop window) compose into one affine map from output
    pixels to source pixels; the image is sampled bilinearly and the label with nearest
    neighbour on exactly the same grid, so they cannot drift apart. Pixels that the step-by-step
    pipeline would fill (rotated-in corners, padding) become the mean colour (0 after
    normalisation) and ``ignore_index``. The blur is applied to the sampled window with a 2-pixel
    margin, which equals blurring the whole scaled canvas except within 2 pixels of padding.

    Args:
        crop_size: Output ``(height, width)``.
        scale: Scale range, or ``None`` for no scaling.
        aspect_ratio: Optional aspect-ratio range (as :class:`RandScale`).
        rotate: Angle range in degrees, or ``None`` for no rotation.
        rotate_p: Probability of rotating.
        blur: Whether to apply :class:`RandomGaussianBlur`.
        blur_p: Probability of blurring.
        flip: Whether to apply :class:`RandomHorizontalFlip`.
        flip_p: Probability of flipping.
        mean: Normalisation mean (RGB, 0..255); also the padding colour.
        std: Normalisation std (RGB, 0..255).
        ignore_index: Label value of padded / rotated-in pixels.
    """

    def __init__(
        self,
        crop_size: Sequence[int] | int,
        *,
        scale: Sequence[float] | None = (0.5, 2.0),
        aspect_ratio: Sequence[float] | None = None,
        rotate: Sequence[float] | None = (-10.0, 10.0),
        rotate_p: float = 0.5,
        blur: bool = True,
        blur_p: float = 0.5,
        flip: bool = True,
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = _check_size(crop_size, "crop_size")
        self.scale = None if scale is None else _check_range(scale, "scale", positive=True)
        self.aspect_ratio = (
            None if aspect_ratio is None else _check_range(aspect_ratio, "aspect_ratio", True)
        )
        if self.aspect_ratio is not None and self.scale is None:
            raise ValueError("aspect_ratio needs scale (use scale=(1, 1) for aspect only)")
        self.rotate = None if rotate is None else _check_range(rotate, "rotate")
        self.rotate_p = _check_prob(rotate_p, "rotate_p")
        self.blur = bool(blur)
        self.blur_p = _check_prob(blur_p, "blur_p")
        self.flip = bool(flip)
        self.flip_p = _check_prob(flip_p, "flip_p")
        self.mean, self.std = _check_mean_std(mean, std)
        self.ignore_index = int(ignore_index)
        if abs(self.ignore_index) >= _FLOAT_EXACT:
            raise ValueError(f"ignore_index must be below 2**24 in magnitude, got {ignore_index}")
        self._mean_np = np.asarray(self.mean, np.float32)
        self._inv_std_t = (1.0 / torch.tensor(self.std, dtype=torch.float64)).float().view(3, 1, 1)

    def reference(self) -> Compose:
        """The equivalent step-by-step pipeline (same random draws), for checks and pictures."""
        steps: list[JointTransform] = []
        if self.scale is not None:
            steps.append(RandScale(self.scale, self.aspect_ratio))
        if self.rotate is not None:
            steps.append(RandRotate(self.rotate, self.mean, self.ignore_index, self.rotate_p))
        if self.blur:
            steps.append(RandomGaussianBlur(self.blur_p))
        if self.flip:
            steps.append(RandomHorizontalFlip(self.flip_p))
        steps.append(Crop(self.crop_size, "rand", self.mean, self.ignore_index))
        steps.append(ToTensorNormalize(self.mean, self.std))
        return Compose(steps)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            label: ``(H, W)`` integer class indices.
            rng: The sample's generator (see :func:`sample_rng`).

        Returns:
            ``image`` float32 ``(3, ch, cw)`` normalised, ``label`` int64 ``(ch, cw)``.
        """
        _check_pair(image, label, "TrainAugment")
        rng = _need_rng(rng, "TrainAugment")
        if label.size and (label.min() <= -_FLOAT_EXACT or label.max() >= _FLOAT_EXACT):
            raise ValueError("TrainAugment: label values must be below 2**24 in magnitude")
        h, w = label.shape
        ch, cw = self.crop_size

        # --- random decisions, in the reference pipeline's order -------------------------
        sx = sy = 1.0
        if self.scale is not None:
            sx, sy = _draw_scale(rng, self.scale, self.aspect_ratio)
        hs, ws = _scaled_size(h, w, sx, sy)
        angle = 0.0
        if self.rotate is not None and rng.random() < self.rotate_p:
            angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * rng.random()
        do_blur = self.blur and rng.random() < self.blur_p
        do_flip = self.flip and rng.random() < self.flip_p
        top, left, h_off, w_off = _crop_geometry(hs, ws, self.crop_size, "rand", rng)

        # --- output pixel -> source pixel, continuous coords (pixel i spans [i, i+1)) -----
        m = 2 if do_blur else 0  # blur margin: sample a 2-pixel ring, blur 'valid'
        # Window pixel (j, i) -> padded canvas (j + w_off - m, i + h_off - m) -> scaled canvas.
        mat = _translate(w_off - left - m, h_off - top - m)
        if do_flip:
            mat = np.array([[-1.0, 0.0, ws], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ mat
        if angle != 0.0:
            # PIL/OpenCV convention: positive angle turns the picture counter-clockwise, so the
            # inverse map rotates output coordinates by -angle about the canvas centre.
            a = -math.radians(angle)
            c, s = math.cos(a), math.sin(a)
            rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            mat = _translate(ws / 2, hs / 2) @ rot @ _translate(-ws / 2, -hs / 2) @ mat
        mat = np.diag([w / ws, h / hs, 1.0]) @ mat

        oh, ow = ch + 2 * m, cw + 2 * m
        # Only the part of the source the window can touch is converted to float.
        corners = mat @ np.array([[0, ow, 0, ow], [0, 0, oh, oh], [1, 1, 1, 1]], np.float64)
        x0 = max(0, math.floor(corners[0].min()) - 1)
        x1 = min(w, math.ceil(corners[0].max()) + 1)
        y0 = max(0, math.floor(corners[1].min()) - 1)
        y1 = min(h, math.ceil(corners[1].max()) + 1)

        # Which window rows/cols lie on the (unpadded) scaled canvas; the rest is padding.
        rows = np.arange(oh) + (h_off - top - m)
        cols = np.arange(ow) + (w_off - left - m)
        row_pad = (rows < 0) | (rows >= hs)  # (oh,)
        col_pad = (cols < 0) | (cols >= ws)  # (ow,)

        if x1 <= x0 or y1 <= y0:  # the window sees no source pixel at all
            img = torch.zeros(3, oh, ow)
            lab = torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
        else:
            sw, sh = x1 - x0, y1 - y0
            # Normalise to grid_sample's [-1, 1] (align_corners=False: -1 is the left edge of
            # the first pixel) relative to the source slice.
            norm = np.array(
                [[2.0 / sw, 0.0, -1.0 - 2.0 * x0 / sw], [0.0, 2.0 / sh, -1.0 - 2.0 * y0 / sh]]
            )
            g = norm @ mat  # (2, 3) acting on pixel centres (j + 0.5, i + 0.5, 1)
            # The map is separable into a per-column and a per-row term; summing two float32
            # vectors straight into the grid's slots is ~20x faster than float64 meshgrids.
            xs = np.arange(ow, dtype=np.float64) + 0.5
            ys = np.arange(oh, dtype=np.float64) + 0.5
            grid = torch.empty(oh, ow, 2)  # (oh, ow, [x, y])
            for k in range(2):
                col_term = torch.from_numpy((g[k, 0] * xs).astype(np.float32))  # (ow,)
                row_term = torch.from_numpy((g[k, 1] * ys + g[k, 2]).astype(np.float32))  # (oh,)
                torch.add(col_term[None, :], row_term[:, None], out=grid[..., k])
            # Padding rows/cols: push far outside so both samplers return their fill.
            if row_pad.any():
                grid[torch.from_numpy(row_pad)] = 4.0
            if col_pad.any():
                grid[:, torch.from_numpy(col_pad)] = 4.0
            grid = grid[None]  # (1, oh, ow, 2)

            # Subtract the mean *before* sampling so grid_sample's zero fill is the mean colour.
            # Converting in numpy gives a writable copy (images read with np.asarray(PIL) are
            # read-only, which torch.from_numpy warns about); the permuted (channels-last)
            # layout is also what grid_sample is fastest with on CPU.
            src = torch.from_numpy(image[y0:y1, x0:x1].astype(np.float32))  # (sh, sw, 3)
            # Subtracting a row-long tiled mean is ~4x faster than broadcasting over the last
            # dimension of size 3.
            src.view(sh, sw * 3).sub_(torch.from_numpy(np.tile(self._mean_np, sw)))
            src = src.permute(2, 0, 1)  # (3, sh, sw), channels-last memory
            img = F.grid_sample(
                src[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )[0]  # (3, oh, ow)

            lab_src = torch.from_numpy(label[y0:y1, x0:x1].astype(np.float32))
            lab_src.sub_(float(self.ignore_index))  # so the zero fill means ignore
            lab = F.grid_sample(
                lab_src[None, None],
                grid[:, m : m + ch, m : m + cw] if m else grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )[0, 0]  # (ch, cw)
            # Nearest sampling copies values, so they are still exact integers: no rounding.
            lab = lab.add_(float(self.ignore_index)).to(torch.int64)

        if do_blur:
            img = _blur5_valid(img)  # (3, ch, cw)
            # The reference pipeline pads *after* blurring: restore an exact fill there.
            rp, cp = row_pad[m : m + ch], col_pad[m : m + cw]
            if rp.any():
                img[:, torch.from_numpy(rp)] = 0.0
            if cp.any():
                img[:, :, torch.from_numpy(cp)] = 0.0
        img = img.mul_(self._inv_std_t).contiguous()  # (3, ch, cw)
        return img, lab.contiguous()

    def __repr__(self) -> str:
        return (
            f"TrainAugment(crop_size={self.crop_size}, scale={self.scale}, "
            f"aspect_ratio={self.aspect_ratio}, rotate={self.rotate}, rotate_p={self.rotate_p}, "
            f"blur={self.blur}, blur_p={self.blur_p}, flip={self.flip}, flip_p={self.flip_p}, "
            f"ignore_index={self.ignore_index})"
        )


def _blur5_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable [1, 4, 6, 4, 1] / 16 blur without padding: ``(C, H+4, W+4) -> (C, H, W)``.

    Written as fused in-place shifted sums: on CPU this is ~15x faster than a depthwise
    ``conv2d`` and ~3x faster than the same sums with temporaries.
    """
    y = torch.add(x[:, :-4], x[:, 4:])  # (C, H, W+4)
    y.add_(x[:, 1:-3], alpha=4.0).add_(x[:, 3:-1], alpha=4.0).add_(x[:, 2:-2], alpha=6.0)
    z = torch.add(y[:, :, :-4], y[:, :, 4:])  # (C, H, W)
    z.add_(y[:, :, 1:-3], alpha=4.0).add_(y[:, :, 3:-1], alpha=4.0).add_(y[:, :, 2:-2], alpha=6.0)
    return z.mul_(1.0 / 256.0)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def train_transform(
    crop_size: tuple[int, int],
    *,
    scale: tuple[float, float] | None = (0.5, 2.0),
    rotate: tuple[float, float] | None = (-10.0, 10.0),
    blur: bool = True,
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    fused: bool = True,
) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """The paper's training augmentation, ``(image, label, rng) -> (Tensor, Tensor)``.

    Args:
        crop_size: Output ``(height, width)``.
        scale: Random scale range, ``None`` to disable.
        rotate: Random rotation range in degrees (applied with p=0.5), ``None`` to disable.
        blur: Apply the 5x5 Gaussian blur with p=0.5.
        flip: Apply the horizontal flip with p=0.5.
        mean: RGB mean on the 0..255 scale (normalisation and image padding).
        std: RGB std on the 0..255 scale.
        ignore_index: Label value for padded and rotated-in pixels.
        fused: ``True`` (default) returns the fast :class:`TrainAugment`; ``False`` the
            step-by-step :class:`Compose` reference, which makes the same random decisions.

    Returns:
        A callable producing float32 ``(3, h, w)`` and int64 ``(h, w)`` tensors.
    """
    aug = TrainAugment(
        crop_size,
        scale=scale,
        rotate=rotate,
        blur=blur,
        flip=flip,
        mean=mean,
        std=std,
        ignore_index=ignore_index,
    )
    return aug if fused else aug.reference()


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> ToTensorNormalize:
    """Evaluation preprocessing: only ``ToTensor + Normalize`` (the generator is ignored).

    Sliding-window / multi-scale evaluation happens on the tensor in the inference code.
    """
    return ToTensorNormalize(mean, std)
