"""Helpers for the training-engine tests: tiny list-file data sets and configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pspnet.config import Config

NUM_CLASSES = 3


def make_tiny_dataset(
    root: Path, n_train: int = 8, n_val: int = 3, size: tuple[int, int] = (40, 48), seed: int = 0
) -> dict[str, Path]:
    """Images with a learnable signal: a red box is class 1, a blue box class 2, the rest 0.

    A 2-pixel ignore (255) border on the labels. Written as PNGs with list files
    ``train.txt`` / ``val.txt`` of ``image label`` lines relative to ``root``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = rng.integers(90, 150, size=(h, w, 3)).astype(np.uint8)
            lab = np.zeros((h, w), np.uint8)
            for cls, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
                bh, bw = int(rng.integers(8, h // 2)), int(rng.integers(8, w // 2))
                y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
                img[y : y + bh, x : x + bw] = np.clip(
                    np.array(colour) + rng.integers(-20, 20, size=(bh, bw, 3)), 0, 255
                )
                lab[y : y + bh, x : x + bw] = cls
            lab[:2, :] = 255
            name = f"{split}_{i:03d}"
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            Image.fromarray(lab).save(root / "labels" / f"{name}.png")
            lists[split].append(f"images/{name}.png labels/{name}.png")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "train": root / "train.txt", "val": root / "val.txt"}


def tiny_config_dict(data: dict[str, Path], work_dir: Path, **train: Any) -> dict[str, Any]:
    """A nested config for a few-second CPU run on the tiny data set."""
    return {
        "model": {
            "arch": "pspnet_r18",
            "num_classes": NUM_CLASSES,
            "output_stride": 8,
            "head_channels": 32,
            "aux_channels": 16,
            "ppm_channels": 32,
        },
        "data": {
            "root": str(data["root"]),
            "train_list": str(data["train"]),
            "val_list": str(data["val"]),
            "crop_size": [32, 32],
            "num_workers": 0,
        },
        "optim": {"lr": 0.01},
        "train": {
            "work_dir": str(work_dir),
            "batch_size": 4,
            "max_iter": 6,
            "precision": "fp32",
            "channels_last": True,
            "val_interval": 0,
            "log_interval": 1,
            "checkpoint_minutes": 0,
            "threads": 1,
            **train,
        },
    }


def tiny_config(data: dict[str, Path], work_dir: Path, **train: Any) -> Config:
    return Config.from_dict(tiny_config_dict(data, work_dir, **train))
