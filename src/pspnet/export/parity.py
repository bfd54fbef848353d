"""The parity check of an export against eager PyTorch, and its report.

Both exporters write to a temporary file beside the destination, run it in its runtime at
several sizes, compare with the eager model (:func:`parity`) and only then move it into place
(:func:`write_checked`); a failed check raises :class:`ExportCheckError` and leaves no file.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pspnet.checkpoint.exported import Output

__all__ = ["SizeCheck", "ExportReport", "ExportCheckError", "parity", "write_checked",
           "check_sizes_for", "report_for"]


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
    runtime: Literal["onnx", "openvino", "torchscript"]
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
    notes: tuple[str, ...] = ()
    """Further lines of the report (e.g. an int8 file's agreement with eager fp32)."""

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
        lines += ["  " + n for n in self.notes]
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


def check_sizes_for(height: int, width: int, dynamic: bool) -> list[tuple[int, int, int]]:
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


def parity(
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


def write_checked(
    path: Path,
    suffix: str,
    started: float,
    save: Callable[[Path], None],
    run_checks: Callable[[Path], tuple[SizeCheck, ...]] | None,
    report: Callable[..., ExportReport],
) -> ExportReport:
    """Save to a temporary file beside ``path``, check it, then move it into place.

    Args:
        path: The destination.
        suffix: The temporary file's suffix (the runtimes recognise files by it).
        started: ``time.perf_counter()`` when the export began (the report's export time).
        save: Writes the export to the path it is given.
        run_checks: Runs the parity check on the saved file; None: ``check=False``.
        report: Builds the report from ``checks``, ``export_seconds`` and ``file_bytes``.

    Raises:
        ExportCheckError: The check failed; the temporary file is deleted, nothing written.
    """
    tmp = _tmp_beside(path, suffix)
    try:
        save(tmp)
        export_seconds = time.perf_counter() - started
        checks = run_checks(tmp) if run_checks is not None else ()
        done = report(checks=checks, export_seconds=export_seconds,
                      file_bytes=tmp.stat().st_size)
        return _finish(done, tmp, path, run_checks is not None)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def report_for(
    path: Path, doc: Mapping[str, Any], rtol: float, replaced_pools: int = 0
) -> Callable[..., ExportReport]:
    """The report of the export described by its metadata ``doc``, less what writing it tells
    (``checks``, ``export_seconds``, ``file_bytes``: :func:`write_checked` adds them)."""
    return functools.partial(
        ExportReport,
        path=path,
        runtime=doc["runtime"],
        input_size=(int(doc["export_size"][0]), int(doc["export_size"][1])),
        dynamic=bool(doc["dynamic"]),
        output=doc["output"],
        num_classes=int(doc["num_classes"]),
        opset=doc["opset"],
        rtol=rtol,
        min_size=tuple(doc["min_size"]) if doc["min_size"] else None,
        replaced_pools=replaced_pools,
        metadata=doc,
    )
