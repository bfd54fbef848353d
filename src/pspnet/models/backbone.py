"""Dilated ResNet backbones.

Two stems share one network:

* ``stem="deep"``: the authors' stem (hszhao/semseg ``model/resnet.py``, PSPNet Caffe prototxts):
  3x3 convs 3->w (stride 2), w->w, w->2w, each with BN and ReLU, then a 3x3 max pool. With w=64 the
  first stage sees 128 channels. mmsegmentation's ResNetV1c uses the same stem with w=32.
* ``stem="plain"``: torchvision's 7x7 stem. Parameter names follow torchvision's ResNet
  (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so ImageNet weights in that format load as they are.

The output stride is reached by turning the stride of stages 4 and 5 into dilation *while the
layers are built* (never by patching modules afterwards, as semseg does). Where dilation is used,
the authors dilate every 3x3 conv of the stage by the same rate; mmseg and mit-semseg halve it in
the first block (``contract_dilation``). The weights are shape-compatible, the outputs are not,
so the option is explicit.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "stage_dilations"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(
            in_channels, planes, 3, stride, padding=first_dilation, dilation=first_dilation,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride and dilation), 1x1 expand; "pytorch" style.

    The stride sits on the 3x3 conv, as in semseg, torchvision and mmseg's ``style='pytorch'``
    (the original Caffe models put it on the first 1x1).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # A bottleneck has a single 3x3 conv, so only one dilation applies; `first_dilation`
        # (the contracted rate of the first block of a stage) wins when given.
        d = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of stages 2..5 (``layer1``..``layer4``) for an output stride.

    Output stride 8 is the paper's: stages 4 and 5 keep the resolution of stage 3 and use
    dilation 2 and 4 instead of stride 2.
    """
    if output_stride == 8:
        return ((1, 1), (2, 1), (1, 2), (1, 4))
    if output_stride == 16:
        return ((1, 1), (2, 1), (2, 1), (1, 2))
    if output_stride == 32:
        return ((1, 1), (2, 1), (2, 1), (2, 1))
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


class ResNet(nn.Module):
    """A ResNet feature extractor with a dilated tail.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        stem: ``"deep"`` (three 3x3 convs, the authors') or ``"plain"`` (7x7, torchvision's).
        stem_width: Width ``w`` of the deep stem (outputs ``2w`` channels). Ignored for "plain".
        output_stride: 8, 16 or 32.
        contract_dilation: Use half the stage's dilation in the first block of a dilated stage.
        base_width: Channels of ``layer1`` (``planes``); each later stage doubles them, and the
            plain stem outputs them. 64 in every ResNet; narrower keeps the receptive field.

    Attributes:
        out_channels: Channels of the ``"aux"`` (stage 4) and ``"out"`` (stage 5) features.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        stem: Literal["deep", "plain"] = "deep",
        stem_width: int = 64,
        output_stride: int = 8,
        contract_dilation: bool = False,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.stem_type = stem
        if stem == "deep":
            w = stem_width
            self.conv1 = nn.Conv2d(3, w, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(w)
            self.conv3 = nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(2 * w)
            in_channels = 2 * w
        elif stem == "plain":
            self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base_width)
            in_channels = base_width
        else:
            raise ValueError(f"stem must be 'deep' or 'plain', got {stem!r}")
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        widths = (base_width, 2 * base_width, 4 * base_width, 8 * base_width)
        stages = []
        for i, ((stride, dilation), planes, blocks) in enumerate(
            zip(stage_dilations(output_stride), widths, layers)
        ):
            first = max(1, dilation // 2) if (contract_dilation and dilation > 1) else dilation
            stage, in_channels = self._make_stage(
                block, in_channels, planes, blocks, stride, dilation, first
            )
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = {"aux": widths[2] * block.expansion, "out": widths[3] * block.expansion}

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck],
        in_channels: int,
        planes: int,
        blocks: int,
        stride: int,
        dilation: int,
        first_dilation: int,
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers: list[nn.Module] = [
            block(in_channels, planes, stride, dilation, first_dilation, downsample)
        ]
        layers += [block(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers), out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return stage-4 (``"aux"``) and stage-5 (``"out"``) features.

        Args:
            x: Images, (N, 3, H, W).

        Returns:
            ``{"aux": (N, C4, H/s, W/s), "out": (N, C5, H/s, W/s)}`` with s the output stride
            (rounded up: any H, W is accepted).
        """
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_type == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x = self.layer2(self.layer1(x))
        c4 = self.layer3(x)
        c5 = self.layer4(c4)
        return {"aux": c4, "out": c5}

