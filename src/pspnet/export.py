"""Export a PSPNet to ONNX or TorchScript, with a parity check and runtimes that look like models.

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

Public API
----------
* :func:`export_onnx`, :func:`export_torchscript` -> :class:`ExportReport`
* :class:`OnnxSegmenter`, :class:`TorchScriptSegmenter`, :func:`load_exported`,
  :func:`read_metadata`: runtimes usable wherever :mod:`pspnet.inference` expects a model
  (``predict(runtime, images, ...)``); they return logits ``(N, C, H, W)`` (or labels for
  ``output="labels"`` exports) and expose ``.meta`` (:class:`~pspnet.checkpoint.WeightsMeta`)
  like :func:`pspnet.load_model`'s models.
* :class:`ExactAdaptivePool2d`, :func:`exportable_copy`: the shape-generic pooling.

ONNX export needs the ``onnx`` extra (``pip install pspnet[onnx]``: onnx, onnxscript,
onnxruntime); nothing here imports them until called.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pspnet.checkpoint import WeightsMeta, detect_file_kind, load_model
from pspnet.config import ConfigError, ModelConfig, Preprocessing, from_dict, to_dict

__all__ = [
    "ExactAdaptivePool2d",
    "exportable_copy",
    "SizeCheck",
    "ExportReport",
    "ExportCheckError",
    "export_onnx",
    "export_torchscript",
    "OnnxSegmenter",
    "TorchScriptSegmenter",
    "load_exported",
    "is_exported",
    "read_metadata",
    "METADATA_KEY",
]

Output = Literal["logits", "labels"]

#: Key of the JSON document in ONNX ``metadata_props`` / the TorchScript extra file's name stem.
METADATA_KEY = "pspnet"
_TS_EXTRA = "config.json"
_FORMAT = "pspnet-export"
_VERSION = 1
_INPUT = "images"
_INSTALL_HINT = "install the ONNX extra: pip install 'pspnet[onnx]' (onnx, onnxscript, onnxruntime)"
_TS_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


# --------------------------------------------------------------------------------------------
# Shape-generic adaptive pooling


def _windows(length: int | Tensor, bins: int, device: torch.device) -> Tensor:
    """(bins, length) bool: row i marks PyTorch's adaptive window i over ``length`` positions.

    Window i is ``[floor(i * L / b), ceil((i + 1) * L / b))`` (ATen's ``start_index`` /
    ``end_index``). Built from ``arange`` of the runtime length, so it exports dynamically.
    Non-negative integers only: floor and truncating division agree, whatever an exporter uses.
    """
    i = torch.arange(bins, device=device)
    start = (i * length) // bins
    end = ((i + 1) * length + (bins - 1)) // bins
    j = torch.arange(length, device=device)
    return (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])


def _max_over(x: Tensor, bins: int, dim: int) -> Tensor:
    """Adaptive max pooling along one axis (``dim`` = -1 or -2) with symbolic slice bounds."""
    length = x.shape[dim]
    parts = []
    for i in range(bins):
        start = (i * length) // bins
        end = ((i + 1) * length + bins - 1) // bins
        parts.append(x.narrow(dim, start, end - start).amax(dim, keepdim=True))
    return torch.cat(parts, dim)


class ExactAdaptivePool2d(nn.Module):
    """Adaptive average/max pooling that stays correct for every input size after export.

    Computes exactly what ``nn.AdaptiveAvgPool2d`` / ``nn.AdaptiveMaxPool2d`` compute (same
    windows, including overlapping windows when the input is smaller than the output), but with
    ops whose shapes follow the runtime input: ``torch.export`` / ONNX graphs built from it are
    valid at any size. Max pooling is bit-exact; average pooling equals PyTorch up to float
    summation order (~1e-7 relative).

    Args:
        output_size: ``b`` or ``(b_h, b_w)``; ``None`` in a position keeps that input size.
        mode: ``"avg"`` or ``"max"``.
    """

    def __init__(
        self, output_size: int | Sequence[int | None], mode: Literal["avg", "max"] = "avg"
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            size: tuple[int | None, int | None] = (output_size, output_size)
        else:
            size = tuple(output_size)  # type: ignore[assignment]
        if len(size) != 2 or any(b is not None and (not isinstance(b, int) or b < 1) for b in size):
            raise ValueError(f"output_size must be a positive int or a pair, got {output_size!r}")
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        self.output_size = size
        self.mode = mode

    @classmethod
    def from_module(cls, module: nn.Module) -> ExactAdaptivePool2d:
        """The replacement for an ``nn.AdaptiveAvgPool2d`` or ``nn.AdaptiveMaxPool2d``."""
        if isinstance(module, nn.AdaptiveMaxPool2d):
            if module.return_indices:
                raise ValueError("AdaptiveMaxPool2d(return_indices=True) cannot be replaced")
            return cls(module.output_size, "max")  # type: ignore[arg-type]
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return cls(module.output_size, "avg")  # type: ignore[arg-type]
        raise TypeError(f"not an adaptive 2-D pooling module: {type(module).__name__}")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, mode={self.mode!r}"

    def forward(self, x: Tensor) -> Tensor:
        """(..., H, W) -> (..., b_h, b_w)."""
        bh, bw = self.output_size
        if self.mode == "max":
            if bw is not None:
                x = _max_over(x, bw, -1)
            if bh is not None:
                x = _max_over(x, bh, -2)
            return x
        if bw is not None:
            mw = _windows(x.shape[-1], bw, x.device).to(x.dtype)  # (bw, W)
            x = (x @ mw.transpose(0, 1)) / mw.sum(1)  # (..., H, bw)
        if bh is not None:
            mh = _windows(x.shape[-2], bh, x.device).to(x.dtype)  # (bh, H)
            x = (mh @ x) / mh.sum(1)[:, None]  # (..., bh, bw)
        return x


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose adaptive 2-D pooling layers are :class:`ExactAdaptivePool2d`.

    Module replacement on a copy, at export time only: ``model`` itself (and
    :mod:`pspnet.models.ppm`) stay as they are. The copy computes the same function for every
    input size, and so do the graphs exported from it.
    """
    clone = copy.deepcopy(model)
    targets = [
        (name, m)
        for name, m in clone.named_modules()
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    ]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, attr, ExactAdaptivePool2d.from_module(m))
    return clone


