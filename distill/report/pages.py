"""The pages: one run, a multi-seed run (pooled, with a section per seed), several runs compared."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DistillError
from ..models.stats import si
from . import plots
from .html import Cell, figure, link, page, para, percent, section, table
from .rundata import MODEL_ROLES, RunData, plain_name, read_run
from .single import gain_block, is_number, recipe, run_sections, status

REPORT = "report.html"


def run_page(run: RunData) -> str:
    return page(f"distill report: {run.name}", run_sections(run))


def seeds_page(run: RunData, seeds: list[RunData]) -> str:
    """The pooled summary of a `--seeds K` run, its gain, overlaid curves and one link per seed."""
    m = run.metrics
    models = m.get("models") if isinstance(m.get("models"), dict) else {}
    labels = [str(s) for s in m.get("seeds", [])]
    rows = []
    for role in run.roles():
        e = models[role]
        per_seed = e.get("test_accuracy") if isinstance(e.get("test_accuracy"), list) else []
        rows.append([role, Cell(f"{percent(e.get('mean'))} ± {percent(e.get('sd'))}", e.get("mean"), "mean", role),
                     Cell(percent(e.get("sd")), e.get("sd"), "sd", role),
                     *(percent(a) for a in per_seed),
                     Cell(si(e["params"]) if is_number(e.get("params")) else "–", e.get("params"), "params", role),
                     Cell(si(e["macs"]) if is_number(e.get("macs")) else "–", e.get("macs"), "macs", role)])
    parts = [para(f"{len(labels)} seeds ({', '.join(labels)}): test accuracy as mean ± standard deviation."),
             table(["model", "test accuracy (mean ± sd)", "sd", *(f"seed {s}" for s in labels), "params", "MACs"],
                   rows, "summary")]
    for key in ("gain", "gain_over_pseudo_labels"):
        gain = m.get(key)
        parts += gain_block(gain, key=key)
        if isinstance(gain, dict) and isinstance(gain.get("per_seed"), list):
            parts.append(para("per seed (points): " + ", ".join(f"{p:+.2f}" for p in gain["per_seed"] if is_number(p))))
    body = [*status(run), section("Summary (pooled over seeds)", "summary", parts)]
    body.append(_overlaid_curves({f"seed {s.path.name.removeprefix('seed-')}": s for s in seeds}, "curves",
                                 "Training curves, seeds overlaid"))
    links = [f"<li>{link(f'{s.path.name}/{REPORT}', s.path.name)}: student {percent(_accuracy(s, 'student'))}, "
             f"baseline {percent(_accuracy(s, 'baseline'))}</li>" for s in seeds]
    body.append(section("Seeds", "seeds", ["<ul>" + "\n".join(links) + "</ul>"]))
    if seeds:
        body.append(recipe(seeds[0]))
    return page(f"distill report: {run.name} ({len(labels)} seeds)", body)


def comparison_page(runs: list[RunData]) -> str:
    """Runs x models, gains side by side, and every phase's curves overlaid."""
    names = _labels(runs)
    roles = [r for r in MODEL_ROLES if any(r in run.roles() for run in runs)]
    rows = []
    for name, run in zip(names, runs):
        gain = run.metrics.get("gain") if isinstance(run.metrics.get("gain"), dict) else {}
        points, band = gain.get("accuracy_points"), gain.get("noise_band_points")
        rows.append([name, *(Cell(_shown(run, r), _accuracy(run, r), "test_accuracy", f"{name}/{r}") for r in roles),
                     Cell(si(p) if is_number(p := _entry(run, "student").get("params")) else "–", p, "params", f"{name}/student"),
                     Cell(f"{points:+.2f} ± {band:.2f}" if is_number(points) and is_number(band) else "–", points,
                          "accuracy_points", f"{name}/gain"),
                     "significant" if gain.get("significant") else ("not significant" if gain else "–")])
    parts = [table(["run", *(f"{r} accuracy" for r in roles), "student params", "gain (points ± band)", "verdict"],
                   rows, "comparison")]
    with_gain = [(n, r.metrics["gain"]) for n, r in zip(names, runs) if isinstance(r.metrics.get("gain"), dict)
                 and is_number(r.metrics["gain"].get("accuracy_points")) and is_number(r.metrics["gain"].get("noise_band_points"))]
    if with_gain:
        parts.append(figure(plots.gains([n for n, _ in with_gain], [g["accuracy_points"] for _, g in with_gain],
                                        [g["noise_band_points"] for _, g in with_gain]),
                            "distillation gain per run with its 95% noise band"))
    links = [f"<li>{link(_href(run), name)}</li>" for name, run in zip(names, runs)]
    body = [section("Runs x models", "comparison", parts),
            _overlaid_curves({n: _first_seed(r) for n, r in zip(names, runs)}, "curves", "Training curves, runs overlaid"),
            section("Reports of each run", "runs", ["<ul>" + "\n".join(links) + "</ul>"])]
    return page(f"distill comparison of {len(runs)} runs", body)


def _overlaid_curves(runs: dict[str, RunData], anchor: str, title: str) -> str:
    by_phase: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, run in runs.items():
        for row in run.history:
            by_phase.setdefault(str(row.get("phase", "?")), {}).setdefault(name, []).append(row)
    parts = [figure(plots.overlay_curves(curves, phase), f"{phase}: total loss and accuracy per epoch")
             for phase, curves in by_phase.items()]
    return section(title, anchor, parts or [para("No history yet.")])


def _entry(run: RunData, role: str) -> dict[str, Any]:
    table_ = run.metrics.get("models") if run.seeds else run.metrics
    entry = table_.get(role) if isinstance(table_, dict) else None
    return entry if isinstance(entry, dict) else {}


def _accuracy(run: RunData, role: str) -> Any:
    e = _entry(run, role)
    return e.get("mean") if run.seeds else e.get("test_accuracy")


def _shown(run: RunData, role: str) -> str:
    e = _entry(run, role)
    if run.seeds and is_number(e.get("mean")):
        return f"{percent(e['mean'])} ± {percent(e.get('sd'))}"
    return percent(e.get("test_accuracy"))


def _labels(runs: list[RunData]) -> list[str]:
    """Each run's recipe name, or its path where two runs share a name."""
    names = [r.name for r in runs]
    return [n if names.count(n) == 1 else str(r.path) for n, r in zip(names, runs)]


def _first_seed(run: RunData) -> RunData:
    folders = seed_dirs(run) if run.seeds else []
    if folders:
        try:
            return read_run(folders[0])
        except DistillError:  # a missing seed folder only costs the curves
            return run
    return run


def _href(run: RunData) -> str:
    return (run.path / REPORT).resolve().as_uri()


def seed_dirs(run: RunData) -> list[Path]:
    """The seed folders a multi-seed metrics.json names, kept inside the run directory."""
    found = []
    for name in run.metrics.get("runs", []):
        if plain_name(name) and (run.path / name).is_dir():
            found.append(run.path / name)
    return found
