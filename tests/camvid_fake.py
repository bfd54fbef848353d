"""A fake CamVid-layout data set (a few random test images) for the report and fast-path tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")  # fmt: skip
COLOURS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
           (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
           (0, 128, 192))  # fmt: skip


def make_fake_camvid(root: Path, n_test: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    """CamVid layout: images/test, labels/test, test.txt (+ train/val lists), classes.txt."""
    rng = np.random.default_rng(0)
    h, w = size
    for sub in ("images/test", "labels/test"):
        (root / sub).mkdir(parents=True)
    names = []
    for i in range(n_test):
        name = f"0001TP_{i:06d}"
        lab = rng.integers(0, len(CLASSES), size=(h, w)).astype(np.uint8)
        lab[:3] = 255  # void
        img = np.asarray(COLOURS, np.uint8)[np.minimum(lab, len(CLASSES) - 1)]
        Image.fromarray(img).save(root / "images" / "test" / f"{name}.png")
        Image.fromarray(lab).save(root / "labels" / "test" / f"{name}.png")
        names.append(name)
    (root / "test.txt").write_text("\n".join(names) + "\n")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text("")
    lines = [f"{i}\t{n}\t{' '.join(map(str, c))}" for i, (n, c) in enumerate(zip(CLASSES, COLOURS))]
    (root / "classes.txt").write_text("\n".join([*lines, "255\tvoid\t0 0 0"]) + "\n")
    return root
