"""The budget section of the CamVid results page: its extrapolation never overflows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pspnet.report.camvid_page import TARGET_MIOU, budget_section


def _point(minutes: float, miou: float) -> SimpleNamespace:
    log = SimpleNamespace(first_plan=None, iterations=100, minutes=minutes, epochs=1.0)
    return SimpleNamespace(hours=minutes / 60, budget=minutes, log=log, weights="best",
                           test_miou=miou, work_dir=Path(f"w{minutes:g}"), recipe_diff=())


@pytest.mark.parametrize("gain", [1e-5, 0.0, -0.01])
def test_a_tiny_or_negative_gain_says_out_of_reach(gain: float) -> None:
    # A gain of 0.001 points per doubling used to raise OverflowError (2 ** 40,000).
    text = "\n".join(budget_section([_point(21, 0.0259), _point(42, 0.0259 + gain)], "c.png"))
    assert "out of reach" in text and "Extrapolation" not in text


def test_a_real_gain_is_extrapolated() -> None:
    text = "\n".join(budget_section([_point(30, 0.30), _point(60, 0.36)], "c.png"))
    # 6 points per doubling from 36 to TARGET_MIOU
    doublings = (TARGET_MIOU - 36) / 6
    assert f"about {2 ** doublings:.0f} hours" in text and "out of reach" not in text
