"""The model registry: one explicit table of architectures and the one builder that reads a config.

Two families share the PSP head:

* ``pspnet50``, ``pspnet101``, ``pspnet152``: the authors' ResNets (deep 3x3 stem, 64-64-128),
  every 3x3 of stage 4 dilated by 2 and of stage 5 by 4 at output stride 8 (hszhao/semseg).
* ``pspnet_r18`` ... ``pspnet_r101``: torchvision-layout ResNets (7x7 stem), so ImageNet weights in
  torchvision's format load directly. ``r18``/``r34`` are the light models for CPU training.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pspnet.config import ConfigError, ModelConfig, from_dict
from pspnet.models.backbone import BasicBlock, Bottleneck, ResNet
from pspnet.models.heads import FCNHead, PSPHead
from pspnet.models.pspnet import PSPNet

__all__ = ["ArchSpec", "MODELS", "list_models", "get_arch", "build_model", "create_model"]


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes one registered architecture from another."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    stem: Literal["deep", "plain"]
    stem_width: int
    description: str


MODELS: dict[str, ArchSpec] = {
    "pspnet50": ArchSpec(Bottleneck, (3, 4, 6, 3), "deep", 64, "authors' ResNet-50, deep stem"),
    "pspnet101": ArchSpec(Bottleneck, (3, 4, 23, 3), "deep", 64, "authors' ResNet-101, deep stem"),
    "pspnet152": ArchSpec(Bottleneck, (3, 8, 36, 3), "deep", 64, "authors' ResNet-152, deep stem"),
    "pspnet_r18": ArchSpec(BasicBlock, (2, 2, 2, 2), "plain", 64, "torchvision ResNet-18 (CPU)"),
    "pspnet_r34": ArchSpec(BasicBlock, (3, 4, 6, 3), "plain", 64, "torchvision ResNet-34 (CPU)"),
    "pspnet_r50": ArchSpec(Bottleneck, (3, 4, 6, 3), "plain", 64, "torchvision ResNet-50"),
    "pspnet_r101": ArchSpec(Bottleneck, (3, 4, 23, 3), "plain", 64, "torchvision ResNet-101"),
}


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return list(MODELS)


def get_arch(name: str) -> ArchSpec:
    """Look up an architecture, listing the choices (and the closest name) on a miss."""
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown architecture {name!r}.{hint} Available: {', '.join(MODELS)}"
        ) from None


def build_model(cfg: ModelConfig) -> PSPNet:
    """Build a randomly initialised PSPNet from its config (the only reader of ModelConfig)."""
    spec = get_arch(cfg.arch)
    backbone = ResNet(
        spec.block,
        spec.layers,
        stem=spec.stem,
        stem_width=cfg.stem_width or spec.stem_width,
        output_stride=cfg.output_stride,
        contract_dilation=cfg.contract_dilation,
        base_width=cfg.base_width or 64,
    )
    head = PSPHead(
        backbone.out_channels["out"],
        cfg.num_classes,
        bins=cfg.bins,
        pooling=cfg.pooling,
        ppm_channels=cfg.ppm_channels,
        channels=cfg.head_channels,
        dropout=cfg.dropout,
        use_ppm=cfg.use_ppm,
        align_corners=cfg.align_corners,
    )
    aux = (
        FCNHead(backbone.out_channels["aux"], cfg.num_classes, cfg.aux_channels, cfg.dropout)
        if cfg.aux
        else None
    )
    return PSPNet(backbone, head, aux, align_corners=cfg.align_corners)


def model_config(arch: str, num_classes: int, **options: Any) -> ModelConfig:
    """Validate ``options`` (ModelConfig field names) into a ModelConfig, naming bad keys."""
    get_arch(arch)
    return from_dict(ModelConfig, {"arch": arch, "num_classes": num_classes, **options}, "model")


def create_model(arch: str, num_classes: int, **options: Any) -> PSPNet:
    """Create a randomly initialised PSPNet.

    Args:
        arch: A registered name (see :func:`list_models`).
        num_classes: Number of classes.
        **options: Any :class:`pspnet.config.ModelConfig` field, e.g. ``output_stride=16``,
            ``bins=(1, 2, 3, 6)``, ``pooling="max"``, ``use_ppm=False``, ``aux=False``,
            ``align_corners=False``.

    Returns:
        The model in training mode (``model.config`` holds its ModelConfig).
    """
    cfg = model_config(arch, num_classes, **options)
    model = build_model(cfg)
    model.config = cfg  # type: ignore[assignment]
    return model


