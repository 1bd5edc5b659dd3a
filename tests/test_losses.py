"""Specification of the distillation losses in `distill.losses`."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.losses import (LOSSES, AttentionTransfer, DKDLoss, HintLoss, KDLoss, PKTLoss, RKDLoss,
                            SimilarityPreserving, build_loss)


def softmax(values: list[float], T: float = 1.0) -> list[float]:
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def student_teacher(name: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """A (student, teacher, extra forward args) triple of shapes each loss accepts; teacher != student."""
    g = torch.Generator().manual_seed(0)
    if name in ("kd", "dkd", "dist"):
        s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
        return s, t, ((torch.tensor([0, 3, 5, 1]),) if name == "dkd" else ())
    if name == "hint":
        return torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g), ()
    if name == "at":
        return torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 6, 4, 4, generator=g), ()
    return torch.randn(5, 4, 2, 2, generator=g), torch.randn(5, 7, generator=g), ()


STATELESS = sorted(set(LOSSES) - {"crd"})  # CRD learns heads and memory banks: tests/test_losses_crd.py


@pytest.mark.parametrize("name", STATELESS)
def test_loss_is_zero_when_student_equals_teacher(name):
    s, _, extra = student_teacher(name)
    tolerance = 1e-5 if name == "dist" else 1e-6  # DIST: the authors' eps in the correlation
    assert build_loss(name)(s, s.clone(), *extra).item() == pytest.approx(0.0, abs=tolerance)


@pytest.mark.parametrize("name", STATELESS)
def test_loss_is_positive_finite_scalar_and_only_the_student_gets_gradients(name):
    s, t, extra = student_teacher(name)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = build_loss(name)(s, t, *extra)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_engine_flags_mark_only_dkd_as_needing_targets_and_only_hint_as_needing_same_shape():
    assert {n for n, c in LOSSES.items() if c.needs_targets} == {"dkd"}
    assert {n for n, c in LOSSES.items() if c.needs_same_shape} == {"hint"}
    assert all(isinstance(c.needs_targets, bool) and isinstance(c.needs_same_shape, bool)
               for c in LOSSES.values())


# --- KD ---------------------------------------------------------------------------------------

def test_kd_matches_hand_computed_value():
    s_rows, t_rows, T = [[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]], [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]], 2.0
    expected = T * T * sum(kl(softmax(t, T), softmax(s, T)) for s, t in zip(s_rows, t_rows)) / 2
    loss = KDLoss(temperature=T)(torch.tensor(s_rows, dtype=torch.float64),
                                 torch.tensor(t_rows, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def _kd_grad(s: torch.Tensor, t: torch.Tensor, T: float, scaled: bool) -> torch.Tensor:
    s = s.clone().requires_grad_(True)
    loss = KDLoss(temperature=T)(s, t)
    (loss if scaled else loss / T**2).backward()
    return s.grad


def test_kd_t_squared_keeps_gradient_magnitude_temperature_independent():
    torch.manual_seed(0)
    B, N = 4, 10
    s, t = torch.randn(B, N, dtype=torch.float64), torch.randn(B, N, dtype=torch.float64)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)  # zero-mean logits (Hinton eq. 4)
    g10, g20 = _kd_grad(s, t, 10.0, True), _kd_grad(s, t, 20.0, True)
    assert g10.norm() / g20.norm() == pytest.approx(1.0, abs=0.05)
    # high-temperature limit: dL/dz_s -> (z_s - z_t) / (N * B), whatever T is
    limit = (s - t) / (N * B)
    assert (g20 - limit).norm() / limit.norm() < 0.1
    # without the T^2 factor the gradient would shrink as 1 / T^2
    ratio = _kd_grad(s, t, 10.0, False).norm() / _kd_grad(s, t, 20.0, False).norm()
    assert ratio == pytest.approx(4.0, rel=0.05)


def test_kd_rejects_logits_with_different_class_counts():
    with pytest.raises(DistillError, match="shapes differ"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 4))


# --- DKD --------------------------------------------------------------------------------------

def test_dkd_equals_alpha_tckd_plus_beta_nckd_computed_by_hand():
    s_rows, t_rows, targets = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]], [[2.5, 1.0, 0.0], [0.3, 0.1, 1.7]], [0, 2]
    alpha, beta, T = 0.7, 3.0, 2.0
    total = 0.0
    for s, t, y in zip(s_rows, t_rows, targets):
        p, q = softmax(t, T), softmax(s, T)
        tckd = kl([p[y], 1 - p[y]], [q[y], 1 - q[y]])
        others = [j for j in range(3) if j != y]
        nckd = kl([p[j] / (1 - p[y]) for j in others], [q[j] / (1 - q[y]) for j in others])
        total += T * T * (alpha * tckd + beta * nckd)
    loss = DKDLoss(alpha=alpha, beta=beta, temperature=T)(
        torch.tensor(s_rows, dtype=torch.float64), torch.tensor(t_rows, dtype=torch.float64),
        torch.tensor(targets))
    assert loss.item() == pytest.approx(total / 2, rel=1e-10)


def test_kd_decomposes_into_tckd_plus_teacher_weighted_nckd():
    """Zhao et al. eq. (1): KD = TCKD + (1 - p_target^teacher) * NCKD, per sample."""
    torch.manual_seed(0)
    s, t, y, T = torch.randn(1, 10), torch.randn(1, 10), torch.tensor([3]), 3.0
    tckd = DKDLoss(alpha=1.0, beta=0.0, temperature=T)(s, t, y)
    nckd = DKDLoss(alpha=0.0, beta=1.0, temperature=T)(s, t, y)
    p_target = torch.softmax(t / T, dim=1)[0, 3]
    assert KDLoss(temperature=T)(s, t).item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-5)


def test_dkd_stays_finite_for_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0], [-5e3, 5e3, 1e3]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [5e3, -5e3, 0.0]])
    loss = DKDLoss()(s, t, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# --- Hint, AT ---------------------------------------------------------------------------------

def test_hint_is_elementwise_mse_and_rejects_different_shapes():
    s, t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert HintLoss()(s, t).item() == pytest.approx((0 + 4 + 9 + 0) / 4)
    with pytest.raises(DistillError, match="connector"):
        HintLoss()(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))


def test_attention_transfer_matches_hand_computed_value():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]: energy (1+9)/2, (4+0)/2
    t = torch.tensor([[[[1.0, -1.0]]]])               # [1, 1, 1, 2]: energy 1, 1
    a_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    a_t = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 2
    assert AttentionTransfer(p=2)(s, t).item() == pytest.approx(expected, rel=1e-6)
    s[0, 0, 0, 0] = -1.0  # p=1: energy (|-1|+3)/2, (2+0)/2
    a_s = [2 / math.sqrt(5), 1 / math.sqrt(5)]
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 2
    assert AttentionTransfer(p=1)(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_attention_transfer_is_invariant_to_channel_count():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    at = AttentionTransfer()
    assert at(s, torch.cat([t, t, t], dim=1)).item() == pytest.approx(at(s, t).item(), rel=1e-5)


def test_attention_transfer_pools_the_larger_map_to_the_smaller_size():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4, 4)
    s = t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # same attention at 8x8
    at = AttentionTransfer()
    assert at(s, t).item() == pytest.approx(0.0, abs=1e-6)
    assert at(t, s).item() == pytest.approx(0.0, abs=1e-6)
    assert at(torch.randn(2, 3, 7, 5), t).item() > 0
    s = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 2.0]]]])  # energy 2x2-averaged: 1.5, 7.25
    t = torch.tensor([[[[1.0, 2.0]]]])                                   # energy 1, 4
    a_s = [1.5 / math.hypot(1.5, 7.25), 7.25 / math.hypot(1.5, 7.25)]
    a_t = [1 / math.sqrt(17), 4 / math.sqrt(17)]
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 2
    assert at(s, t).item() == pytest.approx(expected, rel=1e-6)


# --- RKD --------------------------------------------------------------------------------------

def test_rkd_distance_term_matches_hand_computed_value_on_three_points():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d_s = [[0, 1, 1], [1, 0, math.sqrt(2)], [1, math.sqrt(2), 0]]
    d_t = [[0, 2, 1], [2, 0, math.sqrt(5)], [1, math.sqrt(5), 0]]
    mean_s, mean_t = (4 + 2 * math.sqrt(2)) / 6, (6 + 2 * math.sqrt(5)) / 6
    expected = sum(smooth_l1(a / mean_s - b / mean_t) for ra, rb in zip(d_s, d_t) for a, b in zip(ra, rb)) / 9
    loss = RKDLoss(distance_weight=1.0, angle_weight=0.0)(s, t)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_rkd_angle_term_matches_the_difference_vector_formula():
    """Park et al.'s angle potential: cos of the angle at e_j between e_i and e_k, from unit difference vectors."""
    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = torch.nn.functional.normalize(e[None, :, :] - e[:, None, :], dim=2)  # [j, i] = unit(e_i - e_j)
        return diff @ diff.transpose(1, 2)                                           # [j, i, k]
    torch.manual_seed(0)
    s, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    expected = torch.nn.functional.smooth_l1_loss(angles(s), angles(t))
    assert expected > 0
    assert RKDLoss(distance_weight=0.0, angle_weight=1.0)(s, t).item() == pytest.approx(expected.item(), rel=1e-9)


