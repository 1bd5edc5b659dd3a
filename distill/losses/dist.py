"""DIST: distillation by correlation of class probabilities, robust to a much stronger teacher."""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from .response import check_option, check_teacher_logits, soft_targets

PEARSON_EPS = 1e-8  # added to the product of norms, as in the authors' code


def pearson_rows(a: Tensor, b: Tensor, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` ([N, D] -> [N])."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(nn.Module):
    """DIST (Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger Teacher", NeurIPS).

    With Y = softmax(Z / T) for logits Z [B, C] of either model and rho the Pearson correlation:
    inter = 1 - mean over samples i of rho(Y^s[i, :], Y^t[i, :])   (relations between classes),
    intra = 1 - mean over classes j of rho(Y^s[:, j], Y^t[:, j])   (relations between samples),
    loss = T^2 * (beta * inter + gamma * intra).
    Correlation, unlike KL, ignores shifts and scales of the probabilities, so the student need
    not reproduce a far stronger teacher's exact confidence, only its ranking. As in the authors'
    code (hunto/image_classification_sota, lib/models/losses/dist_kd.py): rho = <a - mean a, b - mean b>
    / (|a - mean a| |b - mean b| + 1e-8); T = 1 there, T^2 applied to both terms in their CIFAR code.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False
    accepts_members: ClassVar[bool] = True  # an ensemble's [N, M, C] logits: see soft_targets

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = check_option("DISTLoss", "beta", beta, allow_zero=True)
        self.gamma = check_option("DISTLoss", "gamma", gamma, allow_zero=True)
        self.temperature = check_option("DISTLoss", "temperature", temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        check_teacher_logits("DISTLoss", student_logits, teacher_logits)
        T = self.temperature
        y_s = (student_logits / T).softmax(dim=1)
        y_t = soft_targets(teacher_logits, T).exp()
        inter = 1 - pearson_rows(y_s, y_t).mean()
        intra = 1 - pearson_rows(y_s.T, y_t.T).mean()
        return T * T * (self.beta * inter + self.gamma * intra)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}"
