"""Deployment commands: ``export``, ``serve``."""

from __future__ import annotations

import argparse

from pspnet.cli.common import _resolve_device


def cmd_export(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.export import export_onnx, export_torchscript, is_exported

    model = load_model(args.weights)
    if is_exported(model):
        raise ValueError(f"{args.weights} is already an exported model; export the PyTorch "
                         "weights it was made from")
    if args.format == "onnx":
        report = export_onnx(model, args.out, height=args.height, width=args.width,
                             dynamic=args.dynamic, output=args.output, check=not args.no_check)
    else:
        if args.dynamic:
            raise ValueError("--dynamic is available for --format onnx only; TorchScript exports "
                             "a fixed size and refuses others")
        report = export_torchscript(model, args.out, height=args.height, width=args.width,
                                    output=args.output, check=not args.no_check)
    print(report.format())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pspnet.serve import serve_from_args
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra: pip install 'pspnet[serve]' ({e})") from None
    return serve_from_args(args.weights, host=args.host, port=args.port,
                           max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                           timeout_s=args.timeout_s, max_concurrency=args.max_concurrency,
                           device=_resolve_device(args.device))
