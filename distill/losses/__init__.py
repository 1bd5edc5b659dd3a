"""Distillation losses: plain modules on tensors that return a batch-averaged scalar.

Each class tells the engine what it needs: `needs_targets` (forward takes `(s, t, targets)`),
`needs_same_shape` (the engine inserts a connector when student and teacher shapes differ),
`needs_indices` (forward takes the samples' training-set indices last; `bind(s_shape, t_shape)`
is called once the shapes are known) and `accepts_members` (an ensemble's [N, M, C] logits).
"""
from __future__ import annotations

import inspect

from torch import nn

from ..errors import DistillError, did_you_mean
from .crd import CRDLoss
from .dist import DISTLoss
from .feature import AttentionTransfer, HintLoss
from .relation import PKTLoss, RKDLoss, SimilarityPreserving
from .response import DKDLoss, KDLoss

LOSSES: dict[str, type[nn.Module]] = {
    "kd": KDLoss,
    "dkd": DKDLoss,
    "hint": HintLoss,
    "at": AttentionTransfer,
    "rkd": RKDLoss,
    "sp": SimilarityPreserving,
    "pkt": PKTLoss,
    "dist": DISTLoss,
    "crd": CRDLoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """The loss registered as `name`, built with `kwargs`; DistillError for unknown names or options."""
    if name not in LOSSES:
        raise DistillError(f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; "
                           f"expected one of {', '.join(LOSSES)}")
    cls = LOSSES[name]
    options = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in options:
            expected = ", ".join(options) if options else "no options"
            raise DistillError(f"loss {name!r} got unexpected option {key!r}{did_you_mean(key, options)}; "
                               f"expected: {expected}")
    return cls(**kwargs)


__all__ = ["LOSSES", "build_loss", "KDLoss", "DKDLoss", "HintLoss", "AttentionTransfer",
           "RKDLoss", "SimilarityPreserving", "PKTLoss", "DISTLoss", "CRDLoss"]
