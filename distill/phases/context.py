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
from ..data.unlabelled import RepeatedDataset
from ..distiller import Term
from ..errors import DistillError
from ..losses import LOSSES, build_loss
from ..models import ModelCard, build_model, load_checkpoint, safe_load, save_checkpoint
from ..models.loading import FORMAT
from ..models.stats import count_macs, count_params
from ..recipe import ModelSpec, Recipe, TermSpec
from ..report import refresh_report, save_predictions
from ..rundir import RunDir
from ..settings import Speed
from ..taps import LOGITS
from ..tblog import EpochScalars
from ..train import evaluate


RESUME_KEYS = {"epoch", "optimizer", "rng", "history"}  # what `fit` writes at the end of every epoch
SCORE_KEYS = ("test_accuracy", "params", "macs")  # what the summary reads from a role's metrics entry
WHOLE_MODEL = ("student", "baseline", "pseudo")  # roles whose resume file holds their card's model's weights


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
                                 "unlabelled": data.unlabelled,
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
        return [Term(name=t.name or t.loss, loss=build_loss(t.loss, **self._loss_options(t)), weight=t.weight,
                     student=t.student, teacher=teacher_path(self.recipe, t), warmup_epochs=t.warmup_epochs)
                for t in self.recipe.distill.terms]

    def _loss_options(self, term: TermSpec) -> dict[str, Any]:
        """The term's options, plus the training-set size for a loss with a memory bank (CRD)."""
        if getattr(LOSSES[term.loss], "needs_indices", False):
            return {"num_samples": len(self.data.transfer), **term.options}  # the indices it sees
        return term.options

    # ------------------------------------------------------------------ training
    def train_set(self, role: str) -> Dataset:
        """The training images of a role's phase, augmented as `data` says, or plain where the role
        sets `augment = false`. The teacher learns from the labelled images; the students (distilled,
        pseudo-labelled, pruned) from the transfer set, labelled and unlabelled; the baseline from the
        labelled images, cycled to the transfer set's length so that it takes as many steps."""
        augment, d = self.spec(role).augment, self.data
        labelled = d.train if augment else d.train_plain
        if role == "teacher":
            return labelled
        transfer = d.transfer if augment else d.transfer_plain
        if role == "baseline" and d.unlabelled:
            return RepeatedDataset(labelled, len(transfer))
        return transfer

    def fit_options(self, role: str) -> dict[str, Any]:
        """The keyword arguments of `fit` that every phase of this run shares."""
        # the student and baseline train the whole model; the teacher's strategy may train only a head
        check_resume_file(self.run.resume_file(role), role, self.card(role) if role in WHOLE_MODEL else None)
        s = self.recipe.speed
        return {"val_data": self.data.val, "device": self.device, "seed": self.recipe.seed,
                "resume_path": self.run.resume_file(role), "resume": True,
                "speed": Speed(amp=s.amp, channels_last=s.channels_last, compile=s.compile,
                               num_workers=self.recipe.data.num_workers, in_memory=self.recipe.data.in_memory),
                "skip_nonfinite": self.recipe.skip_nonfinite, "desc": role, "progress": self.progress,
                **_epoch_log(self, role)}

    # ------------------------------------------------------------------ results
    def finished(self, role: str) -> nn.Module | None:
        """The model of a phase that already finished in this run directory, else None.

        Only this run's own checkpoint is reused: its card must describe the model this recipe
        builds for the role (a file copied from elsewhere, or another recipe's, is refused).
        """
        path = self.run.checkpoint(role)
        if not path.exists():
            return None
        retrain = f"delete it to train the {role} phase again (then run again with --resume)"
        card, history, info = _card_history_and_info(path, retrain)
        self.check_card(role, path, card, retrain)  # before building anything the file describes
        try:
            model = self.load(path)[0]
        except DistillError as e:
            raise DistillError(f"{e}; {retrain}") from e
        model = model.to(self.device)
        if not _scored(self.metrics.get(role)):  # killed before metrics.json was written, or it was edited
            self.score(role, model, history, info)
        self.history = [r for r in self.history if r.get("phase") != role] + history
        return model

    def check_card(self, role: str, path: Path, card: ModelCard, retrain: str) -> None:
        """Refuse a checkpoint whose model is not the one this recipe builds for `role`."""
        expected = self.card(role)
        fields = ("arch", "num_classes", "input_shape", "kwargs")
        differ = [f"{f} {getattr(card, f)!r} (this recipe builds {getattr(expected, f)!r})"
                  for f in fields if getattr(card, f) != getattr(expected, f)]
        if card.pruned != (role == "pruned"):
            differ.append(f"pruned {card.pruned} (expected {role == 'pruned'})")
        if differ:
            raise DistillError(f"{path} is not this run's {role}: its card says {'; '.join(differ)}; "
                               f"expected the {role} this recipe trains: {retrain}")

    def finish(self, role: str, model: nn.Module, history: list[dict[str, Any]], card: ModelCard,
               **info: Any) -> None:
        """Save the phase's checkpoint (rank 0) with its history and `info` (what metrics.json says
        of the phase besides its scores, so a lost metrics.json is rebuilt whole), then score it."""
        if distributed.is_main():
            save_checkpoint(self.run.checkpoint(role), model, card, extra={"history": history, "info": info})
            self.run.resume_file(role).unlink(missing_ok=True)
        distributed.barrier()
        self.score(role, model, history, info)

    def score(self, role: str, model: nn.Module, history: list[dict[str, Any]],
              info: dict[str, Any] | None = None) -> None:
        """Evaluate a finished model on the test set and write its entry into metrics.json, with
        `info` (what else the phase reports) beside the measured figures, which always win."""
        shape = self.data.input_shape
        result = evaluate(model, self.data.test, self.device, keep_predictions=True)
        if distributed.is_main():  # for the report's per-class accuracy and agreement
            save_predictions(self.run.path, role, result["predictions"].numpy(), result["labels"].numpy(),
                             list(self.data.class_names))
        entry = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                 "params": count_params(model), "macs": count_macs(model, shape),
                 "epochs": len(history), "train_seconds": round(sum(r.get("seconds", 0) for r in history), 1)}
        if history and "val_accuracy" in history[-1]:
            entry["val_accuracy"] = history[-1]["val_accuracy"]
        self.metrics[role] = {**(info or {}), **entry}
        self.history = [r for r in self.history if r.get("phase") != role] + history
        self.write()

    def write(self) -> None:
        """metrics.json and history.csv, then report.html refreshed from them."""
        if distributed.is_main():
            self.run.write(self.metrics, self.history)
            refresh_report(self.run.path)


