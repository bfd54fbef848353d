"""Training on two folders: image/label pairs (:func:`~pspnet.data.samples.folder_samples`)
split into training and validation by a seeded draw that is written down and reused.

``pspnet train --images DIR --labels DIR [--val-fraction F]`` writes, into its work dir:

* ``split.json``: the folders, the fraction, the seed and the sample names (file stems) of each
  part; the record a later run in the same work dir (a resume) reads instead of drawing again;
* ``train.txt`` and ``val.txt``: the same parts as list files (``image<TAB>label``, absolute
  paths), for ``pspnet evaluate --val-list WORK_DIR/val.txt`` or ``train --train-list``.

This module imports only the standard library, :mod:`pspnet.config` and :mod:`pspnet.data`.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pspnet.config import ConfigError
from pspnet.data.io import DataError, Sample
from pspnet.data.samples import folder_samples, names_preview

__all__ = ["SPLIT_FILE", "split_samples", "folder_split"]

#: The split record in a work dir.
SPLIT_FILE = "split.json"


def split_samples(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (train, val), ``val_fraction`` of them (rounded, at least one of
    each) drawn by ``seed``; each part keeps the input order.

    The draw depends only on the sample names and the seed, not on the input order.

    Raises:
        DataError: Fewer than two samples (nothing to hold out).
        ConfigError: ``val_fraction`` not strictly between 0 and 1.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"`data.val_fraction` must be between 0 and 1, got {val_fraction!r}")
    if len(samples) < 2:
        raise DataError(
            f"--val-fraction needs at least 2 image/label pairs to hold some out, found "
            f"{len(samples)}; add pairs or drop --val-fraction"
        )
    names = sorted(s.name for s in samples)
    random.Random(seed).shuffle(names)
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    val = set(names[:n_val])
    return [s for s in samples if s.name not in val], [s for s in samples if s.name in val]


def folder_split(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    *,
    val_fraction: float | None,
    seed: int,
    work_dir: str | os.PathLike[str],
) -> tuple[list[Sample], list[Sample] | None]:
    """The (train, val or None) samples of two folders, by the work dir's split record.

    Without ``WORK_DIR/split.json`` the pairs are split (:func:`split_samples`; all are
    training samples when ``val_fraction`` is None) and the record and list files are written.
    With it, its parts are used again, so a resumed run trains and validates on exactly the
    same samples: pairs added to the folders since are left out (with a warning), pairs it
    names that are gone are an error.

    Raises:
        ConfigError: The record was written with another fraction or seed.
        DataError: Unpaired images (:func:`folder_samples`), or recorded pairs that are gone.
    """
    pairs = folder_samples(images_dir, labels_dir)
    record_path = Path(work_dir) / SPLIT_FILE
    if record_path.is_file():
        return _reuse(record_path, pairs, val_fraction, seed)
    if val_fraction is None:
        train, val = list(pairs), None
    else:
        train, val = split_samples(pairs, val_fraction, seed)
    _write(Path(work_dir), images_dir, labels_dir, val_fraction, seed, train, val)
    return train, val


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(record.get("train"), list) and isinstance(record.get("val"), list)):
            raise ValueError
    except (ValueError, AttributeError):
        raise DataError(
            f"{path} is not a split written by pspnet train (no 'train' and 'val' name lists); "
            "delete it to draw the split again, or use another --work-dir"
        ) from None
    return record


def _reuse(
    path: Path, pairs: list[Sample], val_fraction: float | None, seed: int
) -> tuple[list[Sample], list[Sample] | None]:
    """The parts ``path`` records, checked against this run's settings and folders."""
    record = _read_record(path)
    fix = f"give the same values as that run, or use a new --work-dir (or delete {path})"
    if record.get("val_fraction") != val_fraction:
        raise ConfigError(
            f"`data.val_fraction` is {val_fraction} but {path} was drawn with "
            f"{record.get('val_fraction')} (--val-fraction); {fix}"
        )
    if record.get("val_fraction") is not None and record.get("seed") != seed:
        raise ConfigError(
            f"`train.seed` is {seed} but {path} was drawn with seed {record.get('seed')}; {fix}"
        )
    by_name = {s.name: s for s in pairs}
    wanted = [str(n) for n in record["train"] + record["val"]]
    gone = sorted(set(wanted) - set(by_name))
    if gone:
        what = f"{len(gone)} image/label pairs named in {path}"
        fix = "put them back, or use a new --work-dir to draw a new split"
        raise DataError(f"{what} are no longer in the folders: {names_preview(gone, 5)}; {fix}")
    new = sorted(set(by_name) - set(wanted))
    if new:
        warnings.warn(
            f"{len(new)} image/label pairs are not in {path} and are left out, so this run "
            f"uses the recorded split: {names_preview(new, 5)}; use a new --work-dir to train "
            "on them",
            stacklevel=3,
        )
    train = [by_name[str(n)] for n in record["train"]]
    val = [by_name[str(n)] for n in record["val"]]
    return train, (val if record.get("val_fraction") is not None else None)


def _write(
    work_dir: Path,
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    val_fraction: float | None,
    seed: int,
    train: list[Sample],
    val: list[Sample] | None,
) -> None:
    """The list files, then the record (written last: its presence means the split is whole).

    Each file is replaced atomically, so processes of one distributed run writing the same
    split at once leave one whole copy.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train": train, "val": val or []}
    for part, samples in parts.items():
        if part == "val" and val is None:
            continue
        lines = "".join(f"{s.image.resolve()}\t{s.label.resolve()}\n"  # type: ignore[union-attr]
                        for s in samples)
        _replace(work_dir / f"{part}.txt", lines)
    record = {
        "images": str(Path(images_dir).resolve()),
        "labels": str(Path(labels_dir).resolve()),
        "val_fraction": val_fraction,
        "seed": seed,
        "train": [s.name for s in train],
        "val": [s.name for s in val or []],
    }
    _replace(work_dir / SPLIT_FILE, json.dumps(record, indent=1) + "\n")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
