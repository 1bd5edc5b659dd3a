"""What `distill run` does with a recipe: teacher -> student (+ baseline) [-> prune -> export -> bench].

Every phase writes its checkpoint into the run directory when it finishes and is skipped when that
checkpoint is already there, so `--resume` continues an interrupted run from the last complete epoch
of the phase it was in. The layers below take plain arguments; only this module reads a Recipe.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .distiller import Distiller, Term
from .errors import DistillError
from .losses import build_loss
from .models import ModelCard, load_checkpoint, save_checkpoint
from .models.checkpoint import safe_load
from .models.stats import count_macs, count_params
from .gain import paired_gain
from .recipe import Recipe, recipe_from_dict, to_toml
from .train import Schedule, Speed, Supervised, correct_predictions, evaluate, fit, resolve_device


class RunDir:
    """The files of one run (see DESIGN.md) and the rules for reusing a directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe = self.path / "recipe.toml"
        self.history = self.path / "history.csv"
        self.metrics = self.path / "metrics.json"

    def checkpoint(self, role: str) -> Path:
        return self.path / f"{role}.pt"

    def resume_file(self, role: str) -> Path:
        return self.path / f".{role}.resume.pt"

    def prepare(self, recipe_text: str, resume: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DistillError(f"output {self.path} is a file; expected a directory for the run")
        started = self.recipe.exists()
        if started and not resume:
            raise DistillError(f"run directory {self.path} already holds a run; expected --resume to "
                               "continue it, or a new --out")
        if started and resume and _resolved(self.recipe.read_text()) != recipe_text:
            raise DistillError(f"run directory {self.path} was started with a different recipe; "
                               f"expected the same recipe and --set values to resume (see {self.recipe})")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise DistillError(f"cannot write to run directory {self.path}: {e.strerror}; expected a "
                               "writable --out directory") from e
        _atomic_write_text(self.recipe, recipe_text)


def _resolved(recipe_text: str) -> str:
    """A stored recipe.toml as this version resolves it: a run started before a new key (with its
    default) was added still counts as the same recipe. Text that no longer validates stays as is."""
    try:
        return to_toml(recipe_from_dict(tomllib.loads(recipe_text)))
    except (tomllib.TOMLDecodeError, DistillError):
        return recipe_text


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_recipe(recipe: Recipe, *, out: str | Path | None = None, resume: bool = False,
               device: str | None = None, data_root: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run every phase the recipe asks for; returns metrics.json's content."""
    from .data import load_data

    distributed.init_from_env()
    run = RunDir(out or recipe.out or Path("runs") / recipe.name)
    if distributed.is_main():
        run.prepare(to_toml(recipe), resume)
    distributed.barrier()
    dev = resolve_device(device or recipe.device)
    d = recipe.data
    data = load_data(d.name, root=data_root or d.root, path=d.path, val_fraction=d.val_fraction,
                     augment=d.augment, jitter=d.jitter, image_size=d.image_size, channels=d.channels,
                     download=d.download, seed=recipe.seed, train_limit=d.train_limit,
                     test_limit=d.test_limit, mean=d.mean, std=d.std, classes=d.classes,
                     per_class=d.per_class, num_classes=d.num_classes)
    ctx = _Context(recipe, run, data, dev, progress)
    ctx.preflight()
    started = time.perf_counter()
    teacher = ctx.teacher()
    student = ctx.distilled_student(teacher)
    if recipe.baseline.enabled:
        baseline = ctx.baseline()
        ctx.metrics["gain"] = paired_gain(correct_predictions(student, data.test, dev),
                                          correct_predictions(baseline, data.test, dev))
    if recipe.prune.enabled:
        ctx.pruned(student)
    if recipe.export.enabled or recipe.bench.enabled:
        ctx.export_and_bench()
    ctx.metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    ctx.write_metrics()
    return ctx.metrics


class _Context:
    """State shared by the phases of one run."""

    def __init__(self, recipe: Recipe, run: RunDir, data, device: torch.device, progress: bool) -> None:
        self.recipe, self.run, self.data, self.device, self.progress = recipe, run, data, device, progress
        self.metrics: dict[str, Any] = {"recipe": recipe.name, "device": str(device),
                                        "data": {"name": recipe.data.name, "train": len(data.train),
                                                 "val": len(data.val) if data.val is not None else 0,
                                                 "test": len(data.test)}}
        if run.metrics.exists():
            self.metrics = {**json.loads(run.metrics.read_text()), **self.metrics}
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- helpers
    def card(self, role: str) -> ModelCard:
        spec = getattr(self.recipe, role)
        return ModelCard(arch=spec.model, num_classes=self.data.num_classes,
                         input_shape=tuple(self.data.input_shape), kwargs=dict(spec.options),
                         mean=tuple(self.data.mean), std=tuple(self.data.std),
                         class_names=list(self.data.class_names))

    def build(self, role: str, weights: str | None = None) -> nn.Module:
        from .models import build_model
        torch.manual_seed(self.recipe.seed)  # distilled student and baseline start identical
        card = self.card(role)
        return build_model(card.arch, card.num_classes, card.input_shape, weights=weights, **card.kwargs)

    def terms(self) -> list[Term]:
        return [Term(name=t.name or t.loss, loss=build_loss(t.loss, **t.options), weight=t.weight,
                     student=t.student, teacher=t.teacher, warmup_epochs=t.warmup_epochs)
                for t in self.recipe.distill.terms]

    def preflight(self) -> None:
        """Catch wrong layer paths and class counts before any training starts."""
        teacher = self.build("teacher") if not self.recipe.teacher.checkpoint else \
            load_checkpoint(self.recipe.teacher.checkpoint)[0]
        Distiller(teacher, self.build("student"), self.terms(), self.data.input_shape,
                  ce_weight=self.recipe.distill.ce_weight)

    def record(self, role: str, model: nn.Module, history: list[dict[str, Any]], **extra: Any) -> None:
        shape = self.data.input_shape
        result = evaluate(model, self.data.test, self.device)
        entry = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                 "params": count_params(model), "macs": count_macs(model, shape),
                 "epochs": len(history), "train_seconds": round(sum(r.get("seconds", 0) for r in history), 1)}
        if history and "val_accuracy" in history[-1]:
            entry["val_accuracy"] = history[-1]["val_accuracy"]
        entry.update(extra)
        self.metrics[role] = entry
        self.history = [r for r in self.history if r.get("phase") != role] + history
        self.write_metrics()

    def write_metrics(self) -> None:
        if not distributed.is_main():
            return
        _atomic_write_text(self.run.metrics, json.dumps(self.metrics, indent=2) + "\n")
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        _atomic_write_text(self.run.history, buf.getvalue())

    def load_done(self, role: str) -> nn.Module | None:
        """The finished model of a phase when its checkpoint is already in the run directory."""
        path = self.run.checkpoint(role)
        if not path.exists():
            return None
        model, _ = load_checkpoint(path)
        model = model.to(self.device)
        history = safe_load(path)["extra"].get("history", [])
        if role not in self.metrics:  # killed after the checkpoint, before metrics.json was written
            self.record(role, model, history)
        self.history = [r for r in self.history if r.get("phase") != role] + history
        return model

    def train_set(self, role: str):
        """The training images of a role's phases (the student's are the baseline's and pruned
        model's too): augmented as `data` says, or plain where the role sets `augment = false`."""
        return self.data.train if getattr(self.recipe, role).augment else self.data.train_eval

    def speed(self) -> Speed:
        s = self.recipe.speed
        return Speed(amp=s.amp, channels_last=s.channels_last, compile=s.compile,
                     num_workers=self.recipe.data.num_workers)

    def train(self, role: str, module: nn.Module, spec, data, **kwargs: Any) -> list[dict[str, Any]]:
        return fit(module, data, spec.schedule(), val_data=self.data.val,
                   device=self.device, seed=self.recipe.seed, resume_path=self.run.resume_file(role),
                   resume=True, speed=self.speed(), skip_nonfinite=self.recipe.skip_nonfinite, desc=role,
                   progress=self.progress, **kwargs)

    def cached_train_data(self, teacher: nn.Module, terms: list[Term]):
        """The training set with the teacher's outputs read from the run's cache."""
        from .cache import CachedTeacherDataset, TeacherCache
        d = self.recipe.distill
        started = time.perf_counter()
        if not distributed.is_main():  # rank 0 writes the cache, the others then open it
            distributed.barrier()
        train = self.train_set("student")
        cache = TeacherCache.build(teacher, train, [t.teacher for t in terms],
                                   self.run.path / "teacher_cache", views=d.cache_views, seed=self.recipe.seed,
                                   dtype=d.cache_dtype, device=self.device,
                                   num_workers=self.recipe.data.num_workers, progress=self.progress)
        if distributed.is_main():
            distributed.barrier()
        self.metrics["teacher_cache"] = {"bytes": cache.nbytes(), "views": cache.views, "dtype": d.cache_dtype,
                                         "seconds": round(time.perf_counter() - started, 1)}
        return CachedTeacherDataset(train, cache)

    def save(self, role: str, model: nn.Module, history: list[dict[str, Any]], card: ModelCard) -> None:
        if distributed.is_main():
            save_checkpoint(self.run.checkpoint(role), model, card, extra={"history": history})
            self.run.resume_file(role).unlink(missing_ok=True)
        distributed.barrier()

    # ----------------------------------------------------------------- phases
    def teacher(self) -> nn.Module:
        spec = self.recipe.teacher
        if spec.checkpoint:
            model, card = load_checkpoint(spec.checkpoint)
            if card.num_classes != self.data.num_classes:
                raise DistillError(f"teacher.checkpoint {spec.checkpoint} predicts {card.num_classes} "
                                   f"classes but data {self.recipe.data.name!r} has {self.data.num_classes}; "
                                   "expected a teacher trained on the same classes")
            model = model.to(self.device)
            self.record("teacher", model, [], source=str(spec.checkpoint))
            return model
        done = self.load_done("teacher")
        if done is not None:
            return done
        model, history, info = self.adapt_teacher(spec)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DistillError("the teacher diverged: its weights are no longer finite after training; "
                               "expected a lower teacher.lr (or pretrained teacher.weights)")
        self.save("teacher", model, history, self.card("teacher"))
        self.record("teacher", model, history, **info)
        return model

    def adapt_teacher(self, spec) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
        from .transfer import adapt_teacher, choose_strategy
        per_class = len(self.data.train) / self.data.num_classes
        decision = choose_strategy(spec.strategy, bool(spec.weights), per_class)
        if spec.strategy == "auto" and self.progress:
            print(f"teacher strategy: {decision.strategy} ({decision.reason})")
        model = self.build("teacher", spec.weights)
        history = adapt_teacher(model, decision.strategy, self.train_set("teacher"), spec.schedule(),
                                train_eval=self.data.train_eval, val=self.data.val,
                                finetune_from=spec.finetune_from, backbone_lr_scale=spec.backbone_lr_scale,
                                device=self.device, seed=self.recipe.seed,
                                resume_path=self.run.resume_file("teacher"), resume=True,
                                speed=self.speed(), skip_nonfinite=self.recipe.skip_nonfinite,
                                desc="teacher", progress=self.progress)
        return model, history, {"strategy": decision.strategy, "strategy_reason": decision.reason}

    def distilled_student(self, teacher: nn.Module) -> nn.Module:
        spec = self.recipe.student
        if spec.checkpoint:  # an already distilled student, e.g. to compare pruning recoveries
            model, card = load_checkpoint(spec.checkpoint)
            model = model.to(self.device)
            self.record("student", model, [], source=str(spec.checkpoint))
            return model
        done = self.load_done("student")
        if done is not None:
            return done
        student = self.build("student", self.recipe.student.weights)
        terms = self.terms()
        distiller = Distiller(teacher, student, terms, self.data.input_shape,
                              ce_weight=self.recipe.distill.ce_weight)
        data = self.cached_train_data(teacher, terms) if self.recipe.distill.cache else self.train_set("student")
        history = self.train("student", distiller, self.recipe.student, data)
        self.save("student", student, history, self.card("student"))
        self.record("student", student, history, connectors=sorted(distiller.connectors))
        return student

    def baseline(self) -> nn.Module:
        done = self.load_done("baseline")
        if done is not None:
            return done
        model = self.build("student", self.recipe.student.weights)
        history = self.train("baseline", Supervised(model), self.recipe.student, self.train_set("student"))
        self.save("baseline", model, history, self.card("student"))
        self.record("baseline", model, history)
        return model

    def first_batch(self, dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` (image, label) pairs of a dataset as two tensors."""
        items = [dataset[i] for i in range(min(n, len(dataset)))]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def pruned(self, student: nn.Module) -> nn.Module:
        """Prune a copy of the distilled student to the MACs budget, then recover it, taught by the
        unpruned student (KD, optional hints) or by plain fine-tuning."""
        done = self.load_done("pruned")
        if done is not None:
            return done
        from .losses import HintLoss, KDLoss
        from .prune import prune_model
        spec = self.recipe.prune
        model = copy.deepcopy(student).cpu()
        calibration = self.first_batch(self.data.train_eval, 64) if spec.importance == "taylor" else None
        report = prune_model(model, torch.zeros(1, *self.data.input_shape), macs_ratio=spec.macs,
                             importance=spec.importance, steps=spec.steps, calibration=calibration)
        if self.progress:
            print(report.summary())
        after_pruning = evaluate(model, self.data.test, self.device)["accuracy"]
        schedule = Schedule(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr)
        if spec.recovery == "kd":
            terms = [Term("kd", KDLoss(spec.temperature))]
            terms += [Term(f"hint_{p}", HintLoss(), weight=spec.hint_weight, student=p, teacher=p)
                      for p in spec.hint_layers]
            module: nn.Module = Distiller(student.eval(), model, terms, self.data.input_shape,
                                          ce_weight=self.recipe.distill.ce_weight)
        else:
            module = Supervised(model)
        history = fit(module, self.train_set("student"), schedule, val_data=self.data.val, device=self.device,
                      seed=self.recipe.seed, resume_path=self.run.resume_file("pruned"), resume=True,
                      speed=self.speed(), skip_nonfinite=self.recipe.skip_nonfinite, desc="pruned",
                      progress=self.progress)
        card = dataclasses.replace(self.card("student"), pruned=True)
        self.save("pruned", model, history, card)
        self.record("pruned", model, history, recovery=spec.recovery, macs_target=spec.macs,
                    macs_ratio=report.ratio, on_target=report.on_target,
                    accuracy_after_pruning=after_pruning)
        return model

    def export_and_bench(self) -> None:
        """student.onnx (verified on a real test batch, + int8), then bench.json/md/png of the run."""
        from .bench import benchmark, write_report
        from .export import export_onnx, quantize_int8
        spec = self.recipe.export
        onnx_files = {}
        if spec.enabled and distributed.is_main():
            for role in ("student", "pruned"):
                if role not in self.metrics or not self.run.checkpoint(role).exists():
                    continue
                model, card = load_checkpoint(self.run.checkpoint(role))
                sample, _ = self.first_batch(self.data.test, 32)
                path = self.run.path / f"{role}.onnx"
                report = export_onnx(model, card, path, sample=sample, atol=spec.atol)
                self.metrics.setdefault("export", {})[role] = {
                    "file": path.name, "bytes": report.size_bytes, "max_abs_diff": report.max_abs_diff}
                onnx_files[role] = path
                if spec.int8:
                    calibration, _ = self.first_batch(self.data.train_eval, spec.calibration_images)
                    onnx_files[f"{role}.int8"] = quantize_int8(path, self.run.path / f"{role}.int8.onnx", calibration)
                if self.progress:
                    print(report.summary())
        if self.recipe.bench.enabled and distributed.is_main():
            artifacts = {r: self.run.checkpoint(r) for r in ("teacher", "student", "baseline", "pruned")
                         if r in self.metrics and self.run.checkpoint(r).exists()}
            artifacts.update({f"{name}.onnx": path for name, path in onnx_files.items()})
            b = self.recipe.bench
            result = benchmark(artifacts, teacher="teacher", batch_sizes=(1, b.batch_size), rounds=b.rounds,
                               data=self.data.test, progress=self.progress)
            write_report(result, self.run.path)
            self.metrics["bench"] = {"file": "bench.json", "teacher_runtime": result.teacher_runtime}


# --------------------------------------------------------------------------- summary

def summary_table(metrics: dict[str, Any]) -> str:
    """The end-of-run table: accuracy, params and MACs per model, and what distillation bought."""
    rows = [r for r in ("teacher", "student", "baseline", "pruned") if r in metrics]
    lines = [f"{'model':<10} {'test acc':>9} {'params':>10} {'MACs':>10} {'epochs':>7}"]
    for role in rows:
        m = metrics[role]
        lines.append(f"{role:<10} {m['test_accuracy']:>9.4f} {_si(m['params']):>10} {_si(m['macs']):>10} "
                     f"{m.get('epochs', 0):>7}")
    if "teacher" in metrics and "student" in metrics:
        t, s = metrics["teacher"], metrics["student"]
        lines.append(f"student is {t['params'] / max(s['params'], 1):.1f}x smaller and needs "
                     f"{t['macs'] / max(s['macs'], 1):.1f}x fewer MACs than the teacher")
    if "gain" in metrics:
        g = metrics["gain"]
        paired = ", paired" if g.get("test") else ""
        noise = (f" (95% noise band of the {metrics['data']['test']} test images{paired}: "
                 f"+-{g['noise_band_points']:.2f} points; {'significant' if g['significant'] else 'not significant'})")
        if g["accuracy_points"] < 0:
            lines.append(f"WARNING: negative transfer: the distilled student is {-g['accuracy_points']:.2f} "
                         f"points WORSE than the same student trained on labels alone{noise}")
        else:
            lines.append(f"distillation gain over the baseline: {g['accuracy_points']:+.2f} points{noise}")
    if "pruned" in metrics:
        p = metrics["pruned"]
        miss = "" if p.get("on_target", True) else ", OFF target by more than 5%"
        lines.append(f"pruned student: {100 * p['macs_ratio']:.1f}% of the student's MACs (target "
                     f"{100 * p['macs_target']:.0f}%{miss}), accuracy {p['accuracy_after_pruning']:.4f} right after "
                     f"pruning, {p['test_accuracy']:.4f} after recovery by {p['recovery']}")
    if "bench" in metrics:
        lines.append("latency, throughput and accuracy of every artefact: bench.md (plot: bench.png)")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
