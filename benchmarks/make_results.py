"""Write benchmarks/RESULTS.md from the recorded runs (results/*/record.json), never from typed figures.

    python benchmarks/make_results.py

Our numbers, dates, commands, machine and wall times are read from the records that
benchmarks/mnist_hinton/run.py and benchmarks/cifar10_short/run.py wrote; only the papers'
figures (reference values) are constants here.
"""
from __future__ import annotations

import json
import re
import statistics
import tomllib
from pathlib import Path

from common import minutes

from distill.gain import distillation_gain

HERE = Path(__file__).resolve().parent

# Hinton, Vinyals & Dean 2015, section 3: MNIST test errors (of 10,000)
HINTON = {"teacher": 67, "baseline": 146, "kd": 74}
# CIFAR-100 top-1 (%), full 240-epoch schedule: CRD (Tian et al. 2020) table 1; DKD (Zhao et al. 2022) table 1
CIFAR100 = {
    "vgg13_vgg8": {"teacher": 74.64, "baseline": 70.36, "kd": 72.98, "dkd": 74.68},
    "resnet32x4_resnet8x4": {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "dkd": 76.32},
}
NOT_APPLICABLE = {"at": ("feature", "attention transfer needs conv feature maps [B, C, H, W]; "
                                    "an MLP has only vectors, so it does not apply to this student")}


def load(folder: Path) -> tuple[dict, dict[str, dict]]:
    """meta.json and {row: record.json + recipe} of one benchmark's results/ folder."""
    results = folder / "results"
    if not (results / "meta.json").exists():
        return {}, {}
    meta = json.loads((results / "meta.json").read_text())
    rows = {}
    for record in results.glob("*/record.json"):
        r = json.loads(record.read_text())
        r["recipe"] = tomllib.loads((record.parent / "recipe.toml").read_text())
        rows[record.parent.name] = r
    return meta, dict(sorted(rows.items(), key=lambda item: (item[1]["date"], item[0])))


def errors(m: dict, n: int) -> int:
    return round((1 - m["test_accuracy"]) * n)


def run_seconds(record: dict) -> float:
    """Wall time of a run: its recorded wall time, or, for a run resumed after an interruption,
    the train time of the phases it holds (the sum of their epoch times) when that is larger."""
    phases = sum(v.get("train_seconds", 0) for v in record["metrics"].values() if isinstance(v, dict))
    return max(record["wall_seconds"], phases)


def term_text(recipe: dict) -> tuple[str, str]:
    """("student <- teacher" layers, loss formula) of a run's distillation terms."""
    d = recipe["distill"]
    layers, parts = [], [f"{d['ce_weight']:g} CE"] if d["ce_weight"] else []
    for t in d["terms"]:
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["options"].items())
        warmup = f" warmed up over {t['warmup_epochs']} epochs" if t.get("warmup_epochs") else ""
        parts.append(f"{t['weight']:g} {t['loss'].upper()}" + (f"({opts})" if opts else "") + warmup)
        layers.append(f"`{t['student']}` <- `{t['teacher']}`")
    return ", ".join(layers), " + ".join(parts)


def schedule_text(recipe: dict, role: str) -> str:
    s = recipe[role]
    warmup = f", {s['warmup_epochs']} warm-up epoch(s)" if s.get("warmup_epochs") else ""
    optimizer = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[s.get("optimizer", "sgd")]
    momentum = f"momentum {s['momentum']:g}, " if optimizer == "SGD" else ""
    return (f"{s['epochs']} epochs, batch {s['batch_size']}, {optimizer} lr {s['lr']:g} ({s['scheduler']}{warmup}), "
            f"{momentum}weight decay {s['weight_decay']:g}")


def seen_images(recipe: dict) -> str:
    d = recipe["data"]
    return f"+-{d['jitter']} pixel jitter" if d.get("augment", True) and d.get("jitter") else "plain images"


