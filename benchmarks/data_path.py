"""Images per second of `distill.fit` against a hand-written batched loop, in one interleaved run (#21).

    python benchmarks/data_path.py --quick      # < 60 s on 2 CPU cores; fake data without the real files
    python benchmarks/data_path.py              # the recorded run: see benchmarks/data_path/RESULTS.md
    python benchmarks/data_path.py --device cuda --amp bf16 --channels-last    # on a GPU

Two workloads, each timed as three contenders in rounds that alternate their order:
- `mnist_mlp_kd`: MLP 784-1200-1200-10 teacher (run live) -> MLP 784-800-800-10 student, 0.1 CE +
  KD at T = 20, +-2 px jitter, batch 256 (Hinton et al. 2015, section 3);
- `cifar_resnet8x4`: resnet32x4 -> resnet8x4, CE + KD at T = 4, pad-4 random crop + flip, batch 128;
  the teacher's logits come from a cache on both sides (built before the clock starts), so the
  student's step and the data path are what is timed.
Contenders: `hand` (the data set as one uint8 tensor on the device, a random permutation sliced into
batches, each image shifted and flipped with its own random draws by advanced indexing, the same
model, loss and SGD step, nothing else), `fit` (`distill.fit` on `load_data`'s dataset: the in-memory
path) and `fit_loader` (the same call with `Speed(in_memory=False)`: the per-sample DataLoader path
that `fit` used before #21). Each `fit` is timed by its wall time, one epoch over the round's images,
set-up included. The ratio is fit / hand images per second (median over rounds of each side).

The full run adds the jittered MNIST epoch through `distill run recipes/mnist_hinton.toml` (one
teacher and one student epoch, `data.in_memory` true vs false, alternating), from history.csv.
The last line printed is a JSON object of the fit / hand ratios.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEFAULT_DATA, machine, now  # noqa: E402

from distill import Distiller, Schedule, Term, fit  # noqa: E402
from distill.cache import CachedTeacherDataset, TeacherCache  # noqa: E402
from distill.data import load_data  # noqa: E402
from distill.data.transforms import RandomFlip  # noqa: E402
from distill.losses import KDLoss  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.settings import Speed  # noqa: E402


def workloads(quick: bool) -> dict[str, dict]:
    """Per workload: data, models, loss, augmentation and how many images a round times."""
    return {
        "mnist_mlp_kd": dict(data="mnist", load={"jitter": 2}, teacher=("mlp", {"hidden": [1200, 1200]}),
                             student=("mlp", {"hidden": [800, 800]}), ce_weight=0.1, temperature=20.0,
                             pad=2, flip=False, batch=256, images=2048 if quick else 60000, cached=False),
        "cifar_resnet8x4": dict(data="cifar10", load={}, teacher=("resnet32x4", {}), student=("resnet8x4", {}),
                                ce_weight=1.0, temperature=4.0, pad=4, flip=True, batch=64 if quick else 128,
                                images=128 if quick else 1024, cached=True),
    }


def load(spec: dict, images: int):
    """`load_data`'s bundle of the workload (fake data of the same shape when the file is absent)."""
    if (Path(os.environ["DISTILL_DATA"]) / f"{spec['data']}.npz").exists():
        return load_data(spec["data"], train_limit=images, test_limit=100, **spec["load"]), spec["data"]
    shape = {"mnist": (1, 28), "cifar10": (3, 32)}[spec["data"]]
    pad, flip = spec["pad"], spec["flip"]
    bundle = load_data("fake", channels=shape[0], image_size=shape[1], jitter=pad, train_limit=images,
                       test_limit=100)
    if not flip:  # fake data flips by default; MNIST does not
        bundle.train.transform.steps = [s for s in bundle.train.transform.steps if not isinstance(s, RandomFlip)]
    return bundle, "fake"


