"""Read any layer's output by its module path, with forward hooks: models work unchanged.

Paths are the names of `model.named_modules()` (`"layer3"`, `"features.28"`, `"blocks.3.mlp"`);
`"logits"` means the model's own output. No model has to rewrite its `forward` to expose features.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import DistillError

LOGITS = "logits"


def module_paths(model: nn.Module) -> list[str]:
    """Every path a term can read from `model` (besides "logits")."""
    return [name for name, _ in model.named_modules() if name]


def check_path(model: nn.Module, path: str, role: str = "model") -> None:
    """Raise a DistillError naming the nearest valid paths when `path` is not a module of `model`."""
    if path == LOGITS:
        return
    paths = module_paths(model)
    if path in paths:
        return
    near = difflib.get_close_matches(path, paths, n=5, cutoff=0.3) or paths[:5]
    raise DistillError(f"{role} {type(model).__name__} has no layer {path!r}; nearest valid paths: "
                       f"{', '.join(near)} (or 'logits'; `distill models --layers NAME` lists all)")


class FeatureTaps:
    """Keeps the latest output of each named module of `model` in `self.outputs`.

    The output is cloned so an in-place op that follows (e.g. `ReLU(inplace=True)` after a conv)
    cannot change what was captured. The clone is made outside inference mode, so a teacher run
    under `torch.inference_mode` yields ordinary tensors a loss can use. Call `remove()` to detach
    the hooks.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "model") -> None:
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for path in dict.fromkeys(p for p in paths if p != LOGITS):
            check_path(model, path, role)
            self._handles.append(model.get_submodule(path).register_forward_hook(self._saver(path)))

    def _saver(self, path: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            with torch.inference_mode(False):
                self.outputs[path] = output.clone()
        return hook

    def remove(self) -> None:
        """Detach the hooks and drop the captured outputs (they hold the last batch's activations)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()
