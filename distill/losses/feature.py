"""Feature distillation: the student imitates the teacher's intermediate activations."""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from .response import check_option, check_same_shape


class HintLoss(nn.Module):
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR).

    loss = mean over all elements of (f_s - f_t)^2. Shapes must match: the engine puts a learned
    connector (regressor) on the student side when they do not.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = True

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        check_same_shape("HintLoss", student_features, teacher_features,
                         "equal shapes (add a connector to map the student's features)")
        return F.mse_loss(student_features, teacher_features.detach())


class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR).

    For a map f of shape [B, C, H, W]: A(f) = mean over channels of |f|^p, flattened and
    L2-normalised per sample; loss = mean over batch and positions of (A(f_s) - A(f_t))^2.
    Channel counts may differ (the map averages them away). When spatial sizes differ, the larger
    attention map is adaptive-average-pooled to the smaller one before normalising, so each cell
    keeps the mean activation energy of the region it covers.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = check_option("AttentionTransfer", "p", p)

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        if student_features.dim() != 4 or teacher_features.dim() != 4 \
                or student_features.shape[0] != teacher_features.shape[0]:
            raise DistillError(f"AttentionTransfer: got student {tuple(student_features.shape)} and teacher "
                               f"{tuple(teacher_features.shape)}; expected feature maps [B, C, H, W] "
                               "with the same batch size")
        size = (min(student_features.shape[2], teacher_features.shape[2]),
                min(student_features.shape[3], teacher_features.shape[3]))
        a_s = self.attention(student_features, size)
        a_t = self.attention(teacher_features.detach(), size)
        return (a_s - a_t).pow(2).mean()

    def attention(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """The [B, H*W] unit-norm attention map of `features`, pooled to `size`."""
        energy = features.abs().pow(self.p).mean(dim=1, keepdim=True)
        if energy.shape[2:] != size:
            energy = F.adaptive_avg_pool2d(energy, size)
        return F.normalize(energy.flatten(1), dim=1)

    def extra_repr(self) -> str:
        return f"p={self.p}"
