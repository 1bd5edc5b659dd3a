"""VGG with batch norm for 32x32 inputs, as used by the CRD and DKD papers (RepDistiller's `vgg*_bn`).

Five conv blocks and no fully connected layers: max pooling after blocks 0-2 only (blocks 3 and 4
both run at 4x4 for 32x32 inputs), then a global average pool and one linear layer. State-dict
keys match RepDistiller/mdistiller, so their published CIFAR-100 teachers load as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

# channels of the convs in each of the five blocks, per depth (8 = RepDistiller's configuration "S")
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:  # convs keep their bias, as in the original
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """`block0`...`block4` (conv-bn-relu each), `pool0`...`pool2`, `avgpool`, `classifier`.

    Block outputs are activated feature maps: `block0` at 32 pixels, `block1` 16, `block2` 8,
    `block3` and `block4` at 4 (for 32x32 inputs). `depth` is one of 8, 11, 13, 16, 19.
    """

    def __init__(self, depth: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"CifarVGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        config = VGG_CONFIGS[depth]
        self.block0 = _block(in_channels, config[0])
        self.pool0 = nn.MaxPool2d(2)
        self.block1 = _block(config[0][-1], config[1])
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = _block(config[1][-1], config[2])
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = _block(config[2][-1], config[3])
        self.block4 = _block(config[3][-1], config[4])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[4][-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.classifier(self.avgpool(x).flatten(1))
