"""Whole-data-set health check (``pspnet data check``).

Unlike the dataset itself, which stops at the first bad file, :func:`check_dataset` reads every
sample, records every problem, and summarises what it saw: label encodings, per-class pixel
frequencies, ignore pixels, EXIF-rotated photos, size mismatches, oversized and unreadable files.

This module imports only the standard library, numpy, Pillow and :mod:`pspnet.data`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from pspnet.config import check_limit
from pspnet.data.io import (
    DEFAULT_MAX_PIXELS,
    DataError,
    LabelFormatError,
    MissingDataFileError,
    OversizedImageError,
    Sample,
    decode_label,
    exif_orientation,
    open_image,
)
from pspnet.data.label_maps import LabelMap
from pspnet.data.validation import progress_bar, validate_labels

__all__ = ["Problem", "DatasetReport", "check_dataset", "WARNING_KINDS"]

#: Problem kinds that do not make a data set unusable (``report.ok`` stays True).
WARNING_KINDS: frozenset[str] = frozenset({"exif_orientation", "unknown_colors", "no_label"})


class Problem(NamedTuple):
    """One finding: the file, a short machine-readable kind, and a full message."""

    path: str
    kind: str
    message: str

    @property
    def is_error(self) -> bool:
        """Whether this problem makes the data set unusable for training as it is."""
        return self.kind not in WARNING_KINDS


@dataclass
class DatasetReport:
    """Result of :func:`check_dataset`.

    Attributes:
        n_samples: Samples checked.
        num_classes: Classes the labels were checked against.
        ignore_index: The ignore value.
        class_names: Optional names for the table.
        problems: Every finding, in sample order (errors and warnings, see :data:`WARNING_KINDS`).
        class_pixel_counts: Pixels per class over all readable labels, shape (num_classes,).
        ignore_pixels: Pixels equal to ``ignore_index`` (after the label map).
        out_of_range_pixels: Pixel counts of invalid label values, by value.
        label_encodings: How many label files were stored in each Pillow mode (P, L, I;16, RGB...).
        exif_rotated: (image path, EXIF orientation) of photos whose orientation tag is not 1.
        size_mismatches: (image path, label path, image WxH, label WxH).
        oversized: Files above the pixel limit.
        unreadable: Files missing, truncated, corrupt, or not in an allowed format.
    """

    n_samples: int
    num_classes: int
    ignore_index: int
    class_names: tuple[str, ...] | None = None
    problems: list[Problem] = field(default_factory=list)
    class_pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignore_pixels: int = 0
    out_of_range_pixels: dict[int, int] = field(default_factory=dict)
    label_encodings: dict[str, int] = field(default_factory=dict)
    exif_rotated: list[tuple[str, int]] = field(default_factory=list)
    size_mismatches: list[tuple[str, str, tuple[int, int], tuple[int, int]]] = field(
        default_factory=list
    )
    oversized: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """Problems that must be fixed before training."""
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        """Problems worth a look that do not stop training."""
        return [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        """True when no sample has an error (warnings allowed)."""
        return not self.errors

    @property
    def labelled_pixels(self) -> int:
        """Pixels with a valid class."""
        return int(self.class_pixel_counts.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (plain Python types only)."""
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return {
            "ok": self.ok,
            "n_samples": self.n_samples,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "problems": [p._asdict() for p in self.problems],
            "class_pixel_counts": {
                names[i]: int(c) for i, c in enumerate(self.class_pixel_counts.tolist())
            },
            "ignore_pixels": int(self.ignore_pixels),
            "out_of_range_pixels": {str(k): int(v) for k, v in self.out_of_range_pixels.items()},
            "label_encodings": dict(self.label_encodings),
            "exif_rotated": [{"path": p, "orientation": o} for p, o in self.exif_rotated],
            "size_mismatches": [
                {"image": i, "label": lb, "image_size": list(si), "label_size": list(sl)}
                for i, lb, si, sl in self.size_mismatches
            ],
            "oversized": list(self.oversized),
            "unreadable": list(self.unreadable),
        }

    def format(self, max_problems: int = 50) -> str:
        """A human-readable report: summary, per-class pixel table, then the problems."""
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "PROBLEMS FOUND"
        lines = [
            f"Data set check: {verdict} - {self.n_samples} samples, {n_err} errors, "
            f"{n_warn} warnings",
        ]
        enc = ", ".join(f"{k}: {v}" for k, v in sorted(self.label_encodings.items())) or "none"
        lines.append(f"Label encodings: {enc}")
        total = self.labelled_pixels + self.ignore_pixels
        share = 100.0 * self.ignore_pixels / total if total else 0.0
        lines.append(f"Ignore ({self.ignore_index}) pixels: {self.ignore_pixels:,} ({share:.2f}%)")
        if self.out_of_range_pixels:
            vals = ", ".join(
                f"{v} ({c:,} px)" for v, c in sorted(self.out_of_range_pixels.items())[:10]
            )
            lines.append(f"Invalid label values: {vals}")
        for title, items in (
            ("EXIF-rotated photos (pixels are used as stored)", len(self.exif_rotated)),
            ("Image/label size mismatches", len(self.size_mismatches)),
            ("Oversized files", len(self.oversized)),
            ("Unreadable files", len(self.unreadable)),
        ):
            if items:
                lines.append(f"{title}: {items}")

        lines.append("")
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        width = max([len("class")] + [len(n) for n in names])
        labelled = self.labelled_pixels
        lines.append(f"{'idx':>4}  {'class':<{width}}  {'pixels':>15}  {'share':>7}")
        for i, count in enumerate(self.class_pixel_counts.tolist()):
            pct = 100.0 * count / labelled if labelled else 0.0
            flag = "  <- never seen" if count == 0 else ""
            lines.append(f"{i:>4}  {names[i]:<{width}}  {count:>15,}  {pct:>6.2f}%{flag}")

        if self.problems:
            lines.append("")
            shown = self.problems[:max_problems]
            lines.append(f"Problems ({len(shown)} of {len(self.problems)} shown):")
            for p in shown:
                level = "ERROR" if p.is_error else "warn "
                lines.append(f"  {level} [{p.kind}] {p.message}")
        return "\n".join(lines)


