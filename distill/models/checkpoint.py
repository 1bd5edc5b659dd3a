"""Self-describing checkpoints: what the model is, plus its weights, safe to load.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load` reads it with
`weights_only=True` (no pickled code runs). It carries a `ModelCard`, which is enough to rebuild the
architecture, preprocess inputs and name the classes: export, bench and prune need nothing else.
A card read from a file is data: every value is checked, and a card whose architecture is a
`package.module:factory` (code to run) is built only when the caller trusts it (`trust_code`).
Files are written atomically (temporary file, fsync, rename): a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from ..data.load import MAX_IMAGE_SIZE
from ..errors import DistillError, did_you_mean
from ..files import atomic_save
from .loading import FORMAT, safe_load
from .registry import BUILD_ARGUMENTS, build_model, is_factory_spec
from .structure import capture_structure, restore_structure

REQUIRED_CARD_KEYS = ("arch", "num_classes", "input_shape")
PLAIN_TYPES = (str, int, float, bool, type(None))
MAX_NESTING = 8  # kwargs nest lists and tables at most this deep


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
    def from_dict(cls, d: Any, source: str = "model card") -> "ModelCard":
        """A card from data read from a file; a missing, unknown or ill-typed key is one DistillError
        naming it (`source` says which file)."""
        try:
            return cls(**_card_values(d))
        except DistillError as e:
            raise DistillError(f"{source}: {e}") from None


def _card_values(d: Any) -> dict[str, Any]:
    """The keyword arguments of ModelCard for the plain data `d`, each value checked."""
    names = [f.name for f in fields(ModelCard)]
    if not isinstance(d, dict):
        raise DistillError(f"card: expected a table of {', '.join(names)}, got {_shown(d)}")
    for key in d:
        if key not in names:
            raise DistillError(f"unknown card key {str(key)[:80]!r}{did_you_mean(str(key), names)}; expected only "
                               f"{', '.join(names)}")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in d]
    if missing:
        raise DistillError(f"card.{missing[0]} is missing; expected a card with {', '.join(REQUIRED_CARD_KEYS)}")
    values = {"arch": _arch(d["arch"]), "num_classes": _count(d["num_classes"], "card.num_classes")}
    values["input_shape"] = _input_shape(d["input_shape"])
    channels = values["input_shape"][0]
    if "kwargs" in d:
        values["kwargs"] = _options(d["kwargs"])
    for key in ("mean", "std"):
        if key in d:
            values[key] = _statistics(d[key], key, channels)
    if d.get("class_names") is not None:
        values["class_names"] = _class_names(d["class_names"], values["num_classes"])
    if "pruned" in d:
        values["pruned"] = _expect(d["pruned"], isinstance(d["pruned"], bool), "card.pruned", "true or false")
    return values


def _expect(value: Any, ok: bool, key: str, expected: str) -> Any:
    if not ok:
        raise DistillError(f"{key}: expected {expected}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:100]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _count(value: Any, key: str) -> int:
    return _expect(value, _is_count(value), key, "a positive integer")


def _arch(value: Any) -> str:
    return _expect(value, isinstance(value, str) and value != "", "card.arch",
                   "a model name from `distill models` or 'package.module:factory'")


def _input_shape(value: Any) -> tuple[int, int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_count(v) for v in value)
          and value[0] in (1, 3) and max(value[1:]) <= MAX_IMAGE_SIZE)
    return tuple(_expect(value, ok, "card.input_shape",
                         f"(C, H, W) with C 1 or 3 and sides of at most {MAX_IMAGE_SIZE} pixels"))


def _options(value: Any) -> dict[str, Any]:
    """Keyword arguments of the model: plain values only, never build_model's own arguments."""
    _expect(value, isinstance(value, dict) and all(isinstance(k, str) for k in value), "card.kwargs",
            "a table of the model's keyword arguments")
    for key, option in value.items():
        if key in BUILD_ARGUMENTS:
            raise DistillError(f"card.kwargs.{key}: {key!r} is not a model option; expected the keyword "
                               "arguments of the model's constructor")
        _expect(option, _is_plain(option), f"card.kwargs.{key}",
                "a string, number, boolean, or a list or table of them")
    return dict(value)


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, PLAIN_TYPES):
        return True
    if depth >= MAX_NESTING:
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _statistics(value: Any, key: str, channels: int) -> tuple[float, ...]:
    """Per-channel normalisation: 1 or `channels` finite numbers (std: all positive)."""
    numbers = isinstance(value, (list, tuple)) and len(value) in (1, channels) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ok = numbers and (key == "mean" or min(value) > 0)
    expected = f"1 or {channels} finite numbers" + (", all positive" if key == "std" else "")
    return tuple(float(v) for v in _expect(value, ok, f"card.{key}", expected))


def _class_names(value: Any, num_classes: int) -> list[str]:
    ok = isinstance(value, (list, tuple)) and len(value) == num_classes and all(isinstance(v, str) for v in value)
    return list(_expect(value, ok, "card.class_names", f"{num_classes} strings, one per class"))


def _check_trusted(card: ModelCard, path: str | os.PathLike, trust_code: bool | Iterable[str]) -> None:
    """Refuse a card that needs code to be built unless the caller trusts it: `True` (the user said
    --trust-code), or a set of factories the user chose (those a recipe names for its own models)."""
    if not is_factory_spec(card.arch) or trust_code is True:
        return
    if trust_code and card.arch in ({trust_code} if isinstance(trust_code, str) else set(trust_code)):
        return
    raise DistillError(f"checkpoint {path} asks to run code from {card.arch[:200]!r} to build its model; expected "
                       "a built-in architecture (see `distill models`), or --trust-code (trust_code = true "
                       "in a recipe) if you trust this file")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: ModelCard,
                    extra: dict[str, Any] | None = None) -> None:
    """Write `model` with its card; `extra` holds small metadata (metrics, recipe section, ...)."""
    ckpt = {"format": FORMAT, "card": card.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}
    if card.pruned:
        ckpt["structure"] = capture_structure(model)
    atomic_save(ckpt, path)


def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite: a diverged or damaged model's are not."""
    return all(bool(t.isfinite().all()) for t in model.state_dict().values() if t.is_floating_point())


def load_checkpoint(path: str | os.PathLike,
                    trust_code: bool | Iterable[str] = False) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode).

    A card naming `package.module:factory` is built only when `trust_code` is True or holds that
    factory: the file alone never chooses code to run (the `trust_remote_code` convention).
    """
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DistillError(f"{path} is not a distill checkpoint (no '{FORMAT}' format tag); "
                           "expected a file written by `distill run`, `distill prune` or save_checkpoint")
    card = ModelCard.from_dict(ckpt.get("card"), source=f"checkpoint {path}")
    _check_trusted(card, path, trust_code)
    model = card.build()
    try:
        if card.pruned:
            restore_structure(model, ckpt["structure"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise DistillError(f"checkpoint {path} does not match architecture {card.arch!r} ({detail[:200]}); "
                           "expected the weights of the model its card describes") from e
    return model.eval(), card
