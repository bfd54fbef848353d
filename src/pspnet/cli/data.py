"""Data commands: ``data check``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pspnet.cli.common import _read_names


def cmd_data_check(args: argparse.Namespace) -> int:
    from pspnet.data.check import check_dataset
    from pspnet.data.label_maps import make_label_map
    from pspnet.data.layouts import get_dataset_spec
    from pspnet.data.samples import folder_samples, list_file_samples

    spec = get_dataset_spec(args.dataset) if args.dataset else None
    if args.list:
        samples = list_file_samples(args.data_root, args.list)
    elif args.images and args.labels:
        samples = folder_samples(args.images, args.labels)
    elif spec is not None:
        samples = spec.find_samples(args.data_root, args.split)
    else:
        from pspnet.config import ConfigError

        raise ConfigError("give --list FILE, or --images DIR --labels DIR, or --dataset NAME")
    num_classes = args.num_classes or (spec.num_classes if spec else None)
    if num_classes is None:
        from pspnet.config import ConfigError

        raise ConfigError("--num-classes is required for a list file or folders")
    label_map = make_label_map(args.label_map or (spec.label_map if spec else None))
    report = check_dataset(samples, num_classes, args.ignore_index, label_map,
                           args.max_pixels, progress=not args.quiet,
                           class_names=_read_names(args.classes_file)
                           or (spec.class_names if spec else None))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1