# --------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class SizeCheck:
    """Exported runtime vs eager PyTorch at one input size."""

    height: int
    width: int
    batch: int
    max_abs_diff: float
    """Max |runtime - eager| over the logits. For ``output="labels"``: the largest logit
    *regret*, ``max_c eager[c] - eager[label]`` over pixels (0 when every label is an argmax)."""
    logit_scale: float
    """Max |eager logit|: the scale the tolerance is relative to."""
    tolerance: float
    label_agreement: float
    """Fraction of pixels where runtime and eager argmax agree."""
    eager_ms: float | None = None
    runtime_ms: float | None = None
    """Median forward time (milliseconds, this batch) on the CPU; None when not timed."""
    error: str | None = None
    """The runtime's exception at this size, if it failed (then ``max_abs_diff`` is inf)."""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.max_abs_diff <= self.tolerance)

    def format(self) -> str:
        t = ""
        if self.eager_ms is not None and self.runtime_ms is not None:
            t = f"  eager {self.eager_ms:8.1f} ms  runtime {self.runtime_ms:8.1f} ms"
        if self.error is not None:
            return f"{self.height:>5}x{self.width:<5} batch {self.batch}  FAIL: {self.error}"
        return (
            f"{self.height:>5}x{self.width:<5} batch {self.batch}  max|diff| "
            f"{self.max_abs_diff:.3g} (tol {self.tolerance:.3g}, logit scale "
            f"{self.logit_scale:.3g})  labels agree {100 * self.label_agreement:.2f}%"
            f"{t}  {'ok' if self.ok else 'FAIL'}"
        )


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely it reproduces eager PyTorch."""

    path: Path
    runtime: Literal["onnx", "torchscript"]
    input_size: tuple[int, int]
    """The size the graph was traced at (the only accepted size unless ``dynamic``)."""
    dynamic: bool
    output: Output
    num_classes: int
    opset: int | None
    rtol: float
    checks: tuple[SizeCheck, ...] = ()
    min_size: tuple[int, int] | None = None
    """Dynamic exports: the smallest (H, W) the exporter's shape assumptions cover."""
    export_seconds: float = 0.0
    file_bytes: int = 0
    replaced_pools: int = 0
    """Adaptive pooling layers swapped for :class:`ExactAdaptivePool2d` (dynamic ONNX only)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float | None:
        return max((c.max_abs_diff for c in self.checks), default=None)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def format(self) -> str:
        h, w = self.input_size
        kind = "dynamic (any H, W" + (
            f" >= {self.min_size[0]}x{self.min_size[1]})" if self.min_size else ")"
        )
        lines = [
            f"{self.runtime} export -> {self.path} ({self.file_bytes / 2**20:.1f} MiB, "
            f"{self.export_seconds:.1f} s)",
            f"  input: {kind if self.dynamic else f'fixed {h}x{w}'}; traced at {h}x{w}; "
            f"output: {self.output} ({self.num_classes} classes)"
            + (f"; opset {self.opset}" if self.opset else ""),
        ]
        if self.checks:
            lines.append(f"  parity vs eager PyTorch (tolerance {self.rtol:g} x logit scale):")
            lines += ["    " + c.format() for c in self.checks]
        else:
            lines.append("  parity not checked (check=False)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "checks"}
        d["path"] = str(self.path)
        d["metadata"] = dict(self.metadata)
        d["checks"] = [{**c.__dict__, "ok": c.ok} for c in self.checks]
        d["max_abs_diff"] = self.max_abs_diff
        d["ok"] = self.ok
        return d


class ExportCheckError(RuntimeError):
    """The exported graph does not reproduce eager PyTorch; ``.report`` has the numbers."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# Helpers shared by both exporters


