"""The ``pspnet`` command: one verb per job, thin handlers, lazy imports.

Every handler turns its flags into library calls. User errors (bad flags, bad files, bad data)
become one ``error: ...`` line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pspnet.config.flags import TRAIN_FLAGS

EPILOG = """examples:
  pspnet demo                                      # train PSPNet + FCN on generated scenes, report
  pspnet train --data-root D --train-list D/train.txt --val-list D/val.txt --num-classes 11 \\
      --time-budget 30 --work-dir runs/camvid
  torchrun --nproc-per-node 2 -m pspnet train --config configs/ade20k_pspnet50.yaml
  pspnet evaluate --weights runs/camvid/best --data-root D --val-list D/test.txt --out eval/ \\
      --save-predictions
  pspnet list-models
  pspnet zoo                                       # public weights, sources, reported mIoU
  pspnet zoo --download mmseg_pspnet_r50_ade20k
  pspnet convert train_epoch_100.pth weights/pspnet50_ade20k --classes-file ade20k.txt
  pspnet info weights/pspnet50_ade20k
  pspnet predict --weights weights/pspnet50_ade20k photo.jpg photos/ --out masks/
  pspnet data check --data-root data/camvid --list data/camvid/train.txt --num-classes 11
"""


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` for model options (values parsed as YAML; ``model.`` optional)."""
    from pspnet.config import parse_override

    return {k.removeprefix("model."): v for k, v in map(parse_override, items)}


#: A ``--set`` word: a dotted key, ``=``, a value (possibly empty).
_PAIR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")


def _key_value(word: str) -> str:
    """The argparse ``type`` of ``--set``: accept ``KEY=VALUE`` words only.

    Raises:
        argparse.ArgumentTypeError: ``word`` is not ``KEY=VALUE`` (argparse turns it into a
            usage error, exit status 2).
    """
    if not _PAIR.match(word):
        raise argparse.ArgumentTypeError(
            f"{word!r} is not KEY=VALUE: --set takes a dotted key, '=' and a YAML value, e.g. "
            "--set model.align_corners=true"
        )
    return word


def _group_set_words(args: Sequence[str]) -> list[str]:
    """Rewrite ``--set a=1 b=2`` as ``--set=a=1 --set=b=2``.

    Only ``KEY=VALUE`` words after ``--set`` belong to it, so positional arguments after the
    pairs (``pspnet convert --set a=1 SRC DST``) stay positional. A first word that is no pair
    and no option still goes to ``--set``, whose error then names it. ``--`` ends the scan.
    """
    out: list[str] = []
    i, n = 0, len(args)
    while i < n:
        word = args[i]
        i += 1
        if word == "--":
            out.extend(args[i - 1:])
            break
        if word == "--set":
            if i < n and not args[i].startswith("-"):
                out.append(f"--set={args[i]}")
                i += 1
            else:
                out.append(word)  # no value: argparse says "expected one argument"
                continue
        elif word.startswith("--set="):
            out.append(word)
        else:
            out.append(word)
            continue
        while i < n and _PAIR.match(args[i]):
            out.append(f"--set={args[i]}")
            i += 1
    return out


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``--set`` (where it has one) takes only ``KEY=VALUE`` words."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Regroup the ``--set`` words (:func:`_group_set_words`), then parse as usual."""
        if "--set" in self._option_string_actions:
            args = _group_set_words(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)


