"""A procedural demo data set in which context, not appearance, decides the class.

The PSPNet paper motivates pyramid pooling with a boat that an FCN labels "car": the shape alone
is ambiguous, the water around it is not. This module renders such scenes from code (nothing is
downloaded), so the project can train, evaluate and *show* the effect of global context on a
laptop in minutes.

Each scene has a sky above a horizon and a ground *surface* below it, which is either water or a
road (never both), optionally with grass banks. One or two large "vessels" stand on the surface.
A vessel is drawn by the same code with the same random distribution whatever the surface: the
same hull-and-cabin shape family, the same colours, the same noise, the same placement. Only its
*label* depends on the surface: ``boat`` on water, ``car`` on a road. So the only way to tell a
boat pixel from a car pixel is to look far enough to see the surface, which, in the middle of a
large vessel, is well outside a small receptive field but within a global pooling bin.

Classes (:data:`SCENES_CLASSES`)::

    0 sky    1 water    2 road    3 grass    4 boat    5 car

Backgrounds are easy on purpose (distinct colours and textures), so that the interesting errors
are boat/car confusions.

Layout written by :func:`generate_scenes` (the authors' list format)::

    out_dir/
        images/{train,val}/00000.png     RGB
        labels/{train,val}/00000.png     palette PNG, pixel value = class index
        train.txt, val.txt               "images/train/00000.png labels/train/00000.png"
        classes.txt                      "index<TAB>name<TAB>R G B" (as for CamVid)
        manifest.json                    generation parameters (written last)
"""

from __future__ import annotations

import colorsys
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
from PIL import Image

from pspnet.data.palette import save_mask_png

__all__ = [
    "SCENES_CLASSES",
    "SCENES_PALETTE",
    "SKY",
    "WATER",
    "ROAD",
    "GRASS",
    "BOAT",
    "CAR",
    "render_scene",
    "generate_scenes",
    "MANIFEST_VERSION",
]


class ScenesMismatchError(FileExistsError):
    """The output folder holds scenes generated with other parameters (size, counts, seed)."""

#: Class names, indexed by label value.
SCENES_CLASSES: tuple[str, ...] = ("sky", "water", "road", "grass", "boat", "car")
SKY, WATER, ROAD, GRASS, BOAT, CAR = range(6)

#: Display colours (also the palette of the label PNGs and the colours in ``classes.txt``).
SCENES_PALETTE: np.ndarray = np.array(
    [
        [135, 190, 235],  # sky
        [20, 60, 160],  # water
        [90, 90, 90],  # road
        [60, 150, 50],  # grass
        [240, 140, 0],  # boat
        [200, 20, 60],  # car
    ],
    dtype=np.uint8,
)
SCENES_PALETTE.setflags(write=False)  # a shared constant: nobody may change it in place

#: Bumped whenever rendering changes, so an old directory is not mistaken for a current one.
MANIFEST_VERSION = 1

# Second entry of each sample's seed, so train and val never share a scene.
_SPLIT_CODE = MappingProxyType({"train": 0, "val": 1})


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    img = Image.fromarray(coarse).resize((gw * cell, gh * cell), Image.Resampling.BILINEAR)  # 'F'
    return np.asarray(img)[:h, :w]  # (h, w) float32


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian pixel noise; float32 draws are ~2x faster than the float64 default."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top = np.array([60, 120, 205]) + rng.integers(-15, 16, 3)
    low = np.array([175, 205, 235]) + rng.integers(-15, 16, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # (h, 1, 1)
    sky = top * (1 - t) + low * t + np.zeros((1, w, 1), np.float32)  # (h, w, 3)
    if rng.random() < 0.6:  # soft clouds: brighten towards white where the noise is high
        cloud = np.clip(_smooth_noise(rng, h, w, 24) * 1.6 - 0.6, 0.0, 1.0)[..., None]
        sky = sky * (1 - 0.7 * cloud) + 245.0 * 0.7 * cloud
    return sky + _noise(rng, (h, w, 3), 3.0)


def _water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([30, 75, 150]) + rng.integers(-12, 13, 3)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, 2 * np.pi, 2)
    waves = np.sin(2 * np.pi * y / period + 1.2 * np.sin(2 * np.pi * x / 37.0 + phase[0]))
    light = 14.0 * waves + 8.0 * _smooth_noise(rng, h, w, 16)  # (h, w)
    water = base + light[..., None] * np.array([0.6, 0.8, 1.0])
    return water + _noise(rng, (h, w, 3), 5.0)


