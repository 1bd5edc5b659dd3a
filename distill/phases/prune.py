"""The prune phase: remove channels from the distilled student, then win the accuracy back."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import ContextManager

import torch
from torch import nn

from ..data import take_batch
from ..distiller import Distiller, Term
from ..losses import HintLoss, KDLoss
from ..latency import onnx_latency
from ..prune import prune_model, prune_to_latency
from ..settings import Schedule
from ..train import Supervised, evaluate, fit
from .context import RunContext


def prune_phase(ctx: RunContext, student: nn.Module) -> nn.Module:
    """Prune a copy of the distilled student to the MACs budget, then recover it, taught by the
    unpruned student (KD, optional hints) or by plain fine-tuning."""
    done = ctx.finished("pruned")
    if done is not None:
        return done
    spec = ctx.recipe.prune
    model = copy.deepcopy(student).cpu()
    calibration = take_batch(ctx.data.train_plain, 64) if spec.importance == "taylor" else None
    example = torch.zeros(1, *ctx.data.input_shape)
    if spec.latency_budget_ms is not None:
        s = ctx.recipe.student
        measure = onnx_latency(ctx.data.input_shape, batch=s.latency_batch, provider=s.latency_provider)
        model, report = prune_to_latency(model, example, spec.latency_budget_ms, measure,
                                         importance=spec.importance, calibration=calibration)
    else:
        report = prune_model(model, example, macs_ratio=spec.macs, importance=spec.importance, steps=spec.steps,
                             calibration=calibration)
    if ctx.progress:
        print(report.summary())
    model = model.to(ctx.device)
    after_pruning = evaluate(model, ctx.data.test, ctx.device)["accuracy"]
    schedule = Schedule(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr)
    with _recovery(ctx, student, model) as module:
        history = fit(module, ctx.train_set("student"), schedule, **ctx.fit_options("pruned"))
    budget = {} if report.latency_budget_ms is None else {
        "latency_budget_ms": report.latency_budget_ms, "latency_ms_before": report.latency_ms_before,
        "latency_ms_after_pruning": report.latency_ms_after, "round_to": report.round_to}
    ctx.finish("pruned", model, history, dataclasses.replace(ctx.card("student"), pruned=True),
               recovery=spec.recovery, macs_target=report.target, macs_ratio=report.ratio, on_target=report.on_target,
               accuracy_after_pruning=after_pruning, **budget)
    return model


def _recovery(ctx: RunContext, student: nn.Module, pruned: nn.Module) -> ContextManager[nn.Module]:
    """KD (+ hints at the same paths) from the unpruned student, or fine-tuning on the labels; as a
    context that removes the Distiller's hooks from both models afterwards."""
    spec = ctx.recipe.prune
    if spec.recovery != "kd":
        return contextlib.nullcontext(Supervised(pruned))
    terms = [Term("kd", KDLoss(spec.temperature))]
    terms += [Term(f"hint_{p}", HintLoss(), weight=spec.hint_weight, student=p, teacher=p)
              for p in spec.hint_layers]
    return Distiller(student.eval(), pruned, terms, ctx.data.input_shape, ce_weight=ctx.recipe.distill.ce_weight)