def gain_text(m: dict, n: int) -> str:
    """'Distillation removes X of the baseline's Y errors (+p points; noise band ...)' of one KD run."""
    base, student, g = m["baseline"], m["student"], m.get("gain", {})
    removed = errors(base, n) - errors(student, n)
    verb = f"removes {removed} of" if removed >= 0 else f"adds {-removed} to"
    text = f"{verb} the baseline's {errors(base, n)} test errors ({g.get('accuracy_points', 0):+.2f} points"
    if "noise_band_points" in g:
        kind = "paired (McNemar)" if g.get("test") else "unpaired (as if the two were scored on different images)"
        text += (f"; the {kind} 95% noise band of a {n}-image test set, as `distill run` reported it, is "
                 f"+-{g['noise_band_points']:.2f} points, so the gain is {'' if g['significant'] else 'NOT '}significant")
    return text + ")"


def mnist_section(meta: dict, rows: dict[str, dict]) -> list[str]:
    """The MNIST part of RESULTS.md: setting, the paper's table, the gains, every knowledge kind, commands."""
    teacher, kd = rows.get("teacher"), rows.get("kd")
    if not teacher or not kd:
        return ["## MNIST (Hinton et al. 2015, section 3)", "", "_not recorded yet: run "
                "`python benchmarks/mnist_hinton/run.py`_", ""]
    n = kd["metrics"]["data"]["test"]
    seeds = sorted({int(m[1]) for name in rows if (m := re.search(r"_seed(\d+)$", name))})  # beside seed 0
    return [*mnist_setting(meta, rows), *paper_table(rows, n, seeds), *gain_notes(rows, n, seeds),
            *knowledge_table(rows, n, meta.get("rows", {})),
            *knowledge_table(rows, n, meta.get("rows", {}), suffix="_plain"), *mnist_commands(rows)]


def fp32_section(meta: dict, rows: dict[str, dict], bf16_teacher: dict | None) -> list[str]:
    """The methods of #19 beside their own fp32 teacher and reference row (benchmarks/mnist_hinton_fp32)."""
    title = "### The methods of issue #19 in fp32, with their own teacher and baseline"
    if "teacher" not in rows or "kd_plain" not in rows:
        return [title, "", "_not recorded yet: run `python benchmarks/mnist_hinton_fp32/run.py`_", ""]
    teacher = rows["teacher"]["metrics"]
    n = teacher["data"]["test"]
    same = f", the bf16 teacher above {errors(bf16_teacher['metrics']['teacher'], n)}" if bf16_teacher else ""
    lines = [title, "",
             f"- command: `{meta['command']}` then `python benchmarks/make_results.py`",
             f"- machine: {meta['machine']}; date: {meta['date']}; wall time: "
             f"{minutes(sum(run_seconds(r) for r in rows.values()))}",
             "- why a table of its own: the runs above used `speed.amp=bf16` on a CPU with bf16 matrix units "
             "(AMX); this CPU has none, so bf16 is emulated there (about 150 s per teacher epoch instead of "
             "12 s). These rows run the same commands without `speed.amp`: the teacher (the same recipe, "
             f"schedule and seed; {errors(teacher['teacher'], n)} test errors{same}) and the reference row "
             "`kd_plain` are rerun, and each row is compared with that rerun's baseline only.", ""]
    table = knowledge_table(rows, n, meta.get("rows", {}), suffix="_plain", logs=HERE / "mnist_hinton_fp32" / "logs")
    return lines + table[2:]  # without its title: the section's own says what it holds