class _Head(nn.Module):
    """The model reduced to one tensor: logits (N, C, H, W) or labels (N, H, W) int64."""

    def __init__(self, model: nn.Module, output: Output) -> None:
        super().__init__()
        self.model = model
        self.labels = output == "labels"

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        if isinstance(out, dict):
            out = out["out"]
        return out.argmax(1) if self.labels else out


def _check_args(height: int, width: int, output: str, rtol: float) -> tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if output not in ("logits", "labels"):
        raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol!r}")
    return height, width


def _meta_for(model: nn.Module, meta: WeightsMeta | None, num_classes: int) -> dict[str, Any]:
    """The metadata document fields describing the model (config, classes, preprocessing)."""
    meta = meta if meta is not None else getattr(model, "meta", None)
    if not isinstance(meta, WeightsMeta):
        cfg = getattr(model, "config", None)
        meta = WeightsMeta(model=cfg) if isinstance(cfg, ModelConfig) else None
    if meta is None:
        return {
            "model": None,
            "classes": None,
            "palette": None,
            "preprocess": to_dict(Preprocessing()),
            "ignore_index": 255,
            "source": "",
        }
    if meta.model.num_classes != num_classes:
        raise ValueError(
            f"the metadata describes {meta.model.num_classes} classes but the model outputs "
            f"{num_classes}; pass meta=WeightsMeta(...) that matches the model"
        )
    return to_dict(meta)