def _road(rng: np.random.Generator, h: int, w: int, top: int) -> np.ndarray:
    grey = rng.uniform(85, 120)
    tint = rng.integers(-4, 5, 3)
    road = np.full((h, w, 3), grey, np.float32) + tint
    road += 6.0 * _smooth_noise(rng, h, w, 12)[..., None]
    road += _noise(rng, (h, w, 1), 9.0)  # grainy asphalt, same on all channels
    # Dashed lane markings (labelled road): one or two horizontal rows of dashes.
    paint = np.array([235, 230, 200]) if rng.random() < 0.5 else np.array([235, 200, 60])
    for _ in range(int(rng.integers(1, 3))):
        if h - top < 8:
            break
        y0 = int(rng.integers(top + 2, h - 3))
        thick = int(rng.integers(1, 3))
        dash, gap = int(rng.integers(6, 14)), int(rng.integers(5, 10))
        on = (np.arange(w) + int(rng.integers(0, dash + gap))) % (dash + gap) < dash
        road[y0 : y0 + thick, on] = paint
    return road


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([60, 135, 45]) + rng.integers(-12, 13, 3)
    blotch = 18.0 * _smooth_noise(rng, h, w, 8)[..., None] * np.array([0.6, 1.0, 0.5])
    return base + blotch + _noise(rng, (h, w, 3), 8.0)


# --------------------------------------------------------------------------------------------
# Vessels: the context-ambiguous object (boat on water, car on road)
# --------------------------------------------------------------------------------------------


def _vessel_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour away from sky/water blue, grass green and road grey."""
    hue = rng.uniform(-0.06, 0.15) if rng.random() < 0.7 else rng.uniform(0.78, 0.94)
    sat = rng.uniform(0.6, 0.95)
    val = rng.uniform(0.6, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val)) * 255.0


def _rounded_rect(h: int, w: int, r_top: float, r_bottom: float) -> np.ndarray:
    """Boolean (h, w) rounded rectangle; bottom corners can be rounder (a hull / a bumper)."""
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5  # (h, 1) pixel centres
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5  # (1, w)
    inside = np.ones((h, w), bool)
    for r, top in ((r_top, True), (r_bottom, False)):
        r = min(r, w / 2, h / 2)
        if r <= 0:
            continue
        cy = r if top else h - r
        in_rows = (y < cy) if top else (y > cy)
        for cx, in_cols in ((r, x < r), (w - r, x > w - r)):
            # Cut what lies in the corner square but outside the corner's circle.
            inside &= ~(in_rows & in_cols & ((y - cy) ** 2 + (x - cx) ** 2 > r * r))
    return inside


def _draw_vessel(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    cls: int,
    x0: int,
    bottom: int,
    body_w: int,
) -> None:
    """Paint one vessel in place. Nothing here depends on ``cls`` except the label value.

    Shape: a hull/body (rounded rectangle) with a cabin on top carrying a dark window band.
    """
    H, W = label.shape
    body_h = max(3, int(round(body_w * rng.uniform(0.25, 0.36))))
    cabin_h = max(2, int(round(body_h * rng.uniform(0.6, 1.0))))
    cabin_frac = rng.uniform(0.35, 0.6)
    cabin_w = max(2, int(round(body_w * cabin_frac)))
    cabin_x = x0 + int(round(body_w * rng.uniform(0.08, 0.92 - cabin_frac)))
    colour = _vessel_colour(rng)
    cabin_colour = colour * rng.uniform(0.7, 0.9)
    window = np.array([40.0, 40.0, 50.0]) + rng.uniform(-10, 10)
    trim = rng.random() < 0.5

    body_top = bottom - body_h
    cabin_top = body_top - cabin_h
    # Shape masks in the vessel's own box, then clipped to the image.
    body = _rounded_rect(body_h, body_w, r_top=body_h * 0.15, r_bottom=body_h * 0.45)
    cabin = _rounded_rect(cabin_h, cabin_w, r_top=cabin_h * 0.3, r_bottom=0.0)

    def paint(mask: np.ndarray, top: int, left: int, fill: np.ndarray, noise: float) -> None:
        mh, mw = mask.shape
        ya, yb = max(top, 0), min(top + mh, H)
        xa, xb = max(left, 0), min(left + mw, W)
        if ya >= yb or xa >= xb:
            return
        m = mask[ya - top : yb - top, xa - left : xb - left]
        region = image[ya:yb, xa:xb]
        region[m] = fill + _noise(rng, (int(m.sum()), 3), noise)
        label[ya:yb, xa:xb][m] = cls

    paint(cabin, cabin_top, cabin_x, cabin_colour, 5.0)
    # Window band: upper-middle of the cabin, inset from its sides.
    band = np.zeros((cabin_h, cabin_w), bool)
    inset = max(1, cabin_w // 7)
    b0 = int(cabin_h * 0.25)
    band[b0 : max(int(cabin_h * 0.65), b0 + 1), inset:-inset] = True
    paint(band & cabin, cabin_top, cabin_x, window, 4.0)
    paint(body, body_top, x0, colour, 5.0)
    if trim:  # a darker stripe along the body
        stripe = np.zeros((body_h, body_w), bool)
        s0 = int(body_h * 0.35)
        stripe[s0 : s0 + max(1, body_h // 6)] = True
        paint(stripe & body, body_top, x0, colour * 0.6, 5.0)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def _wave(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random gentle sine along x, in [-1, 1] (wavy bank edges)."""
    return np.sin(2 * np.pi * x / rng.uniform(30, 80) + rng.uniform(0, 2 * np.pi))


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) for s in size):
        raise ValueError(f"size must be (height, width) integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32, got {h}x{w}")
    return h, w


