"""Accuracy of the inference fast paths on a trained model, next to fp32 eager.

The performance issue asks that the fast inference path (conv-BN folding, channels-last, bf16,
optionally ``torch.compile``) keeps the model's mIoU within 0.3 points of plain fp32. This
script evaluates one weight directory with every variant on the same images, whole image at
the original size, single scale, no flip (the protocol of ``bench/camvid.py report``)::

    python bench/fast_path.py --weights work_dirs/camvid_2h/best [--compile] [--limit N]
    python bench/fast_path.py --weights W --data-root DIR --list FILE   # other data

Variants (``--variants``; ``--compile`` adds the compiled ones):

* ``fp32-eager``: the model as trained (the reference);
* ``fp32-folded-cl``: conv-BN folded, channels-last, fp32;
* ``bf16``: ``load_model(precision="bf16")``: folded, channels-last, bf16 weights/activations;
* ``fp32-compile`` / ``bf16-compile``: the two above under ``torch.compile``.

For each: mIoU, its difference to fp32 eager in points, the share of pixels whose predicted
label equals fp32 eager's, and the seconds per image of the forward pass (median over the
images after the first, which is a warm-up and, compiled, the compilation). The variants take
turns on every image, so a noisy host slows them alike. Where the CPU has no native bf16
(AVX512-BF16/AMX) bf16 is emulated and its time is not a speed claim; the output says so.

``--speed`` measures the cost of the path around the network instead (no data or weights
needed: a randomly initialised ``--arch`` with ``--classes`` classes at ``--size``, batch 1,
fp32): the compiled network alone called on a prepared tensor, the same network through
``load_model(..., compile=True)`` and ``predict_labels`` (what ``pspnet predict`` /
``evaluate`` / ``serve`` run) and through ``model(x)["out"]`` (float32 logits), and fp32
eager; taking turns in one process, medians and ratios, and the peak memory each adds::

    python bench/fast_path.py --speed [--arch pspnet50 --size 473 --classes 150 --repeats 5]
    python bench/fast_path.py --speed --precision bf16   # CPUs with AVX512-BF16 / AMX

Writes ``<out>.json`` and ``<out>.md`` (``--out``, default ``docs/bench/fast_path``, or
``docs/bench/fast_path_speed`` with ``--speed``) with the command, commit and machine. The data default is the CamVid test split from ``$PSPNET_CAMVID``
or ``<repo>/../shared/data/camvid``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pspnet.benchmark.data_pipeline import CAMVID_ENV, CamVidNotFoundError, require_camvid
from pspnet.report.machine import display_path, format_machine, git_commit, machine_info

REPO = Path(__file__).resolve().parents[1]
#: Where the scripts of this checkout look for CamVid when $PSPNET_CAMVID is not set.
DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"
DEFAULT_OUT = REPO / "docs" / "bench" / "fast_path"
REFERENCE = "fp32-eager"
#: Variant -> what it is (the order of the report).
VARIANTS: dict[str, str] = {
    "fp32-eager": "fp32 eager, NCHW (the reference)",
    "fp32-folded-cl": "fp32, conv-BN folded, channels-last",
    "bf16": "bf16, conv-BN folded, channels-last (load_model precision=\"bf16\")",
    "fp32-compile": "fp32, folded, channels-last, torch.compile",
    "bf16-compile": "bf16, folded, channels-last, torch.compile",
}
DEFAULT_VARIANTS = ("fp32-eager", "fp32-folded-cl", "bf16")
COMPILE_VARIANTS = ("fp32-compile", "bf16-compile")
#: The issue's target: the fast path's mIoU within this many points of fp32.
TARGET_POINTS = 0.3


class FastPathError(RuntimeError):
    """A problem the user can fix (missing data or weights); printed without a trace."""


def build_variant(weights: Path, name: str) -> Any:
    """The model of variant ``name`` loaded from ``weights`` (a pspnet weight directory)."""
    from pspnet.checkpoint import load_model
    from pspnet.models.fuse import optimize_for_inference

    if name == "fp32-eager":
        return load_model(weights)
    if name == "fp32-folded-cl":
        return optimize_for_inference(load_model(weights), precision="fp32", channels_last=True)
    if name == "bf16":
        return load_model(weights, precision="bf16")
    if name == "fp32-compile":
        return optimize_for_inference(load_model(weights), precision="fp32", channels_last=True,
                                      compile=True)
    if name == "bf16-compile":
        return load_model(weights, precision="bf16", compile=True)
    raise FastPathError(f"--variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def _samples(args: argparse.Namespace) -> tuple[list[Any], str]:
    """The evaluation samples and a description of where they came from."""
    from pspnet.data.datasets import camvid_samples, list_file_samples

    if bool(args.data_root) != bool(args.list):
        raise FastPathError("--data-root and --list go together (a list of `image label` lines "
                            "relative to the root); give both, or neither for CamVid")
    if args.data_root:
        root, lst = Path(args.data_root), Path(args.list)
        if not root.is_dir():
            raise FastPathError(f"--data-root {root} is not a folder")
        return list_file_samples(root, lst), f"{lst} (root {root})"
    try:
        root = require_camvid((args.split,), default=DEFAULT_CAMVID)
    except CamVidNotFoundError as e:
        raise FastPathError(f"{e} Or give --data-root DIR --list FILE.") from None
    return camvid_samples(root, args.split), f"CamVid {args.split} split ({root})"


def evaluate_variants(
    weights: Path,
    samples: Sequence[Any],
    variants: Sequence[str],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every variant on ``samples``, image by image in turn.

    Args:
        weights: A pspnet weight directory.
        samples: Labelled samples (:class:`pspnet.data.Sample`).
        variants: Variant names; ``fp32-eager`` is added first when missing.
        progress: Print one line per 10 % of the images.

    Returns:
        ``{"images", "num_classes", "class_names", "variants": {name: {...}}}`` with, per
        variant, ``miou`` (fraction), ``iou`` (per class), ``delta_points`` (vs fp32 eager),
        ``agreement`` (share of pixels with fp32 eager's label), ``sec_per_image`` (median
        after the first image), ``sec_first_image`` and ``compile_s``.
    """
    import torch

    from pspnet.data.datasets import SegmentationDataset
    from pspnet.engine.metrics import ConfusionMatrix
    from pspnet.inference import normalise_images, predict

    order = [REFERENCE, *[v for v in variants if v != REFERENCE]]
    models = {name: build_variant(weights, name) for name in order}
    meta = models[REFERENCE].meta
    k = meta.model.num_classes
    align = bool(meta.model.align_corners)
    ds = SegmentationDataset(list(samples), k, ignore_index=meta.ignore_index)
    cms = {v: ConfusionMatrix(k, ignore_index=meta.ignore_index) for v in order}
    same = dict.fromkeys(order, 0)
    times: dict[str, list[float]] = {v: [] for v in order}
    pixels = 0
    step = max(1, len(ds) // 10)
    with torch.inference_mode():
        for i in range(len(ds)):
            item = ds[i]
            x = normalise_images(item["image"][None], meta.preprocess)  # (1, 3, H, W)
            label = item["label"][None]
            ref = None
            for v in order:
                t0 = time.perf_counter()
                pred = predict(models[v], x, mode="whole", num_classes=k,
                               align_corners=align).argmax(dim=1)  # (1, H, W)
                times[v].append(time.perf_counter() - t0)
                cms[v].update(pred, label)
                ref = pred if ref is None else ref
                same[v] += int((pred == ref).sum())
            pixels += label.numel()
            if progress and ((i + 1) % step == 0 or i + 1 == len(ds)):
                print(f"  {i + 1}/{len(ds)} images", flush=True)
    out: dict[str, Any] = {}
    base = cms[REFERENCE].compute()
    for v in order:
        m = cms[v].compute()
        timed = times[v][1:] or times[v]
        out[v] = {
            "what": VARIANTS[v], "miou": float(m.miou), "iou": [float(x) for x in m.iou],
            "all_acc": float(m.all_acc), "delta_points": 100 * (float(m.miou) - float(base.miou)),
            "agreement": same[v] / max(1, pixels), "sec_per_image": statistics.median(timed),
            "sec_mean": statistics.fmean(timed), "sec_first_image": times[v][0],
            "compile_s": round(float(getattr(models[v], "compile_seconds", 0.0)), 1),
        }
    return {"images": len(ds), "num_classes": k, "variants": out,
            "class_names": list(meta.classes) if meta.classes else None,
            "weights_source": meta.source}


def _emulated(variant: str, native_bf16: bool) -> bool:
    return variant.startswith("bf16") and not native_bf16


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown page of a :func:`run` result."""
    lines = ["# Inference fast paths: accuracy against fp32", ""]
    if doc["limit"] is not None:
        lines += [f"**Smoke test on {doc['images']} of {doc['split_images']} images "
                  "(--limit): not a result.**", ""]
    lines += [
        f"Weights `{doc['weights']}` ({doc['weights_source']}); data: {doc['data']}, "
        f"{doc['images']} images, whole image at the original size, single scale, no flip, "
        "ignore label left out. Regenerate with:",
        "",
        "```sh",
        doc["command"],
        "```",
        "",
        f"Commit `{doc['commit']}`; machine: {format_machine(doc['machine'])}.",
        "",
        f"| variant | what | mIoU (%) | Δ vs fp32 (points) | pixels with fp32's label | "
        f"s / image (median) | compile s | target: abs(Δ) <= {TARGET_POINTS} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    native = bool(doc["machine"].get("native_bf16"))
    for name, r in doc["variants"].items():
        target = ("reference" if name == REFERENCE
                  else "meets" if r["meets_target"] else "**misses**")
        sec = f"{r['sec_per_image']:.3f}" + (" (emulated bf16)" if _emulated(name, native) else "")
        lines.append(
            f"| `{name}` | {r['what']} | {100 * r['miou']:.2f} | {r['delta_points']:+.3f} | "
            f"{100 * r['agreement']:.3f}% | {sec} | {r['compile_s'] or ''} | {target} |")
    lines += ["", "Δ: mIoU of the variant minus fp32 eager's, in points. Pixels with fp32's "
              "label: share of all pixels (ignored ones included) predicted the same class as fp32 "
              "eager. Seconds: forward pass and argmax only, median over the images after the "
              "first (a warm-up; compiled variants compile there)."]
    if any(_emulated(n, native) for n in doc["variants"]):
        lines += ["", "This CPU has no native bf16 (no AVX512-BF16 / AMX): bf16 is emulated, so "
                  "its accuracy is what a bf16 machine computes but its time is **not a speed "
                  "claim** (emulation is several times slower than fp32)."]
    lines += ["", f"Verdict: {doc['verdict']}", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Evaluate, write ``<out>.json`` and ``<out>.md``; returns the JSON document."""
    from pspnet.precision import cpu_has_native_bf16

    weights = Path(args.weights)
    if not (weights / "config.json").is_file():
        raise FastPathError(f"--weights {weights} is not a pspnet weight directory (no "
                            "config.json); give e.g. work_dirs/camvid_2h/best")
    variants = list(dict.fromkeys([*args.variants, *(COMPILE_VARIANTS if args.compile else ())]))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise FastPathError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.limit is not None and args.limit < 1:
        raise FastPathError(f"--limit must be at least 1, got {args.limit}")
    samples, where = _samples(args)
    total = len(samples)
    if args.limit is not None:
        samples = samples[: args.limit]
    native = cpu_has_native_bf16()
    print(f"evaluating {len(samples)} images of {where} with {', '.join(variants)}"
          + ("" if native else " (bf16 emulated on this CPU: its time is not a speed claim)"),
          flush=True)
    t0 = time.perf_counter()
    res = evaluate_variants(weights, samples, variants, progress=not args.quiet)
    for name, r in res["variants"].items():
        r["meets_target"] = abs(r["delta_points"]) <= TARGET_POINTS
        r["bf16_emulated"] = _emulated(name, native)
    fast = {n: r for n, r in res["variants"].items() if n != REFERENCE}
    worst = max(fast.items(), key=lambda kv: abs(kv[1]["delta_points"]), default=None)
    if worst is None:
        verdict = "only fp32 eager was evaluated"
    elif all(r["meets_target"] for r in fast.values()):
        verdict = (f"every fast path is within {TARGET_POINTS} mIoU points of fp32 (largest "
                   f"difference {worst[1]['delta_points']:+.3f}, `{worst[0]}`)")
    else:
        missed = ", ".join(f"`{n}` {r['delta_points']:+.3f}" for n, r in fast.items()
                           if not r["meets_target"])
        verdict = f"target missed: {missed} points (more than {TARGET_POINTS} from fp32)"
    doc = {
        "weights": display_path(weights, REPO), "data": where, "images": res["images"],
        "split_images": total, "limit": args.limit, "num_classes": res["num_classes"],
        "class_names": res["class_names"], "weights_source": res["weights_source"],
        "protocol": "whole image at original size, single scale, no flip; ignore label skipped",
        "target_points": TARGET_POINTS, "verdict": verdict, "variants": res["variants"],
        "seconds": round(time.perf_counter() - t0, 1),
        "command": shlex.join(["python", "bench/fast_path.py", *argv]),
        "commit": git_commit(REPO), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(render_markdown(doc))
    for name, r in res["variants"].items():
        print(f"{name:<15} mIoU {100 * r['miou']:6.2f}  Δ {r['delta_points']:+.3f}  agreement "
              f"{100 * r['agreement']:.3f}%  {r['sec_per_image']:.3f} s/image"
              + ("  (emulated bf16)" if r["bf16_emulated"] else ""))
    print(f"verdict: {verdict}\nwrote {json_path} and {md_path}")
    return doc


#: --speed variants -> what each runs (batch 1; the fast paths in --precision, eager in fp32).
SPEED_VARIANTS: dict[str, str] = {
    "eager": "fp32 eager network, model(x)['out'] (the reference)",
    "network": "folded network compiled alone (inductor freezing), called on the prepared tensor",
    "labels": "load_model(compile=True) + predict_labels (predict / evaluate / serve)",
    "logits": "load_model(compile=True), model(x)['out'] (float32 NCHW logits)",
    "full_labels": "the labels path of 2026-12-05: the compiled network's full-size logits, "
                   "then max(dim=1).indices",
    "before": "the labels path before: float32 NCHW copy after the graph, softmax, sum, argmax",
}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_added_mib(fn: Any) -> float:
    """Peak resident memory one call of ``fn`` adds to the process (MiB; Linux /proc)."""
    from pspnet.benchmark.timing import peak_rss_mib, reset_peak_rss

    before = _rss_mib()
    reset_peak_rss()
    fn()
    return (peak_rss_mib() or 0.0) - before


def speed_fns(arch: str, size: int, classes: int, tmp: Path,
              precision: str = "fp32") -> dict[str, Any]:
    """The --speed variants as zero-argument callables on one random network and input.

    ``precision="bf16"``: the network alone is the folded network in bf16 channels-last, called
    on a bf16 channels-last tensor prepared beforehand (the issue's 232 ms case on AMX), and
    ``load_model`` is asked for bf16; ``eager`` stays the fp32 eager reference."""
    import torch

    from pspnet.checkpoint import WeightsMeta, load_model, save_weights
    from pspnet.inference import predict_labels
    from pspnet.models.fuse import _freezing, fold_batchnorm
    from pspnet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(arch, classes, aux=False).eval()
    save_weights(model, tmp / "w", WeightsMeta(model=model.config))
    fast = load_model(tmp / "w", compile=True, precision=precision)
    folded = fold_batchnorm(model)
    x = torch.randn(1, 3, size, size)
    x_net = x
    if precision == "bf16":
        folded = folded.to(torch.bfloat16).to(memory_format=torch.channels_last)
        x_net = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    network = torch.compile(folded, dynamic=False)

    def run_network() -> Any:
        with torch.inference_mode(), _freezing(True):
            return network(x_net)["out"]

    def run_eager() -> Any:
        with torch.inference_mode():
            return model(x)["out"]

    def run_labels() -> Any:
        with torch.inference_mode():
            return predict_labels(fast, x)

    def run_before() -> Any:  # the previous InferenceModel.forward + predict + argmax
        with torch.inference_mode():
            out = fast.native_logits(x).float().contiguous()
            total = torch.zeros_like(out)
            total += out.softmax(dim=1)
            return total.argmax(dim=1)

    def run_full_labels() -> Any:  # before labels were found at the coarse resolution
        with torch.inference_mode():
            return fast.native_logits(x).max(dim=1).indices

    return {"eager": run_eager, "network": run_network, "labels": run_labels,
            "logits": lambda: fast(x)["out"], "full_labels": run_full_labels,
            "before": run_before}


def speed(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """--speed: time the variants in turn, write ``<out>.json`` / ``<out>.md``."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        fns = speed_fns(args.arch, args.size, args.classes, Path(tmp), args.precision)
        t0 = time.perf_counter()
        for fn in fns.values():  # warm-up: compiles each graph once
            fn()
        warm_s = time.perf_counter() - t0
        peak = {name: _peak_added_mib(fn) for name, fn in fns.items()}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():  # in turn: host noise hits every variant alike
                t1 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t1)
    med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    rows = {n: {"what": SPEED_VARIANTS[n], "ms_median": med[n], "ms_all": [1e3 * t for t in
            times[n]], "vs_eager": med["eager"] / med[n], "vs_network": med[n] / med["network"],
            "peak_added_mib": peak[n]} for n in fns}
    doc = {"arch": args.arch, "size": args.size, "classes": args.classes,
           "precision": args.precision, "repeats": args.repeats, "threads": torch.get_num_threads(),
           "warmup_s": round(warm_s, 1), "variants": rows,
           "command": shlex.join(["python", "bench/fast_path.py", *argv]),
           "commit": git_commit(REPO), "machine": machine_info(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    lines = [f"{args.arch} {args.size}x{args.size}, {args.classes} classes, batch 1, "
             f"{args.precision} (eager: fp32), {args.repeats} rounds in turn; machine: {format_machine(doc['machine'])}", "",
             "| variant | what | ms (median) | vs fp32 eager | time / network alone | "
             "peak memory added (MiB) |", "|---|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| `{n}` | {r['what']} | {r['ms_median']:.0f} | {r['vs_eager']:.2f}x | "
                     f"{r['vs_network']:.3f} | {r['peak_added_mib']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


def build_parser() -> argparse.ArgumentParser:
    """The ``bench/fast_path.py`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python bench/fast_path.py",
        description="mIoU, label agreement and time of the inference fast paths vs fp32.",
        epilog=f"The CamVid copy is read from ${CAMVID_ENV} or {DEFAULT_CAMVID}.",
    )
    p.add_argument("--weights", help="a pspnet weight directory (e.g. "
                   "work_dirs/camvid_2h/best); required unless --speed")
    p.add_argument("--speed", action="store_true", help="time the path around the network "
                   "instead (random weights, no data; see --arch, --size, --classes, --repeats)")
    p.add_argument("--arch", default="pspnet50", help="--speed: architecture (default pspnet50)")
    p.add_argument("--size", type=int, default=473, help="--speed: input side (default 473)")
    p.add_argument("--classes", type=int, default=150, help="--speed: classes (default 150)")
    p.add_argument("--repeats", type=int, default=5, help="--speed: rounds (default 5)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="--speed: precision of the fast paths (default fp32; eager stays fp32)")
    p.add_argument("--data-root", help="root of --list's paths (default: CamVid)")
    p.add_argument("--list", help="list file of `image label` lines (with --data-root)")
    p.add_argument("--split", default="test", help="CamVid split when no --list (default test)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help=f"of {', '.join(VARIANTS)} (fp32-eager is always run)")
    p.add_argument("--compile", action="store_true", help="also the torch.compile variants")
    p.add_argument("--limit", type=int, help="only the first N images (a smoke test)")
    p.add_argument("--out", default=None,
                   help="output prefix: <out>.json and <out>.md (default docs/bench/fast_path)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; 0 on success, 2 on a problem the message explains."""
    from pspnet.checkpoint import CheckpointError
    from pspnet.data.datasets import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = str(DEFAULT_OUT) + ("_speed" if args.speed else "") + (
            "_bf16" if args.speed and args.precision == "bf16" else "")
    try:
        if args.speed:
            speed(args, argv)
        elif not args.weights:
            raise FastPathError("--weights is required (a pspnet weight directory), or give "
                                "--speed to time the path around a random network")
        else:
            run(args, argv)
    except (FastPathError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
