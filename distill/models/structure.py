"""The shape of a pruned model, as plain data a `weights_only=True` load accepts.

A pruned model no longer matches the architecture its `ModelCard` builds. `capture_structure`
records every module's integer size attributes and every tensor's shape; `restore_structure`
re-applies them to a freshly built model, after which an ordinary `load_state_dict` fits.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DistillError


def capture_structure(model: nn.Module) -> dict[str, Any]:
    """The sizes that make a pruned model differ from its freshly built architecture, as plain data.

    Integer attributes of every module (in_channels, num_features, in_features, groups, ...) and
    the shape of every state-dict tensor; `torch.load(weights_only=True)` accepts all of it.
    """
    attributes = {name: {k: _plain(v) for k, v in vars(module).items() if _is_size(v) and not k.startswith("_")}
                  for name, module in model.named_modules()}
    shapes = {name: list(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    return {"attributes": attributes, "shapes": shapes}


def _is_size(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_size(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> int | list:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else int(value)


def restore_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give a freshly built `model` the sizes `capture_structure` recorded; load weights after this.

    Tensors whose shape changed are replaced by empty ones of the recorded shape (shared tensors
    stay shared), so `model.load_state_dict` fills them.
    """
    modules = dict(model.named_modules())
    for name, attrs in structure["attributes"].items():
        if name not in modules:
            raise DistillError(f"pruned structure names a layer {name!r} that {type(model).__name__} "
                               "lacks; expected the architecture the checkpoint was pruned from")
        for key, value in attrs.items():
            old = getattr(modules[name], key, None)
            setattr(modules[name], key, _like(old, value))
    resized: dict[int, Tensor] = {}
    for key, shape in structure["shapes"].items():
        owner_name, _, attr = key.rpartition(".")
        owner = modules.get(owner_name)
        tensor = getattr(owner, attr, None) if owner is not None else None
        if not isinstance(tensor, Tensor):
            raise DistillError(f"pruned structure names a tensor {key!r} that {type(model).__name__} "
                               "lacks; expected the architecture the checkpoint was pruned from")
        if list(tensor.shape) == shape:
            continue
        if id(tensor) not in resized:
            empty = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
            resized[id(tensor)] = (nn.Parameter(empty, requires_grad=tensor.requires_grad)
                                   if isinstance(tensor, nn.Parameter) else empty)
        setattr(owner, attr, resized[id(tensor)])


def _like(old: Any, value: Any) -> Any:
    """A stored list back as a tuple where the attribute was one (kernel_size, normalized_shape, ...)."""
    return tuple(value) if isinstance(old, tuple) else value