def _metadata(
    fmt: str,
    *,
    model_fields: dict[str, Any],
    size: tuple[int, int],
    dynamic: bool,
    output: Output,
    num_classes: int,
    min_size: tuple[int, int] | None,
    output_name: str,
    opset: int | None,
) -> dict[str, Any]:
    from pspnet import __version__

    return {
        "format": _FORMAT,
        "version": _VERSION,
        "runtime": fmt,
        "input_name": _INPUT,
        "output_name": output_name,
        "output": output,
        "dynamic": dynamic,
        "input_size": None if dynamic else list(size),
        "export_size": list(size),
        "min_size": list(min_size) if min_size else None,
        "num_classes": num_classes,
        "layout": "NCHW float32, normalised (see preprocess)",
        **model_fields,
        "opset": opset,
        "pspnet_version": __version__,
        "torch_version": torch.__version__,
    }


def _check_sizes(height: int, width: int, dynamic: bool) -> list[tuple[int, int, int]]:
    """(H, W, batch) to compare: the export size (batch 2); dynamic adds 2 other sizes.

    One larger (H + 8, W + 32) and one non-square with both sides odd (64x64 -> 72x96, 57x83).
    """
    sizes = [(height, width, 2)]
    if dynamic:
        sizes.append((height + 8, width + 32, 1))
        ho = height - 7 if height - 7 >= 17 else height + 9
        wo = width + 19
        ho, wo = ho | 1, wo | 1
        if ho == wo:
            wo += 2
        sizes.append((ho, wo, 1))
    return sizes


def _median_ms(fn: Any, runs: int) -> float | None:
    if runs <= 0:
        return None
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _compare(
    eager: Tensor, got: Tensor, output: Output, rtol: float
) -> tuple[float, float, float, float]:
    """(max_abs_diff, logit_scale, tolerance, label_agreement) of runtime output vs eager logits."""
    scale = float(eager.abs().max())
    tol = rtol * scale + 1e-6
    ref_labels = eager.argmax(1)
    if output == "labels":
        if got.shape != ref_labels.shape:
            raise RuntimeError(
                f"runtime labels have shape {tuple(got.shape)}, eager {tuple(ref_labels.shape)}"
            )
        labels = got.long()
        if labels.min() < 0 or labels.max() >= eager.shape[1]:
            return math.inf, scale, tol, float((labels == ref_labels).float().mean())
        regret = eager.amax(1) - eager.gather(1, labels[:, None])[:, 0]
        return float(regret.max()), scale, tol, float((labels == ref_labels).float().mean())
    if got.shape != eager.shape:
        raise RuntimeError(
            f"runtime logits have shape {tuple(got.shape)}, eager {tuple(eager.shape)}"
        )
    diff = float((got.float() - eager).abs().max())
    if not math.isfinite(diff):
        diff = math.inf
    return diff, scale, tol, float((got.argmax(1) == ref_labels).float().mean())


