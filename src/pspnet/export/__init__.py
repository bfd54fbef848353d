"""Export a PSPNet to ONNX, OpenVINO IR or TorchScript, with a parity check against eager PyTorch.

The pyramid pooling problem
---------------------------
PSPNet's pyramid pooling module uses ``nn.AdaptiveAvgPool2d(bin)``. Exporters record it for the
feature size they trace: the TorchScript-based ONNX exporter writes a fixed ``AveragePool``
kernel (pytorch/pytorch#42653, #64806; open-mmlab/mmsegmentation#1840), and the dynamo exporter
in torch 2.13 writes index tables computed for that size. A "dynamic" graph built that way
crashes in ONNX Runtime at some sizes (``GatherND ... invalid index``) and at others *silently
returns different logits* (measured: 0.03 max abs logit difference for pspnet_r18 exported at
64x64 and run at 57x83).

What this module does about it
------------------------------
* ``dynamic=True`` (ONNX): the model is deep-copied and, **in the copy only**, every
  ``nn.AdaptiveAvgPool2d`` / ``nn.AdaptiveMaxPool2d`` is swapped for
  :class:`ExactAdaptivePool2d`, which computes PyTorch's adaptive windows
  ``[floor(i * L / b), ceil((i + 1) * L / b))`` from the *runtime* size: average pooling as
  ``M_h @ x @ M_w^T`` with 0/1 window matrices built from ``arange(L)``, divided by the window
  areas; max pooling as ``b`` slices per axis with symbolic bounds (separable, so exact). Both
  export with shape-generic ops. The user's model and ``models/ppm.py`` are never modified.
* ``dynamic=False`` (ONNX and TorchScript): the graph is built for one input size, which is
  recorded in the file's metadata (ONNX ``metadata_props``, TorchScript ``_extra_files``) and
  enforced: :class:`OnnxSegmenter` checks it before running, ONNX Runtime's own input-shape
  check backs that up, and the TorchScript module carries a scripted shape check in its
  ``forward`` that raises ``ValueError``. A wrong size is always an error that names the
  exported size, the given size and the fix, never a silently different result.
* Every export is checked against eager PyTorch (the *original* model, with the original
  pooling) at several input sizes before the file is moved into place; ``check=True`` raises
  :class:`ExportCheckError` and leaves no file behind when the difference exceeds the
  tolerance.

Public API (one module each)
---------------------------
* :func:`export_onnx` (:mod:`pspnet.export.onnx`), :func:`export_torchscript`
  (:mod:`pspnet.export.torchscript`), :func:`export_openvino` (:mod:`pspnet.export.openvino`:
  the ONNX graph converted to OpenVINO IR, fp32 or int8 through NNCF; the ``openvino`` extra)
  -> :class:`ExportReport` (:mod:`pspnet.export.parity`:
  the check against eager PyTorch and its report; :mod:`pspnet.export.common`: what both
  exporters share).
* :class:`ExactAdaptivePool2d`, :func:`exportable_copy` (:mod:`pspnet.export.pooling`): the
  shape-generic pooling.
* Reading exports is :mod:`pspnet.checkpoint.exported` (:func:`pspnet.load_model` opens them):
  :class:`OnnxSegmenter`, :class:`OpenVinoSegmenter`, :class:`TorchScriptSegmenter`,
  :func:`load_exported`,
  :func:`read_metadata` are re-exported here. They are runtimes usable wherever
  :mod:`pspnet.inference` expects a model (``predict(runtime, images, ...)``); they return
  logits ``(N, C, H, W)`` (or labels for ``output="labels"`` exports) and expose ``.meta``
  (:class:`~pspnet.checkpoint.WeightsMeta`) like :func:`pspnet.load_model`'s models.

ONNX export needs the ``onnx`` extra (``pip install pspnet[onnx]``: onnx, onnxscript,
onnxruntime); nothing here imports them until called.
"""

from pspnet.checkpoint.exported import (
    METADATA_KEY,
    OnnxSegmenter,
    OpenVinoSegmenter,
    TorchScriptSegmenter,
    is_exported,
    load_exported,
    read_metadata,
)
from pspnet.export.onnx import export_onnx
from pspnet.export.openvino import export_openvino
from pspnet.export.parity import ExportCheckError, ExportReport, SizeCheck
from pspnet.export.pooling import ExactAdaptivePool2d, exportable_copy
from pspnet.export.torchscript import export_torchscript

__all__ = [
    "ExactAdaptivePool2d",
    "exportable_copy",
    "SizeCheck",
    "ExportReport",
    "ExportCheckError",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "OnnxSegmenter",
    "OpenVinoSegmenter",
    "TorchScriptSegmenter",
    "load_exported",
    "is_exported",
    "read_metadata",
    "METADATA_KEY",
]
