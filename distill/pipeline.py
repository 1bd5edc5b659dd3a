"""What `distill run` does with a recipe: teacher -> student (+ baseline) [-> prune -> export -> bench].

Every phase writes its checkpoint into the run directory when it finishes and is skipped when that
checkpoint is already there, so `--resume` continues an interrupted run from the last complete epoch
of the phase it was in. Each phase is one function in `distill.phases`; the layers below take plain
arguments, and only the phases and this module read a Recipe.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .files import refuse_overwrite
from .model_data import data_for_recipe
from .phases import (RunContext, baseline_phase, bench_phase, export_phase, gain_phase, preflight,
                     prune_phase, student_phase, teacher_phase)
from .recipe import Recipe, to_toml
from .rundir import RunDir
from .settings import resolve_device


def run_recipe(recipe: Recipe, *, out: str | Path | None = None, resume: bool = False,
               device: str | None = None, data_root: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run every phase the recipe asks for; returns metrics.json's content.

    Rank 0 holds the run directory's lock from start to end: a second process on the same
    directory is refused instead of overwriting this one's files.
    """
    dev = resolve_device(device or recipe.device)
    distributed.init_from_env(dev)
    dev = distributed.device_for_rank(dev)  # under torchrun: this process's own GPU
    run = RunDir(out or recipe.out or Path("runs") / recipe.name)
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            held.enter_context(run.lock())
            refuse_overwrite([("run file", p) for p in run.files()], _input_files(recipe))
            run.prepare(to_toml(recipe), resume)
        distributed.barrier()
        return _run_phases(recipe, run, dev, data_root, progress and distributed.is_main())


def _input_files(recipe: Recipe) -> list[str]:
    """The files a recipe reads (weights, checkpoints, data), which the run must never overwrite."""
    named = [recipe.data.path]
    for spec in (recipe.teacher, recipe.student):
        named += [spec.checkpoint, spec.weights]
    named += recipe.teacher.ensemble
    return [p for p in named if p]


def _run_phases(recipe: Recipe, run: RunDir, device: torch.device, data_root: str | None,
                progress: bool) -> dict[str, Any]:
    ctx = RunContext(recipe, run, data_for_recipe(recipe, data_root), device, progress)
    preflight(ctx)
    if distributed.is_main():
        run.begin(to_toml(recipe))
    distributed.barrier()
    started = time.perf_counter()
    teacher = teacher_phase(ctx)
    student = student_phase(ctx, teacher)
    if recipe.baseline.enabled:
        gain_phase(ctx, student, baseline_phase(ctx))
    if recipe.prune.enabled:
        prune_phase(ctx, student)
    onnx_files = export_phase(ctx) if recipe.export.enabled else {}
    if recipe.bench.enabled:
        bench_phase(ctx, onnx_files)
    ctx.metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    ctx.write()
    return ctx.metrics
