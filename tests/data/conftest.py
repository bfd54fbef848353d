"""Fixtures for the data-layer tests: tiny images written with Pillow into tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _save(path: Path, array: np.ndarray, mode: str | None = None, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode in ("I;16", "I;16B"):
        im = Image.fromarray(array.astype(np.uint16))
    elif mode is not None:
        im = Image.fromarray(array).convert(mode) if mode != "L" else Image.fromarray(array, "L")
    else:
        im = Image.fromarray(array)
    im.save(path, **save_kwargs)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """`write_image(path, array, mode=None, **save_kwargs)` saves an array with Pillow."""
    return _save


@pytest.fixture
def make_pair(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """`make_pair(name, label, image_size=None)`: write a random RGB photo and an L label PNG.

    The photo has the label's size unless `image_size` (W, H) is given.
    """

    def make(name: str, label: np.ndarray, image_size: tuple[int, int] | None = None):
        h, w = label.shape
        if image_size is not None:
            w, h = image_size
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        photo = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = _save(tmp_path / "images" / f"{name}.png", photo)
        lbl = _save(tmp_path / "labels" / f"{name}.png", label.astype(np.uint8), "L")
        return img, lbl

    return make


def camvid_root() -> Path:
    """The shared CamVid copy (read-only), from PSPNET_CAMVID or the default location."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
    return Path(os.environ.get("PSPNET_CAMVID", default))


@pytest.fixture
def camvid() -> Path:
    """Path of the real CamVid data; skips the test when it is absent."""
    root = camvid_root()
    if not (root / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {root}; set PSPNET_CAMVID to the prepared CamVid folder")
    return root
