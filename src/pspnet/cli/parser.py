"""The ``pspnet`` argument parser: one ``_add_<verb>`` function per verb.

Handlers live in the command modules (:mod:`.weights`, :mod:`.data`, :mod:`.run`,
:mod:`.deploy`); this module only declares verbs, flags, help texts and defaults.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pspnet import __version__
from pspnet.cli.data import cmd_data_check
from pspnet.cli.deploy import cmd_export, cmd_serve
from pspnet.cli.run import (
    cmd_benchmark, cmd_demo, cmd_evaluate, cmd_predict, cmd_report, cmd_train,
)
from pspnet.cli.weights import cmd_convert, cmd_info, cmd_list_models, cmd_zoo
from pspnet.config.flags import TRAIN_FLAGS, add_deprecated_alias

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EPILOG = """examples:
  pspnet demo                                      # PSPNet vs FCN on generated scenes, 3 seeds
  pspnet train --data-root D --train-list D/train.txt --val-list D/val.txt --num-classes 11 \\
      --time-budget 30 --work-dir runs/camvid
  pspnet train --images photos/ --labels masks/ --val-fraction 0.2 --num-classes 4 \\
      --classes-file classes.txt --work-dir runs/mine    # own folders, colour masks
  torchrun --nproc-per-node 2 -m pspnet train --config configs/ade20k_pspnet50.yaml
  pspnet report runs/camvid                        # curves, per-class IoU, overlays: HTML
  pspnet evaluate --weights runs/camvid/best --data-root D --val-list D/test.txt --out eval/ \\
      --save-predictions
  pspnet evaluate --weights runs/mine/best --val-list runs/mine/val.txt --out eval/
  pspnet list-models
  pspnet zoo                                       # public weights, sources, reported mIoU
  pspnet zoo --download mmseg_pspnet_r50_ade20k
  pspnet convert train_epoch_100.pth weights/pspnet50_ade20k --classes-file ade20k.txt
  pspnet info weights/pspnet50_ade20k
  pspnet predict --weights weights/pspnet50_ade20k photo.jpg photos/ --out masks/
  pspnet data check --data-root data/camvid --list data/camvid/train.txt --num-classes 11
"""


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
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default="fp32",
                   help="autocast precision (default fp32); int8: post-training quantization "
                        "on --calibration-list images (needs torchao: the int8 extra)")
    s.add_argument("--calibration-list", default=None, metavar="FILE",
                   help="with --precision int8: calibration images, one path per line "
                        "(relative to the file's folder), or a folder; e.g. 32 training images")
    s.add_argument("--tile-batch", type=_tile_batch, default=4, metavar="N",
                   help="crops per forward pass with --mode slide (default 4); fewer lower the "
                        "peak memory, more can be faster on a GPU")
    s.add_argument("--fast", action="store_true",
                   help="fold BatchNorm into the convolutions; with --precision bf16/fp16 also "
                        "channels-last weights in that dtype (PyTorch weights only)")
    s.add_argument("--compile", action="store_true",
                   help="--fast, then torch.compile with frozen weights (~1.15-1.2x on CPU; "
                        "compiles once per input shape, the time is reported)")


def _add_set(s: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable; several pairs may follow one ``--set``)."""
    s.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help=help)


def _add_weights(s: argparse.ArgumentParser) -> None:
    """``--weights`` of the verbs that run a model: anything :func:`pspnet.load_model` opens."""
    s.add_argument("--weights", required=True,
                   help="weight directory, foreign checkpoint, exported .onnx/.xml/.ts file, or a "
                        "zoo name (pspnet zoo; downloaded to the cache on first use)")


def _add_classes_file(s: argparse.ArgumentParser, help: str) -> None:
    """``--classes-file`` (every verb's one name for a class file; ``--class-names`` is its
    deprecated, hidden alias)."""
    s.add_argument("--classes-file", metavar="FILE", help=help)
    add_deprecated_alias(s, "--class-names", "--classes-file", "classes_file")


