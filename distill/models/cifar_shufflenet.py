"""ShuffleNet V1 and V2 for 32x32 inputs, students of the CRD and DKD papers (`ShuffleV1`, `ShuffleV2`).

As in RepDistiller/mdistiller, the stem is a single 1x1 conv to 24 channels with no pooling, so the
three stages run at 16, 8 and 4 pixels for 32x32 inputs. State-dict keys match theirs, so their
checkpoints load as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .options import OptionError, positive_int, positive_ints

_STEM = 24


class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` groups, so the next grouped conv mixes them."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)


def _stem(in_channels: int) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.ReLU]:
    return nn.Conv2d(in_channels, _STEM, 1, bias=False), nn.BatchNorm2d(_STEM), nn.ReLU()


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; added to the input, or with stride 2
    concatenated to the average-pooled input (so it adds `out_planes` channels to it).

    `input_groups` is 1 for the network's first block: its 24 input channels are too few to group.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, input_groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=input_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = ChannelShuffle(input_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        out = out + x if self.pool is None else torch.cat([out, self.pool(x)], 1)
        return self.relu3(out)


class CifarShuffleNetV1(nn.Module):
    """Zhang et al. (2018) with g groups: stem, `layer1`...`layer3` (each opening at stride 2),
    `avgpool`, head `linear`. `stage_planes` are the stages' output channels."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, stage_planes: Sequence[int] = (240, 480, 960),
                 stage_blocks: Sequence[int] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        stage_planes = positive_ints("stage_planes", stage_planes, length=3)
        stage_blocks = positive_ints("stage_blocks", stage_blocks, length=3)
        positive_int("groups", groups)
        if any(planes - before < 4 for before, planes in zip((_STEM, *stage_planes), stage_planes)):
            raise OptionError(f"stage_planes: expected each stage at least 4 channels wider than the one "
                              f"before (the stem has {_STEM}), got {list(stage_planes)}")
        self.conv1, self.bn1, self.relu = _stem(in_channels)
        stages = []
        in_planes = _STEM
        for planes, blocks in zip(stage_planes, stage_blocks):
            layers = [ShuffleV1Block(in_planes, planes - in_planes, 2, groups,
                                     input_groups=1 if not stages else groups)]
            layers += [ShuffleV1Block(planes, planes, 1, groups, groups) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


class ShuffleV2Block(nn.Module):
    """Keep half the channels; pass the other half through 1x1, 3x3 depthwise, 1x1; concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, x = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([kept, out], 1))


class ShuffleV2DownBlock(nn.Module):
    """Two stride-2 branches (3x3 depthwise then 1x1; 1x1, 3x3 depthwise, 1x1), concatenated, shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.relu5(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(nn.Module):
    """Ma et al. (2018) at width 1: stem, `layer1`...`layer3` (a stride-2 block, then
    `stage_blocks` plain ones), 1x1 `conv2` to `stage_channels[3]`, `avgpool`, head `linear`."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 stage_channels: Sequence[int] = (116, 232, 464, 1024),
                 stage_blocks: Sequence[int] = (3, 7, 3)) -> None:
        super().__init__()
        stage_channels = positive_ints("stage_channels", stage_channels, length=4)
        stage_blocks = positive_ints("stage_blocks", stage_blocks, length=3, minimum=0)
        if any(c % 2 for c in stage_channels[:3]):  # each stage splits its channels in halves
            raise OptionError(f"stage_channels: expected even numbers for the three stages, got "
                              f"{list(stage_channels)}")
        self.conv1, self.bn1, self.relu = _stem(in_channels)
        stages = []
        in_planes = _STEM
        for planes, blocks in zip(stage_channels[:3], stage_blocks):
            stages.append(nn.Sequential(ShuffleV2DownBlock(in_planes, planes),
                                        *(ShuffleV2Block(planes) for _ in range(blocks))))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_planes, stage_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stage_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(stage_channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))
