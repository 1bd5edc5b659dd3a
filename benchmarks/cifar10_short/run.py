"""CIFAR-10, CRD/DKD settings on a SHORT CPU schedule: teacher, baseline student and KD student.

    python benchmarks/cifar10_short/run.py                      # vgg13 -> vgg8 (see RESULTS.md for its time)
    python benchmarks/cifar10_short/run.py vgg16_mobilenetv2    # the VGG16-BN pairing
    python benchmarks/cifar10_short/run.py resnet32x4_resnet8x4 # about an hour with 2 threads (4x the MACs of vgg13)
    python benchmarks/cifar10_short/run.py vgg13_vgg8 --teacher runs/cifar10_short/vgg13_vgg8/teacher.pt
        # students only, from a teacher checkpoint a stopped run saved

Each pairing is one `distill run` of its shipped recipe (teacher, KD student at T=4 with 0.9 KD +
0.1 CE, and the baseline: the same student on labels alone, same initial weights, schedule and
batch order), shortened so it fits a CPU: a class-balanced 1000-per-class subset of the training
set, the recipes' augmentation (pad-4 crop, flip; the teacher runs live on each augmented batch),
bf16 autocast, and a cosine learning rate instead of the 240-epoch step schedule. The teacher gets
15 epochs and the students 10: a teacher is usually trained on a larger budget than its students,
and the comparison that matters, KD student against baseline, has identical budgets. The test set
is all 10,000 CIFAR-10 test images; figures are after the last epoch. These numbers say nothing
about the papers' full-schedule CIFAR-100 results. Records go to
benchmarks/cifar10_short/results/<pairing>/, checkpoints to runs/cifar10_short/ (not committed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import DEFAULT_DATA, distill_run, machine, now  # noqa: E402

WORK = Path("runs") / "cifar10_short"  # relative to the repository root
SHORT = ["data.per_class=1000", "data.augment=true", "speed.amp=bf16",
         "teacher.epochs=15", "student.epochs=10", "teacher.scheduler=cosine", "student.scheduler=cosine"]
PAIRS = {
    "vgg13_vgg8": "recipes/cifar10_vgg13_vgg8.toml",
    "resnet32x4_resnet8x4": "recipes/cifar10_resnet32x4_resnet8x4.toml",
    "vgg16_mobilenetv2": "recipes/cifar10_vgg16_mobilenetv2.toml",
}


def main() -> None:
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP threads on a shared machine
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="*", metavar="PAIRING", help=f"default vgg13_vgg8; any of {', '.join(PAIRS)}")
    parser.add_argument("--teacher", help="a trained teacher checkpoint of the (single) pairing")
    args = parser.parse_args()
    pairs = args.pairs or ["vgg13_vgg8"]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        sys.exit(f"unknown pairing {unknown[0]!r}; expected one of {', '.join(PAIRS)}")
    if args.teacher and len(pairs) != 1:
        sys.exit("--teacher needs exactly one pairing")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    meta_file = results / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"machine": machine(), "date": now()}
    command = " ".join(["python benchmarks/cifar10_short/run.py", *sys.argv[1:]])
    meta.update(commands=list(dict.fromkeys([*meta.get("commands", []), command])), overrides=SHORT)
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    for pair in pairs:
        extra, out = ([f"teacher.checkpoint={args.teacher}"], WORK / f"{pair}_students") if args.teacher else ([], WORK / pair)
        distill_run(PAIRS[pair], out, SHORT + extra, results / pair, HERE / "logs" / f"{out.name}.log")


if __name__ == "__main__":
    main()