def mnist_setting(meta: dict, rows: dict[str, dict]) -> list[str]:
    """Command, machine, data, teacher and students: what every MNIST figure was measured on."""
    teacher, kd = rows["teacher"], rows["kd"]
    trec, srec = teacher["recipe"], kd["recipe"]
    wall = sum(run_seconds(r) for r in rows.values())
    return [
        "## MNIST: Hinton et al. 2015, section 3",
        "",
        f"- command: `{meta['command']}` then `python benchmarks/make_results.py` "
        f"(each row is one `distill run`, listed below)",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; wall time of all MNIST runs: {minutes(wall)} "
        f"(teacher {minutes(run_seconds(teacher))})",
        f"- data: MNIST `mnist.npz`, {kd['metrics']['data']['train']} training and {kd['metrics']['data']['test']} "
        "test images; no validation split",
        f"- teacher: 784-1200-1200-10, dropout {trec['teacher']['options'].get('input_dropout', 0):g} "
        f"(input) / {trec['teacher']['options'].get('dropout', 0):g} (hidden), {seen_images(trec)}; "
        f"{schedule_text(trec, 'teacher')}; bf16 autocast: {trec['speed'].get('amp') == 'bf16'}. "
        "Trained once; every student row reuses it (`teacher.checkpoint`). No max-norm weight "
        "constraint (the paper's teacher has one).",
        f"- students: 784-800-800-10, no dropout, no weight decay; {schedule_text(srec, 'student')}; "
        f"seed {srec['seed']} (N in the `_seedN` rows); the same initial weights and batch order in every "
        "row of a seed; "
        + ("teacher outputs cached once (`distill.cache`)" if srec["distill"].get("cache") else
           "the teacher runs live in every step (no cache)"),
        "- epoch selection: the last epoch, always; no epoch or checkpoint is selected on the test set "
        "(no validation split; how the settings were chosen is in the notes)",
        *[f"- note: {note}" for note in meta.get("notes", [])],
        "",
    ]


def paper_table(rows: dict[str, dict], n: int, seeds: list[int]) -> list[str]:
    """The paper's three test-error counts beside ours, on plain and on jittered images, per seed."""
    lines = [
        "### The paper's three numbers, and the same with the teacher's jitter",
        "",
        "The paper's students see plain images (`kd_plain`). Its distilled student learns from the "
        "teacher's outputs on the training images only; giving it the teacher's jittered images as "
        "the transfer set (`kd`) lets it learn the teacher's invariance too. Each pair of student "
        "rows is one run (KD phase and its hard-label baseline on the same data).",
        "",
        "| model | images | paper: test errors | ours: test errors, seed 0 | "
        + "".join(f"seed {seed} | " for seed in seeds) + "mean +- sd | accuracy, seed 0 | parameters | "
        "train time, seed 0 |",
        "|---|---|---:|---:|" + "---:|" * len(seeds) + "---:|---:|---:|---:|",
    ]
    table = [("teacher 1200x2, dropout + jitter", "teacher", "teacher", HINTON["teacher"])]
    if "kd_plain" in rows:
        table += [("student 800x2, hard labels (baseline)", "kd_plain", "baseline", HINTON["baseline"]),
                  ("student 800x2, distilled at T=20", "kd_plain", "student", HINTON["kd"])]
    table += [("student 800x2, hard labels (baseline)", "kd", "baseline", None),
              ("student 800x2, distilled at T=20", "kd", "student", None)]
    for label, row, role, paper in table:
        rec, m = rows[row], rows[row]["metrics"][role]
        found = [errors(rows[f"{row}_seed{seed}"]["metrics"][role], n) if f"{row}_seed{seed}" in rows else None
                 for seed in seeds]
        values = [errors(m, n)] + [e for e in found if e is not None]
        spread = (f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}" if len(values) > 1
                  else "-")
        lines.append(f"| {label} | {seen_images(rec['recipe'])} | {paper if paper is not None else '-'} | "
                     f"**{values[0]}** | " + "".join(f"{'-' if e is None else e} | " for e in found)
                     + f"{spread} | {100 * m['test_accuracy']:.2f}% | {m['params']:,} | "
                     f"{m['train_seconds']:.0f} s |")
    return lines + [""]


