"""Data commands: ``data check``; and how the verbs that read labels pick their samples and
read their class file (``--images/--labels`` or a list, ``--classes-file``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pspnet.cli.common import check_output_file

def labelled_samples(args: argparse.Namespace, list_dest: str) -> list[Any] | None:
    """The samples of ``--images DIR --labels DIR`` (paired by file stem) or of the list file
    in ``args.<list_dest>`` (relative to ``--data-root``); None when neither is given.

    Raises:
        ValueError: Folders and a list file together, or one folder without the other.
    """
    from pspnet.data.samples import folder_samples, list_file_samples

    list_file = getattr(args, list_dest)
    flag = "--" + list_dest.replace("_", "-")
    if args.images is None and args.labels is None:
        return list_file_samples(args.data_root or ".", list_file) if list_file else None
    if list_file:
        raise ValueError(f"give {flag} FILE or --images DIR --labels DIR, not both")
    if not (args.images and args.labels):
        given, other = ("--images", "--labels") if args.images else ("--labels", "--images")
        raise ValueError(f"{given} needs {other}: give the image and the label folder")
    return folder_samples(args.images, args.labels)


def class_file(args: argparse.Namespace) -> Any:
    """The :class:`~pspnet.data.classes.ClassFile` of ``--classes-file``, or None."""
    if args.classes_file is None:
        return None
    from pspnet.data.classes import read_class_file

    return read_class_file(args.classes_file)


def label_map_of(args: argparse.Namespace, classes: Any, default: str | None = None) -> Any:
    """The label map of ``--label-map`` (else ``default``), behind the colours of the class file
    when it has some (:func:`pspnet.data.label_maps.run_label_map`)."""
    from pspnet.data.label_maps import run_label_map

    return run_label_map(
        args.label_map or default, classes.colours if classes is not None else None,
        ignore_index=args.ignore_index, source=f"class file {args.classes_file}",
    )  # fmt: skip


def cmd_data_check(args: argparse.Namespace) -> int:
    from pspnet.config import ConfigError
    from pspnet.data.check import check_dataset
    from pspnet.data.layouts import get_dataset_spec

    check_output_file(args.json, "--json")
    _check_sources(args)
    spec = get_dataset_spec(args.dataset) if args.dataset else None
    samples = labelled_samples(args, "list")
    if samples is None and spec is not None:
        samples = spec.find_samples(args.data_root, args.split or "train")
    elif samples is None:
        raise ConfigError("give --list FILE, or --images DIR --labels DIR, or --dataset NAME")
    classes = class_file(args)
    num_classes = args.num_classes or (spec.num_classes if spec else None)
    num_classes = num_classes or (len(classes.names) if classes is not None else None)
    if num_classes is None:
        raise ConfigError("--num-classes is required for a list file or folders (or give a "
                          "--classes-file)")
    label_map = label_map_of(args, classes, spec.label_map if spec else None)
    names = classes.names if classes is not None else (spec.class_names if spec else None)
    report = check_dataset(samples, num_classes, args.ignore_index, label_map,
                           args.max_pixels, progress=not args.quiet, class_names=names)
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


def _check_sources(args: argparse.Namespace) -> None:
    """Refuse ``--split`` where no ``--dataset`` layout is read (it would be ignored).

    (A list file with folders, or one folder alone, is refused by :func:`labelled_samples`.)
    """
    folders = args.images or args.labels
    if args.split and (args.list or folders or not args.dataset):
        source = (f"--list {args.list}" if args.list else "--images/--labels" if folders
                  else "nowhere yet (add --dataset NAME)")
        raise ValueError(f"--split {args.split} chooses a split of a --dataset layout; the "
                         f"samples here come from {source}; leave --split out")
