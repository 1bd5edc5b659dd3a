"""Which teacher strategy to use: the names, and how `auto` decides from the labels per class.

Pure decisions with no training in them, so recipes can validate a strategy without importing the
engine; `distill.transfer` carries the chosen strategy out.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DistillError

STRATEGIES = ("scratch", "feature_extraction", "finetune", "full", "auto")
FEW_LABELS_PER_CLASS = 100  # below this, auto keeps the backbone fixed


@dataclass
class Decision:
    strategy: str
    reason: str


def choose_strategy(requested: str, pretrained: bool, examples_per_class: float) -> Decision:
    """Resolve `auto` (and check the others make sense) for a teacher."""
    if requested == "scratch" and pretrained:
        raise DistillError("teacher strategy 'scratch' trains from random initialisation but teacher.weights "
                           "is set; expected no weights, or strategy full, finetune or feature_extraction")
    if requested != "auto":
        if requested != "scratch" and not pretrained:
            raise DistillError(f"teacher strategy {requested!r} needs pretrained weights; expected "
                               "teacher.weights (a torchvision weights name or a checkpoint path)")
        return Decision(requested, "requested")
    if not pretrained:
        return Decision("scratch", "no pretrained weights given")
    if examples_per_class < FEW_LABELS_PER_CLASS:
        return Decision("feature_extraction", f"{examples_per_class:.0f} labelled examples per class "
                        f"(< {FEW_LABELS_PER_CLASS}): too few to fine-tune the backbone without overfitting")
    return Decision("full", f"{examples_per_class:.0f} labelled examples per class "
                    f"(>= {FEW_LABELS_PER_CLASS}): enough to fine-tune everything at a reduced backbone rate")
