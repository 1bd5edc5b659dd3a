"""The teacher phase: a given checkpoint, or a teacher adapted to the run's data by a strategy."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DistillError
from ..strategy import choose_strategy
from ..transfer import adapt_teacher
from .context import RunContext
from .ensemble import ensemble_teacher


def teacher_phase(ctx: RunContext) -> nn.Module:
    """The trained teacher, on the run's device; trained here unless the recipe gives a checkpoint
    or an earlier part of this run finished it."""
    if ctx.recipe.teacher.ensemble:
        return ensemble_teacher(ctx)
    if ctx.recipe.teacher.checkpoint:
        return given_teacher(ctx, ctx.recipe.teacher.checkpoint)
    done = ctx.finished("teacher")
    if done is not None:
        return done
    model, history, info = _adapted_teacher(ctx)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise DistillError("the teacher diverged: its weights are no longer finite after training; "
                           "expected a lower teacher.lr (or pretrained teacher.weights)")
    ctx.finish("teacher", model, history, ctx.card("teacher"), **info)
    return model


def given_teacher(ctx: RunContext, path: str) -> nn.Module:
    """`teacher.checkpoint`: an already trained teacher (the preflight checked it fits the data)."""
    model = ctx.load(path)[0].to(ctx.device)
    ctx.score("teacher", model, [], {"source": str(path)})
    return model


def _adapted_teacher(ctx: RunContext) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """Train the teacher by its strategy (`auto` decides from the labelled examples per class)."""
    spec = ctx.recipe.teacher
    per_class = len(ctx.data.train) / ctx.data.num_classes
    decision = choose_strategy(spec.strategy, bool(spec.weights), per_class)
    if spec.strategy == "auto" and ctx.progress:
        print(f"teacher strategy: {decision.strategy} ({decision.reason})")
    model = ctx.build("teacher", spec.weights)
    options = ctx.fit_options("teacher")
    history = adapt_teacher(model, decision.strategy, ctx.train_set("teacher"), spec.schedule(),
                            train_plain=ctx.data.train_plain, val=options.pop("val_data"),
                            finetune_from=spec.finetune_from, backbone_lr_scale=spec.backbone_lr_scale,
                            **options)
    return model, history, {"strategy": decision.strategy, "strategy_reason": decision.reason}
