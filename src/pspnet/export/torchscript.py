"""TorchScript export: a traced network inside a scripted size check, with its metadata.

TorchScript graphs are fixed-size (the pyramid pooling is traced for one feature size); the
scripted wrapper refuses other sizes with a message naming the fix, and
:class:`~pspnet.checkpoint.exported.TorchScriptSegmenter` checks first for Python callers.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.exported import TS_EXTRA, Output, TorchScriptSegmenter
from pspnet.export.common import check_args, example_batch, meta_fields, metadata_doc, prepare
from pspnet.export.parity import ExportReport, SizeCheck, parity, report_for, write_checked

__all__ = ["export_torchscript"]


class _SizeGuard(nn.Module):
    """Scripted wrapper: refuses any input but (N, 3, height, width), then runs the traced net."""

    def __init__(self, inner: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.inner = inner
        self.height = height
        self.width = width

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("expected normalised images of shape (N, 3, H, W)")
        if images.size(2) != self.height or images.size(3) != self.width:
            raise ValueError(
                "this TorchScript PSPNet was exported for a fixed input size of "
                + str(self.height) + "x" + str(self.width) + " (height x width) but got "
                + str(images.size(2)) + "x" + str(images.size(3))
                + ". Re-export with --height " + str(images.size(2)) + " --width "
                + str(images.size(3)) + " (or export to ONNX with --dynamic), or resize/tile "
                + "the images (sliding-window inference with crop_size "
                + str(self.height) + "x" + str(self.width) + ")."
            )
        return self.inner(images)


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    height: int,
    width: int,
    check: bool = True,
    output: Output = "logits",
    meta: WeightsMeta | None = None,
    rtol: float = 1e-3,
    timing_runs: int = 3,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` as a fixed-size TorchScript module and check it against eager PyTorch.

    The network is traced at (height, width) (dynamic batch) and wrapped in a scripted module
    whose ``forward`` raises ``ValueError`` for any other input size, so ``torch.jit.load``
    users get an error rather than a result computed for shapes the trace never saw. The
    metadata (input size, classes, preprocessing) is stored as the extra file ``config.json``.

    ``torch.jit`` is deprecated in torch 2.13 (its DeprecationWarning is silenced here); prefer
    ONNX for new deployments.

    Args:
        model: As for :func:`export_onnx` (deep-copied, never modified).
        path: Destination file (``.pt``), written atomically after the check passes.
        height, width: The only input size the module accepts.
        check: Compare with eager PyTorch at the export size; raise
            :class:`ExportCheckError` beyond ``rtol`` x the logit scale.
        output: ``"logits"`` or ``"labels"``.
        meta, rtol, timing_runs, seed: As for :func:`export_onnx`.

    Returns:
        An :class:`ExportReport`.
    """
    height, width = check_args(height, width, output, rtol)
    path = Path(path)
    t0 = time.perf_counter()
    eager, ref, num_classes = prepare(model, output, height, width)
    doc = metadata_doc(
        "torchscript", model_fields=meta_fields(model, meta, num_classes), size=(height, width),
        dynamic=False, output=output, num_classes=num_classes, min_size=None, output_name=output,
        opset=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
        with torch.no_grad():
            traced = torch.jit.trace(eager, (example_batch(height, width, seed),),
                                     check_trace=False)
        scripted = torch.jit.script(_SizeGuard(traced, height, width))

    def save(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={TS_EXTRA: json.dumps(doc)})

    def run_checks(tmp: Path) -> tuple[SizeCheck, ...]:
        return parity(ref, TorchScriptSegmenter(tmp), [(height, width, 2)], output=output,
                      rtol=rtol, timing_runs=timing_runs, seed=seed + 1)

    return write_checked(path, ".pt", t0, save, run_checks if check else None,
                         report_for(path, doc, rtol))
