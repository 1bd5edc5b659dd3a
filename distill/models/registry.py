"""Build any supported classifier from a name.

Names resolve in this order:
- `mlp`, `small_cnn`: the small models in `distill.models.mlp`;
- the small-input (32x32) family of the CRD/DKD papers: `resnet8` ... `mobilenetv2`;
- any torchvision classification model (`resnet18`, `vgg16_bn`, `mobilenet_v3_small`, ...);
- `"package.module:factory"`: a user's own model, called with `num_classes` (when it takes it)
  and the recipe's keyword arguments.

`weights` is a torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`, `ResNet18_Weights.IMAGENET1K_V2`)
or a path to a checkpoint; either way the classification head is replaced when the class count differs.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError, did_you_mean
from .cifar import CIFAR_MODELS
from .loading import read_state_dict
from .mlp import MLP, SmallCNN


def small_input_models() -> dict[str, Callable[..., nn.Module]]:
    """The small-input (32x32) family of the CRD/DKD papers, by name."""
    return CIFAR_MODELS


def torchvision_names() -> list[str]:
    import torchvision  # imported where used: it adds ~2 s to every `import distill`
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """Every built-in model name (user models `package.module:factory` come on top)."""
    return ["mlp", "small_cnn", *sorted(small_input_models()), *torchvision_names()]


def build_model(arch: str, num_classes: int, input_shape: Sequence[int],
                weights: str | None = None, **kwargs) -> nn.Module:
    """A freshly built classifier with `num_classes` outputs for inputs of `input_shape` (C, H, W)."""
    try:
        return _build_model(arch, num_classes, input_shape, weights, **kwargs)
    except (TypeError, ValueError) as e:
        if not kwargs:
            raise
        raise DistillError(f"model {arch!r} rejected options {sorted(kwargs)}: {e}; expected the "
                           "keyword arguments of its constructor") from e


def _build_model(arch: str, num_classes: int, input_shape: Sequence[int],
                 weights: str | None = None, **kwargs) -> nn.Module:
    channels = int(input_shape[0])
    if arch == "mlp":
        model: nn.Module = MLP(math.prod(input_shape), num_classes, **kwargs)
    elif arch == "small_cnn":
        model = SmallCNN(channels, num_classes, **kwargs)
    elif arch in small_input_models():
        model = small_input_models()[arch](num_classes=num_classes, in_channels=channels, **kwargs)
    elif arch in torchvision_names():
        return _torchvision_model(arch, num_classes, weights, kwargs)
    elif ":" in arch:
        model = _user_model(arch, num_classes, kwargs)
    else:
        raise DistillError(f"unknown model {arch!r}{did_you_mean(arch, available_models())}; "
                           "expected a name from `distill models` or 'package.module:factory'")
    if weights:
        load_pretrained(model, weights)
    return model


def _user_model(spec: str, num_classes: int, kwargs: dict) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DistillError(f"cannot load model {spec!r}: {e}; expected 'package.module:factory' "
                           "importable from the current directory or an installed package") from e
    params = inspect.signature(factory).parameters
    if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {"num_classes": num_classes, **kwargs}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise DistillError(f"model factory {spec!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def _torchvision_model(arch: str, num_classes: int, weights: str | None, kwargs: dict) -> nn.Module:
    import torchvision
    tv_weights = None
    if weights and not _is_path(weights):
        tv_weights = _torchvision_weights(arch, weights)
    if tv_weights is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    else:
        try:
            model = torchvision.models.get_model(arch, weights=tv_weights, **kwargs)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise DistillError(
                f"cannot download weights {tv_weights} for {arch!r} ({e.__class__.__name__}: {e}); "
                f"when offline, put {Path(tv_weights.url).name} in {cache} or pass a local "
                "checkpoint path as weights") from e
        replace_head(model, num_classes)
    if weights and _is_path(weights):
        load_pretrained(model, weights)
    return model


def _torchvision_weights(arch: str, name: str):
    import torchvision
    enum = torchvision.models.get_model_weights(arch)
    short = name.split(".")[-1]
    if short == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[short]
    except KeyError:
        valid = ["DEFAULT", *enum.__members__]
        raise DistillError(f"unknown weights {name!r} for {arch!r}{did_you_mean(short, valid)}; "
                           f"expected one of {', '.join(valid)} or a checkpoint path") from None


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin")) or Path(weights).exists()


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give a classifier a new, freshly initialised last layer with `num_classes` outputs.

    The head is the last `nn.Linear` in module order (a 1x1 conv for SqueezeNet). Nothing happens
    when it already has the right size.
    """
    name, layer = last_layer(model)
    if isinstance(layer, nn.Linear) and layer.out_features != num_classes:
        new: nn.Module = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d) and layer.out_channels != num_classes:
        new = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size)
    else:
        return
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def last_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the classification head: the last Linear, else the last Conv2d."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise DistillError(f"{type(model).__name__} has no Linear or Conv2d layer to use as its head")


def load_pretrained(model: nn.Module, path: str) -> None:
    """Copy weights from a checkpoint file into `model`, skipping a head of another size.

    Accepts a distill checkpoint or a plain state dict, always with `weights_only=True`.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head, _ = last_layer(model)
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(head + ".") for k in skipped):
        raise DistillError(f"weights {path} do not fit {type(model).__name__}: shape mismatch in "
                           f"{', '.join(skipped[:3])}; expected a checkpoint of the same architecture")
    usable = {k: v for k, v in state.items() if k in own and k not in skipped}
    missing = [k for k in own if k not in usable and not k.startswith(head + ".")]
    if missing:
        raise DistillError(f"weights {path} lack {len(missing)} tensors of {type(model).__name__} "
                           f"(first: {missing[0]}); expected a checkpoint of the same architecture")
    model.load_state_dict(usable, strict=False)
