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
  :class:`Compose`; their home is :mod:`pspnet.data.steps`) work step by step on numpy arrays
  with PIL. They are the readable reference, handy for custom pipelines and visual checks.
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
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pspnet.config import IMAGENET_MEAN, IMAGENET_STD
from pspnet.data.steps import (
    Compose,
    Crop,
    JointTransform,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandRotate,
    RandScale,
    ToTensorNormalize,
    check_mean_std,
    check_pair,
    check_prob,
    check_range,
    check_size,
    crop_geometry,
    draw_scale,
    gaussian_blur5,
    need_rng,
    scaled_size,
)

# Defined here, then the step-by-step classes (home: pspnet.data.steps) that callers import from
# this module.
__all__ = [
    "TrainAugment", "train_transform", "eval_transform", "sample_rng",
    "JointTransform", "Compose", "RandScale", "RandRotate", "RandomGaussianBlur",
    "RandomHorizontalFlip", "Crop", "ToTensorNormalize", "gaussian_blur5",
]  # fmt: skip

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
# Fused, fast training transform
# --------------------------------------------------------------------------------------------


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


class _Draw(NamedTuple):
    """The random decisions of one :class:`TrainAugment` call."""

    hs: int  # scaled canvas height
    ws: int  # scaled canvas width
    angle: float  # degrees; 0 when not rotated
    blur: bool
    flip: bool
    top: int  # padding above and left of the scaled image
    left: int
    h_off: int  # crop window offset in the padded canvas (see crop_geometry)
    w_off: int


