"""Effective receptive field (ERF) of the demo's networks: how far does an output pixel look?

The dilated ResNet-18 at output stride 8 has a *theoretical* receptive field of several hundred
pixels, but most of its sensitivity lies much closer (Luo et al. 2016, "Understanding the
effective receptive field"). This script measures that reach: the absolute gradient of one
pixel's logit with respect to the input image, summed over the three colour channels, normalised
to unit mass per sample and averaged over samples; reported as the radius around the pixel that
holds 50 / 95 / 99 % of the gradient mass.

Two kinds of input:

* ``noise``: standard-normal images (already "normalised"), the output pixel at the centre, the
  logit of the class the network predicts there;
* ``scenes``: demo scenes (:func:`pspnet.data.scenes.render_scene`) normalised as in training, the
  output pixel at the vessel pixel nearest the vessel's centroid; targets: the logit of the true
  class (``logit``) and the boat-minus-car margin (``boat-car``), the decision context must make.

Measured twice: for the freshly initialised network and after ``--train-steps`` steps of the demo's
recipe (``pspnet_r18``, head 128 / aux 64, lr 0.02, batch ``--batch-size``, crop ``--train-size``)
on demo scenes. Example (docs/receptive_field.md)::

    python bench/receptive_field.py --size 256 --samples 3 --train-steps 40 --out rf.jsonl
    python bench/receptive_field.py --size 512 --samples 2 --train-steps 40 \
        --weights work_dirs/receptive_field/fcn_s0_40/final --out rf.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet.config import Config
from pspnet.data.scenes import BOAT, CAR, SCENES_CLASSES, generate_scenes, render_scene
from pspnet.models.registry import create_model

QUANTILES = (0.5, 0.95, 0.99)
#: ImageNet mean/std on the 0..255 scale (the models' default preprocessing).
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def gradient_map(model: torch.nn.Module, image: torch.Tensor, y: int, x: int,
                 target: str) -> np.ndarray:
    """|d target / d input| summed over channels, normalised to sum 1; (H, W) float64.

    Args:
        model: A PSPNet in eval mode.
        image: (1, 3, H, W) normalised input.
        y: Row of the output pixel.
        x: Column of the output pixel.
        target: ``"argmax"`` (logit of the predicted class), ``"class:<k>"`` (logit of class k)
            or ``"boat-car"`` (logit of boat minus logit of car).
    """
    inp = image.detach().clone().requires_grad_(True)
    logits = model(inp)["out"][0, :, y, x]  # (K,)
    if target == "argmax":
        value = logits[int(logits.argmax())]
    elif target.startswith("class:"):
        value = logits[int(target.split(":")[1])]
    elif target == "boat-car":
        value = logits[BOAT] - logits[CAR]
    else:
        raise ValueError(f"target must be argmax, class:<k> or boat-car, got {target!r}")
    (grad,) = torch.autograd.grad(value, inp)
    g = grad[0].abs().sum(0).double().numpy()  # (H, W)
    total = g.sum()
    return g / total if total > 0 else g


#: Distances (px) at which the share of gradient mass lying farther away is reported.
BEYOND = (24, 48, 64, 96, 128)


def radii(mass: np.ndarray, y: int, x: int, quantiles=QUANTILES) -> dict[str, float]:
    """Smallest Euclidean radius around (y, x) holding each quantile of ``mass`` (sums to 1),
    and the share of the mass farther than each of :data:`BEYOND` (``beyond48``...)."""
    h, w = mass.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - y, xx - x).ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(mass.ravel()[order])
    out = {f"r{round(q * 100)}": float(d[order][min(np.searchsorted(cum, q * cum[-1]), d.size - 1)])
           for q in quantiles}
    total = mass.sum()
    for b in BEYOND:
        out[f"beyond{b}"] = round(float(mass.ravel()[d > b].sum() / total), 4)
    return out


def _to_input(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    return (t - MEAN) / STD


def _object_point(label: np.ndarray) -> tuple[int, int] | None:
    """The vessel pixel nearest the centroid of all vessel pixels (None when there is none)."""
    ys, xs = np.nonzero((label == BOAT) | (label == CAR))
    if ys.size == 0:
        return None
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[i]), int(xs[i])


def measure(model: torch.nn.Module, size: int, samples: int, seed: int) -> dict[str, Any]:
    """ERF radii on ``samples`` noise inputs and ``samples`` scenes of ``size`` px."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    c = size // 2
    noise = [gradient_map(model, torch.randn(1, 3, size, size, generator=gen), c, c, "argmax")
             for _ in range(samples)]
    out: dict[str, Any] = {"noise": radii(np.mean(noise, 0), c, c)}
    per_target: dict[str, list[np.ndarray]] = {"logit": [], "boat-car": []}
    centred: dict[str, list[np.ndarray]] = {"logit": [], "boat-car": []}
    i = 0
    while len(per_target["logit"]) < samples:
        image, label = render_scene(np.random.default_rng([seed, 99, i]), (size, size))
        i += 1
        point = _object_point(label)
        if point is None:
            continue
        y, x = point
        inp = _to_input(image)
        for name, target in (("logit", f"class:{int(label[y, x])}"), ("boat-car", "boat-car")):
            g = gradient_map(model, inp, y, x, target)
            per_target[name].append(radii(g, y, x))
            # Shift each map so its pixel sits at the centre of a 2x canvas, then average.
            canvas = np.zeros((2 * size, 2 * size))
            canvas[size - y : 2 * size - y, size - x : 2 * size - x] = g
            centred[name].append(canvas)
    for name in per_target:
        out[f"scenes_{name}"] = radii(np.mean(centred[name], 0), size, size)
    return out


