"""Hinton et al. 2015, section 3, on MNIST, and every knowledge kind on the same student.

    python benchmarks/mnist_hinton/run.py          # teacher + 20 student runs; see RESULTS.md for the time
    python benchmarks/mnist_hinton/run.py kd dkd   # only these rows (the teacher must be recorded)
    python benchmarks/mnist_hinton/run.py dist_plain kd_ls_plain crd_plain   # the rows of issue #19

1. The teacher: `distill run recipes/mnist_hinton.toml` (784-1200-1200-10, dropout 0.2 on the
   input and 0.5 on the hidden layers, +-2 pixel jitter) with the schedule below. That command
   also distils a student; here its student phase is cut to one epoch and thrown away, so that
   the student rows can choose their own data (plain or jittered images).
2. Every student row reuses that teacher (`teacher.checkpoint`) and trains the same 784-800-800-10
   student (no dropout, no weight decay) with the same schedule. Rows differ only in their loss,
   their data (`_plain` rows see plain images, the paper's exact setting; the others the
   teacher's jitter) or their seed (`_seedN`; 0 otherwise). The teacher runs live (no
   `distill.cache`: the jittered views change every epoch). Each KD run's baseline phase is the
   hard-label student on the same data.
All figures are test accuracy after the last epoch (no selection on the test set). Records go to
benchmarks/mnist_hinton/results/<row>/ (metrics.json, history.csv, recipe.toml, record.json);
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
# Adam rather than SGD (lr 0.1, momentum 0.9): it learned faster in short exploratory runs (see RESULTS.md)
TEACHER = ["teacher.epochs=120", "teacher.batch_size=256", "teacher.optimizer=adam", "teacher.lr=0.001",
           "student.epochs=1", "student.lr=0.01", "baseline.enabled=false"]
# Students: SGD lr 0.05 with one warm-up epoch, no dropout, no weight decay. In every row they see
# the teacher's +-2 pixel jitter (the transfer set is the teacher's training distribution), except
# in kd_plain, the paper's exact setting, where the students see plain images. Each KD run also
# trains the baseline (same student, labels only, same data, initial weights and batch order).
STUDENT = ["student.epochs=60", "student.batch_size=256", "student.lr=0.05", "student.warmup_epochs=1",
           f"teacher.checkpoint={WORK / 'teacher' / 'teacher.pt'}"]
PLAIN = ["data.augment=false", "data.jitter=0"]
# penultimate activations: student features.4 = ReLU of the 2nd 800-unit layer, teacher
# features.6 = ReLU of its 2nd 1200-unit layer (features.1 is the teacher's input dropout)
S_PEN, T_PEN = "features.4", "features.6"


def term(loss: str, weight: float, student: str = "logits", teacher: str = "logits", warmup_epochs: int = 0,
         **options) -> str:
    """One `[[distill.terms]]` entry as an inline TOML table."""
    opts = ", ".join(f"{k} = {v}" for k, v in options.items())
    warmup = f", warmup_epochs = {warmup_epochs}" if warmup_epochs else ""
    return (f'{{ loss = "{loss}", weight = {weight}, student = "{student}", '
            f'teacher = "{teacher}"{warmup}, options = {{ {opts} }} }}')


def terms(*entries: str) -> str:
    return f"distill.terms=[{', '.join(entries)}]"


KD = term("kd", 1.0, temperature=20.0)
HINT = term("hint", 1.0, S_PEN, T_PEN)
PKT = term("pkt", 470.0, S_PEN, T_PEN)


# row -> (what it transfers, extra overrides). ce_weight 1 + term for feature/relation terms
# (as in CRD's benchmark); weights are the papers' / CRD's, not tuned here. RKD is its distance
# term alone (RKD-D in its paper): the angle term's [B, B, B] tensors cost about 70 s per epoch at
# batch 256 here, more than the rest of the table together.
ROWS = {
    "kd": ("response", ["distill.ce_weight=0.1", terms(KD)]),
    "kd_plain": ("response", [*PLAIN, "distill.ce_weight=0.1", terms(KD)]),
    # DKD's loss weight warms up over 20 epochs, as in its paper's code (mdistiller); without it the
    # student's loss became NaN in the first epoch here, and with it at lr 0.05 inf in epoch 18
    # (logs/dkd_no_weight_warmup.log, logs/dkd_lr0.05.log): this row alone trains at lr 0.02
    "dkd": ("response", ["distill.ce_weight=1.0", "student.lr=0.02",
                         terms(term("dkd", 1.0, warmup_epochs=20, alpha=1.0, beta=8.0, temperature=4.0)),
                         "baseline.enabled=false"]),
    "hint": ("feature", ["distill.ce_weight=1.0", terms(HINT), "baseline.enabled=false"]),
    "sp": ("relation", ["distill.ce_weight=1.0", terms(term("sp", 3000.0, S_PEN, T_PEN)), "baseline.enabled=false"]),
    "pkt": ("relation", ["distill.ce_weight=1.0", terms(PKT), "baseline.enabled=false"]),
    "rkd": ("relation", ["distill.ce_weight=1.0",
                         terms(term("rkd", 1.0, S_PEN, T_PEN, distance_weight=25.0, angle_weight=0.0)),
                         "baseline.enabled=false"]),
}
# every kind again on plain images (the paper's setting, where KD's gain is clear), and KD together
# with a feature or a relation term; the baseline is kd_plain's
ROWS |= {f"{row}_plain": (ROWS[row][0], [*PLAIN, *ROWS[row][1]]) for row in ("dkd", "hint", "sp", "pkt", "rkd")}
ROWS |= {"kd_hint_plain": ("response + feature", [*PLAIN, "distill.ce_weight=0.1", terms(KD, HINT),
                                                   "baseline.enabled=false"]),
         "kd_pkt_plain": ("response + relation", [*PLAIN, "distill.ce_weight=0.1", terms(KD, PKT),
                                                   "baseline.enabled=false"])}
# the methods of issue #19, on plain images like the rows above, with their papers' settings:
# DIST with its defaults (beta = gamma = 1, T = 1) beside CE; KD with logit standardisation as in
# its authors' CIFAR commands (CE 0.1, KD weight 9, T = 2); CRD on the penultimate features as in
# RepDistiller (CE 1, CRD weight 0.8, 128-d heads, T 0.07, momentum 0.5) but with 4096 negatives,
# not 16384: at batch 256 the paper's count gathers 2 x 2.1 GB of bank rows per step on this CPU
ROWS |= {
    "dist_plain": ("response", [*PLAIN, "distill.ce_weight=1.0", terms(term("dist", 1.0)), "baseline.enabled=false"]),
    "kd_ls_plain": ("response", [*PLAIN, "distill.ce_weight=0.1",
                                 terms(term("kd", 9.0, temperature=2.0, standardize="true")),
                                 "baseline.enabled=false"]),
    "crd_plain": ("relation", [*PLAIN, "distill.ce_weight=1.0",
                               terms(term("crd", 0.8, S_PEN, T_PEN, feature_dim=128, negatives=4096,
                                          temperature=0.07, momentum=0.5)),
                               "baseline.enabled=false"]),
}
# more seeds of the paper's comparison (other initial weights, batch order and jitter)
ROWS |= {f"{row}_seed{seed}": (ROWS[row][0], [*ROWS[row][1], f"seed={seed}"])
         for seed in (1, 2, 3) for row in ("kd", "kd_plain")}


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
