"""What the phases of one run share: recipe, run directory, data, device, and the metrics so far."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import distributed
from ..data import DataBundle
from ..distiller import Term
from ..losses import build_loss
from ..models import ModelCard, build_model, load_checkpoint, safe_load, save_checkpoint
from ..models.stats import count_macs, count_params
from ..recipe import ModelSpec, Recipe
from ..rundir import RunDir
from ..settings import Speed
from ..train import evaluate


@dataclass
class RunContext:
    """One run in progress. Phases read the recipe through it and report what they made to it.

    `metrics` becomes metrics.json and `history` history.csv; both are written whenever a phase
    finishes, so a run killed between phases loses nothing that was done.
    """

    recipe: Recipe
    run: RunDir
    data: DataBundle
    device: torch.device
    progress: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        data = self.data
        self.metrics = {**self.run.read_metrics(), **self.metrics,
                        "recipe": self.recipe.name, "device": str(self.device),
                        "data": {"name": self.recipe.data.name, "train": len(data.train),
                                 "val": len(data.val) if data.val is not None else 0, "test": len(data.test)}}

    # ------------------------------------------------------------------ models
    def load(self, path: str | Path) -> tuple[nn.Module, ModelCard]:
        """A checkpoint this run uses (given in the recipe or left in the run directory)."""
        return load_checkpoint(path, trust_code=recipe_trust(self.recipe))

    def spec(self, role: str) -> ModelSpec:
        """The recipe section of a role; the baseline and pruned models are students."""
        return self.recipe.teacher if role == "teacher" else self.recipe.student

    def card(self, role: str) -> ModelCard:
        spec, data = self.spec(role), self.data
        return ModelCard(arch=spec.model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                         kwargs=dict(spec.options), mean=tuple(data.mean), std=tuple(data.std),
                         class_names=list(data.class_names))

    def build(self, role: str, weights: str | None = None) -> nn.Module:
        """A fresh model of the role's architecture on the run's device. Seeded, so the distilled
        student and its baseline start from identical weights."""
        torch.manual_seed(self.recipe.seed)
        card = self.card(role)
        model = build_model(card.arch, card.num_classes, card.input_shape, weights=weights, **card.kwargs)
        return model.to(self.device)

    def terms(self) -> list[Term]:
        return [Term(name=t.name or t.loss, loss=build_loss(t.loss, **t.options), weight=t.weight,
                     student=t.student, teacher=t.teacher, warmup_epochs=t.warmup_epochs)
                for t in self.recipe.distill.terms]

    # ------------------------------------------------------------------ training
    def train_set(self, role: str) -> Dataset:
        """The training images of a role's phases (the student's are the baseline's and pruned
        model's too): augmented as `data` says, or plain where the role sets `augment = false`."""
        return self.data.train if self.spec(role).augment else self.data.train_plain

    def fit_options(self, role: str) -> dict[str, Any]:
        """The keyword arguments of `fit` that every phase of this run shares."""
        s = self.recipe.speed
        return {"val_data": self.data.val, "device": self.device, "seed": self.recipe.seed,
                "resume_path": self.run.resume_file(role), "resume": True,
                "speed": Speed(amp=s.amp, channels_last=s.channels_last, compile=s.compile,
                               num_workers=self.recipe.data.num_workers),
                "skip_nonfinite": self.recipe.skip_nonfinite, "desc": role, "progress": self.progress}

    # ------------------------------------------------------------------ results
    def finished(self, role: str) -> nn.Module | None:
        """The model of a phase that already finished in this run directory, else None."""
        path = self.run.checkpoint(role)
        if not path.exists():
            return None
        model = self.load(path)[0].to(self.device)
        history = safe_load(path)["extra"].get("history", [])
        if role not in self.metrics:  # killed after the checkpoint, before metrics.json was written
            self.score(role, model, history)
        self.history = [r for r in self.history if r.get("phase") != role] + history
        return model

    def save(self, role: str, model: nn.Module, history: list[dict[str, Any]], card: ModelCard) -> None:
        """The phase's checkpoint (rank 0); its resume file is no longer needed."""
        if distributed.is_main():
            save_checkpoint(self.run.checkpoint(role), model, card, extra={"history": history})
            self.run.resume_file(role).unlink(missing_ok=True)
        distributed.barrier()

    def score(self, role: str, model: nn.Module, history: list[dict[str, Any]], **extra: Any) -> None:
        """Evaluate a finished model on the test set and write its entry into metrics.json."""
        shape = self.data.input_shape
        result = evaluate(model, self.data.test, self.device)
        entry = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                 "params": count_params(model), "macs": count_macs(model, shape),
                 "epochs": len(history), "train_seconds": round(sum(r.get("seconds", 0) for r in history), 1)}
        if history and "val_accuracy" in history[-1]:
            entry["val_accuracy"] = history[-1]["val_accuracy"]
        self.metrics[role] = {**entry, **extra}
        self.history = [r for r in self.history if r.get("phase") != role] + history
        self.write()

    def write(self) -> None:
        if distributed.is_main():
            self.run.write(self.metrics, self.history)


def recipe_trust(recipe: Recipe) -> bool | Iterable[str]:
    """The code a recipe's checkpoints may run to build their models: any factory with
    `trust_code = true`, else only the factories the recipe itself names for its teacher and student."""
    return recipe.trust_code or {recipe.teacher.model, recipe.student.model}
