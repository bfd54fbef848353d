"""ONNX export (``torch.onnx.export`` with dynamo), checked with ONNX Runtime.

``dynamic=True`` exports a copy whose adaptive pooling is :class:`ExactAdaptivePool2d`
(:mod:`pspnet.export.pooling`), so the graph is correct at every input size; fixed exports
record their size in the metadata, which :class:`~pspnet.checkpoint.exported.OnnxSegmenter`
enforces. Needs the ``onnx`` extra (``pip install 'pspnet[onnx]'``), imported only when called.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.exported import (
    METADATA_KEY,
    ONNX_INSTALL_HINT,
    OnnxSegmenter,
    Output,
)
from pspnet.export.common import (
    INPUT_NAME,
    Head,
    check_args,
    example_batch,
    meta_fields,
    metadata_doc,
    prepare,
)
from pspnet.export.parity import (
    ExportReport,
    SizeCheck,
    check_sizes_for,
    parity,
    report_for,
    write_checked,
)
from pspnet.export.pooling import exportable_copy

__all__ = ["export_onnx"]

#: The layers a dynamic export replaces with :class:`ExactAdaptivePool2d` (in a copy).
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Silence the exporter's "torchvision is not installed" lines and the graph optimiser's
    per-pass INFO lines ("Removed 235 unused nodes", "Replaced initializer ..."): not our
    concern, and they bury the parity report."""
    levels = {"torch.onnx._internal.exporter._registration": logging.ERROR,
              "onnx_ir": logging.WARNING, "onnxscript": logging.WARNING}
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: lg.level for name, lg in loggers.items()}
    for name, lg in loggers.items():
        lg.setLevel(levels[name])
    try:
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(before[name])


