"""`teacher.ensemble`: trained members loaded as one frozen teacher (never trained here)."""
from __future__ import annotations

import contextlib
import os

from torch import nn

from ..errors import DistillError
from ..models import Ensemble, finite_weights, read_state_dict, safe_load
from ..models.loading import FORMAT
from ..train import evaluate
from .context import RunContext


def load_ensemble(ctx: RunContext) -> Ensemble:
    """The recipe's ensemble on the run's device; each member checked against the data."""
    spec = ctx.recipe.teacher
    _check_distinct(spec.ensemble)
    members = [_member(ctx, f"teacher.ensemble.{i}", path) for i, path in enumerate(spec.ensemble)]
    return Ensemble(members, average=spec.ensemble_average).to(ctx.device)


def ensemble_teacher(ctx: RunContext) -> Ensemble:
    """The teacher phase of an ensemble: load, then score each member and the whole."""
    ensemble = load_ensemble(ctx)
    members = [{"source": str(path), "test_accuracy": evaluate(member, ctx.data.test, ctx.device)["accuracy"]}
               for path, member in zip(ctx.recipe.teacher.ensemble, ensemble.members)]
    ctx.score("teacher", ensemble, [], {"source": "ensemble", "average": ensemble.average, "members": members})
    return ensemble


def _check_distinct(paths: list[str]) -> None:
    """One file listed twice (by any path, link or copy of the name) would be averaged with itself."""
    for i, path in enumerate(paths):
        for j in range(i):
            with contextlib.suppress(OSError):  # a missing file: _member names it
                if os.path.samefile(path, paths[j]):
                    raise DistillError(f"teacher.ensemble.{i}: {path} is the same file as teacher.ensemble.{j} "
                                       f"({paths[j]}); expected different trained members (a member listed twice "
                                       "counts twice in the average)")


def _member(ctx: RunContext, where: str, path: str) -> nn.Module:
    """A distill checkpoint, or a state dict of teacher.model, that predicts this data's classes."""
    try:
        content = safe_load(path)
    except DistillError as e:
        raise DistillError(f"{where}: {e}") from None
    if isinstance(content, dict) and content.get("format") == FORMAT:
        try:
            model, card = ctx.load(path)
        except DistillError as e:
            raise DistillError(f"{where}: {e}") from None
        shape = tuple(card.input_shape)
        if card.num_classes != ctx.data.num_classes or shape != tuple(ctx.data.input_shape):
            raise DistillError(f"{where}: {path} takes inputs of shape {shape} and predicts {card.num_classes} "
                               f"classes, but data {ctx.recipe.data.name!r} gives {tuple(ctx.data.input_shape)} "
                               f"and {ctx.data.num_classes} classes; expected members trained on this data")
    else:
        model = ctx.build("teacher")
        try:
            model.load_state_dict(read_state_dict(path))
        except DistillError as e:
            raise DistillError(f"{where}: {e}") from None
        except RuntimeError as e:
            detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), type(e).__name__)
            raise DistillError(f"{where}: {path} does not fit teacher.model {ctx.recipe.teacher.model!r} with "
                               f"{ctx.data.num_classes} classes ({detail[:160]}); expected a distill checkpoint "
                               "or the state dict of that model") from None
    if not finite_weights(model):
        raise DistillError(f"{where}: {path} holds NaN or infinite weights; expected a trained teacher")
    return model.to(ctx.device).eval()
