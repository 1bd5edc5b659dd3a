"""CRD: contrastive representation distillation with a memory bank of negatives."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from .response import check_option

NCE_EPS = 1e-7  # as in RepDistiller's ContrastLoss


def whole_bank_is_cheaper(batch: int, contrast: int, bank: int, dim: int) -> bool:
    """Whether to score the B anchors against all N bank rows with one matmul, which moves the B x N
    scores and a copy of the N x d bank through memory, rather than gather B x (K + 1) rows of d, which
    moves those. Both routes give the same numbers (tests/test_losses_crd.py)."""
    return batch * contrast * dim >= bank * (batch + dim)


# The paper's settings are 128 dimensions and 16384 negatives. Far beyond them a typo (10**9 negatives)
# would draw batch x 10**9 indices and fill the memory before the first step, so counts stop here.
MAX_NEGATIVES = 2 ** 16
MAX_FEATURE_DIM = 2 ** 12


def _count(name: str, value: object, largest: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistillError(f"CRDLoss: {name} must be a whole number >= 1, got {value!r}")
    if largest is not None and value > largest:
        raise DistillError(f"CRDLoss: {name} must be a whole number from 1 to {largest} (more would fill "
                           f"the memory), got {value!r}")
    return value


class CRDLoss(nn.Module):
    """Contrastive representation distillation (Tian, Krishnan & Isola 2020, ICLR), as RepDistiller's
    crd/ criterion (ContrastMemory, ContrastLoss, Embed).

    Both features are flattened, mapped by trainable linear heads to `feature_dim` and L2-normalised:
    s_i, t_i. Two memory banks hold one unit vector per training sample, M_s and M_t [num_samples, d].
    For sample i and K = `negatives` indices j_1..j_K drawn uniformly from the training set:
    h(v, j) = exp(<v, M[j]> / tau) / Z, with Z fixed on the first batch to mean(exp(..)) * num_samples.
    NCE with noise P_n = 1 / num_samples and m = K (per batch, mean over samples):
    L(anchor, bank) = -[log(h_pos / (h_pos + m P_n + eps)) + sum_k log(m P_n / (h_neg_k + m P_n + eps))];
    loss = L(s, M_t) + L(t, M_s). After each batch M_s[i] <- normalise(momentum M_s[i] + (1 - momentum) s_i),
    the same for M_t. A copy of the teacher does not give 0: the heads and banks are learnt.
    Negatives are uniform over the training set (RepDistiller's `relax` sampling; its `exact` mode
    draws them from other classes only). The banks and normalisers are buffers and the heads
    parameters of this module, so the engine trains and resumes them with the student. Under DDP
    the banks are rank 0's (DDP broadcasts buffers each step): only its shard's rows are refreshed.
    """

    needs_targets: ClassVar[bool] = False
    needs_same_shape: ClassVar[bool] = False
    needs_indices: ClassVar[bool] = True  # forward(s, t, indices): each sample's index in the training set

    def __init__(self, feature_dim: int = 128, negatives: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5, num_samples: int | None = None) -> None:
        super().__init__()
        self.feature_dim = _count("feature_dim", feature_dim, MAX_FEATURE_DIM)
        self.negatives = _count("negatives", negatives, MAX_NEGATIVES)
        self.temperature = check_option("CRDLoss", "temperature", temperature)
        self.momentum = check_option("CRDLoss", "momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise DistillError(f"CRDLoss: momentum must be in [0, 1), got {momentum!r}")
        self.num_samples = None if num_samples is None else _count("num_samples", num_samples)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.register_buffer("normalisers", torch.tensor([-1.0, -1.0]))  # Z_s, Z_t; < 0 until the first batch
        stdv = 1.0 / math.sqrt(self.feature_dim / 3)
        size = (self.num_samples or 0, self.feature_dim)
        self.register_buffer("memory_s", torch.rand(size).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(size).mul_(2 * stdv).add_(-stdv))

    def bind(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        """Create the embedding heads for features of these shapes (batch dimension excluded)."""
        self.embed_s = nn.Linear(math.prod(student_shape), self.feature_dim)
        self.embed_t = nn.Linear(math.prod(teacher_shape), self.feature_dim)
        self.to(self.memory_s.device)

    def forward(self, student_features: Tensor, teacher_features: Tensor, indices: Tensor,
                contrast_indices: Tensor | None = None) -> Tensor:
        """`contrast_indices` [B, K + 1] (positive first) replaces the random draw, for tests."""
        if self.embed_s is None or not self.num_samples:
            raise DistillError("CRDLoss: not set up; expected num_samples (the training-set size) and bind() "
                               "with the feature shapes (the Distiller and `distill run` do both)")
        batch = student_features.shape[0]
        if indices.shape != (batch,) or teacher_features.shape[0] != batch:
            raise DistillError(f"CRDLoss: got {batch} student features, {teacher_features.shape[0]} teacher "
                               f"features and indices of shape {tuple(indices.shape)}; expected one index each")
        s = F.normalize(self.embed_s(student_features.flatten(1)), dim=1, eps=0.0)
        t = F.normalize(self.embed_t(teacher_features.detach().flatten(1)), dim=1, eps=0.0)
        idx = indices.long()
        if contrast_indices is None:
            contrast_indices = torch.randint(0, self.num_samples, (batch, self.negatives + 1), device=idx.device)
            contrast_indices[:, 0] = idx
        h_s = self._scores(s, self.memory_t, contrast_indices, 0)
        h_t = self._scores(t, self.memory_s, contrast_indices, 1)
        self._update(idx, s, t)
        return self._nce(h_s) + self._nce(h_t)

    def _scores(self, anchor: Tensor, memory: Tensor, contrast: Tensor, which: int) -> Tensor:
        """h [B, K + 1] of `anchor` against the bank rows `contrast`; fixes Z on the first call."""
        if whole_bank_is_cheaper(*contrast.shape, *memory.shape):
            dots = (anchor @ memory.clone().T).gather(1, contrast)  # a copy: backward needs the bank pre-update
        else:
            rows = memory.index_select(0, contrast.reshape(-1)).view(*contrast.shape, -1)
            dots = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
        h = torch.exp(dots / self.temperature)
        if self.normalisers[which] < 0:
            self.normalisers[which] = h.detach().mean() * self.num_samples
        return h / self.normalisers[which].clone()  # a copy: the buffer changes in place later

    def _nce(self, h: Tensor) -> Tensor:
        m, noise = h.shape[1] - 1, 1.0 / self.num_samples
        log_positive = torch.log(h[:, 0] / (h[:, 0] + m * noise + NCE_EPS))
        log_negative = torch.log((m * noise) / (h[:, 1:] + m * noise + NCE_EPS))
        return -(log_positive.sum() + log_negative.sum()) / h.shape[0]

    @torch.no_grad()
    def _update(self, idx: Tensor, s: Tensor, t: Tensor) -> None:
        for memory, v in ((self.memory_s, s), (self.memory_t, t)):
            mixed = memory.index_select(0, idx) * self.momentum + v.detach() * (1 - self.momentum)
            memory.index_copy_(0, idx, mixed / mixed.norm(dim=1, keepdim=True))

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, negatives={self.negatives}, temperature={self.temperature}, "
                f"momentum={self.momentum}, num_samples={self.num_samples}")
