"""What `distill run` does with a recipe: teacher -> student (+ baseline, pseudo-label student)
[-> prune -> export -> bench], once, or once per seed with the results pooled.

Every phase writes its checkpoint into the run directory when it finishes and is skipped when that
checkpoint is already there, so `--resume` continues an interrupted run from the last complete epoch
of the phase it was in. Each phase is one function in `distill.phases`; the layers below take plain
arguments, and only the phases and this module read a Recipe.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .files import refuse_overwrite
from .model_data import data_for_recipe
from .phases import (RunContext, baseline_phase, bench_phase, choose_phase, export_phase, gain_phase, preflight,
                     prune_phase, pseudo_label_phase, student_phase, teacher_phase, verify_budget_phase)
from .recipe import Recipe, to_toml
from .report import refresh_report
from .rundir import RunDir
from .seeds import pool_seeds
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
    if recipe.seeds > 1:
        return _run_seeds(recipe, run, dev, resume, data_root, progress)
    return _run_once(recipe, run, dev, resume, data_root, progress)


def _run_once(recipe: Recipe, run: RunDir, device: torch.device, resume: bool, data_root: str | None,
              progress: bool, student_choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run into `run`, holding its lock; `student_choice`: a latency budget's choice already made."""
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            held.enter_context(run.lock())
            refuse_overwrite([("run file", p) for p in run.files()], _input_files(recipe))
            run.prepare(to_toml(recipe), resume)
        distributed.barrier()
        return _run_phases(recipe, run, device, data_root, progress and distributed.is_main(), student_choice)


def _run_seeds(recipe: Recipe, run: RunDir, device: torch.device, resume: bool, data_root: str | None,
               progress: bool) -> dict[str, Any]:
    """Every phase once per seed (seed, seed + 1, ...) into RUN/seed-N/, then the results pooled
    into RUN/metrics.json. The top level records its recipe once the first seed has finished, so a
    recipe that fails its preflight can be fixed and run again into the same --out. A latency budget
    chooses the student once, in the first seed: every seed then trains the same model."""
    seed_runs = [RunDir(run.seed_dir(seed)) for seed in range(recipe.seed, recipe.seed + recipe.seeds)]
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            held.enter_context(run.lock())
            # interrupted in the first seed, the top level holds no recipe.toml yet, only seed-N/
            started = run.recipe.exists() or any(r.recipe.exists() for r in seed_runs)
            run.prepare(to_toml(recipe), resume and run.recipe.exists())
            if resume and not started:
                run.prepare(to_toml(recipe), resume)  # says there is nothing to resume
        per_seed: dict[int, dict[str, Any]] = {}
        for k, seed_run in enumerate(seed_runs):
            seed = recipe.seed + k
            if progress:
                print(f"seed {seed} ({k + 1} of {recipe.seeds}) -> {seed_run.path}")
            one = dataclasses.replace(recipe, seed=seed, seeds=1, out=None)
            first_choice = per_seed[recipe.seed].get("student_choice") if per_seed else None
            per_seed[seed] = _run_once(one, seed_run, device, resume and seed_run.recipe.exists(), data_root,
                                       progress, first_choice)
            if distributed.is_main():
                if not run.recipe.exists():
                    run.begin(to_toml(recipe))
                run.write_metrics(pool_seeds(recipe.name, per_seed, recipe.seeds))
        if distributed.is_main():
            refresh_report(run.path)
        return pool_seeds(recipe.name, per_seed, recipe.seeds)


def _input_files(recipe: Recipe) -> list[str]:
    """The files a recipe reads (weights, checkpoints, data), which the run must never overwrite."""
    named = [recipe.data.path, recipe.data.unlabelled]
    for spec in (recipe.teacher, recipe.student):
        named += [spec.checkpoint, spec.weights]
    named += recipe.teacher.ensemble
    return [p for p in named if p]


def _run_phases(recipe: Recipe, run: RunDir, device: torch.device, data_root: str | None,
                progress: bool, student_choice: dict[str, Any] | None = None) -> dict[str, Any]:
    ctx = RunContext(recipe, run, data_for_recipe(recipe, data_root), device, progress)
    if student_choice and "student_choice" not in ctx.metrics:  # this run's own choice stands on --resume
        ctx.metrics["student_choice"] = student_choice
    choose_phase(ctx)  # a latency budget picks the student (ctx.recipe); `recipe` stays the one recorded
    preflight(ctx)
    if distributed.is_main():
        run.begin(to_toml(recipe))
    distributed.barrier()
    started = time.perf_counter()
    teacher = teacher_phase(ctx)
    student = student_phase(ctx, teacher)
    if recipe.baseline.enabled:
        gain_phase(ctx, student, baseline_phase(ctx))
    if recipe.baseline.pseudo_labels:
        gain_phase(ctx, student, pseudo_label_phase(ctx, teacher), key="gain_over_pseudo_labels")
    if recipe.prune.enabled:
        prune_phase(ctx, student)
    onnx_files = export_phase(ctx) if recipe.export.enabled else {}
    verify_budget_phase(ctx, onnx_files)
    if recipe.bench.enabled:
        bench_phase(ctx, onnx_files)
    ctx.metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    ctx.write()
    return ctx.metrics
