"""Scenes in which only *distant* context decides the class: the "context" mode of the scenes.

In :mod:`pspnet.data.scenes` the water or road touches the vessel, so a dilated FCN sees the
deciding context within its effective receptive field and, given enough steps, needs no pyramid.
Here the deciding context is kept farther away than that reach, by construction:

* The scene is a *field* (neutral, the same texture distribution whatever the context).
* Along one image side, or two adjacent sides, lies a *context band*: water or road (never both).
  In a non-square scene the band lies along one of the two *short* sides only, so the distance
  that matters runs along the long axis: a 448x224 scene keeps the 448-px one's gap at half the
  pixels (the receptive field matters along one axis only).
* Vessels (the very sprites of :func:`pspnet.data.scenes._draw_vessel`) stand on the field, every
  pixel at least ``gap`` pixels (Chebyshev distance, hence at least that in Euclidean distance)
  from every context pixel. They are labelled ``boat`` when the band is water and ``car`` when it
  is road. Between band and vessels lies the *neutral band*: field and rocks only.
* Rocks (distractors: ellipses in the vessels' own colour distribution) lie anywhere on the field,
  the neutral band included.

The generator is split into independent streams (layout, textures, sprites, placement); only the
context texture and the labels read which context was chosen. Rendering one generator state with
``context="water"`` and ``context="road"`` therefore gives pixel-identical fields, rocks and
vessels, labelled boat in one and car in the other: the objects are identical by construction, and
a pixel can be named only by looking at least ``gap`` pixels away.

Classes (:data:`CONTEXT_CLASSES`; water, road, boat and car keep their indices of
:data:`pspnet.data.scenes.SCENES_CLASSES`)::

    0 field    1 water    2 road    3 rock    4 boat    5 car
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from pspnet.data.scenes import (
    BOAT,
    CAR,
    ROAD,
    SCENES_PALETTE,
    WATER,
    _check_size,
    _draw_vessel,
    _grass,
    _noise,
    _road,
    _vessel_colour,
    _water,
    _wave,
)

__all__ = [
    "CONTEXT_CLASSES",
    "CONTEXT_PALETTE",
    "FIELD",
    "ROCK",
    "DEFAULT_GAP",
    "check_gap",
    "max_gap",
    "render_context_scene",
]

#: Class names of the context mode, indexed by label value.
CONTEXT_CLASSES: tuple[str, ...] = ("field", "water", "road", "rock", "boat", "car")
FIELD, ROCK = 0, 3

#: Display colours (palette of the label PNGs, colours in ``classes.txt``).
CONTEXT_PALETTE: np.ndarray = np.array(
    # water, road, boat and car keep the surface scenes' colours (and indices)
    [[150, 200, 110], SCENES_PALETTE[WATER], SCENES_PALETTE[ROAD], [140, 100, 60],
     SCENES_PALETTE[BOAT], SCENES_PALETTE[CAR]],
    dtype=np.uint8,
)  # field, water, road, rock, boat, car
CONTEXT_PALETTE.setflags(write=False)

#: Default ``gap`` as a fraction of the smaller image side.
DEFAULT_GAP = 0.3

_SIDES = ("top", "right", "bottom", "left")
#: Band depth: a fraction of the smaller side in [0.10, 0.18], times 1 +- 0.25 along the edge.
_DEPTH = (0.10, 0.18)
_MAX_DEPTH = _DEPTH[1] * 1.25
#: Room a vessel needs beyond band and gap: the smallest sprite (8 px wide) is 8 px high at most.
_MIN_ROOM = 10


def _band_mask(layout_rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Context band(s) with a wavy inner edge; (H, W) bool. Square scenes: one side, or two
    adjacent sides. Otherwise one of the two short sides (top/bottom of a tall scene)."""
    if H == W:
        first = int(layout_rng.integers(0, 4))
        sides = [first] if layout_rng.random() < 0.6 else [first, (first + 1) % 4]
    else:
        short = (0, 2) if H > W else (1, 3)  # top/bottom span the width; left/right the height
        sides = [short[int(layout_rng.integers(0, 2))]]
    rows = np.arange(H, dtype=np.float32)[:, None]  # (H, 1)
    cols = np.arange(W, dtype=np.float32)[None, :]  # (1, W)
    band = np.zeros((H, W), bool)
    for s in sides:
        along = W if _SIDES[s] in ("top", "bottom") else H
        depth = min(H, W) * layout_rng.uniform(*_DEPTH)
        edge = depth * (1 + 0.25 * _wave(layout_rng, np.arange(along, dtype=np.float32)))
        if _SIDES[s] == "top":
            band |= rows < edge[None, :]
        elif _SIDES[s] == "bottom":
            band |= rows >= H - edge[None, :]
        elif _SIDES[s] == "left":
            band |= cols < edge[:, None]
        else:
            band |= cols >= W - edge[:, None]
    return band


