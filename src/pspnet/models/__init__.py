"""PSPNet models: dilated ResNet backbones, the pyramid pooling module, heads and the registry."""

from pspnet.models.backbone import ResNet as ResNet
from pspnet.models.heads import FCNHead as FCNHead
from pspnet.models.heads import PSPHead as PSPHead
from pspnet.models.ppm import PyramidPooling as PyramidPooling
from pspnet.models.pspnet import PSPNet as PSPNet
from pspnet.models.registry import MODELS as MODELS
from pspnet.models.registry import build_model as build_model
from pspnet.models.registry import create_model as create_model
from pspnet.models.registry import list_models as list_models

__all__ = [
    "ResNet", "FCNHead", "PSPHead", "PyramidPooling", "PSPNet",
    "MODELS", "build_model", "create_model", "list_models",
]
