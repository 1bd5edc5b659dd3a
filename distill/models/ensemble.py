"""Teacher ensembles: several trained classifiers acting as one teacher (eval only).

The target of response distillation from an ensemble is the average of the members' softened
probabilities at the loss's own temperature T (Hinton, Vinyals & Dean 2015, section 2):
p_bar_T = (1/M) sum_m softmax(z_m / T). No single logit vector gives that average at every T
(softmax(log p_bar_1 / T) != p_bar_T unless T = 1), so the ensemble hands the losses that know
about it (KD, DKD, DIST: `accepts_members`) the members' logits stacked as [N, M, C], and each
averages probabilities at its own T (`distill.losses.response.soft_targets`). Everything else
(evaluation, export, benches, relation terms on logits) sees one [N, C] output:
- `average="probabilities"` (default): log p_bar_1, the log of the mean probability at T = 1,
  whose argmax is the ensemble's prediction;
- `average="logits"`: the mean of the members' logits, also what the aware losses get (then the
  target at T is softmax(mean z / T), a documented alternative, not Hinton's average).
Feature terms read one member's layers by path: `members.K.layer3`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import DistillError

AVERAGES = ("probabilities", "logits")


def check_average(average: object) -> str:
    if average not in AVERAGES:
        raise DistillError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    return average


class Ensemble(nn.Module):
    """`Ensemble([t1, t2, ...])`: frozen members whose predictions are averaged (see the module doc)."""

    def __init__(self, members: Sequence[nn.Module], average: str = "probabilities") -> None:
        super().__init__()
        if len(members) < 1 or not all(isinstance(m, nn.Module) for m in members):
            raise DistillError(f"Ensemble: expected a non-empty list of models, got {len(members)} item(s)")
        self.average = check_average(average)
        self.members = nn.ModuleList(members)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "Ensemble":
        return super().train(False)  # eval only: members keep their BatchNorm statistics

    def member_logits(self, images: Tensor) -> Tensor:
        """The members' logits stacked as [N, M, C]; a DistillError if their class counts differ."""
        outputs = [member(images) for member in self.members]
        classes = {tuple(o.shape) for o in outputs}
        if len(classes) != 1:
            raise DistillError(f"Ensemble: the members return outputs of shapes {sorted(classes)}; expected "
                               "members that predict the same classes")
        return torch.stack(outputs, dim=1)

    def combine(self, stacked: Tensor) -> Tensor:
        """One [N, C] logit tensor from stacked [N, M, C] member logits, by `average`."""
        if self.average == "logits":
            return stacked.mean(dim=1)
        return torch.logsumexp(stacked.log_softmax(dim=-1), dim=1) - math.log(stacked.shape[1])

    def target_for(self, stacked: Tensor, accepts_members: bool) -> Tensor:
        """What a loss on the teacher's logits receives: the stack for an aware loss under
        probability averaging (it averages at its own T), else the combined logits."""
        return stacked if accepts_members and self.average == "probabilities" else self.combine(stacked)

    def forward(self, images: Tensor) -> Tensor:
        return self.combine(self.member_logits(images))

    def extra_repr(self) -> str:
        return f"average={self.average!r}"


def teacher_logits(teacher: nn.Module, images: Tensor) -> Tensor:
    """The logits a teacher hands distillation: [N, M, C] member logits for an Ensemble, else [N, C]."""
    return teacher.member_logits(images) if isinstance(teacher, Ensemble) else teacher(images)
