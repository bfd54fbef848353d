"""The flags of ``pspnet train``: one row per flag, naming the config key it sets.

The table is the only declaration of these flags: :mod:`pspnet.cli` adds them to its parser
from it, and :func:`pspnet.engine.run_config.build_config` turns their values into config keys
with :func:`flags_tree`. ``--config`` (a YAML file), ``--set KEY=VALUE`` (any key) and
``-q`` (no progress bar) are not config fields and are declared by the CLI itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "TRAIN_FLAGS", "flags_tree", "flag_values"]


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
    """

    flag: str
    key: str
    help: str
    type: type = str
    metavar: str | None = None
    const: Any = None

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


TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--data-root", "data.root", "root the list files' paths are relative to"),
    Flag("--train-list", "data.train_list", "training list: 'image label' per line"),
    Flag("--val-list", "data.val_list", "validation list (validation during training)"),
    Flag("--num-classes", "model.num_classes", "number of classes in the labels", int),
    Flag("--class-names", "data.class_names",
         "class names file (one a line, or CamVid classes.txt)"),
    Flag("--arch", "model.arch", "architecture (default pspnet_r18 on CPU)"),
    Flag("--crop-size", "data.crop_size", "training crop (default: from the data, <= 320)", int),
    Flag("--batch-size", "train.batch_size", "images per optimizer step (default 8)", int),
    Flag("--epochs", "train.epochs", "passes over the training list (--time-budget overrides it)",
         int),
    Flag("--time-budget", "train.time_budget",
         "minutes; the poly schedule is planned to end when they are spent", float, "MIN"),
    Flag("--work-dir", "train.work_dir", "output folder (checkpoints, final/, best/, log.jsonl)"),
    Flag("--resume", "train.resume", "continue a run (auto: newest good)", str, "auto|PATH"),
    Flag("--skip-bad", "data.skip_bad",
         "leave out up to N bad samples (default N: 10), listed in WORK_DIR/skipped.json; "
         "without it the first bad file stops the run", int, "N", const=10),
)  # fmt: skip


def flags_tree(values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config mapping of the flags given (``None`` values are left out).

    Args:
        values: Flag values by :attr:`Flag.dest` (``{"data_root": "D", "batch_size": 4}``).

    Raises:
        TypeError: A name that is no flag of :data:`TRAIN_FLAGS`.
    """
    by_dest = {f.dest: f for f in TRAIN_FLAGS}
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
