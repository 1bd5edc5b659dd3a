"""Build any supported classifier from a name.

Names resolve in this order:
- `mlp`, `small_cnn`: the small models in `distill.models.mlp`;
- the small-input (32x32) family of the CRD/DKD papers: `resnet8` ... `mobilenetv2`;
- any torchvision classification model (`resnet18`, `vgg16_bn`, `mobilenet_v3_small`, ...);
- `timm:NAME`: any timm model (`timm:resnet18`, `timm:efficientnet_b0`), when timm is installed,
  built without downloading (see `distill.models.timm_models`);
- `"package.module:factory"`: a user's own model, called with `num_classes` (when it takes it)
  and the recipe's keyword arguments. Naming a factory runs its code, so a checkpoint may name one
  only when the user trusts it (see `load_checkpoint`), and callables that cannot be model factories
  (the standard library, torch or numpy functions, non-callables) are refused before any call.

`weights` is a torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`, `ResNet18_Weights.IMAGENET1K_V2`)
or a path to a checkpoint; either way the classification head is replaced when the class count differs.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError, did_you_mean
from .cifar import CIFAR_MODELS
from .loading import read_state_dict
from .mlp import MLP, SmallCNN
from .timm_models import build_timm_model, is_timm_name

FACTORY_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# Installed beside distill, holding no model factory: a name from them is refused before any import.
NO_MODEL_PACKAGES = frozenset({"numpy", "pandas", "scipy", "sklearn", "PIL", "matplotlib", "onnx", "onnxruntime",
                               "click", "joblib", "dill", "yaml", "pip", "setuptools", "pkg_resources",
                               "pytest", "_pytest", "IPython"})
# Their model factories are their nn.Module classes and registered model builders; nothing else.
MODEL_PACKAGES = frozenset({"torch", "torchvision", "distill", "torch_pruning"})


BUILD_ARGUMENTS = ("arch", "num_classes", "input_shape", "weights")  # build_model's own: never model options


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
    except (MemoryError, OverflowError, RuntimeError) as e:  # sizes no machine can hold
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DistillError(f"model {arch!r} with options {kwargs or '{}'} for inputs {tuple(input_shape)} and "
                           f"{num_classes} classes cannot be built ({first[:160]}); expected sizes that fit "
                           "in memory") from e


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
    elif is_timm_name(arch):
        if weights and not _is_path(weights):
            raise DistillError(f"weights {weights!r} for {arch!r}: timm models are built offline without "
                               "pretrained weights; expected a local checkpoint or state-dict file")
        model = build_timm_model(arch, num_classes, input_shape, kwargs)
    elif is_factory_spec(arch):
        model = _user_model(arch, num_classes, kwargs)
    else:
        raise DistillError(f"unknown model {arch!r}{did_you_mean(arch, available_models())}; "
                           "expected a name from `distill models` or 'package.module:factory'")
    if weights:
        load_pretrained(model, weights)
    return model


def is_factory_spec(arch: str) -> bool:
    """Whether `arch` names code to run (`package.module:factory`) rather than a built-in model
    (`timm:NAME` is built-in: timm builds only the models of its own registry)."""
    return ":" in arch and not is_timm_name(arch)


def _check_factory_spec(spec: str) -> None:
    """Refuse, before anything is imported, a name that is malformed or from a package without models.

    The standard library is refused whole (importing some of it already acts: `antigravity`), and
    so is any `__main__` module, whose import runs a program.
    """
    if not FACTORY_SPEC.fullmatch(spec):
        raise DistillError(f"model {spec!r} is not a factory name; expected 'package.module:factory' "
                           "(dotted module names, a colon, a function or class name)")
    parts = spec.partition(":")[0].split(".")
    if parts[0] in sys.stdlib_module_names or parts[0] in NO_MODEL_PACKAGES or "__main__" in parts:
        raise _not_a_factory(spec, f"{parts[0]} is {_package_kind(parts[0])}")


def _user_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable `spec` names, once it is known that it can be a model factory (never called here)."""
    _check_factory_spec(spec)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DistillError(f"cannot load model {spec!r}: {e}; expected 'package.module:factory' "
                           "importable from the current directory or an installed package") from e
    _check_factory(spec, factory)
    return factory


def _check_factory(spec: str, factory: object) -> None:
    """Refuse what cannot build a model, judged by where it is defined: a user module that
    re-exports `os.system` (or a functools.partial of it) still hands over `os.system`."""
    if not callable(factory):
        raise _not_a_factory(spec, f"it is {type(factory).__name__}, not a function or class")
    while isinstance(factory, functools.partial):
        factory = factory.func
    origin = getattr(factory, "__module__", None)
    if not isinstance(origin, str):
        raise _not_a_factory(spec, "the module that defines it is unknown")
    for package in (spec.split(".")[0].split(":")[0], origin.split(".")[0]):
        if package in sys.stdlib_module_names or package in NO_MODEL_PACKAGES:
            raise _not_a_factory(spec, f"it comes from {origin}, and {package} is {_package_kind(package)}")
        if package in MODEL_PACKAGES and not _is_model_class_or_builder(factory):
            raise _not_a_factory(spec, f"it is {origin}.{getattr(factory, '__name__', '?')}, from {package} "
                                       "but neither an nn.Module class nor a model builder")


def _package_kind(package: str) -> str:
    if package in sys.stdlib_module_names:
        return "part of Python's standard library"
    return "a package without model factories"


def _is_model_class_or_builder(factory: object) -> bool:
    if inspect.isclass(factory):
        return issubclass(factory, nn.Module)
    import torchvision
    builders = [torchvision.models.get_model_builder(n) for n in torchvision.models.list_models()]
    return any(factory is b for b in [*builders, *small_input_models().values()])


def _not_a_factory(spec: str, why: str) -> DistillError:
    return DistillError(f"refusing to call {spec!r} to build a model: {why}; expected a function or "
                        "class of your own that returns an nn.Module")


def _user_model(spec: str, num_classes: int, kwargs: dict) -> nn.Module:
    factory = _user_factory(spec)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some compiled callables have no signature: pass what was given
        params = {}
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
