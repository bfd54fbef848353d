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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pspnet.checkpoint.files import CheckpointError, atomic_write_bytes, read_torch_file
from pspnet.config import (
    ConfigError,
    ModelConfig,
    Preprocessing,
    default_head_channels,
    from_dict,
)

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


#: What every training checkpoint holds (``pspnet train`` writes more: progress, plan, scaler).
REQUIRED_FIELDS = ("model", "optimizer", "iteration", "schedule", "rng", "config")


def validate_train_checkpoint(state: Any, path: str | Path) -> dict[str, Any]:
    """Check format, version and required fields of a loaded training checkpoint.

    The one check that both ``--resume`` (:func:`load_checkpoint`) and
    :func:`pspnet.load_model` apply, so a damaged file gets the same error through either.

    Returns:
        ``state``, checked.

    Raises:
        CheckpointError: Not a training checkpoint, from a newer pspnet, or incomplete.
    """
    p = Path(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{p} is not a pspnet training checkpoint "
            f"(it has no format {TRAIN_CHECKPOINT_FORMAT!r}); "
            "to start from weights use train.backbone_weights"
        )
    version = state.get("version", 0)
    if not isinstance(version, int) or version > TRAIN_CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{p} is a training checkpoint of version {version!r}; this pspnet reads up to "
            f"{TRAIN_CHECKPOINT_VERSION}. Upgrade pspnet."
        )
    missing = [k for k in REQUIRED_FIELDS if k not in state]
    if missing:
        raise CheckpointError(f"{p} is incomplete: missing {', '.join(missing)}")
    if not isinstance(state["model"], Mapping) or not state["model"]:
        raise CheckpointError(f"{p} is a training checkpoint without model weights")
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a training checkpoint (safely: tensors and plain data only).

    Raises:
        CheckpointError: Missing, truncated, corrupt, or not a training checkpoint
            (:func:`validate_train_checkpoint`).
    """
    p = Path(path)
    return validate_train_checkpoint(read_torch_file(p), p)


def train_checkpoint_info(state: Mapping[str, Any], p: Path) -> dict[str, Any]:
    """Model config, preprocessing, ignore index and any class names of a training checkpoint.

    The model is described by ``state["config"]["model"]`` (ModelConfig fields). Class names
    and colours are taken from ``state["classes"]`` / ``state["palette"]`` when present, else
    from a registered data set named by ``config["data"]["dataset"]`` (what training labels its
    weights with); a ``data.class_names`` file is only referenced by path, not stored, so it is
    not read back (the names stay None). ``state`` has passed :func:`validate_train_checkpoint`.

    Raises:
        CheckpointError: The stored config has no model section or is invalid.
    """
    config = state.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise CheckpointError(
            f"{p} is a training checkpoint without its config (no config[\"model\"] section), "
            "so the model cannot be rebuilt; the file is damaged or was not written by "
            "pspnet train"
        )
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    fields = dict(config["model"])
    if "head_channels" not in fields and isinstance(fields.get("arch"), str):
        fields["head_channels"] = default_head_channels(fields["arch"])  # as training fills it
    try:
        model = from_dict(ModelConfig, fields, prefix="model")
        preprocess = from_dict(Preprocessing, dict(config.get("preprocess") or {}),
                               prefix="preprocess")
    except ConfigError as e:
        raise CheckpointError(f"{p}: the stored training config is invalid: {e}") from None
    classes = state.get("classes")
    palette = state.get("palette")
    if classes is None and data.get("dataset") and not data.get("class_names"):
        from pspnet.data.datasets import get_dataset_spec  # lazy: keeps `import pspnet` light

        try:
            classes = get_dataset_spec(str(data["dataset"])).class_names
        except ConfigError:
            classes = None  # a data set this pspnet does not know: no names
    n = model.num_classes
    return {
        "model": model,
        "preprocess": preprocess,
        "ignore_index": int(data.get("ignore_index", 255)),
        "classes": tuple(str(c) for c in classes) if classes and len(classes) == n else None,
        "palette": (tuple(tuple(int(x) for x in c) for c in palette)
                    if palette and len(palette) == n else None),
        "iteration": state.get("iteration"),
    }


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
