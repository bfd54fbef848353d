"""Sample discovery: list files, the conventional folder layouts, and image/label folder pairs.

This module imports only the standard library and :mod:`pspnet.data.io`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pspnet.data.io import IMAGE_EXTENSIONS, DataError, MissingDataFileError, Sample

__all__ = [
    "NameResolver",
    "LABEL_FOLDER_NAMES",
    "LayoutResolver",
    "read_list_file",
    "list_file_samples",
    "folder_samples",
    "image_files",
]

#: Resolves a sample name (one-token list line) to (image path, label path or None).
NameResolver = Callable[[str], tuple[Path, Path | None]]


def _resolve_listed(root: Path, token: str) -> Path:
    """Resolve a path written in a list file.

    Relative paths are relative to ``root``. DeepLab-style lists write ``/JPEGImages/x.jpg``,
    meaning "relative to the data root"; such a path is used as absolute only if it exists.
    """
    p = Path(token)
    if p.is_absolute():
        if p.exists():
            return p
        return root / token.lstrip("/\\")
    return root / p


#: Label folder names tried next to ``images/`` when a list line holds a sample name, in order.
LABEL_FOLDER_NAMES: tuple[str, ...] = ("labels", "annotations")


def _extensions_hint() -> str:
    return "<" + "|".join(e.lstrip(".") for e in sorted(IMAGE_EXTENSIONS)) + ">"


class LayoutResolver:
    """Turns a sample name from a list file into paths, by the conventional folder layouts.

    For a list file ``<split>.txt`` (``split`` is the list file's stem) and a name ``N``, the
    layouts are tried in this order, and the first one whose image folder holds ``N`` wins:

    1. ``images/<split>/N.<ext>`` with its label in ``labels/<split>/`` or
       ``annotations/<split>/``;
    2. ``images/N.<ext>`` with its label in ``labels/`` or ``annotations/``.

    ``<ext>`` is any allowed image extension (:data:`IMAGE_EXTENSIONS`, any letter case), and
    image and label may have different ones (``N.jpg`` with ``N.png``). Names may contain ``/``
    (sub-folders). Each folder is listed once, so resolving a long list costs one directory scan
    per folder, not a stat per name and extension.

    Outcomes, within the winning layout:

    * exactly one image and exactly one label: the pair;
    * no label folder of that layout exists at all: the image alone (label ``None``, an
      unlabelled split such as a test set; ``data check`` reports it, training and evaluation
      refuse it);
    * a label folder exists but holds no label for ``N``: :class:`MissingDataFileError`;
    * two images (``N.jpg`` and ``N.png``) or two labels: :class:`DataError` (ambiguous).

    A name found in no layout raises :class:`MissingDataFileError` listing the places looked in.

    Args:
        root: The data root.
        split: The split folder name, usually the list file's stem.
    """

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        self.root = Path(root)
        self.split = split
        self._listings: dict[Path, dict[str, list[Path]]] = {}

    def _layouts(self) -> list[tuple[Path, list[Path]]]:
        r, s = self.root, self.split
        return [
            (r / "images" / s, [r / d / s for d in LABEL_FOLDER_NAMES]),
            (r / "images", [r / d for d in LABEL_FOLDER_NAMES]),
        ]

    def _listing(self, folder: Path) -> dict[str, list[Path]]:
        """:func:`image_files` of ``folder``, listed once."""
        if folder not in self._listings:
            self._listings[folder] = image_files(folder)
        return self._listings[folder]

    def _matches(self, folder: Path, name: str) -> list[Path]:
        sub = Path(name)
        return list(self._listing(folder / sub.parent).get(sub.name, []))

    def __call__(self, name: str) -> tuple[Path, Path | None]:
        """Resolve ``name`` to (image path, label path or None).

        Raises:
            MissingDataFileError: The name is in no layout, or its label folder lacks it.
            DataError: The name matches two images or two labels.
        """
        name = name.strip().lstrip("/\\")
        ext = _extensions_hint()
        for image_dir, label_dirs in self._layouts():
            images = self._matches(image_dir, name)
            if not images:
                continue
            if len(images) > 1:
                raise DataError(
                    f"sample name {name!r} is ambiguous: it matches "
                    f"{', '.join(str(p) for p in images)}; keep one of these files, or write an "
                    "`image_path label_path` line for it"
                )
            labels = [p for d in label_dirs for p in self._matches(d, name)]
            if len(labels) == 1:
                return images[0], labels[0]
            if len(labels) > 1:
                raise DataError(
                    f"sample name {name!r} has an ambiguous label: it matches "
                    f"{', '.join(str(p) for p in labels)}; keep one of these files, or write an "
                    "`image_path label_path` line for it"
                )
            if not any(d.is_dir() for d in label_dirs):
                return images[0], None  # an unlabelled split (e.g. a test set)
            raise MissingDataFileError(
                f"sample name {name!r}: image {images[0]} found but no label "
                f"{' or '.join(str(d / name) + '.' + ext for d in label_dirs)}; add the label, "
                "or remove the name from the list"
            )
        looked = ", ".join(f"{d / name}.{ext}" for d, _ in self._layouts())
        raise MissingDataFileError(
            f"sample name {name!r} not found: looked for {looked}; check the name and "
            "--data-root, or write an `image_path label_path` line for it"
        )


def _is_listed_path(root: Path, token: str) -> bool:
    """Whether a one-entry list line is an image path (not a sample name)."""
    if Path(token).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        return _resolve_listed(root, token).is_file()
    except OSError:  # e.g. a name too long for the file system
        return False


def read_list_file(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    resolver: NameResolver | None = None,
    check_exists: bool = True,
) -> list[Sample]:
    """Read a list file of samples.

    Each non-empty line is either ``image_path label_path`` (the authors' format; paths relative
    to ``root``, a leading ``/`` also meaning relative to ``root`` as in the DeepLab lists) or a
    single entry. Lines containing a tab are split on tabs, so paths with spaces work; otherwise
    on whitespace. Lines starting with ``#`` are comments.

    A single entry is handed to ``resolver`` when one is given (the named data sets). Without
    one, an entry that ends in an allowed image extension or names an existing file under
    ``root`` is an image path without a label (kept as a path, label ``None``); any other entry
    is a sample name (CamVid, VOC ``ImageSets`` style) resolved by :class:`LayoutResolver` with
    the list file's stem as the split: ``images/<stem>/<name>.<ext>`` then
    ``images/<name>.<ext>``, labels in ``labels/`` or ``annotations/`` beside them.

    Args:
        path: The list file.
        root: Directory the listed paths are relative to.
        resolver: Turns a sample name into (image, label) paths; default: the conventional
            layouts above.
        check_exists: Check that every listed file exists (one stat per file).

    Returns:
        The samples in file order. Names are the image file stems (for path lines) or the
        listed names.

    Raises:
        MissingDataFileError: The list file or a listed file does not exist, or a sample name
            resolves to no file.
        DataError: A malformed line, or a sample name matching several files (the message gives
            the file and line number).
    """
    lp = Path(path)
    root_p = Path(root)
    # Constructing a LayoutResolver reads nothing: folders are listed when a name needs them.
    resolve = resolver or LayoutResolver(root_p, lp.stem)
    samples: list[Sample] = []
    seen: dict[str, tuple[int, Path]] = {}
    for line_no, raw in enumerate(_list_text(lp).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = [t for t in line.split("\t") if t] if "\t" in line else line.split()
        where = f"{lp}:{line_no}"
        image, label, name, named = _parse_line(tokens, line, where, root_p, resolver, resolve)
        if check_exists:
            for kind, fp in (("image", image), ("label", label)):
                if fp is not None and not fp.is_file():
                    raise MissingDataFileError(
                        f"{where}: {kind} file {fp} does not exist; fix the line or the data "
                        f"root ({root_p})"
                    )
        if name in seen:
            first_line, first_image = seen[name]
            if named or first_image == image:
                raise DataError(
                    f"{where}: sample {name!r} is listed again (first on line {first_line}); "
                    "remove the duplicate line"
                )
            # Same file name in another folder: names become prediction file names, so use the
            # path (without extension) to keep them unique.
            name = Path(tokens[0].strip().lstrip("/\\")).with_suffix("").as_posix()
        seen[name] = (line_no, image)
        samples.append(Sample(image=image, label=label, name=name))
    if not samples:
        raise DataError(f"list file {lp} lists no samples; is it the right file?")
    return samples


def _list_text(lp: Path) -> str:
    """The text of list file ``lp``."""
    try:
        return lp.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except FileNotFoundError:
        raise MissingDataFileError(
            f"list file {lp} does not exist; check the path or the data root"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"list file {lp} is not UTF-8 text; is it really a list file?") from None


def _parse_line(
    tokens: list[str],
    line: str,
    where: str,
    root: Path,
    resolver: NameResolver | None,
    resolve: NameResolver,
) -> tuple[Path, Path | None, str, bool]:
    """One list line -> (image, label or None, sample name, whether the line was a name)."""
    if len(tokens) == 2:
        image, label = (_resolve_listed(root, t.strip()) for t in tokens)
        return image, label, Path(tokens[0].strip()).stem, False
    if len(tokens) == 1 and resolver is None and _is_listed_path(root, tokens[0]):
        return _resolve_listed(root, tokens[0]), None, Path(tokens[0]).stem, False
    if len(tokens) == 1:
        try:
            image, label = resolve(tokens[0])
        except DataError as e:
            # Keep the class and its other arguments (MissingDataFileError is also a
            # FileNotFoundError); only the message gains the list file and line.
            e.args = (f"{where}: {e}", *e.args[1:])
            raise
        return image, label, tokens[0], True
    raise DataError(
        f"{where}: expected `image_path label_path` or a sample name, got "
        f"{len(tokens)} entries in {line!r}; paths containing spaces must be separated "
        "by a tab"
    )


def list_file_samples(
    root: str | os.PathLike[str],
    list_file: str | os.PathLike[str],
    *,
    resolver: Callable[[str], tuple[Path, Path | None]] | None = None,
) -> list[Sample]:
    """Samples from a list file of ``image_path label_path`` lines (paths relative to ``root``)
    or of sample names, one a line.

    A relative ``list_file`` that does not exist from the working directory is also looked for
    under ``root``. Without ``resolver``, names are found under ``root`` in the conventional
    layouts (``images/<list stem>/<name>.<ext>``, then ``images/<name>.<ext>``, labels in
    ``labels/`` or ``annotations/``; see :class:`LayoutResolver`). See
    :func:`read_list_file` for the format.
    """
    lf = Path(list_file)
    if not lf.is_absolute() and not lf.exists() and (Path(root) / lf).exists():
        lf = Path(root) / lf
    return read_list_file(lf, root, resolver=resolver)


def image_files(folder: Path, *, recursive: bool = False) -> dict[str, list[Path]]:
    """Files with an allowed image extension, keyed by relative path without extension.

    The one folder listing of sample discovery (:class:`LayoutResolver`, :func:`folder_samples`).
    A key holds several paths when files differ only in extension (``a.jpg`` and ``a.png``);
    each caller decides whether that is an error. Hidden files count; symlinked sub-folders are
    not entered (as :meth:`pathlib.Path.glob`). A missing folder lists as empty.

    Args:
        folder: The folder to list.
        recursive: Also list sub-folders (keys then contain ``/``).
    """
    found: dict[str, list[Path]] = {}

    def scan(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # missing folder, or not a folder: nothing in it
            return
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                scan(Path(entry.path), f"{prefix}{entry.name}/")
                continue
            suffix = os.path.splitext(entry.name)[1]
            if suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                key = prefix + entry.name[: -len(suffix)]
                found.setdefault(key, []).append(Path(entry.path))

    scan(folder, "")
    return found


def _unique_image_files(folder: Path, recursive: bool) -> dict[str, Path]:
    """:func:`image_files`, refusing two files that share a name (they would pair ambiguously)."""
    found = image_files(folder, recursive=recursive)
    for key, paths in found.items():
        if len(paths) > 1:
            raise DataError(
                f"{folder}: two files share the name {key!r} ({paths[0].name} and "
                f"{paths[1].name}); keep one of them so images and labels pair unambiguously"
            )
    return {key: paths[0] for key, paths in found.items()}


def names_preview(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def folder_samples(
    image_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    *,
    label_suffix: str = "",
    recursive: bool = False,
) -> list[Sample]:
    """Pair images and labels in two folders by file name without extension.

    Args:
        image_dir: Folder of images (allowed extensions only; other files are skipped).
        label_dir: Folder of labels.
        label_suffix: Extra text at the end of label stems (``a.jpg`` pairs with
            ``a_mask.png`` for ``label_suffix="_mask"``).
        recursive: Also look in sub-folders (pairing by relative path).

    Returns:
        Samples sorted by name.

    Raises:
        MissingDataFileError: A folder does not exist.
        DataError: No images, or images without a label (listed by name). Labels without an
            image only give a warning (they are unused).
    """
    img_dir, lbl_dir = Path(image_dir), Path(label_dir)
    for what, d in (("image", img_dir), ("label", lbl_dir)):
        if not d.is_dir():
            raise MissingDataFileError(f"{what} folder {d} does not exist; check the path")
    images = _unique_image_files(img_dir, recursive)
    if not images:
        raise DataError(
            f"{img_dir}: no images found (allowed extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); check the path"
        )
    labels = _unique_image_files(lbl_dir, recursive)
    if label_suffix:
        labels = {
            k[: -len(label_suffix)]: v for k, v in labels.items() if k.endswith(label_suffix)
        }
    missing = sorted(k for k in images if k not in labels)
    if missing:
        raise DataError(
            f"{len(missing)} of {len(images)} images in {img_dir} have no label in {lbl_dir} "
            f"(expected <name>{label_suffix}.png, any image extension): "
            f"{names_preview(missing)}; add the labels or remove those images (labels are "
            "paired by file name without extension)"
        )
    extra = sorted(k for k in labels if k not in images)
    if extra:
        warnings.warn(
            f"{len(extra)} labels in {lbl_dir} have no image in {img_dir} and are unused: "
            f"{names_preview(extra)}",
            stacklevel=2,
        )
    return [Sample(image=images[k], label=labels[k], name=k) for k in sorted(images)]
