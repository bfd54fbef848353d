"""Weight commands: ``list-models``, ``zoo``, ``convert``, ``info``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` for model options (values parsed as YAML; ``model.`` optional)."""
    from pspnet.config import parse_override

    return {k.removeprefix("model."): v for k, v in map(parse_override, items)}


def cmd_list_models(args: argparse.Namespace) -> int:
    from pspnet.models.registry import MODELS

    for name, spec in MODELS.items():
        print(f"{name:<12} {spec.description}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from pspnet import hub

    if args.allow_unverified and not args.download:
        raise ValueError("--allow-unverified applies to --download NAME only; add it, or leave "
                         "--allow-unverified out")
    if args.verbose and args.download:
        raise ValueError("--verbose shows the list's details; --download prints only the "
                         "downloaded path; leave one of them out")
    if args.download:
        path = hub.fetch(args.download, allow_unverified=args.allow_unverified)
        print(path)
        return 0
    print(f"{'name':<30} {'arch':<10} {'data':<10} {'mIoU':>6}  source")
    for e in hub.ZOO.values():
        miou = f"{e.miou:.2f}" if e.miou is not None else "-"
        print(f"{e.name:<30} {e.arch:<10} {e.dataset:<10} {miou:>6}  {e.source}")
        if args.verbose:
            print(f"    protocol: {e.protocol}")
            for u, h in zip(e.urls, e.sha256):
                print(f"    {u}  sha256:{h or 'unpublished'}")
            if e.notes:
                print(f"    note: {e.notes}")
    print(f"A name works wherever weights are expected (--weights NAME, info NAME, train "
          f"--init-weights NAME); it is downloaded to {hub.cache_dir()}/NAME on first use.")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import convert, load_model

    from pspnet.cli.common import check_output_dir

    check_output_dir(args.dst, "dst")
    out = convert(
        args.src,
        args.dst,
        arch=args.arch,
        num_classes=args.num_classes,
        classes_file=args.classes_file,
        **_parse_overrides(args.set),
    )
    model = load_model(out)
    print(f"wrote {out} ({model.config.arch}, {model.config.num_classes} classes, "
          f"source {model.meta.source})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.checkpoint.exported import is_exported
    from pspnet.config import to_dict

    model = load_model(args.path, args.arch, args.num_classes, **_parse_overrides(args.set))
    if is_exported(model):  # an ONNX / TorchScript export: its own metadata document
        print(json.dumps(model.metadata, indent=2))
        return 0
    n = sum(p.numel() for p in model.parameters())
    doc = {"parameters": n, **to_dict(model.meta)}
    print(json.dumps(doc, indent=2))
    return 0
