"""Response (logit) distillation: the student matches the teacher's softened class distribution."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError


def check_option(owner: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as a float, or a DistillError naming the option and the range it must lie in."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DistillError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_flag(owner: str, name: str, value: object) -> bool:
    """`value` if it is a bool, or a DistillError (a TOML `standardize = 1` is a mistake, not true)."""
    if not isinstance(value, bool):
        raise DistillError(f"{owner}: {name} must be true or false, got {value!r}")
    return value


def check_same_shape(owner: str, student: Tensor, teacher: Tensor, expected: str) -> None:
    if student.shape != teacher.shape:
        raise DistillError(f"{owner}: student and teacher shapes differ ({tuple(student.shape)} vs "
                           f"{tuple(teacher.shape)}); expected {expected}")


STANDARDIZE_EPS = 1e-7  # added to the standard deviation, as in sunshangquan/logit-standardization-KD


def standardize_logits(logits: Tensor) -> Tensor:
    """Each row z-scored: (z - mean(z)) / (std(z) + 1e-7), std unbiased (N - 1), over the classes.

    Logit standardisation (Sun et al. 2024, "Logit Standardization in Knowledge Distillation",
    CVPR): the student then matches the teacher's logit *relations*, not their range, so a small
    student is not pushed to reproduce a large teacher's logit magnitude. The unbiased std and the
    eps follow the authors' `normalize` (torch's default `Tensor.std`).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (STANDARDIZE_EPS + std)


def check_teacher_logits(owner: str, student: Tensor, teacher: Tensor) -> None:
    """Student logits [N, C]; teacher logits [N, C], or [N, M, C] for the M members of an ensemble."""
    members = teacher.dim() == 3 and student.dim() == 2 and teacher.shape[::2] == student.shape
    if not members:
        check_same_shape(owner, student, teacher, "logits [batch, classes] of equal size (or the teacher's "
                         "[batch, members, classes] from an ensemble)")


def soft_targets(teacher_logits: Tensor, temperature: float, standardize: bool = False) -> Tensor:
    """log p_T, the teacher's softened class probabilities [N, C] at `temperature`, as log-probs.

    For an ensemble's stacked logits [N, M, C], p_T is the average of the members' probabilities
    at T (Hinton et al. 2015, section 2): log p_T = logsumexp_m log softmax(z_m / T) - log M.
    `standardize` z-scores each member's logits first.
    """
    z = teacher_logits.detach()
    if standardize:
        z = standardize_logits(z)
    log_p = F.log_softmax(z / temperature, dim=-1)
    if z.dim() == 3:
        log_p = torch.logsumexp(log_p, dim=1) - math.log(z.shape[1])
    return log_p


def _kl(log_q_student: Tensor, log_p_teacher: Tensor) -> Tensor:
    """KL(p || q) summed over the last dimension, mean over the batch; both arguments are log-probs."""
    return F.kl_div(log_q_student, log_p_teacher, reduction="batchmean", log_target=True)


class KDLoss(nn.Module):
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    loss = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, mean over the batch.
    The T^2 keeps the gradient magnitude roughly independent of T (soft-target gradients scale as
    1/T^2), so the loss weight need not be retuned when T changes. The teacher is a constant target.
    `standardize=True` z-scores both sides' logits first (`standardize_logits`, Sun et al. 2024).
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False
    accepts_members: ClassVar[bool] = True  # an ensemble's [N, M, C] logits: see soft_targets

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__()
        self.temperature = check_option("KDLoss", "temperature", temperature)
        self.standardize = check_flag("KDLoss", "standardize", standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        check_teacher_logits("KDLoss", student_logits, teacher_logits)
        z_s = standardize_logits(student_logits) if self.standardize else student_logits
        T = self.temperature
        log_q = F.log_softmax(z_s / T, dim=1)
        log_p = soft_targets(teacher_logits, T, self.standardize)
        return T * T * _kl(log_q, log_p)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, standardize={self.standardize}"


class DKDLoss(nn.Module):
    """Decoupled knowledge distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR).

    With p = softmax(z / T) and t the ground-truth class:
    TCKD = KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S])  (binary: target vs. everything else),
    NCKD = KL(p^T restricted to classes != t, renormalised || same for the student),
    loss = T^2 * (alpha * TCKD + beta * NCKD), mean over the batch.
    Classic KD is TCKD + (1 - p_t^T) * NCKD; DKD frees NCKD from the (1 - p_t^T) damping.
    Computed from log-softmax throughout; the target logit is masked with the most negative finite
    value so NCKD never takes log(0). `standardize=True` z-scores both sides' logits first
    (`standardize_logits`, Sun et al. 2024).
    """

    needs_targets: ClassVar[bool] = True
    needs_same_shape: ClassVar[bool] = False
    accepts_members: ClassVar[bool] = True  # an ensemble's [N, M, C] logits: see soft_targets

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 standardize: bool = False) -> None:
        super().__init__()
        self.alpha = check_option("DKDLoss", "alpha", alpha, allow_zero=True)
        self.beta = check_option("DKDLoss", "beta", beta, allow_zero=True)
        self.temperature = check_option("DKDLoss", "temperature", temperature)
        self.standardize = check_flag("DKDLoss", "standardize", standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        check_teacher_logits("DKDLoss", student_logits, teacher_logits)
        if targets.shape != student_logits.shape[:1]:
            raise DistillError(f"DKDLoss: targets have shape {tuple(targets.shape)}; expected class "
                               f"indices of shape ({student_logits.shape[0]},)")
        T = self.temperature
        # both sides as log p_T (z / T up to a per-row shift, which DKD ignores), computed alike
        z_s = F.log_softmax((standardize_logits(student_logits) if self.standardize else student_logits) / T, dim=1)
        z_t = soft_targets(teacher_logits, T, self.standardize)
        is_target = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, targets.long().unsqueeze(1), True)
        tckd = _kl(self._binary_log_probs(z_s, is_target), self._binary_log_probs(z_t, is_target))
        nckd = _kl(self._non_target_log_probs(z_s, is_target), self._non_target_log_probs(z_t, is_target))
        return T * T * (self.alpha * tckd + self.beta * nckd)

    @staticmethod
    def _binary_log_probs(z: Tensor, is_target: Tensor) -> Tensor:
        """log [p_target, 1 - p_target] as a softmax over [z_target, logsumexp(z_other)]."""
        z_target = z.masked_fill(~is_target, 0.0).sum(1)
        z_other = torch.logsumexp(z.masked_fill(is_target, torch.finfo(z.dtype).min), dim=1)
        return F.log_softmax(torch.stack([z_target, z_other], dim=1), dim=1)

    @staticmethod
    def _non_target_log_probs(z: Tensor, is_target: Tensor) -> Tensor:
        """log-softmax over the non-target classes (the target gets probability 0)."""
        return F.log_softmax(z.masked_fill(is_target, torch.finfo(z.dtype).min), dim=1)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
                f"standardize={self.standardize}")