def teacher_path(recipe: Recipe, term: TermSpec) -> str:
    """Where a term reads the teacher: with teacher.ensemble, logits terms read the ensemble (or
    member K's logits, `members.K`, when teacher_member = K) and feature terms member K's layer
    (`members.K.layer3`, K = 0 when unset); without one, the recipe's path as it is."""
    if not recipe.teacher.ensemble:
        return term.teacher
    if term.teacher == LOGITS:
        return LOGITS if term.teacher_member is None else f"members.{term.teacher_member}"
    return f"members.{term.teacher_member or 0}.{term.teacher}"


def check_resume_file(path: Path, role: str, card: ModelCard | None) -> None:
    """Refuse a resume file that `fit` could not continue from, naming it and the way out; with a
    `card`, also one holding the weights of a model other than the card's."""
    if not path.exists():
        return
    restart = f"delete it to restart the {role} phase from its first epoch (then run again with --resume)"
    try:
        state = safe_load(path)
    except DistillError as e:
        raise DistillError(f"{e}; {restart}") from e
    if not isinstance(state, dict) or not RESUME_KEYS <= set(state) or not _is_history(state["history"]):
        raise DistillError(f"resume file {path} is not the end-of-epoch state distill writes; expected a "
                           f"dict with {', '.join(sorted(RESUME_KEYS))}: {restart}")
    mismatch = _weights_mismatch(card, state.get("student")) if card is not None else None
    if mismatch:
        raise DistillError(f"resume file {path} holds the weights of another model ({mismatch}); expected "
                           f"the {role} this recipe trains: {restart}")


