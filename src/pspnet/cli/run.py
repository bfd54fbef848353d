"""Running models: ``predict``, ``evaluate``, ``train``, ``report``, ``demo``, ``benchmark``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pspnet.cli.common import _resolve_device, check_output_dir, check_output_file
from pspnet.cli.options import adhoc_options, check_overlay_flags, protocol_options


def _fast_path(model: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """``--fast`` / ``--compile``: the optimised model and the autocast precision left to use.

    The optimised model (:func:`pspnet.models.fuse.optimize_for_inference`: BatchNorm folded
    into the convolutions; channels-last bf16/fp16 weights with ``--precision bf16/fp16``;
    ``torch.compile`` with frozen weights) casts its inputs itself, so inference runs it with
    ``precision="fp32"``. An exported model runs in its own runtime: ``--fast``, ``--compile``
    and ``--precision`` other than fp32 would be ignored there, so they are refused.
    """
    if args.precision == "int8" or getattr(args, "calibration_list", None):
        return _int8(model, args), "fp32"
    from pspnet.checkpoint.exported import is_exported, optimisation_refused

    if is_exported(model):
        flags = [f for f, on in (("--fast", args.fast), ("--compile", args.compile),
                                 (f"--precision {args.precision}", args.precision != "fp32"))
                 if on]
        if flags:
            raise ValueError(optimisation_refused(args.weights, flags, "flag"))
        return model, args.precision
    if not (args.fast or args.compile):
        return model, args.precision
    from pspnet.models.fuse import optimize_for_inference

    # inplace: the caller replaces its eager model with the result (one weight copy less)
    fast = optimize_for_inference(model, precision=args.precision, compile=args.compile,
                                  inplace=True)
    return fast, "fp32"


def _int8(model: Any, args: argparse.Namespace) -> Any:
    """``--precision int8 --calibration-list FILE``: the model quantized on those images."""
    from pspnet.checkpoint.calibration import CALIBRATION_FIX, calibration_images
    from pspnet.checkpoint.exported import is_exported, optimisation_refused
    from pspnet.config import Preprocessing
    from pspnet.models.quantize import quantize_pt2e

    if args.precision != "int8":
        raise ValueError(f"--calibration-list is for --precision int8, not {args.precision}")
    if not args.calibration_list:
        raise ValueError(f"--precision int8 needs --calibration-list FILE; {CALIBRATION_FIX}")
    if is_exported(model):
        raise ValueError(optimisation_refused(args.weights, ["--precision int8"], "flag"))
    meta = getattr(model, "meta", None)
    images = calibration_images(args.calibration_list, meta.preprocess if meta else Preprocessing())
    return quantize_pt2e(model, images, inplace=True)  # the caller keeps only the result


def _report_compile(model: Any) -> None:
    seconds = getattr(model, "compile_seconds", 0.0)
    if seconds:
        print(f"torch.compile: {seconds:.1f} s spent compiling (once per input shape)",
              file=sys.stderr)


def _gigabytes(value: float, flag: str) -> int | None:
    """``value`` GB (10**9 bytes) as bytes; ``inf`` is no bound (None)."""
    if not value > 0:  # `not >`: NaN is refused too
        raise ValueError(f"{flag} must be a positive number of GB (or inf), got {value!r}")
    return None if value == float("inf") else int(value * 1e9)


def cmd_predict(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import load_model
    from pspnet.config import Preprocessing
    from pspnet.engine.predict import OutputOptions, expand_inputs, predict_files

    alpha = check_overlay_flags(args)
    check_output_dir(args.out, "--out")
    device = _resolve_device(args.device)
    inputs = expand_inputs(args.inputs)
    model = load_model(args.weights, device=device)
    model, precision = _fast_path(model, args)
    meta = getattr(model, "meta", None)
    # A fixed-size export runs only at its size: a sliding window of it unless told otherwise.
    opts = dataclasses.replace(
        adhoc_options(args, precision, fixed=getattr(model, "input_size", None)),
        max_memory=_gigabytes(args.max_memory_gb, "--max-memory-gb"),
    )
    summary = predict_files(
        model, inputs, args.out,
        preprocess=meta.preprocess if meta else Preprocessing(),
        opts=opts,
        output=OutputOptions(alpha=alpha, overlays=not args.no_overlay,
                             max_pixels=args.max_pixels),
        class_names=meta.classes if meta else None,
        palette=meta.palette if meta else None,
        num_classes=meta.model.num_classes if meta else None,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    _report_compile(model)
    skipped = f"; {len(summary.failed)} input(s) skipped (see summary.json)"
    print(f"wrote {len(summary.written)} result(s) to {args.out}"
          + (skipped if summary.failed else ""))
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
    from pspnet.cli.data import class_file, label_map_of, labelled_samples
    from pspnet.data.datasets import SegmentationDataset
    from pspnet.engine.evaluate import evaluate_model, resolved_options, write_metrics
    from pspnet.engine.metrics import save_confusion_png

    check_output_dir(args.out, "--out")
    protocol = protocol_options(args, args.precision)  # flag conflicts before any loading
    samples = labelled_samples(args, "val_list")  # before the model: flag errors come first
    if samples is None:
        raise ValueError("give the labelled images: --val-list FILE (with --data-root DIR) or "
                         "--images DIR --labels DIR")
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
    classes = class_file(args)
    names = (classes.names if classes is not None else None) or (meta.classes if meta else None)
    data = SegmentationDataset(samples, num_classes, ignore_index=args.ignore_index,
                               label_map=label_map_of(args, classes), max_pixels=args.max_pixels)
    out = Path(args.out)
    options = (protocol.replace(precision=precision) if protocol is not None
               else adhoc_options(args, precision))
    metrics = evaluate_model(
        model, data, options, num_classes=num_classes, ignore_index=args.ignore_index,
        save_predictions_dir=out / "predictions" if args.save_predictions else None,
        class_names=names, palette=meta.palette if meta else None,
        preprocess=meta.preprocess if meta else None, progress=not args.quiet,
    )
    if rank == 0:
        ran = resolved_options(model, options)  # what evaluate_model ran, recorded as such
        settings = _jsonable(ran.predict_kwargs())
        setup = {"weights": str(args.weights), "protocol": args.protocol,
                 "dataset": args.dataset, "protocol_settings": settings if protocol else None,
                 "inference": settings,
                 "mode": ran.mode, "scales": list(ran.scales), "flip": ran.flip,
                 "crop_size": list(ran.crop_size) if ran.crop_size else None,
                 "precision": args.precision, "fast": args.fast, "compile": args.compile,
                 "tile_batch": ran.batch_size if ran.mode == "slide" else None,
                 "max_pixels": args.max_pixels, "images": len(data)}
        write_metrics(out / "metrics.json", metrics, names, extra={"setup": setup})
        try:
            save_confusion_png(metrics.confusion, names or [str(i) for i in range(num_classes)],
                               out / "confusion.png")
        except ModuleNotFoundError as e:  # the picture is optional, the metrics are written
            print(f"note: no confusion.png: {e}", file=sys.stderr)
        _report_compile(model)
        print(f"mIoU {metrics.miou:.4f}  mAcc {metrics.macc:.4f}  allAcc {metrics.all_acc:.4f}"
              f"  ({len(data)} images) -> {out / 'metrics.json'}")
    return 0


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so that ``metrics.json`` holds exactly what ``json.load`` gives back."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from pspnet.config.flags import flag_values
    from pspnet.engine.train import train_from_args

    if args.dry_run:
        from pspnet.engine.run_config import dry_run

        print(dry_run(config_file=args.config, overrides=args.set, **flag_values(args)), end="")
        return 0
    check_output_dir(args.work_dir, "--work-dir")

    result = train_from_args(
        config_file=args.config, overrides=args.set, progress=not args.quiet,
        **flag_values(args),
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the job
        best = f", best val mIoU {result.best_miou:.4f}" if result.best_miou is not None else ""
        print(f"trained {result.iterations} iterations in {result.elapsed_s / 60:.1f} min "
              f"({result.stop_reason}){best}; final weights: {result.final_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pspnet.engine.run_report import write_report
    from pspnet.report.runlog import ReportError

    if args.max_images < 1 or args.overlays < 1:
        raise ValueError(f"--max-images and --overlays must be at least 1, got "
                         f"{args.max_images} and {args.overlays}")  # fmt: skip
    try:
        page = write_report(args.work_dir, device=_resolve_device(args.device),
                            max_images=args.max_images, num_overlays=args.overlays,
                            progress=not args.quiet)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {page}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pspnet.demo import DemoSettings, run_demo

    check_output_dir(args.out, "--out")

    settings = DemoSettings(iterations=args.iterations, seeds=args.seeds,
                            seed_start=args.seed_start, size=args.size,
                            scene_width=args.scene_width, gap=args.gap,
                            width=args.width, min_scale=args.min_scale)
    result = run_demo(args.out, settings, fresh=args.fresh, progress=not args.quiet)
    print(f"report: {result.report}")
    print(result.line)  # the verdict: reported, not an error either way
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import os

    from pspnet import benchmark

    _check_benchmark_flags(args)
    if args.allocator != "system" and args.allocator not in os.environ.get("LD_PRELOAD", ""):
        lib = benchmark.allocator_path(args.allocator)
        if lib is None:
            raise ValueError(f"--allocator {args.allocator}: library not found (Debian: apt-get "
                             "install libtcmalloc-minimal4 / libjemalloc2); "
                             "or use --allocator system")
        # The allocator must be loaded before the process starts: run ourselves again with it.
        env = {**os.environ, "LD_PRELOAD": lib}
        os.execve(sys.executable, [sys.executable, "-m", "pspnet", *sys.argv[1:]], env)

    data_options: dict[str, object] = {"source": args.data_source or "auto"}
    if args.camvid_root:
        data_options["camvid_root"] = args.camvid_root
    doc = benchmark.run_benchmark(
        arch=args.arch, sizes=tuple(args.sizes), variants=tuple(args.variants),
        sliding=not args.no_sliding, train=not args.no_train, cpu_archs=not args.no_cpu_archs,
        warmup=args.warmup, repeats=args.repeats,
        data=not args.no_data, data_options=data_options, device=args.device,
        labels=args.labels,
    )
    benchmark.save(doc, args.json, args.markdown)
    return 0


def _check_benchmark_flags(args: argparse.Namespace) -> None:
    """Refuse benchmark flags that the chosen cases would ignore; check the output files."""
    check_output_file(args.json, "--json")
    check_output_file(args.markdown, "--markdown")
    if args.labels and not args.sizes:
        raise ValueError("--labels times the inference cases, which a bare --sizes skips; give "
                         "--sizes (e.g. --sizes 473) or leave --labels out")
    if args.warmup < 0 or args.repeats < 1:
        raise ValueError(f"--warmup {args.warmup} --repeats {args.repeats}: warm-up runs must be "
                         ">= 0 and timed runs >= 1")
    data_flags = [f"{flag} {value}" for flag, value in
                  (("--data-source", args.data_source), ("--camvid-root", args.camvid_root))
                  if value]
    if args.no_data and data_flags:
        raise ValueError(f"{' and '.join(data_flags)} configure the data pipeline case, which "
                         "--no-data skips; leave one of them out")
    if args.camvid_root and args.data_source == "scenes":
        raise ValueError(f"--camvid-root {args.camvid_root} is read with --data-source camvid or "
                         "auto only; --data-source scenes generates its images")
