"""The flags of ``pspnet train``: one row per flag, naming the config key it sets.

The table is the only declaration of these flags: :mod:`pspnet.cli` adds them to its parser
from it, and :func:`pspnet.engine.run_config.build_config` turns their values into config keys
with :func:`flags_tree`. ``--config`` (a YAML file), ``--set KEY=VALUE`` (any key) and
``-q`` (no progress bar) are not config fields and are declared by the CLI itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DeprecatedAlias", "Flag", "TRAIN_FLAGS", "add_deprecated_alias", "flags_tree", "flag_values",
]  # fmt: skip


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag, hidden from ``--help``: it sets the new flag's value and
    prints a one-line notice naming the new spelling, so old scripts keep working.

    Args:
        replacement: The flag to use instead (named in the notice).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, replacement: str,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(f"note: {option_string} is deprecated, use {self.replacement} (same meaning)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser, alias: str, replacement: str, dest: str, **kwargs: Any
) -> None:
    """Add ``alias`` to ``parser`` as a hidden :class:`DeprecatedAlias` of ``replacement``
    (both store into ``dest``; ``kwargs`` as for ``add_argument``, e.g. ``type``)."""
    parser.add_argument(alias, dest=dest, action=DeprecatedAlias, replacement=replacement,
                        help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


@dataclass(frozen=True)
class Flag:
    """One command-line flag that sets one config key.

    Attributes:
        flag: The option, e.g. ``--data-root``.
        key: The dotted config key it sets, e.g. ``data.root``.
        help: The ``--help`` text.
        type: The argparse type of the value.
        metavar: The argparse metavar, or None.
        const: A value for the bare flag (``--skip-bad`` alone means 10), or None.
        aliases: Old spellings still accepted, hidden from ``--help`` and announced as
            deprecated (:class:`DeprecatedAlias`); by keyword they name the flag too.
    """

    flag: str
    key: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    const: Any = None
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The argparse destination (and keyword of :func:`build_config`): ``data_root``."""
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this flag to ``parser`` (default None: the config file or default decides)."""
        extra: dict[str, Any] = {"metavar": self.metavar} if self.metavar else {}
        if self.const is not None:
            extra.update(nargs="?", const=self.const)
        parser.add_argument(self.flag, type=self.type, help=self.help, **extra)
        for alias in self.aliases:
            add_deprecated_alias(parser, alias, self.flag, self.dest, type=self.type, **extra)


def _yes_no(text: str) -> bool:
    """The value of a yes/no flag given a value (``--overwrite no``); the bare flag is yes."""
    value = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return value[text.lower()]


TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--data-root", "data.root", "root the list files' paths are relative to"),
    Flag("--train-list", "data.train_list", "training list: 'image label' per line"),
    Flag("--val-list", "data.val_list", "validation list (validation during training)"),
    Flag("--num-classes", "model.num_classes",
         "number of classes in the labels (default: the names in --classes-file)", int),
    Flag("--classes-file", "data.class_names",
         "class names, one a line, or `index<TAB>name<TAB>R G B` lines (then colour-coded "
         "RGB labels are mapped to those classes)", aliases=("--class-names",)),
    Flag("--arch", "model.arch", "architecture (default pspnet_r18 on CPU)"),
    Flag("--crop-size", "data.crop_size", "training crop (default: from the data, <= 320)", int),
    Flag("--batch-size", "train.batch_size",
         "images per optimizer step (default 8; 4 from scratch on a CPU without --config)", int),
    Flag("--epochs", "train.epochs", "passes over the training list (--time-budget overrides it)",
         int),
    Flag("--time-budget", "train.time_budget",
         "minutes; the poly schedule is planned to end when they are spent", float, "MIN"),
    Flag("--work-dir", "train.work_dir", "output folder (checkpoints, final/, best/, log.jsonl)"),
    Flag("--resume", "train.resume", "continue a run (auto: newest good)", str, "auto|PATH"),
    Flag("--overwrite", "train.overwrite",
         "start again in a --work-dir that holds a run (deletes its checkpoints, final/, best/)",
         _yes_no, "yes|no", const=True),
    Flag("--skip-bad", "data.skip_bad",
         "leave out up to N bad samples (default N: 10), listed in WORK_DIR/skipped.json; "
         "without it the first bad file stops the run", int, "N", const=10),
    Flag("--images", "data.images_dir",
         "image folder, paired with --labels by file stem (instead of list files)", str, "DIR"),
    Flag("--labels", "data.labels_dir", "label folder of --images", str, "DIR"),
    Flag("--val-fraction", "data.val_fraction",
         "hold out this share of the --images pairs for validation (seeded; written to "
         "WORK_DIR/split.json and reused)", float, "F"),
    Flag("--init-weights", "train.init_weights",
         "fine-tune: start from these weights (a path load_model reads, or a zoo name); tensors "
         "whose name and shape match are loaded, the rest (the classifiers, for another class "
         "count) start fresh; the architecture follows the file unless --arch/--set say "
         "otherwise. Not with --resume", str, "PATH|NAME"),
    Flag("--backbone-weights", "train.backbone_weights",
         "ImageNet ResNet weights for the backbone: a file or a zoo name (resnet18_imagenet)",
         str, "PATH|NAME"),
)  # fmt: skip


def flags_tree(values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config mapping of the flags given (``None`` values are left out).

    Args:
        values: Flag values by :attr:`Flag.dest` (``{"data_root": "D", "batch_size": 4}``).

    Raises:
        TypeError: A name that is no flag of :data:`TRAIN_FLAGS`.
    """
    by_dest = {f.dest: f for f in TRAIN_FLAGS}
    for f in TRAIN_FLAGS:  # old spellings by keyword: build_config(class_names=...)
        by_dest.update({a.removeprefix("--").replace("-", "_"): f for a in f.aliases})
    tree: dict[str, Any] = {}
    for name, value in values.items():
        if name not in by_dest:
            raise TypeError(f"unknown training flag {name!r}; known: {', '.join(by_dest)}")
        if value is None:
            continue
        if isinstance(value, os.PathLike):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        section, key = by_dest[name].key.split(".")
        tree.setdefault(section, {})[key] = value
    return tree


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the :data:`TRAIN_FLAGS` in a parsed namespace, by :attr:`Flag.dest`."""
    return {f.dest: getattr(args, f.dest) for f in TRAIN_FLAGS}