def gain_notes(rows: dict[str, dict], n: int, seeds: list[int]) -> list[str]:
    """The distillation gain of every KD run and seed, with its noise band, beside the paper's."""
    lines = []
    for row, text in (("kd_plain", "plain images (the paper's setting)"), ("kd", "jittered images")):
        for name, seed in ((row, 0), *((f"{row}_seed{seed}", seed) for seed in seeds)):
            if name in rows:
                paper = (f"; paper: removes {HINTON['baseline'] - HINTON['kd']} of {HINTON['baseline']}"
                         if row == "kd_plain" else "")
                lines += [f"- {text}, seed {seed}: distillation {gain_text(rows[name]['metrics'], n)}{paper}."]
    return lines + [f"- The teacher row in the students' runs re-evaluates the same checkpoint "
                    f"({errors(rows['kd']['metrics']['teacher'], n)} errors).", ""]


def mnist_commands(rows: dict[str, dict]) -> list[str]:
    """Every MNIST run's command as run, so that each row can be redone."""
    lines = ["### Commands (as run, in the repository root, DISTILL_DATA=../shared/data)", ""]
    for name, r in rows.items():
        lines += [f"- {name} ({minutes(run_seconds(r))}, {r['date']}, load average before "
                  f"{r['load_average_before']}): `{r['command']}`"]
    return lines + [""]


METHODS = {"kd": ("response", "KD (Hinton 2015)"), "dkd": ("response", "DKD (Zhao 2022)"),
           "hint": ("feature", "FitNets hint (Romero 2015)"), "sp": ("relation", "SP (Tung 2019)"),
           "pkt": ("relation", "PKT (Passalis 2018)"), "rkd": ("relation", "RKD-D (Park 2019)"),
           "kd_hint": ("response + feature", "KD + FitNets hint"), "kd_pkt": ("response + relation", "KD + PKT"),
           "dist": ("response", "DIST (Huang 2022)"), "kd_ls": ("response", "KD + logit standardisation (Sun 2024)"),
           "crd": ("relation", "CRD (Tian 2020)")}


