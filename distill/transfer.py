"""Adapting a (usually pretrained) teacher to the user's data before it teaches.

Strategies (after CS231n's transfer-learning advice):
- `scratch`: train everything from random initialisation.
- `feature_extraction`: the pretrained backbone is fixed; its "CNN codes" (the head's input) are
  computed once, without augmentation, and only a new head is trained on them: no backbone
  forward per epoch, so it is fast and cannot overfit the backbone on little data.
- `finetune`: parameters from module `finetune_from` onward train (pretrained ones at
  `backbone_lr_scale` x the head's rate); earlier ones are frozen, and their BN layers stay in eval
  mode so their statistics are untouched.
- `full`: fine-tune everything from the pretrained weights (backbone at `backbone_lr_scale`).
- `auto`: picks one of the above from the labelled examples per class, and says why.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from .errors import DistillError
from .models.registry import last_layer
from .taps import check_path
from .strategy import STRATEGIES
from .train import Schedule, Supervised, fit, make_loader

class PartlyFrozen(Supervised):
    """Cross-entropy training that keeps the BN layers of the frozen part in eval mode."""

    def __init__(self, model: nn.Module, frozen_bn: list[nn.Module]) -> None:
        super().__init__(model)
        self._frozen_bn = frozen_bn

    def train(self, mode: bool = True) -> "PartlyFrozen":
        super().train(mode)
        for bn in self._frozen_bn:
            bn.eval()
        return self


def freeze_before(model: nn.Module, first_trained: str) -> list[nn.Module]:
    """Freeze every parameter registered before module `first_trained`; returns the frozen BN layers."""
    check_path(model, first_trained, role="teacher")
    prefix = first_trained + "."
    names = [n for n, _ in model.named_parameters()]
    start = next((i for i, n in enumerate(names) if n.startswith(prefix)), None)
    if start is None:
        raise DistillError(f"teacher layer {first_trained!r} has no parameters; expected a layer with "
                           "weights such as 'layer4'")
    frozen = set(names[:start])
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return [m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and all(f"{n}.{k}" in frozen for k, _ in m.named_parameters(recurse=False))
            and any(True for _ in m.parameters(recurse=False))]


def head_and_backbone_groups(model: nn.Module, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: the new head at the full rate, trainable pretrained layers at a smaller one."""
    head_name, head = last_layer(model)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr_scale": 1.0}]
    if backbone:
        groups.append({"params": backbone, "lr_scale": backbone_lr_scale})
    return groups


@torch.no_grad()
def cnn_codes(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 128
              ) -> tuple[Tensor, Tensor]:
    """The inputs of the model's head for every sample (the backbone runs once, in eval mode)."""
    _, head = last_layer(model)
    captured: list[Tensor] = []
    handle = head.register_forward_pre_hook(lambda m, args: captured.append(args[0].flatten(1).cpu()))
    model.eval().to(device)
    labels = []
    try:
        for images, targets in make_loader(data, batch_size, shuffle=False):
            model(images.to(device))
            labels.append(targets)
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(labels)


def adapt_teacher(model: nn.Module, strategy: str, train: Dataset, schedule: Schedule, *,
                  train_plain: Dataset | None = None, val: Dataset | None = None,
                  finetune_from: str | None = None, backbone_lr_scale: float = 0.1,
                  **fit_kwargs: Any) -> list[dict[str, Any]]:
    """Train `model` in place by `strategy` (not `auto`: resolve it with choose_strategy first)."""
    if strategy == "scratch":
        return fit(Supervised(model), train, schedule, val_data=val, **fit_kwargs)
    if strategy == "full":
        groups = head_and_backbone_groups(model, backbone_lr_scale)
        return fit(Supervised(model), train, schedule, val_data=val, param_groups=groups, **fit_kwargs)
    if strategy == "finetune":
        if not finetune_from:
            raise DistillError("strategy 'finetune' needs finetune_from; expected a layer path such as 'layer4'")
        frozen_bn = freeze_before(model, finetune_from)
        groups = head_and_backbone_groups(model, backbone_lr_scale)
        return fit(PartlyFrozen(model, frozen_bn), train, schedule, val_data=val, param_groups=groups,
                   **fit_kwargs)
    if strategy == "feature_extraction":
        return _train_head_on_codes(model, train_plain or train, val, schedule, **fit_kwargs)
    raise DistillError(f"unknown teacher strategy {strategy!r}; expected one of {', '.join(STRATEGIES[:4])}")


def _train_head_on_codes(model: nn.Module, train: Dataset, val: Dataset | None, schedule: Schedule,
                         **fit_kwargs: Any) -> list[dict[str, Any]]:
    """Train the head on standardised codes (well conditioned for SGD), then fold the
    standardisation into the head's weights so the model takes raw images as before."""
    device = torch.device(fit_kwargs.get("device", "cpu"))
    for p in model.parameters():
        p.requires_grad_(False)
    _, head = last_layer(model)
    codes, labels = cnn_codes(model, train, device)
    if not isinstance(head, nn.Linear) or codes.shape[1] != head.in_features:
        raise DistillError(f"feature extraction needs a linear head; {type(model).__name__}'s head "
                           f"takes {tuple(codes.shape[1:])}; expected strategy finetune or full")
    mean, std = codes.mean(0), codes.std(0).clamp_min(1e-6)
    standardise = lambda c: (c - mean) / std  # noqa: E731
    scaled_head = nn.Linear(head.in_features, head.out_features)
    val_codes = None
    if val is not None:
        val_x, val_y = cnn_codes(model, val, device)
        val_codes = TensorDataset(standardise(val_x), val_y)
    fit_kwargs.pop("speed", None)  # features are in memory: no workers, no image layout
    history = fit(Supervised(scaled_head), TensorDataset(standardise(codes), labels), schedule,
                  val_data=val_codes, **fit_kwargs)
    with torch.no_grad():  # W (x - m) / s + b  ==  (W / s) x + (b - W m / s)
        weight = scaled_head.weight.cpu() / std
        head.weight.copy_(weight)
        if head.bias is not None:
            head.bias.copy_(scaled_head.bias.cpu() - weight @ mean)
    model.eval()
    return history