def recipe_trust(recipe: Recipe) -> bool | Iterable[str]:
    """The code a recipe's checkpoints may run to build their models: any factory with
    `trust_code = true`, else only the factories the recipe itself names for its teacher and student."""
    return recipe.trust_code or {recipe.teacher.model, recipe.student.model}


def _epoch_log(ctx: RunContext, role: str) -> dict[str, Any]:
    """`fit`'s on_epoch for `[log] tensorboard = true`: the phase's scalars under RUN/tb/ROLE (rank 0)."""
    if not (ctx.recipe.log.tensorboard and distributed.is_main()):
        return {}
    epochs = ctx.recipe.prune.epochs if role == "pruned" else ctx.spec(role).epochs
    return {"on_epoch": EpochScalars(ctx.run.path / "tb" / role, len(ctx.train_set(role)), epochs)}


def _scored(entry: Any) -> bool:
    """Whether a metrics.json entry holds the figures the summary prints (else score the model again)."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool) for k in SCORE_KEYS)


def _card_history_and_info(path: Path, retrain: str) -> tuple[ModelCard, list[dict[str, Any]], dict[str, Any]]:
    """The card, per-epoch history and phase info a finished phase's checkpoint carries, checked as data."""
    try:
        ckpt = safe_load(path)
    except DistillError as e:
        raise DistillError(f"{e}; {retrain}") from e
    try:
        if ckpt.get("format") != FORMAT:
            raise ValueError(f"no '{FORMAT}' format tag")
        card, history = ModelCard.from_dict(ckpt["card"]), ckpt["extra"].get("history", [])
        info = ckpt["extra"].get("info", {})
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DistillError(f"{path} is not a checkpoint written by distill run ({type(e).__name__}: {e}); "
                           f"expected this run's own checkpoint: {retrain}") from e
    if not _is_history(history):
        raise DistillError(f"checkpoint {path} holds a history that is not a list of epoch rows; "
                           f"expected this run's own checkpoint: {retrain}")
    if not isinstance(info, dict) or not all(isinstance(k, str) and _is_plain(v) for k, v in info.items()):
        raise DistillError(f"checkpoint {path} holds phase info that is not a table of plain values; "
                           f"expected this run's own checkpoint: {retrain}")
    return card, history, info


def _is_history(rows: Any) -> bool:
    """A list of per-epoch rows as fit writes them: tables of plain values with numeric seconds."""
    return isinstance(rows, list) and all(
        isinstance(r, dict) and all(isinstance(k, str) and _is_plain(v) for k, v in r.items())
        and isinstance(r.get("seconds", 0), (int, float)) for r in rows)


def _is_plain(value: Any) -> bool:
    """A value metrics.json can hold as it is: a string, number, boolean, None, or a list of them."""
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _weights_mismatch(card: ModelCard, weights: Any) -> str | None:
    """What differs between `weights` and the state dict of `card`'s model, or None when they fit."""
    if not isinstance(weights, dict):
        return f"no state dict but {type(weights).__name__}"
    with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
        expected = {k: tuple(v.shape) for k, v in card.build().state_dict().items()}
    for key, shape in expected.items():
        got = weights.get(key)
        if not isinstance(got, torch.Tensor):
            return f"no tensor {key!r}"
        if tuple(got.shape) != shape:
            return f"{key!r} has shape {tuple(got.shape)}, not {shape}"
    extra = sorted(set(weights) - set(expected))
    return f"unexpected tensor {extra[0]!r}" if extra else None
