"""What a model is and how its images are prepared: :class:`ModelConfig`, :class:`Preprocessing`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pspnet.config.core import _check
from pspnet.config.limits import check_finite, check_limit

#: ImageNet statistics on the 0..255 scale, RGB order (what the authors normalise with).
IMAGENET_MEAN: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class ModelConfig:
    """How to build a PSPNet. Read by exactly one function: :func:`pspnet.models.build_model`."""

    arch: str = "pspnet_r18"
    """Registered architecture name; ``pspnet list-models`` prints the choices."""
    num_classes: int = 21
    """Number of output classes (the ignore label is not a class)."""
    output_stride: int = 8
    """Backbone output stride: 8 (the paper), 16 or 32. Strides become dilations while building."""
    bins: tuple[int, ...] = (1, 2, 3, 6)
    """Pyramid pooling output sizes."""
    pooling: Literal["avg", "max"] = "avg"
    """Pooling in the pyramid: the paper's best is average pooling."""
    ppm_channels: int | None = None
    """Channels of each pyramid branch after its 1x1 conv; None means C/len(bins) (the paper's
    dimension reduction). Set it to C for the paper's "no reduction" ablation row."""
    use_ppm: bool = True
    """False gives the paper's dilated-FCN baseline (no pyramid pooling)."""
    aux: bool = True
    """Build the auxiliary head on stage 4 (used by the training loss only)."""
    dropout: float = 0.1
    """Dropout2d before each classifier."""
    head_channels: int = 512
    """Width of the 3x3 fusion conv after the pyramid."""
    aux_channels: int = 256
    """Width of the auxiliary head's 3x3 conv."""
    align_corners: bool = True
    """Bilinear resizing convention: True reproduces the authors, False matches mmseg/mit-semseg."""
    stem_width: int | None = None
    """Deep-stem width (3x3 convs w, w, 2w). None: the architecture's default (64 for the
    authors' ResNets, mmseg's V1c uses 32). Ignored for plain-stem archs."""
    contract_dilation: bool = False
    """Halve the dilation of the first 3x3 of each dilated stage (mmseg, mit-semseg)."""
    base_width: int | None = None
    """Channels of the first residual stage; each later stage doubles them (and a plain stem
    outputs them). None: 64, the ResNets' width (what pretrained weights have). A narrower
    backbone keeps the receptive field, which depth and dilation decide, at a fraction of the
    cost: the demo trains with 16."""

    def __post_init__(self) -> None:
        _check(isinstance(self.arch, str) and bool(self.arch), "model.arch", "must be a name")
        _check(
            isinstance(self.num_classes, int) and self.num_classes >= 1,
            "model.num_classes",
            f"must be a positive integer, got {self.num_classes!r}",
        )
        # Sizes that decide allocations are bounded before a layer is built (pspnet.config.limits).
        check_limit("num_classes", self.num_classes, "model.num_classes")
        _check(
            self.output_stride in (8, 16, 32),
            "model.output_stride",
            f"must be 8, 16 or 32, got {self.output_stride!r}",
        )
        object.__setattr__(self, "bins", tuple(self.bins))
        _check(
            len(self.bins) > 0 and all(isinstance(b, int) and b >= 1 for b in self.bins),
            "model.bins",
            f"must be a non-empty list of positive integers, got {self.bins!r}",
        )
        check_limit("bins_count", len(self.bins), "model.bins (number of bins)")
        for i, b in enumerate(self.bins):
            check_limit("bin", b, f"model.bins[{i}]")
        _check(
            self.pooling in ("avg", "max"),
            "model.pooling",
            f"must be 'avg' or 'max', got {self.pooling!r}",
        )
        for key in ("ppm_channels", "head_channels", "aux_channels", "stem_width", "base_width"):
            value = getattr(self, key)
            if value is not None or key in ("head_channels", "aux_channels"):
                _check(isinstance(value, int) and not isinstance(value, bool), f"model.{key}",
                       f"must be a positive integer, got {value!r}")
                check_limit("channels", value, f"model.{key}")
        _check(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            "model.dropout",
            f"must be in [0, 1), got {self.dropout!r}",
        )


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model; stored beside its weights."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted, on the 0..255 scale, in ``channel_order``."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation, on the 0..255 scale."""
    channel_order: Literal["RGB", "BGR"] = "RGB"
    """Channel order the first conv expects."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        _check(len(self.mean) == 3, "preprocess.mean", f"must have 3 values, got {self.mean!r}")
        _check(len(self.std) == 3, "preprocess.std", f"must have 3 values, got {self.std!r}")
        # NaN passes `s > 0` as False but `mean` is never compared: without this check a NaN
        # mean turns every input into NaN and every pixel into class 0.
        check_finite(self.mean, "preprocess.mean")
        check_finite(self.std, "preprocess.std")
        _check(
            all(s > 0 for s in self.std),
            "preprocess.std",
            f"must have 3 positive values (images are divided by it), got {self.std!r}",
        )
        _check(
            self.channel_order in ("RGB", "BGR"),
            "preprocess.channel_order",
            f"must be 'RGB' or 'BGR', got {self.channel_order!r}",
        )