def test_rkd_distance_only_equals_the_full_loss_with_angle_weight_zero():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 9)
    full = RKDLoss(distance_weight=25.0, angle_weight=50.0)(s, t)
    distance = RKDLoss(distance_weight=25.0, angle_weight=0.0)(s, t)
    angle = RKDLoss(distance_weight=0.0, angle_weight=50.0)(s, t)
    assert full.item() == pytest.approx((distance + angle).item(), rel=1e-6)


def test_rkd_is_invariant_to_scaling_rotating_and_translating_the_student():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    rkd = RKDLoss()
    base = rkd(s, t).item()
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    assert base > 0
    assert rkd(3.7 * s, t).item() == pytest.approx(base, rel=1e-9)
    assert rkd(s @ rotation, t).item() == pytest.approx(base, rel=1e-9)
    assert rkd(s + torch.randn(4, dtype=torch.float64) * 5, t).item() == pytest.approx(base, rel=1e-9)


def test_rkd_flattens_feature_maps_and_accepts_different_widths():
    torch.manual_seed(0)
    assert RKDLoss()(torch.randn(4, 3, 2, 2), torch.randn(4, 16)).item() > 0
    with pytest.raises(DistillError, match="batch size"):
        RKDLoss()(torch.randn(4, 3), torch.randn(5, 3))


