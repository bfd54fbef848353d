"""Model family: shapes, options, dilation built in, errors that name the problem."""

from __future__ import annotations

import pytest
import torch

import pspnet
from pspnet.config import ConfigError
from pspnet.models.backbone import stage_dilations


# The deep ResNets take several seconds each on a CPU.
_SLOW_ARCHS = ("pspnet101", "pspnet152", "pspnet_r101")


@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.slow) if a in _SLOW_ARCHS else a for a in pspnet.list_models()
])  # fmt: skip
def test_every_arch_gives_input_sized_logits(arch: str) -> None:
    model = pspnet.create_model(arch, 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 50))
    assert set(out) == {"out"}
    assert out["out"].shape == (1, 3, 64, 50)
    assert torch.isfinite(out["out"]).all()


@pytest.mark.slow
def test_training_mode_adds_aux_and_every_parameter_gets_a_gradient() -> None:
    model = pspnet.create_model("pspnet_r18", 4).train()
    out = model(torch.randn(2, 3, 45, 61))
    assert out["out"].shape == out["aux"].shape == (2, 4, 45, 61)
    (out["out"].mean() + out["aux"].mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_no_aux_head_when_disabled() -> None:
    model = pspnet.create_model("pspnet_r18", 4, aux=False).train()
    assert model.aux_head is None
    assert set(model(torch.randn(2, 3, 32, 32))) == {"out"}


@pytest.mark.parametrize("os_, sizes", [(8, 8), (16, 4), (32, 2)])
def test_output_stride_sets_feature_size(os_: int, sizes: int) -> None:
    model = pspnet.create_model("pspnet_r18", 2, output_stride=os_).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 64))
    assert feats["out"].shape[-1] == 64 // os_
    assert stage_dilations(os_)[3][1] == {8: 4, 16: 2, 32: 1}[os_]


def test_dilation_is_built_not_patched_authors_vs_contracted() -> None:
    authors = pspnet.create_model("pspnet50", 2)
    b = authors.backbone
    assert all(blk.conv2.dilation == (2, 2) and blk.conv2.stride == (1, 1) for blk in b.layer3)
    assert all(blk.conv2.dilation == (4, 4) for blk in b.layer4)
    assert b.layer3[0].downsample[0].stride == (1, 1)
    mm = pspnet.create_model("pspnet50", 2, contract_dilation=True, stem_width=32)
    assert mm.backbone.layer3[0].conv2.dilation == (1, 1)
    assert mm.backbone.layer4[0].conv2.dilation == (2, 2)
    assert mm.backbone.layer4[1].conv2.dilation == (4, 4)
    assert mm.backbone.conv1.out_channels == 32 and mm.backbone.layer1[0].conv1.in_channels == 64


def test_ppm_options() -> None:
    m = pspnet.create_model("pspnet_r18", 2, bins=(1, 2), pooling="max", ppm_channels=64)
    assert len(m.head.ppm.branches) == 2
    assert isinstance(m.head.ppm.branches[0].pool, torch.nn.AdaptiveMaxPool2d)
    assert m.head.conv.in_channels == 512 + 2 * 64
    default = pspnet.create_model("pspnet_r18", 2)
    assert default.head.conv.in_channels == 512 + 4 * 128  # reduction to C / len(bins)
    fcn = pspnet.create_model("pspnet_r18", 2, use_ppm=False)
    assert fcn.head.ppm is None and fcn.head.conv.in_channels == 512


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'pspnet50'.*Available: pspnet50"):
        pspnet.create_model("pspnet5O", 2)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.output_stride"):
        pspnet.create_model("pspnet_r18", 2, output_stride=4)
    with pytest.raises(ConfigError, match="unknown key `model.pool`; did you mean `model.pooling`"):
        pspnet.create_model("pspnet_r18", 2, pool="avg")
    with pytest.raises(ConfigError, match="model.num_classes"):
        pspnet.create_model("pspnet_r18", 0)


def test_wrong_input_shape_is_explained() -> None:
    model = pspnet.create_model("pspnet_r18", 2).eval()
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(3, 32, 32))


def test_batch_of_one_in_training_is_explained() -> None:
    model = pspnet.create_model("pspnet_r18", 2).train()
    with pytest.raises(ValueError, match="batch size of at least 2"):
        model(torch.randn(1, 3, 32, 32))


def test_base_width_narrows_every_stage_and_keeps_the_output() -> None:
    """``model.base_width`` (the demo's narrow backbone): the stage widths follow it, the head
    adapts, the logits keep their shape; a bad width is refused naming the key."""
    net = pspnet.create_model("pspnet_r18", 5, base_width=16, head_channels=32, aux_channels=16)
    assert net.backbone.out_channels == {"aux": 64, "out": 128}
    assert net.backbone.conv1.out_channels == 16
    assert net.backbone.layer4[0].conv1.out_channels == 128
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 65, 65))["out"].shape == (1, 5, 65, 65)
    full = sum(p.numel() for p in pspnet.create_model("pspnet_r18", 5).backbone.parameters())
    narrow = sum(p.numel() for p in net.backbone.parameters())
    assert narrow < full / 12  # about 1/16: parameters scale with the width squared
    for bad in (0, -8, 1.5, True):
        with pytest.raises(ConfigError, match="model.base_width"):
            pspnet.create_model("pspnet_r18", 5, base_width=bad)
