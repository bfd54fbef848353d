"""Tests for pspnet.data.palette: VOC palette, palette PNG round trip, overlays with legend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pspnet.data.palette import (
    IGNORE_COLOR,
    colorize,
    default_palette,
    draw_legend,
    legend_entries,
    overlay,
    present_classes,
    save_mask_png,
)


@pytest.fixture
def mask_and_image():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (30, 40)).astype(np.int64)
    mask[:3] = 255
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return mask, image


def test_default_palette_is_voc():
    pal = default_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]  # background
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[2].tolist() == [0, 128, 0]  # bicycle
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[20].tolist() == [0, 64, 128]  # tvmonitor
    assert len({tuple(c) for c in pal.tolist()}) == 256  # all distinct
    assert np.array_equal(default_palette(21), pal[:21])
    assert default_palette(0).shape == (0, 3)
    with pytest.raises(ValueError):
        default_palette(-1)


def test_colorize_values_are_class_indices(mask_and_image):
    mask, _ = mask_and_image
    img = colorize(mask, default_palette(4))
    assert img.mode == "P" and img.size == (40, 30)
    assert np.array_equal(np.asarray(img), mask)
    lut = np.asarray(img.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(lut[:4], default_palette(4))
    assert tuple(lut[255]) == IGNORE_COLOR


def test_colorize_other_ignore_index_becomes_255():
    mask = np.array([[0, 1], [-1, 2]])
    out = np.asarray(colorize(mask, default_palette(3), ignore_index=-1))
    assert out.tolist() == [[0, 1], [255, 2]]


def test_colorize_rejects_unknown_values():
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[0, 5]]), default_palette(3))
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[0, 300]]))  # more than a palette image can hold
    with pytest.raises(TypeError):
        colorize(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2, 3), np.uint8))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    n=st.integers(1, 255),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([np.uint8, np.int32, np.int64]),
)
def test_saved_png_reads_back_exactly(tmp_path_factory, h, w, n, seed, dtype):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, n, (h, w)).astype(dtype)
    mask[rng.random((h, w)) < 0.2] = 255
    path = save_mask_png(tmp_path_factory.mktemp("png") / "sub" / "m.png", mask, default_palette(n))
    back = np.asarray(Image.open(path))
    assert back.dtype == np.uint8 and back.shape == (h, w)
    assert np.array_equal(back, mask)


def test_overlay_size_includes_legend(mask_and_image):
    mask, image = mask_and_image
    names = ["zero", "one", "two", "three"]
    out = overlay(image, mask, default_palette(4), class_names=names)
    assert out.mode == "RGB" and out.height == 30 and out.width > 40
    panel = draw_legend(legend_entries(mask, names), default_palette(4), height=30)
    assert out.width == 40 + panel.width
    bare = overlay(image, mask, default_palette(4), legend=False)
    assert bare.size == (40, 30)
    # The picture part is the same with or without legend.
    assert np.array_equal(np.asarray(out)[:, :40], np.asarray(bare))


def test_overlay_blends_and_keeps_ignore(mask_and_image):
    mask, image = mask_and_image
    pal = default_palette(4)
    out = np.asarray(overlay(image, mask, pal, alpha=0.25, legend=False)).astype(np.int64)
    ign = mask == 255
    assert np.array_equal(out[ign], image[ign])
    expect = np.rint(0.75 * image[~ign] + 0.25 * pal[mask[~ign]].astype(np.float64))
    assert np.abs(out[~ign] - expect).max() <= 1
    assert np.array_equal(np.asarray(overlay(image, mask, pal, alpha=0.0, legend=False)), image)


def test_legend_lists_only_present_classes():
    # Chromatic colours only, so antialiased (grey) text can never be mistaken for a swatch.
    pal = np.array(
        [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]], np.uint8
    )
    names = ["red", "green", "blue", "orange", "purple"]
    mask = np.full((64, 64), 255, np.int64)
    mask[:20, :20] = 1
    mask[40:, 30:] = 3
    assert present_classes(mask) == [1, 3]
    assert legend_entries(mask, names) == [(1, "green"), (3, "orange")]
    out = np.asarray(overlay(np.zeros((64, 64, 3), np.uint8), mask, pal, class_names=names))
    legend = out[:, 64:].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(legend, axis=0).tolist()}
    for c in (1, 3):
        assert tuple(pal[c].tolist()) in colours
    for c in (0, 2, 4):
        assert tuple(pal[c].tolist()) not in colours


def test_legend_without_names_and_errors(mask_and_image):
    mask, image = mask_and_image
    assert legend_entries(mask) == [(0, "0"), (1, "1"), (2, "2"), (3, "3")]
    with pytest.raises(ValueError):
        legend_entries(mask, ["only", "two"])
    with pytest.raises(ValueError):
        overlay(image[:10], mask, default_palette(4))
    with pytest.raises(ValueError):
        overlay(image, mask, default_palette(4), alpha=1.5)
    # Nothing present: no legend appended.
    empty = np.full((30, 40), 255)
    assert overlay(image, empty, default_palette(4)).size == (40, 30)


def test_legend_wraps_into_columns_for_short_images():
    pal = default_palette(20)
    entries = [(i, f"class {i}") for i in range(20)]
    tall = draw_legend(entries, pal)
    short = draw_legend(entries, pal, height=60)
    assert short.height == 60 and tall.height > 60
    assert short.width > tall.width