# --- SP, PKT ----------------------------------------------------------------------------------

def test_similarity_preserving_matches_hand_computed_value():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)            # G = [[1, 1], [1, 2]]
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)  # G = identity
    g_s = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    g_t = [[1.0, 0.0], [0.0, 1.0]]
    expected = sum((a - b) ** 2 for ra, rb in zip(g_s, g_t) for a, b in zip(ra, rb)) / 4
    assert SimilarityPreserving()(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_similarity_preserving_accepts_different_channel_counts():
    torch.manual_seed(0)
    assert SimilarityPreserving()(torch.randn(4, 3, 2, 2), torch.randn(4, 7, 2, 2)).item() > 0


def test_pkt_matches_hand_computed_value():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # kernel [[1, .5], [.5, 1]]
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)  # kernel all ones
    p_s, p_t = [2 / 3, 1 / 3], [0.5, 0.5]  # each row (both rows alike)
    assert PKTLoss()(s, t).item() == pytest.approx(kl(p_t, p_s), rel=1e-5)


def test_pkt_is_invariant_to_scaling_the_embeddings():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    base = PKTLoss()(s, t).item()
    assert PKTLoss()(5.0 * s, 0.1 * t).item() == pytest.approx(base, rel=1e-9)


# --- build_loss -------------------------------------------------------------------------------

def test_build_loss_builds_every_registered_loss_with_defaults():
    for name, cls in LOSSES.items():
        assert type(build_loss(name)) is cls
    assert build_loss("kd", temperature=2).temperature == 2.0


def test_build_loss_unknown_name_suggests_the_closest():
    with pytest.raises(DistillError, match=r"unknown loss 'dk' \(did you mean 'dkd'"):
        build_loss("dk")


def test_build_loss_unexpected_option_lists_the_expected_ones():
    with pytest.raises(DistillError, match="'temp'.*expected: temperature, standardize$"):
        build_loss("kd", temp=3.0)
    with pytest.raises(DistillError, match="expected: alpha, beta, temperature"):
        build_loss("dkd", gamma=1.0)
    with pytest.raises(DistillError, match="expected: no options"):
        build_loss("hint", weight=1.0)


@pytest.mark.parametrize("name, options", [
    ("kd", {"temperature": 0}), ("kd", {"temperature": -1.0}), ("kd", {"temperature": "4"}),
    ("dkd", {"temperature": 0.0}), ("dkd", {"alpha": -1.0}), ("dkd", {"beta": float("nan")}),
    ("at", {"p": 0}), ("rkd", {"distance_weight": -1.0}), ("rkd", {"angle_weight": -0.5}),
    ("pkt", {"eps": 0.0}),
])
def test_build_loss_rejects_invalid_values(name, options):
    key = next(iter(options))
    with pytest.raises(DistillError, match=f"{key} must be a finite number"):
        build_loss(name, **options)


def test_zero_weights_are_allowed():
    assert build_loss("dkd", beta=0.0).beta == 0.0
    assert build_loss("rkd", angle_weight=0).angle_weight == 0.0
