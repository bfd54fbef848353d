"""Helpers that several command modules share: class-name files and ``--device``."""

from __future__ import annotations


def _read_names(path: str | None) -> tuple[str, ...] | None:
    """Class names from a file (any form :func:`pspnet.data.classes.read_class_file` reads)."""
    if path is None:
        return None
    from pspnet.data.classes import read_class_file

    return read_class_file(path).names


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name
