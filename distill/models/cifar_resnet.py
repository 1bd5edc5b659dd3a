"""ResNets and wide ResNets for 32x32 inputs, as used by the CRD and DKD papers.

Both follow RepDistiller/mdistiller layer for layer, down to the state-dict keys, so the CIFAR-100
teachers published with those projects load as they are. No operation is in place, so a forward
hook on any submodule sees that module's own output, not a tensor that a later layer overwrote.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .options import positive_int, positive_ints, probability


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _init_conv_bn(model: nn.Module) -> None:
    """He-normal convolutions (fan-out), BatchNorm as identity: the originals' initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus the input (through a 1x1 conv + bn when the shape changes), relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """He et al. (2016, section 4.2): a 3x3 stem, three stages of `(depth - 2) / 6` basic blocks.

    `widths` are the stem's and the three stages' channels: (16, 16, 32, 64) for resnet8...110,
    four times that for resnet8x4 and resnet32x4. Feature paths: `layer1`, `layer2`, `layer3`
    (32, 16 and 8 pixels for 32x32 inputs), `avgpool`; the head is `fc`.
    """

    def __init__(self, depth: int, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        widths = positive_ints("widths", widths, length=4)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_conv_bn(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride),
                             *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class WideBlock(nn.Module):
    """Pre-activation block: bn-relu-conv-bn-relu-dropout-conv, plus the input.

    When the shape changes the shortcut is a 1x1 conv of the activated input. `convShortcut` keeps
    RepDistiller's key name so its checkpoints load.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = _conv3x3(planes, planes)
        self.convShortcut = None
        if stride != 1 or in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(act)))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """A run of wide blocks; the blocks sit under `.layer` as in RepDistiller (`block1.layer.0`)."""

    def __init__(self, in_planes: int, planes: int, blocks: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(WideBlock(in_planes, planes, stride, drop_rate),
                                   *(WideBlock(planes, planes, 1, drop_rate) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class CifarWideResNet(nn.Module):
    """WRN-depth-k of Zagoruyko & Komodakis (2016): three stages of `(depth - 4) / 6` wide blocks.

    Stage widths are 16k, 32k, 64k. Feature paths: `block1`, `block2`, `block3` (pre-activation
    outputs), `relu` (the activated last stage), `avgpool`; the head is `fc`.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"CifarWideResNet depth must be 6n + 4 with n >= 1 (10, 16, 40, ...), got {depth}")
        blocks = (depth - 4) // 6
        positive_int("widen_factor", widen_factor)
        drop_rate = probability("drop_rate", drop_rate)
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = WideStage(widths[0], widths[1], blocks, 1, drop_rate)
        self.block2 = WideStage(widths[1], widths[2], blocks, 2, drop_rate)
        self.block3 = WideStage(widths[2], widths[3], blocks, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn1(x))).flatten(1))
