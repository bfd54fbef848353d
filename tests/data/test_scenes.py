"""Tests for pspnet.data.scenes: determinism, on-disk format, and that context decides."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pspnet.data.scenes import (
    BOAT,
    CAR,
    ROAD,
    SCENES_CLASSES,
    SCENES_PALETTE,
    WATER,
    generate_scenes,
    render_scene,
)
from pspnet.data.context_scenes import (
    CONTEXT_CLASSES,
    CONTEXT_PALETTE,
    FIELD,
    _MAX_DEPTH,
    ROCK,
    check_gap,
    max_gap,
    render_context_scene,
)

SMALL = dict(n_train=6, n_val=3, size=(64, 80), seed=7, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "ds", **SMALL)


@pytest.fixture(scope="module")
def many_scenes():
    """200 scenes at 64x64: enough vessels of each kind for statistics (~0.3 s)."""
    return [render_scene(np.random.default_rng([123, i]), (64, 64)) for i in range(200)]


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood lies entirely in ``mask`` (edges count as outside)."""
    p = np.pad(mask, r, constant_values=False)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ~erode(~mask, r)


# ------------------------------------------------------------------------------------------
# render_scene
# ------------------------------------------------------------------------------------------


def test_render_shapes_dtypes_values():
    for i in range(20):
        image, label = render_scene(np.random.default_rng(i), (48, 72))
        assert image.shape == (48, 72, 3) and image.dtype == np.uint8
        assert label.shape == (48, 72) and label.dtype == np.uint8
        assert label.max() < len(SCENES_CLASSES)
        present = set(np.unique(label).tolist())
        # Exactly one surface, and the vessels match it.
        assert (WATER in present) != (ROAD in present)
        assert not (BOAT in present and CAR in present)
        assert BOAT not in present or WATER in present
        assert CAR not in present or ROAD in present


def test_render_is_deterministic():
    a = render_scene(np.random.default_rng(42))
    b = render_scene(np.random.default_rng(42))
    c = render_scene(np.random.default_rng(43))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_render_rejects_bad_input():
    with pytest.raises(TypeError):
        render_scene(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), (16, 64))
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), surface="lava")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# the ambiguity is real: appearance is identical, only context differs
# ------------------------------------------------------------------------------------------


def test_same_vessel_pixels_on_water_and_road():
    """Same generator, surface forced: identical vessel pixels, different labels."""
    for seed in range(10):
        img_w, lab_w = render_scene(np.random.default_rng(seed), surface="water")
        img_r, lab_r = render_scene(np.random.default_rng(seed), surface="road")
        boat = lab_w == BOAT
        assert boat.sum() > 0
        assert np.array_equal(boat, lab_r == CAR)
        assert np.array_equal(img_w[boat], img_r[boat])
        # ... while the surroundings differ.
        assert not np.array_equal(img_w[~boat], img_r[~boat])


def test_boat_and_car_colour_statistics_match(many_scenes):
    """Per-vessel mean colours of boat and car interiors have the same distribution."""
    means = {BOAT: [], CAR: []}
    stds = {BOAT: [], CAR: []}
    for image, label in many_scenes:
        for cls in (BOAT, CAR):
            inner = erode(label == cls, 1)
            if inner.sum() >= 30:
                px = image[inner].astype(np.float64)
                means[cls].append(px.mean(axis=0))
                stds[cls].append(px.std(axis=0))
    mb, mc = np.array(means[BOAT]), np.array(means[CAR])
    assert len(mb) > 50 and len(mc) > 50
    # Two-sample z test per channel at 4 sigma (deterministic seeds, so no flakiness).
    se = np.sqrt(mb.var(axis=0) / len(mb) + mc.var(axis=0) / len(mc))
    assert np.all(np.abs(mb.mean(axis=0) - mc.mean(axis=0)) < 4 * se + 1e-9)
    # Texture (within-object spread) matches too.
    sb, sc = np.array(stds[BOAT]).mean(axis=0), np.array(stds[CAR]).mean(axis=0)
    assert np.all(np.abs(sb - sc) < 0.2 * np.maximum(sb, sc))
    # And the vessel sizes.
    area = {
        c: [(lab == c).sum() for _, lab in many_scenes if (lab == c).any()] for c in (BOAT, CAR)
    }
    assert abs(np.mean(area[BOAT]) - np.mean(area[CAR])) < 0.2 * np.mean(area[CAR])


