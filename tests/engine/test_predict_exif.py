"""`predict` segments a phone photo upright: its EXIF orientation is applied before the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from helpers import sideways_jpeg
from PIL import Image
from torch import nn

from pspnet.config import Preprocessing
from pspnet.engine.predict import predict_files
from pspnet.inference import InferenceOptions


class ColourSegmenter(nn.Module):
    """Class = the strongest colour channel (0 red, 1 green, 2 blue): the mask shows where
    the model saw each colour, so a sideways input gives a sideways mask."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x}


def test_a_rotated_jpeg_is_predicted_upright(tmp_path: Path) -> None:
    photo = sideways_jpeg(tmp_path / "phone.jpg", height=40, width=24)
    assert Image.open(photo).size == (40, 24)  # stored sideways: wider than tall
    out = tmp_path / "out"
    summary = predict_files(
        ColourSegmenter().eval(), [photo], out,
        preprocess=Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        opts=InferenceOptions(), num_classes=3, progress=False,
    )  # fmt: skip
    assert not summary.failed
    mask = np.asarray(Image.open(out / "phone.png"))
    assert mask.shape == (40, 24)  # the upright shape
    assert (mask[:18] == 0).all() and (mask[22:] == 1).all()  # red above green, as shown
    assert Image.open(out / "phone_overlay.png").size[1] == 40  # (plus a legend at the side)
    record = json.loads((out / "summary.json").read_text())["written"][0]
    assert (record["height"], record["width"]) == (40, 24)
