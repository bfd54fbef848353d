"""pspnet: PSPNet (Zhao et al., CVPR 2017) as a segmentation toolkit.

The public API is small on purpose::

    import pspnet
    model = pspnet.create_model("pspnet50", num_classes=150)       # random init, train mode
    model = pspnet.load_model("weights_dir_or_foreign.pth")         # eval mode, any known layout
    logits = model(images)["out"]                                   # (N, C, H, W)
"""

from pspnet.checkpoint import convert as convert
from pspnet.checkpoint import load_model as load_model
from pspnet.checkpoint import save_weights as save_weights
from pspnet.config import ModelConfig as ModelConfig
from pspnet.models import PSPNet as PSPNet
from pspnet.models import create_model as create_model
from pspnet.models import list_models as list_models

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "PSPNet", "convert", "create_model", "list_models", "load_model",
    "save_weights", "__version__",
]
