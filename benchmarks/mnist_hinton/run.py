"""Hinton et al. 2015, section 3, on MNIST, and every knowledge kind on the same student.

    python benchmarks/mnist_hinton/run.py        # teacher + 6 student rows; see RESULTS.md for the time
    python benchmarks/mnist_hinton/run.py kd dkd   # only these rows (the teacher must be recorded)

1. The teacher: `distill run recipes/mnist_hinton.toml` (784-1200-1200-10, dropout 0.2 on the
   input and 0.5 on the hidden layers, +-2 pixel jitter) with the schedule below. That command
   also distils a student; here its student phase is cut to one epoch and thrown away, because in
   the paper the student sees the plain images (no jitter), which a recipe cannot give one phase only.
2. Every student row reuses that teacher (`teacher.checkpoint`), trains the same 784-800-800-10
   student without regularisation on un-jittered images with the same schedule and seed, and
   differs only in its loss. The teacher runs live (no `distill.cache`: reading its cached outputs
   sample by sample made a student epoch about 10x slower than the teacher's forward pass here).
   The baseline (hard labels only) comes from the KD run's baseline phase.
The students' 10 epochs are a budget cut (20 were planned; see the notes in RESULTS.md), not a
recommendation. All figures are test accuracy after the last epoch (no selection on the test
set). Records go to benchmarks/mnist_hinton/results/<row>/ (metrics.json, history.csv, recipe.toml, record.json);
checkpoints stay in runs/mnist_hinton/ (not committed). `python benchmarks/make_results.py` then
writes benchmarks/RESULTS.md. A rerun skips rows already recorded (delete results/<row> to redo).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import DEFAULT_DATA, distill_run, machine, now  # noqa: E402

RECIPE = "recipes/mnist_hinton.toml"
WORK = Path("runs") / "mnist_hinton"  # relative to the repository root
FAST = ["speed.amp=bf16"]  # bf16 autocast: AMX matmuls, about 2x faster on this CPU; weights stay fp32
# the teacher run's own student phase is thrown away: one epoch at a low lr (at 0.05 it diverges)
TEACHER = ["teacher.epochs=40", "teacher.batch_size=256", "teacher.lr=0.1",
           "student.epochs=1", "student.lr=0.01", "baseline.enabled=false"]
# lr 0.02 with one warm-up epoch: at lr 0.05 (batch 128, bf16) the KD student at T=20 diverged
# within 50 steps (the T^2-scaled soft-target gradient is large)
STUDENT = ["student.epochs=10", "student.batch_size=256", "student.lr=0.02", "student.warmup_epochs=1",
           "data.augment=false", "data.jitter=0",
           f"teacher.checkpoint={WORK / 'teacher' / 'teacher.pt'}"]
# penultimate activations: student features.4 = ReLU of the 2nd 800-unit layer, teacher
# features.6 = ReLU of its 2nd 1200-unit layer (features.1 is the teacher's input dropout)
S_PEN, T_PEN = "features.4", "features.6"


def term(loss: str, weight: float, student: str = "logits", teacher: str = "logits", **options) -> str:
    opts = ", ".join(f"{k} = {v}" for k, v in options.items())
    return (f'distill.terms=[{{ loss = "{loss}", weight = {weight}, student = "{student}", '
            f'teacher = "{teacher}", options = {{ {opts} }} }}]')


# row -> (what it transfers, extra overrides). ce_weight 1 + term for feature/relation terms
# (as in CRD's benchmark); weights are the papers' / CRD's, not tuned here.
ROWS = {
    "kd": ("response", ["distill.ce_weight=0.1", term("kd", 1.0, temperature=20.0)]),
    "dkd": ("response", ["distill.ce_weight=1.0", term("dkd", 1.0, alpha=1.0, beta=8.0, temperature=4.0),
                         "baseline.enabled=false"]),
    "hint": ("feature", ["distill.ce_weight=1.0", term("hint", 1.0, S_PEN, T_PEN), "baseline.enabled=false"]),
    "sp": ("relation", ["distill.ce_weight=1.0", term("sp", 3000.0, S_PEN, T_PEN), "baseline.enabled=false"]),
    "pkt": ("relation", ["distill.ce_weight=1.0", term("pkt", 470.0, S_PEN, T_PEN), "baseline.enabled=false"]),
    "rkd": ("relation", ["distill.ce_weight=1.0", term("rkd", 1.0, S_PEN, T_PEN), "baseline.enabled=false"]),
}


def main() -> None:
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP threads on a shared machine
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    meta_file = results / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"machine": machine(), "date": now()}
    meta.update(command="python benchmarks/mnist_hinton/run.py", teacher_overrides=TEACHER + FAST,
                student_overrides=STUDENT + FAST, rows={k: v[0] for k, v in ROWS.items()})
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    only = sys.argv[1:] or ["teacher", *ROWS]
    if "teacher" in only:
        distill_run(RECIPE, WORK / "teacher", TEACHER + FAST, results / "teacher", HERE / "logs" / "teacher.log")
    for row, (_, extra) in ROWS.items():
        if row in only:
            distill_run(RECIPE, WORK / row, STUDENT + FAST + extra, results / row, HERE / "logs" / f"{row}.log")


if __name__ == "__main__":
    main()
