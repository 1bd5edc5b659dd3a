"""The latency-budget benchmark: which student each budget picks, and what it then measures.

    python benchmarks/latency/run.py                 # about 10 minutes on 2 shared cores
    python benchmarks/latency/run.py --render-only   # rewrite RESULTS.md from results/run.json

Part 1, 224x224 (random weights, 1000 classes; no training): seven torchvision candidates are
built, exported and timed once, as `[student] latency_budget_ms` does, and three budgets are
applied to those timings with `distill.latency.choose`.

Part 2, digits (8x8) with training: for three budgets, `distill run` on one recipe whose
candidates are three MLPs and three small CNNs (the teacher is trained once and given to the
other runs as a checkpoint). Each row: budget -> chosen student -> the trained student's ONNX
latency re-timed at the end (with its noise and verdict) -> test accuracy.

Both parts also say what a MACs-based choice would pick: latency predicted from MACs by a
least-squares line (p50 = a + b * MACs) through the same measured candidates, then the most MACs
whose prediction fits. Writes results/run.json and RESULTS.md (generated, nothing typed).
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from distill.latency import Candidate, choice_table, choose, measure_candidates  # noqa: E402
from distill.pipeline import run_recipe  # noqa: E402
from distill.recipe import recipe_from_dict  # noqa: E402

BIG = [("mobilenet_v3_small", {"width_mult": w}) for w in (0.5, 0.75, 1.0)] + \
      [("mobilenet_v3_large", {"width_mult": w}) for w in (0.5, 0.75, 1.0)] + [("resnet18", {})]
BIG_BUDGETS = (5.0, 10.0, 30.0)
SMALL = [{"model": "mlp", "options": {"hidden": h}} for h in ([64], [256], [1024, 1024])] + \
        [{"model": "small_cnn", "options": {"width": w}} for w in (4, 8, 16)]
SMALL_BUDGETS = (0.03, 0.1, 0.5)
RECIPE = {
    "name": "latency-bench", "seed": 0, "device": "cpu",
    "data": {"name": "digits", "augment": False},
    "teacher": {"model": "small_cnn", "options": {"width": 32}, "epochs": 15, "batch_size": 64},
    "student": {"model": "mlp", "epochs": 15, "batch_size": 64, "candidates": SMALL},
    "baseline": {"enabled": False},
    "export": {"enabled": True},
}


def macs_choice(candidates: list[Candidate], budget: float) -> int | None:
    """The MACs-based pick: a + b * MACs fitted to the measured p50s, the most MACs predicted to fit."""
    macs = np.array([c.macs for c in candidates], float)
    b, a = np.polyfit(macs, [c.p50_ms for c in candidates], 1)
    fits = [i for i, m in enumerate(macs) if a + b * m <= budget]
    return max(fits, key=lambda i: macs[i]) if fits else None


def part_224() -> dict:
    started = time.perf_counter()
    found = measure_candidates(BIG, 1000, (3, 224, 224), rounds=20, round_time=0.2)
    rows = []
    for budget in BIG_BUDGETS:
        try:
            chosen = choose(found, budget)
        except Exception as e:  # the no-fit error: recorded as it reads
            chosen, error = None, str(e)
        else:
            error = None
        rows.append({"budget_ms": budget, "chosen": chosen, "error": error, "macs_choice": macs_choice(found, budget)})
    return {"candidates": [c.__dict__ for c in found], "rows": rows, "table": choice_table(found, None, 1e9),
            "seconds": round(time.perf_counter() - started)}


def part_digits(work: Path) -> dict:
    rows, teacher = [], None
    for budget in SMALL_BUDGETS:
        data = json.loads(json.dumps(RECIPE))
        data["student"]["latency_budget_ms"] = budget
        if teacher:
            data["teacher"]["checkpoint"] = str(teacher)
        out = work / f"budget-{budget:g}"
        try:
            m = run_recipe(recipe_from_dict(data), out=out, progress=False)
        except Exception as e:
            rows.append({"budget_ms": budget, "error": str(e)})
            continue
        teacher = teacher or out / "teacher.pt"
        choice, check = m["student_choice"], m["budget_check"]["student"]
        found = [Candidate(**c) for c in choice["candidates"]]
        rows.append({"budget_ms": budget, "chosen": choice["chosen"], "macs_choice": macs_choice(found, budget),
                     "candidates": choice["candidates"], "verified": check,
                     "accuracy": m["student"]["test_accuracy"], "teacher_accuracy": m["teacher"]["test_accuracy"]})
    return {"rows": rows}


def render(result: dict) -> str:
    def label(c: dict) -> str:
        return Candidate(**c).label()
    big = result["224"]
    cands = big["candidates"]
    lines = ["# Latency budgets: choosing the student by measured ONNX latency", "",
             f"- command: `{result['command']}`",
             f"- machine: {result['machine']}; {result['date']}",
             "- timing: ONNX Runtime, CPUExecutionProvider, batch 1, interleaved rounds (`distill bench`'s); "
             "p50 with its noise (robust standard deviation of the per-round medians). The CPU is shared "
             "with other work, so absolute figures move between runs; the choices are what to compare.",
             "- MACs-based choice: latency predicted as a + b * MACs (least squares through the same measured "
             "candidates), then the most MACs predicted to fit.", "",
             f"## 224x224, random weights ({big['seconds']} s)", "", "```", big["table"], "```", "",
             "| budget | chosen (measured p50) | MACs-based choice |", "|---:|---|---|"]
    for r in big["rows"]:
        chosen = (f"{label(cands[r['chosen']])} ({cands[r['chosen']]['p50_ms']:.3g} ms)" if r["chosen"] is not None
                  else f"none: {r['error']}")
        mc = "none" if r["macs_choice"] is None else label(cands[r["macs_choice"]])
        same = "same" if r["macs_choice"] == r["chosen"] else f"**differs**: {mc}"
        lines.append(f"| {r['budget_ms']:g} ms | {chosen} | {same} |")
    lines += ["", "## digits (8x8) with training", "",
              "| budget | chosen student | p50 when chosen | trained student's ONNX p50 +- noise (verdict) | "
              "test accuracy | MACs-based choice |", "|---:|---|---:|---|---:|---|"]
    for r in result["digits"]["rows"]:
        if "error" in r:
            lines.append(f"| {r['budget_ms']:g} ms | none: {r['error']} | | | | |")
            continue
        c, v = r["candidates"][r["chosen"]], r["verified"]
        mc = "none" if r["macs_choice"] is None else label(r["candidates"][r["macs_choice"]])
        same = "same" if r["macs_choice"] == r["chosen"] else f"**differs**: {mc}"
        lines.append(f"| {r['budget_ms']:g} ms | {label(c)} | {c['p50_ms']:.3g} ms | {v['p50_ms']:.3g} +- "
                     f"{v['noise_ms']:.2g} ms ({v['verdict']}) | {100 * r['accuracy']:.2f}% | {same} |")
    rows = [r for r in result["digits"]["rows"] if "candidates" in r]
    for small, large in zip(rows, rows[1:]):
        a, b = small["candidates"][small["chosen"]], large["candidates"][large["chosen"]]
        if b["macs"] > a["macs"] and large["accuracy"] < small["accuracy"]:
            lines += ["", f"MACs stand in for capability in the choice rule, and here imperfectly: {label(b)} "
                          f"({b['macs']:,} MACs) scored {100 * large['accuracy']:.2f}%, below {label(a)} "
                          f"({a['macs']:,} MACs, {100 * small['accuracy']:.2f}%), on the same "
                          "test images (one seed; differences of this size may be noise)."]
    if rows:
        lines += ["", "Candidates as timed in the first digits run:", "", "```",
                  choice_table([Candidate(**c) for c in rows[0]["candidates"]], rows[0]["chosen"],
                               rows[0]["budget_ms"]), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    import tempfile
    if "--render-only" in sys.argv:
        (HERE / "RESULTS.md").write_text(render(json.loads((HERE / "results" / "run.json").read_text())))
        return
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    result = {"command": "python benchmarks/latency/run.py", "machine": f"{cpu}, {__import__('os').cpu_count()} "
              "logical CPUs", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    result["224"] = part_224()
    print(result["224"]["table"], flush=True)
    with tempfile.TemporaryDirectory(prefix="distill-latency-bench-") as work:
        result["digits"] = part_digits(Path(work))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "run.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "RESULTS.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
