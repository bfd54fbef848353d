"""Small pieces several test files share: loading a bench/ script, a tiny exportable segmenter."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(filename: str, module_name: str) -> Iterator[ModuleType]:
    """Import ``bench/<filename>`` as ``module_name`` (a generator for module fixtures).

    The module is registered in ``sys.modules`` while in use (dataclasses need it) and removed
    afterwards.
    """
    spec = importlib.util.spec_from_file_location(module_name, BENCH / filename)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    try:
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


class TinySegmenter(nn.Module):
    """A few-parameter segmenter with adaptive pooling, as in PSPNet (quick to export)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.mix = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.conv(x)
        p = F.interpolate(self.pool(f), f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.mix(torch.cat([f, p], 1))
        return {"out": F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)}


def one_torch_thread() -> Iterator[None]:
    """Run with one torch thread, then restore (a generator for module fixtures).

    The tensors in these tests are tiny: thread start-up costs more than it saves, and on a busy
    machine oversubscribed OpenMP threads make the tests many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