class HandLoop:
    """The reference: whole batches sliced from a uint8 tensor on the device and augmented there."""

    def __init__(self, spec: dict, bundle, teacher, student, logits, device, speed: Speed) -> None:
        data = bundle.train
        self.x = data.source.pixels()[data.indices].to(device)
        self.y = data.targets.to(device)
        self.max_value = data.transform.steps[0].max_value
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        self.spec, self.teacher, self.student, self.logits, self.device = spec, teacher, student, logits, device
        self.speed = speed
        self.opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.spec["pad"]
        i, j = (torch.randint(0, 2 * p + 1, (n,), device=x.device) for _ in range(2))
        rows = (i[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = F.pad(x, (p, p, p, p))[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]
        x = x.permute(0, 3, 1, 2)
        if self.spec["flip"]:
            x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
        return x

    def epoch(self) -> None:
        bs, T = self.spec["batch"], self.spec["temperature"]
        order = torch.randperm(len(self.y), device=self.device)
        self.student.train()
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            x = self.augment(self.x[idx].float() / self.max_value)
            x = ((x - self.mean) / self.std).contiguous(memory_format=self._format())
            with self.speed.autocast(self.device):
                if self.logits is None:
                    with torch.no_grad():
                        t = self.teacher(x)
                else:
                    t = self.logits[idx]
                s = self.student(x)
            s, t = s.float(), t.float()
            kd = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                          log_target=True) * T * T
            loss = self.spec["ce_weight"] * F.cross_entropy(s, self.y[idx]) + kd
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def _format(self):
        return torch.channels_last if self.speed.channels_last else torch.contiguous_format


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def measure(name: str, spec: dict, rounds: int, device: torch.device, speed: Speed, work: Path) -> dict:
    """Images/s of each contender per round, rounds alternating the order."""
    bundle, source = load(spec, spec["images"])
    shape, k = bundle.input_shape, bundle.num_classes
    torch.manual_seed(0)
    teacher = build_model(spec["teacher"][0], k, shape, **spec["teacher"][1]).to(device).eval()
    student_init = build_model(spec["student"][0], k, shape, **spec["student"][1]).state_dict()
    if speed.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    train, logits = bundle.train, None
    if spec["cached"]:
        cache = TeacherCache.build(teacher, bundle.train, ["logits"], work / name, device=device, progress=False)
        train = CachedTeacherDataset(bundle.train, cache)
        logits = torch.from_numpy(cache.arrays["logits"][0].astype("float32")).to(device)

    def student() -> torch.nn.Module:
        model = build_model(spec["student"][0], k, shape, **spec["student"][1])
        model.load_state_dict(student_init)
        return model.to(device)

    def run_fit(in_memory: bool) -> Callable[[], None]:
        distiller = Distiller(teacher, student(), [Term("kd", KDLoss(temperature=spec["temperature"]))], shape,
                              ce_weight=spec["ce_weight"])
        options = {**vars(speed), "in_memory": in_memory}
        schedule = Schedule(epochs=1, batch_size=spec["batch"], lr=0.05)
        return lambda: fit(distiller, train, schedule, device=device, speed=Speed(**options), progress=False)

    contenders = {"hand": lambda: HandLoop(spec, bundle, teacher, student(), logits, device, speed).epoch,
                  "fit": lambda: run_fit(True), "fit_loader": lambda: run_fit(False)}
    n = len(bundle.train)
    per_round: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for c in order:
            run = contenders[c]()  # set-up (models, optimizer) outside the clock, except fit's own
            per_round[c].append(n / timed(run, device))
        print(f"{name} round {r + 1}/{rounds}: " + ", ".join(f"{c} {per_round[c][-1]:.0f} img/s" for c in contenders),
              flush=True)
    median = {c: statistics.median(v) for c, v in per_round.items()}
    return {"data": source, "images_per_round": n, "batch_size": spec["batch"], "images_per_s": median,
            "rounds": per_round, "ratio": median["fit"] / median["hand"],
            "ratio_before": median["fit_loader"] / median["hand"]}


def distill_run_epochs(rounds: int, work: Path) -> dict:
    """The jittered MNIST epoch through `distill run`, data.in_memory true vs false, alternating."""
    seconds: dict[str, dict[str, list[float]]] = {"true": {}, "false": {}}
    for r in range(rounds):
        for flag in (("true", "false") if r % 2 == 0 else ("false", "true")):
            out = work / f"run_{flag}_{r}"
            cmd = ["distill", "run", "recipes/mnist_hinton.toml", "--out", str(out), "--set", "teacher.epochs=1",
                   "--set", "student.epochs=1", "--set", "baseline.enabled=false", "--set", f"data.in_memory={flag}"]
            subprocess.run(cmd, check=True, capture_output=True, cwd=HERE.parent)
            with open(out / "history.csv") as f:
                for row in csv.DictReader(f):
                    seconds[flag].setdefault(row["phase"], []).append(float(row["seconds"]))
            print(f"distill run round {r + 1}, in_memory={flag}: "
                  + ", ".join(f"{p} epoch {v[-1]:.1f} s" for p, v in seconds[flag].items()), flush=True)
    return {flag: {phase: statistics.median(v) for phase, v in by_phase.items()} for flag, by_phase in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-size run: under 60 s on 2 CPU cores")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per workload (default 3, quick 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    os.environ.setdefault("DISTILL_DATA", str(DEFAULT_DATA))
    device = torch.device(args.device)
    speed = Speed(amp=args.amp, channels_last=args.channels_last)
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.perf_counter()
    results = {"machine": machine(), "date": now(), "device": str(device), "amp": args.amp,
               "channels_last": args.channels_last, "quick": args.quick, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in workloads(args.quick).items():
            results["workloads"][name] = measure(name, spec, rounds, device, speed, Path(tmp))
        if not args.quick and device.type == "cpu":
            results["distill_run_mnist_epoch_seconds"] = distill_run_epochs(2, Path(tmp))
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results["workloads"].items():
        print(f"{name} ({r['data']}): " + ", ".join(f"{c} {v:.0f} img/s" for c, v in r["images_per_s"].items())
              + f"; fit/hand {r['ratio']:.2f} (before: {r['ratio_before']:.2f})")
    print(f"wall time {results['wall_seconds']} s")
    print(json.dumps({name: round(r["ratio"], 3) for name, r in results["workloads"].items()}))


if __name__ == "__main__":
    main()