def _require_onnx() -> Any:
    """onnxruntime, after checking that the exporter's onnxscript is there too."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnxscript and onnxruntime ({e}); {ONNX_INSTALL_HINT}"
        ) from None
    return onnxruntime


def _min_size(program: Any) -> tuple[int, int] | None:
    """Smallest (H, W) the exported program's shape guards allow (its range constraints)."""
    try:
        ep = program.exported_program
        node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME)
        shape = node.meta["val"].shape
        out = []
        for d in (shape[2], shape[3]):
            if isinstance(d, int):
                out.append(d)
                continue
            expr = d.node.expr
            vr = ep.range_constraints.get(expr)
            out.append(int(vr.lower) if vr is not None else 1)
        return (out[0], out[1]) if max(out) > 1 else None
    except Exception:  # noqa: BLE001 - best effort across torch versions
        return None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    height: int,
    width: int,
    dynamic: bool = False,
    opset: int | None = None,
    check: bool = True,
    output: Output = "logits",
    meta: WeightsMeta | None = None,
    rtol: float = 1e-3,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    timing_runs: int = 3,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to an ONNX file and check it against eager PyTorch with ONNX Runtime.

    The graph has one input ``images`` (N, 3, H, W) float32, normalised as for the eager model,
    and one output: ``logits`` (N, C, H, W) float32, or ``labels`` (N, H, W) int64 (argmax) with
    ``output="labels"``. The batch dimension is always dynamic.

    Args:
        model: A PSPNet (or any module returning logits or ``{"out": logits}`` at input size).
            It is deep-copied; the original is not modified or moved.
        path: Destination ``.onnx`` file (written atomically, after the check passes).
        height, width: Trace size; with ``dynamic=False`` the only size the file accepts.
        dynamic: Accept any H, W. The copy's adaptive pooling is replaced by
            :class:`ExactAdaptivePool2d` so the graph is correct at every size (module
            docstring); checked at the export size and two other sizes, one non-square odd.
        opset: ONNX opset; None = the exporter's default.
        check: Compare with eager PyTorch and raise :class:`ExportCheckError` when the max abs
            logit difference exceeds ``rtol`` x the logit scale (+1e-6) at any checked size.
        output: ``"logits"`` or ``"labels"``.
        meta: Class names, palette and preprocessing to embed; defaults to ``model.meta``
            (set by :func:`pspnet.load_model`), else ``model.config``.
        rtol: Tolerance relative to the largest absolute eager logit.
        check_sizes: Extra (H, W) to check (fixed exports accept only the export size).
        timing_runs: Forward passes timed per size and runtime (median reported); 0 = none.
        seed: Seed of the random check images.

    Returns:
        An :class:`ExportReport` with the per-size differences and timings.

    Raises:
        ImportError: onnxscript/onnxruntime missing (with the pip command).
        ExportCheckError: Parity failed; nothing is written to ``path``.
    """
    height, width = check_args(height, width, output, rtol)
    sizes = _sizes_to_check(height, width, dynamic, check_sizes)
    _require_onnx()
    path = Path(path)
    t0 = time.perf_counter()
    eager, ref, num_classes = prepare(model, output, height, width)
    model_fields = meta_fields(model, meta, num_classes)
    program = _trace(eager, output, height, width, dynamic, opset, seed)
    doc = _embed_metadata(program, model_fields, (height, width), dynamic, output, num_classes)

    def run_checks(tmp: Path) -> tuple[SizeCheck, ...]:
        # Runtime failures are recorded in the report, so ORT's own error log is muted.
        runtime = OnnxSegmenter(tmp, log_level=4)
        return parity(ref, runtime, sizes, output=output, rtol=rtol, timing_runs=timing_runs,
                      seed=seed + 1)

    replaced = sum(isinstance(m, _ADAPTIVE) for m in eager.modules()) if dynamic else 0
    with _quiet_exporter_logs():  # saving runs the graph optimiser's passes
        return write_checked(path, ".onnx", t0, lambda tmp: program.save(tmp, external_data=False),
                             run_checks if check else None, report_for(path, doc, rtol, replaced))


def _sizes_to_check(
    height: int, width: int, dynamic: bool, extra: Sequence[tuple[int, int]] | None
) -> list[tuple[int, int, int]]:
    """(H, W, batch) to check: the defaults plus ``extra`` (``check_sizes``)."""
    sizes = check_sizes_for(height, width, dynamic)
    for h, w in extra or ():
        if (int(h), int(w)) not in [(a, b) for a, b, _ in sizes]:
            sizes.append((int(h), int(w), 1))
    wrong = [(h, w) for h, w, _ in sizes if (h, w) != (height, width)]
    if wrong and not dynamic:
        raise ValueError(
            f"check_sizes {wrong} differ from the fixed export size {height}x{width}; "
            "use dynamic=True to export a graph for several sizes"
        )
    return sizes


def _trace(
    eager: Head,
    output: Output,
    height: int,
    width: int,
    dynamic: bool,
    opset: int | None,
    seed: int,
) -> Any:
    """The ONNX program of ``eager`` (of its exportable copy when ``dynamic``)."""
    if dynamic:
        traced = Head(exportable_copy(eager.model), output).eval()
        shapes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    else:
        traced = eager
        shapes = {INPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, torchvision absent)
        program = torch.onnx.export(
            traced,
            (example_batch(height, width, seed),),
            input_names=[INPUT_NAME],
            output_names=[_output_name(output)],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    return program


def _output_name(output: Output) -> str:
    return "labels" if output == "labels" else "logits"


def _embed_metadata(program: Any, model_fields: dict[str, Any], size: tuple[int, int],
                    dynamic: bool, output: Output, num_classes: int) -> dict[str, Any]:
    """Write the metadata document (and a few readable keys) into the model's properties."""
    doc = metadata_doc(
        "onnx", model_fields=model_fields, size=size, dynamic=dynamic, output=output,
        num_classes=num_classes, min_size=_min_size(program) if dynamic else None,
        output_name=_output_name(output), opset=program.model.opset_imports.get(""),
    )
    props = program.model.metadata_props
    props[METADATA_KEY] = json.dumps(doc)
    props["pspnet.input_size"] = "dynamic" if dynamic else f"{size[0]}x{size[1]}"
    props["pspnet.output"] = output
    if doc["classes"]:
        props["pspnet.classes"] = json.dumps(doc["classes"])
    return doc
