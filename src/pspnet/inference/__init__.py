"""Inference on normalised image tensors: whole image, sliding window, multi-scale and flip.

Every function takes any ``nn.Module`` in eval mode whose forward maps a normalised
``(N, 3, H, W)`` float tensor to ``(N, C, h, w)`` logits, or to a dict holding them under
``"out"`` (auxiliary outputs are ignored). Outputs smaller than the input (a stride-8 head
without its own upsampling) are resized bilinearly to the input size. Work runs on the model's
device; nothing here moves a model or calls ``.cuda()``.

Images are expected *normalised* (``(x - mean) / std``), so padding with 0 pads with the mean
colour, which is what the authors do (``cv2.copyMakeBorder(..., value=mean)`` before
normalising). Because bilinear resizing is linear with weights summing to one, resizing the
normalised tensor equals normalising the resized image (up to float rounding), so multi-scale
inference can start from the same tensor.

Every setting is a field of ONE frozen, validated :class:`InferenceOptions`; each entry point
takes one (``predict(model, x, options)``) and/or keyword overrides that build one
(``predict(model, x, mode="slide", crop_size=473)``).

* :func:`predict_whole` - one forward pass per image batch (:mod:`.multiscale`).
* :func:`predict_sliding` - tiles with overlap averaged by a count map, memory bounded by the
  rows where tile rows overlap (C x (crop_h - stride_h) x W) plus the (C, H, W) result
  (:mod:`.window`).
* :func:`predict_labels_tiled` - the same, but returns only the (H, W) argmax label map and never
  holds a (C, H, W) score tensor, for very large images (:mod:`.labels`).
* :func:`predict` - multi-scale and flip test-time augmentation; returns probabilities.
* :func:`predict_labels` - ``predict(...).argmax(1)`` for callers that want only labels
  (``pspnet predict``, ``evaluate``, ``serve``), without full-size float32 logits.
* :data:`PROTOCOLS` - named, documented evaluation presets (the authors' ``semseg`` test script
  and mmsegmentation's ``whole``/``slide`` modes), instances of :class:`InferenceOptions`
  (:mod:`.protocols`).

* :mod:`.bounds` - the memory a prediction needs, and the mode that keeps it within
  ``InferenceOptions.max_memory`` (file prediction and the server switch a too-large
  whole-image pass to the sliding window).

Imports only torch, the standard library, :mod:`pspnet.precision` and the size bounds of
:mod:`pspnet.config.limits`.
"""

from pspnet.inference.core import default_stride, normalise_images, rescaled_size, tile_starts
from pspnet.inference.labels import predict_labels_tiled
from pspnet.inference.multiscale import predict, predict_labels, predict_whole
from pspnet.inference.options import MULTI_SCALES, PAD_MODES, InferenceOptions
from pspnet.inference.protocols import DATASET_SETTINGS, PROTOCOLS, get_protocol
from pspnet.inference.window import predict_sliding

__all__ = [
    "InferenceOptions",
    "MULTI_SCALES",
    "PAD_MODES",
    "PROTOCOLS",
    "DATASET_SETTINGS",
    "get_protocol",
    "default_stride",
    "tile_starts",
    "rescaled_size",
    "normalise_images",
    "predict_whole",
    "predict_sliding",
    "predict_labels_tiled",
    "predict",
    "predict_labels",
]