@dataclass
class _SampleResult:
    problems: list[Problem] = field(default_factory=list)
    counts: np.ndarray | None = None
    ignore: int = 0
    bad_values: dict[int, int] = field(default_factory=dict)
    encoding: str | None = None
    exif: tuple[str, int] | None = None
    mismatch: tuple[str, str, tuple[int, int], tuple[int, int]] | None = None
    oversized: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _record_open_error(res: _SampleResult, path: str, err: DataError) -> None:
    if isinstance(err, MissingDataFileError):
        res.problems.append(Problem(path, "missing", str(err)))
        res.unreadable.append(path)
    elif isinstance(err, OversizedImageError):
        res.problems.append(Problem(path, "oversized", str(err)))
        res.oversized.append(path)
    else:
        res.problems.append(Problem(path, "unreadable", str(err)))
        res.unreadable.append(path)


def _check_sample(
    sample: Sample,
    num_classes: int,
    ignore_index: int,
    label_map: LabelMap | None,
    max_pixels: int,
) -> _SampleResult:
    res = _SampleResult()
    image_path = str(sample.image)
    image_size = _check_image(res, image_path, max_pixels)
    if sample.label is None:
        res.problems.append(
            Problem(image_path, "no_label", f"{image_path}: sample {sample.name!r} has no label")
        )
        return res

    label_path = str(sample.label)
    try:
        lim = open_image(sample.label, max_pixels=max_pixels)
    except DataError as e:
        _record_open_error(res, label_path, e)
        return res
    res.encoding = lim.mode
    if image_size is not None and lim.size != image_size:
        res.mismatch = (image_path, label_path, image_size, lim.size)
        res.problems.append(
            Problem(
                label_path,
                "size_mismatch",
                f"image {image_path} is {image_size[0]}x{image_size[1]} but its label "
                f"{label_path} is {lim.size[0]}x{lim.size[1]} (WxH); pair the right files or "
                "resize the label with nearest-neighbour interpolation",
            )
        )

    rgb_map = label_map is not None and label_map.input_kind == "rgb"
    try:
        raw = decode_label(lim, label_path, allow_rgb=rgb_map)
        if label_map is None:
            label, unknown = raw.astype(np.int64, copy=False), 0
        else:
            label, unknown = label_map.map_with_stats(raw)
    except LabelFormatError as e:
        res.problems.append(Problem(label_path, "label_format", str(e)))
        return res
    except DataError as e:
        res.problems.append(Problem(label_path, "label_format", f"{label_path}: {e}"))
        return res
    if unknown and hasattr(label_map, "unknown_colors"):
        colors = label_map.unknown_colors(raw)  # type: ignore[union-attr]
        top = sorted(colors.items(), key=lambda kv: -kv[1])[:5]
        listed = ", ".join(f"RGB{c} ({n:,} px)" for c, n in top)
        res.problems.append(
            Problem(
                label_path,
                "unknown_colors",
                f"{label_path}: {unknown:,} pixels have colours not in the colour map and are "
                f"ignored: {listed}; add them to the classes file if they are classes",
            )
        )

    _count_values(res, label, num_classes, ignore_index, label_path, label_map)
    return res


