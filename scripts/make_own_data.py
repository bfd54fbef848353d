"""Write a folder of "own data" as a labelling tool exports it: JPEG photos, colour masks, a class
file with R G B columns. docs/usage/own-data.md is followed on it.

    .venv/bin/python scripts/make_own_data.py my_data            # 48 photos, 240x320, seed 0
    .venv/bin/python scripts/make_own_data.py my_data --count 100 --seed 1

Writes::

    my_data/photos/IMG_0000.jpg ...   RGB photos (JPEG, quality 90)
    my_data/masks/IMG_0000.png ...    colour masks: each pixel the colour of its class, an
                                      unlabelled border in black (0 0 0)
    my_data/classes.txt               "index<TAB>name<TAB>R G B", and "255<TAB>void<TAB>0 0 0"

The pictures are pspnet's generated scenes (``pspnet.data.scenes``), so nothing is downloaded,
labelled with five classes of one's own: sky, water, road, grass and vessel (the scenes' boat
and car are one class here). The demo's models know six (boat and car apart), so fine-tuning
one of them on this folder changes the class count, as fine-tuning a public model on one's own
classes does. Photos and masks pair by file stem, as with one's own folders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.data.scenes import BOAT, SCENES_CLASSES, SCENES_PALETTE, render_scene

#: The folder's classes: the scenes' first four, then boat and car as one.
CLASSES = (*SCENES_CLASSES[:BOAT], "vessel")
#: Class of each scene label value (boat and car both become vessel).
TO_OWN = np.array([*range(BOAT), BOAT, BOAT], dtype=np.uint8)  # boat (4) and car (5) -> 4
#: The colour of unlabelled pixels in the masks (labelling tools leave edges unlabelled).
VOID_RGB = (0, 0, 0)
#: Width in pixels of the unlabelled border of every mask.
BORDER = 3


def write_own_data(out: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Write ``count`` photo/mask pairs of ``size`` (height, width) and ``classes.txt``.

    Raises:
        FileExistsError: ``out`` already holds photos or masks.
    """
    photos, masks = out / "photos", out / "masks"
    for d in (photos, masks):
        if d.is_dir() and any(d.iterdir()):
            raise FileExistsError(f"{d} is not empty; choose another folder or delete it")
        d.mkdir(parents=True, exist_ok=True)
    palette = np.asarray(SCENES_PALETTE, dtype=np.uint8)[: len(CLASSES)]  # vessel: boat's colour
    if any(tuple(c) == VOID_RGB for c in palette.tolist()):  # pragma: no cover - a fixed table
        raise ValueError("a class colour equals the void colour")
    for i, rng in enumerate(np.random.default_rng(seed).spawn(count)):
        image, label = render_scene(rng, size)
        mask = palette[TO_OWN[label]]  # (H, W, 3): the class colours
        mask[:BORDER], mask[-BORDER:] = VOID_RGB, VOID_RGB
        mask[:, :BORDER], mask[:, -BORDER:] = VOID_RGB, VOID_RGB
        Image.fromarray(image).save(photos / f"IMG_{i:04d}.jpg", quality=90)
        Image.fromarray(mask).save(masks / f"IMG_{i:04d}.png")
    lines = [f"{i}\t{name}\t{r} {g} {b}"
             for i, (name, (r, g, b)) in enumerate(zip(CLASSES, palette.tolist()))]
    lines.append(f"255\tvoid\t{VOID_RGB[0]} {VOID_RGB[1]} {VOID_RGB[2]}")
    (out / "classes.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--count", type=int, default=48, help="photo/mask pairs (default 48)")
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                   help="picture height and width (default 240 320)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes (default 0)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    try:
        write_own_data(args.out, args.count, (args.size[0], args.size[1]), args.seed)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.count} photos in {args.out / 'photos'}, colour masks in {args.out / 'masks'}, "
          f"classes in {args.out / 'classes.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
