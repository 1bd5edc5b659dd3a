"""The sections of one run's report.html: summary, curves, per-class accuracy, agreement, pruning,
export, bench, recipe. Each section shows what the run has and says what it lacks."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..files import human_bytes
from ..models.stats import si
from . import plots
from .html import Cell, figure, note, para, percent, pre, section, table
from .rundata import MODEL_ROLES, RunData


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def status(run: RunData) -> list[str]:
    """A note naming the phases the recipe asks for that have no results yet, and unreadable files."""
    missing = run.missing_phases()
    lines = [f"phases without results yet: {', '.join(missing)} (a run in progress, or one that stopped)"] if missing else []
    return [note(lines + run.notes)] if lines or run.notes else []


def summary(run: RunData) -> str:
    """Accuracy, params, MACs and size per model, and the gain with its band and verdict."""
    rows = []
    for role in run.roles():
        m = run.metrics[role]
        ckpt = run.path / f"{role}.pt"
        size = ckpt.stat().st_size if ckpt.is_file() else None
        rows.append([role,
                     Cell(percent(m.get("test_accuracy")), m.get("test_accuracy"), "test_accuracy", role),
                     Cell(percent(m.get("val_accuracy")), m.get("val_accuracy"), "val_accuracy", role),
                     Cell(si(m["params"]) if is_number(m.get("params")) else "–", m.get("params"), "params", role),
                     Cell(si(m["macs"]) if is_number(m.get("macs")) else "–", m.get("macs"), "macs", role),
                     Cell(human_bytes(size) if size is not None else "–", size, "checkpoint_bytes", role),
                     Cell(m.get("epochs", "–"), m.get("epochs"), "epochs", role),
                     Cell(m.get("train_seconds", "–"), m.get("train_seconds"), "train_seconds", role)])
    parts = [table(["model", "test accuracy", "val accuracy", "params", "MACs", "checkpoint size", "epochs",
                    "training time (s)"], rows, "summary")] if rows else [para("No model has finished yet.")]
    tests = run.metrics.get("data", {}).get("test") if isinstance(run.metrics.get("data"), dict) else None
    parts += gain_block(run.metrics.get("gain"), tests)
    parts += gain_block(run.metrics.get("gain_over_pseudo_labels"), tests, key="gain_over_pseudo_labels")
    return section("Summary", "summary", parts)


GAIN_AGAINST = {"gain": ("distillation gain (student - baseline)", "its baseline", "distillation helped"),
                "gain_over_pseudo_labels": ("soft targets over hard pseudo-labels (student - pseudo-label student)",
                                            "the pseudo-label student", "the soft targets helped")}


def gain_block(gain: Any, test_images: Any = None, key: str = "gain") -> list[str]:
    """The gain over the baseline (or the pseudo-label student), its 95% noise band and what it means."""
    label, other, helped = GAIN_AGAINST[key]
    if not isinstance(gain, dict) or not is_number(gain.get("accuracy_points")):
        return []
    points, band = gain["accuracy_points"], gain.get("noise_band_points")
    significant = bool(gain.get("significant"))
    if points < 0 and significant:
        verdict, cls = f"negative transfer: the student is significantly WORSE than {other}", "bad"
    elif points < 0:
        verdict, cls = "negative transfer, within the noise band (not significant)", "bad"
    elif significant:
        verdict, cls = f"{helped}: significant", "good"
    else:
        verdict, cls = "within the noise band: no measurable effect", ""
    images = f" over {test_images} test images" if is_number(test_images) else ""
    rows = [[Cell(label, cls="text"),
             Cell(f"{points:+.2f} points", points, "accuracy_points", key),
             Cell(f"±{band:.2f} points" if is_number(band) else "–", band, "noise_band_points", key),
             Cell(verdict, significant, "significant", key, cls=f"text {cls}")]]
    return [table(["", "gain", "95% noise band", "verdict"], rows, key),
            para(f"Test: {gain.get('test', 'unpaired')}{images}.")]


def curves(run: RunData) -> str:
    phases: dict[str, list[dict[str, Any]]] = {}
    for row in run.history:
        phases.setdefault(str(row.get("phase", "?")), []).append(row)
    parts = [figure(plots.phase_curves(rows, phase), f"{phase}: loss per term, accuracy and learning rate "
                    f"per epoch ({len(rows)} epochs)") for phase, rows in phases.items()]
    return section("Training curves", "curves", parts or [para("No history.csv rows yet.")])


def per_class(run: RunData) -> str:
    p = run.predictions
    if p is None or not p.roles:
        return section("Per-class test accuracy", "per-class", [para("No test predictions stored for this run.")])
    roles = [r for r in MODEL_ROLES if r in p.roles]
    n = len(p.class_names)
    counts = np.bincount(p.labels, minlength=n)
    accuracy = {r: np.bincount(p.labels, weights=(p.roles[r] == p.labels), minlength=n) / np.maximum(counts, 1)
                for r in roles}
    parts = [figure(plots.per_class(p.class_names, accuracy), "test accuracy per class and model")]
    shown = range(n) if n <= 30 else np.argsort(accuracy.get("student", accuracy[roles[0]]) - accuracy[roles[0]])[:10]
    if n > 30:
        parts.append(para("The 10 classes where the student falls furthest below the teacher:"))
    rows = [[p.class_names[c], counts[c], *(percent(accuracy[r][c], 1) for r in roles)] for c in shown]
    parts.append(table(["class", "test images", *roles], rows, "per-class-table"))
    return section("Per-class test accuracy", "per-class", parts)


def agreement(run: RunData) -> str:
    p = run.predictions
    if p is None or not {"teacher", "student"} <= set(p.roles):
        return section("Teacher–student agreement", "agreement",
                       [para("Needs the test predictions of both teacher and student.")])
    t, s, y = p.roles["teacher"], p.roles["student"], p.labels
    differ = t != s
    n = len(p.class_names)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (t[differ], s[differ]), 1)
    agree = float(np.mean(~differ)) if len(t) else 0.0
    rows = [[Cell("top-1 agreement", cls="text"), Cell(percent(agree), agree, "top1_agreement", "agreement")],
            ["images where they disagree", int(differ.sum())],
            ["… the teacher is right there", int((differ & (t == y)).sum())],
            ["… the student is right there", int((differ & (s == y)).sum())]]
    parts = [table(["", "value"], rows, "agreement-table")]
    if differ.any():
        parts.append(figure(plots.disagreement(matrix, p.class_names),
                            "confusion matrix of the disagreements: teacher's class (rows) x student's (columns)"))
    return section("Teacher–student agreement", "agreement", parts)


def pruning(run: RunData) -> str | None:
    m = run.metrics.get("pruned")
    if not isinstance(m, dict):
        return None
    rows = [["MACs kept (of the student's)", percent(m.get("macs_ratio"), 1)],
            ["MACs target", percent(m.get("macs_target"), 0)],
            ["on target (within 5%)", m.get("on_target", "–")],
            ["accuracy right after pruning", percent(m.get("accuracy_after_pruning"))],
            [f"accuracy after recovery ({m.get('recovery', '?')})", percent(m.get("test_accuracy"))]]
    return section("Pruning", "pruning", [table(["", "value"], rows, "pruning-table")])


def export(run: RunData) -> str | None:
    e = run.metrics.get("export")
    if not isinstance(e, dict):
        return None
    rows = []
    for role, info in e.items():
        if isinstance(info, dict):
            diff = info.get("max_abs_diff")
            diff = ", ".join(f"{k} {v:.1e}" for k, v in diff.items() if is_number(v)) if isinstance(diff, dict) else diff
            rows.append([role, str(info.get("file", "–")),
                         human_bytes(info["bytes"]) if is_number(info.get("bytes")) else "–", diff or "–"])
    return section("ONNX export", "export", [table(["model", "file", "size", "max |ONNX - PyTorch|"], rows, "export-table")])


def bench(run: RunData) -> str | None:
    b = run.bench
    if not isinstance(b, dict) or not isinstance(b.get("rows"), list):
        return None
    settings = b.get("settings") if isinstance(b.get("settings"), dict) else {}
    lat = str(settings.get("latency_batch", 1))
    big = str(max((int(k) for k in settings.get("batch_sizes", [lat])), default=lat))
    rows = []
    for r in (r for r in b["rows"] if isinstance(r, dict)):
        batches = r.get("batches") if isinstance(r.get("batches"), dict) else {}
        p50, tput = batches.get(lat, {}).get("p50_ms"), batches.get(big, {}).get("throughput")
        speed = r.get("speedup_vs_teacher")
        rows.append([str(r.get("artifact")), str(r.get("runtime")), str(r.get("precision")),
                     f"{p50:.3f}" if is_number(p50) else "–", f"{tput:,.0f}" if is_number(tput) else "–",
                     percent(r.get("accuracy")), f"{speed:.2f}x" if is_number(speed) else "–"])
    machine = b.get("machine") if isinstance(b.get("machine"), dict) else {}
    parts = [figure(plots.bench(b["rows"], lat), f"accuracy vs median latency at batch {lat}"),
             table(["artifact", "runtime", "precision", f"p50 latency (ms, batch {lat})",
                    f"throughput (images/s, batch {big})", "accuracy", "speed vs teacher"], rows, "bench-table"),
             para(f"machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, {machine.get('date', '?')}")]
    return section("Speed (bench)", "bench", parts)


def recipe(run: RunData) -> str:
    body = [pre(run.recipe_text)] if run.recipe_text else [para("recipe.toml is missing.")]
    return section("Resolved recipe", "recipe", body)


def run_sections(run: RunData) -> list[str]:
    """Every section of a single run's page, in reading order."""
    parts = [*status(run), summary(run), curves(run), per_class(run), agreement(run),
             pruning(run), export(run), bench(run), recipe(run)]
    return [p for p in parts if p]