def knowledge_table(rows: dict[str, dict], n: int, planned: dict[str, str], suffix: str = "",
                    logs: Path = HERE / "mnist_hinton" / "logs") -> list[str]:
    """One row per method on the data of row `kd<suffix>`, whose label-only phase is the baseline."""
    if f"kd{suffix}" not in rows:
        return []
    kd = rows[f"kd{suffix}"]
    base, images = kd["metrics"]["baseline"], seen_images(kd["recipe"])
    if suffix:
        intro = (f"Each row is one run on {images} with the loss, weights and schedule of the same method "
                 f"in the table above; the baseline is the label-only phase of `kd{suffix}`.")
    else:
        intro = (f"Each row is one run on {images} that differs from the others only in its loss; the baseline "
                 f"is the label-only phase of `kd{suffix}`. Nothing was tuned here: KD "
                 "as in the paper (0.1 CE + T=20); DKD with its paper's alpha=1, beta=8, T=4 and 20-epoch "
                 "warm-up of its weight, and at student lr 0.02, the one schedule change in the table (without the "
                 "warm-up the student's loss became NaN in the first epoch, and with it at lr 0.05 inf in epoch 18: "
                 "`benchmarks/mnist_hinton/logs/dkd_no_weight_warmup.log`, `dkd_lr0.05.log`); SP with CRD's "
                 "weight 3000; PKT with CRD's 30000 divided by CRD's batch of 64 (this PKTLoss sums over the "
                 "batch where CRD's averages); hint with weight 1 (CRD's 100 is for conv maps); RKD's "
                 "distance term with its paper's weight 25 (RKD-D: the angle term's [B, B, B] tensors would "
                 "cost more than the rest of the table at batch 256 on this CPU); KD + hint and KD + PKT add "
                 "that term, at the same weight, to the KD row's loss. Feature and relation terms "
                 "read the penultimate activations. 'vs baseline' gives the unpaired 95% band of test-set noise for "
                 "the difference of two accuracies on these test images (the runs' per-image answers are not "
                 "recorded, so the narrower paired band cannot be computed across runs). Train times "
                 "depend on the other jobs on the machine as much as on the loss.")
    lines = [f"### Every knowledge kind on the same student, teacher, schedule and data: {images}", "",
             intro, "",
             "| kind | method | student <- teacher | loss | test errors | accuracy | vs baseline | train time |",
             "|---|---|---|---|---:|---:|---:|---:|",
             f"| none | baseline (hard labels) | - | 1 CE | {errors(base, n)} | "
             f"{100 * base['test_accuracy']:.2f}% | - | {base['train_seconds']:.0f} s |"]
    for method, (kind, name) in METHODS.items():
        row = method + suffix
        if row not in rows:
            continue
        m = rows[row]["metrics"]["student"]
        layers, loss = term_text(rows[row]["recipe"])
        connector = " (linear connector)" if m.get("connectors") else ""
        delta = errors(m, n) - errors(base, n)
        lr = rows[row]["recipe"]["student"]["lr"]
        if lr != kd["recipe"]["student"]["lr"]:
            loss += f" (student lr {lr:g})"
        g = distillation_gain(m["test_accuracy"], base["test_accuracy"], n)
        verdict = "significant" if g["significant"] else "within noise"
        lines.append(f"| {kind} | {name} | {layers}{connector} | {loss} | {errors(m, n)} | "
                     f"{100 * m['test_accuracy']:.2f}% | {delta:+d} errors ({verdict}, band +-"
                     f"{round(g['noise_band_points'] * n / 100)}) | {m['train_seconds']:.0f} s |")
    for method, (kind, name) in METHODS.items():
        row = method + suffix
        if row in rows or row not in planned:
            continue
        log = logs / f"{row}.log"
        epochs = re.findall(r"^student epoch (\d+)/(\d+) .*?([0-9.]+)s$", log.read_text(), re.M) if log.exists() else []
        why = "not run: out of time on this machine"
        if epochs:
            mean = sum(float(e[2]) for e in epochs) / len(epochs)
            why = (f"stopped after {len(epochs)} of {epochs[0][1]} epochs for time ({mean:.0f} s per epoch, "
                   f"see `{log.relative_to(HERE.parent)}`); no test figure")
        lines.append(f"| {kind} | {name} | - | - | - | | | {why} |")
    for kind, why in NOT_APPLICABLE.values():
        lines.append(f"| {kind} | AT (Zagoruyko 2017) | - | - | n/a | n/a | - | {why} |")
    return lines + [""]


def stopped_teacher_seconds(pair: str, record: dict) -> float:
    """Epoch time of a teacher trained by a stopped run (its log) and reused via teacher.checkpoint."""
    log = HERE / "cifar10_short" / "logs" / f"{pair}.log"
    if not record["recipe"]["teacher"].get("checkpoint") or not log.exists():
        return 0.0
    return sum(float(x) for x in re.findall(r"^teacher epoch .*?([0-9.]+)s$", log.read_text(), re.M))


