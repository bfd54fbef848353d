"""Typed, frozen, validated configuration.

Every configuration object is a frozen dataclass that checks itself in ``__post_init__`` and
raises :class:`ConfigError` naming the key the user wrote. Configs load from flat YAML or dicts,
take dotted ``key=value`` overrides, and are saved inside every checkpoint and weight directory,
so a model file always says how it was built.

This module imports nothing from the rest of :mod:`pspnet` (it is the bottom layer).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "Preprocessing",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: ImageNet statistics on the 0..255 scale, RGB order (what the authors normalise with).
IMAGENET_MEAN: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range.

    The message always names the key as the user wrote it (``model.output_stride``) and the fix.
    """


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"`{key}` {message}")


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

    def __post_init__(self) -> None:
        _check(isinstance(self.arch, str) and bool(self.arch), "model.arch", "must be a name")
        _check(
            isinstance(self.num_classes, int) and self.num_classes >= 1,
            "model.num_classes",
            f"must be a positive integer, got {self.num_classes!r}",
        )
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
        _check(
            self.pooling in ("avg", "max"),
            "model.pooling",
            f"must be 'avg' or 'max', got {self.pooling!r}",
        )
        _check(
            self.ppm_channels is None or self.ppm_channels >= 1,
            "model.ppm_channels",
            f"must be positive or null, got {self.ppm_channels!r}",
        )
        _check(
            0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout!r}"
        )
        _check(self.head_channels >= 1, "model.head_channels", "must be positive")
        _check(self.aux_channels >= 1, "model.aux_channels", "must be positive")
        _check(
            self.stem_width is None or self.stem_width >= 1,
            "model.stem_width",
            f"must be positive or null, got {self.stem_width!r}",
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
        _check(len(self.mean) == 3, "preprocess.mean", "must have 3 values")
        _check(
            len(self.std) == 3 and all(s > 0 for s in self.std),
            "preprocess.std",
            "must have 3 positive values",
        )
        _check(
            self.channel_order in ("RGB", "BGR"),
            "preprocess.channel_order",
            f"must be 'RGB' or 'BGR', got {self.channel_order!r}",
        )


# --------------------------------------------------------------------------------------------
# Generic dict <-> dataclass conversion, with errors that name the key.

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Turn a (nested) config dataclass into plain JSON/YAML-friendly data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce YAML/JSON data to the annotated type ``tp``, raising ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"`{key}` has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"`{key}` must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"`{key}` must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"`{key}` must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"`{key}` must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"`{key}` must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"`{key}` must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"`{key}` must be a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"`{key}` must be a path, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion.

    Args:
        cls: A config dataclass type.
        data: A mapping (e.g. parsed YAML or JSON).
        prefix: Dotted path of ``data`` inside the root config, used in error messages.

    Raises:
        ConfigError: On an unknown key, a value of the wrong type, or a failed validation.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"`{prefix or cls.__name__}` must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean `{prefix + '.' if prefix else ''}{close[0]}`?" if close else ""
            raise ConfigError(
                f"unknown key `{key}`{hint} Valid keys: {', '.join(sorted(fields))}"
            )
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"`{prefix or cls.__name__}`: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a nested dict.

    Args:
        data: The nested config dict (not modified).
        overrides: Strings like ``"optim.lr=0.02"`` or ``"model.bins=[1,2,3,6]"``.

    Returns:
        A new nested dict. Unknown keys are left for :func:`from_dict` to reject by name.
    """
    out = json.loads(json.dumps(data, default=str))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.02)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: `{p}` is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file on failure."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must contain a mapping at the top level")
    return data

