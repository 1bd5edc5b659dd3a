"""Self-describing checkpoints: what the model is, plus its weights, safe to load.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load` reads it with
`weights_only=True` (no pickled code runs). It carries a `ModelCard`, which is enough to rebuild the
architecture, preprocess inputs and name the classes: export, bench and prune need nothing else.
Files are written atomically (temporary file, fsync, rename): a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DistillError
from .structure import capture_structure, restore_structure

FORMAT = "distill-checkpoint/1"


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
        from .registry import build_model
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


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DistillError(f"cannot write {path}: {e.strerror}; expected a writable directory") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; unsafe or broken files become a DistillError."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"checkpoint {path} does not exist; expected a file written by distill or torch.save")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a non-torch pickle: one line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if unsafe is None:  # garbage bytes, or a pickle torch cannot even parse safely
            raise _corrupt(path, e) from e
        raise DistillError(f"refusing to load {path}: it holds objects other than tensors and plain "
                           f"data, which could run code when unpickled ({unsafe[:160]}); expected "
                           "weights saved as tensors and plain data") from e
    except Exception as e:  # a truncated or foreign file fails in many ways, all of them "corrupt"
        raise _corrupt(path, e) from e


def _corrupt(path: Path, e: Exception) -> DistillError:
    return DistillError(f"checkpoint {path} cannot be read: it is truncated, corrupt or not a torch file "
                        f"({type(e).__name__}); expected a complete file written by torch.save")


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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a distill checkpoint or of a plain saved state dict."""
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["state_dict"]
    for key in ("state_dict", "model"):  # {"state_dict"|"model": ..., "epoch": ...} (RepDistiller, mdistiller)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DistillError(f"{path} holds no state dict; expected a distill checkpoint or torch.save(model.state_dict())")
    return obj
