"""MobileNetV2 for 32x32 inputs, the half-width student of the CRD and DKD papers (`mobile_half`).

It follows RepDistiller/mdistiller, not torchvision: plain ReLU (not ReLU6), an expansion conv even
in the first block, a stride-2 stem and 1280 channels before the head. State-dict keys match
theirs, so their checkpoints load as they are.
"""
from __future__ import annotations

from torch import Tensor, nn

from .options import OptionError, positive_int, positive_number

# (channels at width 1, blocks, stride of the first block) per stage; the first stage does not expand
_STAGES = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
_NARROWEST = min(channels for channels, _, _ in _STAGES)  # at width 1


def _conv_bn_relu(in_planes: int, out_planes: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_planes), nn.ReLU())


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (strided), linear 1x1 projection; plus the input when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """`conv1` (stride 2), seven stages `blocks.0`...`blocks.6`, `conv2` (1x1), `avgpool`, `classifier.0`.

    The CRD paper's feature points are `blocks.1`, `blocks.2`, `blocks.4`, `blocks.6` (16, 8, 4 and
    2 pixels for 32x32 inputs). Widths are scaled by `width_mult`; the defaults give `mobile_half`.
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5,
                 expand_ratio: int = 6) -> None:
        super().__init__()
        positive_int("expand_ratio", expand_ratio)
        if positive_number("width_mult", width_mult) * _NARROWEST < 1:
            raise OptionError(f"width_mult: expected at least 1/{_NARROWEST} (so every layer keeps a "
                              f"channel), got {width_mult!r}")
        planes = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, planes, 3, stride=2)
        self.blocks = nn.ModuleList()
        for index, (channels, count, stride) in enumerate(_STAGES):
            expansion = 1 if index == 0 else expand_ratio
            out_planes = int(channels * width_mult)
            stage = []
            for i in range(count):
                stage.append(InvertedResidual(planes, out_planes, stride if i == 0 else 1, expansion))
                planes = out_planes
            self.blocks.append(nn.Sequential(*stage))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(planes, last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))  # Sequential: RepDistiller's keys
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(self.avgpool(self.conv2(x)).flatten(1))
