"""The small-input (32x32) model family of the CRD and DKD papers, by the names those papers use.

Every entry is called as `CIFAR_MODELS[name](num_classes=..., in_channels=...)`. Architectures and
state-dict keys follow RepDistiller/mdistiller, so the CIFAR-100 teachers published with them load
as they are. The VGGs are `cifar_vgg*` because torchvision's `vgg11`...`vgg19` are other
(224x224) models. All pool globally at the end, so other input sizes (28x28 MNIST) work too.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .cifar_mobilenet import CifarMobileNetV2
from .cifar_resnet import CifarResNet, CifarWideResNet
from .cifar_shufflenet import CifarShuffleNetV1, CifarShuffleNetV2
from .cifar_vgg import CifarVGG

_X4 = (32, 64, 128, 256)  # resnet8x4 and resnet32x4: four times the usual widths

CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(CifarResNet, depth=d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": partial(CifarResNet, depth=8, widths=_X4),
    "resnet32x4": partial(CifarResNet, depth=32, widths=_X4),
    **{f"wrn_{d}_{k}": partial(CifarWideResNet, depth=d, widen_factor=k) for d in (16, 40) for k in (1, 2)},
    **{f"cifar_vgg{d}": partial(CifarVGG, depth=d) for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": CifarMobileNetV2,
    "shufflenetv1": CifarShuffleNetV1,
    "shufflenetv2": CifarShuffleNetV2,
}