def _parity(
    eager: nn.Module,
    run: Any,
    sizes: list[tuple[int, int, int]],
    *,
    output: Output,
    rtol: float,
    timing_runs: int,
    seed: int,
) -> tuple[SizeCheck, ...]:
    """Compare ``run(images) -> Tensor`` with the eager logits at each (H, W, batch)."""
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for h, w, n in sizes:
        x = torch.randn(n, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = eager(x).float()
            try:
                got = run(x)
                diff, scale, tol, agree = _compare(ref, got, output, rtol)
            except Exception as e:  # noqa: BLE001 - a runtime crash is a failed check
                scale = float(ref.abs().max())
                msg = (str(e).strip().splitlines() or [""])[-1][:300]
                checks.append(
                    SizeCheck(h, w, n, math.inf, scale, rtol * scale + 1e-6, 0.0,
                              error=f"{type(e).__name__}: {msg}")
                )
                continue
            eager_ms = _median_ms(lambda: eager(x), timing_runs)  # noqa: B023
            run_ms = _median_ms(lambda: run(x), timing_runs)  # noqa: B023
        checks.append(SizeCheck(h, w, n, diff, scale, tol, agree, eager_ms, run_ms))
    return tuple(checks)


def _tmp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _finish(report: ExportReport, tmp: Path, path: Path, check: bool) -> ExportReport:
    """Move the checked file into place, or delete it and raise when parity failed."""
    if check and not report.ok:
        tmp.unlink(missing_ok=True)
        bad = [c for c in report.checks if not c.ok]
        sizes = ", ".join(f"{c.height}x{c.width}" for c in bad)
        raise ExportCheckError(
            f"the exported {report.runtime} graph does not reproduce eager PyTorch at {sizes}; "
            f"no file was written to {path}.\n{report.format()}\n"
            "Please report this; check=False writes the file anyway for inspection.",
            report,
        )
    os.replace(tmp, path)
    return report


def _prepare(model: nn.Module) -> nn.Module:
    """A float32 CPU eval-mode deep copy (the user's model is never touched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).float().cpu().eval()


def _num_classes(head: nn.Module, height: int, width: int) -> int:
    with torch.no_grad():
        out = head(torch.zeros(1, 3, height, width))
    if out.dim() != 4 or out.shape[0] != 1 or tuple(out.shape[-2:]) != (height, width):
        raise ValueError(
            f"the model must return (N, C, H, W) logits at the input size (or {{'out': ...}}); "
            f"got {tuple(out.shape)} for a 1x3x{height}x{width} input"
        )
    return int(out.shape[1])


# --------------------------------------------------------------------------------------------
# ONNX


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Silence the exporter's "torchvision is not installed" log lines (not our concern)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _require_onnx() -> Any:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnxscript and onnxruntime ({e}); {_INSTALL_HINT}"
        ) from None
    return onnxruntime


def _min_size(program: Any) -> tuple[int, int] | None:
    """Smallest (H, W) the exported program's shape guards allow (its range constraints)."""
    try:
        ep = program.exported_program
        node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == _INPUT)
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
    height, width = _check_args(height, width, output, rtol)
    sizes = _check_sizes(height, width, dynamic)
    for h, w in check_sizes or ():
        if (int(h), int(w)) not in [(a, b) for a, b, _ in sizes]:
            sizes.append((int(h), int(w), 1))
    wrong = [(h, w) for h, w, _ in sizes if (h, w) != (height, width)]
    if wrong and not dynamic:
        raise ValueError(
            f"check_sizes {wrong} differ from the fixed export size {height}x{width}; "
            "use dynamic=True to export a graph for several sizes"
        )
    _require_onnx()
    path = Path(path)
    t0 = time.perf_counter()
    eager = _Head(_prepare(model), output).eval()
    ref = _Head(eager.model, "logits").eval()
    num_classes = _num_classes(ref, height, width)
    model_fields = _meta_for(model, meta, num_classes)
    if dynamic:
        replaced = sum(
            isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for m in eager.modules()
        )
        traced = _Head(exportable_copy(eager.model), output).eval()
        shapes = {_INPUT: {0: "batch", 2: "height", 3: "width"}}
    else:
        replaced = 0
        traced = eager
        shapes = {_INPUT: {0: "batch"}}
    out_name = "labels" if output == "labels" else "logits"
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, torchvision absent)
        program = torch.onnx.export(
            traced,
            (example,),
            input_names=[_INPUT],
            output_names=[out_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    min_size = _min_size(program) if dynamic else None
    onnx_opset = program.model.opset_imports.get("")
    doc = _metadata(
        "onnx",
        model_fields=model_fields,
        size=(height, width),
        dynamic=dynamic,
        output=output,
        num_classes=num_classes,
        min_size=min_size,
        output_name=out_name,
        opset=onnx_opset,
    )
    props = program.model.metadata_props
    props[METADATA_KEY] = json.dumps(doc)
    props["pspnet.input_size"] = "dynamic" if dynamic else f"{height}x{width}"
    props["pspnet.output"] = output
    if doc["classes"]:
        props["pspnet.classes"] = json.dumps(doc["classes"])
    tmp = _tmp_beside(path, ".onnx")
    try:
        program.save(tmp, external_data=False)
        export_seconds = time.perf_counter() - t0
        checks: tuple[SizeCheck, ...] = ()
        if check:
            # Runtime failures are recorded in the report, so ORT's own error log is muted.
            runtime = OnnxSegmenter(tmp, log_level=4)
            checks = _parity(
                ref, runtime, sizes, output=output, rtol=rtol, timing_runs=timing_runs,
                seed=seed + 1,
            )
            del runtime
        report = ExportReport(
            path=path,
            runtime="onnx",
            input_size=(height, width),
            dynamic=dynamic,
            output=output,
            num_classes=num_classes,
            opset=onnx_opset,
            rtol=rtol,
            checks=checks,
            min_size=min_size,
            export_seconds=export_seconds,
            file_bytes=tmp.stat().st_size,
            replaced_pools=replaced,
            metadata=doc,
        )
        return _finish(report, tmp, path, check)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# TorchScript


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
    height, width = _check_args(height, width, output, rtol)
    path = Path(path)
    t0 = time.perf_counter()
    eager = _Head(_prepare(model), output).eval()
    ref = _Head(eager.model, "logits").eval()
    num_classes = _num_classes(ref, height, width)
    doc = _metadata(
        "torchscript",
        model_fields=_meta_for(model, meta, num_classes),
        size=(height, width),
        dynamic=False,
        output=output,
        num_classes=num_classes,
        min_size=None,
        output_name=output,
        opset=None,
    )
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
        with torch.no_grad():
            traced = torch.jit.trace(eager, (example,), check_trace=False)
        scripted = torch.jit.script(_SizeGuard(traced, height, width))
    tmp = _tmp_beside(path, ".pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={_TS_EXTRA: json.dumps(doc)})
        export_seconds = time.perf_counter() - t0
        checks: tuple[SizeCheck, ...] = ()
        if check:
            runtime = TorchScriptSegmenter(tmp)
            checks = _parity(
                ref,
                runtime,
                [(height, width, 2)],
                output=output,
                rtol=rtol,
                timing_runs=timing_runs,
                seed=seed + 1,
            )
        report = ExportReport(
            path=path,
            runtime="torchscript",
            input_size=(height, width),
            dynamic=False,
            output=output,
            num_classes=num_classes,
            opset=None,
            rtol=rtol,
            checks=checks,
            export_seconds=export_seconds,
            file_bytes=tmp.stat().st_size,
            metadata=doc,
        )
        return _finish(report, tmp, path, check)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Runtimes


def _meta_from_doc(doc: Mapping[str, Any]) -> WeightsMeta | None:
    if not doc.get("model"):
        return None
    keys = ("model", "classes", "palette", "preprocess", "ignore_index", "source")
    try:
        return from_dict(WeightsMeta, {k: doc[k] for k in keys if k in doc})
    except (ConfigError, TypeError, ValueError):
        return None


def _check_doc(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"{where} carries no pspnet export metadata; export it with pspnet")
    if int(doc.get("version", 0)) > _VERSION:
        raise ValueError(
            f"{where} has export metadata version {doc['version']}; this pspnet reads up to "
            f"{_VERSION}. Upgrade pspnet."
        )
    return doc


class _ExportedRuntime(nn.Module):
    """Common part of the runtimes: metadata, size checks and the model-like surface."""

    path: Path
    metadata: dict[str, Any]

    def _init_meta(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.metadata = doc
        self.training = False
        size, mn = doc.get("input_size"), doc.get("min_size")
        self.input_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size else None
        self.min_size: tuple[int, int] | None = (int(mn[0]), int(mn[1])) if mn else None
        self.dynamic = bool(doc.get("dynamic"))
        self.output: Output = doc.get("output", "logits")
        self.num_classes = int(doc.get("num_classes", 0)) or None
        self.meta = _meta_from_doc(doc)
        self.config = self.meta.model if self.meta else None
        classes = doc.get("classes")
        self.classes: tuple[str, ...] | None = tuple(classes) if classes else None
        self.preprocess = from_dict(Preprocessing, doc.get("preprocess") or {})

    def train(self, mode: bool = True) -> _ExportedRuntime:
        if mode:
            raise RuntimeError(f"{self.path} is an exported inference graph; it cannot be trained")
        return super().train(False)

    def check_input(self, images: Tensor | np.ndarray) -> None:
        """Raise ``ValueError`` unless ``images`` is an (N, 3, H, W) batch this file accepts."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != 3:
            hint = " add a batch dimension first." if len(shape) == 3 else ""
            raise ValueError(
                f"expected normalised images of shape (N, 3, H, W), got {shape};{hint}"
            )
        h, w = int(shape[2]), int(shape[3])
        if self.input_size is not None and (h, w) != tuple(self.input_size):
            eh, ew = self.input_size
            raise ValueError(
                f"{self.path.name} was exported for a fixed input size of {eh}x{ew} "
                f"(height x width) but got {h}x{w}. Re-export with --height {h} --width {w}, "
                f"or export to ONNX with --dynamic to accept any size, or resize/tile the "
                f"images (sliding-window inference with crop_size=({eh}, {ew}))."
            )
        if self.min_size is not None and (h < self.min_size[0] or w < self.min_size[1]):
            mh, mw = self.min_size
            raise ValueError(
                f"{self.path.name} is a dynamic export valid for inputs of at least {mh}x{mw} "
                f"(the exporter's shape assumptions); got {h}x{w}. Upscale or pad the images."
            )

    def __repr__(self) -> str:
        size = "dynamic" if self.input_size is None else "x".join(map(str, self.input_size))
        return (
            f"{type(self).__name__}({str(self.path)!r}, input={size}, output={self.output}, "
            f"classes={self.num_classes})"
        )


def _as_float32(images: Tensor | np.ndarray) -> tuple[np.ndarray | Tensor, torch.device]:
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(
                f"images must be a normalised float array, got dtype {images.dtype} "
                "(subtract the mean and divide by the std first)"
            )
        return np.ascontiguousarray(images, dtype=np.float32), torch.device("cpu")
    if isinstance(images, Tensor):
        if not images.is_floating_point():
            raise TypeError(
                f"images must be a normalised float tensor, got dtype {images.dtype} "
                "(subtract the mean and divide by the std first)"
            )
        return images, images.device
    raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")


class OnnxSegmenter(_ExportedRuntime):
    """Run a pspnet ONNX export with ONNX Runtime, behaving like an eval-mode model.

    ``segmenter(images)`` takes an (N, 3, H, W) normalised float batch (tensor or numpy) and
    returns a float32 logits tensor (N, C, H, W) on the input's device (int64 labels (N, H, W)
    for ``output="labels"`` exports), so :func:`pspnet.inference.predict` accepts it as a model.
    Fixed-size exports refuse other sizes with a ``ValueError`` naming both sizes and the fix.

    Attributes:
        metadata: The export's metadata document; ``meta`` (:class:`WeightsMeta` or None),
        ``classes``, ``preprocess``, ``input_size`` (None when dynamic), ``min_size``,
        ``output``, ``num_classes`` are read from it.

    Args:
        path: The ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: Intra-op threads (default: ONNX Runtime's choice).
        log_level: ONNX Runtime log severity (0 verbose ... 4 fatal); default ORT's (2).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        log_level: int | None = None,
    ) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"running ONNX exports needs onnxruntime; {_INSTALL_HINT}") from None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ONNX file {p} does not exist")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if log_level is not None:
            opts.log_severity_level = int(log_level)
        try:
            self.session = ort.InferenceSession(
                str(p), opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ValueError(f"cannot load {p} with ONNX Runtime: {e}") from None
        custom = self.session.get_modelmeta().custom_metadata_map
        try:
            doc = json.loads(custom.get(METADATA_KEY, "null"))
        except json.JSONDecodeError:
            doc = None
        self._init_meta(p, _check_doc(doc, str(p)))
        self._input = self.session.get_inputs()[0].name

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        """Logits (N, C, H, W) float32 (labels (N, H, W) int64 for labels exports)."""
        x, device = _as_float32(images)
        self.check_input(x)
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self._input: x})[0]
        return torch.from_numpy(out).to(device)


class TorchScriptSegmenter(_ExportedRuntime):
    """A pspnet TorchScript export, with its metadata and a size check that names the fix.

    The scripted module itself also refuses other sizes (raising ``torch.jit.Error`` whose
    message contains the ``ValueError`` text); this wrapper checks first so Python callers get
    a plain ``ValueError``. Returns logits (N, C, H, W) (labels for labels exports).

    Args:
        path: The TorchScript file written by :func:`export_torchscript`.
        map_location: Device to load onto (default CPU).
    """

    def __init__(self, path: str | Path, *, map_location: str | torch.device = "cpu") -> None:
        super().__init__()
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"TorchScript file {p} does not exist")
        extra = {_TS_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                module = torch.jit.load(str(p), map_location=map_location, _extra_files=extra)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{p} is not a TorchScript file: {e}") from None
        try:
            doc = json.loads(extra[_TS_EXTRA] or "null")
        except json.JSONDecodeError:
            doc = None
        self.module = module.eval()
        self._init_meta(p, _check_doc(doc, str(p)))

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        x, device = _as_float32(images)
        self.check_input(x)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        param = next(iter(self.module.parameters()), None)
        target = param.device if param is not None else x.device
        with torch.no_grad():
            out = self.module(x.to(target, torch.float32))
        return out.to(device)


def load_exported(path: str | Path, **kwargs: Any) -> OnnxSegmenter | TorchScriptSegmenter:
    """Open an ONNX (``.onnx``) or TorchScript (``.pt``/``.ts``/...) export as a model-like runtime.

    Unknown suffixes are recognised by content (TorchScript files are zip archives). ``kwargs``
    go to the runtime's constructor.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exported model {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxSegmenter(p, **kwargs)
    if suffix in _TS_SUFFIXES or zipfile.is_zipfile(p):
        return TorchScriptSegmenter(p, **kwargs)
    return OnnxSegmenter(p, **kwargs)


def is_exported(model: object) -> bool:
    """Whether ``model`` is an exported file's runtime (ONNX Runtime or TorchScript), not an
    eager PyTorch model: it brings its own metadata and cannot be folded or compiled."""
    return isinstance(model, (OnnxSegmenter, TorchScriptSegmenter))


def load_model_or_export(path: str | Path, device: str = "cpu") -> nn.Module:
    """An eager model (:func:`pspnet.checkpoint.load_model`) or an exported file.

    ONNX and TorchScript exports are recognised by their content, not their suffix (a training
    checkpoint, ``checkpoints/last.pt``, is a ``.pt`` file too) and run on the CPU.

    Args:
        path: A weight directory, training or foreign checkpoint, or a ``pspnet export`` file.
        device: Where an eager model is put.

    Raises:
        ImportError: An ONNX file without onnxruntime installed (callers name the extra).
        CheckpointError: The weights cannot be loaded.
    """
    p = Path(path)
    if p.is_file() and detect_file_kind(p) in ("onnx", "torchscript"):
        return load_exported(p)
    return load_model(p, device=device)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The pspnet metadata document of an ONNX or TorchScript export (no session is started)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exported model {p} does not exist")
    if zipfile.is_zipfile(p):
        extra = {_TS_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        return _check_doc(json.loads(extra[_TS_EXTRA] or "null"), str(p))
    try:
        import onnx
    except ImportError:
        raise ImportError(f"reading ONNX metadata needs onnx; {_INSTALL_HINT}") from None
    proto = onnx.load(str(p), load_external_data=False)
    props = {m.key: m.value for m in proto.metadata_props}
    return _check_doc(json.loads(props.get(METADATA_KEY, "null")), str(p))
