"""Running models: ``predict``, ``evaluate``, ``train``, ``demo``, ``benchmark``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pspnet.cli.common import _read_names, _resolve_device


def _fast_path(model: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """``--fast`` / ``--compile``: the optimised model and the autocast precision left to use.

    The optimised model (:func:`pspnet.models.fuse.optimize_for_inference`: BatchNorm folded
    into the convolutions; channels-last bf16/fp16 weights with ``--precision bf16/fp16``;
    ``torch.compile`` with frozen weights) casts its inputs itself, so inference runs it with
    ``precision="fp32"``.
    """
    if not (args.fast or args.compile):
        return model, args.precision
    from pspnet.checkpoint.exported import is_exported, optimisation_refused
    from pspnet.models.fuse import optimize_for_inference

    if is_exported(model):
        flags = [f for f, on in (("--fast", args.fast), ("--compile", args.compile)) if on]
        raise ValueError(optimisation_refused(args.weights, flags, "flag"))
    fast = optimize_for_inference(model, precision=args.precision, compile=args.compile)
    return fast, "fp32"


def _report_compile(model: Any) -> None:
    seconds = getattr(model, "compile_seconds", 0.0)
    if seconds:
        print(f"torch.compile: {seconds:.1f} s spent compiling (once per input shape)",
              file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.config import Preprocessing
    from pspnet.engine.predict import OutputOptions, expand_inputs, predict_files
    from pspnet.inference import InferenceOptions

    inputs = expand_inputs(args.inputs)
    model = load_model(args.weights, device=_resolve_device(args.device))
    model, precision = _fast_path(model, args)
    meta = getattr(model, "meta", None)
    crop = (args.crop_size, args.crop_size) if args.crop_size else None
    fixed = getattr(model, "input_size", None)  # a fixed-size export runs only at that size
    if fixed and crop is None:
        crop, args.mode = tuple(fixed), "slide"
        print(f"note: {args.weights} takes {fixed[0]}x{fixed[1]} inputs only; predicting with a "
              "sliding window of that size", file=sys.stderr)
    if args.mode == "slide" and crop is None:
        raise ValueError("--mode slide needs --crop-size N (e.g. 473)")
    opts = InferenceOptions(mode=args.mode, crop_size=crop, scales=tuple(args.scales),
                            flip=args.flip, precision=precision, batch_size=args.tile_batch)
    summary = predict_files(
        model, inputs, args.out,
        preprocess=meta.preprocess if meta else Preprocessing(),
        opts=opts,
        output=OutputOptions(alpha=args.alpha, overlays=not args.no_overlay),
        class_names=meta.classes if meta else None,
        palette=meta.palette if meta else None,
        num_classes=meta.model.num_classes if meta else None,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    _report_compile(model)
    print(f"wrote {len(summary.written)} result(s) to {args.out}"
          + (f"; {len(summary.failed)} input(s) skipped (see summary.json)" if summary.failed else ""))
    return 0 if not summary.failed else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pspnet.engine.distributed import cleanup, init_distributed

    # Under torchrun each process scores a disjoint shard; the confusion matrices are summed.
    info = init_distributed(_resolve_device(args.device))
    try:
        return _evaluate(args, info.rank, str(info.device))
    finally:
        cleanup(info)


def _evaluate(args: argparse.Namespace, rank: int, device: str) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.data.datasets import SegmentationDataset, list_file_samples, make_label_map
    from pspnet.engine.evaluate import evaluate_model, write_metrics
    from pspnet.engine.metrics import save_confusion_png
    from pspnet.inference import InferenceOptions

    model = load_model(args.weights, device=device)
    model, precision = _fast_path(model, args)
    meta = getattr(model, "meta", None)
    num_classes = args.num_classes or (meta.model.num_classes if meta else None)
    if num_classes is None:
        raise ValueError("--num-classes is needed for an exported model without metadata")
    if meta is not None and args.num_classes and args.num_classes != meta.model.num_classes:
        raise ValueError(
            f"--num-classes is {args.num_classes} but {args.weights} predicts "
            f"{meta.model.num_classes} classes; leave --num-classes out to use the weights' count"
        )
    if args.dataset and not args.protocol:
        raise ValueError("--dataset only selects the published sizes of a --protocol; give both")
    names = _read_names(args.class_names) or (meta.classes if meta else None)
    samples = list_file_samples(args.data_root, args.val_list)
    data = SegmentationDataset(samples, num_classes, ignore_index=args.ignore_index,
                               label_map=make_label_map(args.label_map))
    out = Path(args.out)
    crop = (args.crop_size, args.crop_size) if args.crop_size else None
    if args.mode == "slide" and crop is None and not args.protocol:
        raise ValueError("--mode slide needs --crop-size N (e.g. 473)")
    protocol = _protocol(args, crop)
    if protocol is not None:  # the preset defines the prediction; the flags only how to run it
        options = protocol.replace(precision=precision, batch_size=args.tile_batch)
    else:
        options = InferenceOptions(mode=args.mode, scales=tuple(args.scales), flip=args.flip,
                                   crop_size=crop, precision=precision,
                                   batch_size=args.tile_batch)
    metrics = evaluate_model(
        model, data, options, num_classes=num_classes, ignore_index=args.ignore_index,
        save_predictions_dir=out / "predictions" if args.save_predictions else None,
        class_names=names, palette=meta.palette if meta else None,
        preprocess=meta.preprocess if meta else None, progress=not args.quiet,
    )
    if rank == 0:
        setup = {"weights": str(args.weights), "protocol": args.protocol,
                 "protocol_settings": protocol.predict_kwargs() if protocol else None,
                 "mode": args.mode,
                 "scales": list(args.scales), "flip": args.flip, "crop_size": args.crop_size,
                 "precision": args.precision, "fast": args.fast, "compile": args.compile,
                 "images": len(data)}
        write_metrics(out / "metrics.json", metrics, names, extra={"setup": setup})
        save_confusion_png(metrics.confusion, names or [str(i) for i in range(num_classes)],
                           out / "confusion.png")
        _report_compile(model)
        print(f"mIoU {metrics.miou:.4f}  mAcc {metrics.macc:.4f}  allAcc {metrics.all_acc:.4f}"
              f"  ({len(data)} images) -> {out / 'metrics.json'}")
    return 0


def _protocol(args: argparse.Namespace, crop: tuple[int, int] | None) -> Any:
    """The --protocol preset with its sizes: the published ones for --dataset, then
    --crop-size / --base-size on top. None without --protocol."""
    if not args.protocol:
        return None
    from pspnet.inference import get_protocol

    overrides: dict[str, Any] = {}
    if crop is not None:
        overrides["crop_size"] = crop
    if args.base_size:
        overrides["base_size"] = args.base_size
    proto = get_protocol(args.protocol, dataset=args.dataset, **overrides)
    if proto.mode == "slide" and proto.crop_size is None:
        raise ValueError(
            f"--protocol {args.protocol} slides a window and needs its sizes: --dataset "
            "ade20k|voc2012|cityscapes for the published ones, or --crop-size N (and, for "
            "semseg, --base-size N: the long side at scale 1)"
        )
    return proto




def cmd_train(args: argparse.Namespace) -> int:
    import os

    from pspnet.config.flags import flag_values
    from pspnet.engine.train import train_from_args

    result = train_from_args(
        config_file=args.config, overrides=args.set, progress=not args.quiet,
        **flag_values(args),
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the job
        best = f", best val mIoU {result.best_miou:.4f}" if result.best_miou is not None else ""
        print(f"trained {result.iterations} iterations in {result.elapsed_s / 60:.1f} min "
              f"({result.stop_reason}){best}; final weights: {result.final_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pspnet.demo import run_demo

    report = run_demo(args.out, minutes=args.minutes, seed=args.seed, size=args.size,
                      fresh=args.fresh, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import os

    from pspnet import benchmark

    if args.allocator != "system" and args.allocator not in os.environ.get("LD_PRELOAD", ""):
        lib = benchmark.allocator_path(args.allocator)
        if lib is None:
            raise ValueError(f"--allocator {args.allocator}: library not found (Debian: apt-get "
                             "install libtcmalloc-minimal4 / libjemalloc2); or use --allocator system")
        # The allocator must be loaded before the process starts: run ourselves again with it.
        env = {**os.environ, "LD_PRELOAD": lib}
        os.execve(sys.executable, [sys.executable, "-m", "pspnet", *sys.argv[1:]], env)

    data_options: dict[str, object] = {"source": args.data_source}
    if args.camvid_root:
        data_options["camvid_root"] = args.camvid_root
    doc = benchmark.run_benchmark(
        arch=args.arch, sizes=tuple(args.sizes), variants=tuple(args.variants),
        sliding=not args.no_sliding, train=not args.no_train, cpu_archs=not args.no_cpu_archs,
        warmup=args.warmup, repeats=args.repeats,
        data=not args.no_data, data_options=data_options,
    )
    benchmark.save(doc, args.json, args.markdown)
    return 0
