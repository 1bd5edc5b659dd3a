"""Hard-label losses: cross-entropy on the labelled samples of a batch, and on the teacher's top-1.

A transfer set may mix labelled and unlabelled images (label `IGNORE_LABEL`, -1). The labels'
cross-entropy must then skip the unlabelled samples one by one: a batch of 64 with 5 labels
averages over those 5, and a batch without any label contributes 0, never NaN.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed

IGNORE_LABEL = -1  # the label of an unlabelled image (distill.data marks them with it)


def labelled_cross_entropy(logits: Tensor, targets: Tensor, across_ranks: bool = False) -> Tensor:
    """Mean cross-entropy over the samples whose target is a class (>= 0); 0 when there are none.

    `across_ranks` (under DDP; every rank must then call it once per step): the mean over the labelled
    samples of every rank's batch, scaled so that DDP's average of the ranks' gradients is the gradient
    of that mean, as in one process. Without it a rank with 1 label would weigh as much as one with 30."""
    labelled = targets != IGNORE_LABEL
    per_sample = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    count, ranks = labelled.sum(), 1
    if across_ranks and distributed.active():
        count, ranks = distributed.all_reduce(count.clone(), "sum"), distributed.world_size()
    return (per_sample * labelled).sum() * ranks / count.clamp(min=1)


def with_teacher_labels(targets: Tensor, teacher_logits: Tensor) -> Tensor:
    """`targets` with each unlabelled sample given the teacher's top-1 class (what DKD needs)."""
    return torch.where(targets == IGNORE_LABEL, teacher_logits.argmax(1), targets)


class PseudoLabelLoss(nn.Module):
    """Cross-entropy with the teacher's hard top-1 class: pseudo-labelling (Lee 2013), the baseline
    that tells what the teacher's *soft* targets add. loss = CE(z_s, argmax z_t), mean over the batch."""

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return F.cross_entropy(student_logits, teacher_logits.detach().argmax(1))