def _layout(layout_rng: np.random.Generator, H: int, W: int) -> tuple[int, np.ndarray, int]:
    """Horizon row, grass-bank mask (H, W) and the near bank's top row (H when there is none).

    The same distribution for both surfaces, so grass says nothing about boat vs car.
    """
    horizon = int(round(H * layout_rng.uniform(0.28, 0.42)))
    x = np.arange(W, dtype=np.float32)
    rows = np.arange(H)[:, None]
    grass = np.zeros((H, W), bool)
    if layout_rng.random() < 0.6:  # far bank just under the horizon
        depth = H * layout_rng.uniform(0.03, 0.10)
        edge = horizon + depth * (1 + 0.3 * _wave(layout_rng, x))
        grass |= (rows >= horizon) & (rows < edge[None, :])
    near_top = H
    if layout_rng.random() < 0.4:  # near bank at the bottom
        depth = H * layout_rng.uniform(0.05, 0.13)
        edge = H - depth * (1 + 0.3 * _wave(layout_rng, x))
        grass |= rows >= edge[None, :]
        near_top = int(edge.min())
    return horizon, grass, near_top


def render_scene(
    rng: np.random.Generator,
    size: Sequence[int] = (128, 128),
    *,
    surface: Literal["water", "road"] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    The generator is split into independent streams for the layout (horizon, banks), the
    background textures and the vessels. The vessels' stream never sees which surface was
    chosen, so rendering the same generator state with ``surface="water"`` and
    ``surface="road"`` gives *pixel-identical* vessels, labelled boat in one and car in the
    other: the ambiguity is exact by construction, not just on average.

    Args:
        rng: The generator; the scene depends on nothing else.
        size: ``(height, width)``, at least 32x32.
        surface: Force the ground surface; ``None`` picks water or road with equal odds.

    Returns:
        ``image`` uint8 ``(H, W, 3)`` RGB and ``label`` uint8 ``(H, W)`` with values in
        ``range(len(SCENES_CLASSES))``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"render_scene needs a numpy Generator, got {rng!r}")
    if surface not in (None, "water", "road"):
        raise ValueError(f"surface must be 'water', 'road' or None, got {surface!r}")
    H, W = _check_size(size)
    on_water = rng.random() < 0.5  # drawn even when forced, so the streams below do not shift
    if surface is not None:
        on_water = surface == "water"
    layout_rng, texture_rng, vessel_rng = rng.spawn(3)

    horizon, grass, near_top = _layout(layout_rng, H, W)

    # Background textures.
    label = np.full((H, W), SKY, np.uint8)
    label[horizon:] = WATER if on_water else ROAD
    image = np.empty((H, W, 3), np.float32)
    image[:horizon] = _sky(texture_rng, horizon, W)
    if on_water:
        image[horizon:] = _water(texture_rng, H - horizon, W)
    else:
        image[horizon:] = _road(texture_rng, H - horizon, W, 0)
    grass_rows = np.flatnonzero(grass.any(axis=1))
    if grass_rows.size:
        # Texture only the rows that hold grass (the banks are thin): 3x less work.
        r0, r1 = int(grass_rows[0]), int(grass_rows[-1]) + 1
        band = grass[r0:r1]
        image[r0:r1][band] = _grass(texture_rng, r1 - r0, W)[band]
        label[grass] = GRASS

    # Vessels: large, standing on the surface between the banks. Only the label value
    # depends on the surface.
    cls = BOAT if on_water else CAR
    n = 1 if vessel_rng.random() < 0.7 else 2
    lo = horizon + 0.45 * (H - horizon)
    hi = max(lo + 1, near_top - 2)
    for k in range(n):
        frac = vessel_rng.uniform(0.5, 0.85) if n == 1 else vessel_rng.uniform(0.3, 0.45)
        body_w = max(8, int(round(W * frac)))
        slot_w = W // n  # two vessels get one half each, so they do not overlap
        x0 = k * slot_w + int(vessel_rng.integers(0, max(1, slot_w - body_w + 1)))
        bottom = int(round(vessel_rng.uniform(lo, hi)))
        _draw_vessel(vessel_rng, image, label, cls, x0, bottom, body_w)

    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


