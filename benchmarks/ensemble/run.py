"""KD from an ensemble of three MNIST teachers vs KD from the best one of them, 3 seeds (issue #19).

    python benchmarks/ensemble/run.py            # 3 teachers + 6 student runs (hours on 2 CPU cores)
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
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import DEFAULT_DATA, distill_run, machine, now  # noqa: E402

_spec = importlib.util.spec_from_file_location("mnist_hinton_run", HERE.parent / "mnist_hinton" / "run.py")
mnist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist)  # the mnist_hinton benchmark's settings, shared rather than copied
FAST, PLAIN, RECIPE, STUDENT, TEACHER, WORK = (mnist.FAST, mnist.PLAIN, mnist.RECIPE, mnist.STUDENT,
                                                mnist.TEACHER, mnist.WORK)

SEEDS = (0, 1, 2)
KD = ["distill.ce_weight=0.1", mnist.terms(mnist.term("kd", 1.0, temperature=20.0))]
SMOKE = ["teacher.epochs=1", "student.epochs=1", "data.train_limit=512", "data.test_limit=256"]


def teacher_overrides(seed: int) -> list[str]:
    return [*TEACHER, *FAST, f"seed={seed}"]


def student_overrides(seed: int, teacher: list[str]) -> list[str]:
    """mnist_hinton's student settings on plain images, with `teacher` in place of its teacher."""
    own = [o for o in STUDENT if not o.startswith("teacher.checkpoint=")]
    return [*own, *FAST, *PLAIN, *KD, *teacher, f"seed={seed}"]


def main() -> None:
    smoke = "--smoke" in sys.argv[1:]
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path("runs") / ("ensemble_smoke" if smoke else "ensemble")
    results = work / "results" if smoke else HERE / "results"
    results.mkdir(parents=True, exist_ok=True)
    extra = SMOKE if smoke else []
    logs = work / "logs" if smoke else HERE / "logs"
    if not smoke:
        (results / "meta.json").write_text(json.dumps({
            "machine": machine(), "date": now(), "command": "python benchmarks/ensemble/run.py",
            "teacher_overrides": TEACHER + FAST, "student_overrides": student_overrides(0, [])}, indent=2) + "\n")
    teachers = []
    for seed in SEEDS:
        out = WORK / "teacher" if seed == 0 and not smoke else work / f"teacher_seed{seed}"
        record = distill_run(RECIPE, out, teacher_overrides(seed) + extra, results / f"teacher_seed{seed}",
                             logs / f"teacher_seed{seed}.log")
        teachers.append((record["metrics"]["teacher"]["test_accuracy"], out / "teacher.pt"))
    best = max(teachers, key=lambda t: t[0])[1]
    members = "teacher.ensemble=[" + ", ".join(f'"{p.as_posix()}"' for _, p in teachers) + "]"
    for seed in SEEDS:
        distill_run(RECIPE, work / f"ensemble_seed{seed}", student_overrides(seed, [members]) + extra,
                    results / f"ensemble_seed{seed}", logs / f"ensemble_seed{seed}.log")
        distill_run(RECIPE, work / f"best_seed{seed}",
                    student_overrides(seed, [f"teacher.checkpoint={best.as_posix()}", "baseline.enabled=false"])
                    + extra, results / f"best_seed{seed}", logs / f"best_seed{seed}.log")


if __name__ == "__main__":
    main()
