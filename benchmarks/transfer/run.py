"""The transfer benchmark: pretrain on MNIST digits 0-4, adapt to digits 5-9 with few labels.

    python benchmarks/transfer/run.py          # about 5-10 minutes on 2 CPU cores, offline

A `resnet8` (the 32x32 CIFAR family, in_channels=1) is trained on digits 0-4 and saved with
save_checkpoint: the "pretrained teacher". It is then adapted to digits 5-9 with 10 and with 100
labelled training images per class by each strategy of distill.transfer (scratch, feature
extraction, fine-tuning from the last stage `layer3`, full fine-tuning), with one fixed schedule
per label budget and several seeds (each seed draws another labelled subset and head
initialisation). Every cell is test accuracy after the last epoch on every MNIST test image of
digits 5-9: nothing is selected on the test set. `distill probe` then scores a linear probe on
each depth of the pretrained network on the same few labels, and the script records what `auto`
picks. Reports, logs and RESULTS.md (generated, no figure typed by hand) go to benchmarks/transfer/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# PyTorch's OpenMP threads spin at barriers by default; on a shared machine that steals the core
# the other thread needs (see distill/cli/bench.py). libgomp reads this when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent))

from common import DEFAULT_DATA, hardware, minutes  # noqa: E402

from distill.data import load_data  # noqa: E402
from distill.models import ModelCard, build_model, save_checkpoint  # noqa: E402
from distill.settings import Schedule  # noqa: E402
from distill.strategy import Decision, choose_strategy  # noqa: E402
from distill.train import Supervised, evaluate, fit  # noqa: E402
from distill.transfer import adapt_teacher  # noqa: E402

ARCH, SHAPE = "resnet8", (1, 28, 28)
OLD, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
STRATEGIES = ("scratch", "feature_extraction", "finetune", "full")
FINETUNE_FROM = "layer3"        # resnet8's last stage
BACKBONE_LR_SCALE = 0.1
PRETRAIN = Schedule(epochs=3, batch_size=128, lr=0.1)
# one schedule per label budget, the same for every strategy (about 150-250 steps)
ADAPT = {10: Schedule(epochs=30, batch_size=10, lr=0.05), 100: Schedule(epochs=15, batch_size=32, lr=0.05)}


def pretrain(root: str, path: Path) -> dict:
    """Train the teacher on digits 0-4 and save it as a distill checkpoint."""
    data = load_data("mnist", root=root, classes=OLD, augment=False)
    torch.manual_seed(0)
    model = build_model(ARCH, len(OLD), SHAPE)
    started = time.perf_counter()
    fit(Supervised(model), data.train, PRETRAIN, desc="pretrain 0-4", progress=True)
    card = ModelCard(ARCH, len(OLD), SHAPE, mean=data.mean, std=data.std, class_names=data.class_names)
    save_checkpoint(path, model, card)
    return {"train_images": len(data.train), "test_accuracy_0_4": evaluate(model, data.test)["accuracy"],
            "seconds": round(time.perf_counter() - started, 1)}


def adapt(root: str, weights: Path, per_class: int, seed: int, strategy: str) -> dict:
    """Adapt to digits 5-9 with `per_class` labels per class; test accuracy after the last epoch."""
    data = load_data("mnist", root=root, classes=NEW, per_class=per_class, seed=seed, augment=False)
    decision = choose_strategy(strategy, strategy != "scratch", len(data.train) / data.num_classes)
    torch.manual_seed(seed)
    model = build_model(ARCH, len(NEW), SHAPE, weights=None if strategy == "scratch" else str(weights))
    started = time.perf_counter()
    adapt_teacher(model, decision.strategy, data.train, ADAPT[per_class], train_plain=data.train_plain,
                  finetune_from=FINETUNE_FROM, backbone_lr_scale=BACKBONE_LR_SCALE, seed=seed,
                  progress=False)
    return {"per_class": per_class, "seed": seed, "strategy": strategy,
            "test_accuracy": evaluate(model, data.test)["accuracy"], "test_images": len(data.test),
            "seconds": round(time.perf_counter() - started, 1)}


def probe(weights: Path, per_class: int, out: Path, root: str) -> tuple[list[str], str, dict]:
    """`distill probe` on the pretrained checkpoint with the few labels of seed 0."""
    cmd = [sys.executable, "-m", "distill", "probe", str(weights), "--data", "mnist", "--classes",
           ",".join(map(str, NEW)), "--per-class", str(per_class), "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISTILL_DATA": root}
    print("$", shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    print(done.stdout, done.stderr, flush=True)
    if done.returncode:
        sys.exit(f"distill probe failed with exit code {done.returncode}")
    return cmd, done.stdout, json.loads((REPO / out / "probe.json").read_text())


def cpu_minutes() -> float:
    """User + system CPU time of this process and its finished children (the probes), in minutes."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage) / 60


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def accuracies(runs: list[dict], strategy: str, per_class: int) -> list[float]:
    """Test accuracies of one cell of the table, one per seed."""
    return [r["test_accuracy"] for r in runs if r["strategy"] == strategy and r["per_class"] == per_class]


