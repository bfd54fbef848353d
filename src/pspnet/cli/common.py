"""Helpers that several command modules share: class-name files, ``--device``, output paths."""

from __future__ import annotations

import os
import re
from pathlib import Path


def _read_names(path: str | None) -> tuple[str, ...] | None:
    """Class names from a file (any form :func:`pspnet.data.classes.read_class_file` reads)."""
    if path is None:
        return None
    from pspnet.data.classes import read_class_file

    return read_class_file(path).names


#: What ``--device`` accepts.
_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+|mps)")


def _resolve_device(name: str) -> str:
    """``--device`` as a torch device string, checked against this machine.

    Raises:
        ValueError: A device torch does not know here (``tpu``), CUDA without a GPU, or a GPU
            index this machine does not have.
    """
    import torch

    if not _DEVICE.fullmatch(name):
        raise ValueError(f"--device {name}: not a device pspnet runs on; use cpu, cuda, cuda:N, "
                         "mps or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use "
                             "--device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), numbered from 0; use --device cuda:0")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple's MPS is not available on this machine; use "
                         "--device cpu")
    return name


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the folder a new path is created in)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_creatable(path: Path, flag: str) -> None:
    """Refuse a path that cannot be created: a file in the way, a folder we cannot write."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"{flag} {path}: {base} is a file, not a folder; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {base} (permission denied); choose a "
                         "folder you can write to")


def check_output_dir(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Check before the work starts that folder ``path`` exists or can be made, and is writable.

    Raises:
        ValueError: ``path`` is a file, a part of it is a file, or it cannot be written to;
            the message names ``flag``, the path and the fix.
    """
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p}: this is a file, and {flag} takes a folder; give a "
                         "folder path")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {p}: cannot write in this folder (permission denied); "
                             "choose a folder you can write to")
        return
    _check_creatable(p, flag)


def check_output_file(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Check before the work starts that file ``path`` can be written.

    Raises:
        ValueError: ``path`` is a folder, a part of it is a file, or it cannot be written to.
    """
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: this is a folder, and {flag} takes a file name; give a "
                         "file path (inside that folder, for instance)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {p}: this file is not writable (permission denied); choose "
                         "another path")
    _check_creatable(p, flag)


def check_port(port: int) -> None:
    """Refuse a TCP port outside 0..65535 (the OS would take it modulo 65536).

    Raises:
        ValueError: The port does not exist.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: TCP ports are 0..65535 (0 picks a free one); "
                         "choose one in that range, e.g. --port 8000")