def test_context_differs(many_scenes):
    """A ring around every boat holds water and never road; around every car, the reverse."""
    seen = {BOAT: 0, CAR: 0}
    for _, label in many_scenes:
        for cls, own, other in ((BOAT, WATER, ROAD), (CAR, ROAD, WATER)):
            obj = label == cls
            if not obj.any():
                continue
            ring = dilate(obj, 4) & ~obj
            assert (label[ring] == own).mean() > 0.2
            assert not (label[ring] == other).any()
            seen[cls] += 1
    # Both kinds are common (the surface is a fair coin).
    assert seen[BOAT] > 60 and seen[CAR] > 60


def test_vessels_are_large(many_scenes):
    """Most vessel pixels see only vessel within 3 px: a small receptive field is not enough."""
    inside = total = 0
    for _, label in many_scenes:
        obj = (label == BOAT) | (label == CAR)
        total += obj.sum()
        inside += erode(obj, 3).sum()
    assert inside / total > 0.4


# ------------------------------------------------------------------------------------------
# generate_scenes
# ------------------------------------------------------------------------------------------


def test_files_and_list_format(dataset):
    for split, n in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
        lines = (dataset / f"{split}.txt").read_text().splitlines()
        assert len(lines) == n
        for i, line in enumerate(lines):
            img_rel, lab_rel = line.split(" ")
            assert img_rel == f"images/{split}/{i:05d}.png"
            assert lab_rel == f"labels/{split}/{i:05d}.png"
            img = Image.open(dataset / img_rel)
            lab = Image.open(dataset / lab_rel)
            assert img.mode == "RGB" and img.size == (80, 64)
            assert lab.mode == "P" and lab.size == (80, 64)
            values = np.asarray(lab)
            assert values.max() < len(SCENES_CLASSES)
    classes = (dataset / "classes.txt").read_text().splitlines()
    assert len(classes) == len(SCENES_CLASSES)
    for i, line in enumerate(classes):
        index, name, rgb = line.split("\t")
        assert int(index) == i and name == SCENES_CLASSES[i]
        assert [int(v) for v in rgb.split(" ")] == SCENES_PALETTE[i].tolist()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["n_train"] == 6 and manifest["size"] == [64, 80] and manifest["seed"] == 7


def test_generated_files_match_render(dataset):
    """Sample i of a split is render_scene(default_rng([seed, split, i]))."""
    image, label = render_scene(np.random.default_rng([7, 1, 2]), (64, 80))
    assert np.array_equal(np.asarray(Image.open(dataset / "images/val/00002.png")), image)
    assert np.array_equal(np.asarray(Image.open(dataset / "labels/val/00002.png")), label)


def test_generation_is_deterministic(dataset, tmp_path):
    other = generate_scenes(tmp_path / "again", **SMALL)
    for rel in ("images/train/00004.png", "labels/train/00004.png", "train.txt", "classes.txt"):
        if rel.endswith(".png"):
            a, b = np.asarray(Image.open(dataset / rel)), np.asarray(Image.open(other / rel))
            assert np.array_equal(a, b)
        else:
            assert (dataset / rel).read_text() == (other / rel).read_text()


def test_idempotent_and_parameter_change(tmp_path):
    out = generate_scenes(tmp_path / "ds", **SMALL)
    marker = out / "images/train/00000.png"
    before = marker.stat().st_mtime_ns
    generate_scenes(out, **SMALL)  # same parameters: nothing rewritten
    assert marker.stat().st_mtime_ns == before
    changed = {**SMALL, "n_train": 3}
    with pytest.raises(FileExistsError):
        generate_scenes(out, **changed)
    generate_scenes(out, **changed, overwrite=True)
    assert len((out / "train.txt").read_text().splitlines()) == 3
    assert not (out / "images/train/00005.png").exists()  # stale files removed
    assert json.loads((out / "manifest.json").read_text())["n_train"] == 3