def report(meta: dict, runs: list[dict], probes: dict, started: float, load_before: float) -> str:
    """RESULTS.md: the setting, the accuracy tables, what they say, and the probes behind `auto`."""
    auto = {k: choose_strategy("auto", True, k) for k in sorted(ADAPT)}
    return "\n".join([*header(meta, runs, started, load_before), *accuracy_tables(runs, auto),
                      *findings(runs, probes, auto), *probe_table(probes), *probe_logs(probes)])


def header(meta: dict, runs: list[dict], started: float, load_before: float) -> list[str]:
    """Command, machine, teacher, data and schedules: what every figure below was measured on."""
    seeds = sorted({r["seed"] for r in runs})
    return [
        "# Transfer benchmark: MNIST digits 0-4 -> 5-9 with few labels",
        "",
        "_Generated by `python benchmarks/transfer/run.py`; do not edit by hand._",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/transfer/run.py', *sys.argv[1:]])}`",
        f"- machine: {meta['machine']}; Python {platform.python_version()}, torch {torch.__version__}",
        f"- date: {meta['date']}; whole benchmark {minutes(time.time() - started)} wall time, "
        f"{cpu_minutes():.1f} min CPU time; load average (1 min) before/after {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f} (a shared machine: wall time depends on the other jobs)",
        f"- pretrained teacher: `{ARCH}` (in_channels=1, {meta['pretrain']['params']} parameters) trained "
        f"from scratch on the {meta['pretrain']['train_images']} MNIST training images of digits 0-4 "
        f"for {PRETRAIN.epochs} epochs ({meta['pretrain']['seconds']:.0f} s): "
        f"{100 * meta['pretrain']['test_accuracy_0_4']:.2f}% on the 0-4 test images",
        f"- transfer: digits 5-9 with 10 or 100 labelled training images per class (a seeded random "
        f"subset per seed); seeds {', '.join(map(str, seeds))}; test: all {runs[0]['test_images']} "
        "MNIST test images of digits 5-9, accuracy after the last epoch (no selection on test)",
        "- schedules (the same for every strategy): " + "; ".join(
            f"{k}/class: {s.epochs} epochs, batch {s.batch_size}, SGD lr {s.lr} (cosine), momentum "
            f"{s.momentum}, weight decay {s.weight_decay}" for k, s in ADAPT.items())
        + f"; pretrained layers at {BACKBONE_LR_SCALE} x lr (finetune, full); finetune trains "
        f"`{FINETUNE_FROM}` and the head, the frozen part's BN stays in eval mode",
        "",
    ]


