"""The end-of-run summary `distill run` prints: accuracy and cost per model, what distillation
bought, and what deployment bought (the ONNX student's speed against the teacher's)."""
from __future__ import annotations

from typing import Any

from .latency import budget_summary
from .models.stats import si

ROWS = ("teacher", "student", "baseline", "pseudo", "pruned")
LABELS = {"pseudo": "pseudo-lbl"}  # the student trained on the teacher's hard top-1 labels


def summary_table(metrics: dict[str, Any]) -> str:
    """The end-of-run table of one run, or of a multi-seed run's pooled metrics."""
    if "seeds" in metrics:
        return _pooled_table(metrics)
    rows = [r for r in ROWS if r in metrics]
    lines = [f"{'model':<10} {'test acc':>9} {'params':>10} {'MACs':>10} {'epochs':>7}"]
    for role in rows:
        m = metrics[role]
        lines.append(f"{LABELS.get(role, role):<10} {m['test_accuracy']:>9.4f} {si(m['params']):>10} "
                     f"{si(m['macs']):>10} {m.get('epochs', 0):>7}")
    lines += _member_lines(metrics.get("teacher", {}))
    if "teacher" in metrics and "student" in metrics:
        lines.append(_size_line(metrics["teacher"], metrics["student"]))
    lines += _gain_lines(metrics, f"the {metrics['data']['test']} test images")
    if "pruned" in metrics and {"macs_ratio", "macs_target", "accuracy_after_pruning", "recovery"} <= set(metrics["pruned"]):
        p = metrics["pruned"]
        miss = "" if p.get("on_target", True) else ", OFF target by more than 5%"
        lines.append(f"pruned student: {100 * p['macs_ratio']:.1f}% of the student's MACs (target "
                     f"{100 * p['macs_target']:.0f}%{miss}), accuracy {p['accuracy_after_pruning']:.4f} right after "
                     f"pruning, {p['test_accuracy']:.4f} after recovery by {p['recovery']}")
    lines += budget_summary(metrics)
    if "bench" in metrics:
        lines += _speed_lines(metrics["bench"])
    return "\n".join(lines)


def _pooled_table(metrics: dict[str, Any]) -> str:
    """Mean +- sd over the seeds per model, and the gains pooled over them."""
    seeds = metrics["seeds"]
    models = metrics["models"]
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); test accuracy as mean +- sd over them",
             f"{'model':<10} {'test acc':>17} {'params':>10} {'MACs':>10}"]
    for role in (r for r in ROWS if r in models):
        m = models[role]
        lines.append(f"{LABELS.get(role, role):<10} {m['mean']:>8.4f} +- {m['sd']:.4f} {si(m['params']):>10} "
                     f"{si(m['macs']):>10}")
    if "teacher" in models and "student" in models:
        lines.append(_size_line(models["teacher"], models["student"]))
    for role, m in models.items():
        if "params_per_seed" in m:
            lines.append(f"WARNING: the {role} differs between seeds (parameters {m['params_per_seed']}): its "
                         "row pools different models")
    lines += _gain_lines(metrics, f"{len(seeds)} seeds x {metrics['data']['test']} test images")
    for name, values in metrics.get("speedups", {}).items():
        lines.append(f"{name} runs {', '.join(f'{v:.1f}x' for v in values)} as fast as the teacher (per seed; "
                     "teacher in its fastest runtime, p50 at batch 1)")
    if metrics.get("seeds_planned", len(seeds)) > len(seeds):
        lines.append(f"only {len(seeds)} of {metrics['seeds_planned']} seeds have finished: run again with "
                     "--resume to finish the others")
    return "\n".join(lines)


def _gain_lines(metrics: dict[str, Any], images: str) -> list[str]:
    """The student against its baseline (and against the pseudo-label student), with the band."""
    lines = []
    for key, other in (("gain", "the same student trained on labels alone"),
                       ("gain_over_pseudo_labels", "the same student trained on the teacher's hard labels")):
        if key not in metrics:
            continue
        g = metrics[key]
        per_seed = (f"; per seed {', '.join(f'{p:+.2f}' for p in g['per_seed'])}" if "per_seed" in g else "")
        noise = (f" (95% noise band of {images}, {g.get('test', 'unpaired')}: +-{g['noise_band_points']:.2f} "
                 f"points; {'significant' if g['significant'] else 'not significant'}{per_seed})")
        if g["accuracy_points"] < 0:
            lines.append(f"WARNING: negative transfer: the distilled student is {-g['accuracy_points']:.2f} "
                         f"points WORSE than {other}{noise}")
        elif key == "gain":
            lines.append(f"distillation gain over the baseline: {g['accuracy_points']:+.2f} points{noise}")
        else:
            lines.append(f"soft targets over hard pseudo-labels: {g['accuracy_points']:+.2f} points{noise}")
    return lines


def _speed_lines(bench: dict[str, Any]) -> list[str]:
    """What deployment bought: the exported student's speed against the teacher's fastest runtime."""
    lines = []
    for name, speed in bench.get("speedups", {}).items():
        lines.append(f"{name} runs {speed['speedup']:.1f}x as fast as the teacher ({speed['p50_ms']:.3g} ms vs "
                     f"{speed['teacher_p50_ms']:.3g} ms p50 at batch {speed['batch']}; teacher in its fastest "
                     f"runtime, {bench['teacher_runtime']})")
    lines.append("latency, throughput and accuracy of every artefact: bench.md (plot: bench.png)")
    return lines


def _member_lines(teacher: dict[str, Any]) -> list[str]:
    """An ensemble teacher's members, each with its own test accuracy (the teacher row is the whole)."""
    members = teacher.get("members")
    if not isinstance(members, list):
        return []
    return [f"  member {i} {m['test_accuracy']:>9.4f}  {m['source']}" for i, m in enumerate(members)] + [
        f"teacher = ensemble of {len(members)} (average of {teacher.get('average', 'probabilities')})"]


def _size_line(t: dict[str, Any], s: dict[str, Any]) -> str:
    """How much smaller and cheaper the student is; and the true thing when it is not."""
    return f"student: {_compared(s['params'], t['params'], 'parameters')}, {_compared(s['macs'], t['macs'], 'MACs')}"


def _compared(student: int, teacher: int, what: str) -> str:
    """'12.3x fewer parameters than the teacher', or '2.10x the teacher's parameters' when the
    student has more: never '0.5x smaller'."""
    ratio = teacher / max(student, 1)
    if 1 / 1.05 <= ratio <= 1.05:
        return f"about the teacher's {what}"
    if ratio > 1:
        return f"{ratio:.1f}x fewer {what} than the teacher"
    return f"{1 / ratio:.2f}x the teacher's {what}"