def _sampling_grid(
    mat: np.ndarray,
    x0: int,
    y0: int,
    sw: int,
    sh: int,
    row_pad: np.ndarray,
    col_pad: np.ndarray,
) -> torch.Tensor:
    """``grid_sample``'s grid for output pixels through ``mat``, over the source slice at
    ``(x0, y0)`` of size ``sw`` x ``sh``; padding rows/cols point outside. (1, oh, ow, 2)."""
    oh, ow = row_pad.size, col_pad.size
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
    return grid[None]  # (1, oh, ow, 2)


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
        self.crop_size = check_size(crop_size, "crop_size")
        self.scale = None if scale is None else check_range(scale, "scale", positive=True)
        self.aspect_ratio = (
            None if aspect_ratio is None else check_range(aspect_ratio, "aspect_ratio", True)
        )
        if self.aspect_ratio is not None and self.scale is None:
            raise ValueError("aspect_ratio needs scale (use scale=(1, 1) for aspect only)")
        self.rotate = None if rotate is None else check_range(rotate, "rotate")
        self.rotate_p = check_prob(rotate_p, "rotate_p")
        self.blur = bool(blur)
        self.blur_p = check_prob(blur_p, "blur_p")
        self.flip = bool(flip)
        self.flip_p = check_prob(flip_p, "flip_p")
        self.mean, self.std = check_mean_std(mean, std)
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
        check_pair(image, label, "TrainAugment")
        rng = need_rng(rng, "TrainAugment")
        if label.size and (label.min() <= -_FLOAT_EXACT or label.max() >= _FLOAT_EXACT):
            raise ValueError("TrainAugment: label values must be below 2**24 in magnitude")
        h, w = label.shape
        ch, cw = self.crop_size
        d = self._draw(rng, h, w)
        m = 2 if d.blur else 0  # blur margin: sample a 2-pixel ring, blur 'valid'
        mat = self._source_map(d, h, w, m)

        oh, ow = ch + 2 * m, cw + 2 * m
        # Which window rows/cols lie on the (unpadded) scaled canvas; the rest is padding.
        rows = np.arange(oh) + (d.h_off - d.top - m)
        cols = np.arange(ow) + (d.w_off - d.left - m)
        row_pad = (rows < 0) | (rows >= d.hs)  # (oh,)
        col_pad = (cols < 0) | (cols >= d.ws)  # (ow,)
        img, lab = self._resample(image, label, mat, m, row_pad, col_pad)

        if d.blur:
            img = _blur5_valid(img)  # (3, ch, cw)
            # The reference pipeline pads *after* blurring: restore an exact fill there.
            rp, cp = row_pad[m : m + ch], col_pad[m : m + cw]
            if rp.any():
                img[:, torch.from_numpy(rp)] = 0.0
            if cp.any():
                img[:, :, torch.from_numpy(cp)] = 0.0
        img = img.mul_(self._inv_std_t).contiguous()  # (3, ch, cw)
        return img, lab.contiguous()

    def _draw(self, rng: np.random.Generator, h: int, w: int) -> _Draw:
        """The random decisions, in the reference pipeline's order."""
        sx = sy = 1.0
        if self.scale is not None:
            sx, sy = draw_scale(rng, self.scale, self.aspect_ratio)
        hs, ws = scaled_size(h, w, sx, sy)
        angle = 0.0
        if self.rotate is not None and rng.random() < self.rotate_p:
            angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * rng.random()
        do_blur = self.blur and rng.random() < self.blur_p
        do_flip = self.flip and rng.random() < self.flip_p
        top, left, h_off, w_off = crop_geometry(hs, ws, self.crop_size, "rand", rng)
        return _Draw(hs, ws, angle, do_blur, do_flip, top, left, h_off, w_off)

    @staticmethod
    def _source_map(d: _Draw, h: int, w: int, m: int) -> np.ndarray:
        """Output pixel -> source pixel, continuous coords (pixel i spans [i, i+1)); (3, 3)."""
        # Window pixel (j, i) -> padded canvas (j + w_off - m, i + h_off - m) -> scaled canvas.
        hs, ws = d.hs, d.ws
        mat = _translate(d.w_off - d.left - m, d.h_off - d.top - m)
        if d.flip:
            mat = np.array([[-1.0, 0.0, ws], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ mat
        if d.angle != 0.0:
            # PIL/OpenCV convention: positive angle turns the picture counter-clockwise, so the
            # inverse map rotates output coordinates by -angle about the canvas centre.
            a = -math.radians(d.angle)
            c, s = math.cos(a), math.sin(a)
            rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            mat = _translate(ws / 2, hs / 2) @ rot @ _translate(-ws / 2, -hs / 2) @ mat
        return np.diag([w / ws, h / hs, 1.0]) @ mat

    def _resample(
        self,
        image: np.ndarray,
        label: np.ndarray,
        mat: np.ndarray,
        m: int,
        row_pad: np.ndarray,
        col_pad: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the window through ``mat``: image (3, oh, ow) minus the mean, label (ch, cw)."""
        h, w = label.shape
        ch, cw = self.crop_size
        oh, ow = ch + 2 * m, cw + 2 * m
        # Only the part of the source the window can touch is converted to float.
        corners = mat @ np.array([[0, ow, 0, ow], [0, 0, oh, oh], [1, 1, 1, 1]], np.float64)
        x0 = max(0, math.floor(corners[0].min()) - 1)
        x1 = min(w, math.ceil(corners[0].max()) + 1)
        y0 = max(0, math.floor(corners[1].min()) - 1)
        y1 = min(h, math.ceil(corners[1].max()) + 1)
        if x1 <= x0 or y1 <= y0:  # the window sees no source pixel at all
            img = torch.zeros(3, oh, ow)
            return img, torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
        sw, sh = x1 - x0, y1 - y0
        grid = _sampling_grid(mat, x0, y0, sw, sh, row_pad, col_pad)  # (1, oh, ow, 2)

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
        return img, lab.add_(float(self.ignore_index)).to(torch.int64)

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
    aug = TrainAugment(crop_size, scale=scale, rotate=rotate, blur=blur, flip=flip, mean=mean,
                       std=std, ignore_index=ignore_index)
    return aug if fused else aug.reference()


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> ToTensorNormalize:
    """Evaluation preprocessing: only ``ToTensor + Normalize`` (the generator is ignored).

    Sliding-window / multi-scale evaluation happens on the tensor in the inference code.
    """
    return ToTensorNormalize(mean, std)
