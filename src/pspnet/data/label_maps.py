"""Label maps: raw stored label values -> training classes, applied exactly once.

ADE20K's reduce-zero, Cityscapes labelIds -> trainIds and colour -> index are applied by
:meth:`~pspnet.data.datasets.SegmentationDataset.load_label` only; transforms never apply them.
As a second guard, the maps refuse ``int64`` input: raw labels are never ``int64``
(:func:`~pspnet.data.io.read_label` gives uint8/uint16/int32) and mapped labels always are, so a
second application fails loudly instead of silently shifting every class.

This module imports only the standard library, numpy, :mod:`pspnet.config` and
:mod:`pspnet.data`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Literal

import numpy as np

from pspnet.config import ConfigError
from pspnet.data.classes import read_classes_file
from pspnet.data.io import DataError

__all__ = [
    "LabelMap",
    "IdentityMap",
    "ReduceZeroLabel",
    "CityscapesLabelIds",
    "ColorToIndex",
    "ClassFileColors",
    "LABEL_MAPS",
    "make_label_map",
    "run_label_map",
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
]

#: every labelId not listed here is ignored.
CITYSCAPES_LABEL_TO_TRAIN_ID: Mapping[int, int] = MappingProxyType({
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
})  # fmt: skip


class LabelMap:
    """Maps raw stored label values to training classes (``ignore_index`` for ignored pixels).

    Subclasses set :attr:`name` and implement :meth:`map_with_stats`. Input is the raw array
    from :func:`~pspnet.data.io.read_label`; output is ``int64``. Maps are applied by
    :class:`~pspnet.data.datasets.SegmentationDataset` only, exactly once.
    """

    name: ClassVar[str] = "label_map"
    #: "index": takes (H, W) integer labels; "rgb": takes (H, W, 3) colour labels.
    input_kind: ClassVar[Literal["index", "rgb"]] = "index"
    #: Whether applying the map to its own output is harmless (only true for the identity).
    idempotent: ClassVar[bool] = False

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, label: np.ndarray) -> np.ndarray:
        """Map a raw label array; see :meth:`map_with_stats`."""
        return self.map_with_stats(label)[0]

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        """Map a raw label array.

        Returns:
            The mapped ``int64`` array, and the number of pixels the map could not interpret
            and set to ``ignore_index`` (unknown colours; 0 for the other maps).
        """
        raise NotImplementedError

    def _check_raw(self, label: np.ndarray) -> None:
        if not self.idempotent and label.dtype == np.int64:
            raise DataError(
                f"label map {self.name!r} was given an int64 array, which is what label maps "
                "return: it is being applied a second time, which would shift every class. "
                "Apply label maps only through SegmentationDataset, never in transforms"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ignore_index={self.ignore_index})"


class IdentityMap(LabelMap):
    """Keeps stored values unchanged (labels already hold 0..num_classes-1 and ignore)."""

    name = "none"
    idempotent = True

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        if label.ndim != 2:
            raise DataError(f"label map 'none' expects (H, W) labels, got shape {label.shape}")
        return label.astype(np.int64, copy=False), 0


class ReduceZeroLabel(LabelMap):
    """ADE20K's convention: stored 0 ("other") becomes ignore, every other value v becomes v-1.

    Stored values already equal to ``ignore_index`` stay ignored (as in mmsegmentation).
    Applied exactly once, by the dataset; applying it twice would turn class 0 ("wall") into
    ignore and shift all classes, which the int64 guard refuses.
    """

    name = "reduce_zero_label"

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        self._check_raw(label)
        raw = label.astype(np.int64)
        out = raw - 1
        out[(raw == 0) | (raw == self.ignore_index)] = self.ignore_index
        return out, 0


class CityscapesLabelIds(LabelMap):
    """Cityscapes ``*_gtFine_labelIds.png`` values -> the 19 trainIds; all other ids ignored.

    Uses the official table :data:`CITYSCAPES_LABEL_TO_TRAIN_ID`.
    """

    name = "cityscapes_label_ids"

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__(ignore_index)
        lut = np.full(256, self.ignore_index, dtype=np.int64)
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
            lut[label_id] = train_id
        lut.flags.writeable = False
        self._lut = lut

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        self._check_raw(label)
        raw = label.astype(np.int64)
        inside = (raw >= 0) & (raw < self._lut.size)
        out = np.where(inside, self._lut[np.clip(raw, 0, self._lut.size - 1)], self.ignore_index)
        return out.astype(np.int64, copy=False), 0


class ColorToIndex(LabelMap):
    """Colour-coded (RGB) labels -> class indices, by exact colour match.

    Colours not in the palette become ``ignore_index``; :meth:`map_with_stats` and
    :meth:`unknown_colors` report how many pixels that affected (``pspnet data check`` lists them).

    Args:
        colors: Index -> (R, G, B), as a mapping or a sequence (position = index). Entries may
            map to ``ignore_index`` (e.g. CamVid's void colour).
        ignore_index: Value for unknown colours.
    """

    name = "color_to_index"
    input_kind = "rgb"

    def __init__(
        self,
        colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
        ignore_index: int = 255,
    ) -> None:
        super().__init__(ignore_index)
        items = list(colors.items()) if isinstance(colors, Mapping) else list(enumerate(colors))
        if not items:
            raise DataError("ColorToIndex needs at least one colour; pass the data set's palette")
        keys, values, seen = [], [], {}
        for index, rgb in items:
            rgb = tuple(int(c) for c in rgb)
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise DataError(
                    f"ColorToIndex: colour {rgb} for class {index} must be three values in 0..255"
                )
            key = _rgb_key(rgb)
            if key in seen and seen[key] != index:
                raise DataError(
                    f"ColorToIndex: colour {rgb} is given to both class {seen[key]} and class "
                    f"{index}; each colour must name one class"
                )
            seen[key] = index
            keys.append(key)
            values.append(int(index))
        order = np.argsort(keys)
        self._keys = np.asarray(keys, dtype=np.int64)[order]
        self._values = np.asarray(values, dtype=np.int64)[order]
        self._keys.flags.writeable = False
        self._values.flags.writeable = False
        self.colors: dict[int, tuple[int, int, int]] = {
            int(i): tuple(int(c) for c in rgb) for i, rgb in items  # type: ignore[misc]
        }

    @classmethod
    def from_classes_file(
        cls, path: str | os.PathLike[str], ignore_index: int = 255
    ) -> ColorToIndex:
        """Build the map from a ``classes.txt`` (:func:`~pspnet.data.classes.read_classes_file`)."""
        _, palette = read_classes_file(path)
        return cls(palette, ignore_index=ignore_index)

    def _match(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DataError(
                f"colour map expects (H, W, 3) colour labels, got shape {rgb.shape}; the labels "
                "are not colour-coded, so drop the colour map"
            )
        keys = _rgb_key_array(rgb)
        pos = np.clip(np.searchsorted(self._keys, keys), 0, self._keys.size - 1)
        found = self._keys[pos] == keys
        return np.where(found, self._values[pos], self.ignore_index), found

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        out, found = self._match(label)
        return out.astype(np.int64, copy=False), int(found.size - np.count_nonzero(found))

    def unknown_colors(self, rgb: np.ndarray) -> dict[tuple[int, int, int], int]:
        """Colours of ``rgb`` that are not in the palette, with their pixel counts."""
        _, found = self._match(rgb)
        if found.all():
            return {}
        keys, counts = np.unique(_rgb_key_array(rgb)[~found], return_counts=True)
        return {
            (int(k >> 16), int((k >> 8) & 255), int(k & 255)): int(c)
            for k, c in zip(keys, counts)
        }

    def __repr__(self) -> str:
        return f"ColorToIndex({len(self.colors)} colours, ignore_index={self.ignore_index})"


class ClassFileColors(ColorToIndex):
    """Labels read through a class file with ``R G B`` columns (``--classes-file`` in train,
    evaluate and data check): colour masks become class indices, index labels pass unchanged.

    * An RGB(A) label (what labelling tools export) is mapped colour -> index by exact match; a
      colour given to an index of 255 or above (``255<TAB>void<TAB>0 0 0``) becomes
      ``ignore_index``.
    * A colour the file does not list is an error naming the colours and their pixel counts
      (the dataset adds the file). Unknown colours are never silently ignored: one missing line
      in the class file would otherwise drop a whole class from training. To ignore a colour on
      purpose, list it under index 255.
    * A single-channel or palette label holds indices already: it goes through ``index_map``
      (None: unchanged), so one class file serves CamVid-style index labels too.

    Args:
        colors: Index -> (R, G, B), e.g. :attr:`pspnet.data.classes.ClassFile.colours`.
        ignore_index: Value of pixels whose colour has an index of 255 or above.
        index_map: The map for index labels (e.g. ``reduce_zero_label``), or None.
        source: What to call the colour table in messages (the class file's path).
    """

    name = "class_file_colors"

    def __init__(
        self,
        colors: Mapping[int, Sequence[int]],
        ignore_index: int = 255,
        *,
        index_map: LabelMap | None = None,
        source: str = "the class file",
    ) -> None:
        super().__init__(colors, ignore_index=ignore_index)
        # Non-class entries (void) name a colour, not a class: their pixels are ignored.
        values = np.where(self._values >= 255, self.ignore_index, self._values)
        values.flags.writeable = False
        self._values = values
        self.index_map = index_map
        self.source = source

    def map_with_stats(self, label: np.ndarray) -> tuple[np.ndarray, int]:
        if label.ndim == 2:
            if self.index_map is not None:
                return self.index_map.map_with_stats(label)
            return label.astype(np.int64, copy=False), 0
        out, found = self._match(label)
        if not found.all():
            raise DataError(self._unknown_message(label))
        return out.astype(np.int64, copy=False), 0

    def _unknown_message(self, rgb: np.ndarray) -> str:
        colors = sorted(self.unknown_colors(rgb).items(), key=lambda kv: -kv[1])
        total = sum(n for _, n in colors)
        shown = ", ".join(f"RGB{c} ({n:,} px)" for c, n in colors[:5])
        more = f" and {len(colors) - 5} more colours" if len(colors) > 5 else ""
        grey = (
            " (all grey: an index label saved as RGB? re-save it as a single-channel PNG)"
            if all(r == g == b for (r, g, b), _ in colors) else ""
        )  # fmt: skip
        return (
            f"{total:,} pixels have colours that are not in {self.source}: {shown}{more}{grey}; "
            "add each colour as a class line (`index<TAB>name<TAB>R G B`), or as "
            "`255<TAB>void<TAB>R G B` to ignore it (`pspnet data check` lists every file)"
        )

    def __repr__(self) -> str:
        return (f"ClassFileColors({len(self.colors)} colours from {self.source}, "
                f"index_map={self.index_map!r}, ignore_index={self.ignore_index})")


def _rgb_key(rgb: tuple[int, ...]) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def _rgb_key_array(rgb: np.ndarray) -> np.ndarray:
    a = rgb.astype(np.int64)
    return (a[:, :, 0] << 16) | (a[:, :, 1] << 8) | a[:, :, 2]


#: Label maps selectable by name (for configs and the command line).
LABEL_MAPS: Mapping[str, type[LabelMap]] = MappingProxyType({
    IdentityMap.name: IdentityMap,
    ReduceZeroLabel.name: ReduceZeroLabel,
    CityscapesLabelIds.name: CityscapesLabelIds,
})  # fmt: skip


def make_label_map(name: str | None, *, ignore_index: int = 255) -> LabelMap | None:
    """Build a label map from its name (``none``, ``reduce_zero_label``, ``cityscapes_label_ids``).

    ``None`` and ``"none"`` give None (no mapping). Colour maps need a palette: build
    :class:`ColorToIndex` directly.

    Raises:
        ConfigError: Unknown name; the message lists the choices.
    """
    if name is None or name == IdentityMap.name:
        return None
    if name not in LABEL_MAPS:
        raise ConfigError(
            f"unknown label map {name!r}{did_you_mean(name, LABEL_MAPS)}; choose one of "
            f"{', '.join(LABEL_MAPS)}"
        )
    return LABEL_MAPS[name](ignore_index=ignore_index)


def run_label_map(
    name: str | None,
    colors: Mapping[int, Sequence[int]] | None,
    *,
    ignore_index: int = 255,
    source: str = "the class file",
) -> LabelMap | None:
    """The label map of a run: ``name``'s map, behind the class file's colours if it has any.

    The one place train, evaluate and data check decide how labels are read: without colours,
    :func:`make_label_map` of ``name``; with colours (a class file with ``R G B`` columns),
    :class:`ClassFileColors`, which maps colour masks and hands index labels to ``name``'s map.

    Args:
        name: A :data:`LABEL_MAPS` name, ``none`` or None.
        colors: Index -> (R, G, B) from the class file, or None / empty.
        ignore_index: The ignore value.
        source: The class file, for messages.

    Raises:
        ConfigError: Unknown ``name``.
    """
    base = make_label_map(name, ignore_index=ignore_index)
    if not colors:
        return base
    return ClassFileColors(colors, ignore_index, index_map=base, source=source)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
