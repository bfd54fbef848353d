"""Compute the golden PSPNet logits with the authors' own code (run once, by hand).

Usage:
    python bench/make_golden.py --semseg-dir /path/to/hszhao/semseg --out tests/fixtures/semseg_golden.npz

``--semseg-dir`` is a checkout of https://github.com/hszhao/semseg (master, 4f274c3 was used);
it is imported from there and never copied into this repository. The script fills their PSPNet
with the deterministic weights of ``tests/golden.py`` (through the authors' key layout, loaded
with ``strict=True`` so every tensor lands), runs it in eval mode on deterministic inputs, and
stores the logits on a stride-8 grid plus whole-tensor statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from golden import deterministic_images, fill_deterministic, to_semseg_layout  # noqa: E402

import pspnet  # noqa: E402

CASES = [
    ("pspnet50", 50, (1, 3, 473, 473)),
    ("pspnet50", 50, (1, 3, 377, 473)),
    ("pspnet101", 101, (1, 3, 473, 473)),
]
NUM_CLASSES = 5
SEED = 0
STEP = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--semseg-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(args.semseg_dir))
    from model.pspnet import PSPNet as AuthorsPSPNet  # type: ignore[import-not-found]

    torch.set_grad_enabled(False)
    arrays: dict[str, np.ndarray] = {}
    for arch, layers, shape in CASES:
        ours = pspnet.create_model(arch, NUM_CLASSES)
        sd = fill_deterministic(ours, SEED)
        theirs = AuthorsPSPNet(layers=layers, classes=NUM_CLASSES, zoom_factor=8, pretrained=False)
        theirs.load_state_dict(to_semseg_layout(sd, prefix=""), strict=True)
        theirs.eval()
        x = deterministic_images(shape, seed=1)
        ref = theirs(x)
        key = f"{arch}_{shape[2]}x{shape[3]}"
        arrays[key + "_grid"] = ref[:, :, ::STEP, ::STEP].numpy().astype(np.float32)
        arrays[key + "_stats"] = np.array(
            [ref.mean().item(), ref.abs().mean().item(), ref.abs().max().item()], dtype=np.float64
        )
        ours.eval()
        mine = ours(x)["out"]
        rel = ((mine - ref).abs().max() / ref.abs().max()).item()
        print(f"{key}: max |logit| {ref.abs().max().item():.3f}  ours vs authors max rel diff {rel:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, step=np.array(STEP), seed=np.array(SEED), **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
