"""How ``predict`` and ``evaluate`` run the model, from their flags, with no flag ignored.

A flag that would have no effect (``--crop-size`` without ``--mode slide``, ``--flip`` under a
``--protocol`` that defines its own views, ``--alpha`` with ``--no-overlay``) is an error that
names the flag, its value and the fix, so that what runs is what was asked for and what
``metrics.json`` records.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["window_flags_given", "adhoc_options", "protocol_options", "check_overlay_flags"]


def window_flags_given(args: argparse.Namespace) -> list[str]:
    """The window flags (``--mode``, ``--scales``, ``--flip``) given on the command line."""
    given = []
    if args.mode is not None:
        given.append(f"--mode {args.mode}")
    if args.scales is not None:
        given.append("--scales " + " ".join(f"{s:g}" for s in args.scales))
    if args.flip:
        given.append("--flip")
    return given


def _crop(args: argparse.Namespace) -> tuple[int, int] | None:
    return (args.crop_size, args.crop_size) if args.crop_size else None


def adhoc_options(args: argparse.Namespace, precision: str,
                  fixed: tuple[int, int] | None = None) -> Any:
    """:class:`~pspnet.inference.InferenceOptions` from ``--mode/--crop-size/--scales/--flip``.

    Args:
        args: The parsed flags.
        precision: The autocast precision left to use (after ``--fast``).
        fixed: The only input size of a fixed-size export: without ``--mode`` and
            ``--crop-size`` it becomes a sliding window of that size (a note says so).

    Raises:
        ValueError: ``--crop-size`` without the sliding window, or ``--mode slide`` without a
            crop size.
    """
    import sys

    from pspnet.inference import InferenceOptions

    mode, crop = args.mode or "whole", _crop(args)
    if fixed and args.mode is None and crop is None:
        mode, crop = "slide", (int(fixed[0]), int(fixed[1]))
        print(f"note: {args.weights} takes {fixed[0]}x{fixed[1]} inputs only; predicting with a "
              "sliding window of that size", file=sys.stderr)
    if mode == "whole" and crop is not None:
        raise ValueError(f"--crop-size {args.crop_size} sets the sliding window, which whole-image "
                         "prediction does not use; add --mode slide, or leave --crop-size out")
    if mode == "slide" and crop is None:
        raise ValueError("--mode slide needs --crop-size N (e.g. 473)")
    return InferenceOptions(mode=mode, crop_size=crop, scales=tuple(args.scales or (1.0,)),
                            flip=args.flip, precision=precision, batch_size=args.tile_batch)


def protocol_options(args: argparse.Namespace, precision: str) -> Any:
    """The ``--protocol`` preset with its sizes (``--dataset``, then ``--crop-size`` /
    ``--base-size``), run with ``precision`` and ``--tile-batch``; None without ``--protocol``.

    The preset defines the prediction: ``--mode``, ``--scales`` and ``--flip`` would be
    ignored, so they are refused, as are sizes the preset does not use.

    Raises:
        ValueError: A flag the preset (or the lack of one) would ignore, or missing sizes.
    """
    if not args.protocol:
        if args.dataset:
            raise ValueError("--dataset only selects the published sizes of a --protocol; "
                             "give both")
        if args.base_size:
            raise ValueError(f"--base-size {args.base_size} applies to --protocol semseg and "
                             "semseg-ms only; add one, or leave --base-size out")
        return None
    from pspnet.inference import get_protocol

    preset = get_protocol(args.protocol)  # unknown names: one line listing the known ones
    given = window_flags_given(args)
    if given:
        raise ValueError(
            f"--protocol {args.protocol} defines the prediction itself (mode {preset.mode}, "
            f"scales {' '.join(f'{s:g}' for s in preset.scales)}, flip "
            f"{'on' if preset.flip else 'off'}); leave out {' '.join(given)}, or drop "
            "--protocol to choose them yourself"
        )
    if args.crop_size and preset.mode != "slide":
        raise ValueError(f"--crop-size {args.crop_size}: --protocol {args.protocol} runs whole "
                         "images, without a window; leave --crop-size out")
    if args.base_size and not args.protocol.startswith("semseg"):
        raise ValueError(f"--base-size {args.base_size} applies to --protocol semseg and "
                         f"semseg-ms only, not {args.protocol}; leave it out")
    overrides: dict[str, Any] = {}
    if args.crop_size:
        overrides["crop_size"] = _crop(args)
    if args.base_size:
        overrides["base_size"] = args.base_size
    proto = get_protocol(args.protocol, dataset=args.dataset, **overrides)
    if proto.mode == "slide" and proto.crop_size is None:
        raise ValueError(
            f"--protocol {args.protocol} slides a window and needs its sizes: --dataset "
            "ade20k|voc2012|cityscapes for the published ones, or --crop-size N (and, for "
            "semseg, --base-size N: the long side at scale 1)"
        )
    return proto.replace(precision=precision, batch_size=args.tile_batch)


def check_overlay_flags(args: argparse.Namespace) -> float:
    """``--alpha`` (default 0.5), refused with ``--no-overlay`` (nothing to blend) or outside
    0..1."""
    if args.alpha is None:
        return 0.5
    if args.no_overlay:
        raise ValueError(f"--alpha {args.alpha:g} sets the overlay's opacity, and --no-overlay "
                         "writes no overlay; leave one of them out")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha:g}: the overlay opacity must be between 0 and 1 "
                         "(e.g. 0.5)")
    return float(args.alpha)