def max_gap(size: Sequence[int]) -> int:
    """The largest ``gap`` that leaves room for a vessel in every scene of ``size``.

    The deepest band reaches ``_MAX_DEPTH`` of the smaller side (two adjacent sides in the worst
    case); beyond it and the gap a (shrunken) vessel needs ``_MIN_ROOM`` pixels. In a
    non-square scene the band lies on a short side and the gap runs along the long one.
    """
    H, W = _check_size(size)
    return max(H, W) - int(np.ceil(_MAX_DEPTH * min(H, W))) - _MIN_ROOM


def check_gap(gap: int | None, size: Sequence[int]) -> int:
    """``gap`` validated for ``size`` (``None``: :data:`DEFAULT_GAP` of the smaller side).

    Raises:
        ValueError: ``gap`` is not an integer in ``[1, max_gap(size)]``.
    """
    H, W = _check_size(size)
    top = max_gap((H, W))
    if gap is None:
        gap = min(top, int(round(DEFAULT_GAP * min(H, W))))
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or not 1 <= gap <= top:
        raise ValueError(f"gap must be an integer in [1, {top}] for {H}x{W} scenes, got {gap!r}")
    return int(gap)


def _box_sums(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of ``mask`` with a zero first row and column; (H+1, W+1) int64."""
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    s[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return s


def _free_corners(blocked: np.ndarray, h: int, w: int) -> np.ndarray:
    """Top-left corners (y, x) where an h x w box covers no ``blocked`` pixel; (n, 2) int."""
    H, W = blocked.shape
    if h > H or w > W:
        return np.zeros((0, 2), int)
    s = _box_sums(blocked)
    inside = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]  # (H-h+1, W-w+1)
    return np.argwhere(inside == 0)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels at Chebyshev distance < r from ``mask``: its dilation by a (2r-1)^2 square."""
    if r <= 1:
        return mask.copy()
    H, W = mask.shape
    s = _box_sums(mask)
    y0 = np.clip(np.arange(H) - (r - 1), 0, H)[:, None]
    y1 = np.clip(np.arange(H) + r, 0, H)[:, None]
    x0 = np.clip(np.arange(W) - (r - 1), 0, W)[None, :]
    x1 = np.clip(np.arange(W) + r, 0, W)[None, :]
    return (s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]) > 0


def _vessel_sprite(rng: np.random.Generator, body_w: int) -> tuple[np.ndarray, np.ndarray]:
    """One vessel drawn alone: (pixels (h, w, 3) float32, mask (h, w) bool), cropped tight."""
    h = int(np.ceil(body_w * 0.75)) + 2  # body <= 0.36 w, cabin <= body: always inside
    canvas = np.zeros((h, body_w, 3), np.float32)
    label = np.zeros((h, body_w), np.uint8)
    _draw_vessel(rng, canvas, label, 1, 0, h, body_w)
    mask = label == 1
    rows = np.flatnonzero(mask.any(1))
    return canvas[rows[0] :], mask[rows[0] :]


