"""Write our weights in foreign key layouts (the exact names those projects save)."""

from __future__ import annotations

import re

import torch

_MMSEG = [
    (r"^backbone\.conv1\.", "backbone.stem.0."),
    (r"^backbone\.bn1\.", "backbone.stem.1."),
    (r"^backbone\.conv2\.", "backbone.stem.3."),
    (r"^backbone\.bn2\.", "backbone.stem.4."),
    (r"^backbone\.conv3\.", "backbone.stem.6."),
    (r"^backbone\.bn3\.", "backbone.stem.7."),
    (r"^backbone\.(layer[1-4]\.)", r"backbone.\1"),
    (r"^head\.ppm\.branches\.(\d+)\.conv\.", r"decode_head.psp_modules.\1.1.conv."),
    (r"^head\.ppm\.branches\.(\d+)\.bn\.", r"decode_head.psp_modules.\1.1.bn."),
    (r"^head\.conv\.", "decode_head.bottleneck.conv."),
    (r"^head\.bn\.", "decode_head.bottleneck.bn."),
    (r"^head\.classifier\.", "decode_head.conv_seg."),
    (r"^aux_head\.conv\.", "auxiliary_head.convs.0.conv."),
    (r"^aux_head\.bn\.", "auxiliary_head.convs.0.bn."),
    (r"^aux_head\.classifier\.", "auxiliary_head.conv_seg."),
]
_MIT_ENC = [(r"^backbone\.((conv[1-3]|bn[1-3]|layer[1-4])\.)", r"\1")]
_MIT_DEC = [
    (r"^head\.ppm\.branches\.(\d+)\.conv\.", r"ppm.\1.1."),
    (r"^head\.ppm\.branches\.(\d+)\.bn\.", r"ppm.\1.2."),
    (r"^head\.conv\.", "conv_last.0."),
    (r"^head\.bn\.", "conv_last.1."),
    (r"^head\.classifier\.", "conv_last.4."),
    (r"^aux_head\.conv\.", "cbr_deepsup.0."),
    (r"^aux_head\.bn\.", "cbr_deepsup.1."),
    (r"^aux_head\.classifier\.", "conv_last_deepsup."),
]


def _apply(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            if re.match(pat, k):
                out[re.sub(pat, rep, k, count=1)] = v
                break
    return out


def to_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _apply(sd, _MMSEG)


def to_mit(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return _apply(sd, _MIT_ENC), _apply(sd, _MIT_DEC)


def to_torchvision_backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out["fc.weight"] = torch.zeros(1000, 512)
    out["fc.bias"] = torch.zeros(1000)
    return out