def test_interrupted_generation_is_redone(tmp_path):
    out = generate_scenes(tmp_path / "ds", **SMALL)
    (out / "labels/val/00001.png").unlink()
    generate_scenes(out, **SMALL)
    assert (out / "labels/val/00001.png").is_file()


def test_generate_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError):
        generate_scenes(tmp_path, n_train=-1, progress=False)
    with pytest.raises(ValueError):
        generate_scenes(tmp_path, size=(8, 8), progress=False)


# ------------------------------------------------------------------------------------------
# context mode: the deciding context lies at least `gap` pixels from every vessel
# ------------------------------------------------------------------------------------------

GAP = 36


@pytest.fixture(scope="module")
def context_scenes():
    """120 context scenes at 96x96 with a 36 px neutral band."""
    return [render_context_scene(np.random.default_rng([5, i]), (96, 96), gap=GAP)
            for i in range(120)]


def chebyshev_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Chebyshev distance between a pixel of mask ``a`` and one of disjoint ``b``.

    Only the masks' edge pixels can be nearest (a step towards the other mask gets closer).
    """
    pa, pb = np.argwhere(a & grow(~a, 1)), np.argwhere(b & grow(~b, 1))
    return float(np.abs(pa[:, None, :] - pb[None, :, :]).max(-1).min())


def grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation by a (2r+1)^2 square, outside the image counting as *not* in ``mask``
    (separable: a max over 2r+1 rows, then over 2r+1 columns)."""
    p = np.pad(mask, r, constant_values=False)
    rows = np.lib.stride_tricks.sliding_window_view(p, 2 * r + 1, axis=0).any(-1)
    return np.lib.stride_tricks.sliding_window_view(rows, 2 * r + 1, axis=1).any(-1)


def test_context_render_shapes_and_labels(context_scenes):
    seen = {BOAT: 0, CAR: 0}
    for image, label in context_scenes:
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert label.shape == (96, 96) and label.dtype == np.uint8
        present = set(np.unique(label).tolist())
        assert present <= set(range(len(CONTEXT_CLASSES))) and FIELD in present
        # Exactly one context, at least one vessel, and the vessels' class follows the context.
        assert (WATER in present) != (ROAD in present)
        assert (BOAT in present) != (CAR in present)
        cls = BOAT if WATER in present else CAR
        assert cls in present
        seen[cls] += 1
    assert seen[BOAT] > 40 and seen[CAR] > 40  # a fair coin
    # Water, road, boat and car keep their indices of the surface scenes.
    for name in ("water", "road", "boat", "car"):
        assert CONTEXT_CLASSES.index(name) == SCENES_CLASSES.index(name)


def test_context_lies_beyond_the_gap(context_scenes):
    """Every vessel pixel is >= gap (Chebyshev, so also Euclidean) from every context pixel,
    and the neutral band holds field and rocks only."""
    nearest = []
    for _, label in context_scenes:
        context = (label == WATER) | (label == ROAD)
        vessel = (label == BOAT) | (label == CAR)
        d = chebyshev_distance(vessel, context)
        assert d >= GAP
        nearest.append(d)
        band = grow(context, GAP - 1) & ~context
        assert band.sum() > context.sum()  # a wide neutral band
        assert set(np.unique(label[band]).tolist()) <= {FIELD, ROCK}
    # The gap is tight (vessels do come close to it), so the band is as narrow as designed.
    assert min(nearest) < GAP + 4


def test_context_objects_identical_across_classes():
    """One generator state, context forced: pixel-identical field, rocks and vessels, labelled
    boat with water and car with road; only the context band differs."""
    for seed in range(12):
        img_w, lab_w = render_context_scene(np.random.default_rng(seed), (96, 96), gap=GAP,
                                            context="water")
        img_r, lab_r = render_context_scene(np.random.default_rng(seed), (96, 96), gap=GAP,
                                            context="road")
        band = lab_w == WATER
        assert band.any() and np.array_equal(band, lab_r == ROAD)
        assert np.array_equal(img_w[~band], img_r[~band])
        assert not np.array_equal(img_w[band], img_r[band])
        boat = lab_w == BOAT
        assert boat.any() and np.array_equal(boat, lab_r == CAR)
        same = ~band & ~boat
        assert np.array_equal(lab_w[same], lab_r[same])