def _check_image(res: _SampleResult, image_path: str, max_pixels: int) -> tuple[int, int] | None:
    """Open the image, record its problems in ``res``; its (W, H), or None if unreadable."""
    try:
        im = open_image(image_path, max_pixels=max_pixels)
    except DataError as e:
        _record_open_error(res, image_path, e)
        return None
    orientation = exif_orientation(im)
    if orientation != 1:
        res.exif = (image_path, orientation)
        res.problems.append(
            Problem(
                image_path,
                "exif_orientation",
                f"{image_path}: EXIF orientation {orientation} (photo is displayed rotated or "
                "mirrored, but pixels are used as stored, matching the label); check that the "
                "label was drawn on the stored pixels, or re-save the photo with the rotation "
                "applied together with its label",
            )
        )
    return im.size


def _count_values(
    res: _SampleResult,
    label: np.ndarray,
    num_classes: int,
    ignore_index: int,
    label_path: str,
    label_map: LabelMap | None,
) -> None:
    """Validate a mapped label and record its class, ignore and bad-value pixel counts."""
    try:
        validate_labels(label, num_classes, ignore_index, label_path, label_map=label_map)
    except DataError as e:
        res.problems.append(Problem(label_path, "label_values", str(e)))
    valid = (label >= 0) & (label < num_classes)
    ignored = label == ignore_index
    res.counts = np.bincount(label[valid].ravel(), minlength=num_classes)
    res.ignore = int(np.count_nonzero(ignored))
    bad = ~(valid | ignored)
    if bad.any():
        values, counts = np.unique(label[bad], return_counts=True)
        res.bad_values = {int(v): int(c) for v, c in zip(values, counts)}


def check_dataset(
    samples: Sequence[Sample],
    num_classes: int,
    ignore_index: int = 255,
    label_map: LabelMap | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    *,
    class_names: Sequence[str] | None = None,
    workers: int | None = None,
) -> DatasetReport:
    """Read every sample and report every problem (never stops at the first one).

    Args:
        samples: The samples to check.
        num_classes: Valid labels are ``0 .. num_classes-1``.
        ignore_index: The other allowed label value.
        label_map: Applied to each raw label before checking values (as in training).
        max_pixels: Decompression-bomb limit; larger files are reported as oversized.
        progress: Show a tqdm progress bar.
        class_names: Names for the per-class table (default: indices).
        workers: Reader threads (default: up to 8).

    Returns:
        The report; ``report.ok`` is False if any sample has an error.

    Raises:
        ValueError: ``class_names`` does not have ``num_classes`` entries.
    """
    check_limit("num_classes", num_classes, "num_classes (--num-classes)")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but num_classes is {num_classes}; "
            "give one name per class"
        )
    samples = list(samples)
    report = DatasetReport(
        n_samples=len(samples),
        num_classes=num_classes,
        ignore_index=ignore_index,
        class_names=tuple(class_names) if class_names is not None else None,
        class_pixel_counts=np.zeros(num_classes, dtype=np.int64),
    )
    encodings: Counter[str] = Counter()
    bad_values: Counter[int] = Counter()

    def one(sample: Sample) -> _SampleResult:
        return _check_sample(sample, num_classes, ignore_index, label_map, max_pixels)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(one, samples)
        if progress:
            results = progress_bar(results, len(samples), "checking")
        for res in results:
            report.problems.extend(res.problems)
            if res.counts is not None:
                report.class_pixel_counts += res.counts
            report.ignore_pixels += res.ignore
            bad_values.update(res.bad_values)
            if res.encoding is not None:
                encodings[res.encoding] += 1
            if res.exif is not None:
                report.exif_rotated.append(res.exif)
            if res.mismatch is not None:
                report.size_mismatches.append(res.mismatch)
            report.oversized.extend(res.oversized)
            report.unreadable.extend(res.unreadable)
    report.label_encodings = dict(sorted(encodings.items()))
    report.out_of_range_pixels = dict(sorted(bad_values.items()))
    return report
