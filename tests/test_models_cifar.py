"""The small-input (32x32) family of the CRD/DKD papers: names, shapes, sizes, feature paths."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from distill.models import build_model
from distill.models.cifar import CIFAR_MODELS
from distill.models.cifar_resnet import CifarResNet
from distill.models.cifar_vgg import CifarVGG

NAMES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
         "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
         "cifar_vgg8", "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19",
         "mobilenetv2", "shufflenetv1", "shufflenetv2"]
ONE_PER_FAMILY = ["resnet8", "wrn_16_1", "cifar_vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # batch-2 passes gain nothing from threads


def _build(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return CIFAR_MODELS[name](num_classes=num_classes, in_channels=in_channels)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_family_has_exactly_the_paper_names():
    assert sorted(CIFAR_MODELS) == sorted(NAMES)


def test_no_name_shadows_a_torchvision_model():
    assert not set(CIFAR_MODELS) & set(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.parametrize("name", NAMES)
def test_every_model_maps_a_32x32_batch_to_class_logits(name):
    with torch.no_grad():
        assert _build(name, num_classes=7).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_each_family_takes_single_channel_28x28_images(name):
    with torch.no_grad():
        assert _build(name, num_classes=10, in_channels=1).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# Parameter counts for 100 classes of RepDistiller's/mdistiller's models, which the CRD and DKD
# papers quote rounded (resnet32x4 7.43M, wrn_40_2 2.26M, cifar_vgg13 9.46M, ...): exact equality
# is what lets their published teacher checkpoints load.
@pytest.mark.parametrize("name, params", [
    ("resnet8", 83_892), ("resnet20", 278_324), ("resnet56", 861_620), ("resnet110", 1_736_564),
    ("resnet8x4", 1_233_540), ("resnet32x4", 7_433_860), ("wrn_16_2", 703_284), ("wrn_40_1", 569_780),
    ("wrn_40_2", 2_255_156), ("cifar_vgg8", 3_965_028), ("cifar_vgg13", 9_462_180),
    ("mobilenetv2", 812_836), ("shufflenetv1", 949_258), ("shufflenetv2", 1_355_528),
])
def test_parameter_counts_match_the_reference_implementation(name, params):
    assert _count(_build(name)) == params


@pytest.mark.parametrize("name, key", [
    ("resnet8x4", "layer1.0.downsample.1.running_var"),
    ("wrn_40_2", "block2.layer.0.convShortcut.weight"),
    ("cifar_vgg13", "block0.4.running_mean"),
    ("mobilenetv2", "blocks.6.0.conv.7.weight"),
    ("mobilenetv2", "classifier.0.weight"),
    ("shufflenetv1", "layer3.3.conv3.weight"),
    ("shufflenetv2", "layer2.0.bn5.bias"),
    ("shufflenetv2", "linear.weight"),
])
def test_state_dict_keys_follow_repdistiller_so_published_teachers_load(name, key):
    assert key in _build(name).state_dict()


@pytest.mark.parametrize("name, shapes", [
    ("resnet8x4", {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "avgpool": (256, 1, 1)}),
    ("wrn_16_1", {"block1": (16, 32, 32), "block2": (32, 16, 16), "block3": (64, 8, 8), "relu": (64, 8, 8)}),
    ("cifar_vgg8", {"block0": (64, 32, 32), "block1": (128, 16, 16), "block2": (256, 8, 8),
                    "block3": (512, 4, 4), "block4": (512, 4, 4)}),
    ("mobilenetv2", {"blocks.1": (12, 16, 16), "blocks.2": (16, 8, 8), "blocks.4": (48, 4, 4),
                     "blocks.6": (160, 2, 2), "conv2": (1280, 2, 2)}),
    ("shufflenetv1", {"layer1": (240, 16, 16), "layer2": (480, 8, 8), "layer3": (960, 4, 4)}),
    ("shufflenetv2", {"layer1": (116, 16, 16), "layer2": (232, 8, 8), "layer3": (464, 4, 4)}),
])
def test_documented_feature_paths_give_the_papers_feature_maps(name, shapes):
    model = _build(name).eval()
    seen = {}
    for path in shapes:
        model.get_submodule(path).register_forward_hook(
            lambda m, i, out, path=path: seen.__setitem__(path, tuple(out.shape[1:])))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert seen == shapes


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_no_layer_overwrites_an_output_a_hook_has_already_seen(name):
    model = _build(name).train()
    seen = []
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, out: seen.append((out, out.detach().clone())))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen and all(torch.equal(out.detach(), copy) for out, copy in seen)


def test_build_model_resolves_the_family_with_the_input_channels():
    model = build_model("resnet8", 10, (1, 28, 28))
    assert isinstance(model, CifarResNet) and model.conv1.in_channels == 1 and model.fc.out_features == 10


def test_convolutions_get_he_initialisation():
    conv = _build("resnet8x4").layer3[0].conv2  # 256 -> 256, fan-out 256 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.02)


def test_bad_depths_are_refused():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=9)
    with pytest.raises(ValueError, match="one of"):
        CifarVGG(depth=12)
