"""Reading and writing checkpoint files safely: what a file is, ``torch.load`` without code, and
atomic writes. Everything else in :mod:`pspnet.checkpoint` reads and writes through here."""

from __future__ import annotations

import codecs
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

#: What a weights argument may be; ends the "does not exist" / "not a checkpoint" messages.
EXPECTED_WEIGHTS = (
    "expected a pspnet weight directory (config.json + model.safetensors), a training "
    "checkpoint (WORK_DIR/checkpoints/last.pt), or a .pth/.pt checkpoint from hszhao/semseg, "
    "mmsegmentation or mit-semseg"
)


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, unsafe or does not fit the model."""


def detect_file_kind(path: str | Path) -> str:
    """Say what a file is from its first bytes (and, for ONNX, its suffix); never unpickles.

    Args:
        path: An existing file.

    Returns:
        ``"torch"`` (a ``torch.save`` zip archive, or one too damaged to list: :func:`torch.load`
        then reports it), ``"pickle"`` (a legacy ``torch.save`` file or any binary pickle),
        ``"torchscript"`` (a ``torch.jit.save`` archive), ``"onnx"``, ``"safetensors"``,
        ``"zip"`` (another zip archive), ``"text"``, ``"empty"`` or ``"unknown"``.

    Raises:
        CheckpointError: The file cannot be opened (missing, a directory, no permission).
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise CheckpointError(f"cannot open {p}: {e.strerror or e}") from None
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "torch"  # a truncated torch.save archive: torch.load names the damage
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head.startswith(b"\x80"):
        return "pickle"
    # An ONNX ModelProto starts with field 1 (ir_version: tag 0x08, a small varint), followed
    # by one of fields 2-8 (producer_name ... opset_import).
    onnx_like = (
        len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80
        and head[2] in b"\x12\x1a\x22\x28\x32\x3a\x42"
    )  # fmt: skip
    if p.suffix.lower() == ".onnx" or onnx_like:
        return "onnx"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
        return "safetensors"
    if b"\x00" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            return "text"
        except UnicodeDecodeError:
            pass
    return "unknown"


def _not_a_checkpoint(p: Path, kind: str) -> str:
    """The message for a file that is not a PyTorch checkpoint, by what it is instead."""
    if kind == "onnx":
        return (
            f"{p} is not a PyTorch checkpoint (it looks like an ONNX model: use `pspnet predict "
            f"--weights {p}` or `pspnet evaluate --weights {p}`, which run it with ONNX Runtime)"
        )
    if kind == "torchscript":
        return (
            f"{p} is not a PyTorch checkpoint (it is a TorchScript export: use `pspnet predict "
            f"--weights {p}` or `pspnet evaluate --weights {p}`, which run it with TorchScript)"
        )
    what = {
        "safetensors": "a safetensors file without the config.json of a pspnet weight directory "
        "beside it",
        "text": "a text file; class lists go to --classes-file",
        "zip": "a zip archive without a torch.save checkpoint inside",
        "empty": "empty (0 bytes)",
    }.get(kind, "of an unknown kind: neither a torch.save file, an ONNX model nor text")
    return f"{p} is not a checkpoint or weight directory (it is {what}); {EXPECTED_WEIGHTS}"


def read_torch_file(path: str | Path) -> Any:
    """Read a ``.pth``/``.pt`` file saved with ``torch.save`` without running code.

    Raises:
        CheckpointError: Missing, empty, truncated or unsafe files, and files that are something
            else (ONNX, TorchScript, text), naming the path, what it is and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist ({EXPECTED_WEIGHTS})")
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory, not a checkpoint file ({EXPECTED_WEIGHTS})")
    kind = detect_file_kind(p)
    if kind == "empty":
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-download or re-save it")
    if kind not in ("torch", "pickle"):
        raise CheckpointError(_not_a_checkpoint(p, kind))
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"refusing to load {p}: it contains Python objects beyond tensors, and "
                "unpickling them could run arbitrary code. If you trust the file, re-save only "
                "its tensors (torch.save(ckpt['state_dict'], 'clean.pth')) in a trusted session "
                "and load that instead."
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {p}: {msg}. The file is corrupt or truncated; "
            "download or save it again."
        ) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
