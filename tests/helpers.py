"""Small pieces several test files share: loading a bench/ script, a tiny exportable segmenter."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


def sideways_jpeg(path: Path, height: int = 40, width: int = 24) -> Path:
    """A phone-style JPEG: upright it is ``height`` x ``width``, red above green; its pixels
    are stored turned a quarter left, with EXIF orientation 6 ("rotate 90 clockwise to show")."""
    upright = Image.new("RGB", (width, height), (255, 0, 0))
    upright.paste((0, 255, 0), (0, height // 2, width, height))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: red on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


#: index, name, colour; 255 is void (ignored).
CLASSES = [(0, "sky", (70, 130, 180)), (1, "road", (128, 64, 128)), (2, "car", (0, 0, 142)),
           (255, "void", (0, 0, 0))]  # fmt: skip


def colour_folders(root: Path, n: int, size: tuple[int, int] = (12, 16)) -> dict[str, Path]:
    """What a labelling tool exports: ``n`` photos of ``size`` (H, W) with colour masks (sky
    over road, a car, a void corner) in ``photos/`` and ``masks/``, and ``classes.txt`` with
    the colours."""
    images, labels = root / "photos", root / "masks"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    h, w = size
    for i in range(n):
        mask = np.zeros((h, w, 3), np.uint8)
        mask[: h // 2] = CLASSES[0][2]
        mask[h // 2:] = CLASSES[1][2]
        x = 2 + i % (w // 2)
        mask[h // 2 + 1: h // 2 + 1 + h // 4, x: x + w // 4] = CLASSES[2][2]
        mask[0, 0] = CLASSES[3][2]
        photo = (mask // 2 + np.random.default_rng(i).integers(0, 60, mask.shape)).astype(np.uint8)
        Image.fromarray(photo).save(images / f"shot_{i}.jpg")
        Image.fromarray(mask).save(labels / f"shot_{i}.png")
    classes = root / "classes.txt"
    classes.write_text("".join(f"{i}\t{name}\t{r} {g} {b}\n" for i, name, (r, g, b) in CLASSES))
    return {"images": images, "labels": labels, "classes": classes}