def _tile_batch(text: str) -> int:
    """argparse type of --tile-batch: a positive number of crops."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of crops, got {text!r}")
    return value


def _add_speed_flags(s: argparse.ArgumentParser) -> None:
    """--precision, --tile-batch, --fast, --compile: the same for predict and evaluate."""
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision (default fp32)")
    s.add_argument("--tile-batch", type=_tile_batch, default=4, metavar="N",
                   help="crops per forward pass with --mode slide (default 4); fewer lower the "
                        "peak memory, more can be faster on a GPU")
    s.add_argument("--fast", action="store_true",
                   help="fold BatchNorm into the convolutions; with --precision bf16/fp16 also "
                        "channels-last weights in that dtype (PyTorch weights only)")
    s.add_argument("--compile", action="store_true",
                   help="--fast, then torch.compile with frozen weights (~1.15-1.2x on CPU; "
                        "compiles once per input shape, the time is reported)")


def _read_names(path: str | None) -> tuple[str, ...] | None:
    """Class names from a file (any form :func:`pspnet.data.classes.read_class_file` reads)."""
    if path is None:
        return None
    from pspnet.data.classes import read_class_file

    return read_class_file(path).names


# --------------------------------------------------------------------------------------------
# Handlers


def cmd_list_models(args: argparse.Namespace) -> int:
    from pspnet.models.registry import MODELS

    for name, spec in MODELS.items():
        print(f"{name:<12} {spec.description}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from pspnet import hub

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
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pspnet.checkpoint import convert, load_model

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


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pspnet.serve import serve_from_args
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra: pip install 'pspnet[serve]' ({e})") from None
    return serve_from_args(args.weights, host=args.host, port=args.port,
                           max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                           timeout_s=args.timeout_s, max_concurrency=args.max_concurrency,
                           device=_resolve_device(args.device))


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


def cmd_train(args: argparse.Namespace) -> int:
    from pspnet.config.flags import flag_values
    import os

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


# --------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pspnet",
        description="PSPNet: train, evaluate, predict, convert and export scene-parsing models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("list-models", help="list the registered architectures")
    s.set_defaults(func=cmd_list_models)

    s = sub.add_parser("zoo", help="list public weights; --download one (hash-checked)")
    s.add_argument("--download", metavar="NAME",
                   help="download this entry to the hub cache, check its SHA-256, print the path")
    s.add_argument("--allow-unverified", action="store_true",
                   help="accept an entry with no published SHA-256 (prints the digest)")
    s.add_argument("-v", "--verbose", action="store_true", help="show URLs, hashes, protocols")
    s.set_defaults(func=cmd_zoo)

    s = sub.add_parser("convert", help="convert a semseg/mmseg/mit-semseg file to our format")
    s.add_argument("src", help="foreign checkpoint (.pth) or mit-semseg directory")
    s.add_argument("dst", help="output directory (model.safetensors + config.json)")
    s.add_argument("--arch", help="architecture (inferred from the file when omitted)")
    s.add_argument("--num-classes", type=int, help="checked against the file")
    s.add_argument("--classes-file", help="class names, one a line (or CamVid classes.txt)")
    s.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="model options the file lacks (one or more), e.g. "
                        "align_corners=true")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("info", help="describe a weight directory or checkpoint")
    s.add_argument("path", help="weight directory or foreign checkpoint (.pth)")
    s.add_argument("--arch", help="architecture of a foreign checkpoint (default: inferred)")
    s.add_argument("--num-classes", type=int, help="classes of a foreign checkpoint (checked)")
    s.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="options of a foreign checkpoint (one or more), e.g. "
                        "align_corners=false")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("demo", help="the embedded demo: generated scenes, PSPNet vs FCN, a report")
    s.add_argument("--out", default="demo_out",
                   help="output folder: data, models, report (default demo_out)")
    s.add_argument("--minutes", type=float, default=4.0,
                   help="training budget per model, in minutes (default 4)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the scenes and training (default 0)")
    s.add_argument("--size", type=int, default=256,
                   help="scene size in pixels (default 256; larger: context further from "
                        "object interiors)")
    s.add_argument("--fresh", action="store_true",
                   help="start over: delete the runs of this --size in --out, then train")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("benchmark", help="time every fast path against fp32 eager, same process")
    s.add_argument("--arch", default="pspnet50", help="architecture timed (default pspnet50)")
    s.add_argument("--sizes", type=int, nargs="*", default=[473, 713],
                   help="square input sizes in pixels (default 473 713); a bare --sizes skips "
                        "the inference cases")
    s.add_argument("--variants", nargs="+",
                   default=["fp32-eager", "fp32-folded", "fp32-compile", "bf16-cl", "bf16-folded",
                            "bf16-compile"],
                   help="bf16 variants are skipped on CPUs without native bf16")
    s.add_argument("--warmup", type=int, default=2, help="untimed runs per case (default 2)")
    s.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    s.add_argument("--no-sliding", action="store_true", help="skip the 2048x1024 sliding case")
    s.add_argument("--no-train", action="store_true", help="skip the training-step cases")
    s.add_argument("--no-cpu-archs", action="store_true", help="skip the pspnet_r18 train step")
    s.add_argument("--no-data", action="store_true",
                   help="skip the data pipeline case (DataLoader images/s vs the training step)")
    s.add_argument("--data-source", choices=["auto", "camvid", "scenes"], default="auto",
                   help="data pipeline case: CamVid (--camvid-root or $PSPNET_CAMVID; auto "
                        "falls back to generated scenes)")
    s.add_argument("--camvid-root", metavar="DIR",
                   help="the prepared CamVid copy for the data pipeline case (default "
                        "$PSPNET_CAMVID)")
    s.add_argument("--allocator", choices=["system", "tcmalloc", "jemalloc"], default="system",
                   help="preload another malloc (fewer page faults; see docs/benchmarks.md)")
    s.add_argument("--json", help="write the results as JSON")
    s.add_argument("--markdown", help="write the results as a Markdown table")
    s.set_defaults(func=cmd_benchmark)

    s = sub.add_parser("serve", help="serve a model over HTTP on localhost (needs pspnet[serve])")
    s.add_argument("--weights", required=True,
                   help="weight directory, foreign checkpoint, or exported .onnx/.ts file")
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address; anything but loopback exposes the model to the network")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument("--max-body-mb", type=float, default=20.0,
                   help="largest request body, in MB (default 20)")
    s.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="largest image, W*H pixels (default 16000000)")
    s.add_argument("--timeout-s", type=float, default=30.0,
                   help="seconds to receive a request (default 30)")
    s.add_argument("--max-concurrency", type=int, default=2,
                   help="inferences at once (default 2)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("train", help="train on list-file data (CPU defaults; torchrun for DDP)")
    for flag in TRAIN_FLAGS:  # one row per flag, each setting one config key
        flag.add_to(s)
    s.add_argument("--config", help="YAML config (see configs/)")
    s.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="dotted overrides (one or more), e.g. optim.lr=0.02 "
                        "train.precision=fp32")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar; warnings only")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="mIoU/mAcc/allAcc of weights on a labelled list")
    s.add_argument("--weights", required=True,
                   help="weight directory, foreign checkpoint, or exported .onnx/.ts file")
    s.add_argument("--data-root", required=True, help="root the list file's paths are relative to")
    s.add_argument("--val-list", required=True,
                   help="'image label' per line, or one sample name per line")
    s.add_argument("--out", required=True, help="writes metrics.json, confusion.png")
    s.add_argument("--mode", choices=["whole", "slide"], default="whole",
                   help="whole image or sliding window (default whole)")
    s.add_argument("--crop-size", type=int,
                   help="sliding-window crop in pixels (--mode slide, or a sliding --protocol)")
    s.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="test scales, averaged (default 1.0)")
    s.add_argument("--flip", action="store_true", help="average with the flipped image")
    s.add_argument("--protocol", help="a named preset (docs/evaluation.md): semseg, mmseg-whole ...")
    s.add_argument("--dataset", help="with --protocol: use its published sizes for this data set "
                                     "(ade20k, voc2012, cityscapes)")
    s.add_argument("--base-size", type=int,
                   help="with --protocol semseg*: the long side at scale 1 (ADE20K/VOC 512)")
    s.add_argument("--save-predictions", action="store_true",
                   help="write OUT/predictions/<stem>.png (class indices, original size)")
    s.add_argument("--num-classes", type=int, help="default: from the weights")
    s.add_argument("--class-names", help="class names file (default: from the weights)")
    s.add_argument("--ignore-index", type=int, default=255,
                   help="label value left out of the metrics (default 255)")
    s.add_argument("--label-map", help="reduce_zero_label (ADE20K), cityscapes_label_ids")
    _add_speed_flags(s)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="export to ONNX or TorchScript, checked against eager")
    s.add_argument("--weights", required=True, help="weight directory or foreign checkpoint")
    s.add_argument("--format", choices=["onnx", "torchscript"], required=True,
                   help="file format to write")
    s.add_argument("--out", required=True, help="output file (.onnx or .ts)")
    s.add_argument("--height", type=int, default=473,
                   help="export (and fixed) input height, pixels (default 473)")
    s.add_argument("--width", type=int, default=473,
                   help="export (and fixed) input width, pixels (default 473)")
    s.add_argument("--dynamic", action="store_true",
                   help="ONNX graph valid at any size (exact shape-generic pyramid pooling)")
    s.add_argument("--output", choices=["logits", "labels"], default="logits",
                   help="class scores or argmax class indices (default logits)")
    s.add_argument("--no-check", action="store_true", help="skip the parity check against eager")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="segment images, folders or videos into PNG masks + overlays")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders or videos")
    s.add_argument("--weights", required=True,
                   help="weight directory, foreign checkpoint, or exported .onnx/.ts file")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--mode", choices=["whole", "slide"], default="whole",
                   help="whole image or sliding window (default whole)")
    s.add_argument("--crop-size", type=int, help="sliding-window crop (with --mode slide)")
    s.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="test scales, averaged (default 1.0)")
    s.add_argument("--flip", action="store_true", help="average with the flipped image")
    _add_speed_flags(s)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    s.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0..1 (default 0.5)")
    s.add_argument("--no-overlay", action="store_true", help="write only the masks")
    s.add_argument("--skip-bad", action="store_true",
                   help="report unreadable inputs and go on (default: stop at the first)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_predict)

    data = sub.add_parser("data", help="data set tools")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    s = dsub.add_parser("check", help="scan a data set for problems before training")
    s.add_argument("--data-root", default=".", help="root the list file's paths are relative to")
    s.add_argument("--list", help="list file: 'image label' per line (or CamVid-style names)")
    s.add_argument("--images", help="image folder (paired with --labels by file stem)")
    s.add_argument("--labels", help="label folder")
    s.add_argument("--dataset", help="named layout: camvid, ade20k, voc2012, cityscapes")
    s.add_argument("--split", default="train", help="split of a --dataset (default train)")
    s.add_argument("--num-classes", type=int,
                   help="number of classes (required without --dataset)")
    s.add_argument("--classes-file", help="class names, one a line (or CamVid classes.txt)")
    s.add_argument("--ignore-index", type=int, default=255,
                   help="label value that marks void pixels (default 255)")
    s.add_argument("--label-map", help="reduce_zero_label (ADE20K), cityscapes_label_ids, none")
    s.add_argument("--max-pixels", type=int, default=120_000_000,
                   help="largest image, W*H pixels (default 120000000)")
    s.add_argument("--json", help="also write the report as JSON here")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_data_check)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pspnet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Progress and results of long verbs (training's validations, resumes, skipped files) go
    # through logging; without a handler they would vanish. -q keeps warnings only.
    if not logging.getLogger().handlers:
        quiet = bool(getattr(args, "quiet", False))
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if args.debug or e.name not in _EXTRAS:
            raise
        print(f"error: this needs the optional package {e.name!r}: pip install "
              f"'pspnet[{_EXTRAS[e.name]}]'", file=sys.stderr)  # fmt: skip
        return 2
    except Exception as e:  # noqa: BLE001 - mapped to one line below
        if args.debug or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


#: Optional packages and the extra that installs them.
_EXTRAS = {
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "cv2": "video",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "tensorboard": "tensorboard",
}  # fmt: skip


def _is_user_error(e: BaseException) -> bool:
    """Errors caused by input (flags, files, data) or by the run itself (a diverged training,
    a failed export check), as opposed to bugs in pspnet."""
    if type(e).__name__ in ("TrainingDiverged", "ExportCheckError"):
        return True  # their messages name the iteration / the sizes and what to do
    return isinstance(e, (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                          IsADirectoryError, NotADirectoryError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