# --------------------------------------------------------------------------------------------
# Data set on disk
# --------------------------------------------------------------------------------------------


def _manifest(n_train: int, n_val: int, size: tuple[int, int], seed: int) -> dict:
    return {
        "dataset": "pspnet-scenes",
        "version": MANIFEST_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "size": list(size),
        "seed": seed,
        "classes": list(SCENES_CLASSES),
    }


def _list_lines(split: str, n: int) -> list[str]:
    return [f"images/{split}/{i:05d}.png labels/{split}/{i:05d}.png" for i in range(n)]


def _read_manifest(out: Path) -> dict | None:
    try:
        old = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def _is_complete(out: Path) -> bool:
    """True when every file the lists of ``out`` name exists."""
    for split in ("train", "val"):
        lst = out / f"{split}.txt"
        if not lst.is_file():
            return False
        for line in lst.read_text().splitlines():
            img, lab = line.split()
            if not ((out / img).is_file() and (out / lab).is_file()):
                return False
    return True


def _remove_old(out: Path) -> None:
    """Delete what a previous generation wrote (only the files its lists name)."""
    for split in ("train", "val"):
        lst = out / f"{split}.txt"
        if lst.is_file():
            for line in lst.read_text().splitlines():
                for rel in line.split():
                    (out / rel).unlink(missing_ok=True)
            lst.unlink()
    (out / "manifest.json").unlink(missing_ok=True)


def _progress(enabled: bool, split: str, done: int, total: int) -> None:
    if not enabled or total == 0:
        return
    step = max(1, total // 10)
    if done == total or done % step == 0:
        end = "\n" if done == total else ""
        print(f"\rscenes: {split} {done}/{total}", end=end, file=sys.stderr, flush=True)


def generate_scenes(
    out_dir: str | Path,
    *,
    n_train: int = 1000,
    n_val: int = 200,
    size: Sequence[int] = (128, 128),
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the scenes data set to ``out_dir`` (see the module docstring for the layout).

    Sample ``i`` of a split is rendered from ``np.random.default_rng([seed, split, i])``, so it
    is the same whatever ``n_train``/``n_val`` are, and generation is deterministic. The call is
    idempotent: when ``out_dir/manifest.json`` records the same parameters and every listed
    file exists, nothing is written. The manifest is written last, so an interrupted run is
    simply redone.

    Args:
        out_dir: Directory to create or complete.
        n_train: Number of training scenes.
        n_val: Number of validation scenes.
        size: ``(height, width)`` of every scene, at least 32x32.
        seed: Base seed.
        progress: Print a progress line to stderr.
        overwrite: Replace a data set generated with *different* parameters (only files named
            in its lists are deleted). Without it that case raises.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ScenesMismatchError: ``out_dir`` holds a scenes data set with other parameters
            (a :class:`FileExistsError`).
        ValueError: Invalid counts, size or seed.
    """
    for name, v in (("n_train", n_train), ("n_val", n_val), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"generate_scenes: `{name}` must be a non-negative integer, got {v!r}")
    hw = _check_size(size)
    out = Path(out_dir)
    manifest = _manifest(int(n_train), int(n_val), hw, int(seed))
    old = _read_manifest(out)
    if old == manifest and _is_complete(out):
        if progress:
            print(f"scenes: {out} is up to date", file=sys.stderr)
        return out
    # Same parameters but files missing (deleted, or a run was interrupted after the lists were
    # written): regenerate in place. Other parameters: only with overwrite.
    if old is not None and old != manifest:
        if not overwrite:
            raise ScenesMismatchError(
                f"{out} holds a scenes data set generated with other parameters; choose "
                "another directory (pspnet demo --out DIR) or delete this one"
            )
        _remove_old(out)

    for split, n in (("train", int(n_train)), ("val", int(n_val))):
        img_dir = out / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], i])
            image, label = render_scene(rng, hw)
            # compress_level=1: ~1.5x faster than the default 6 on these noisy images, ~8 %
            # larger files.
            Image.fromarray(image).save(img_dir / f"{i:05d}.png", compress_level=1)
            save_mask_png(out / "labels" / split / f"{i:05d}.png", label, SCENES_PALETTE)
            _progress(progress, split, i + 1, n)
        (out / f"{split}.txt").write_text("".join(line + "\n" for line in _list_lines(split, n)))

    classes = [
        f"{i}\t{name}\t{r} {g} {b}"
        for i, (name, (r, g, b)) in enumerate(zip(SCENES_CLASSES, SCENES_PALETTE.tolist()))
    ]
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
