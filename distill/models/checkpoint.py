"""Self-describing checkpoints: what the model is, plus its weights, safe to load.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load` reads it with
`weights_only=True` (no pickled code runs). It carries a `ModelCard`, which is enough to rebuild the
architecture, preprocess inputs and name the classes: export, bench and prune need nothing else.
Files are written atomically (temporary file, fsync, rename): a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..errors import DistillError
from ..files import atomic_save
from .loading import FORMAT, safe_load
from .registry import build_model
from .structure import capture_structure, restore_structure


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and feed it correctly."""

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: list[str] | None = None
    pruned: bool = False  # sizes differ from `arch`: the checkpoint's "structure" re-applies them

    def build(self) -> nn.Module:
        """A freshly initialised model of this card's architecture (unpruned)."""
        return build_model(self.arch, self.num_classes, self.input_shape, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: ModelCard,
                    extra: dict[str, Any] | None = None) -> None:
    """Write `model` with its card; `extra` holds small metadata (metrics, recipe section, ...)."""
    ckpt = {"format": FORMAT, "card": card.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}
    if card.pruned:
        ckpt["structure"] = capture_structure(model)
    atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DistillError(f"{path} is not a distill checkpoint (no '{FORMAT}' format tag); "
                           "expected a file written by `distill run`, `distill prune` or save_checkpoint")
    card = ModelCard.from_dict(ckpt["card"])
    model = card.build()
    try:
        if card.pruned:
            restore_structure(model, ckpt["structure"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise DistillError(f"checkpoint {path} does not match architecture {card.arch!r} ({detail[:200]}); "
                           "expected the weights of the model its card describes") from e
    return model.eval(), card
