"""Fully connected classifiers for MNIST-style data (Hinton et al. 2015, section 3)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .options import positive_int, positive_ints, probability


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear.

    Layers are named `features.<i>` and `classifier`, so feature terms can read e.g. `features.1`.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (800, 800),
                 dropout: float = 0.0, input_dropout: float = 0.0) -> None:
        super().__init__()
        hidden = positive_ints("hidden", hidden)
        dropout, input_dropout = probability("dropout", dropout), probability("input_dropout", input_dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A plain conv net for tiny images (digits 8x8, MNIST 28x28): tests, examples, quickstart.

    `width` scales every layer so one class serves as both teacher (wide) and student (narrow).
    Stages are named `stage1`, `stage2`, `stage3` for feature terms.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        positive_int("width", width)

        def block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                      nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.stage1 = block(in_channels, width, pool=False)
        self.stage2 = block(width, 2 * width, pool=True)
        self.stage3 = block(2 * width, 4 * width, pool=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(self.pool(x).flatten(1))
