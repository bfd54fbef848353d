"""Weights in and out: our self-describing format and every public PSPNet layout.

Our format is a directory with two files:

* ``model.safetensors``: the state dict (no pickle, so loading never runs code);
* ``config.json``: ``{"format": "pspnet", "version": 1, "model": ModelConfig, "classes": [...],
  "palette": [[r, g, b], ...], "preprocess": {"mean", "std", "channel_order"}, "ignore_index",
  "source"}``. A directory is enough to rebuild, run and label the model.

Foreign layouts, detected from their keys and mapped onto ours by name (never by position):

=================  ==========================================================================
``semseg``         hszhao/semseg ``train_epoch_N.pth``: ``{'epoch','state_dict','optimizer'}``,
                   ``module.layer0.*``, ``module.ppm.features.*``, ``module.cls.*``,
                   ``module.aux.*``.
``mmseg``          mmsegmentation: ``backbone.stem.*`` (V1c, 32-32-64 stem) or ``backbone.conv1``
                   (V1b), ``decode_head.psp_modules.*``, ``decode_head.bottleneck.*``,
                   ``decode_head.conv_seg.*``, ``auxiliary_head.*``.
``mit-semseg``     CSAILVision ResNet50dilated + PPM_deepsup: ``encoder_epoch_N.pth`` (``conv1``,
                   ``bn1`` ... ``layer4``) and ``decoder_epoch_N.pth`` (``ppm.*``,
                   ``conv_last.*``, ``cbr_deepsup.*``, ``conv_last_deepsup.*``).
``resnet``         ImageNet ResNets: torchvision (7x7 ``conv1``) or the authors' deep-stem
                   ``resnet50_v2.pth`` (``conv1..conv3``); ``fc.*`` dropped. Backbone only.
=================  ==========================================================================

Training checkpoints (``WORK_DIR/checkpoints/last.pt``, written by ``pspnet train``:
``{"format": "pspnet-train-checkpoint", "config": {..., "model": ModelConfig}, "model":
state_dict, ...}``) load too: the model is rebuilt from the stored ``config["model"]``, never
inferred from the tensor shapes.

Foreign ``.pth`` files are read only with ``torch.load(weights_only=True, map_location="cpu")``:
a file that needs arbitrary unpickling is refused, never retried unsafely. Before that, the first
bytes of the file say what it is (:func:`detect_file_kind`), so an ONNX model, a TorchScript
export or a text file gets told apart from a PyTorch checkpoint instead of being blamed for
unsafe pickling.

Modules: :mod:`~pspnet.checkpoint.files` (safe reading, atomic writes),
:mod:`~pspnet.checkpoint.weights` (our directory format), :mod:`~pspnet.checkpoint.foreign`
(layouts and their conversion), :mod:`~pspnet.checkpoint.training` (the training-checkpoint
format), :mod:`~pspnet.checkpoint.exported` (runtimes of ONNX / TorchScript exports) and
:mod:`~pspnet.checkpoint.load` (:func:`load_model`, the one loader, which opens exports too).
"""


from __future__ import annotations

from pspnet.checkpoint.files import (
    EXPECTED_WEIGHTS, CheckpointError, atomic_write_bytes, detect_file_kind, read_torch_file,
)
from pspnet.checkpoint.foreign import (
    LAYOUT_OPTIONS, TRAIN_LAYOUT, convert_state_dict, detect_layout, infer_options, read_foreign,
)
from pspnet.checkpoint.load import (
    convert, load_backbone_weights, load_foreign, load_model,
)
from pspnet.checkpoint.weights import (
    CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, LoadReport, WeightsMeta, load_state_dict_checked,
    load_weights, read_meta, save_weights,
)

__all__ = [
    "CheckpointError",
    "WeightsMeta",
    "LoadReport",
    "read_torch_file",
    "detect_file_kind",
    "detect_layout",
    "convert_state_dict",
    "load_state_dict_checked",
    "save_weights",
    "load_weights",
    "load_model",
    "load_backbone_weights",
    "convert",
    "atomic_write_bytes",
    # also importable from here, as before the split
    "CONFIG_FILE",
    "EXPECTED_WEIGHTS",
    "FORMAT_VERSION",
    "LAYOUT_OPTIONS",
    "TRAIN_LAYOUT",
    "WEIGHTS_FILE",
    "infer_options",
    "load_foreign",
    "read_foreign",
    "read_meta",
]
