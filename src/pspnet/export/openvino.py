"""OpenVINO IR exports (``model.xml`` + ``model.bin``), fp32 or int8 (NNCF post-training).

Why a second int8 engine: on an AVX-512 VNNI Xeon OpenVINO's int8 ran pspnet50 at 473x473
faster than ONNX Runtime's (docs/benchmarks.md, "int8 (AVX-512 VNNI machine)"); on the AVX2
EPYC ONNX Runtime led. Both are kept; the numbers say which to deploy where.

The IR is made from the same graph as ``pspnet export --format onnx`` (so a ``dynamic`` export
keeps its exact shape-generic pyramid pooling): the model is exported to a temporary ONNX file,
converted with ``openvino.convert_model``, quantized with ``nncf.quantize`` when calibration
images are given, and saved with the pspnet metadata document in the model's ``rt_info`` (key
``pspnet``), where :class:`pspnet.checkpoint.exported.OpenVinoSegmenter` reads it back.

Checks: the fp32 IR itself is compared with eager PyTorch (OpenVINO running it, at the sizes an
ONNX export is checked at) before anything is written; an int8 IR is quantized from that checked
graph and its label agreement with eager fp32 is reported, not held to the fp32 tolerance.
Needs the ``openvino`` extra (openvino, nncf for int8, onnx and onnxscript for the graph).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.calibration import Calibration
from pspnet.checkpoint.exported import (
    METADATA_KEY,
    OPENVINO_INSTALL_HINT,
    OpenVinoSegmenter,
    read_metadata,
)
from pspnet.export.common import Output, check_args, prepare
from pspnet.export.int8 import calibration_arrays
from pspnet.export.onnx import export_onnx
from pspnet.export.parity import (ExportCheckError, ExportReport, check_sizes_for, parity,
                                  report_for)

__all__ = ["export_openvino"]

#: What an int8 IR's metadata says about its quantization.
NNCF_SCHEME = ("OpenVINO NNCF post-training quantization (default preset: symmetric per-channel "
               "s8 weights, u8/s8 activations from the calibration images' ranges, fast bias "
               "correction)")


def _require(int8: bool) -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise ImportError(f"OpenVINO export needs openvino; {OPENVINO_INSTALL_HINT}") from None
    if int8:
        try:
            import nncf  # noqa: F401
        except ImportError:
            raise ImportError(f"OpenVINO int8 export needs nncf; {OPENVINO_INSTALL_HINT}") from None
    return ov


def export_openvino(
    model: nn.Module,
    path: str | Path,
    *,
    height: int,
    width: int,
    dynamic: bool = False,
    output: Output = "logits",
    meta: WeightsMeta | None = None,
    calibration: Calibration | None = None,
    limit: int | None = None,
    check: bool = True,
    rtol: float = 1e-3,
    timing_runs: int = 3,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to OpenVINO IR: ``path`` (``.xml``) and its ``.bin`` beside it.

    Args:
        model: The (trained) PyTorch model; deep-copied, never modified.
        path: The ``.xml`` file to write (the weights go to the same name with ``.bin``).
        height, width, dynamic, output, meta, rtol, seed: As for
            :func:`pspnet.export.export_onnx`.
        calibration: int8: image paths, a folder or a list file
            (:mod:`pspnet.checkpoint.calibration`), resized to ``height`` x ``width``; None:
            an fp32 IR.
        limit: Use at most this many calibration images.
        check: Compare the fp32 IR, run by OpenVINO, with eager PyTorch and raise
            :class:`ExportCheckError` (writing nothing) when it differs beyond the tolerance.
        timing_runs: Forward passes timed per checked size (median reported); 0 = none.

    Returns:
        An :class:`ExportReport` (``runtime="openvino"``) of the fp32 IR's parity check, with
        ``path`` the written file; for int8 its ``notes`` give the int8 IR's label agreement.

    Raises:
        ImportError: openvino (or nncf for int8, onnxscript for the graph) missing.
        ValueError: ``path`` does not end in ``.xml``; bad sizes or calibration images.
        ExportCheckError: The fp32 IR does not reproduce eager PyTorch; nothing written.
    """
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO IR export is an .xml file (its weights go to a .bin "
                         f"beside it), got {path}; use e.g. --out {path.with_suffix('.xml')}")
    height, width = check_args(height, width, output, rtol)
    ov = _require(int8=calibration is not None)
    t0 = time.perf_counter()
    images = None
    if calibration is not None:  # read first: a bad image fails before the long export
        images = calibration_arrays(model, meta, calibration, (height, width), limit)
    _, ref, _ = prepare(model, output, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp_dir:
        tmp = Path(tmp_dir)
        # The ONNX file is only the bridge to OpenVINO: the check that matters is the IR's.
        export_onnx(model, tmp / "graph.onnx", height=height, width=width, dynamic=dynamic,
                    output=output, meta=meta, check=False, timing_runs=0, seed=seed)
        doc = {**read_metadata(tmp / "graph.onnx"), "runtime": "openvino",
               "openvino_version": ov.get_version()}
        graph = ov.convert_model(str(tmp / "graph.onnx"))
        fp32_xml = tmp / "fp32.xml"
        _save(ov, graph, doc, fp32_xml)
        sizes = check_sizes_for(height, width, dynamic)
        checks = (parity(ref, OpenVinoSegmenter(fp32_xml), sizes, output=output, rtol=rtol,
                         timing_runs=timing_runs, seed=seed + 1) if check else ())
        report = report_for(path, doc, rtol)(checks=checks)
        if check and not report.ok:
            raise ExportCheckError(
                f"the OpenVINO IR does not reproduce eager PyTorch; no file was written to "
                f"{path}.\n{report.format()}\nPlease report this; check=False writes it anyway.",
                report,
            )
        final, notes = fp32_xml, ()
        if images is not None:
            import nncf

            doc = {**doc, "precision": "int8", "calibration_images": len(images),
                   "quantization": NNCF_SCHEME}
            quantized = nncf.quantize(graph, nncf.Dataset(images), subset_size=len(images))
            final = tmp / "int8.xml"
            _save(ov, quantized, doc, final)
            (int8,) = parity(ref, OpenVinoSegmenter(final), sizes[:1], output=output,
                             rtol=rtol, timing_runs=timing_runs, seed=seed + 1)
            notes = (f"int8 IR vs eager fp32 at {int8.height}x{int8.width}: labels agree "
                     f"{100 * int8.label_agreement:.2f}%, max|diff| {int8.max_abs_diff:.3g} "
                     f"(quantization error; not held to the fp32 tolerance)"
                     + (f"; runtime {int8.runtime_ms:.1f} ms" if int8.runtime_ms else ""),)
        # weights first: the .xml appears last, so a reader never sees an .xml without its .bin
        os.replace(final.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(final, path)
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return dataclasses.replace(report, export_seconds=time.perf_counter() - t0, file_bytes=size,
                               metadata=doc, notes=notes)


def _save(ov: Any, graph: Any, doc: dict[str, Any], xml: Path) -> None:
    """Save ``graph`` with the metadata ``doc`` in its rt_info; fp32 weights, never fp16
    (compression would change an fp32 export's results)."""
    graph.set_rt_info(json.dumps(doc), [METADATA_KEY])
    ov.save_model(graph, str(xml), compress_to_fp16=False)
