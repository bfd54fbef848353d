"""pspnet.report.charts: every chart kind drawn to a PNG with matplotlib, and the message
when matplotlib is missing."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

from pspnet.report.charts import (
    Series,
    class_bars,
    grouped_bars,
    line_plot,
    mean_sd,
    require_matplotlib,
    save_confusion_png,
    spread_bars,
)
from pspnet.report.overlays import tile_row


def test_mean_sd_skips_nan():
    assert mean_sd([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    m, sd = mean_sd([5.0])
    assert m == 5.0 and math.isnan(sd)
    assert all(math.isnan(v) for v in mean_sd([math.nan]))


def _colour_share(path, rgb, tol=40):
    """Fraction of the picture's pixels within ``tol`` of ``rgb``."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return float((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).mean())


def test_line_plot_draws_each_series_at_the_asked_size(tmp_path):
    xs = [0.0, 1.0, 2.0]
    p = line_plot(tmp_path / "a" / "line.png",
                  [Series("s", xs, [3.0, math.nan, 1.0], color=(214, 39, 40), width=3)],
                  title="t", xlabel="x", ylabel="y", hlines=[(2.0, "ref")], annotate_last=True)
    assert Image.open(p).size == (820, 480)
    assert _colour_share(p, (214, 39, 40)) > 0.001  # the red line is there
    empty = line_plot(tmp_path / "empty.png", [Series("s", [], [])], title="t", xlabel="x",
                      ylabel="y", size=(400, 300))
    assert Image.open(empty).size == (400, 300)
    assert _colour_share(empty, (214, 39, 40)) == 0.0


def test_line_plot_puts_a_long_legend_below_the_axes(tmp_path):
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    series = [Series(f"a long recipe label {i}", [0.0, 1.0], [1.0 + i, 2.0 + i], color=c)
              for i, c in enumerate(colours)]
    inside = line_plot(tmp_path / "inside.png", series, title="t", xlabel="x", ylabel="y")
    below = line_plot(tmp_path / "below.png", series, title="t", xlabel="x", ylabel="y",
                      legend_below=True)
    assert Image.open(inside).size == (820, 480)
    assert Image.open(below).size == (820, 480 + 20 * 3 + 16)  # one row per series
    # The legend's swatches are drawn in the series' colours in the added strip; the plain
    # plot has nothing there to compare, so look at the strip's own pixels.
    strip = np.asarray(Image.open(below).convert("RGB")).astype(int)[480:]
    for c in colours:
        assert ((np.abs(strip - np.array(c)).max(axis=-1) <= 40).sum() > 20)


def test_bar_charts_write_pngs_that_grow_with_their_bars(tmp_path):
    bars = grouped_bars(tmp_path / "bars.png", ["a", "b"], [("one", [0.5, math.nan]),
                                                          ("two", [1.0, 0.25])])
    assert Image.open(bars).size == (90 * 2 + 80, 320)
    assert _colour_share(bars, (214, 39, 40)) > 0.01  # the second series' colour
    few = class_bars(tmp_path / "few.png", ["sky", "road"], [0.9, math.nan], title="IoU")
    many = class_bars(tmp_path / "many.png", [f"class {i}" for i in range(40)],
                      list(np.linspace(0, 1, 40)), title="IoU")
    assert Image.open(many).height > Image.open(few).height + 30 * 18
    with pytest.raises(ValueError, match="2 class names but 1 values"):
        class_bars(tmp_path / "x.png", ["a", "b"], [0.5], title="t")
    spread = spread_bars(tmp_path / "spread.png", {"x": [40.0, 42.0], "y": [45.0]}, "mIoU")
    assert Image.open(spread).size == (140 * 2 + 100, 420)


def test_confusion_png_shades_by_row_fraction(tmp_path):
    conf = save_confusion_png(np.array([[4, 0], [1, 1]]), ["a", "b"], tmp_path / "c.png",
                              title="t", cell_size=40)
    img = np.asarray(Image.open(conf).convert("RGB"))
    dark = np.argwhere((img == [8, 48, 107]).all(axis=-1))  # cell (0, 0): 100 %
    assert len(dark) > 100


def test_tile_row_puts_pictures_side_by_side_under_titles(tmp_path):
    tiles = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tile_row(tiles, ["a", "b"], tmp_path / "row.png")
    img = np.asarray(Image.open(p).convert("RGB"))
    assert img.shape == (10 + 16, 2 * (20 + 4), 3)
    assert tuple(img[20, 5]) == (255, 0, 0) and tuple(img[20, 24 + 5]) == (0, 0, 255)


def test_without_matplotlib_every_chart_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pspnet\[report\]'") as info:
        require_matplotlib()
    assert info.value.name == "matplotlib"
    with pytest.raises(ModuleNotFoundError, match="matplotlib"):
        line_plot(tmp_path / "l.png", [Series("s", [0], [1])], title="t", xlabel="x",
                  ylabel="y")
    with pytest.raises(ModuleNotFoundError, match="matplotlib"):
        save_confusion_png(np.eye(2), None, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())  # nothing half-written
