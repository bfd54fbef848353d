"""Deployment commands: ``export``, ``serve``."""

from __future__ import annotations

import argparse

from pspnet.cli.common import _resolve_device, check_output_file, check_port


def cmd_export(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.export import export_onnx, export_torchscript, is_exported

    if args.dynamic and args.format == "torchscript":
        raise ValueError("--dynamic is available for --format onnx and openvino only; "
                         "TorchScript exports a fixed size and refuses others")
    check_output_file(args.out, "--out")  # before the export, which takes a while
    model = load_model(args.weights)
    if is_exported(model):
        raise ValueError(f"{args.weights} is already an exported model; export the PyTorch "
                         "weights it was made from")
    if args.int8 or args.calibration_list:
        report = _export_int8(model, args)
    elif args.format == "openvino":
        from pspnet.export.openvino import export_openvino

        report = export_openvino(model, args.out, height=args.height, width=args.width,
                                 dynamic=args.dynamic, output=args.output,
                                 check=not args.no_check)
    elif args.format == "onnx":
        report = export_onnx(model, args.out, height=args.height, width=args.width,
                             dynamic=args.dynamic, output=args.output, check=not args.no_check)
    else:
        report = export_torchscript(model, args.out, height=args.height, width=args.width,
                                    output=args.output, check=not args.no_check)
    print(report.format())
    return 0


def _export_int8(model: object, args: argparse.Namespace) -> object:
    """``--int8 --calibration-list FILE``: an ONNX Runtime or OpenVINO (NNCF) int8 export."""
    from pspnet.checkpoint.calibration import CALIBRATION_FIX
    from pspnet.export.int8 import export_onnx_int8

    if not args.int8:
        raise ValueError("--calibration-list is for --int8 exports; add --int8 or leave it out")
    if args.format == "torchscript":
        raise ValueError("--int8 exports ONNX (ONNX Runtime quantization) or OpenVINO IR (NNCF), "
                         "not torchscript; use --format onnx or --format openvino")
    if not args.calibration_list:
        raise ValueError(f"--int8 needs --calibration-list FILE; {CALIBRATION_FIX}")
    if args.format == "openvino":
        from pspnet.export.openvino import export_openvino

        return export_openvino(model, args.out,  # type: ignore[arg-type]
                               height=args.height, width=args.width, dynamic=args.dynamic,
                               output=args.output, calibration=args.calibration_list,
                               check=not args.no_check)
    return export_onnx_int8(model, args.out,  # type: ignore[arg-type]
                            calibration=args.calibration_list, height=args.height,
                            width=args.width, dynamic=args.dynamic, output=args.output,
                            check=not args.no_check)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pspnet.serve import serve_from_args
    except ImportError as e:
        raise ValueError(
            f"serving needs the serve extra: pip install 'pspnet[serve]' ({e})") from None
    check_port(args.port)
    return serve_from_args(args.weights, host=args.host, port=args.port,
                           max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                           timeout_s=args.timeout_s, max_concurrency=args.max_concurrency,
                           device=_resolve_device(args.device))
