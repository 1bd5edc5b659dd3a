"""The end-of-run summary `distill run` prints: accuracy and cost per model, and what distillation bought."""
from __future__ import annotations

from typing import Any

from .models.stats import si


def summary_table(metrics: dict[str, Any]) -> str:
    """The end-of-run table: accuracy, params and MACs per model, and what distillation bought."""
    rows = [r for r in ("teacher", "student", "baseline", "pruned") if r in metrics]
    lines = [f"{'model':<10} {'test acc':>9} {'params':>10} {'MACs':>10} {'epochs':>7}"]
    for role in rows:
        m = metrics[role]
        lines.append(f"{role:<10} {m['test_accuracy']:>9.4f} {si(m['params']):>10} {si(m['macs']):>10} "
                     f"{m.get('epochs', 0):>7}")
    lines += _member_lines(metrics.get("teacher", {}))
    if "teacher" in metrics and "student" in metrics:
        lines.append(_size_line(metrics["teacher"], metrics["student"]))
    if "gain" in metrics:
        g = metrics["gain"]
        paired = ", paired" if g.get("test") else ""
        noise = (f" (95% noise band of the {metrics['data']['test']} test images{paired}: "
                 f"+-{g['noise_band_points']:.2f} points; {'significant' if g['significant'] else 'not significant'})")
        if g["accuracy_points"] < 0:
            lines.append(f"WARNING: negative transfer: the distilled student is {-g['accuracy_points']:.2f} "
                         f"points WORSE than the same student trained on labels alone{noise}")
        else:
            lines.append(f"distillation gain over the baseline: {g['accuracy_points']:+.2f} points{noise}")
    if "pruned" in metrics and {"macs_ratio", "macs_target", "accuracy_after_pruning", "recovery"} <= set(metrics["pruned"]):
        p = metrics["pruned"]
        miss = "" if p.get("on_target", True) else ", OFF target by more than 5%"
        lines.append(f"pruned student: {100 * p['macs_ratio']:.1f}% of the student's MACs (target "
                     f"{100 * p['macs_target']:.0f}%{miss}), accuracy {p['accuracy_after_pruning']:.4f} right after "
                     f"pruning, {p['test_accuracy']:.4f} after recovery by {p['recovery']}")
    if "bench" in metrics:
        lines.append("latency, throughput and accuracy of every artefact: bench.md (plot: bench.png)")
    return "\n".join(lines)


def _member_lines(teacher: dict[str, Any]) -> list[str]:
    """An ensemble teacher's members, each with its own test accuracy (the teacher row is the whole)."""
    members = teacher.get("members")
    if not isinstance(members, list):
        return []
    return [f"  member {i} {m['test_accuracy']:>9.4f}  {m['source']}" for i, m in enumerate(members)] + [
        f"teacher = ensemble of {len(members)} (average of {teacher.get('average', 'probabilities')})"]


def _size_line(t: dict[str, Any], s: dict[str, Any]) -> str:
    """How much smaller and cheaper the student is; and the true thing when it is not."""
    size = (f"is {t['params'] / max(s['params'], 1):.1f}x smaller" if s["params"] <= t["params"]
            else f"has {s['params'] / max(t['params'], 1):.2f}x the teacher's parameters")
    if s["macs"] <= t["macs"]:
        return f"student {size} and needs {t['macs'] / max(s['macs'], 1):.1f}x fewer MACs than the teacher"
    return f"student {size} and needs {s['macs'] / max(t['macs'], 1):.2f}x the teacher's MACs"
