"""KD from an ensemble of three MNIST teachers vs KD from the best one of them, 3 seeds (issue #19).

    python benchmarks/ensemble/run.py            # 3 teachers + 6 student runs (hours on 2 CPU cores)
    python benchmarks/ensemble/run.py --fp32     # the protocol for CPUs without bf16 units (below)
    python benchmarks/ensemble/run.py --smoke    # the same commands at toy size, into runs/ only

1. Teachers: the mnist_hinton teacher command (`recipes/mnist_hinton.toml`, its teacher schedule)
   with seeds 0, 1 and 2; seed 0 is the mnist_hinton benchmark's own teacher command, so an existing
   runs/mnist_hinton/teacher is reused.
2. Students, for student seeds 0, 1, 2, on plain images with mnist_hinton's KD row (0.1 CE + KD at
   T = 20) and student schedule:
   - `ensemble_seedN`: `teacher.ensemble` = the three teachers (the average of their probabilities
     at T = 20, Hinton et al. 2015 section 2);
   - `best_seedN`: `teacher.checkpoint` = the teacher with the highest test accuracy. Choosing it on
     the test set favours the single teacher, so a gain of the ensemble is not overstated.
   The baseline phase (labels only) runs with the ensemble rows.
Records go to benchmarks/ensemble/results/<row>/ (metrics.json, history.csv, recipe.toml,
record.json), checkpoints to runs/ensemble/. A rerun skips recorded rows.

`--fp32`, for a CPU without bf16 matrix units (where bf16 is emulated, ~10x slower): no
`speed.amp`; two teachers, seed 0 being benchmarks/mnist_hinton_fp32's (run that first) and seed 1
trained here with the same command; the teachers' outputs cached for the students
(`distill.cache`: plain images, so exact up to float16 rounding, for both rows alike); the
baseline only in seed 0. Checkpoints go to runs/ensemble_fp32/.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import DEFAULT_DATA, distill_run, first_started, machine  # noqa: E402

_spec = importlib.util.spec_from_file_location("mnist_hinton_run", HERE.parent / "mnist_hinton" / "run.py")
mnist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist)  # the mnist_hinton benchmark's settings, shared rather than copied
FAST, PLAIN, RECIPE, STUDENT, TEACHER, WORK = (mnist.FAST, mnist.PLAIN, mnist.RECIPE, mnist.STUDENT,
                                                mnist.TEACHER, mnist.WORK)

SEEDS = (0, 1, 2)
KD = ["distill.ce_weight=0.1", mnist.terms(mnist.term("kd", 1.0, temperature=20.0))]
SMOKE = ["teacher.epochs=1", "student.epochs=1", "data.train_limit=512", "data.test_limit=256"]


FP32 = ["distill.cache=true"]  # the --fp32 protocol's students: no speed.amp, cached teacher outputs


def teacher_overrides(seed: int, fast: list[str]) -> list[str]:
    return [*TEACHER, *fast, f"seed={seed}"]


def student_overrides(seed: int, teacher: list[str], fast: list[str]) -> list[str]:
    """mnist_hinton's student settings on plain images, with `teacher` in place of its teacher."""
    own = [o for o in STUDENT if not o.startswith("teacher.checkpoint=")]
    return [*own, *fast, *PLAIN, *KD, *teacher, f"seed={seed}"]


def main() -> None:
    smoke, fp32 = "--smoke" in sys.argv[1:], "--fp32" in sys.argv[1:]
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path("runs") / ("ensemble_smoke" if smoke else "ensemble_fp32" if fp32 else "ensemble")
    results = work / "results" if smoke else HERE / "results"
    results.mkdir(parents=True, exist_ok=True)
    extra = SMOKE if smoke else []
    logs = work / "logs" if smoke else HERE / "logs"
    fast, student_fast = ([], FP32) if fp32 else (FAST, FAST)
    teacher_seeds = (0, 1) if fp32 else SEEDS
    first_teacher = Path("runs") / "mnist_hinton_fp32" / "teacher" if fp32 else WORK / "teacher"
    if not smoke:
        (results / "meta.json").write_text(json.dumps({
            "machine": machine(), "date": first_started(results / "meta.json"),
            "command": "python benchmarks/ensemble/run.py" + " --fp32" * fp32,
            "teacher_overrides": TEACHER + fast, "student_overrides": student_overrides(0, [], student_fast),
            "protocol": "fp32, two teachers, cached teacher outputs, baseline in seed 0 only" if fp32 else "bf16"},
            indent=2) + "\n")
    teachers = []
    for seed in teacher_seeds:
        out = first_teacher if seed == 0 and not smoke else work / f"teacher_seed{seed}"
        record = distill_run(RECIPE, out, teacher_overrides(seed, fast) + extra, results / f"teacher_seed{seed}",
                             logs / f"teacher_seed{seed}.log")
        teachers.append((record["metrics"]["teacher"]["test_accuracy"], out / "teacher.pt"))
    best = max(teachers, key=lambda t: t[0])[1]
    members = "teacher.ensemble=[" + ", ".join(f'"{p.as_posix()}"' for _, p in teachers) + "]"
    for seed in SEEDS:
        baseline = ["baseline.enabled=false"] if fp32 and seed else []
        distill_run(RECIPE, work / f"ensemble_seed{seed}", student_overrides(seed, [members], student_fast)
                    + baseline + extra, results / f"ensemble_seed{seed}", logs / f"ensemble_seed{seed}.log")
        distill_run(RECIPE, work / f"best_seed{seed}",
                    student_overrides(seed, [f"teacher.checkpoint={best.as_posix()}", "baseline.enabled=false"],
                                      student_fast) + extra, results / f"best_seed{seed}", logs / f"best_seed{seed}.log")


if __name__ == "__main__":
    main()
