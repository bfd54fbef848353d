"""Typed, frozen, validated configuration.

Every configuration object is a frozen dataclass that checks itself in ``__post_init__`` and
raises :class:`ConfigError` naming the key the user wrote. Configs load from flat YAML or dicts,
take dotted ``key=value`` overrides, and are saved inside every checkpoint and weight directory,
so a model file always says how it was built.

Modules: :mod:`~pspnet.config.core` (dict <-> dataclass conversion, YAML, overrides, merge),
:mod:`~pspnet.config.model` (:class:`ModelConfig`, :class:`Preprocessing`),
:mod:`~pspnet.config.training` (:class:`Config` and its data / optim / train sections),
:mod:`~pspnet.config.limits` (:data:`LIMITS`: every bound on a size that decides an
allocation) and :mod:`~pspnet.config.flags` (the ``pspnet train`` flags, one row per flag).

This package imports nothing from the rest of :mod:`pspnet` (it is the bottom layer).
"""

from pspnet.config.core import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    merge,
    parse_override,
    to_dict,
)
from pspnet.config.limits import INFERENCE_MEMORY_BYTES, LIMITS, Limit, check_finite, check_limit
from pspnet.config.model import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, Preprocessing
from pspnet.config.training import (
    LIGHT_ARCHS,
    TRAIN_DEFAULT_ARCH,
    Config,
    DataConfig,
    OptimConfig,
    TrainConfig,
    default_head_channels,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "Preprocessing",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "parse_override",
    "merge",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "Config",
    "load_yaml",
    "default_head_channels",
    "TRAIN_DEFAULT_ARCH",
    "LIGHT_ARCHS",
    "LIMITS",
    "INFERENCE_MEMORY_BYTES",
    "Limit",
    "check_limit",
    "check_finite",
]
