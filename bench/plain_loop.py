"""A plain training loop to hold the project's defaults against, on any list-file data set.

The baseline of issue 18: no choices beyond the obvious ones, written as plainly as
torchvision's reference segmentation script, so that ``pspnet train``'s defaults are always
measured against it on the same machine in the same minutes. Only the network and the file
readers come from pspnet; augmentation, loss, schedule and evaluation are written out here.

Recipe: ``pspnet_r18`` (output stride 8, head 256 / aux 128), SGD (momentum 0.9, weight decay
1e-4, lr 0.02, 10x on the head), poly 0.9 over the *time* budget (the learning rate follows the
elapsed fraction of the minutes, so the schedule ends when the budget does), random scale
0.75-1.5, horizontal flip, crop 320 (padded with the ignore label), batch 8, bf16 autocast
where the CPU has native bf16 (else fp32), cross-entropy with aux weight 0.4, no class weights.
Evaluation: whole image at the original size, one confusion matrix, mIoU and pixel accuracy::

    python bench/plain_loop.py --root DATA --train-list train.txt --eval-list test.txt \\
        --classes DATA/classes.txt --minutes 30 --out plain.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pspnet import create_model
from pspnet.data.classes import read_class_file
from pspnet.data.samples import list_file_samples
from pspnet.precision import autocast, cpu_has_native_bf16

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
IGNORE = 255


def load_pair(sample) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(sample.image).convert("RGB"), np.float32)
    label = np.asarray(Image.open(sample.label), np.uint8)
    return image, label


def augment(image: np.ndarray, label: np.ndarray, crop: int, rng: random.Random):
    """Random scale 0.75-1.5, flip, pad to the crop with the ignore label, random crop."""
    s = rng.uniform(0.75, 1.5)
    h, w = label.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.BILINEAR),
                     np.float32)
    lab = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    ph, pw = max(crop - lab.shape[0], 0), max(crop - lab.shape[1], 0)
    img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=0)
    lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE)
    y, x = rng.randint(0, lab.shape[0] - crop), rng.randint(0, lab.shape[1] - crop)
    return img[y:y + crop, x:x + crop], lab[y:y + crop, x:x + crop]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((image - MEAN) / STD).transpose(2, 0, 1).copy())  # HWC -> CHW


def train(model, samples, args, precision: str) -> dict:
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    base = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    opt = torch.optim.SGD([{"params": base, "lr": args.lr}, {"params": head, "lr": args.lr * 10}],
                          lr=args.lr, momentum=0.9, weight_decay=1e-4)
    rng, budget, start, step = random.Random(args.seed), args.minutes * 60, time.time(), 0
    cache = [load_pair(s) for s in samples]  # the data sets this loop is for fit in memory
    model.train()
    while (frac := (time.time() - start) / budget) < 1.0:
        for group, lr in zip(opt.param_groups, (args.lr, args.lr * 10)):
            group["lr"] = lr * (1 - frac) ** 0.9
        batch = [augment(*cache[rng.randrange(len(cache))], args.crop, rng)
                 for _ in range(args.batch_size)]
        x = torch.stack([to_tensor(img) for img, _ in batch])
        y = torch.from_numpy(np.stack([lab for _, lab in batch]).astype(np.int64))
        with autocast(torch.device("cpu"), precision):
            out = model(x)
        loss = F.cross_entropy(out["out"].float(), y, ignore_index=IGNORE)
        loss = loss + 0.4 * F.cross_entropy(out["aux"].float(), y, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step}  loss {loss.item():.3f}  {frac:.0%} of the budget", flush=True)
    return {"steps": step, "epochs": step * args.batch_size / len(samples),
            "train_s": time.time() - start}


@torch.no_grad()
def evaluate(model, samples, num_classes: int, precision: str) -> dict:
    model.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for s in samples:
        image, label = load_pair(s)
        with autocast(torch.device("cpu"), precision):
            logits = model(to_tensor(image)[None])["out"]
        pred = logits.float().argmax(1)[0].numpy()
        keep = label < num_classes
        confusion += np.bincount(label[keep].astype(np.int64) * num_classes + pred[keep],
                                 minlength=num_classes**2).reshape(num_classes, num_classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {"mIoU": float(np.nanmean(iou)), "pixel_acc": float(inter.sum() / confusion.sum()),
            "iou": [float(v) for v in iou]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="data root the list files are relative to")
    p.add_argument("--train-list", required=True)
    p.add_argument("--eval-list", required=True)
    p.add_argument("--classes", required=True, help="class-name file")
    p.add_argument("--minutes", type=float, required=True, help="training time budget")
    p.add_argument("--crop", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = read_class_file(args.classes).names
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    model = create_model("pspnet_r18", len(names), output_stride=8, head_channels=256,
                         aux_channels=128)
    result = {"recipe": "plain_loop", "minutes": args.minutes, "precision": precision,
              "torch_threads": torch.get_num_threads()}
    result |= train(model, list_file_samples(args.root, args.train_list), args, precision)
    result |= evaluate(model, list_file_samples(args.root, args.eval_list), len(names), precision)
    print(json.dumps({k: v for k, v in result.items() if k != "iou"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
