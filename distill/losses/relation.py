"""Relational distillation: the student preserves how the teacher relates the samples of a batch.

These losses compare [B, B] (or [B, B, B]) structures, so student and teacher feature sizes may differ;
4-D maps are flattened to [B, C*H*W].
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from .response import check_option


def _flatten_pair(owner: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both sides as [B, D] (teacher detached), or a DistillError when the batch sizes differ."""
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise DistillError(f"{owner}: got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
                           "expected features [B, ...] with the same batch size B")
    return student.flatten(1), teacher.detach().flatten(1)


class RKDLoss(nn.Module):
    """Relational knowledge distillation (Park et al. 2019, "Relational Knowledge Distillation", CVPR).

    Distance term: smooth-L1 between the pairwise Euclidean distance matrices, each divided by
    the mean of its non-zero entries. Angle term: smooth-L1 between the [B, B, B] tensors
    cos(angle at e_i between e_j and e_k) = <unit(e_j - e_i), unit(e_k - e_i)>.
    loss = distance_weight * distance + angle_weight * angle. Both terms are invariant to
    translating, rotating or uniformly scaling either embedding. Computed from Gram matrices, so a
    wide embedding (D in the thousands) costs no more memory than a narrow one.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = check_option("RKDLoss", "distance_weight", distance_weight, allow_zero=True)
        self.angle_weight = check_option("RKDLoss", "angle_weight", angle_weight, allow_zero=True)

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        student, teacher = _flatten_pair("RKDLoss", student_features, teacher_features)
        angles = self.angle_weight > 0  # RKD-D alone skips the [B, B, B] tensors
        with torch.no_grad():
            t_dist, t_angle = self.relations(teacher, angles)
        s_dist, s_angle = self.relations(student, angles)
        loss = self.distance_weight * F.smooth_l1_loss(s_dist, t_dist)
        if angles:
            loss = loss + self.angle_weight * F.smooth_l1_loss(s_angle, t_angle)
        return loss

    @staticmethod
    def relations(embeddings: Tensor, angles: bool = True) -> tuple[Tensor, Tensor | None]:
        """Mean-normalised [B, B] distances and [B, B, B] angle cosines (None unless `angles`)
        of [B, D] embeddings.

        Both come from the Gram matrix G of the centred embeddings, so memory is B^2 + B^3, not
        B^2 * D: |e_i - e_j|^2 = G_ii + G_jj - 2 G_ij and
        <e_j - e_i, e_k - e_i> = G_jk - G_ij - G_ik + G_ii. Coincident points get distance 0 and
        cosine 0 (with zero gradient), as the difference-vector formulation gives.
        """
        x = embeddings - embeddings.mean(dim=0, keepdim=True)  # translation-free: exact Gram
        gram = x @ x.T
        diag = gram.diagonal()
        squared = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(0)
        apart = squared > torch.finfo(x.dtype).eps * diag.max().clamp_min(1e-30)
        dist = torch.where(apart, squared.where(apart, 1).sqrt(), 0)
        mean = dist.sum() / apart.sum().clamp_min(1)  # mean of the non-zero distances
        normalised = dist / mean.clamp_min(torch.finfo(dist.dtype).tiny)
        if not angles:
            return normalised, None
        dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
        norms = dist[:, :, None] * dist[:, None, :]
        both = apart[:, :, None] & apart[:, None, :]
        angle = torch.where(both, dots / norms.where(both, 1), 0)
        return normalised, angle

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


class SimilarityPreserving(nn.Module):
    """Similarity-preserving KD (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV).

    G = row-L2-normalised f f^T for the flattened features f [B, D];
    loss = ||G_s - G_t||_F^2 / B^2.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        student, teacher = _flatten_pair("SimilarityPreserving", student_features, teacher_features)
        diff = self.similarity(student) - self.similarity(teacher)
        return diff.pow(2).sum() / student.shape[0] ** 2

    @staticmethod
    def similarity(features: Tensor) -> Tensor:
        return F.normalize(features @ features.t(), dim=1)


class PKTLoss(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV).

    With unit-norm embeddings, the cosine kernel K_ij = (cos(e_i, e_j) + 1) / 2 in [0, 1] is
    row-normalised into conditionals P_ij = K_ij / sum_k K_ij (self-pairs included);
    loss = mean over i of sum_j P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps)).
    As in RepDistiller's PKT, except that it sums over j where RepDistiller averages, so the value
    is a per-sample KL that does not shrink with the batch size (RepDistiller's times B).
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = check_option("PKTLoss", "eps", eps)

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        student, teacher = _flatten_pair("PKTLoss", student_features, teacher_features)
        p_s, p_t = self.conditionals(student), self.conditionals(teacher)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).sum(1).mean()

    def conditionals(self, embeddings: Tensor) -> Tensor:
        """[B, B] row-stochastic matrix of cosine-kernel conditionals P(j | i)."""
        unit = F.normalize(embeddings, dim=1, eps=self.eps)
        kernel = (unit @ unit.t() + 1) / 2
        return kernel / kernel.sum(dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
