"""int8 ONNX exports: ONNX Runtime static quantization of a checked fp32 export.

``pspnet export --int8 --calibration-list FILE`` writes the fp32 ONNX file first (checked
against eager PyTorch as always), then quantizes it with ONNX Runtime's static post-training
quantization: QDQ format, per-channel s8 weights, u8 activations whose ranges are observed on
the calibration images (min/max), ``reduce_range`` (7-bit weights) because AVX2 CPUs without
VNNI multiply u8 x s8 pairs with ``vpmaddubsw``, whose 16-bit sums saturate with full 8-bit
weights. The result is an ordinary pspnet ONNX export (same metadata, plus
``precision: int8`` and the calibration count), so ``load_model``, ``predict``, ``evaluate``
and ``serve`` run it like any other.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.calibration import Calibration, calibration_images
from pspnet.checkpoint.exported import METADATA_KEY
from pspnet.config import Preprocessing
from pspnet.export.onnx import export_onnx
from pspnet.export.parity import ExportReport

__all__ = ["export_onnx_int8", "quantize_onnx", "calibration_arrays"]


def calibration_arrays(model: nn.Module, meta: WeightsMeta | None, calibration: Calibration | None,
                       size: tuple[int, int], limit: int | None) -> list[Any]:
    """The calibration images as (1, 3, H, W) float32 numpy arrays of ``size``, normalised
    with ``meta``'s preprocessing (else ``model.meta``'s, else the authors')."""
    meta = meta if meta is not None else getattr(model, "meta", None)
    pre = meta.preprocess if isinstance(meta, WeightsMeta) else Preprocessing()
    return [x.numpy() for x in calibration_images(calibration, pre, size=size, limit=limit)]


def quantize_onnx(src: Path, dst: Path, images: list[Any]) -> dict[str, Any]:
    """Quantize the pspnet ONNX export ``src`` into ``dst`` on ``images`` (numpy batches).

    Returns:
        The metadata document written into ``dst``.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"images": x} for x in images])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    fp32 = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    doc = json.loads(fp32[METADATA_KEY])
    doc.update(precision="int8", calibration_images=len(images),
               quantization="onnxruntime static QDQ, per-channel s8 weights (reduce_range), "
                            "u8 activations (min/max)")
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in {**fp32, METADATA_KEY: json.dumps(doc)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return doc


def export_onnx_int8(
    model: nn.Module,
    path: str | Path,
    *,
    calibration: Calibration | None,
    height: int,
    width: int,
    dynamic: bool = False,
    meta: WeightsMeta | None = None,
    limit: int | None = None,
    **kwargs: Any,
) -> ExportReport:
    """Export ``model`` to an int8 ONNX file calibrated on ``calibration`` images.

    Args:
        model: The (trained) PyTorch model.
        path: The ``.onnx`` file to write.
        calibration: Image paths, a folder or a list file
            (:mod:`pspnet.checkpoint.calibration`); resized to ``height`` x ``width``.
        height, width, dynamic: As for :func:`pspnet.export.export_onnx`.
        meta: As for :func:`pspnet.export.export_onnx`.
        limit: Use at most this many calibration images.
        **kwargs: Passed on to :func:`pspnet.export.export_onnx` (the fp32 export's check).

    Returns:
        The fp32 export's :class:`ExportReport` (its parity check), with ``path`` the int8 file.
    """
    meta = meta if meta is not None else getattr(model, "meta", None)
    images = calibration_arrays(model, meta, calibration, (height, width), limit)
    path = Path(path)
    # The work happens beside the target: a missing folder is made first (as the fp32 and
    # OpenVINO exports do), and the final rename never crosses file systems.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        report = export_onnx(model, fp32, height=height, width=width, dynamic=dynamic, meta=meta,
                             **kwargs)
        part = Path(tmp) / "int8.onnx"
        quantize_onnx(fp32, part, images)
        part.replace(path)
    return dataclasses.replace(report, path=path)
