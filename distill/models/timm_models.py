"""timm models by name: `timm:resnet18`, `timm:efficientnet_b0`, ... (timm is an optional extra).

A `timm:` name is a built-in architecture, not user code: timm only builds models from its own
registry, so a checkpoint naming one needs no --trust-code. Models are always built with
`pretrained=False` (no download); pretrained weights come from a local file through `weights`.
timm is imported only here and only when a `timm:` name is used, so `import distill` stays light.
"""
from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from torch import nn

from ..errors import DistillError, did_you_mean

PREFIX = "timm:"
INSTALL_HINT = "pip install 'distill[timm]' (or pip install timm)"
# create_model arguments that would download, read files with timm's own loader, or stop the model
# being a classifier: the recipe's `weights` (loaded with weights_only=True) is the way in.
REFUSED_OPTIONS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                             "cache_dir", "features_only", "in_chans", "num_classes"})


def is_timm_name(arch: str) -> bool:
    return arch.startswith(PREFIX)


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise DistillError(f"timm models need the timm package, which is not installed; expected "
                           f"{INSTALL_HINT}") from None
    return timm


def check_timm_name(arch: str) -> str:
    """The timm model name in `timm:NAME`, or a DistillError (timm missing, or a name it does not know)."""
    timm = _timm()
    name = arch[len(PREFIX):]
    if not name or not timm.is_model(name):
        raise DistillError(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}; expected "
                           "a name from timm.list_models(), e.g. 'timm:resnet18'")
    return name


def build_timm_model(arch: str, num_classes: int, input_shape: Sequence[int], kwargs: dict) -> nn.Module:
    """A freshly initialised timm classifier with `num_classes` outputs and `input_shape[0]` channels."""
    name = check_timm_name(arch)
    refused = sorted(REFUSED_OPTIONS & set(kwargs))
    if refused:
        raise DistillError(f"model {arch!r}: option {refused[0]!r} is not accepted; expected the model's own "
                           "keyword arguments (distill sets classes and channels, and weights come from a "
                           "local file through `weights`)")
    return _timm().create_model(name, pretrained=False, num_classes=num_classes,
                                in_chans=int(input_shape[0]), **kwargs)

