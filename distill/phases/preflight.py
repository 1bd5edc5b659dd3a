"""Checks that run before any training: a set-up that would fail later fails now, in seconds."""
from __future__ import annotations

from ..distiller import Distiller
from .context import RunContext


def preflight(ctx: RunContext) -> None:
    """Build both models and the distiller: wrong layer paths and class counts fail here."""
    spec = ctx.recipe.teacher
    teacher = ctx.load(spec.checkpoint)[0].to(ctx.device) if spec.checkpoint else ctx.build("teacher")
    with Distiller(teacher, ctx.build("student"), ctx.terms(), ctx.data.input_shape,
                   ce_weight=ctx.recipe.distill.ce_weight):
        pass