def accuracy_tables(runs: list[dict], auto: dict[int, Decision]) -> list[str]:
    """Each strategy's accuracy per label budget (mean ± sd, then per seed), and what `auto` picks and why."""
    seeds, budgets = sorted({r["seed"] for r in runs}), sorted(ADAPT)
    lines = [f"## Test accuracy on digits 5-9 (%, mean ± sd over {len(seeds)} seeds)", "",
             "| strategy | " + " | ".join(f"{k} labels/class" for k in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for strategy in STRATEGIES:
        lines.append(f"| {strategy} | " + " | ".join(mean_sd(accuracies(runs, strategy, k)) for k in budgets) + " |")
    lines.append("| **auto** picks | " + " | ".join(
        f"{auto[k].strategy} ({mean_sd(accuracies(runs, auto[k].strategy, k))})" for k in budgets) + " |")
    lines += ["", "Per seed (%):", "",
              "| strategy | labels/class | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---:|" + "---:|" * len(seeds)]
    for k in budgets:
        for strategy in STRATEGIES:
            values = " | ".join(f"{100 * v:.1f}" for v in accuracies(runs, strategy, k))
            lines.append(f"| {strategy} | {k} | {values} |")
    return lines + ["", "`auto`'s reasons: " + "; ".join(f"{k}/class: {auto[k].reason}" for k in budgets), ""]


def findings(runs: list[dict], probes: dict, auto: dict[int, Decision]) -> list[str]:
    """What the numbers say: the best strategy against `auto`'s pick, and the probes against the SGD head."""
    lines = ["## What the numbers say", ""]
    budgets = sorted(ADAPT)
    for k in budgets:
        means = {st: statistics.mean(accuracies(runs, st, k)) for st in STRATEGIES}
        best = max(means, key=means.get)
        pick = auto[k].strategy
        gap = 100 * (means[pick] - means[best])
        lines.append(f"- {k} labels/class: best is **{best}** ({100 * means[best]:.1f}%), scratch "
                     f"{100 * means['scratch']:.1f}%; `auto` picks {pick}"
                     + (" (the best)" if pick == best else f", {-gap:.1f} points below the best"))
    for k in budgets:
        layer3 = next(s for s in probes[k]["report"]["scores"] if s["layer"] == FINETUNE_FROM)
        fe = accuracies(runs, "feature_extraction", k)[0]
        lines.append(f"- {k} labels/class, seed 0: feature_extraction {100 * fe:.1f}% vs the linear probe on "
                     f"`{FINETUNE_FROM}` {100 * layer3['test_accuracy']:.1f}%: the same features and labels "
                     f"(`{ARCH}`'s head reads the global average of `{FINETUNE_FROM}`), a head fitted by the "
                     "SGD schedule vs by L-BFGS with its L2 strength cross-validated")
    for k in budgets:
        report_k = probes[k]["report"]
        top_test = max(report_k["scores"], key=lambda s: s["test_accuracy"])
        close = [layer for layer in report_k["near_best"] if layer != report_k["best"]]
        lines.append(f"- probe, {k} labels/class: recommends `{report_k['best']}`"
                     + (f" (too close to call against {', '.join(f'`{c}`' for c in close)})" if close else "")
                     + f"; for reference, the best probe on the test set is `{top_test['layer']}` "
                     f"({100 * top_test['test_accuracy']:.1f}%)")
    return lines + [""]


def probe_table(probes: dict) -> list[str]:
    """Linear-probe accuracy at every depth of the pretrained network, per label budget."""
    budgets = sorted(ADAPT)
    lines = ["## Linear probe per depth of the pretrained network on digits 5-9 (seed 0's labels)", "",
             "Each probe is a logistic regression on the layer's globally average-pooled activations, "
             "standardised; its L2 strength and the best depth are chosen by 5-fold cross-validation on "
             "the few training labels (the val columns), then it is refitted on all of them. Test "
             "accuracy (all 5-9 test images) is for reference only. `fc` is the pretrained 0-4 head's "
             "output. ≈ marks layers inside the 95% confidence interval of the best's val accuracy: "
             "too close to call on that many labels.", "",
             "| layer | dim | " + " | ".join(f"{k}/class val | {k}/class test" for k in budgets) + " |",
             "|---|---:|" + "---:|---:|" * len(budgets)]
    for i, score in enumerate(probes[budgets[0]]["report"]["scores"]):
        cells = []
        for k in budgets:
            s = probes[k]["report"]["scores"][i]
            best, near = probes[k]["report"]["best"], probes[k]["report"]["near_best"]
            mark = " **best**" if s["layer"] == best else " ≈" if s["layer"] in near else ""
            cells += [f"{100 * s['val_accuracy']:.1f}{mark}", f"{100 * s['test_accuracy']:.1f}"]
        lines.append(f"| `{score['layer']}` | {score['feature_dim']} | " + " | ".join(cells) + " |")
    return lines + [""]


def probe_logs(probes: dict) -> list[str]:
    """Each `distill probe` command with its output and plot, as run, so the table above can be checked."""
    lines = []
    for k in sorted(ADAPT):
        p = probes[k]
        lines += [f"### `distill probe` with {k} labels per class", "", "```",
                  f"$ {shlex.join(['distill', *p['cmd'][3:]])}", p["stdout"].rstrip(), "```", "",
                  f"![probe {k}/class](results/probe_{k}/probe.png)", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (labelled subsets) per cell")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-transfer"),
                        help="where the pretrained teacher goes")
    parser.add_argument("--data-root", default=os.environ.get("DISTILL_DATA") or str(DEFAULT_DATA),
                        help="folder with mnist.npz (default: $DISTILL_DATA, else ../shared/data)")
    args = parser.parse_args()
    if not (Path(args.data_root) / "mnist.npz").is_file():
        sys.exit(f"{Path(args.data_root) / 'mnist.npz'} not found; set --data-root or DISTILL_DATA")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started, load_before = time.time(), os.getloadavg()[0]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    weights = args.work / "pretrained_mnist_0-4.pt"
    meta = {"machine": hardware(torch.get_num_threads()), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    meta["pretrain"] = pretrain(args.data_root, weights)
    meta["pretrain"]["params"] = sum(p.numel() for p in build_model(ARCH, len(OLD), SHAPE).parameters())
    print("pretrained:", meta["pretrain"], flush=True)

    runs = []
    for per_class in sorted(ADAPT):
        for seed in range(args.seeds):
            for strategy in STRATEGIES:
                runs.append(adapt(args.data_root, weights, per_class, seed, strategy))
                print(runs[-1], flush=True)
    probes = {}
    for per_class in sorted(ADAPT):
        out = (results / f"probe_{per_class}").relative_to(REPO)
        cmd, stdout, data = probe(weights, per_class, out, args.data_root)
        probes[per_class] = {"cmd": cmd, "stdout": stdout, "report": data}
    (results / "transfer.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    (HERE / "RESULTS.md").write_text(report(meta, runs, probes, started, load_before))
    print(f"wrote {HERE / 'RESULTS.md'} in {minutes(time.time() - started)} ({cpu_minutes():.1f} min CPU)")


if __name__ == "__main__":
    main()
