"""Does the context-mode scene design separate PSPNet from the dilated FCN? A short, measured check.

Trains the demo's two models (``pspnet_r18`` at output stride 8, head 128 / aux 64, lr 0.02;
``use_ppm`` False = dilated FCN, True = PSPNet bins 1,2,3,6) for a fixed number of iterations on
context-mode scenes (:mod:`pspnet.data.context_scenes`), for each seed, and evaluates them on the
validation scenes (whole image). Scale augmentation only shrinks (``--scale-max 1``) so that a
crop never cuts the context band away (the class would then be undecidable). Restartable:
finished runs are kept in ``WORK/results.jsonl`` and skipped::

    python bench/context_check.py --size 128 --gap 48 --iters 90 --batch-size 4 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pspnet.data.context_scenes import CONTEXT_CLASSES
from pspnet.data.scenes import BOAT, CAR, generate_scenes

MODELS = {"fcn": False, "pspnet": True}


def _config(args: argparse.Namespace, data: Path, model: str, seed: int, work: Path):
    from pspnet.config import Config

    return Config.from_dict({
        "model": {"arch": "pspnet_r18", "num_classes": len(CONTEXT_CLASSES), "head_channels": 128,
                  "aux_channels": 64, "use_ppm": MODELS[model]},
        "data": {"root": str(data), "train_list": str(data / "train.txt"),
                 "val_list": str(data / "val.txt"), "class_names": str(data / "classes.txt"),
                 "crop_size": args.size, "scale": [args.scale_min, args.scale_max],
                 "rotate": [-10, 10]},
        "optim": {"lr": args.lr},
        "train": {"work_dir": str(work / "runs" / _run_name(args, model, seed)),
                  "max_iter": args.iters, "batch_size": args.batch_size, "seed": seed,
                  "val_interval": 0, "resume": "auto", "threads": args.threads},
    })  # fmt: skip


def _run_name(args: argparse.Namespace, model: str, seed: int) -> str:
    return f"{model}_s{seed}_{args.iters}x{args.batch_size}"


def _vessel_accuracy(confusion: np.ndarray) -> float:
    """Of the pixels that are boat or car and predicted boat or car: the fraction named right."""
    sub = confusion[np.ix_([BOAT, CAR], [BOAT, CAR])].astype(np.float64)
    return float(np.trace(sub) / max(sub.sum(), 1.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--gap", type=int, default=48)
    p.add_argument("--iters", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--scale-min", type=float, default=0.75)
    p.add_argument("--scale-max", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default="work_dirs/context_check")
    args = p.parse_args(argv)

    from pspnet.checkpoint import load_model
    from pspnet.data.datasets import SegmentationDataset, list_file_samples
    from pspnet.engine.evaluate import evaluate_model
    from pspnet.engine.train import train

    work = Path(args.work_dir)
    data = generate_scenes(work / f"context_{args.size}_gap{args.gap}", n_train=args.n_train,
                           n_val=args.n_val, size=(args.size, args.size), seed=0,
                           progress=False, mode="context", gap=args.gap)
    val = SegmentationDataset(list_file_samples(data, data / "val.txt"), len(CONTEXT_CLASSES))
    results = work / "results.jsonl"
    done = set()
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["seed"], r["iters"], r["batch_size"], r["size"], r["gap"]))
    for seed in args.seeds:
        for model in args.models:
            if (model, seed, args.iters, args.batch_size, args.size, args.gap) in done:
                continue
            t0 = time.perf_counter()
            result = train(_config(args, data, model, seed, work), progress=False)
            metrics = evaluate_model(load_model(result.final_dir), val,
                                     num_classes=len(CONTEXT_CLASSES), progress=False)
            rec = {"model": model, "seed": seed, "iters": args.iters, "size": args.size,
                   "gap": args.gap, "batch_size": args.batch_size, "mIoU": metrics.miou,
                   "iou": {n: float(v) for n, v in zip(CONTEXT_CLASSES, metrics.iou)},
                   "vessel_acc": _vessel_accuracy(np.asarray(metrics.confusion)),
                   "train_s": round(result.elapsed_s, 1),
                   "wall_s": round(time.perf_counter() - t0, 1)}
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