def _rock(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One rock: a rotated ellipse in a vessel colour; (pixels (s, s, 3), mask (s, s))."""
    a, b = size / 2, size / 2 * rng.uniform(0.45, 0.9)
    t = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    pixels = _vessel_colour(rng) * (1 - 0.25 * (yy / size + 0.5))[..., None]  # shaded below
    return (pixels + _noise(rng, (size, size, 3), 6.0)).astype(np.float32), mask


def _place(place_rng: np.random.Generator, blocked: np.ndarray, mask: np.ndarray
           ) -> tuple[int, int] | None:
    """A random top-left corner where the sprite's box avoids ``blocked`` (None if none)."""
    corners = _free_corners(blocked, *mask.shape)
    if corners.size == 0:
        return None
    y, x = corners[int(place_rng.integers(0, len(corners)))]
    return int(y), int(x)


def _paste(image: np.ndarray, label: np.ndarray, at: tuple[int, int], pixels: np.ndarray,
           mask: np.ndarray, cls: int) -> None:
    y, x = at
    h, w = mask.shape
    image[y : y + h, x : x + w][mask] = pixels[mask]
    label[y : y + h, x : x + w][mask] = cls


def render_context_scene(
    rng: np.random.Generator,
    size: Sequence[int] = (128, 128),
    *,
    gap: int | None = None,
    context: Literal["water", "road"] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one context-mode scene (see the module docstring).

    Args:
        rng: The generator; the scene depends on nothing else.
        size: ``(height, width)``, at least 32x32.
        gap: Smallest distance in pixels between any vessel pixel and any context pixel (the
            neutral band's width), at most :func:`max_gap`. ``None``: :data:`DEFAULT_GAP` times
            the smaller side.
        context: Force the context; ``None`` picks water or road with equal odds.

    Returns:
        ``image`` uint8 ``(H, W, 3)`` RGB and ``label`` uint8 ``(H, W)`` with values in
        ``range(len(CONTEXT_CLASSES))``. Every scene holds at least one vessel.

    Raises:
        ValueError: Bad ``size``/``context``, or a ``gap`` that leaves no room for a vessel.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"render_context_scene needs a numpy Generator, got {rng!r}")
    if context not in (None, "water", "road"):
        raise ValueError(f"context must be 'water', 'road' or None, got {context!r}")
    H, W = _check_size(size)
    # Sprite sizes follow the smaller side in a square scene; a non-square one keeps the sprites
    # of the square scene of its long side while they fit (the objects do not shrink with it).
    side = min(H, W) if H == W else min(max(H, W), int(min(H, W) / 0.32))
    gap = check_gap(gap, (H, W))
    on_water = rng.random() < 0.5  # drawn even when forced, so the streams below do not shift
    if context is not None:
        on_water = context == "water"
    layout_rng, texture_rng, sprite_rng, place_rng = rng.spawn(4)

    band = _band_mask(layout_rng, H, W)
    image = _grass(texture_rng, H, W).astype(np.float32)
    label = np.full((H, W), FIELD, np.uint8)
    # Both textures are drawn whatever the context, so the field stream never shifts.
    water, road = _water(texture_rng, H, W), _road(texture_rng, H, W, 0)
    image[band] = (water if on_water else road)[band]
    label[band] = WATER if on_water else ROAD

    # Rocks first (anywhere off the band), then vessels over them, outside the neutral band.
    for _ in range(int(sprite_rng.integers(0, 4))):
        pixels, mask = _rock(sprite_rng, int(round(side * sprite_rng.uniform(0.06, 0.14))))
        at = _place(place_rng, band, mask)
        if at is not None:
            _paste(image, label, at, pixels, mask, ROCK)
    cls = BOAT if on_water else CAR
    blocked = _grow(band, gap)
    n = 1 + int(sprite_rng.random() < 0.4) + int(sprite_rng.random() < 0.2)
    placed = 0
    for k in range(n):
        pixels, mask = _vessel_sprite(sprite_rng, int(round(side * sprite_rng.uniform(0.16, 0.32))))
        at = _place(place_rng, blocked, mask)
        while at is None and placed == 0 and k == n - 1 and mask.shape[1] > 8:
            # The scene must hold a vessel: shrink the last one until it fits.
            pixels, mask = _vessel_sprite(sprite_rng, max(8, mask.shape[1] * 3 // 4))
            at = _place(place_rng, blocked, mask)
        if at is None:
            continue
        _paste(image, label, at, pixels, mask, cls)
        # Vessels do not overlap: block their box (plus a 2 px margin) for the next one.
        y, x = at
        blocked[max(0, y - 2) : y + mask.shape[0] + 2, max(0, x - 2) : x + mask.shape[1] + 2] = True
        placed += 1
    if placed == 0:
        raise ValueError(f"gap={gap} leaves no room for a vessel in a {H}x{W} scene")
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label