def cifar_section(meta: dict, rows: dict[str, dict]) -> list[str]:
    lines = ["## CIFAR-10, SHORT schedule (CRD/DKD pairings)", ""]
    if not rows:
        lines += ["_No complete run recorded: run `python benchmarks/cifar10_short/run.py`._", ""]
        lines += [f"- note: {note}" for note in meta.get("notes", [])]
        for log in sorted((HERE / "cifar10_short" / "logs").glob("*.log")):
            lines += ["", f"Log of the incomplete run `{log.stem}` (as recorded):", "", "```",
                      *log.read_text().strip().splitlines(), "```"]
        return lines + [""]
    any_row = next(iter(rows.values()))
    r = any_row["recipe"]
    wall = sum(run_seconds(x) + stopped_teacher_seconds(pair, x) for pair, x in rows.items())
    lines += [
        "**This is a short schedule on a CPU, not the papers' setting.** The papers train 240 epochs "
        "on all 50,000 images with augmentation on a GPU and report CIFAR-100; the CIFAR-100 column "
        "is there for reference only (different data set, schedule and budget).",
        "",
        f"- commands: {', '.join(f'`{c}`' for c in meta.get('commands') or [meta['command']])}, then `python benchmarks/make_results.py`",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; wall time: {minutes(wall)}",
        f"- data: CIFAR-10 `cifar10.npz`, {any_row['metrics']['data']['train']} training images "
        f"({r['data']['per_class']} per class, a seeded class-balanced subset), "
        f"{'pad-4 crop and flip augmentation' if r['data'].get('augment', True) else 'no augmentation'}; all "
        f"{any_row['metrics']['data']['test']} test images",
        *[f"- {pair}: teacher {schedule_text(x['recipe'], 'teacher')}; students (KD and baseline alike) "
          f"{schedule_text(x['recipe'], 'student')}; bf16 autocast: {x['recipe']['speed'].get('amp') == 'bf16'}"
          for pair, x in rows.items()],
        f"- KD student: {term_text(r)[1]}; the baseline is the same student, same initial weights "
        "and schedule, on labels alone",
        "- epoch selection: the last epoch; nothing selected on the test set",
        "",
        "| pairing | model | role | ours: CIFAR-10 short (%) | parameters | MACs | train time | "
        "paper: CIFAR-100, 240 epochs (%) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for pair, rec in rows.items():
        m, rc = rec["metrics"], rec["recipe"]
        paper = CIFAR100.get(pair, {})
        for role, label, model in (("teacher", "teacher", rc["teacher"]["model"]),
                                   ("baseline", "student, labels only", rc["student"]["model"]),
                                   ("student", "student, KD", rc["student"]["model"])):
            x = m[role]
            seconds = stopped_teacher_seconds(pair, rec) if role == "teacher" else 0.0
            seconds = seconds or x["train_seconds"]
            ref = paper.get("kd" if role == "student" else role)
            lines.append(f"| {pair} | `{model}` | {label} | **{100 * x['test_accuracy']:.2f}** | "
                         f"{x['params'] / 1e6:.2f}M | {x['macs'] / 1e6:.0f}M | {seconds:.0f} s | "
                         f"{ref if ref is not None else '-'} |")
        if "dkd" in paper:
            lines.append(f"| {pair} | | student, DKD (not run here) | - | | | | {paper['dkd']} |")
    for pair, rec in rows.items():
        g = rec["metrics"].get("gain", {})
        if "noise_band_points" in g:
            verdict = "significant" if g["significant"] else "not significant"
            worse = ": negative transfer, KD made the student worse" if g["accuracy_points"] < 0 else ""
            kind = "paired" if g.get("test") else "unpaired"
            lines += ["", f"{pair}: KD minus baseline = {g['accuracy_points']:+.2f} points ({kind} 95% noise band "
                      f"+-{g['noise_band_points']:.2f}, {verdict}){worse}."]
    lines += ["", "Commands (as run, in the repository root, DISTILL_DATA=../shared/data):", ""]
    lines += [f"- {pair} ({minutes(run_seconds(rec))}, {rec['date']}): `{rec['command']}`"
              for pair, rec in rows.items()]
    lines += [f"- note: {note}" for note in meta.get("notes", [])]
    for pair, rec in rows.items():
        seconds = stopped_teacher_seconds(pair, rec)
        if seconds:
            text = (HERE / "cifar10_short" / "logs" / f"{pair}.log").read_text()
            lines += ["", f"The `{pair}` teacher was trained by the first, stopped run of the same recipe and "
                      f"overrides ({minutes(seconds)} of teacher epochs; its log as recorded) and reused "
                      "with `teacher.checkpoint`; its test figure above is that checkpoint's:", "", "```",
                      *text.strip().splitlines(), "```"]
    return lines + [""]


def ensemble_section(meta: dict, rows: dict[str, dict]) -> list[str]:
    """KD from an ensemble of teachers vs KD from its best member (benchmarks/ensemble/run.py)."""
    seeds = sorted(int(r.rpartition("seed")[2]) for r in rows if r.startswith("ensemble_seed"))
    seeds = [s for s in seeds if f"best_seed{s}" in rows]
    if not meta or not seeds:
        return []
    n = rows[f"ensemble_seed{seeds[0]}"]["metrics"]["data"]["test"]
    members = rows[f"ensemble_seed{seeds[0]}"]["metrics"]["teacher"]["members"]
    lines = ["## Teacher ensembles (MNIST, plain images)", "",
             f"_{meta['machine']}; started {meta['date']}; `{meta['command']}`; protocol: "
             f"{meta.get('protocol', 'bf16')} (see the script's docstring)_", "",
             "KD (0.1 CE + T=20, the mnist_hinton student schedule) from the average of "
             f"{len(members)} teachers' probabilities at T=20 vs from the best of them alone (chosen on the "
             "test set, which favours it). Teachers: " + ", ".join(
                 f"seed {i} {100 * m['test_accuracy']:.2f}%" for i, m in enumerate(members))
             + f"; the ensemble {100 * rows[f'ensemble_seed{seeds[0]}']['metrics']['teacher']['test_accuracy']:.2f}%.",
             "", "| student seed | baseline errors | KD from the best teacher | KD from the ensemble | ensemble vs best |",
             "|---:|---:|---:|---:|---:|"]
    diffs = []
    for seed in seeds:
        ens, best = rows[f"ensemble_seed{seed}"]["metrics"], rows[f"best_seed{seed}"]["metrics"]
        base = ens.get("baseline")
        diffs.append(errors(ens["student"], n) - errors(best["student"], n))
        lines.append(f"| {seed} | {errors(base, n) if base else '-'} | {errors(best['student'], n)} | "
                     f"{errors(ens['student'], n)} | {diffs[-1]:+d} errors |")
    if len(diffs) > 1:
        lines += ["", f"Mean difference {statistics.mean(diffs):+.1f} errors (sd {statistics.stdev(diffs):.1f}) "
                      f"of {n} test images."]
    lines += ["", "Commands:", ""] + [f"- {name} ({minutes(run_seconds(r))}, {r['date']}): `{r['command']}`"
                                      for name, r in rows.items()]
    return lines + [""]


def main() -> None:
    mnist_meta, mnist_rows = load(HERE / "mnist_hinton")
    cifar_meta, cifar_rows = load(HERE / "cifar10_short")
    ensemble_meta, ensemble_rows = load(HERE / "ensemble")
    fp32_meta, fp32_rows = load(HERE / "mnist_hinton_fp32")
    total = (sum(run_seconds(r) for r in [*mnist_rows.values(), *ensemble_rows.values(), *fp32_rows.values()])
             + sum(run_seconds(r) + stopped_teacher_seconds(p, r) for p, r in cifar_rows.items()))
    lines = ["# Benchmarks: published results reproduced", "",
             "_Generated by `python benchmarks/make_results.py` from the recorded runs in "
             "`benchmarks/*/results/`; do not edit by hand._", "",
             f"Sum of the recorded runs' wall times: {minutes(total)} (runs that were discarded or "
             "stopped and not reused are not counted; the notes say which runs shared the machine). "
             "Test figures are after the last "
             "epoch of each run; test errors = round((1 - accuracy) x test images).", ""]
    lines += mnist_section(mnist_meta, mnist_rows)
    lines += fp32_section(fp32_meta, fp32_rows, mnist_rows.get("teacher"))
    lines += cifar_section(cifar_meta, cifar_rows)
    lines += ensemble_section(ensemble_meta, ensemble_rows)
    (HERE / "RESULTS.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