def test_context_vessel_statistics_match(context_scenes):
    """Free choice of context: boat and car vessels have the same colours, sizes, counts and
    distances to the context (two-sample z tests at 4 sigma on fixed seeds)."""
    feats = {BOAT: [], CAR: []}
    for image, label in context_scenes:
        for cls in (BOAT, CAR):
            obj = label == cls
            if obj.any():
                context = (label == WATER) | (label == ROAD)
                px = image[obj].astype(np.float64)
                feats[cls].append([*px.mean(0), *px.std(0), obj.sum(),
                                   chebyshev_distance(obj, context), (label == ROCK).sum()])
    fb, fc = np.array(feats[BOAT]), np.array(feats[CAR])
    se = np.sqrt(fb.var(0) / len(fb) + fc.var(0) / len(fc))
    assert np.all(np.abs(fb.mean(0) - fc.mean(0)) < 4 * se + 1e-9)


def test_context_is_deterministic_per_seed():
    a = render_context_scene(np.random.default_rng(3), (64, 64))
    b = render_context_scene(np.random.default_rng(3), (64, 64))
    c = render_context_scene(np.random.default_rng(4), (64, 64))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_context_gap_limits():
    assert check_gap(None, (128, 128)) == 38  # DEFAULT_GAP of the side
    top = max_gap((64, 64))
    for seed in range(20):  # the largest gap still leaves room for a vessel in every scene
        _, label = render_context_scene(np.random.default_rng(seed), (64, 64), gap=top)
        assert ((label == BOAT) | (label == CAR)).any()
    for bad in (0, top + 1, 2.5, True):
        with pytest.raises(ValueError, match="gap"):
            render_context_scene(np.random.default_rng(0), (64, 64), gap=bad)
    with pytest.raises(ValueError, match="context"):
        render_context_scene(np.random.default_rng(0), context="lava")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        render_context_scene(0)  # type: ignore[arg-type]


def test_generate_context_mode(tmp_path):
    params = dict(n_train=3, n_val=2, size=(64, 72), seed=9, progress=False)
    out = generate_scenes(tmp_path / "ctx", **params, mode="context", gap=20)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "context" and manifest["gap"] == 20
    assert manifest["classes"] == list(CONTEXT_CLASSES)
    classes = (out / "classes.txt").read_text().splitlines()
    assert [c.split("\t")[1] for c in classes] == list(CONTEXT_CLASSES)
    assert classes[0].split("\t")[2] == " ".join(map(str, CONTEXT_PALETTE[0].tolist()))
    image, label = render_context_scene(np.random.default_rng([9, 0, 2]), (64, 72), gap=20)
    assert np.array_equal(np.asarray(Image.open(out / "images/train/00002.png")), image)
    assert np.array_equal(np.asarray(Image.open(out / "labels/train/00002.png")), label)
    # Another gap is another data set.
    with pytest.raises(FileExistsError):
        generate_scenes(out, **params, mode="context", gap=21)
    # The surface manifest is unchanged by the new mode (old data sets stay up to date).
    surface = json.loads((generate_scenes(tmp_path / "s", **params) / "manifest.json").read_text())
    assert "mode" not in surface and "gap" not in surface
    with pytest.raises(ValueError, match="gap"):
        generate_scenes(tmp_path / "x", **params, gap=20)
    with pytest.raises(ValueError, match="mode"):
        generate_scenes(tmp_path / "x", **params, mode="lava")  # type: ignore[arg-type]


