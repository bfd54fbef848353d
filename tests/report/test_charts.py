"""pspnet.report.charts: tick values and every chart kind drawn to a PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pspnet.report.charts import (
    Series,
    grouped_bars,
    line_plot,
    mean_sd,
    nice_ticks,
    save_confusion_png,
    spread_bars,
    tile_row,
)


def test_nice_ticks():
    assert nice_ticks(0, 41.5) == [0, 10, 20, 30, 40, 50]
    ticks = nice_ticks(0.12, 0.93)
    assert ticks[0] <= 0.12 and ticks[-1] >= 0.93 and 4 <= len(ticks) <= 8


def test_mean_sd_skips_nan():
    assert mean_sd([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    m, sd = mean_sd([5.0])
    assert m == 5.0 and math.isnan(sd)
    assert all(math.isnan(v) for v in mean_sd([math.nan]))


def test_every_chart_kind_writes_a_png(tmp_path):
    xs = [0.0, 1.0, 2.0]
    p = line_plot(tmp_path / "a" / "line.png", [Series("s", xs, [3.0, math.nan, 1.0])],
                  title="t", xlabel="x", ylabel="y", hlines=[(2.0, "ref")], annotate_last=True)
    assert Image.open(p).size == (820, 480)
    empty = line_plot(tmp_path / "empty.png", [Series("s", [], [])], title="t", xlabel="x",
                      ylabel="y")
    assert empty.is_file()
    bars = grouped_bars(tmp_path / "bars.png", ["a", "b"], [("one", [0.5, math.nan]),
                                                          ("two", [1.0, 0.25])])
    assert Image.open(bars).size == (90 * 2 + 80, 320)
    spread = spread_bars(tmp_path / "spread.png", {"x": [40.0, 42.0], "y": [45.0]}, "mIoU")
    assert Image.open(spread).size == (140 * 2 + 100, 420)
    conf = save_confusion_png(np.eye(3) * 5, ["a", "b", "c"], tmp_path / "c.png", title="t")
    assert np.asarray(Image.open(conf).convert("RGB")).std() > 0


def test_tile_row_puts_pictures_side_by_side_under_titles(tmp_path):
    tiles = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tile_row(tiles, ["a", "b"], tmp_path / "row.png")
    img = np.asarray(Image.open(p).convert("RGB"))
    assert img.shape == (10 + 16, 2 * (20 + 4), 3)
    assert tuple(img[20, 5]) == (255, 0, 0) and tuple(img[20, 24 + 5]) == (0, 0, 255)
