"""Teacher-student module: a frozen teacher, a student, and weighted loss terms between them.

Borrowed from mdistiller: forward returns `(student_logits, {term: weighted loss})` and the
teacher stays in eval mode. Borrowed from torchdistill: features come from forward hooks by module
path, so any model works unchanged. Connectors (1x1 conv + BN for maps, linear for vectors) are made
by probing shapes with one dummy batch, only where a term needs equal shapes and they differ; they
train with the student and are never part of the exported student.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .data.batched import batchable, gather
from .errors import DistillError
from .losses.labels import labelled_cross_entropy, with_teacher_labels
from .models.ensemble import Ensemble, teacher_logits
from .taps import LOGITS, FeatureTaps, check_path

SAMPLE_INDEX = "sample_index"  # the key of the samples' training-set indices among the extra batch inputs


@dataclass
class Term:
    """One distillation loss: what it compares, and how much it counts.

    `student` and `teacher` are `"logits"` or a module path such as `"layer3"` or `"features.28"`.
    `warmup_epochs` > 0 ramps the weight linearly over the first epochs, (epoch + 1) / warmup_epochs,
    as DKD does (its beta-weighted term is strong enough to blow up a fresh student).
    """

    name: str
    loss: nn.Module
    weight: float = 1.0
    student: str = LOGITS
    teacher: str = LOGITS
    warmup_epochs: int = 0

    def weight_at(self, epoch: int) -> float:
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min((epoch + 1) / self.warmup_epochs, 1.0)


def make_connector(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """A small trainable map from the student's feature shape to the teacher's (batch dim excluded)."""
    if len(student_shape) != len(teacher_shape):
        raise DistillError(f"cannot connect a student feature of shape {tuple(student_shape)} to a "
                           f"teacher feature of shape {tuple(teacher_shape)}; expected both maps "
                           "[C, H, W] or both vectors [D]")
    if len(student_shape) == 3:  # feature maps: channels by 1x1 conv, spatial size by resizing
        layers: list[nn.Module] = [
            nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False),
            nn.BatchNorm2d(teacher_shape[0]),
        ]
        if student_shape[1:] != teacher_shape[1:]:
            larger = student_shape[1] > teacher_shape[1]
            layers.append(nn.AdaptiveAvgPool2d(tuple(teacher_shape[1:])) if larger else
                          nn.Upsample(size=tuple(teacher_shape[1:]), mode="bilinear", align_corners=False))
        return nn.Sequential(*layers)
    if student_shape[:-1] != teacher_shape[:-1]:
        raise DistillError(f"cannot connect shapes {tuple(student_shape)} and {tuple(teacher_shape)}; "
                           "expected them to differ only in the last (feature) dimension")
    return nn.Linear(student_shape[-1], teacher_shape[-1])


class Distiller(nn.Module):
    """`forward(images, targets) -> (student_logits, {term: weighted loss})`, CE included as "ce".

    Args:
        teacher: a trained classifier; frozen here (eval mode, no gradients, inference mode).
        student: the classifier to train.
        terms: the distillation losses.
        input_shape: (C, H, W) of one input, used to probe feature shapes once.
        ce_weight: weight of the cross-entropy with the true labels (0 drops the term).

    `labels_across_ranks`: set by `fit` under DDP (or by your own DDP loop, where every rank runs every
    step): the labels' cross-entropy then averages over every rank's labelled samples, one all-reduce.
    """

    labels_across_ranks = False

    def __init__(self, teacher: nn.Module, student: nn.Module, terms: Sequence[Term],
                 input_shape: Sequence[int], ce_weight: float = 1.0) -> None:
        super().__init__()
        names = [t.name for t in terms]
        if len(set(names)) != len(names) or "ce" in names:
            raise DistillError(f"term names must be unique and not 'ce'; got {names}")
        if not terms and not ce_weight:
            raise DistillError("ce_weight is 0 and there are no distillation terms, so nothing would "
                               "teach the student; expected ce_weight > 0 or at least one term")
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student.to(_device_of(teacher))  # one device for both, and the connectors
        self.terms = list(terms)
        self.ce_weight = ce_weight
        for term in self.terms:  # registered so .to(device) moves loss buffers too
            self.add_module(f"loss_{term.name}", term.loss)
        for term in self.terms:  # every path first: no hook is placed unless all of them exist
            check_path(teacher, term.teacher, role="teacher")
            check_path(student, term.student, role="student")
        self._teacher_taps = FeatureTaps(teacher, [t.teacher for t in terms], role="teacher")
        self._student_taps = FeatureTaps(student, [t.student for t in terms], role="student")
        try:
            self.connectors = nn.ModuleDict(self._probe_connectors(tuple(input_shape)))
        except BaseException:
            self.close()  # a failed Distiller leaves no hook on the user's models
            raise
        self.epoch = 0  # set by fit (set_epoch) for terms with a warm-up

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the student, the connectors and the terms' own parameters
        (CRD's embedding heads), never the teacher."""
        return [p for p in (*self.student.parameters(), *self.connectors.parameters(),
                            *self.stateful_terms.parameters()) if p.requires_grad]

    @property
    def stateful_terms(self) -> nn.ModuleDict:
        """The terms whose losses hold parameters or buffers (CRD's heads and memory banks): part
        of what a resume file must hold."""
        return nn.ModuleDict({t.name: t.loss for t in self.terms
                              if any(True for _ in (*t.loss.parameters(), *t.loss.buffers()))})

    def close(self) -> None:
        """Remove the feature hooks from both models and drop the features they last captured, so
        the models go back to the user (or into a deepcopy) exactly as they came. Idempotent."""
        self._teacher_taps.remove()
        self._student_taps.remove()

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _probe_connectors(self, input_shape: tuple[int, ...]) -> dict[str, nn.Module]:
        was_training = self.student.training
        self.student.eval()
        probe = torch.randn(2, *input_shape, device=_device_of(self.teacher))
        with torch.no_grad():
            s_out = self._student_features(probe)
            t_out = self._teacher_features(probe)
        self.student.train(was_training)
        for role, outputs, path in [*(("student", s_out, t.student) for t in self.terms),
                                    *(("teacher", t_out, t.teacher) for t in self.terms)]:
            if path not in outputs:
                raise DistillError(f"{role} layer {path!r} produced no output: the {role}'s forward "
                                   "never calls it; expected a layer on the forward path (`distill models "
                                   "--layers NAME` lists them)")
        if s_out[LOGITS].shape[-1] != t_out[LOGITS].shape[-1]:
            raise DistillError(f"teacher predicts {t_out[LOGITS].shape[-1]} classes but student "
                               f"{s_out[LOGITS].shape[-1]}; expected the same class count")
        connectors = {}
        for term in self.terms:
            s_shape, t_shape = s_out[term.student].shape[1:], self._teacher_side(term, t_out).shape[1:]
            if hasattr(term.loss, "bind"):  # heads sized by the features (CRD)
                term.loss.to(probe.device).bind(s_shape, t_shape)
            if getattr(term.loss, "needs_same_shape", False) and s_shape != t_shape:
                connectors[term.name] = make_connector(s_shape, t_shape).to(probe.device)
        return connectors

    def _student_features(self, images: Tensor) -> dict[str, Tensor]:
        logits = self.student(images)
        return {**self._student_taps.outputs, LOGITS: logits}

    def _teacher_features(self, images: Tensor) -> dict[str, Tensor]:
        with torch.inference_mode():
            logits = teacher_logits(self.teacher, images)  # [N, M, C] from an Ensemble
        # hooked features are already ordinary tensors (see FeatureTaps); the logits need a copy
        return {**self._teacher_taps.outputs, LOGITS: logits.clone()}

    def _teacher_side(self, term: Term, t_out: dict[str, Tensor]) -> Tensor:
        """The teacher output `term` compares: an Ensemble's stacked logits reach only the losses
        that average the members' probabilities themselves (`accepts_members`), the rest get the
        ensemble's combined [N, C] logits (see distill.models.ensemble)."""
        t = t_out[term.teacher]
        if isinstance(self.teacher, Ensemble) and term.teacher == LOGITS and t.dim() == 3:
            t = self.teacher.target_for(t, getattr(term.loss, "accepts_members", False))
        return t

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, BN statistics included
        return self

    def forward(self, images: Tensor, targets: Tensor,
                teacher_outputs: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """`teacher_outputs` (e.g. from a cache) replaces the teacher's forward pass; its
        SAMPLE_INDEX entry, the samples' training-set indices, goes to the terms that need them."""
        extra = dict(teacher_outputs) if teacher_outputs is not None else {}
        indices = extra.pop(SAMPLE_INDEX, None)
        t_out = extra if extra else self._teacher_features(images)
        s_out = self._student_features(images)
        logits = s_out[LOGITS]
        compared = {}  # the student side of each term, mapped to the teacher's shape where needed
        for term in self.terms:
            s = s_out[term.student]
            compared[term.name] = self.connectors[term.name](s) if term.name in self.connectors else s
        # The losses run in float32 even under autocast: soft targets at T=20 differ in the third
        # significant digit, below bf16's resolution, and T^2 scales the rounding error up with them.
        losses: dict[str, Tensor] = {}
        with torch.autocast(images.device.type, enabled=False):
            if self.ce_weight:  # unlabelled samples (label -1) are skipped one by one
                losses["ce"] = self.ce_weight * labelled_cross_entropy(_full_precision(logits), targets,
                                                                       self.training and self.labels_across_ranks)
            for term in self.terms:
                s = _full_precision(compared[term.name])
                t = self._teacher_side(term, t_out).to(s.dtype)
                losses[term.name] = term.weight_at(self.epoch) * self._call(term, s, t, targets, indices)
        return logits, losses

    @staticmethod
    def _call(term: Term, s: Tensor, t: Tensor, targets: Tensor, indices: Tensor | None) -> Tensor:
        args = [s, t]
        if getattr(term.loss, "needs_targets", False):  # DKD: the teacher's class where no label
            args.append(with_teacher_labels(targets, t if t.dim() == 2 else t.softmax(-1).mean(1)))
        if getattr(term.loss, "needs_indices", False):
            if indices is None:
                raise DistillError(f"term {term.name!r} needs each sample's index in the training set; expected "
                                   "batches of (images, targets, {SAMPLE_INDEX: indices}) (IndexedDataset)")
            args.append(indices)
        return term.loss(*args)


class IndexedDataset(Dataset):
    """`dataset` whose items carry their index: (image, target, {SAMPLE_INDEX: index}), so that the
    terms that need it (CRD's memory bank) know which training sample each row is."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, {SAMPLE_INDEX: torch.tensor(index)}

    @property
    def batchable(self) -> bool:
        return batchable(self.dataset)

    def batch(self, k: Tensor, device: torch.device, keys: Tensor | None = None) -> tuple:
        image, target = gather(self.dataset, k, device, keys)
        return image, target, {SAMPLE_INDEX: k.to(device)}


def _full_precision(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _device_of(model: nn.Module) -> torch.device:
    """Where a model's weights live (CPU for a model without any)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