def context_share(model: torch.nn.Module, size: int, gap: int, samples: int,
                  seed: int) -> dict[str, float]:
    """On context-mode scenes: where the boat-minus-car margin's gradient mass lies.

    The output pixel is the vessel pixel nearest the vessels' centroid; the mass is split into
    context band, vessels, rocks and field (the neutral region), averaged over ``samples``.
    """
    from pspnet.data.context_scenes import FIELD, ROCK, render_context_scene
    from pspnet.data.scenes import ROAD, WATER

    model.eval()
    shares = []
    for i in range(samples):
        image, label = render_context_scene(np.random.default_rng([seed, 98, i]), (size, size),
                                            gap=gap)
        y, x = _object_point(label)  # every context scene holds a vessel
        g = gradient_map(model, _to_input(image), y, x, "boat-car")
        shares.append([g[(label == WATER) | (label == ROAD)].sum(),
                       g[(label == BOAT) | (label == CAR)].sum(), g[label == ROCK].sum(),
                       g[label == FIELD].sum()])
    mean = np.mean(shares, 0)
    return {k: round(float(v), 4) for k, v in zip(("context", "vessels", "rocks", "field"), mean)}


def short_training(steps: int, size: int, batch: int, seed: int, work: Path) -> torch.nn.Module:
    """Train the demo's FCN for ``steps`` iterations on demo scenes; return the trained model."""
    from pspnet.checkpoint import load_model
    from pspnet.engine.train import train

    data = generate_scenes(work / f"scenes_{size}", n_train=200, n_val=4, size=(size, size),
                           seed=0, progress=False)
    cfg = Config.from_dict({
        "model": {"arch": "pspnet_r18", "num_classes": len(SCENES_CLASSES), "head_channels": 128,
                  "aux_channels": 64, "use_ppm": False},
        "data": {"root": str(data), "train_list": str(data / "train.txt"),
                 "val_list": str(data / "val.txt"), "class_names": str(data / "classes.txt"),
                 "crop_size": size, "scale": [0.75, 1.25], "rotate": [-10, 10]},
        "optim": {"lr": 0.02},
        "train": {"work_dir": str(work / f"fcn_s{seed}_{steps}"), "max_iter": steps,
                  "batch_size": batch, "seed": seed, "val_interval": 0, "resume": "auto"},
    })  # fmt: skip
    result = train(cfg, progress=False)
    return load_model(result.final_dir)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _context_main(args: argparse.Namespace, rec: dict[str, Any], fresh: torch.nn.Module) -> int:
    from pspnet.checkpoint import load_model

    rec.update(mode="context_share", gap=args.context_gap)
    models = {"fresh": fresh, **{w: load_model(w) for w in (args.weights or "").split(",") if w}}
    for name, model in models.items():
        rec[name] = context_share(model, args.size, args.context_gap, args.samples, args.seed)
        print(name, json.dumps(rec[name]), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="input size of the measurement (px)")
    p.add_argument("--samples", type=int, default=4, help="inputs per kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=40, help="0: fresh network only")
    p.add_argument("--train-size", type=int, default=128, help="scene/crop size for training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", default=None,
                   help="measure this trained model (a weights dir) instead of training one; "
                   "with --context-gap: a comma-separated list")
    p.add_argument("--context-gap", type=int, default=None,
                   help="instead: the share of the boat-car gradient on the context band of "
                   "context-mode scenes with this gap (fresh network and --weights)")
    p.add_argument("--work-dir", default="work_dirs/receptive_field")
    p.add_argument("--out", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rec: dict[str, Any] = {"cpu": _cpu_name(), "size": args.size, "samples": args.samples,
                           "seed": args.seed, "train_steps": args.train_steps,
                           "train_size": args.train_size, "batch_size": args.batch_size}
    t0 = time.perf_counter()
    fresh = create_model("pspnet_r18", len(SCENES_CLASSES), use_ppm=False, head_channels=128,
                         aux_channels=64)
    if args.context_gap is not None:
        return _context_main(args, rec, fresh)
    rec["fresh"] = measure(fresh, args.size, args.samples, args.seed)
    print("fresh:", json.dumps(rec["fresh"]), flush=True)
    if args.weights or args.train_steps > 0:
        if args.weights:
            from pspnet.checkpoint import load_model

            model = load_model(args.weights)
            rec["weights"] = args.weights
        else:
            model = short_training(args.train_steps, args.train_size, args.batch_size,
                                   args.seed, Path(args.work_dir))
        rec["trained"] = measure(model, args.size, args.samples, args.seed)
        print("trained:", json.dumps(rec["trained"]), flush=True)
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