def test_context_lies_along_one_side_or_two_adjacent_sides(context_scenes):
    """The context is a band along one image side or two adjacent ones (never opposite sides),
    covering the whole of each such side and no deeper than the deepest band allowed."""
    deepest = int(np.ceil(_MAX_DEPTH * 96))
    side_pixels = {"top": np.s_[0, :], "right": np.s_[:, -1], "bottom": np.s_[-1, :],
                   "left": np.s_[:, 0]}
    counts = {1: 0, 2: 0}
    for _, label in context_scenes:
        context = (label == WATER) | (label == ROAD)
        sides = [s for s, idx in side_pixels.items() if context[idx].all()]
        assert len(sides) in (1, 2), sides
        assert set(sides) not in ({"top", "bottom"}, {"left", "right"})
        counts[len(sides)] += 1
        # Every context pixel lies within the band depth of one of its sides.
        rows, cols = np.nonzero(context)
        depth = {"top": rows, "bottom": 95 - rows, "left": cols, "right": 95 - cols}
        assert np.all(np.min([depth[s] for s in sides], axis=0) < deepest)
    assert counts[1] > 30 and counts[2] > 30  # both layouts occur


def test_context_rocks_and_field_never_depend_on_the_context():
    """Forced water or road: the rocks (distractors in the vessels' colours) and the field are
    the same pixels with the same labels; rocks never cover the context band."""
    for seed in range(10):
        img_w, lab_w = render_context_scene(np.random.default_rng([7, seed]), (64, 64), gap=14,
                                            context="water")
        img_r, lab_r = render_context_scene(np.random.default_rng([7, seed]), (64, 64), gap=14,
                                            context="road")
        for cls in (FIELD, ROCK):
            assert np.array_equal(lab_w == cls, lab_r == cls)
            assert np.array_equal(img_w[lab_w == cls], img_r[lab_r == cls])
        band = (lab_w == WATER)
        assert not (band & (lab_r == ROCK)).any()


def test_the_demo_geometry_keeps_its_gap():
    """The demo's own scenes (128 px, gap 48): the gap fits, and every vessel pixel is at least
    48 px from the water or road."""
    assert max_gap((128, 128)) >= 48
    for i in range(8):
        _, label = render_context_scene(np.random.default_rng([0, 0, i]), (128, 128), gap=48)
        vessel = (label == BOAT) | (label == CAR)
        context = (label == WATER) | (label == ROAD)
        assert vessel.any() and chebyshev_distance(vessel, context) >= 48


@pytest.mark.parametrize("size", [(160, 64), (64, 160)])
def test_non_square_context_lies_on_one_short_side_beyond_the_gap(size):
    """A tall scene has its band on the top or bottom edge, a wide one on the left or right: the
    gap runs along the long axis (max_gap follows it), one band only, vessels beyond the gap."""
    H, W = size
    gap = 80
    assert max_gap(size) == max(H, W) - int(np.ceil(_MAX_DEPTH * min(H, W))) - 10 >= gap
    short = ({"top": np.s_[0, :], "bottom": np.s_[-1, :]} if H > W
             else {"left": np.s_[:, 0], "right": np.s_[:, -1]})
    seen = set()
    for seed in range(24):
        _, label = render_context_scene(np.random.default_rng([5, seed]), size, gap=gap)
        context = (label == WATER) | (label == ROAD)
        vessel = (label == BOAT) | (label == CAR)
        sides = [name for name, idx in short.items() if context[idx].all()]
        assert len(sides) == 1, sides
        seen.add(sides[0])
        # No context along the long edges beyond the band's depth of the short side.
        rows, cols = np.nonzero(context)
        along = rows if H > W else cols
        far = along if sides[0] in ("top", "left") else max(H, W) - 1 - along
        assert far.max() < int(np.ceil(_MAX_DEPTH * min(H, W)))
        assert vessel.any() and chebyshev_distance(vessel, context) >= gap
    assert seen == set(short)  # both short sides occur


def test_non_square_objects_are_identical_across_contexts():
    for seed in range(6):
        img_w, lab_w = render_context_scene(np.random.default_rng([8, seed]), (160, 64), gap=80,
                                            context="water")
        img_r, lab_r = render_context_scene(np.random.default_rng([8, seed]), (160, 64), gap=80,
                                            context="road")
        assert np.array_equal(lab_w == BOAT, lab_r == CAR) and (lab_w == BOAT).any()
        assert np.array_equal(img_w[lab_w == BOAT], img_r[lab_r == CAR])

