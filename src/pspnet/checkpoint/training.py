"""The training-checkpoint format: what ``pspnet train`` writes to ``WORK_DIR/checkpoints`` and
what ``--resume`` and :func:`pspnet.load_model` read back.

A checkpoint is a ``torch.save`` dict of tensors, numbers, strings, lists and dicts only (so it
loads with ``weights_only=True``): ``format``/``version``, ``model``, ``optimizer``,
``iteration``, ``schedule``, ``rng`` (one state per process), ``config`` and the run's progress.
It is written to a temporary file, flushed, and renamed over ``last.pt`` (the previous one
becomes ``prev.pt``); the ``latest`` pointer is replaced atomically too, so a crash at any moment
leaves at least one complete checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pspnet.checkpoint.files import CheckpointError, atomic_write_bytes, read_torch_file

#: ``format`` and newest ``version`` of the training checkpoints ``pspnet train`` writes.
TRAIN_CHECKPOINT_FORMAT = "pspnet-train-checkpoint"
TRAIN_CHECKPOINT_VERSION = 1

# --------------------------------------------------------------------------------------------
# RNG state (weights_only-compatible)


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    key, arr, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": int(py[0]), "state": [int(v) for v in py[1]], "gauss": py[2]},
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(np.asarray(arr, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["key"],
            npst["state"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------
# Checkpoint files


def checkpoint_dir(work_dir: Path) -> Path:
    return work_dir / "checkpoints"


def write_checkpoint(work_dir: Path, state: dict[str, Any]) -> Path:
    """torch.save to a temp file, fsync, last.pt -> prev.pt, temp -> last.pt, update `latest`."""
    d = checkpoint_dir(work_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".last.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        last, prev = d / "last.pt", d / "prev.pt"
        if last.exists():
            os.replace(last, prev)
        os.replace(tmp, last)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    pointer = {"file": "last.pt", "iteration": int(state["iteration"]),
               "time": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    atomic_write_bytes(d / "latest", (json.dumps(pointer) + "\n").encode())
    with contextlib.suppress(OSError):  # make the renames durable too
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return last


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a training checkpoint (safely: tensors and plain data only).

    Raises:
        CheckpointError: Missing, truncated, corrupt, or not a training checkpoint.
    """
    p = Path(path)
    state = read_torch_file(p)
    if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{p} is not a pspnet training checkpoint (it has no format {TRAIN_CHECKPOINT_FORMAT!r}); "
            "to start from weights use train.backbone_weights"
        )
    if int(state.get("version", 0)) > TRAIN_CHECKPOINT_VERSION:
        raise CheckpointError(f"{p} was written by a newer pspnet (version {state['version']})")
    missing = [k for k in ("model", "optimizer", "iteration", "schedule", "rng", "config")
               if k not in state]  # fmt: skip
    if missing:
        raise CheckpointError(f"{p} is incomplete: missing {', '.join(missing)}")
    return state


def find_checkpoint(work_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``work_dir/checkpoints`` (None if there is none).

    Tries the file named by ``latest``, then ``last.pt``, then ``prev.pt``; a file that
    cannot be read (truncated, corrupt) gives a warning naming it and the next one is tried.

    Raises:
        CheckpointError: Checkpoints exist but none can be read.
    """
    d = checkpoint_dir(Path(work_dir))
    order: list[Path] = []
    pointer = d / "latest"
    if pointer.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            order.append(d / str(json.loads(pointer.read_text())["file"]))
    for name in ("last.pt", "prev.pt"):
        if d / name not in order:
            order.append(d / name)
    existing = [p for p in order if p.is_file()]
    if not existing:
        return None
    errors = []
    for i, p in enumerate(existing):
        try:
            return p, load_checkpoint(p)
        except CheckpointError as e:
            errors.append(f"{p}: {e}")
            nxt = existing[i + 1] if i + 1 < len(existing) else None
            warnings.warn(
                f"checkpoint {p} cannot be read and is skipped ({e})"
                + (f"; falling back to the previous checkpoint {nxt}" if nxt else ""),
                stacklevel=2,
            )
    raise CheckpointError(
        f"no usable checkpoint in {d}: " + "; ".join(errors)
        + ". Start afresh (without --resume) or restore a checkpoint."
    )
