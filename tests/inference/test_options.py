"""InferenceOptions: one validated declaration of every inference setting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pspnet.inference import PROTOCOLS, InferenceOptions, predict, predict_sliding
from pspnet.inference.options import DEFINITION_FIELDS, resolve_options


def test_presets_are_options() -> None:
    for name, preset in PROTOCOLS.items():
        assert isinstance(preset, InferenceOptions) and preset.name == name
    assert set(PROTOCOLS["semseg"].predict_kwargs()) == set(DEFINITION_FIELDS)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mode": "tiles"}, "mode"),
        ({"flip_mode": "both"}, "flip_mode"),
        ({"pad_mode": "reflect"}, "pad_mode"),
        ({"average": "mean"}, "average"),
        ({"precision": "int8"}, "precision"),
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, -0.5)}, "scales"),
        ({"batch_size": 0}, "batch_size"),
        ({"crop_size": (0, 4)}, "crop_size"),
        ({"crop_size": 4, "stride": 5}, "stride"),
        ({"base_size": 512, "img_scale": (2048, 512)}, "base_size"),
        ({"pad_value": "grey"}, "pad_value"),
    ],
)
def test_errors_name_the_field(changes, field) -> None:
    with pytest.raises(ValueError, match=field):
        InferenceOptions(**changes)


def test_normalised_frozen_and_hashable() -> None:
    opts = InferenceOptions(crop_size=8, stride=[5, 6], scales=[1, 2], pad_value=torch.zeros(3),
                            accumulate_device="cpu")
    assert opts.crop_size == (8, 8) and opts.stride == (5, 6) and opts.scales == (1.0, 2.0)
    assert opts.pad_value == (0.0, 0.0, 0.0) and opts.accumulate_device == torch.device("cpu")
    assert hash(opts) == hash(opts.replace())
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.mode = "slide"  # type: ignore[misc]
    with pytest.raises(TypeError):
        InferenceOptions("slide")  # type: ignore[misc]  # keywords only


def test_keyword_overrides_build_the_same_options() -> None:
    base = InferenceOptions(mode="slide", crop_size=6)
    assert resolve_options(base, {"flip": True}) == base.replace(flip=True)
    assert resolve_options(None, {"mode": "slide", "crop_size": 6}) == base
    with pytest.raises(TypeError):
        resolve_options(None, {"no_such_option": 1})
    with pytest.raises(TypeError, match="InferenceOptions"):
        resolve_options({"mode": "slide"}, {})  # type: ignore[arg-type]
    assert base.with_align_corners(True).align_corners is True
    assert base.replace(align_corners=False).with_align_corners(True).align_corners is False


def test_options_object_and_keywords_predict_the_same() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 13, 11)
    opts = InferenceOptions(mode="slide", crop_size=(7, 6), stride=(4, 4), flip=True,
                            scales=(0.75, 1.0), batch_size=3)
    kw = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    assert torch.equal(predict(model, x, opts), predict(model, x, **kw))
    assert torch.equal(predict_sliding(model, x, opts),
                       predict_sliding(model, x, crop_size=(7, 6), stride=(4, 4), flip=True,
                                       batch_size=3))
