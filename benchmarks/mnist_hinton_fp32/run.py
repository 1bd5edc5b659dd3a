"""The MNIST knowledge table's protocol in fp32: its teacher, the reference row and the rows of #19.

    python benchmarks/mnist_hinton_fp32/run.py        # teacher + kd_plain + dist_plain, kd_ls_plain, crd_plain

Why a second table: benchmarks/mnist_hinton ran with `speed.amp=bf16` on an Intel Xeon with AMX. On a
CPU without bf16 matrix units (the AMD EPYC of the session that ran this) bf16 is emulated: about
150 s per teacher epoch instead of 12 s. So these rows run the same commands (same seeds, schedules,
losses, teacher recipe) in fp32, with their own teacher and their own reference row `kd_plain`
(whose label-only phase is the baseline), and are compared with each other only.
Records go to benchmarks/mnist_hinton_fp32/results/<row>/; checkpoints to runs/mnist_hinton_fp32/.
A rerun skips recorded rows.
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
_spec.loader.exec_module(mnist)  # the table's settings, shared rather than copied

WORK = Path("runs") / "mnist_hinton_fp32"
ROWS = ("kd_plain", "dist_plain", "kd_ls_plain", "crd_plain")
STUDENT = [o for o in mnist.STUDENT if not o.startswith("teacher.checkpoint=")] + [
    f"teacher.checkpoint={WORK / 'teacher' / 'teacher.pt'}"]


def main() -> None:
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "meta.json").write_text(json.dumps({
        "machine": machine(), "date": first_started(results / "meta.json"),
        "command": "python benchmarks/mnist_hinton_fp32/run.py",
        "teacher_overrides": mnist.TEACHER, "student_overrides": STUDENT,
        "rows": {row: mnist.ROWS[row][0] for row in ROWS}}, indent=2) + "\n")
    distill_run(mnist.RECIPE, WORK / "teacher", mnist.TEACHER, results / "teacher", HERE / "logs" / "teacher.log")
    for row in ROWS:
        distill_run(mnist.RECIPE, WORK / row, STUDENT + mnist.ROWS[row][1], results / row, HERE / "logs" / f"{row}.log")


if __name__ == "__main__":
    main()
