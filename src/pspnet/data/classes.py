"""Class-name files: the one reader behind ``--classes-file`` (train, evaluate, convert, data
check; ``--class-names`` is its deprecated alias) and the colour map of colour-coded labels.

A file lists one class a line in one of three forms (blank lines and ``#`` comments skipped):

* ``name`` — the classes in file order;
* ``index<TAB>name`` — the index gives the order;
* ``index<TAB>name<TAB>R G B`` — CamVid's ``classes.txt``: the colours become the palette and
  the colour map of colour-coded labels
  (:class:`~pspnet.data.label_maps.ClassFileColors`).

With indices, those below 255 are the classes and must be exactly ``0 .. n-1``; an entry with
index 255 or above (``255<TAB>void<TAB>0 0 0``) names a non-class value and only has a colour.
Indexed and plain lines cannot be mixed. Errors name the file and the line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from pspnet.data.io import DataError, MissingDataFileError

__all__ = ["ClassFile", "read_class_file", "read_classes_file"]

RGB = tuple[int, int, int]

#: First index that names a non-class value (void) instead of a class.
_NON_CLASS = 255
_RGB_FORM = "`index<TAB>name<TAB>R G B` with R, G, B in 0..255"
# `index name R G B` separated by spaces: almost surely a CamVid line whose tabs were lost.
_SPACED_RGB = re.compile(r"^\d+\s+\S.*\s+\d+\s+\d+\s+\d+$")


@dataclass(frozen=True)
class ClassFile:
    """What a class-name file says."""

    names: tuple[str, ...]
    """Class names in index order."""
    palette: tuple[RGB, ...] | None
    """One RGB colour per class when the file gives every class one, else None."""
    colours: Mapping[int, RGB]
    """Every index the file gives a colour, non-class entries (255 void) included."""


class _Line(NamedTuple):
    number: int
    text: str
    index: int | None
    name: str
    rgb: RGB | None


def _parse_line(p: Path, number: int, raw: str) -> _Line:
    """One non-blank, non-comment line in any of the three forms."""
    parts = raw.split("\t")
    if len(parts) == 1:
        if _SPACED_RGB.match(raw.strip()):
            raise DataError(
                f"{p}:{number}: expected {_RGB_FORM}, got {raw!r}; separate the index, the "
                "name and the colour with tabs"
            )
        return _Line(number, raw, None, raw.strip(), None)
    if len(parts) > 3:
        raise DataError(
            f"{p}:{number}: expected `name`, `index<TAB>name` or `index<TAB>name<TAB>R G B`, "
            f"got {raw!r} ({len(parts)} tab-separated fields)"
        )
    form = _RGB_FORM if len(parts) == 3 else "`index<TAB>name` with a whole-number index"
    try:
        index = int(parts[0])
        rgb = tuple(int(c) for c in parts[2].split()) if len(parts) == 3 else None
        bad_rgb = rgb is not None and (len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb))
        if index < 0 or bad_rgb:
            raise ValueError
    except ValueError:
        raise DataError(f"{p}:{number}: expected {form}, got {raw!r}") from None
    name = parts[1].strip()
    if not name:
        raise DataError(f"{p}:{number}: the class name is empty in {raw!r}")
    return _Line(number, raw, index, name, rgb)  # type: ignore[arg-type]


def _read_lines(p: Path) -> list[_Line]:
    if not p.is_file():
        raise MissingDataFileError(f"classes file {p} does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(
            f"classes file {p} is not UTF-8 text; it must list one name a line, "
            "`index<TAB>name` or `index<TAB>name<TAB>R G B` lines"
        ) from None
    lines = [
        _parse_line(p, number, raw.rstrip("\r\n"))
        for number, raw in enumerate(text.splitlines(), start=1)
        if raw.strip() and not raw.lstrip().startswith("#")
    ]
    if not lines:
        raise DataError(f"classes file {p} lists no class names")
    return lines


def _indexed(p: Path, lines: list[_Line]) -> ClassFile:
    """Names in index order and colours from ``index<TAB>name[<TAB>R G B]`` lines."""
    names: dict[int, str] = {}
    colours: dict[int, RGB] = {}
    seen: set[int] = set()
    for ln in lines:
        if ln.index is None:
            raise DataError(
                f"{p}:{ln.number}: {ln.text!r} has no index but other lines have one; give "
                "every line an index (`index<TAB>name`) or none"
            )
        if ln.index in seen:
            raise DataError(
                f"{p}:{ln.number}: index {ln.index} appears twice; give each class one line"
            )
        seen.add(ln.index)
        if ln.rgb is not None:
            colours[ln.index] = ln.rgb
        if ln.index < _NON_CLASS:
            names[ln.index] = ln.name
    if not names:
        raise DataError(f"{p}: lists no classes (indices below 255); is it the right file?")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        raise DataError(
            f"{p}: class indices must be 0..n-1 without gaps, but {gaps[:10]} are missing; "
            "number the classes consecutively (use 255 for void)"
        )
    n = len(names)
    palette = tuple(colours[i] for i in range(n)) if all(i in colours for i in range(n)) else None
    return ClassFile(tuple(names[i] for i in range(n)), palette, MappingProxyType(colours))


def read_class_file(path: str | os.PathLike[str]) -> ClassFile:
    """Read a class-name file in any of the forms the module docstring lists.

    Returns:
        The names in class order, the palette (when every class has a colour) and every
        index's colour.

    Raises:
        MissingDataFileError: The file does not exist.
        DataError: Not UTF-8 text, no names, a malformed line, mixed indexed and plain lines,
            a duplicate index or missing class indices; the message names the file and line.
    """
    p = Path(path)
    lines = _read_lines(p)
    if all(ln.index is None for ln in lines):
        return ClassFile(tuple(ln.name for ln in lines), None, MappingProxyType({}))
    return _indexed(p, lines)


def read_classes_file(
    path: str | os.PathLike[str],
) -> tuple[tuple[str, ...], dict[int, RGB]]:
    """Read a file whose every line has a colour (``index<TAB>name<TAB>R G B``, CamVid's).

    What a colour map (:meth:`pspnet.data.label_maps.ColorToIndex.from_classes_file`) needs:
    :func:`read_class_file` plus the check that every line has a colour.

    Returns:
        (class names in index order, index -> (R, G, B) including non-class entries).

    Raises:
        MissingDataFileError: The file does not exist.
        DataError: As :func:`read_class_file`, or a line without a colour.
    """
    p = Path(path)
    lines = _read_lines(p)
    for ln in lines:
        if ln.rgb is None:
            raise DataError(f"{p}:{ln.number}: expected {_RGB_FORM}, got {ln.text!r}")
    found = _indexed(p, lines)
    return found.names, dict(found.colours)