def _add_folders(s: argparse.ArgumentParser) -> None:
    """``--images DIR --labels DIR``: samples paired by file stem, instead of a list file."""
    s.add_argument("--images", metavar="DIR",
                   help="image folder, paired with --labels by file stem (instead of a list)")
    s.add_argument("--labels", metavar="DIR", help="label folder of --images")


#: --classes-file help of the verbs that read labels.
_CLASSES_HELP = ("class names, one a line, or `index<TAB>name<TAB>R G B` lines: then colour-coded "
                 "(RGB) labels are mapped to those classes")


def _add_device(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")


def _add_quiet(s: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    s.add_argument("-q", "--quiet", action="store_true", help=help)


def _add_window_flags(s: argparse.ArgumentParser, crop_help: str) -> None:
    """--mode, --crop-size, --scales, --flip: how predict and evaluate run the model."""
    # No defaults here (None): the handlers tell a flag the user gave from one left out, so
    # that a flag that would be ignored (or overridden by a --protocol) is an error.
    s.add_argument("--mode", choices=["whole", "slide"],
                   help="whole image or sliding window (default whole)")
    s.add_argument("--crop-size", type=int, help=crop_help)
    s.add_argument("--scales", type=float, nargs="+",
                   help="test scales, averaged (default 1.0)")
    s.add_argument("--flip", action="store_true", help="average with the flipped image")
    s.add_argument("--max-pixels", type=int, default=120_000_000,
                   help="largest image, W*H pixels (default 120000000; a guard against "
                        "decompression bombs)")


def build_parser() -> argparse.ArgumentParser:
    """The ``pspnet`` parser with every verb (in the order ``pspnet --help`` lists them)."""
    p = _Parser(
        prog="pspnet",
        description="PSPNet: train, evaluate, predict, convert and export scene-parsing models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"pspnet {__version__}",
                   help="print the version of pspnet and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    _add_list_models(sub)
    _add_zoo(sub)
    _add_convert(sub)
    _add_info(sub)
    _add_demo(sub)
    _add_benchmark(sub)
    _add_serve(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_data(sub)
    return p


def _add_list_models(sub: Subparsers) -> None:
    """The ``list-models`` verb."""
    s = sub.add_parser("list-models", help="list the registered architectures")
    s.set_defaults(func=cmd_list_models)


def _add_zoo(sub: Subparsers) -> None:
    """The ``zoo`` verb."""
    s = sub.add_parser("zoo", help="list public weights; --download one (hash-checked)")
    s.add_argument("--download", metavar="NAME",
                   help="download this entry to the hub cache, check its SHA-256, print the path")
    s.add_argument("--allow-unverified", action="store_true",
                   help="accept an entry with no published SHA-256 (prints the digest)")
    s.add_argument("-v", "--verbose", action="store_true", help="show URLs, hashes, protocols")
    s.set_defaults(func=cmd_zoo)


def _add_convert(sub: Subparsers) -> None:
    """The ``convert`` verb."""
    s = sub.add_parser("convert", help="convert a semseg/mmseg/mit-semseg file to our format")
    s.add_argument("src", help="foreign checkpoint (.pth), mit-semseg directory, or zoo name")
    s.add_argument("dst", help="output directory (model.safetensors + config.json)")
    s.add_argument("--arch", help="architecture (inferred from the file when omitted)")
    s.add_argument("--num-classes", type=int, help="checked against the file")
    _add_classes_file(s, "class names, one a line (or CamVid classes.txt)")
    _add_set(s, "model options the file lacks (one or more), e.g. "
                        "align_corners=true")
    s.set_defaults(func=cmd_convert)


def _add_info(sub: Subparsers) -> None:
    """The ``info`` verb."""
    s = sub.add_parser("info", help="describe a weight directory or checkpoint")
    s.add_argument("path", help="weight directory, foreign checkpoint (.pth), or zoo name")
    s.add_argument("--arch", help="architecture of a foreign checkpoint (default: inferred)")
    s.add_argument("--num-classes", type=int, help="classes of a foreign checkpoint (checked)")
    _add_set(s, "options of a foreign checkpoint (one or more), e.g. "
                        "align_corners=false")
    s.set_defaults(func=cmd_info)


def _add_demo(sub: Subparsers) -> None:
    """The ``demo`` verb."""
    s = sub.add_parser("demo", help="the embedded demo: generated scenes, PSPNet vs FCN, a report")
    s.add_argument("--out", default="demo_out",
                   help="output folder: data, models, report (default demo_out)")
    s.add_argument("--iterations", type=int, default=120,
                   help="training steps per run, the same on every machine (default 120)")
    s.add_argument("--seeds", type=int, default=3,
                   help="number of training seeds; the claim is checked over them (default 3)")
    s.add_argument("--seed-start", type=int, default=0,
                   help="first seed: seeds SEED_START .. SEED_START+SEEDS-1 (default 0)")
    s.add_argument("--size", type=int, default=448, help="scene height in pixels (default 448)")
    s.add_argument("--scene-width", type=int, default=None,
                   help="scene width in pixels, at most --size (default: half of --size; "
                        "--size for square scenes); the context band lies on the top or bottom "
                        "edge of a scene narrower than tall, so the gap runs along the height")
    s.add_argument("--gap", type=int, default=264,
                   help="pixels between every vessel and the deciding water or road (default "
                        "264, beyond the FCN's 257-px receptive field)")
    s.add_argument("--width", type=int, default=16,
                   help="channels of the backbone's first stage (default 16: ResNet-18's "
                        "receptive field at 1/16 of its parameters; 64 is ResNet-18)")
    s.add_argument("--min-scale", type=float, default=1.0,
                   help="smallest random scale of the training scenes (default 1: shrinking a "
                        "scene would bring its context within the FCN's reach)")
    s.add_argument("--fresh", action="store_true",
                   help="start over: delete the runs of these settings and seeds in --out, "
                        "then train")
    _add_quiet(s, "no progress bars")
    s.set_defaults(func=cmd_demo)


def _add_benchmark(sub: Subparsers) -> None:
    """The ``benchmark`` verb."""
    s = sub.add_parser("benchmark", help="time every fast path against fp32 eager, same process")
    s.add_argument("--arch", default="pspnet50", help="architecture timed (default pspnet50)")
    s.add_argument("--sizes", type=int, nargs="*", default=[473, 713],
                   help="square input sizes in pixels (default 473 713); a bare --sizes skips "
                        "the inference cases")
    s.add_argument("--variants", nargs="+",
                   default=["fp32-eager", "fp32-folded", "fp32-compile", "bf16-cl", "bf16-folded",
                            "bf16-compile"],
                   help="bf16 variants are skipped on CPUs without native bf16; int8-compile "
                        "(int8 PT2E + inductor, needs torchao) is timed when named")
    s.add_argument("--labels", action="store_true",
                   help="also time each inference variant predicting class labels "
                        "(predict_labels: what predict, evaluate and serve run)")
    s.add_argument("--warmup", type=int, default=2, help="untimed runs per case (default 2)")
    s.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    s.add_argument("--no-sliding", action="store_true", help="skip the 2048x1024 sliding case")
    s.add_argument("--no-train", action="store_true", help="skip the training-step cases")
    s.add_argument("--no-cpu-archs", action="store_true", help="skip the pspnet_r18 train step")
    s.add_argument("--no-data", action="store_true",
                   help="skip the data pipeline case (DataLoader images/s vs the training step)")
    s.add_argument("--data-source", choices=["auto", "camvid", "scenes"],
                   help="data pipeline case: CamVid (--camvid-root or $PSPNET_CAMVID; auto "
                        "falls back to generated scenes)")
    s.add_argument("--camvid-root", metavar="DIR",
                   help="the prepared CamVid copy for the data pipeline case (default "
                        "$PSPNET_CAMVID)")
    s.add_argument("--allocator", choices=["system", "tcmalloc", "jemalloc"], default="system",
                   help="preload another malloc (fewer page faults; see docs/benchmarks.md)")
    s.add_argument("--device", default="cpu",
                   help="cpu, or cuda[:N] (inference cases only, fp16 variants too)")
    s.add_argument("--json", help="write the results as JSON")
    s.add_argument("--markdown", help="write the results as a Markdown table")
    s.set_defaults(func=cmd_benchmark)


def _add_serve(sub: Subparsers) -> None:
    """The ``serve`` verb."""
    s = sub.add_parser("serve", help="serve a model over HTTP on localhost (needs pspnet[serve])")
    _add_weights(s)
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address; anything but loopback exposes the model to the network")
    s.add_argument("--port", type=int, default=8000,
                   help="TCP port, 0..65535 (default 8000; 0 picks a free one)")
    s.add_argument("--max-body-mb", type=float, default=20.0,
                   help="largest request body, in MB (default 20)")
    s.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="largest image, W*H pixels (default 16000000)")
    s.add_argument("--timeout-s", type=float, default=30.0,
                   help="seconds to receive a request (default 30)")
    s.add_argument("--max-concurrency", type=int, default=2,
                   help="inferences at once (default 2)")
    _add_device(s)
    s.set_defaults(func=cmd_serve)


def _add_train(sub: Subparsers) -> None:
    """The ``train`` verb."""
    s = sub.add_parser("train", help="train on list-file data (CPU defaults; torchrun for DDP)")
    for flag in TRAIN_FLAGS:  # one row per flag, each setting one config key
        flag.add_to(s)
    s.add_argument("--config", help="YAML config (see configs/)")
    _add_set(s, "dotted overrides (one or more), e.g. optim.lr=0.02 "
                        "train.precision=fp32")
    s.add_argument("--dry-run", action="store_true",
                   help="print what would run (the values chosen for this machine and data, "
                        "and why; the schedule; the config) and exit without training")
    _add_quiet(s, "no progress bar; warnings only")
    s.set_defaults(func=cmd_train)


def _add_evaluate(sub: Subparsers) -> None:
    """The ``evaluate`` verb."""
    s = sub.add_parser("evaluate", help="mIoU/mAcc/allAcc of weights on a labelled list")
    _add_weights(s)
    s.add_argument("--data-root",
                   help="root the list file's paths are relative to (default: the working "
                        "directory)")
    s.add_argument("--val-list",
                   help="'image label' per line, or one sample name per line (or --images "
                        "--labels)")
    _add_folders(s)
    s.add_argument("--out", required=True, help="writes metrics.json, confusion.png")
    _add_window_flags(s, crop_help="sliding-window crop in pixels "
                                   "(--mode slide, or a sliding --protocol)")
    s.add_argument("--protocol",
                   help="a named preset (docs/evaluation.md): semseg, mmseg-whole ...")
    s.add_argument("--dataset", help="with --protocol: use its published sizes for this data set "
                                     "(ade20k, voc2012, cityscapes)")
    s.add_argument("--base-size", type=int,
                   help="with --protocol semseg*: the long side at scale 1 (ADE20K/VOC 512)")
    s.add_argument("--save-predictions", action="store_true",
                   help="write OUT/predictions/<stem>.png (class indices, original size)")
    s.add_argument("--num-classes", type=int, help="default: from the weights")
    _add_classes_file(s, _CLASSES_HELP + " (default names: from the weights)")
    s.add_argument("--ignore-index", type=int, default=255,
                   help="label value left out of the metrics (default 255)")
    s.add_argument("--label-map", help="reduce_zero_label (ADE20K), cityscapes_label_ids")
    _add_speed_flags(s)
    _add_device(s)
    _add_quiet(s)
    s.set_defaults(func=cmd_evaluate)


def _add_report(sub: Subparsers) -> None:
    """The ``report`` verb."""
    s = sub.add_parser("report", help="a training run as one HTML page (needs pspnet[report])")
    s.add_argument("work_dir", metavar="WORK_DIR", help="the --work-dir of a `pspnet train` run")
    s.add_argument("--max-images", type=int, default=100,
                   help="validation images scored at most, evenly spaced (default 100)")
    s.add_argument("--overlays", type=int, default=4,
                   help="validation images in the overlay grid (default 4)")
    _add_device(s)
    _add_quiet(s)
    s.set_defaults(func=cmd_report)


def _add_export(sub: Subparsers) -> None:
    """The ``export`` verb."""
    s = sub.add_parser("export", help="export to ONNX, OpenVINO or TorchScript, checked against "
                                      "eager")
    s.add_argument("--weights", required=True,
                   help="weight directory, foreign checkpoint, or a zoo name (pspnet zoo)")
    s.add_argument("--format", choices=["onnx", "openvino", "torchscript"], required=True,
                   help="file format to write (openvino: IR .xml + .bin, the openvino extra)")
    s.add_argument("--out", required=True, help="output file (.onnx, .xml or .ts)")
    s.add_argument("--height", type=int, default=473,
                   help="export (and fixed) input height, pixels (default 473)")
    s.add_argument("--width", type=int, default=473,
                   help="export (and fixed) input width, pixels (default 473)")
    s.add_argument("--dynamic", action="store_true",
                   help="ONNX / OpenVINO graph valid at any size (exact shape-generic pyramid "
                        "pooling)")
    s.add_argument("--int8", action="store_true",
                   help="quantize to int8, calibrated on --calibration-list images: ONNX with "
                        "ONNX Runtime static quantization, OpenVINO with NNCF")
    s.add_argument("--calibration-list", default=None, metavar="FILE",
                   help="with --int8: calibration images, one path per line (relative to the "
                        "file's folder), or a folder; e.g. 32 training images")
    s.add_argument("--output", choices=["logits", "labels"], default="logits",
                   help="class scores or argmax class indices (default logits)")
    s.add_argument("--no-check", action="store_true", help="skip the parity check against eager")
    s.set_defaults(func=cmd_export)


def _add_predict(sub: Subparsers) -> None:
    """The ``predict`` verb."""
    s = sub.add_parser("predict",
                       help="segment images, folders or videos into PNG masks + overlays")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders or videos")
    _add_weights(s)
    s.add_argument("--out", required=True, help="output folder")
    _add_window_flags(s, crop_help="sliding-window crop (with --mode slide)")
    _add_speed_flags(s)
    _add_device(s)
    s.add_argument("--alpha", type=float, help="overlay opacity, 0..1 (default 0.5)")
    s.add_argument("--no-overlay", action="store_true", help="write only the masks")
    s.add_argument("--max-memory-gb", type=float, default=2.0,
                   help="bound on one prediction's memory besides model and image; a whole-image "
                        "pass above it runs as a sliding window (default 2; inf: no bound)")
    s.add_argument("--skip-bad", action="store_true",
                   help="report unreadable inputs and go on (default: stop at the first)")
    _add_quiet(s)
    s.set_defaults(func=cmd_predict)


def _add_data(sub: Subparsers) -> None:
    """The ``data`` verb."""
    data = sub.add_parser("data", help="data set tools")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    s = dsub.add_parser("check", help="scan a data set for problems before training")
    s.add_argument("--data-root", default=".", help="root the list file's paths are relative to")
    s.add_argument("--list", help="list file: 'image label' per line (or CamVid-style names)")
    _add_folders(s)
    s.add_argument("--dataset", help="named layout: camvid, ade20k, voc2012, cityscapes")
    s.add_argument("--split", help="split of a --dataset (default train)")
    s.add_argument("--num-classes", type=int,
                   help="number of classes (default: the --dataset's or the --classes-file's)")
    _add_classes_file(s, _CLASSES_HELP)
    s.add_argument("--ignore-index", type=int, default=255,
                   help="label value that marks void pixels (default 255)")
    s.add_argument("--label-map", help="reduce_zero_label (ADE20K), cityscapes_label_ids, none")
    s.add_argument("--max-pixels", type=int, default=120_000_000,
                   help="largest image, W*H pixels (default 120000000)")
    s.add_argument("--json", help="also write the report as JSON here")
    _add_quiet(s)
    s.set_defaults(func=cmd_data_check)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
