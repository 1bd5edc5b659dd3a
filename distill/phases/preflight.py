"""Checks that run before any training: a set-up that would fail later fails now, in seconds.

Without them, a recipe whose student cannot eat the data, or whose term reads a layer the forward
never calls, fails after the teacher has trained for an hour. The preflight builds both models,
feeds each one real training batch, and runs one distillation step's forward and backward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import take_batch
from ..distiller import SAMPLE_INDEX, Distiller
from ..errors import DistillError
from ..models import finite_weights
from ..taps import check_path
from ..tblog import require_tensorboard
from .context import RunContext
from .ensemble import load_ensemble


def preflight(ctx: RunContext) -> None:
    """Raise a DistillError for a set-up that could only fail after training started."""
    if ctx.recipe.log.tensorboard:
        require_tensorboard()
    if len(ctx.data.train) < 2:
        raise DistillError(f"data {ctx.recipe.data.name!r} leaves {len(ctx.data.train)} training image(s); "
                           "expected at least 2 (check train_limit, per_class, classes and val_fraction)")
    teacher = _model(ctx, "teacher")
    student = _model(ctx, "student")
    if ctx.recipe.prune.enabled:  # the pruned student's hints read the same paths in both students
        for path in ctx.recipe.prune.hint_layers:
            check_path(student, path, role="student (prune.hint_layers)")
    images, labels = take_batch(ctx.train_set("student"), 2)
    images, labels = images.to(ctx.device), labels.to(ctx.device)
    for role, model in (("teacher", teacher), ("student", student)):
        _check_forward(ctx, role, model, images)
    distiller = _run(ctx, "distiller", lambda: Distiller(teacher, student, ctx.terms(), ctx.data.input_shape,
                                                          ce_weight=ctx.recipe.distill.ce_weight))
    with distiller:
        distiller.train()
        indices = {SAMPLE_INDEX: torch.arange(len(images), device=ctx.device)}  # for CRD's memory bank
        _, losses = _run(ctx, "distillation terms", lambda: distiller(images, labels, indices))
        total = sum(losses.values())
        if total.requires_grad:
            total.backward()


def _model(ctx: RunContext, role: str) -> nn.Module:
    """The teacher or student as the run will use it: its checkpoint or ensemble (checked against the
    data), or built fresh."""
    if role == "teacher" and ctx.recipe.teacher.ensemble:
        return load_ensemble(ctx)
    path = ctx.spec(role).checkpoint
    if not path:
        return ctx.build(role)
    model, card = ctx.load(path)
    if not finite_weights(model):
        raise DistillError(f"{role}.checkpoint {path} holds NaN or infinite weights; expected a trained "
                           f"{role} (this one diverged or is damaged)")
    if card.num_classes != ctx.data.num_classes or tuple(card.input_shape) != tuple(ctx.data.input_shape):
        raise DistillError(f"{role}.checkpoint {path} takes inputs of shape {tuple(card.input_shape)} and "
                           f"predicts {card.num_classes} classes, but data {ctx.recipe.data.name!r} gives "
                           f"{tuple(ctx.data.input_shape)} and {ctx.data.num_classes} classes; expected a "
                           f"{role} trained on this data (set data.channels / data.image_size to match)")
    return model.to(ctx.device)


def _check_forward(ctx: RunContext, role: str, model: nn.Module, images: torch.Tensor) -> None:
    """One batch through one model in training mode, where BatchNorm is strictest."""
    was_training = model.training
    model.train(role == "student")
    try:
        with torch.no_grad():
            logits = _run(ctx, role, lambda: model(images))
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(images), ctx.data.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DistillError(f"{role} {ctx.spec(role).model!r} returns {shape} for a batch of {len(images)}; "
                           f"expected logits of shape ({len(images)}, {ctx.data.num_classes})")


def _run(ctx: RunContext, what: str, step):
    """`step()`, with the failures a bad set-up causes turned into one line that says what to change."""
    try:
        return step()
    except DistillError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise DistillError(f"preflight: the {what} failed on one batch of {ctx.recipe.data.name!r} "
                           f"(inputs of shape {tuple(ctx.data.input_shape)}): {_first_line(e)}; "
                           f"{_hint(str(e))}") from e


def _hint(message: str) -> str:
    """What to change for the common ways a model and the data do not fit."""
    text = message.lower()
    if "channels" in text:
        return "expected data.channels to match the model's input channels (e.g. data.channels = 3 for RGB models)"
    if "too small" in text or "kernel size" in text or "output size" in text:
        return "expected larger images for this model's pooling (set data.image_size, e.g. 32 or 224)"
    if "more than 1 value per channel" in text:
        return "expected training batches of at least 2 images"
    return "expected models that accept these inputs (check data.image_size, data.channels and the model options)"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
