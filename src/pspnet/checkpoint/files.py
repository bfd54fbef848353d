"""Reading and writing checkpoint files safely: what a file is, ``torch.load`` without code, and
atomic writes. Everything else in :mod:`pspnet.checkpoint` reads and writes through here."""

from __future__ import annotations

import codecs
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from pspnet.config import LIMITS

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
        ``"torchscript"`` (a ``torch.jit.save`` archive), ``"onnx"``, ``"openvino"`` (an
        OpenVINO IR ``.xml``: XML whose root is ``<net>``), ``"safetensors"``,
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
    if head.lstrip().startswith(b"<") and b"<net " in head and b"<layers" in head:
        return "openvino"
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
    if kind == "openvino":
        return (
            f"{p} is not a PyTorch checkpoint (it is an OpenVINO IR file: use `pspnet predict "
            f"--weights {p}` or `pspnet evaluate --weights {p}`, which run it with OpenVINO)"
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
    if kind == "torch":
        check_zip_sizes(p)
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


def _size_bound_fix(p: Path) -> str:
    return (
        f"{p} is damaged or hostile (a decompression bomb): download or save it again, and do "
        "not load files of unknown origin"
    )


def check_zip_sizes(path: Path) -> None:
    """Refuse a ``torch.save`` zip whose members would unpack to more than a bound, before
    :func:`torch.load` unpacks them.

    ``torch.save`` stores its members uncompressed, so a member much larger than its
    compressed size (``LIMITS["checkpoint_ratio"]``) comes from a re-zipped file built to
    expand, and no checkpoint unpacks past ``LIMITS["checkpoint_bytes"]``. A zip too damaged
    to list is left to :func:`torch.load`, which names the damage.

    Raises:
        CheckpointError: Naming the file, the member, its sizes, the bound and the fix.
    """
    ratio = LIMITS["checkpoint_ratio"].maximum
    total_bound = int(LIMITS["checkpoint_bytes"].maximum)
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    total = 0
    for m in members:
        total += m.file_size
        if m.compress_type != zipfile.ZIP_STORED and m.file_size > ratio * max(m.compress_size, 1):
            raise CheckpointError(
                f"refusing to load {path}: member {m.filename} expands from "
                f"{m.compress_size:,} to {m.file_size:,} bytes (more than {ratio:g} times; "
                "LIMITS['checkpoint_ratio'] in pspnet.config.limits). " + _size_bound_fix(path)
            )
    if total > total_bound:
        raise CheckpointError(
            f"refusing to load {path}: its members unpack to {total:,} bytes, above the bound "
            f"of {total_bound:,} (LIMITS['checkpoint_bytes'] in pspnet.config.limits). "
            + _size_bound_fix(path)
        )


#: Bytes per element of each safetensors dtype.
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def check_safetensors_header(path: Path) -> None:
    """Check a safetensors file's header against its size and the bounds before loading it.

    Every tensor must have a known dtype and a shape whose bytes equal its byte range, every
    range must lie inside the file, and the header itself must be small
    (``LIMITS["json_bytes"]``), so loading allocates no more than the file holds (which is at
    most ``LIMITS["checkpoint_bytes"]``).

    Raises:
        CheckpointError: Naming the file, the tensor, what is inconsistent and the fix.
    """
    damaged = ("; the file is corrupt or truncated (or not a safetensors file): save the "
               "weights again")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            fits = 8 <= size and n <= min(size - 8, LIMITS["json_bytes"].maximum)
            raw = f.read(n) if fits else None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if raw is None:
        raise CheckpointError(
            f"{path}: its header claims {n:,} bytes (the file has {size:,}; the bound is "
            "LIMITS['json_bytes'] in pspnet.config.limits)" + damaged
        )
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested past the stack
        raise CheckpointError(
            f"{path}: its header is not a valid JSON mapping ({e})" + damaged
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: its header is not a JSON mapping" + damaged)
    if size > LIMITS["checkpoint_bytes"].maximum:
        raise CheckpointError(
            f"{path} is {size:,} bytes, above the bound of "
            f"{int(LIMITS['checkpoint_bytes'].maximum):,} (LIMITS['checkpoint_bytes'] in "
            "pspnet.config.limits)" + damaged
        )
    for name, t in header.items():
        if name != "__metadata__":
            _check_header_entry(path, name, t, size - 8 - n, damaged)


def _check_header_entry(path: Path, name: str, t: Any, data_bytes: int, damaged: str) -> None:
    """One tensor entry of a safetensors header: known dtype, shape that fits its bytes."""
    ok = isinstance(t, dict) and isinstance(t.get("shape"), list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t["shape"]
    ) and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2 and all(
        isinstance(o, int) and not isinstance(o, bool) for o in t["data_offsets"]
    )
    if not ok or t.get("dtype") not in _SAFETENSORS_ITEMSIZE:
        raise CheckpointError(
            f"{path}: tensor {name!r} has no valid dtype, shape and offsets ({t!r:.200})" + damaged
        )
    begin, end = t["data_offsets"]
    need = math.prod(t["shape"]) * _SAFETENSORS_ITEMSIZE[t["dtype"]]
    if not 0 <= begin <= end <= data_bytes or end - begin != need:
        raise CheckpointError(
            f"{path}: tensor {name!r} of shape {t['shape']} ({t['dtype']}) needs {need:,} "
            f"bytes but the file gives it bytes {begin:,}..{end:,} of {data_bytes:,}" + damaged
        )


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
