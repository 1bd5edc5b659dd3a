"""The pruning benchmark (issue 6): prune a distilled MNIST student to 50% of its MACs, recover it by
distillation from the unpruned student, compare with plain fine-tuning, and time both in ONNX Runtime.

    python benchmarks/prune/run.py                 # about 20 minutes on 2 shared CPU cores, offline
    python benchmarks/prune/run.py --render-only   # rewrite RESULTS.md from results/ (no training)

1. `distill run benchmarks/prune/mnist_prune.toml`: a small_cnn (width 48) teacher, a small_cnn
   (width 32) student distilled from it, pruned to 50% of its MACs and recovered by KD, taught by
   the unpruned student (`[prune] recovery = "kd"`).
2. The same recipe with `prune.recovery=finetune` and `teacher.checkpoint` set to run 1's teacher:
   training is deterministic on CPU, so the student, and therefore the pruned starting point, are
   the same as in run 1 (checked: same student accuracy, same accuracy right after pruning, same
   MACs and parameters); only the recovery differs, with the same epochs, lr and batch size.
3. `distill bench` times the unpruned student and both pruned students in one process,
   interleaved, in PyTorch eager and ONNX Runtime (OMP_WAIT_POLICY=PASSIVE).

Checkpoints go to runs/bench_prune/ (git-ignored). metrics.json, history.csv, recipe.toml and the
command of each run are kept in results/<run>/, the bench report in results/bench/, and RESULTS.md
is generated from those files: no figure in it is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import DEFAULT_DATA, REPO, bench_table, distill_run, lscpu_fields, minutes, now, p50_ms  # noqa: E402

RESULTS = HERE / "results"
RECIPE = "benchmarks/prune/mnist_prune.toml"
WORK = Path("runs/bench_prune")  # relative to the repository root
# run name -> overrides of the recipe; every run after the first reuses the first one's teacher
RUNS = {"kd": [], "finetune": ["prune.recovery=finetune"]}
MAX_LOSS_POINTS = 1.0  # acceptance: KD recovery loses at most 1 point against the unpruned student
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}  # see benchmarks/speed/RESULTS.md


def run_all() -> None:
    started, load_before = time.perf_counter(), os.getloadavg()
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.update(PASSIVE)  # training too: spinning OpenMP threads only slow a shared machine
    for name, overrides in RUNS.items():
        if name != first_run():
            overrides = [*overrides, f"teacher.checkpoint={WORK / first_run() / 'teacher.pt'}"]
        distill_run(RECIPE, WORK / name, overrides, RESULTS / name, RESULTS / name / "run.log")
    bench()
    meta = {"date": now(), "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "lscpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout}
    (RESULTS / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def bench() -> None:
    """Unpruned student vs both pruned students, one interleaved `distill bench` run."""
    out = RESULTS / "bench"
    if (out / "record.json").exists():
        print("= bench: already recorded, skipped", flush=True)
        return
    models = WORK / "bench"  # copies with telling names: the bench names a model after its file
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / WORK / first_run() / "student.pt", REPO / models / "unpruned.pt")
    for name in RUNS:
        shutil.copy(REPO / WORK / name / "pruned.pt", REPO / models / f"pruned_{name}.pt")
    cmd = ["distill", "bench", "--teacher", str(models / "unpruned.pt"),
           *[a for name in RUNS for a in ("--student", str(models / f"pruned_{name}.pt"))],
           "--throughput-batch", "32", "--rounds", "20", "--out", str(out.relative_to(REPO)), "-q"]
    shown = shlex.join([*(f"{k}={v}" for k, v in PASSIVE.items()), *cmd])
    print("$", shown, flush=True)
    started, date, load = time.perf_counter(), now(), os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **PASSIVE})
    out.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"distill bench failed with exit code {done.returncode}; see {out / 'stdout.txt'}")
    (out / "record.json").write_text(json.dumps(
        {"command": shown, "date": date, "wall_seconds": round(time.perf_counter() - started, 1),
         "load_average_before": round(load, 2)}, indent=2) + "\n")


def first_run() -> str:
    return next(iter(RUNS))


# ----------------------------------------------------------------------------- RESULTS.md

BUDGET_KEYS = ("epochs", "lr", "batch_size")  # what "the same recovery budget" means


@dataclass
class Recorded:
    """What RESULTS.md is made of, read from results/ alone."""
    meta: dict
    records: dict[str, dict]  # run -> record.json: command, wall time and metrics.json
    recipes: dict[str, dict]  # run -> its resolved recipe.toml
    bench_record: dict  # the bench's command and wall time
    bench: dict  # bench.json

    @classmethod
    def load(cls) -> Recorded:
        return cls(meta=json.loads((RESULTS / "meta.json").read_text()),
                   records={name: json.loads((RESULTS / name / "record.json").read_text()) for name in RUNS},
                   recipes={name: tomllib.loads((RESULTS / name / "recipe.toml").read_text()) for name in RUNS},
                   bench_record=json.loads((RESULTS / "bench" / "record.json").read_text()),
                   bench=json.loads((RESULTS / "bench" / "bench.json").read_text()))

    def metrics(self, run: str) -> dict:
        return self.records[run]["metrics"]


def render() -> str:
    """RESULTS.md from results/: every figure is read from a metrics.json, bench.json or record."""
    rec = Recorded.load()
    return "\n".join([*header(rec), *results_section(rec), *acceptance_section(rec), *cost_section(rec),
                      *commands_section(rec)])


def header(rec: Recorded) -> list[str]:
    """Machine, load, models and pruning settings: what a reader needs to judge the figures below."""
    meta, m, bench_record = rec.meta, rec.bench["machine"], rec.bench_record
    lscpu = lscpu_fields(meta["lscpu"])
    total_seconds = sum(r["wall_seconds"] for r in rec.records.values()) + bench_record["wall_seconds"]
    t, s = rec.recipes["kd"]["teacher"], rec.recipes["kd"]["student"]
    r_kd = rec.recipes["kd"]["prune"]
    return ["# Pruning recovered by distillation (issue 6)", "",
            "_Generated by `python benchmarks/prune/run.py` from `results/`; do not edit by hand._", "",
            f"- machine: {lscpu.get('Model name', m['cpu'])} (lscpu model name), {meta['nproc']} cores, shared with "
            f"other engineers' jobs; {m['threads']} threads for PyTorch and ONNX Runtime in the bench "
            f"(torch {m['torch']}, onnxruntime {m['onnxruntime']}, OMP_WAIT_POLICY={m['omp_wait_policy']})",
            f"- date: {meta['date']}; whole benchmark {minutes(total_seconds)} wall clock (the sum of the "
            "recorded runs and the bench below)",
            f"- load average (1/5/15 min) before: {' / '.join(f'{x:.1f}' for x in meta['load_average_before'])}, after: "
            f"{' / '.join(f'{x:.1f}' for x in meta['load_average_after'])}; during the bench "
            f"{bench_record['load_average_before']:.1f}. "
            "On a machine this loaded, absolute timings are noisy; the latency comparison is same-run and "
            "interleaved (each timing round gives every model and runtime a turn, in rotating order)",
            f"- models: teacher `{t['model']}` {t.get('options', {})} "
            f"({rec.metrics(first_run())['teacher']['params'] / 1e3:.0f} k params), "
            f"student `{s['model']}` {s.get('options', {})}, distilled with KD for {s['epochs']} epochs; teacher "
            f"{t['epochs']} epochs; batch {s['batch_size']}",
            f"- pruning: `[prune] macs = {r_kd['macs']}`, {r_kd['importance']} importance, {r_kd['steps']} steps, "
            f"round_to 8; KD recovery: T = {r_kd['temperature']}, ce_weight {rec.recipes['kd']['distill']['ce_weight']}, "
            f"hint layers {r_kd['hint_layers'] or 'none'}, teacher = the unpruned student", *steps_note(r_kd), ""]


def results_section(rec: Recorded) -> list[str]:
    """Size, speed and accuracy of the student before pruning, right after it and after each recovery."""
    kd, ft = rec.metrics("kd"), rec.metrics("finetune")
    student, n_test = rec.metrics(first_run())["student"], rec.metrics(first_run())["data"]["test"]
    r_kd, r_ft = rec.recipes["kd"]["prune"], rec.recipes["finetune"]["prune"]
    rows = [("unpruned student (distilled)", student, student["test_accuracy"], "unpruned"),
            ("right after pruning (no recovery)", kd["pruned"], kd["pruned"]["accuracy_after_pruning"], None),
            (f"after recovery by KD ({r_kd['epochs']} epochs)", kd["pruned"], kd["pruned"]["test_accuracy"],
             "pruned_kd"),
            (f"after recovery by fine-tuning ({r_ft['epochs']} epochs)", ft["pruned"], ft["pruned"]["test_accuracy"],
             "pruned_finetune")]
    table = ["| model | MACs | params | MACs kept | ORT p50 ms (batch 1) | eager p50 ms (batch 1) "
             "| test accuracy % | vs unpruned (points) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, m, acc, artifact in rows:
        timed = artifact or "pruned_kd"  # pruning fixes the architecture; recovery only changes weights
        mark = "" if artifact else " ¹"
        table.append(f"| {label} | {m['macs'] / 1e6:.2f} M | {m['params'] / 1e3:.1f} k | "
                     f"{m['macs'] / student['macs']:.1%} | {p50_ms(rec.bench, timed, 'ort'):.3f}{mark} | "
                     f"{p50_ms(rec.bench, timed, 'eager'):.3f}{mark} | {100 * acc:.2f} | "
                     f"{100 * (acc - student['test_accuracy']):+.2f} |")
    return ["## Results", "", *table, "",
            "¹ timed on the KD-recovered checkpoint: pruning fixes the architecture and recovery only changes the "
            "weights, which do not change the speed of a dense CNN (both pruned checkpoints are timed, as a check).",
            "MACs and params: PyTorch's FLOP counter and parameter count, from each run's metrics.json. Accuracy: "
            f"all {n_test:,} MNIST test images, PyTorch, after the last epoch (nothing selected on the test set).", ""]


def same_start(rec: Recorded) -> bool:
    """Whether both recoveries started from the same pruned model, as the comparison needs."""
    kd, ft = rec.metrics("kd"), rec.metrics("finetune")
    return (kd["student"]["test_accuracy"] == ft["student"]["test_accuracy"]
            and kd["pruned"]["accuracy_after_pruning"] == ft["pruned"]["accuracy_after_pruning"]
            and kd["pruned"]["macs"] == ft["pruned"]["macs"] and kd["pruned"]["params"] == ft["pruned"]["params"])


def kd_vs_finetune(rec: Recorded) -> dict:
    """KD recovery minus fine-tuning, in points, with its noise band (distill.gain)."""
    from distill.gain import distillation_gain

    kd, ft = rec.metrics("kd"), rec.metrics("finetune")
    n_test = rec.metrics(first_run())["data"]["test"]
    return distillation_gain(kd["pruned"]["test_accuracy"], ft["pruned"]["test_accuracy"], n_test)


def acceptance_checks(rec: Recorded) -> list[tuple[str, bool]]:
    """Each acceptance line of issue 6 as (what was measured, whether it holds)."""
    kd, ft, first = rec.metrics("kd"), rec.metrics("finetune"), rec.metrics(first_run())
    student, data, n_test = first["student"], first["data"], first["data"]["test"]
    r_kd, r_ft = rec.recipes["kd"]["prune"], rec.recipes["finetune"]["prune"]
    same_budget = all(r_kd[k] == r_ft[k] for k in BUDGET_KEYS)
    loss_kd = 100 * (student["test_accuracy"] - kd["pruned"]["test_accuracy"])
    ratio_tp = kd["pruned"]["macs_ratio"]
    gain = kd_vs_finetune(rec)

    def ort(artifact: str) -> float:
        return p50_ms(rec.bench, artifact, "ort")

    return [
        (f"real data: {rec.recipes['kd']['data']['name'].upper()} from `../shared/data`, {data['train']:,} training "
         f"images (stratified subset), all {n_test:,} test images", rec.recipes["kd"]["data"]["name"] == "mnist"
         and n_test == 10000),
        (f"pruned to 50% MACs: torch-pruning counts {ratio_tp:.1%} of the student's MACs "
         f"(target {r_kd['macs']:.0%} +- 5% of it); PyTorch's FLOP counter: "
         f"{kd['pruned']['macs'] / student['macs']:.1%}", abs(ratio_tp - r_kd["macs"]) <= 0.05 * r_kd["macs"]),
        (f"recovered by distillation, loses at most {MAX_LOSS_POINTS:g} point against the unpruned student: "
         f"{100 * student['test_accuracy']:.2f}% -> {100 * kd['pruned']['test_accuracy']:.2f}% "
         f"({-loss_kd:+.2f} points)", loss_kd <= MAX_LOSS_POINTS),
        (f"KD recovery compared with plain fine-tuning at the same budget ({', '.join(f'{k} {r_kd[k]}' for k in BUDGET_KEYS)}"
         f" for both) from the same pruned model: KD {100 * kd['pruned']['test_accuracy']:.2f}% vs fine-tuning "
         f"{100 * ft['pruned']['test_accuracy']:.2f}%, KD {gain['accuracy_points']:+.2f} points (95% test-sampling "
         f"noise band +-{gain['noise_band_points']:.2f}: "
         f"{'significant' if gain['significant'] else 'not significant'})", same_budget and same_start(rec)),
        (f"same-run ORT latency of the pruned model lower than the unpruned one (batch 1, p50): unpruned "
         f"{ort('unpruned'):.3f} ms, pruned (KD) {ort('pruned_kd'):.3f} ms "
         f"({ort('unpruned') / ort('pruned_kd'):.2f}x faster), pruned (fine-tuned) "
         f"{ort('pruned_finetune'):.3f} ms", all(ort(f"pruned_{name}") < ort("unpruned") for name in RUNS)),
    ]


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def acceptance_section(rec: Recorded) -> list[str]:
    """The acceptance lines with their verdicts, then what the KD vs fine-tuning comparison says."""
    kd, ft = rec.metrics("kd"), rec.metrics("finetune")
    student = rec.metrics(first_run())["student"]
    gain = kd_vs_finetune(rec)
    if gain["significant"]:
        compared = "better than" if gain["accuracy_points"] > 0 else "worse than"
    else:
        compared = "within test-sampling noise of"
    return ["## Acceptance", "", *[f"- {verdict(ok)} {text}" for text, ok in acceptance_checks(rec)],
            f"- {verdict(same_start(rec))} same starting point for both recoveries: the fine-tuning run reused the KD "
            f"run's teacher and retrained the student deterministically: student accuracy "
            f"{100 * kd['student']['test_accuracy']:.2f}% / {100 * ft['student']['test_accuracy']:.2f}%, accuracy right "
            f"after pruning {100 * kd['pruned']['accuracy_after_pruning']:.2f}% / "
            f"{100 * ft['pruned']['accuracy_after_pruning']:.2f}%, pruned MACs {kd['pruned']['macs']:,} / "
            f"{ft['pruned']['macs']:,} (KD run / fine-tuning run)", "",
            f"Reading: at this budget, recovery by KD is {compared} "
            f"plain fine-tuning, which ends {100 * (ft['pruned']['test_accuracy'] - student['test_accuracy']):+.2f} "
            "points from the unpruned student.", "",
            "Caveat: the recovery epochs are training the unpruned student did not get, so \"loses at most 1 point\" "
            "compares a student after its own schedule with a pruned one after that schedule plus recovery.", ""]


def cost_section(rec: Recorded) -> list[str]:
    """Wall clock of each run and phase: what KD recovery costs over fine-tuning."""
    lines = ["## Cost", "", "| run | wall clock | teacher s | student s | recovery s |", "|---|---:|---:|---:|---:|"]
    for name, r in rec.records.items():
        mt = r["metrics"]
        teacher_s = "reused" if "source" in mt["teacher"] else f"{mt['teacher']['train_seconds']:.0f}"
        lines.append(f"| {name} | {minutes(r['wall_seconds'])} | {teacher_s} | "
                     f"{mt['student']['train_seconds']:.0f} | {mt['pruned']['train_seconds']:.0f} |")
    return [*lines, f"| bench | {minutes(rec.bench_record['wall_seconds'])} | | | |", "",
            "KD recovery runs the unpruned student forward on every batch, so at the same epochs it costs more "
            "compute than fine-tuning.", ""]


def commands_section(rec: Recorded) -> list[str]:
    """The commands as run, and the bench's own table, so that every figure can be traced and redone."""
    return ["## Commands", "", "```",
            *[f"DISTILL_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE {r['command']}" for r in rec.records.values()],
            rec.bench_record["command"], "```", "",
            "The bench report (`results/bench/bench.md`; the model named `unpruned` is the reference, so "
            "`speedup` there is against the unpruned student):", "",
            bench_table(RESULTS / "bench"), ""]


def steps_note(prune: dict) -> list[str]:
    """Why the recipe sets prune.steps: the first attempt, with the default, is kept in results/."""
    log = RESULTS / "kd_steps5_offtarget.log"
    if not log.exists():
        return []
    kept = next(ln.split()[-1] for ln in log.read_text().splitlines() if ln.startswith("MACs"))
    return [f"- prune.steps = {prune['steps']} because the first attempt, with the default 5 steps and otherwise the "
            f"same recipe, overshot to {kept} of the MACs, outside the 5% tolerance "
            f"(`results/{log.name}`; a distill bug, reported)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render-only", action="store_true", help="only rewrite RESULTS.md from results/")
    args = parser.parse_args()
    if not args.render_only:
        run_all()
    (HERE / "RESULTS.md").write_text(render())
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
