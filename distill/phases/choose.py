"""The latency-budget phases: choose the student by measured ONNX latency before any training, and
verify at the end that the trained student (as exported) meets the budget.

The choice is recorded in metrics.json as `student_choice`; a `--resume` reuses it rather than
timing again (timings move, and a different choice would not fit the checkpoints already trained).
The recipe itself (recipe.toml) keeps the budget and the candidates, not the choice: the chosen
model replaces the student only in the run's working copy of the recipe (`ctx.recipe`).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..export import export_onnx
from ..latency import Candidate, choice_record, choice_table, choose, measure_candidates, time_onnx, verdict
from ..models import ModelCard
from ..models.family import size_family
from ..models.loading import safe_load
from .context import RunContext


def choose_phase(ctx: RunContext) -> None:
    """Make the student the most capable candidate whose measured p50 fits `student.latency_budget_ms`."""
    spec = ctx.recipe.student
    if spec.latency_budget_ms is None:
        return
    candidates = [(c.model, dict(c.options)) for c in spec.candidates] or size_family(spec.model, spec.options)
    record = _stored_choice(ctx, candidates)
    if record is None and distributed.is_main():  # written to metrics.json with the first finished phase
        measured = measure_candidates(candidates, ctx.data.num_classes, ctx.data.input_shape,
                                      batch=spec.latency_batch, provider=spec.latency_provider, seed=ctx.recipe.seed)
        chosen = _trained_choice(ctx, candidates)
        record = choice_record(measured, choose(measured, spec.latency_budget_ms) if chosen is None else chosen,
                               spec.latency_budget_ms, spec.latency_batch, spec.latency_provider)
    index = int(distributed.all_reduce(torch.tensor([record["chosen"] if record else -1], device=ctx.device), "max")[0])
    if record is None:  # another rank timed the candidates: it chose for all
        record = {"chosen": index, "candidates": [{"model": m, "options": o} for m, o in candidates]}
    elif distributed.is_main():
        ctx.metrics["student_choice"] = record
        if ctx.progress:
            rows = [Candidate(**c) for c in record["candidates"]]
            print(f"latency budget {record['budget_ms']:g} ms (p50, batch {record['batch']}, {record['provider']}):")
            print(choice_table(rows, record["chosen"], record["budget_ms"]))
    chosen = record["candidates"][record["chosen"]]
    ctx.recipe = dataclasses.replace(ctx.recipe, student=dataclasses.replace(
        spec, model=chosen["model"], options=dict(chosen["options"])))


def _stored_choice(ctx: RunContext, candidates: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """This run's earlier choice, when it was made among the same candidates under the same budget."""
    spec, stored = ctx.recipe.student, ctx.metrics.get("student_choice")
    if not isinstance(stored, dict):
        return None
    try:
        same = ([(c["model"], c["options"]) for c in stored["candidates"]] == candidates
                and (stored["budget_ms"], stored["batch"], stored["provider"])
                == (spec.latency_budget_ms, spec.latency_batch, spec.latency_provider)
                and 0 <= stored["chosen"] < len(candidates))
    except (KeyError, TypeError):
        return None
    return stored if same else None


def _trained_choice(ctx: RunContext, candidates: list[tuple[str, dict[str, Any]]]) -> int | None:
    """The candidate a student already trained in this run directory is (metrics.json lost its
    choice): continuing with another would throw that training away, or refuse to resume."""
    path = ctx.run.checkpoint("student")
    if not path.exists():
        return None
    try:
        card = ModelCard.from_dict(safe_load(path)["card"])
    except Exception:  # unreadable: the student phase reports it
        return None
    found = [i for i, (m, o) in enumerate(candidates) if (m, o) == (card.arch, card.kwargs)]
    if found and ctx.progress:
        print(f"the student already trained here is candidate {found[0]}: keeping it")
    return found[0] if found else None


def verify_budget_phase(ctx: RunContext, onnx_files: dict[str, Path]) -> None:
    """Time the trained student's ONNX (and the pruned one's, and kept int8 files) as the choice was
    timed, and record in `budget_check` whether each meets its budget within the measurement's noise."""
    spec = ctx.recipe.student
    budgets = {"student": spec.latency_budget_ms, "pruned": ctx.recipe.prune.latency_budget_ms or spec.latency_budget_ms}
    if spec.latency_budget_ms is None and ctx.recipe.prune.latency_budget_ms is None:
        return
    if not distributed.is_main():
        return
    with tempfile.TemporaryDirectory(prefix="distill-verify-") as folder:
        files = {name: path for name, path in onnx_files.items() if budgets.get(name.split(".")[0])}
        for role in ("student", "pruned"):
            checkpoint = ctx.run.checkpoint(role)
            if role not in files and budgets[role] and role in ctx.metrics and checkpoint.exists():
                model, card = ctx.load(checkpoint)
                files[role] = export_onnx(model, card, Path(folder) / f"{role}.onnx").path
        if not files:
            return
        timings = time_onnx(files, ctx.data.input_shape, batch=spec.latency_batch, provider=spec.latency_provider)
    verified = {}
    for name, t in timings.items():
        budget = budgets[name.split(".")[0]]
        verified[name] = {**dataclasses.asdict(t), "budget_ms": budget, "verdict": verdict(t, budget)}
    ctx.metrics["budget_check"] = verified
    ctx.write()
